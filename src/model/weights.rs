//! Model weights read in place from a memory-mapped `model.safetensors`.
//!
//! candle's CPU tensors own their memory, so loading through candle copies every weight out of
//! the file: twice the resident memory at the peak and tens of milliseconds at every cold
//! start. The encoder's kernels only need `&[f32]`, so f32 tensors are used straight from the
//! mapping (zero-copy: the pages are the OS page cache, shared by every worker thread and by
//! other processes serving the same file). Tensors stored in another dtype (f16, bf16) or at an
//! unaligned offset are converted once with candle and owned.
//!
//! **Model files must be replaced by rename, never rewritten in place.** The mapping is the
//! file: truncating a served `model.safetensors` kills the process with SIGBUS at the next
//! read of a page past the new end, and rewriting it in place silently changes the weights
//! (and so the answers) of the running server. Writing a new file beside it and renaming it
//! over the old name is safe: the server keeps the old inode until it restarts. The hub cache
//! (files written to `blobs/`, then linked into `snapshots/`) and the container image (a
//! read-only layer) already do this, and so do every writer in this repository
//! (`tiny::write_tiny_bert`, `scripts/fetch-model.sh`). A private mapping (`MAP_PRIVATE`)
//! would not help: it still faults with SIGBUS past a truncated end, and pages not yet copied
//! still show writes made to the file (see docs/reliability.md for the measurements).
//!
//! Every size read from the file is checked (header offsets against the file length, byte
//! lengths against shape × dtype size, without overflow) before a weight is handed out, so a
//! corrupt file is a [`ModelError::Weights`] naming the file and tensor, never a panic.

use std::path::Path;
use std::sync::Arc;

use candle_core::safetensors::Load;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors};

use super::ModelError;

/// An opened weights file.
pub struct WeightFile {
    path: std::path::PathBuf,
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
        // SAFETY: mapped read-only. The file must not be truncated or rewritten in place
        // while it is mapped (see the module doc: model files are replaced by rename), which
        // is the one thing the type system cannot check here.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| err(e.to_string()))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let data_start = header_len
            .checked_add(8)
            .ok_or_else(|| err("header length overflows".into()))?;
        Ok(Self {
            path: path.to_path_buf(),
            map: Arc::new(map),
            data_start,
            metadata,
        })
    }

    /// Drops the mapping's pages from this process's resident set (`MADV_DONTNEED`): called
    /// after load when the weights were converted, so that RSS counts what the model runs on,
    /// not the f32 file it was converted from. The mapping stays valid: a page still in use
    /// (the embeddings, norms) is read back from the page cache at its next access.
    pub fn release_resident_pages(&self) {
        #[cfg(unix)]
        // SAFETY: a read-only shared file mapping: MADV_DONTNEED only unmaps its pages from
        // this process; the next access re-reads the same file contents (the file is never
        // rewritten in place, see the module doc). Nothing is lost or changed.
        unsafe {
            if let Err(e) = self
                .map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
            {
                tracing::debug!(error = %e, "madvise(DONTNEED) on the weights failed");
            }
        }
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// The tensor `name` as f32: in place when it is stored as aligned f32, else converted.
    pub fn get(&self, name: &str) -> Result<Weight, ModelError> {
        let bad = |what: String| {
            ModelError::Weights(format!("{}: tensor {name} {what}", self.path.display()))
        };
        let RawTensor {
            dtype,
            shape,
            start,
            stop,
            count,
        } = self.raw(name)?;
        let aligned =
            (self.map.as_ptr() as usize + start).is_multiple_of(std::mem::align_of::<f32>());
        if dtype == Dtype::F32 && aligned && cfg!(target_endian = "little") {
            return Ok(Weight {
                storage: Storage::Mapped {
                    map: self.map.clone(),
                    start,
                    len: count,
                },
                shape,
            });
        }
        // Converted once into memory of its own: straight from the mapped bytes for the
        // dtypes checkpoints store (no intermediate tensor: a 151,669-row bf16 table went
        // through 10 bytes per value that way), through candle for the others. The tensor's
        // pages are then dropped from the resident set (the file stays mapped).
        let bytes = &self.map[start..stop];
        let values: Vec<f32> = match dtype {
            Dtype::BF16 => bytes.chunks_exact(2).map(bf16_le).collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            _ => {
                let tensors =
                    SafeTensors::deserialize(&self.map).map_err(|e| bad(e.to_string()))?;
                let view = tensors.tensor(name).map_err(|e| bad(e.to_string()))?;
                view.load(&candle_core::Device::Cpu)
                    .and_then(|t| t.to_dtype(candle_core::DType::F32))
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| bad(format!("cannot be converted to f32: {e}")))?
            }
        };
        release_pages(&self.map, start, stop - start);
        Ok(Weight::owned(values, shape))
    }

    /// Tensor `name`'s dtype, shape and byte range in the mapping, every size checked.
    pub(super) fn raw(&self, name: &str) -> Result<RawTensor, ModelError> {
        let bad = |what: String| {
            ModelError::Weights(format!("{}: tensor {name} {what}", self.path.display()))
        };
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| bad("is missing".into()))?;
        let (begin, end) = info.data_offsets;
        let count = info
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad(format!("has a shape {:?} too large to address", info.shape)))?;
        let bits = count
            .checked_mul(info.dtype.bitsize())
            .ok_or_else(|| bad(format!("has a shape {:?} too large to address", info.shape)))?;
        let stored = end
            .checked_sub(begin)
            .ok_or_else(|| bad(format!("ends (byte {end}) before it begins (byte {begin})")))?;
        if bits % 8 != 0 || stored != bits / 8 {
            return Err(bad(format!(
                "holds {stored} bytes, but its shape {:?} of {:?} needs {} bits",
                info.shape, info.dtype, bits
            )));
        }
        let start = self.data_start.checked_add(begin);
        let stop = self.data_start.checked_add(end);
        let (Some(start), Some(stop)) = (start, stop) else {
            return Err(bad("has offsets too large to address".into()));
        };
        if stop > self.map.len() {
            return Err(bad(format!(
                "runs past the end of the file (byte {stop} of {})",
                self.map.len()
            )));
        }
        Ok(RawTensor {
            dtype: info.dtype,
            shape: info.shape.clone(),
            start,
            stop,
            count,
        })
    }

    /// The mapping, for a tensor read in place in its stored dtype.
    pub(super) fn map(&self) -> &Arc<Mmap> {
        &self.map
    }
}

