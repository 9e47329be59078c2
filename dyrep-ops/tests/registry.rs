//! Registry tests: the seven built-in ops are registered once each, in reference order, their
//! specs round-trip through JSON by typetag under their registry name, `ensure_linked` keeps
//! the registrations, unknown names get a did-you-mean, and a grown (nested) slot tree's
//! architecture JSON rebuilds the same structure with the same tensor paths.

use candle_core::Device;
use dyrep_api::{find_op, ops, registry::check_unique, ConvGeom, InitCtx, OpSpec, Slot, SlotArch};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const BUILT_IN: [&str; 7] = [
    "conv1x1",
    "conv1x1_kxk",
    "conv1x1_avg",
    "convkxk",
    "conv1xk",
    "convkx1",
    "identity",
];

#[test]
fn ensure_linked_keeps_the_seven_built_in_ops_in_reference_order() {
    dyrep_ops::ensure_linked();
    let names: Vec<&str> = ops().iter().map(|e| e.name).collect();
    assert_eq!(names, BUILT_IN);
    check_unique("op", &ops(), |e| e.name).unwrap();
    for e in ops() {
        assert!(
            !e.summary.is_empty() && !e.summary.contains('\n'),
            "{}",
            e.name
        );
    }
}

#[test]
fn every_spec_round_trips_through_json_under_its_name() {
    dyrep_ops::ensure_linked();
    for e in ops() {
        let spec = (e.default_spec)();
        assert_eq!(spec.name(), e.name, "spec name differs from registry name");
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json["op"], e.name,
            "typetag name differs from registry name: {json}"
        );
        let back: Box<dyn OpSpec> = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.name(), e.name);
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
    }
}

#[test]
fn spec_settings_survive_json_and_unknown_fields_are_refused() {
    dyrep_ops::ensure_linked();
    let spec: Box<dyn OpSpec> =
        serde_json::from_str(r#"{"op":"conv1x1_kxk","internal_channels":8}"#).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    assert!(json.contains("\"internal_channels\":8"), "{json}");
    assert!(serde_json::from_str::<Box<dyn OpSpec>>(r#"{"op":"conv1x1","k":3}"#).is_err());
    assert!(serde_json::from_str::<Box<dyn OpSpec>>(r#"{"op":"conv9x9"}"#).is_err());
}

#[test]
fn unknown_op_names_suggest_the_nearest() {
    dyrep_ops::ensure_linked();
    let msg = find_op("conv1x1kxk").unwrap_err().to_string();
    assert!(msg.contains("did you mean `conv1x1_kxk`"), "{msg}");
    assert!(msg.contains("identity"), "{msg}");
}

fn grown_tree(rng: &mut ChaCha8Rng) -> Slot {
    let geom = ConvGeom::same(4, 4, 3, 1, 1).unwrap();
    let mut ctx = InitCtx::new(rng, &Device::Cpu);
    let all: Vec<Box<dyn OpSpec>> = ops()
        .iter()
        .filter(|e| e.name != dyrep_ops::MAIN_OP)
        .map(|e| (e.default_spec)())
        .collect();
    let main = dyrep_ops::main_spec();
    let mut slot = Slot::conv(geom, false, &mut ctx).unwrap();
    slot.grow(&*main, &all, &mut ctx).unwrap();
    for path in ["convkxk.conv", "conv1x1_kxk.conv2"] {
        let (inner, depth) = slot.slot_mut(path).unwrap();
        assert_eq!(depth, 1);
        let geom = *inner.geom();
        let specs: Vec<Box<dyn OpSpec>> = all
            .iter()
            .filter(|s| s.check(&geom).is_ok())
            .cloned()
            .collect();
        inner.grow(&*main, &specs, &mut ctx).unwrap();
    }
    slot
}

#[test]
fn architecture_json_rebuilds_the_same_tree() {
    dyrep_ops::ensure_linked();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let slot = grown_tree(&mut rng);
    let json = serde_json::to_string_pretty(&slot.arch()).unwrap();
    let arch: SlotArch = serde_json::from_str(&json).unwrap();
    let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
    let rebuilt = Slot::from_arch(*slot.geom(), &arch, &mut ctx).unwrap();
    assert_eq!(serde_json::to_string_pretty(&rebuilt.arch()).unwrap(), json);
    let paths = |s: &Slot| {
        let mut v = vec![];
        s.visit_tensors("features.3", &mut |p, t, r| {
            v.push((p.to_string(), t.dims().to_vec(), r))
        });
        v
    };
    assert_eq!(paths(&slot), paths(&rebuilt));
    assert_eq!(rebuilt.block_count(), 3);
    // Nested convs are reachable by path, and the depth limit is visible.
    let infos = rebuilt.slots();
    assert!(infos
        .iter()
        .any(|i| i.path == "convkxk.conv.convkxk.conv" && i.depth == 2));
    assert!(infos
        .iter()
        .any(|i| i.path == "conv1x1_kxk.conv2.conv1x1_kxk.conv2" && i.depth == 2));
    // The nested conv2 block (padding 0) only has the reduced branch set.
    let nested = rebuilt
        .slots()
        .into_iter()
        .find(|i| i.path == "conv1x1_kxk.conv2")
        .unwrap();
    assert_eq!(nested.geom.padding, 0);
}

#[test]
fn architecture_with_unknown_child_or_bad_geometry_is_refused() {
    dyrep_ops::ensure_linked();
    let geom = ConvGeom::same(4, 8, 3, 2, 1).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
    let bad_child: SlotArch = serde_json::from_str(
        r#"{"kind":"block","main":{"spec":{"op":"convkxk"},"children":{"nope":{"kind":"conv","bias":true}}},"branches":[]}"#,
    )
    .unwrap();
    let e = Slot::from_arch(geom, &bad_child, &mut ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    // identity cannot stand in a stride-2 conv with in != out.
    let bad_op: SlotArch = serde_json::from_str(
        r#"{"kind":"block","main":{"spec":{"op":"convkxk"}},"branches":[{"spec":{"op":"identity"}}]}"#,
    )
    .unwrap();
    let e = Slot::from_arch(geom, &bad_op, &mut ctx)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("identity") && e.contains("in_ch == out_ch"),
        "{e}"
    );
}

#[test]
fn growth_refuses_a_block_and_duplicate_branches() {
    dyrep_ops::ensure_linked();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut slot = grown_tree(&mut rng);
    let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
    let main = dyrep_ops::main_spec();
    let e = slot.grow(&*main, &[], &mut ctx).unwrap_err().to_string();
    assert!(e.contains("already a block"), "{e}");
    let b = slot.as_block_mut().unwrap();
    let e = b
        .add_branch(&dyrep_ops::Conv1x1Spec {}, &mut ctx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already has a `conv1x1`"), "{e}");
    assert!(b.cut("convkxk").is_err());
    assert!(b.cut("nope").is_err());
}
