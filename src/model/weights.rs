//! Model weights read in place from a memory-mapped `model.safetensors`.
//!
//! candle's CPU tensors own their memory, so loading through candle copies every weight out of
//! the file: twice the resident memory at the peak and tens of milliseconds at every cold
//! start. The encoder's kernels only need `&[f32]`, so f32 tensors are used straight from the
//! mapping (zero-copy: the pages are the OS page cache, shared by every worker thread and by
//! other processes serving the same file). Tensors stored in another dtype (f16, bf16) or at an
//! unaligned offset are converted once with candle and owned.

use std::path::Path;
use std::sync::Arc;

use candle_core::safetensors::Load;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use super::ModelError;

/// An opened weights file.
pub struct WeightFile {
    map: Arc<Mmap>,
    data_start: usize,
    metadata: Metadata,
}

enum Storage {
    /// `len` f32 values at byte `start` of the mapping.
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    Owned(Vec<f32>),
}

/// One weight tensor as f32 values.
pub struct Weight {
    storage: Storage,
    shape: Vec<usize>,
}

impl Weight {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn as_slice(&self) -> &[f32] {
        match &self.storage {
            Storage::Mapped { map, start, len } => {
                let bytes = &map[*start..*start + len * 4];
                // SAFETY: `open`/`get` checked that the range is inside the mapping and
                // 4-byte aligned; any bit pattern is a valid f32; the mapping is read-only
                // and lives as long as `self` (the Arc).
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), *len) }
            }
            Storage::Owned(v) => v,
        }
    }

    /// An owned weight built from values (concatenations, sums).
    pub fn owned(values: Vec<f32>, shape: Vec<usize>) -> Self {
        debug_assert_eq!(values.len(), shape.iter().product::<usize>());
        Weight {
            storage: Storage::Owned(values),
            shape,
        }
    }
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let err = |e: String| ModelError::Weights(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        // SAFETY: mapped read-only; a weights file modified while it is served is outside what
        // any server can support.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| err(e.to_string()))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| err(format!("not a safetensors file: {e}")))?;
        Ok(Self {
            map: Arc::new(map),
            data_start: 8 + header_len,
            metadata,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// The tensor `name` as f32: in place when it is stored as aligned f32, else converted.
    pub fn get(&self, name: &str) -> Result<Weight, ModelError> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::Weights(format!("tensor {name} is missing")))?;
        let (begin, end) = info.data_offsets;
        let start = self.data_start + begin;
        let count: usize = info.shape.iter().product();
        if self.data_start + end > self.map.len() {
            return Err(ModelError::Weights(format!(
                "tensor {name} runs past the end of the file"
            )));
        }
        let aligned = (self.map.as_ptr() as usize + start) % std::mem::align_of::<f32>() == 0;
        if info.dtype == Dtype::F32
            && aligned
            && end - begin == count * 4
            && cfg!(target_endian = "little")
        {
            return Ok(Weight {
                storage: Storage::Mapped {
                    map: self.map.clone(),
                    start,
                    len: count,
                },
                shape: info.shape.clone(),
            });
        }
        let tensors =
            SafeTensors::deserialize(&self.map).map_err(|e| ModelError::Weights(e.to_string()))?;
        let view = tensors
            .tensor(name)
            .map_err(|e| ModelError::Weights(format!("{name}: {e}")))?;
        let values = view
            .load(&candle_core::Device::Cpu)
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| ModelError::Weights(format!("{name}: {e}")))?;
        Ok(Weight::owned(values, info.shape.clone()))
    }
}
