//! Reading a GGUF file: its metadata with typed, human-readable errors, and its tensors either
//! dequantized to f32 (to be packed for our kernels) or as raw blocks (the embedding table,
//! dequantized one row at a time).
//!
//! A model split into several files (`NAME-00001-of-00003.gguf` …, as llama.cpp's
//! `gguf-split` and the converter's `--split-max-*` write it) is opened from its first part,
//! as llama.cpp opens it: the metadata is the first part's, the tensors are every part's
//! (`split.count` parts, found beside the first by their names, each with its `split.no`;
//! no tensor twice; `split.tensors.count` in all).
//!
//! The header is parsed by [`header`] (our own parser: every size and offset checked, each
//! error naming the key or the tensor, metadata arrays read only when asked for); the blocks
//! are dequantized by candle.

pub mod header;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use header::{Header, HeaderError, MetaValue, Number, TensorInfo};

/// Why a GGUF file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a readable GGUF file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: metadata key `{key}` {problem}")]
    Metadata {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("{path}: tensor `{name}` {problem}")]
    Tensor {
        path: PathBuf,
        name: String,
        problem: String,
    },
}

/// An open GGUF file (all its parts, when split): parsed and checked headers; tensors and
/// metadata arrays are read from memory maps, so packing the tensors copies each weight once,
/// and the maps go away with this value.
pub struct GgufFile {
    path: PathBuf,
    /// The first part's metadata (its tensors are moved to `tensors`).
    header: Header,
    /// Each part's map; the first holds the metadata arrays.
    maps: Vec<memmap2::Mmap>,
    /// Every tensor, with the part it is in.
    tensors: HashMap<String, (usize, TensorInfo)>,
}

/// Most parts a split model may have (llama.cpp counts them in a u16; real ones have tens).
pub const MAX_SPLIT_PARTS: u64 = 1024;

/// The name of part `no` (from 1) of `count` of the model whose parts start with `prefix`
/// (llama.cpp's `llama_split_path`).
pub fn split_path(prefix: &str, no: u64, count: u64) -> String {
    format!("{prefix}-{no:05}-of-{count:05}.gguf")
}

/// `path` as part `no` of `count` (llama.cpp's `llama_split_prefix`): the prefix before
/// `-0000N-of-0000M.gguf`, when the name ends so.
pub fn split_prefix(path: &Path, no: u64, count: u64) -> Option<String> {
    let s = path.to_str()?;
    s.strip_suffix(&format!("-{no:05}-of-{count:05}.gguf"))
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

/// Maps and parses one file.
fn open_part(path: &Path) -> Result<(memmap2::Mmap, Header), GgufError> {
    let io = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: the map is only read, and only while the model loads (it is dropped with
    // the GgufFile); as with every memory-mapped model loader, the file must not be
    // truncated or rewritten during that time.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let header = header::parse(&map).map_err(|e| match e {
        HeaderError::Format(message) => GgufError::Format {
            path: path.to_path_buf(),
            message,
        },
        HeaderError::Metadata { key, problem } => GgufError::Metadata {
            path: path.to_path_buf(),
            key,
            problem,
        },
        HeaderError::Tensor { name, problem } => GgufError::Tensor {
            path: path.to_path_buf(),
            name,
            problem,
        },
    })?;
    Ok((map, header))
}

