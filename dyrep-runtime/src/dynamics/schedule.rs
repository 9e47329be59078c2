//! The growth schedule of dyrep mode (paper §4; the reference grows every 15 of 600 epochs
//! until epoch 500 on CIFAR, every 5 of 120 until 100 on ImageNet: docs/REFERENCE.md). A span
//! of training is given in epochs (fractions allowed), in steps, or as `auto`: a fixed share of
//! the whole run — 1/40 for the interval and 5/6 for the last growth, the reference's
//! proportions — so a short run grows as often, relative to its length, as the paper's.
//! Growth happens after the step that completes an interval; one that completes an epoch
//! happens after that epoch's evaluation, as the reference does.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Result, RuntimeError};

/// The share of the run one growth interval spans under `auto`.
pub const AUTO_INTERVAL_SHARE: f64 = 1.0 / 40.0;
/// The share of the run after which nothing grows under `auto`.
pub const AUTO_MAX_SHARE: f64 = 5.0 / 6.0;

/// A span of training.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Period {
    /// Epochs, whole or fractional (`2`, `0.5`).
    Epochs(f64),
    /// Optimizer steps (`"300 steps"`).
    Steps(u64),
    /// A fixed share of the run (see the module docs).
    #[default]
    Auto,
    /// No limit (`"none"`): for the last growth only.
    Unlimited,
}

