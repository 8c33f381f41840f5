//! AMX-BF16 through inline assembly (the AMX intrinsics are unstable in Rust), shared by the
//! bf16 linear layers (`bf16.rs`) and attention (`attention_amx.rs`). Palette 1: eight tile
//! registers of up to 16 rows × 64 bytes, all configured at their full size.
//!
//! The linear layers' block of up to 2 × 2 output tiles (32 rows × 32 columns) keeps its f32
//! sums in `tmm0..tmm3`, loads the activations into `tmm4`/`tmm5` (16 rows × 32 bf16) and the
//! weights into `tmm6`/`tmm7` (16 pairs × 16 columns × 2: one panel's next 16 pairs,
//! contiguous), and `tdpbf16ps` adds `A · B` for 32 reduction indices at a time.

use super::tiles::PANEL;
use std::arch::asm;
use std::marker::PhantomData;

/// Rows of an activation or sum tile.
pub const TILE_ROWS: usize = 16;
/// Rows of a block: two tiles.
pub const BLOCK_ROWS: usize = 2 * TILE_ROWS;
/// Panels of a block: two tiles.
pub const BLOCK_PANELS: usize = 2;
/// Bytes of a tile row (palette 1's maximum).
pub const ROW_BYTES: usize = 64;

/// The 64-byte operand of `ldtilecfg` (Intel SDM vol. 2, LDTILECFG): palette, start row,
/// 14 reserved bytes, bytes per row of each of 16 tiles, rows of each of 16 tiles.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Palette 1, tiles 0..8 at 16 rows × 64 bytes (tiles 8..16 do not exist: zero).
static CONFIG: TileConfig = {
    let mut colsb = [0u16; 16];
    let mut rows = [0u8; 16];
    let mut t = 0;
    while t < 8 {
        colsb[t] = ROW_BYTES as u16;
        rows[t] = TILE_ROWS as u8;
        t += 1;
    }
    TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb,
        rows,
    }
};

/// The tiles configured on this thread; released (`tilerelease`: back to the initial
/// state, so no tile state leaks into other code or a context switch) when dropped.
pub struct Tiles(PhantomData<*const ()>);

impl Tiles {
    /// Configures the tiles (`ldtilecfg`, which also zeroes them).
    ///
    /// # Safety
    ///
    /// The CPU must support AMX-TILE and Linux must have granted the tile data to the
    /// process (see `cpu::amx`): the level `amx` is detected.
    pub unsafe fn configure() -> Self {
        // SAFETY: the caller's contract; CONFIG is a valid palette-1 configuration, 64
        // bytes, aligned.
        unsafe {
            asm!(
                "ldtilecfg [{cfg}]",
                cfg = in(reg) &CONFIG,
                options(nostack, preserves_flags, readonly)
            )
        };
        Tiles(PhantomData)
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured (a `Tiles` exists), so the CPU has AMX.
        unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
    }
}

/// Loads tile `$t` from `$ptr`, rows `$stride` bytes apart.
macro_rules! load {
    ($t:literal, $ptr:expr, $stride:expr) => {
        asm!(
            concat!("tileloadd ", $t, ", [{p} + {s}*1]"),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, preserves_flags, readonly)
        )
    };
}

/// Stores tile `$t` to `$ptr`, rows `$stride` bytes apart.
macro_rules! store {
    ($t:literal, $ptr:expr, $stride:expr) => {
        asm!(
            concat!("tilestored [{p} + {s}*1], ", $t),
            p = in(reg) $ptr,
            s = in(reg) $stride,
            options(nostack, preserves_flags)
        )
    };
}

pub(crate) use {load, store};

/// `acc[(r·pn + p)·16 + lane] = Σ_k a[r][k] · w[p][k][lane]` for `16·rt` rows (`rt` ≤ 2
/// activation tiles) and `pn ≤ 2` panels, over `ktiles` × 32 reduction indices.
///
/// # Safety
///
/// The tiles are configured on this thread ([`Tiles::configure`]); `a` holds `16·rt` rows
/// of `lda ≥ 32·ktiles` values; `w` holds `pn` panels `panel_values` apart, each of
/// `ktiles` tiles of `16 × 32` values; `acc` is valid for writing `16·rt × pn × 16` values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn block(
    rt: usize,
    pn: usize,
    a: *const u16,
    lda: usize,
    w: *const u16,
    panel_values: usize,
    ktiles: usize,
    acc: *mut f32,
) {
    debug_assert!((1..=2).contains(&rt) && (1..=BLOCK_PANELS).contains(&pn));
    // bf16 values of a tile, and of an activation tile's row (one tile's reduction indices).
    const TILE_VALUES: usize = TILE_ROWS * ROW_BYTES / 2;
    const ROW_VALUES: usize = ROW_BYTES / 2;
    let a_stride = lda * 2;
    // SAFETY: the caller's contract: every load reads inside `a` and `w`, every store
    // writes inside `acc`; the tile registers are this thread's, configured.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem, preserves_flags)
        );
        let a1 = a.add(TILE_ROWS * lda);
        let w1 = w.add(panel_values);
        for t in 0..ktiles {
            let (ka, kw) = (t * ROW_VALUES, t * TILE_VALUES);
            load!("tmm4", a.add(ka), a_stride);
            load!("tmm6", w.add(kw), ROW_BYTES);
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                options(nostack, nomem, preserves_flags)
            );
            if pn == 2 {
                load!("tmm7", w1.add(kw), ROW_BYTES);
                asm!(
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    options(nostack, nomem, preserves_flags)
                );
            }
            if rt == 2 {
                load!("tmm5", a1.add(ka), a_stride);
                asm!(
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    options(nostack, nomem, preserves_flags)
                );
                if pn == 2 {
                    asm!(
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        options(nostack, nomem, preserves_flags)
                    );
                }
            }
        }
        // acc rows hold pn panels side by side (the layout `store_tile` reads).
        let c_stride = pn * PANEL * 4;
        let acc1 = acc.add(TILE_ROWS * pn * PANEL);
        store!("tmm0", acc, c_stride);
        if pn == 2 {
            store!("tmm1", acc.add(PANEL), c_stride);
        }
        if rt == 2 {
            store!("tmm2", acc1, c_stride);
            if pn == 2 {
                store!("tmm3", acc1.add(PANEL), c_stride);
            }
        }
    }
}
