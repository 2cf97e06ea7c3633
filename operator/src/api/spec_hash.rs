//! The hash of what shapes a training's pods (`status.specHash`, the
//! pods' `ride.dev/spec-hash` annotation): a change restarts the gang.

use crate::crd::{RestartPolicySpec, RideTrainingSpec};

/// A stable hash of the part of the spec that shapes the pods; a change
/// restarts the gang. Restart and run policies, the elastic bounds and the
/// resize limit are read at each decision and change nothing in a running
/// pod (except the stall timeout, an environment variable of the pods), so
/// editing them leaves a healthy gang alone.
pub fn spec_hash(spec: &RideTrainingSpec) -> String {
    fnv1a(&hashed_spec_json(spec))
}

/// The JSON [`spec_hash`] hashes. Fields added since are left out while
/// they hold their defaults, so upgrading the operator restarts no gang.
pub(crate) fn hashed_spec_json(spec: &RideTrainingSpec) -> String {
    let mut s = spec.clone();
    s.run_policy = Default::default();
    // The stall timeout is the one restart setting the pods carry (as an
    // environment variable); unset, it is not serialised at all.
    s.restart_policy = RestartPolicySpec {
        stall_timeout_seconds: spec.restart_policy.stall_timeout_seconds,
        ..Default::default()
    };
    s.workers.min_replicas = None;
    s.workers.elastic_timeout_seconds = 0;
    s.workers.max_resizes = 0;
    let json = serde_json::to_string(&s).unwrap_or_default();
    let default_stall_budget = RestartPolicySpec::default().stall_budget;
    json.replacen(&format!(",\"stallBudget\":{default_stall_budget}"), "", 1)
}

/// The hash operators before 0.2 stored (the whole spec but the run
/// policy, before `maxExemptRestarts`, `maxResizes` and `stallBudget` existed): accepted
/// as current, so upgrading the operator restarts no gang.
pub(crate) fn legacy_spec_hash(spec: &RideTrainingSpec) -> String {
    let mut s = spec.clone();
    s.run_policy = Default::default();
    let json = serde_json::to_string(&s).unwrap_or_default();
    // Both are plain integers; a string value containing the same text is
    // escaped (`\"`) and cannot match.
    // Compiled once: this runs in every decision.
    static NEWER: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#","(maxExemptRestarts|maxResizes|stallBudget)":-?[0-9]+"#)
            .expect("static pattern")
    });
    fnv1a(&NEWER.replace_all(&json, ""))
}

fn fnv1a(json: &str) -> String {
    // FNV-1a: small, stable across builds (unlike std's hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