/// A tensor's place in the mapping, checked: `stop - start` bytes hold `count` values of
/// `dtype` in `shape`.
pub(super) struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub stop: usize,
    pub count: usize,
}

/// A little-endian bf16 as f32 (exact: bf16 is f32's top half).
pub(super) fn bf16_le(b: &[u8]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
}

/// Drops the whole pages of `map[start..start + len]` from this process's resident set
/// (`MADV_DONTNEED`), once a loader has copied or converted what they hold: without this, the
/// peak of a load is the file mapped plus the model converted from it. A page read again (by
/// another thread, or later) comes back from the page cache, unchanged.
pub fn release_pages(map: &Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return,
        };
        let first = start.next_multiple_of(page);
        let end = (start + len).min(map.len()) / page * page;
        if end > first {
            // SAFETY: a read-only shared file mapping: MADV_DONTNEED only unmaps its pages
            // from this process, and the next access re-reads the same file contents (model
            // files are replaced by rename, never rewritten in place: the module doc).
            // `first..end` lies inside the map (clamped to its length above).
            let advised = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, end - first)
            };
            if let Err(e) = advised {
                tracing::debug!(error = %e, "madvise(DONTNEED) failed");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (map, start, len);
}

/// A weight file's tensors under a checkpoint's prefix (`bert.`, `roberta.`, `model.` for
/// models saved with a head or as a causal LM), with shapes checked against the config.
pub(super) struct Names<'a> {
    file: &'a WeightFile,
    prefix: &'static str,
}

impl<'a> Names<'a> {
    /// The tensors under `prefix` when `file` holds `{prefix}{probe}`, else unprefixed.
    pub(super) fn prefixed_if_present(
        file: &'a WeightFile,
        prefix: &'static str,
        probe: &str,
    ) -> Self {
        let prefix = if file.contains(&format!("{prefix}{probe}")) {
            prefix
        } else {
            ""
        };
        Names { file, prefix }
    }

    /// The tensors of a head, stored without the encoder's prefix (`classifier.weight`).
    pub(super) fn unprefixed(file: &'a WeightFile) -> Self {
        Names { file, prefix: "" }
    }

