//! The plugin example end to end: the op and scorer are in the registries next to the built-in
//! ones, the op passes dyrep's public fusion harness alone and inside a (nested) block, trains in
//! the online form as its branch-by-branch composition (forward and gradients), and a
//! `dyrep` built with the plugin lists and verifies it.

use std::process::Command;

use dyrep_api::equivalence::NestPlan;
use dyrep_api::testing::{
    assert_block_fusion_equivalent, assert_fusion_equivalent, assert_online_equivalent,
    fusion_case, fusion_case_for, proptest_config,
};
use dyrep_api::{find_op, find_scorer, ops, OpSpec};
use dyrep_plugin_kxk_1x1::ConvKxk1x1Spec;
use proptest::prelude::*;

fn link() {
    dyrep_plugin_kxk_1x1::ensure_linked();
    dyrep_ops::ensure_linked();
}

#[test]
fn plugin_op_and_scorer_are_registered_beside_the_built_ins() {
    link();
    assert_eq!(find_op("conv_kxk_1x1").unwrap().name, "conv_kxk_1x1");
    assert_eq!(
        find_scorer("weight_magnitude").unwrap().name,
        "weight_magnitude"
    );
    let names: Vec<&str> = ops().iter().map(|e| e.name).collect();
    // Plugins list after the seven built-ins.
    assert_eq!(names.len(), 8);
    assert_eq!(names[7], "conv_kxk_1x1");
    let json = serde_json::to_string(&(find_op("conv_kxk_1x1").unwrap().default_spec)()).unwrap();
    let back: Box<dyn OpSpec> = serde_json::from_str(&json).unwrap();
    assert_eq!(back.name(), "conv_kxk_1x1");
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn plugin_op_fuses_exactly(case in fusion_case_for(&ConvKxk1x1Spec::default())) {
        link();
        assert_fusion_equivalent(&ConvKxk1x1Spec::default(), &case)?;
        let wide = ConvKxk1x1Spec { internal_channels: Some(2 * case.geom.out_ch) };
        if wide.check(&case.geom).is_ok() {
            assert_fusion_equivalent(&wide, &case)?;
        }
    }

    /// The plugin gets the online form without code of its own: its equivalent kernel, written
    /// as kernel transforms, is differentiable when read live.
    #[test]
    fn plugin_op_trains_online_as_its_branch_by_branch_composition(case in fusion_case()) {
        link();
        let branches: Vec<Box<dyn OpSpec>> = vec![Box::new(ConvKxk1x1Spec::default())];
        let nest = [NestPlan { path: "convkxk.conv".into(), branches: branches.clone() }];
        let r = assert_online_equivalent(&*dyrep_ops::main_spec(), &branches, &nest, &case)?;
        prop_assert!(r.branches.contains(&"conv_kxk_1x1".to_string()));
        prop_assert_eq!(r.blocks, 2);
    }

    #[test]
    fn plugin_op_fuses_inside_nested_blocks(case in fusion_case()) {
        link();
        let branches: Vec<Box<dyn OpSpec>> = vec![
            Box::new(ConvKxk1x1Spec::default()),
            Box::new(dyrep_ops::Conv1x1KxkSpec::default()),
        ];
        let nest = [NestPlan { path: "convkxk.conv".into(), branches: branches.clone() }];
        let r = assert_block_fusion_equivalent(&*dyrep_ops::main_spec(), &branches, &nest, &case)?;
        prop_assert!(r.branches.contains(&"conv_kxk_1x1".to_string()));
    }
}

#[test]
fn dyrep_built_with_the_plugin_lists_and_verifies_it() {
    let bin = env!("CARGO_BIN_EXE_dyrep-with-kxk-1x1");
    let o = Command::new(bin).args(["ops", "--json"]).output().unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "conv_kxk_1x1"),
        "{v}"
    );
    let o = Command::new(bin).args(["scorers"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("weight_magnitude"));
    let o = Command::new(bin)
        .args([
            "verify",
            "--op",
            "conv_kxk_1x1",
            "--cases",
            "25",
            "--seed",
            "3",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // `verify --all` now includes the plugin op, alone and in the block checks.
    let o = Command::new(bin)
        .args(["verify", "--all", "--cases", "5", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["check"] == "conv_kxk_1x1"));
}

/// The model plugin: `pyramid-net` is listed by the plugin's `dyrep models` and trains in dyrep
/// mode — growing its convs with the plugin's own branch type among the built-in ones — then
/// fuses back to the plain network.
#[test]
fn the_plugin_model_is_listed_and_trains_in_dyrep_mode() {
    let bin = env!("CARGO_BIN_EXE_dyrep-with-kxk-1x1");
    let o = Command::new(bin)
        .args(["models", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "pyramid-net")
        .unwrap_or_else(|| panic!("pyramid-net not listed: {v}"));
    assert_eq!(row["input"], serde_json::json!([1, 28, 28]));
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = Command::new(bin)
        .args([
            "-q",
            "train",
            "--model",
            "pyramid-net",
            "--mode",
            "dyrep",
            "--ops",
            "conv_kxk_1x1,conv1x1,conv1x1_avg",
            "--epochs",
            "2",
            "--grow-interval",
            "0.5",
            "--train-limit",
            "512",
            "--test-limit",
            "128",
            "--batch-size",
            "32",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    assert!(
        events.contains("conv_kxk_1x1"),
        "no grow used the plugin op: {events}"
    );
    let o = Command::new(bin)
        .arg("fuse")
        .arg("--checkpoint")
        .arg(&run)
        .arg("--out")
        .arg(tmp.path().join("fused"))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
