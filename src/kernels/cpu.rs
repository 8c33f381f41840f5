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
}

impl KernelLevel {
    /// Every level, lowest first.
    pub const ALL: [KernelLevel; 4] = [
        KernelLevel::Scalar,
        KernelLevel::Avx2,
        KernelLevel::Avx512Vnni,
        KernelLevel::Avx512Bf16,
    ];

    /// The name used by the flag, `/info` and the logs.
    pub fn name(self) -> &'static str {
        match self {
            KernelLevel::Scalar => "scalar",
            KernelLevel::Avx2 => "avx2",
            KernelLevel::Avx512Vnni => "avx512-vnni",
            KernelLevel::Avx512Bf16 => "avx512-bf16",
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
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vnni");
    if avx512 && is_x86_feature_detected!("avx512bf16") {
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
    }

    #[test]
    fn the_cap_only_lowers() {
        let detected = KernelLevel::detected();
        assert_eq!(KernelLevel::capped(None), detected);
        assert_eq!(
            KernelLevel::capped(Some(KernelLevel::Scalar)),
            KernelLevel::Scalar
        );
        assert_eq!(KernelLevel::capped(Some(KernelLevel::Avx512Bf16)), detected);
    }
}