impl Period {
    /// Parses `auto`, `none`, `N`, `N epochs` or `N steps` (`N` may be fractional for epochs).
    pub fn parse(text: &str) -> std::result::Result<Period, String> {
        let t = text.trim().to_ascii_lowercase();
        let bad = || {
            format!(
                "`{text}`: expected a number of epochs (`2`, `0.5`), `N steps`, `auto` or `none`"
            )
        };
        match t.as_str() {
            "auto" => return Ok(Period::Auto),
            "none" => return Ok(Period::Unlimited),
            _ => {}
        }
        let (num, unit) = match t.split_once(char::is_whitespace) {
            Some((n, u)) => (n, u.trim()),
            None => (t.as_str(), "epochs"),
        };
        match unit {
            "epoch" | "epochs" => num
                .parse::<f64>()
                .ok()
                .filter(|e| e.is_finite() && *e > 0.0)
                .map(Period::Epochs)
                .ok_or_else(bad),
            "step" | "steps" => num
                .parse::<u64>()
                .ok()
                .filter(|s| *s > 0)
                .map(Period::Steps)
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }

    /// The span in steps, for a run of `total` steps of `per_epoch` each; `auto` is `share`
    /// of the run; never below one step.
    pub fn steps(self, per_epoch: u64, total: u64, share: f64) -> u64 {
        match self {
            Period::Epochs(e) => ((e * per_epoch as f64).round() as u64).max(1),
            Period::Steps(s) => s.max(1),
            Period::Auto => ((total as f64 * share).round() as u64).max(1),
            Period::Unlimited => u64::MAX,
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Epochs(e) => write!(f, "{e} epochs"),
            Period::Steps(s) => write!(f, "{s} steps"),
            Period::Auto => f.write_str("auto"),
            Period::Unlimited => f.write_str("none"),
        }
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            // Whole epochs stay integers in TOML, as before this type existed.
            Period::Epochs(e) if e.fract() == 0.0 && *e < 1e15 => s.serialize_u64(*e as u64),
            Period::Epochs(e) => s.serialize_f64(*e),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        // `null`: what runs written before this type stored for "until the end".
        let text = match Option::<Raw>::deserialize(d)? {
            None => return Ok(Period::Unlimited),
            Some(Raw::Int(n)) => n.to_string(),
            Some(Raw::Float(x)) => x.to_string(),
            Some(Raw::Text(t)) => t,
        };
        Period::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The growth schedule of one run, in steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrowSchedule {
    /// Steps between grows.
    pub interval: u64,
    /// No grow after this many steps.
    pub last: u64,
    /// Steps of the whole run (nothing grows at its very end).
    pub total: u64,
}

impl GrowSchedule {
    /// The schedule of a run of `epochs` epochs of `per_epoch` steps.
    pub fn new(interval: Period, last: Period, per_epoch: u64, epochs: u64) -> Result<Self> {
        if interval == Period::Unlimited {
            return Err(RuntimeError::Config(
                "dyrep.grow_interval cannot be `none`; give epochs, `N steps` or `auto`".into(),
            ));
        }
        let total = per_epoch * epochs;
        Ok(GrowSchedule {
            interval: interval.steps(per_epoch, total, AUTO_INTERVAL_SHARE),
            last: last.steps(per_epoch, total, AUTO_MAX_SHARE),
            total,
        })
    }

    /// Whether a grow step follows the `step`-th step of the run (1-based).
    pub fn grows_after(&self, step: u64) -> bool {
        step < self.total && step <= self.last && step.is_multiple_of(self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_and_round_trip_through_toml() {
        assert_eq!(Period::parse("2"), Ok(Period::Epochs(2.0)));
        assert_eq!(Period::parse("0.5"), Ok(Period::Epochs(0.5)));
        assert_eq!(Period::parse("1.5 epochs"), Ok(Period::Epochs(1.5)));
        assert_eq!(Period::parse("300 steps"), Ok(Period::Steps(300)));
        assert_eq!(Period::parse("AUTO"), Ok(Period::Auto));
        assert_eq!(Period::parse("none"), Ok(Period::Unlimited));
        for bad in ["0", "-1", "x", "2 weeks", "0 steps", "1.5 steps", "inf"] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct T {
            a: Period,
            b: Period,
            c: Period,
            d: Period,
        }
        let t = T {
            a: Period::Epochs(15.0),
            b: Period::Epochs(0.25),
            c: Period::Steps(40),
            d: Period::Auto,
        };
        let text = toml::to_string(&t).unwrap();
        assert!(text.contains("a = 15\n"), "{text}");
        assert_eq!(toml::from_str::<T>(&text).unwrap(), t);
    }

    #[test]
    fn whole_epoch_intervals_grow_where_the_epoch_schedule_did() {
        // 10 epochs of 7 steps, every 2 epochs until epoch 6: after epochs 2, 4, 6.
        let s = GrowSchedule::new(Period::Epochs(2.0), Period::Epochs(6.0), 7, 10).unwrap();
        let at: Vec<u64> = (1..=70).filter(|&k| s.grows_after(k)).collect();
        assert_eq!(at, vec![14, 28, 42]);
        // Never after the last step of the run.
        let s = GrowSchedule::new(Period::Epochs(1.0), Period::Unlimited, 5, 3).unwrap();
        let at: Vec<u64> = (1..=15).filter(|&k| s.grows_after(k)).collect();
        assert_eq!(at, vec![5, 10]);
    }

    #[test]
    fn auto_takes_the_reference_proportions_of_the_run() {
        // 600 epochs of 391 steps: every 15 epochs until epoch 500, as the reference's CIFAR
        // recipe.
        let s = GrowSchedule::new(Period::Auto, Period::Auto, 391, 600).unwrap();
        assert_eq!((s.interval, s.last), (15 * 391, 500 * 391));
        // A 12-epoch run of 78 steps grows every 0.3 epochs (23 steps) until epoch 10.
        let s = GrowSchedule::new(Period::Auto, Period::Auto, 78, 12).unwrap();
        assert_eq!((s.interval, s.last), (23, 780));
        assert_eq!((1..=936).filter(|&k| s.grows_after(k)).count(), 33);
        // Fractions of an epoch and steps.
        let s = GrowSchedule::new(Period::Epochs(0.5), Period::Steps(30), 20, 4).unwrap();
        let at: Vec<u64> = (1..=80).filter(|&k| s.grows_after(k)).collect();
        assert_eq!(at, vec![10, 20, 30]);
        assert!(GrowSchedule::new(Period::Unlimited, Period::Auto, 5, 5).is_err());
    }
}
