//! What DyRep did: one record per grow or cut (`events.jsonl`), with the scores the grown conv
//! was chosen over and how the change rescaled the main conv.

use serde::{Deserialize, Serialize};

use super::preserve::MainScale;

/// One grow or cut, as written to `events.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The epoch (1-based) the event followed or, with `step`, happened in.
    pub epoch: usize,
    /// The run's step (1-based) a grow or cut in the middle of an epoch followed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub step: Option<u64>,
    pub kind: String,
    pub path: String,
    /// Ops added (grow) or removed (cut).
    pub ops: Vec<String>,
    /// The conv's score (grow).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f64>,
    /// γ of new branches (grow) or the importance of the cut branch (cut).
    pub gamma: f64,
    pub params: usize,
    pub macs: u64,
    pub preserve_rel_err: f64,
    /// Every growable conv the scorer ranked for this grow, best first (grow): what the grown
    /// conv was chosen over.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub ranking: Vec<ScoredConv>,
    /// How the grow or cut rescaled the main conv's output channels, and the factor on its
    /// effective step (absent in events written before it was recorded).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub main_scale: Option<MainScale>,
}

/// A growable conv and its score at a grow step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredConv {
    pub path: String,
    pub score: f64,
}
