//! Which instruction sets the kernels may use: detected once from the CPU, optionally capped.
//!
//! The shipped binary is built for the x86-64 baseline (no `-C target-cpu=native`): every
//! fast kernel is compiled with `#[target_feature]` and chosen at run time from a
//! [`KernelLevel`]. The cap (`--kernel-cap` / `ZEROBATCH_KERNEL_CAP`) lets an operator, a
//! benchmark or a test run the portable paths on a machine that has better ones, which is how
//! the AVX2 and scalar paths are measured and tested on an AVX-512 machine.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A rung of the kernel ladder, lowest first. Each level implies every feature of the ones
/// below it, so capping is `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum KernelLevel {
    /// Portable Rust, whatever the CPU.
    #[serde(rename = "scalar")]
    Scalar,
    /// AVX2 + FMA (Haswell and later, AMD Zen): f32 FMA, int8 through `vpmaddubsw`, bf16 by
    /// widening to f32.
    #[serde(rename = "avx2")]
    Avx2,
    /// AVX-512 F/BW/VL/DQ with VNNI (Ice Lake, Sapphire Rapids, AMD Zen 4): int8 through
    /// `vpdpbusd` on 16 lanes.
    #[serde(rename = "avx512-vnni")]
    Avx512Vnni,
    /// The above plus AVX-512 BF16 (Cooper Lake, Sapphire Rapids, Zen 4): bf16 through
    /// `vdpbf16ps`.
    #[serde(rename = "avx512-bf16")]
    Avx512Bf16,
    /// The above plus AMX-BF16 tiles (Sapphire Rapids and later), with the Linux permission for
    /// tile data granted: the bf16 linear layers through `tdpbf16ps` (int8 and 4-bit layers
    /// run their AVX-512 VNNI code, as at `avx512-bf16`).
    #[serde(rename = "amx")]
    Amx,
}

impl KernelLevel {
    /// Every level, lowest first.
    pub const ALL: [KernelLevel; 5] = [
        KernelLevel::Scalar,
        KernelLevel::Avx2,
        KernelLevel::Avx512Vnni,
        KernelLevel::Avx512Bf16,
        KernelLevel::Amx,
    ];

    /// The name used by the flag, `/info` and the logs.
    pub fn name(self) -> &'static str {
        match self {
            KernelLevel::Scalar => "scalar",
            KernelLevel::Avx2 => "avx2",
            KernelLevel::Avx512Vnni => "avx512-vnni",
            KernelLevel::Avx512Bf16 => "avx512-bf16",
            KernelLevel::Amx => "amx",
        }
    }

    /// The best level this CPU supports (detected once). Always `Scalar` under miri, which
    /// checks the portable code.
    pub fn detected() -> KernelLevel {
        use std::sync::OnceLock;
        static DETECTED: OnceLock<KernelLevel> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// The level to run: the detected one, lowered to `cap` if given.
    pub fn capped(cap: Option<KernelLevel>) -> KernelLevel {
        let detected = Self::detected();
        cap.map_or(detected, |cap| cap.min(detected))
    }
}

impl fmt::Display for KernelLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KernelLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        KernelLevel::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<_> = KernelLevel::ALL.iter().map(|l| l.name()).collect();
                format!(
                    "unknown kernel level {s:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> KernelLevel {
    if cfg!(miri) {
        return KernelLevel::Scalar;
    }
    // F16C (every AVX2 CPU has it) widens the generation's f16 KV cache in the AVX builds.
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vnni");
    if avx512 && is_x86_feature_detected!("avx512bf16") && amx::available() {
        KernelLevel::Amx
    } else if avx512 && is_x86_feature_detected!("avx512bf16") {
        KernelLevel::Avx512Bf16
    } else if avx512 {
        KernelLevel::Avx512Vnni
    } else if avx2 {
        KernelLevel::Avx2
    } else {
        KernelLevel::Scalar
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> KernelLevel {
    KernelLevel::Scalar
}

/// Whether AMX-BF16 tiles may run in this process.
#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::x86_64::__cpuid_count;

    /// `arch_prctl` requests (arch/x86/include/uapi/asm/prctl.h).
    #[cfg(target_os = "linux")]
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    /// The state component of the tile registers' data (XTILEDATA, 8 KB per thread).
    #[cfg(target_os = "linux")]
    const XFEATURE_XTILEDATA: libc::c_long = 18;

    /// The CPU has AMX-TILE and AMX-BF16 with palette 1 as the kernels use it (8 tiles of 16
    /// rows × 64 bytes), and Linux granted this process the tile data (once per process; the
    /// permission covers every thread, present and future). Called once, from
    /// [`super::KernelLevel::detected`].
    pub(super) fn available() -> bool {
        // CPUID leaf 7 (sub-leaf 0), EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
        let leaf7 = __cpuid_count(7, 0);
        if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
            return false;
        }
        // Leaf 0x1D: the highest palette (EAX of sub-leaf 0); sub-leaf 1 describes palette 1:
        // EBX[31:16] tile names, EBX[15:0] bytes per row, ECX[15:0] rows.
        if __cpuid_count(0x1D, 0).eax < 1 {
            return false;
        }
        let palette = __cpuid_count(0x1D, 1);
        if palette.ebx >> 16 < 8 || palette.ebx & 0xFFFF < 64 || palette.ecx & 0xFFFF < 16 {
            return false;
        }
        request_tile_data()
    }

    /// Asks Linux for the tile data state (without it the first tile instruction raises
    /// SIGILL). Refused by kernels before 5.16 and where the signal stack is too small.
    #[cfg(target_os = "linux")]
    fn request_tile_data() -> bool {
        // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM takes an integer and touches no memory
        // of ours.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        if rc != 0 {
            tracing::warn!(
                "the CPU has AMX but Linux refused the tile data ({}): the bf16 layers run on AVX-512",
                std::io::Error::last_os_error()
            );
        }
        rc == 0
    }

    #[cfg(not(target_os = "linux"))]
    fn request_tile_data() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for level in KernelLevel::ALL {
            assert_eq!(level.name().parse::<KernelLevel>(), Ok(level));
            assert_eq!(level.to_string(), level.name());
        }
        assert_eq!("AVX2".parse::<KernelLevel>(), Ok(KernelLevel::Avx2));
        let err = "sse4".parse::<KernelLevel>().unwrap_err();
        assert!(err.contains("sse4") && err.contains("avx512-bf16"), "{err}");
        assert_eq!("amx".parse::<KernelLevel>(), Ok(KernelLevel::Amx));
        assert_eq!(serde_json::to_string(&KernelLevel::Amx).unwrap(), "\"amx\"");
    }

    #[test]
    fn the_cap_only_lowers() {
        let detected = KernelLevel::detected();
        assert_eq!(KernelLevel::capped(None), detected);
        assert_eq!(
            KernelLevel::capped(Some(KernelLevel::Scalar)),
            KernelLevel::Scalar
        );
        assert_eq!(KernelLevel::capped(Some(KernelLevel::Amx)), detected);
        assert_eq!(
            KernelLevel::capped(Some(KernelLevel::Avx512Bf16)),
            detected.min(KernelLevel::Avx512Bf16)
        );
    }
}
