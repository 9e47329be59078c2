//! Instruction-set tiers of the hand-written SIMD kernels (the direct conv, the lane-parallel
//! BN sums, the 2×2 max pool): AVX-512F, AVX2 + FMA, and portable scalar code, picked at run
//! time by CPU detection. `DYREP_ISA=avx512|avx2|scalar` caps the tier (for tests and A/B
//! runs: a tier the CPU lacks is never used, so `DYREP_ISA=avx512` on an AVX2 CPU runs AVX2).
//! Every tier computes the same sums in the same order where the kernels say so (the BN sums
//! are bit-equal across tiers), and within the kernels' stated tolerances otherwise.
//!
//! The `gemm` crate, which the lowered convs call, keeps its own CPU dispatch.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable that caps the tier.
pub const ISA_ENV: &str = "DYREP_ISA";

/// A tier of vector instructions, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable code (what the compiler makes of it for the build's target).
    Scalar,
    /// 256-bit vectors with fused multiply-add (Haswell, Zen 1 and later).
    Avx2,
    /// 512-bit vectors (AVX-512F: Skylake-SP and later Xeons, Zen 4 and later).
    Avx512,
}

/// `DYREP_ISA` holds something that is not a tier.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{ISA_ENV}={value}: unknown instruction set (expected avx512, avx2 or scalar)")]
pub struct IsaParseError {
    pub value: String,
}

impl Isa {
    /// Every tier, highest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Scalar];

    /// The name `DYREP_ISA` and `dyrep bench --json` use.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses a tier name (case-insensitive).
    pub fn parse(value: &str) -> Result<Isa, IsaParseError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx512f" => Ok(Isa::Avx512),
            "avx2" => Ok(Isa::Avx2),
            "scalar" | "none" => Ok(Isa::Scalar),
            _ => Err(IsaParseError {
                value: value.to_string(),
            }),
        }
    }

    /// Whether this CPU can run the tier.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => has_avx2_fma(),
            Isa::Avx512 => has_avx512f() && has_avx2_fma(),
        }
    }

    /// The highest tier this CPU runs.
    pub fn detected() -> Isa {
        Isa::ALL
            .into_iter()
            .find(|t| t.supported())
            .unwrap_or(Isa::Scalar)
    }

    /// Every tier this CPU runs, highest first.
    pub fn supported_tiers() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|t| t.supported()).collect()
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2_fma() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn has_avx512f() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx512f() -> bool {
    false
}

/// The cap `DYREP_ISA` asks for: `None` when unset or empty.
pub fn requested() -> Result<Option<Isa>, IsaParseError> {
    match std::env::var(ISA_ENV) {
        Ok(v) if !v.trim().is_empty() => Isa::parse(&v).map(Some),
        _ => Ok(None),
    }
}

/// `ACTIVE` before it is first read.
const UNSET: u8 = u8::MAX;

/// The tier in use, as `Isa as u8`; `UNSET` until the first `active()` or `set_active()`.
static ACTIVE: AtomicU8 = AtomicU8::new(UNSET);

fn from_code(code: u8) -> Isa {
    match code {
        2 => Isa::Avx512,
        1 => Isa::Avx2,
        _ => Isa::Scalar,
    }
}

fn code(isa: Isa) -> u8 {
    match isa {
        Isa::Scalar => 0,
        Isa::Avx2 => 1,
        Isa::Avx512 => 2,
    }
}

/// The tier the kernels run: the CPU's highest, capped by `DYREP_ISA` (an unparsable value
/// is ignored here; the CLI refuses it before any kernel runs) or by [`set_active`].
pub fn active() -> Isa {
    let c = ACTIVE.load(Ordering::Relaxed);
    if c != UNSET {
        return from_code(c);
    }
    let detected = Isa::detected();
    let isa = match requested() {
        Ok(Some(cap)) => cap.min(detected),
        _ => detected,
    };
    ACTIVE.store(code(isa), Ordering::Relaxed);
    isa
}

/// Runs the kernels at `isa` from now on in this process, capped at what the CPU has; returns
/// the tier actually set. For `dyrep verify --kernels`, which checks every tier in turn; a
/// kernel already running finishes on the tier it started with.
pub fn set_active(isa: Isa) -> Isa {
    let isa = isa.min(Isa::detected());
    ACTIVE.store(code(isa), Ordering::Relaxed);
    isa
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for t in Isa::ALL {
            assert_eq!(Isa::parse(t.name()), Ok(t));
            assert_eq!(Isa::parse(&t.name().to_uppercase()), Ok(t));
        }
        let e = Isa::parse("sse9").unwrap_err();
        assert!(e.to_string().contains("DYREP_ISA=sse9"), "{e}");
    }

    #[test]
    fn tiers_are_ordered_and_scalar_is_always_supported() {
        assert!(Isa::Scalar < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(Isa::Scalar.supported());
        let tiers = Isa::supported_tiers();
        assert_eq!(tiers.first(), Some(&Isa::detected()));
        assert_eq!(tiers.last(), Some(&Isa::Scalar));
        // A CPU with AVX-512F has AVX2 + FMA too.
        if Isa::Avx512.supported() {
            assert!(Isa::Avx2.supported());
        }
    }
}