/// An unsigned integer of the metadata `header` holds, if any (a split key).
fn header_uint(header: &Header, key: &str) -> Option<u64> {
    match header.metadata.get(key)? {
        MetaValue::U8(x) => Some(*x as u64),
        MetaValue::U16(x) => Some(*x as u64),
        MetaValue::U32(x) => Some(*x as u64),
        MetaValue::U64(x) => Some(*x),
        MetaValue::I8(x) => u64::try_from(*x).ok(),
        MetaValue::I16(x) => u64::try_from(*x).ok(),
        MetaValue::I32(x) => u64::try_from(*x).ok(),
        MetaValue::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

/// A tensor as stored: its ggml type, its dims (outermost first, PyTorch order), its bytes.
pub struct RawTensor {
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// Bytes of one row (the innermost dimension), which is a whole number of blocks.
    pub fn row_bytes(&self) -> usize {
        let cols = *self.dims.last().unwrap_or(&0);
        cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Row `i` (of the innermost dimension) dequantized to f32; `None` when out of range.
    pub fn row(&self, i: usize) -> Option<Vec<f32>> {
        let rb = self.row_bytes();
        let bytes = self
            .bytes
            .get(i.checked_mul(rb)?..(i + 1).checked_mul(rb)?)?;
        let cols = *self.dims.last()?;
        dequantize(self.dtype, bytes, cols).ok()
    }
}

/// Dequantizes `count` values stored as `dtype` blocks in `bytes`.
///
/// # Errors
///
/// When `bytes` are not exactly `count` values' blocks.
pub fn dequantize(dtype: GgmlDType, bytes: &[u8], count: usize) -> candle_core::Result<Vec<f32>> {
    let block = dtype.block_size();
    if !count.is_multiple_of(block) || bytes.len() != count / block * dtype.type_size() {
        candle_core::bail!("{} bytes are not {count} values of {dtype:?}", bytes.len());
    }
    // candle views the bytes as its block structs and panics unless they are aligned for
    // them (at most 4 bytes); a tensor of a file with a small `general.alignment` need not be.
    const ALIGN: usize = 8;
    let mut copy = Vec::new();
    let bytes = if (bytes.as_ptr() as usize).is_multiple_of(ALIGN) {
        bytes
    } else {
        copy.resize(bytes.len() + ALIGN, 0u8);
        let at = copy.as_ptr().align_offset(ALIGN);
        if at >= ALIGN {
            candle_core::bail!("cannot align a buffer for {dtype:?} blocks");
        }
        copy[at..at + bytes.len()].copy_from_slice(bytes);
        &copy[at..at + bytes.len()]
    };
    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype)?;
    QTensor::new(storage, (count,))?
        .dequantize(&Device::Cpu)?
        .to_vec1::<f32>()
}

impl GgufFile {
    /// Opens `path` and parses and checks its header: afterwards every tensor it describes
    /// has rows of whole blocks and lies inside the file. When `split.count` says the model is
    /// split, `path` must be its first part, and the other parts are opened beside it.
    ///
    /// # Errors
    ///
    /// When a file cannot be read, is not GGUF, or its header is inconsistent (the error
    /// names the key or the tensor); when `path` is a later part of a split model, a part is
    /// missing or out of place, or a tensor is in two parts.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let (map, mut header) = open_part(path)?;
        let meta_error = |key: &str, problem: String| GgufError::Metadata {
            path: path.to_path_buf(),
            key: key.into(),
            problem,
        };
        let count = header_uint(&header, "split.count").unwrap_or(1);
        let mut tensors: HashMap<String, (usize, TensorInfo)> = std::mem::take(&mut header.tensors)
            .into_iter()
            .map(|(name, info)| (name, (0, info)))
            .collect();
        let mut maps = vec![map];
        if count > 1 {
            if count > MAX_SPLIT_PARTS {
                return Err(meta_error(
                    "split.count",
                    format!("is {count}; at most {MAX_SPLIT_PARTS} parts are read"),
                ));
            }
            let no = header_uint(&header, "split.no").unwrap_or(0);
            if no != 0 {
                return Err(meta_error(
                    "split.no",
                    format!(
                        "is {no}: this is part {} of {count} of a split model; give the first part (…-00001-of-{count:05}.gguf)",
                        no + 1
                    ),
                ));
            }
            let prefix = split_prefix(path, 1, count).ok_or_else(|| {
                meta_error(
                    "split.count",
                    format!("is {count}, but the file's name does not end in -00001-of-{count:05}.gguf, so its other parts cannot be found"),
                )
            })?;
            for part in 1..count {
                let part_path = PathBuf::from(split_path(&prefix, part + 1, count));
                let (map, header) = open_part(&part_path)?;
                let part_no = header_uint(&header, "split.no");
                if part_no != Some(part) {
                    return Err(GgufError::Metadata {
                        path: part_path,
                        key: "split.no".into(),
                        problem: format!(
                            "is {part_no:?}; part {} of {count} must say {part}",
                            part + 1
                        ),
                    });
                }
                for (name, info) in header.tensors {
                    if tensors.contains_key(&name) {
                        return Err(GgufError::Tensor {
                            path: part_path,
                            name,
                            problem: "is in more than one part of the split model".into(),
                        });
                    }
                    tensors.insert(name, (maps.len(), info));
                }
                maps.push(map);
            }
            if let Some(n) = header_uint(&header, "split.tensors.count") {
                if n != tensors.len() as u64 {
                    return Err(meta_error(
                        "split.tensors.count",
                        format!(
                            "is {n}, but the {count} parts hold {} tensors",
                            tensors.len()
                        ),
                    ));
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            header,
            maps,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta_error(&self, key: &str, problem: impl Into<String>) -> GgufError {
        GgufError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    /// The metadata value of `key`, if present (arrays as their place in the file).
    pub fn value(&self, key: &str) -> Option<&MetaValue> {
        self.header.metadata.get(key)
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Result<&str, GgufError> {
        match self.value(key) {
            Some(MetaValue::String(s)) => Ok(s),
            Some(_) => Err(self.meta_error(key, "is not a string")),
            None => Err(self.meta_error(key, "is missing")),
        }
    }

    /// An optional string value.
    pub fn string_opt(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.value(key) {
            None => Ok(None),
            Some(_) => self.string(key).map(Some),
        }
    }

    /// An unsigned integer value of any width (GGUF writers differ).
    pub fn uint(&self, key: &str) -> Result<u64, GgufError> {
        let v = self
            .value(key)
            .ok_or_else(|| self.meta_error(key, "is missing"))?;
        let n = match v {
            MetaValue::U8(x) => Some(*x as u64),
            MetaValue::U16(x) => Some(*x as u64),
            MetaValue::U32(x) => Some(*x as u64),
            MetaValue::U64(x) => Some(*x),
            MetaValue::I8(x) => u64::try_from(*x).ok(),
            MetaValue::I16(x) => u64::try_from(*x).ok(),
            MetaValue::I32(x) => u64::try_from(*x).ok(),
            MetaValue::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.ok_or_else(|| self.meta_error(key, "is not a non-negative integer"))
    }

    /// An optional unsigned integer value.
    pub fn uint_opt(&self, key: &str) -> Result<Option<u64>, GgufError> {
        match self.value(key) {
            None => Ok(None),
            Some(_) => self.uint(key).map(Some),
        }
    }

    /// A usize value that must be in `1..=max` (sizes that allocate).
    pub fn size(&self, key: &str, max: usize) -> Result<usize, GgufError> {
        let n = self.uint(key)?;
        if n == 0 || n > max as u64 {
            return Err(self.meta_error(key, format!("is {n}, outside 1..={max}")));
        }
        Ok(n as usize)
    }

    /// A float value (f32 or f64).
    pub fn float(&self, key: &str) -> Result<f32, GgufError> {
        match self.value(key) {
            Some(MetaValue::F32(x)) => Ok(*x),
            Some(MetaValue::F64(x)) => Ok(*x as f32),
            Some(_) => Err(self.meta_error(key, "is not a float")),
            None => Err(self.meta_error(key, "is missing")),
        }
    }

    /// A boolean value.
    pub fn bool_opt(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.value(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.meta_error(key, "is not a boolean")),
        }
    }

    /// The array `key`, if present.
    fn array_opt(&self, key: &str) -> Result<Option<&header::ArrayRef>, GgufError> {
        match self.value(key) {
            None => Ok(None),
            Some(MetaValue::Array(a)) => Ok(Some(a)),
            Some(_) => Err(self.meta_error(key, "is not an array")),
        }
    }

    /// An array of strings, read from the file (borrowed from it where valid UTF-8).
    pub fn strings(&self, key: &str) -> Result<Vec<Cow<'_, str>>, GgufError> {
        let array = self
            .array_opt(key)?
            .ok_or_else(|| self.meta_error(key, "is missing"))?;
        array
            .strings(&self.maps[0])
            .map_err(|problem| self.meta_error(key, problem))
    }

    /// An optional array of numbers, read from the file.
    fn numbers_opt(&self, key: &str) -> Result<Option<Vec<Number>>, GgufError> {
        let Some(array) = self.array_opt(key)? else {
            return Ok(None);
        };
        array
            .numbers(&self.maps[0])
            .map(Some)
            .map_err(|problem| self.meta_error(key, problem))
    }

    /// An optional array of integers (as i64).
    pub fn ints_opt(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let Some(numbers) = self.numbers_opt(key)? else {
            return Ok(None);
        };
        numbers
            .into_iter()
            .map(|n| match n {
                Number::Int(x) => i64::try_from(x)
                    .map_err(|_| self.meta_error(key, format!("holds {x}, outside i64"))),
                Number::Float(_) => {
                    Err(self.meta_error(key, "holds a value that is not an integer"))
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An array of floats (e.g. `tokenizer.ggml.scores`), if present.
    pub fn floats_opt(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        let Some(numbers) = self.numbers_opt(key)? else {
            return Ok(None);
        };
        numbers
            .into_iter()
            .map(|n| match n {
                Number::Float(x) => Ok(x as f32),
                Number::Int(_) => Err(self.meta_error(key, "holds a value that is not a float")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Whether the file holds a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn tensor_error(&self, name: &str, problem: impl Into<String>) -> GgufError {
        GgufError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            problem: problem.into(),
        }
    }

    /// The bytes of tensor `name`, checked to have dims `want`, as stored, and their type.
    pub fn bytes(&self, name: &str, want: &[usize]) -> Result<(&[u8], GgmlDType), GgufError> {
        let (part, info) = self
            .tensors
            .get(name)
            .ok_or_else(|| self.tensor_error(name, "is missing"))?;
        if info.dims != want {
            let dims = &info.dims;
            return Err(self.tensor_error(name, format!("has shape {dims:?}, expected {want:?}")));
        }
        // Inside the file: checked when it was opened.
        self.maps[*part]
            .get(info.start..info.start + info.len)
            .map(|b| (b, info.dtype))
            .ok_or_else(|| self.tensor_error(name, "lies past the end of the file"))
    }

    /// Tensor `name`, checked to have dims `want`, as stored (copied).
    pub fn raw(&self, name: &str, want: &[usize]) -> Result<RawTensor, GgufError> {
        let (bytes, dtype) = self.bytes(name, want)?;
        Ok(RawTensor {
            dtype,
            dims: want.to_vec(),
            bytes: bytes.to_vec(),
        })
    }

    /// Drops the pages of tensor `name` from this process's resident set (`MADV_DONTNEED`),
    /// once the loader has copied or converted it: without this, the peak of a load is the
    /// whole file mapped plus the model converted from it (a Gemma 3 1B Q4_K_M file: 0.8 GB
    /// of one and 1.2 GB of the other). Only whole pages inside the tensor are dropped; one
    /// still read (by another thread, or again) comes back from the page cache, unchanged.
    pub fn release(&self, name: &str) {
        let Some((part, info)) = self.tensors.get(name) else {
            return;
        };
        // The tensor's range was checked against the file when it was opened.
        crate::model::weights::release_pages(&self.maps[*part], info.start, info.len);
    }

    /// Tensor `name`, checked to have dims `want`, dequantized to f32 (row-major).
    pub fn f32(&self, name: &str, want: &[usize]) -> Result<Vec<f32>, GgufError> {
        let (bytes, dtype) = self.bytes(name, want)?;
        let values = dequantize(dtype, bytes, want.iter().product())
            .map_err(|e| self.tensor_error(name, format!("cannot be dequantized: {e}")))?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(self.tensor_error(name, "holds NaN or infinite values"));
        }
        Ok(values)
    }

    /// The ggml type of tensor `name`, if present.
    pub fn tensor_type(&self, name: &str) -> Option<GgmlDType> {
        self.tensors.get(name).map(|(_, info)| info.dtype)
    }
}
