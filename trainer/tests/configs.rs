//! Every shipped config loads, round-trips through YAML unchanged, and the
//! four reference RIDE configs build models whose parameter counts equal the
//! reference implementation's.

mod common;

use ride_trainer::config::{load::from_tree, load_config, Overrides};
use ride_trainer::model::ride_swin::parameter_count;
use ride_trainer::model::RideSwin;
use tch::{nn, Device};

fn config_files() -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(common::repo_root().join("configs"))
        .expect("configs/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_config_round_trips() {
    let files = config_files();
    assert!(
        files.len() >= 9,
        "expected the 8 reference configs and the CPU configs, found {files:?}"
    );
    for f in files {
        let cfg = load_config(Some(&f), &Overrides::default())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let yaml = serde_norway::to_string(&cfg).expect("serialise");
        let again = from_tree(serde_norway::from_str(&yaml).expect("parse")).expect("reload");
        assert_eq!(cfg, again, "{} does not round-trip", f.display());
    }
}

/// Parameter counts and `flops()` of the reference `SwinTransformer` (RIDE
/// fork, commit dcde5de) for each shipped config at 1000 classes, measured by
/// building the reference models with torch 2.11 (docs/reference-parity.md).
const REFERENCE: [(&str, i64, i64); 8] = [
    (
        "swin_tiny_patch4_window7_224.yaml",
        28_288_354,
        4_494_405_120,
    ),
    (
        "swin_tiny_patch4_window7_224_lt.yaml",
        28_287_354,
        4_494_405_120,
    ),
    (
        "swin_tiny_patch4_window7_224_lt_2_experts_ride.yaml",
        31_888_050,
        4_874_597_376,
    ),
    (
        "swin_tiny_patch4_window7_224_lt_3_experts_ride.yaml",
        47_122_218,
        6_507_355_776,
    ),
    (
        "swin_small_patch4_window7_224.yaml",
        49_606_258,
        8_746_520_064,
    ),
    (
        "swin_small_patch4_window7_224_lt.yaml",
        49_605_258,
        8_746_520_064,
    ),
    (
        "swin_small_patch4_window7_224_lt_2_experts_ride.yaml",
        55_914_450,
        9_692_095_488,
    ),
    (
        "swin_small_patch4_window7_224_lt_3_experts_ride.yaml",
        83_161_818,
        13_733_602_944,
    ),
];

#[test]
fn parameter_counts_and_flops_equal_the_reference() {
    for (file, params, flops) in REFERENCE {
        let cfg = load_config(
            Some(&common::repo_root().join("configs").join(file)),
            &Overrides::default(),
        )
        .expect("config loads");
        let vs = nn::VarStore::new(Device::Cpu);
        let m = RideSwin::new(&vs.root(), &cfg.swin_spec()).expect("model builds");
        assert_eq!(parameter_count(&vs), params, "{file}: parameters");
        assert_eq!(m.flops(), flops, "{file}: flops");
    }
}

#[test]
fn summary_prints_parameter_count_as_plain_integer() {
    let cfg =
        common::repo_root().join("configs/swin_tiny_patch4_window7_224_lt_2_experts_ride.yaml");
    let out = common::trainer(&["summary", "--cfg", cfg.to_str().unwrap()]);
    let t = common::text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["parameters", "31888050"]),
        "{t}"
    );
    assert!(t.contains("flops"), "{t}");
}
