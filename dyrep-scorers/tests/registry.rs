//! Scorer registry: the built-in scorers are registered once each, in listing order, and each
//! one round-trips through JSON by typetag under its registry name.

use dyrep_api::{find_scorer, registry::check_unique, scorers, Scorer, ScorerConfig};

#[test]
fn built_in_scorers_are_registered_and_round_trip() {
    dyrep_scorers::ensure_linked();
    let names: Vec<&str> = scorers().iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        ["synflow", "snip", "grad_norm", "grasp", "random", "vote"]
    );
    check_unique("scorer", &scorers(), |e| e.name).unwrap();
    for e in scorers() {
        let s = (e.build)(&ScorerConfig { seed: 1 });
        assert_eq!(s.name(), e.name);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["scorer"], e.name, "{json}");
        let back: Box<dyn Scorer> = serde_json::from_value(json).unwrap();
        assert_eq!(back.name(), e.name);
    }
    let msg = find_scorer("synflw").unwrap_err().to_string();
    assert!(msg.contains("did you mean `synflow`"), "{msg}");
}
