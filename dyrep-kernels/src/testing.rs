//! Reproducible property tests (cargo feature `testing`): the proptest configuration every
//! property test of dyrep uses, and that plugin authors get through `dyrep_api::testing`.
//!
//! Runs are reproducible by default: the random generator starts from a fixed seed
//! ([`DEFAULT_SEED`]), so CI draws the same cases on every machine and every run. Set
//! `PROPTEST_RNG_SEED=<u64>` to draw other cases, or `PROPTEST_RNG_SEED=random` to draw a fresh
//! seed; either way the seed is printed at the start of each property test, and cargo shows
//! that line with the failure, so `PROPTEST_RNG_SEED=<seed> cargo test <name>` replays it.
//! `PROPTEST_CASES` sets the number of cases. Failing cases are also kept beside the test
//! source (`<test>.proptest-regressions`) and replayed first; commit them.

use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

/// The seed property tests start from unless `PROPTEST_RNG_SEED` says otherwise.
pub const DEFAULT_SEED: u64 = 0x5eed_d7e9;

/// The environment variable proptest itself reads for the seed.
pub const SEED_ENV: &str = "PROPTEST_RNG_SEED";

/// The generator seed for this run: `PROPTEST_RNG_SEED` (a `u64`, or `random` for one drawn
/// from the clock), else [`DEFAULT_SEED`]. An unparsable value is reported and ignored.
pub fn rng_seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(v) if v.trim().eq_ignore_ascii_case("random") => clock_seed(),
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{SEED_ENV}={v}: not a u64 or `random`; using the default seed");
            DEFAULT_SEED
        }),
        Err(_) => DEFAULT_SEED,
    }
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // Fold the 128-bit count; the low bits change on every call.
    (nanos as u64) ^ ((nanos >> 64) as u64) ^ u64::from(std::process::id())
}

/// Proptest config: `default_cases` cases unless `PROPTEST_CASES` says otherwise, the seed of
/// [`rng_seed`] (printed, with how to replay it), failures persisted beside the test source.
pub fn proptest_config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_cases);
    let seed = rng_seed();
    eprintln!("proptest seed {seed} ({cases} cases): replay with {SEED_ENV}={seed}");
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_seeded_and_counts_cases() {
        // Only meaningful without an override in the environment (CI sets none).
        if std::env::var_os(SEED_ENV).is_none() && std::env::var_os("PROPTEST_CASES").is_none() {
            let c = proptest_config(17);
            assert_eq!(c.cases, 17);
            assert_eq!(c.rng_seed, RngSeed::Fixed(DEFAULT_SEED));
        }
    }
}
