//! Reading a GGUF file: its metadata with typed, human-readable errors, and its tensors either
//! dequantized to f32 (to be packed for our kernels) or as raw blocks (the embedding table,
//! dequantized one row at a time).
//!
//! The parsing itself is candle's (`candle_core::quantized::gguf_file`); this module only adds
//! the checks and error messages a server needs when handed an arbitrary file.

use std::borrow::Cow;
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;

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

/// An open GGUF file: parsed header and metadata; tensors are read from a memory map, so
/// packing them copies each weight once, and the map goes away with this value.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    map: memmap2::Mmap,
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
pub fn dequantize(dtype: GgmlDType, bytes: &[u8], count: usize) -> candle_core::Result<Vec<f32>> {
    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype)?;
    QTensor::new(storage, (count,))?
        .dequantize(&Device::Cpu)?
        .to_vec1::<f32>()
}

impl GgufFile {
    /// Opens `path` and parses its header and metadata.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or is not GGUF.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the map is only read, and only while the model loads (it is dropped with
        // this value); as with every memory-mapped model loader, the file must not be
        // truncated or rewritten during that time.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // Parsed from the mapping, not the file: candle's reader asks for its position before
        // every string (to bound its length), which on a file is a system call each, over
        // 100,000 of them for a 49k-token vocabulary and its merges.
        let content = Content::read(&mut Cursor::new(&map[..])).map_err(|e| GgufError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            map,
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

    /// The raw metadata value of `key`, if present.
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Result<&str, GgufError> {
        match self.value(key) {
            Some(Value::String(s)) => Ok(s),
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
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
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
            Some(Value::F32(x)) => Ok(*x),
            Some(Value::F64(x)) => Ok(*x as f32),
            Some(_) => Err(self.meta_error(key, "is not a float")),
            None => Err(self.meta_error(key, "is missing")),
        }
    }

    /// A boolean value.
    pub fn bool_opt(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.meta_error(key, "is not a boolean")),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let Some(Value::Array(items)) = self.value(key) else {
            return Err(self.meta_error(key, "is missing or not an array"));
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.meta_error(key, "holds a value that is not a string")),
            })
            .collect()
    }

    /// An optional array of integers (as i64).
    pub fn ints_opt(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(self.meta_error(key, "is not an array"));
        };
        items
            .iter()
            .map(|v| match v {
                Value::I32(x) => Ok(*x as i64),
                Value::U32(x) => Ok(*x as i64),
                Value::I8(x) => Ok(*x as i64),
                Value::U8(x) => Ok(*x as i64),
                Value::I16(x) => Ok(*x as i64),
                Value::U16(x) => Ok(*x as i64),
                Value::I64(x) => Ok(*x),
                _ => Err(self.meta_error(key, "holds a value that is not an integer")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An array of floats (e.g. `tokenizer.ggml.scores`), if present.
    pub fn floats_opt(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        let Some(v) = self.value(key) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(self.meta_error(key, "is not an array"));
        };
        items
            .iter()
            .map(|v| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                _ => Err(self.meta_error(key, "holds a value that is not a float")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Whether the file holds a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn tensor_error(&self, name: &str, problem: impl Into<String>) -> GgufError {
        GgufError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            problem: problem.into(),
        }
    }

    /// The dims of tensor `name` (PyTorch order), checked to be `want`.
    fn check_dims(&self, name: &str, want: &[usize]) -> Result<GgmlDType, GgufError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| self.tensor_error(name, "is missing"))?;
        let dims = info.shape.dims();
        if dims != want {
            return Err(self.tensor_error(name, format!("has shape {dims:?}, expected {want:?}")));
        }
        Ok(info.ggml_dtype)
    }

    /// The bytes of tensor `name`, checked to have dims `want`, as stored, and their type.
    pub fn bytes(&self, name: &str, want: &[usize]) -> Result<(&[u8], GgmlDType), GgufError> {
        let dtype = self.check_dims(name, want)?;
        let info = &self.content.tensor_infos[name];
        let count: usize = want.iter().product();
        if !count.is_multiple_of(dtype.block_size()) {
            return Err(self.tensor_error(name, "is not a whole number of blocks"));
        }
        let len = count / dtype.block_size() * dtype.type_size();
        let start = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok());
        start
            .and_then(|s| self.map.get(s..s.checked_add(len)?))
            .map(|b| (b, dtype))
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
        self.content
            .tensor_infos
            .get(name)
            .map(|info| info.ggml_dtype)
    }
}