    /// The prefix of the encoder's tensors.
    pub(super) fn prefix(&self) -> &'static str {
        self.prefix
    }

    /// The file and the full name of `name` under the prefix.
    pub(super) fn full(&self, name: &str) -> (&'a WeightFile, String) {
        (self.file, format!("{}{name}", self.prefix))
    }

    /// Tensor `name` (under the prefix), checked to have shape `dims`.
    pub(super) fn get(&self, name: &str, dims: &[usize]) -> Result<Weight, ModelError> {
        let full = format!("{}{name}", self.prefix);
        let w = self.file.get(&full)?;
        if w.shape() != dims {
            return Err(ModelError::Weights(format!(
                "{}: {full} has shape {:?}, config.json implies {dims:?}",
                self.file.path().display(),
                w.shape()
            )));
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Instant;

    /// VmRSS, RssAnon and RssFile of this process, in MiB.
    fn rss() -> (f64, f64, f64) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
                / 1024.0
        };
        (kib("VmRSS:"), kib("RssAnon:"), kib("RssFile:"))
    }

    /// Evicts `file`'s pages from the page cache (when nothing maps them), for a cold read.
    fn evict(file: &std::fs::File) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on an open descriptor.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }

    /// Measures the ways the weights could be held, on a real model (the cost behind the
    /// module doc's rule). One way per run, so RSS is not mixed:
    ///
    /// ```text
    /// ZB_WEIGHTS=shared|private|owned [ZB_COLD=1] ZEROBATCH_MODEL_DIR=... \
    ///   cargo test --lib weights::tests::weight_holding_costs -- --ignored --nocapture
    /// ```
    #[test]
    #[ignore = "a measurement on the real model; see the doc comment"]
    fn weight_holding_costs() {
        let dir = std::env::var("ZEROBATCH_MODEL_DIR").expect("ZEROBATCH_MODEL_DIR");
        let path = std::path::Path::new(&dir).join("model.safetensors");
        let how = std::env::var("ZB_WEIGHTS").unwrap_or_else(|_| "shared".into());
        let cold = std::env::var("ZB_COLD").is_ok();
        let file = std::fs::File::open(&path).unwrap();
        if cold {
            evict(&file);
        }
        let before = rss();
        let t = Instant::now();
        enum Held {
            Map(Mmap),
            Owned(Vec<f32>, usize),
        }
        let held = match how.as_str() {
            // SAFETY: a measurement on a file nobody rewrites meanwhile.
            "shared" => Held::Map(unsafe { Mmap::map(&file) }.unwrap()),
            "private" => {
                Held::Map(unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) }.unwrap())
            }
            "owned" => {
                use std::io::Read;
                let len = file.metadata().unwrap().len() as usize;
                let mut values = vec![0.0f32; len.div_ceil(4)];
                // SAFETY: the Vec's buffer seen as its bytes; any bytes are valid f32 values.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), len)
                };
                (&file).read_exact(bytes).unwrap();
                Held::Owned(values, len)
            }
            other => panic!("ZB_WEIGHTS={other}: shared, private or owned"),
        };
        let bytes: &[u8] = match &held {
            Held::Map(m) => m,
            // SAFETY: as above, `len` bytes of the buffer.
            Held::Owned(v, len) => unsafe {
                std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), *len)
            },
        };
        let (header, metadata) = SafeTensors::read_metadata(bytes).unwrap();
        let opened = t.elapsed();
        let after_open = rss();
        // Read every weight once, as the first forward pass does.
        let t = Instant::now();
        let mut sum = 0.0f64;
        for info in metadata.tensors().values() {
            let (b, e) = info.data_offsets;
            for chunk in bytes[8 + header + b..8 + header + e].chunks_exact(4) {
                sum += f32::from_le_bytes(chunk.try_into().unwrap()) as f64;
            }
        }
        let touched = t.elapsed();
        let after_touch = rss();
        println!(
            "weights={how} cold={cold} size={:.1}MiB open+read_header={:.2}ms first_read_of_all={:.2}ms \
             rss(MiB total/anon/file) before={:.1}/{:.1}/{:.1} after_open={:.1}/{:.1}/{:.1} \
             after_reading_all={:.1}/{:.1}/{:.1} (sum {sum:.3})",
            bytes.len() as f64 / 1048576.0,
            opened.as_secs_f64() * 1e3,
            touched.as_secs_f64() * 1e3,
            before.0,
            before.1,
            before.2,
            after_open.0,
            after_open.1,
            after_open.2,
            after_touch.0,
            after_touch.1,
            after_touch.2,
        );
    }

    /// Whether a read of `ptr` in a forked child dies of SIGBUS.
    fn read_dies_of_sigbus(ptr: *const u8) -> bool {
        // SAFETY: the child only reads memory and exits (async-signal-safe); the parent waits.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                std::ptr::read_volatile(ptr);
                libc::_exit(0);
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGBUS
        }
    }

    /// What a private mapping (MAP_PRIVATE, memmap2's `map_copy_read_only`) does and does
    /// not protect against, next to the shared one (Linux): writes to the file in place show
    /// through both (pages read before and pages not read yet), and a read past a truncated
    /// end is SIGBUS with both. So neither replaces the rule "replace by rename".
    #[test]
    #[ignore = "an experiment on Linux mapping semantics (forks)"]
    fn private_mappings_do_not_protect_against_in_place_changes() {
        let page = 4096;
        for private in [false, true] {
            let path = std::env::temp_dir().join(format!(
                "zb-map-experiment-{}-{private}",
                std::process::id()
            ));
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            file.write_all(&vec![1u8; 3 * page]).unwrap();
            // SAFETY: the experiment changes the file on purpose; reads only.
            let map = unsafe {
                if private {
                    memmap2::MmapOptions::new().map_copy_read_only(&file)
                } else {
                    Mmap::map(&file)
                }
            }
            .unwrap();
            assert_eq!(map[0], 1, "page 0 read before the write");
            use std::os::unix::fs::FileExt;
            file.write_all_at(&[2], 0).unwrap();
            file.write_all_at(&[3], 2 * page as u64).unwrap();
            assert_eq!(
                map[0], 2,
                "private={private}: a write shows through a page read before"
            );
            assert_eq!(
                map[2 * page],
                3,
                "private={private}: a write shows through a page not read before"
            );
            file.set_len(page as u64).unwrap();
            assert!(
                read_dies_of_sigbus(map[2 * page..].as_ptr()),
                "private={private}: a read past the truncated end is SIGBUS"
            );
            assert!(!read_dies_of_sigbus(map.as_ptr()), "page 0 still exists");
            drop(map);
            std::fs::remove_file(&path).unwrap();
        }
    }
}
