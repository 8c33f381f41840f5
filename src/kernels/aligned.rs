//! A buffer of plain values whose first value sits on a cache-line (64-byte) boundary.
//!
//! Why: an AMX tile load reads 16 rows of 64 bytes; a row that straddles two cache lines costs
//! two. On the Xeon the tiles were measured on (Sapphire Rapids class, under KVM), the
//! `tdpbf16ps` block kernel ran at 400 GFLOP/s on one core from a `Vec`'s 16-byte aligned
//! memory and at 550–590 from 64-byte aligned memory, data in L1 both times (docs/benchmarks.md,
//! "AMX tile loads"). Packed weights and the staging buffers that tiles read are kept here.

use std::ops::{Deref, DerefMut};

/// The alignment, in bytes: one cache line, one tile row.
pub const ALIGN: usize = 64;

/// `len` values of `T` starting on a 64-byte boundary (over-allocated by one line, the
/// start found once).
pub struct AlignedVec<T> {
    raw: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> AlignedVec<T> {
    /// `len` values of `T::default()` (zero for the numbers it holds).
    pub fn zeroed(len: usize) -> Self {
        let size = std::mem::size_of::<T>().max(1);
        let extra = ALIGN.div_ceil(size);
        let raw = vec![T::default(); len + extra];
        // A `Vec<T>` is at least `align_of::<T>()` aligned, so the offset to the next line is
        // a whole number of values, below `extra`.
        let start = raw.as_ptr().align_offset(ALIGN).min(extra);
        Self { raw, start, len }
    }
}

impl<T> Default for AlignedVec<T> {
    /// Empty, without allocating.
    fn default() -> Self {
        Self {
            raw: Vec::new(),
            start: 0,
            len: 0,
        }
    }
}

impl<T> AlignedVec<T> {
    /// Values held (not counting the alignment slack).
    pub fn len(&self) -> usize {
        self.len
    }
}

impl<T> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.raw[self.start..self.start + self.len]
    }
}

impl<T> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_is_on_a_cache_line_and_every_value_is_zero() {
        for len in [0usize, 1, 31, 32, 33, 1000, 4096] {
            let u16s = AlignedVec::<u16>::zeroed(len);
            assert_eq!(u16s.len(), len);
            assert!(u16s.iter().all(|&v| v == 0));
            if len > 0 {
                assert_eq!(u16s.as_ptr() as usize % ALIGN, 0, "u16 × {len}");
            }
            let mut i8s = AlignedVec::<i8>::zeroed(len);
            assert_eq!(i8s.len(), len);
            if len > 0 {
                assert_eq!(i8s.as_ptr() as usize % ALIGN, 0, "i8 × {len}");
                i8s[len - 1] = 7;
                assert_eq!(i8s[len - 1], 7);
            }
        }
    }
}
