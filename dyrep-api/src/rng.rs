//! `SeededRng`: the project's own seeded RNG (candle cannot seed its CPU RNG), ChaCha8, with a
//! JSON-friendly serialised state (seed as hex, stream and word position as decimal strings —
//! serde_json and typetag's buffering cannot carry u128) so runs and scorers resume exactly.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A seeded, serialisable ChaCha8 generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeededRng(ChaCha8Rng);

impl SeededRng {
    /// A generator from a 64-bit seed.
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// A generator from a seed and a named purpose, so independent streams (init, data order,
    /// a scorer) don't overlap when they share the user's seed.
    pub fn for_purpose(seed: u64, purpose: &str) -> Self {
        let h = crate::hash::fnv64(purpose.bytes());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(h);
        Self(rng)
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RngState {
    seed: String,
    stream: String,
    word_pos: String,
}

impl Serialize for SeededRng {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let seed: String = self
            .0
            .get_seed()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        RngState {
            seed,
            stream: self.0.get_stream().to_string(),
            word_pos: self.0.get_word_pos().to_string(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SeededRng {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let st = RngState::deserialize(d)?;
        if st.seed.len() != 64 {
            return Err(D::Error::custom("rng seed must be 64 hex digits"));
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&st.seed[2 * i..2 * i + 2], 16)
                .map_err(|e| D::Error::custom(format!("rng seed: {e}")))?;
        }
        let stream: u64 = st
            .stream
            .parse()
            .map_err(|e| D::Error::custom(format!("rng stream: {e}")))?;
        let word_pos: u128 = st
            .word_pos
            .parse()
            .map_err(|e| D::Error::custom(format!("rng word_pos: {e}")))?;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(stream);
        rng.set_word_pos(word_pos);
        Ok(Self(rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_mid_stream() {
        let mut a = SeededRng::for_purpose(42, "data");
        for _ in 0..37 {
            a.next_u32();
        }
        let json = serde_json::to_string(&a).unwrap();
        let mut b: SeededRng = serde_json::from_str(&json).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(
            SeededRng::for_purpose(42, "data").next_u64(),
            SeededRng::for_purpose(42, "init").next_u64()
        );
        assert!(
            serde_json::from_str::<SeededRng>(r#"{"seed":"00","stream":"0","word_pos":"0"}"#)
                .is_err()
        );
    }
}
