//! Property tests: whatever a tenant puts in a RideTraining, whatever its
//! trainer image reports (progress answer, termination message), and
//! whatever ends up in status, the operator's pure parts — report
//! validation, observation, the lifecycle decision, status from progress,
//! the per-training gauges and the pod rendering — return without
//! panicking, and what they decide stays bounded. The operator crate is
//! built with overflow checks in release too, so an overflow is a failure
//! here, not a silent wrap.

use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use ride_contract::{CheckpointProgress, EvalProgress, Progress, RunState};
use ride_operator::crd::{
    CheckpointStatus, EvalStatus, ExitAction, ExitCodeRule, LostWorkStatus, Phase, ProgressStatus,
    RestartsByCause, RideTraining, RideTrainingSpec, RideTrainingStatus,
};
use ride_operator::lifecycle::{decide, Action, Observed, ObservedPod, PodState};
use ride_operator::observe::{apply_progress, observe_pod, update_run_progress};
use ride_operator::report::{validate, ReportClock};

/// Floats as a hostile peer sends them: NaN, infinities, huge, tiny, normal.
fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(0.0),
        1.7e9f64..1.9e9,
        prop::num::f64::ANY,
    ]
}

/// Integers near the edges and in the everyday range.
fn any_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(1u64 << 63),
        Just(2_305_843_009_213_693_952u64),
        0u64..10_000,
        any::<u64>(),
    ]
}

fn any_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(i64::MAX),
        Just(i64::MIN),
        1_700_000_000i64..1_900_000_000,
        -10_000i64..10_000,
        any::<i64>(),
    ]
}

fn any_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(0i32),
        Just(i32::MAX),
        Just(i32::MIN),
        -3i32..10,
        any::<i32>()
    ]
}

fn run_state() -> impl Strategy<Value = RunState> {
    prop_oneof![
        Just(RunState::Starting),
        Just(RunState::Training),
        Just(RunState::Evaluating),
        Just(RunState::Finished),
        Just(RunState::Preempted),
        Just(RunState::Failed),
    ]
}

prop_compose! {
    fn report()(
        state in run_state(),
        (rank, world_size) in (any::<u32>(), any::<u32>()),
        (epoch, epochs, step, total_steps) in (any_u64(), any_u64(), any_u64(), any_u64()),
        last_step_unix in prop::option::of(any_f64()),
        training_since_unix in prop::option::of(any_f64()),
        images_per_second in any_f64(),
        checkpoint in prop::option::of((".{0,30}", any_u64(), any_u64(), ".{0,30}", prop::option::of(any_f64()))),
        eval in prop::option::of((any_u64(), any_f64(), prop::option::of(any_f64()), prop::option::of(any_f64()))),
        message in prop::option::of(".{0,200}"),
    ) -> Progress {
        Progress {
            state, rank, world_size, epoch, epochs, step, total_steps, last_step_unix,
            training_since_unix, images_per_second,
            checkpoint: checkpoint.map(|(uri, epoch, step, saved_at, saved_unix)| CheckpointProgress {
                uri, epoch, step, saved_at, saved_unix,
            }),
            eval: eval.map(|(epoch, top1, many, few)| EvalProgress { epoch, top1, many, medium: None, few }),
            message,
        }
    }
}

fn phase() -> impl Strategy<Value = Option<Phase>> {
    prop::option::of(prop::sample::select(Phase::ALL.to_vec()))
}

prop_compose! {
    fn status()(
        phase in phase(),
        (restarts, attempt, world_size, exempt_restarts, resizes) in (any_i32(), any_i32(), any_i32(), any_i32(), any_i32()),
        causes in (any_i32(), any_i32(), any_i32(), any_i32(), any_i32()),
        times in (prop::option::of(any_i64()), prop::option::of(any_i64()), prop::option::of(any_i64()), prop::option::of(any_i64()), prop::option::of(any_i64())),
        progress in prop::option::of((any_i64(), any_i64(), any_i64(), any_i64(), prop::option::of(any_f64()), prop::option::of(any_i64()), prop::option::of(any_i64()))),
        checkpoint in prop::option::of((any_i64(), ".{0,30}")),
        lost in prop::option::of((any_i64(), any_f64(), any_f64())),
        eval in prop::option::of(any_f64()),
        keep_hash in any::<bool>(),
    ) -> (RideTrainingStatus, bool) {
        let (start_time, running_since, restart_after, restart_time, completion_time) = times;
        let lost = lost.map(|(steps, seconds, gpu_seconds)| LostWorkStatus { steps, seconds, gpu_seconds });
        let status = RideTrainingStatus {
            phase, restarts, attempt, world_size, exempt_restarts, resizes,
            restarts_by_cause: RestartsByCause {
                application: causes.0, infrastructure: causes.1, preemption: causes.2,
                stall: causes.3, user: causes.4,
            },
            start_time, running_since, restart_after, restart_time, completion_time,
            attempt_start_time: start_time,
            progress: progress.map(|(epoch, epochs, step, total_steps, steps_per_second, last_step_time, eta)| ProgressStatus {
                epoch, epochs, step, total_steps, percent: "?".into(), steps_per_second,
                training: Some(true), last_step_time, eta,
            }),
            last_checkpoint: checkpoint.map(|(step, time)| CheckpointStatus {
                uri: "s3://b/x".into(), epoch: step, step, time,
            }),
            latest_eval: eval.map(|overall| EvalStatus { overall, ..Default::default() }),
            lost_work: lost,
            lost_work_by_cause: lost.map(|l| [("application".to_string(), l)].into_iter().collect()).unwrap_or_default(),
            reason: Some("InvalidSpec".into()).filter(|_| keep_hash),
            ..Default::default()
        };
        (status, keep_hash)
    }
}

fn pod_state() -> impl Strategy<Value = PodState> {
    prop_oneof![
        prop::option::of(any_i64()).prop_map(|t| PodState::Pending {
            unschedulable_since: t
        }),
        Just(PodState::Running),
        Just(PodState::Succeeded),
        any_i32().prop_map(|exit_code| PodState::Failed { exit_code }),
        prop_oneof![Just(75), Just(76), Just(77), Just(78), any_i32()]
            .prop_map(|exit_code| PodState::Failed { exit_code }),
        ".{0,10}".prop_map(|reason| PodState::Disrupted { reason }),
    ]
}

prop_compose! {
    fn observed_pod()(
        rank in any_i32(), attempt in any_i32(), state in pod_state(),
        deletion_deadline in prop::option::of(any_i64()),
        ended_at in prop::option::of(any_i64()),
        start_problem in prop::option::of(".{0,20}"),
        exit_message in prop::option::of(".{0,20}"),
        node_lost in prop::option::of(".{0,20}"),
        stopped in any::<bool>(),
    ) -> ObservedPod {
        ObservedPod { rank, attempt, state, deletion_deadline, ended_at, start_problem, exit_message, node_lost, stopped }
    }
}

fn example() -> RideTraining {
    let text = include_str!("../../examples/ride-cpu.yaml");
    let mut rt: RideTraining = serde_norway::from_str(text).expect("example parses");
    rt.metadata.namespace = Some("team".into());
    rt.metadata.uid = Some("uid-1".into());
    rt
}

prop_compose! {
    /// The example with its numbers replaced by arbitrary ones (a spec the
    /// API server's schema would mostly refuse, as an object stored before
    /// a rule or written past the schema might be).
    fn spec()(
        replicas in prop_oneof![1i32..6, any_i32()],
        min_replicas in prop::option::of(prop_oneof![1i32..6, any_i32()]),
        gpus in prop_oneof![0i32..3, any_i32()],
        numbers in (any_i64(), any_i64(), any_i64(), any_i32(), any_i32(), any_i32(), any_i32()),
        stall in prop::option::of(any_i64()),
        deadline in (prop::option::of(any_i64()), prop::option::of(any_i64())),
        suspend in any::<bool>(),
        rules in prop::collection::vec((prop::collection::vec(any_i32(), 1..3), 0u8..3), 0..3),
    ) -> RideTrainingSpec {
        let mut s = example().spec;
        s.workers.replicas = replicas;
        s.workers.min_replicas = min_replicas;
        s.workers.gpus_per_worker = gpus;
        s.workers.elastic_timeout_seconds = numbers.0;
        s.workers.termination_grace_period_seconds = numbers.1;
        s.restart_policy.force_delete_after_seconds = numbers.2;
        s.restart_policy.budget = numbers.3;
        s.restart_policy.backoff_seconds = numbers.4;
        s.restart_policy.max_exempt_restarts = numbers.5;
        s.restart_policy.stall_budget = numbers.6;
        s.workers.max_resizes = numbers.6;
        s.restart_policy.stall_timeout_seconds = stall;
        s.run_policy.ttl_seconds_after_finished = deadline.0;
        s.run_policy.active_deadline_seconds = deadline.1;
        s.run_policy.suspend = suspend;
        s.restart_policy.exit_code_rules = rules
            .into_iter()
            .map(|(codes, a)| ExitCodeRule {
                codes,
                action: [ExitAction::Restart, ExitAction::RestartExempt, ExitAction::Fail][a as usize],
            })
            .collect();
        s
    }
}

/// `spec` with every number pulled into the CRD's range: valid specs
/// with extreme values.
fn within_ranges(mut s: RideTrainingSpec) -> RideTrainingSpec {
    let w = &mut s.workers;
    w.replicas = w.replicas.clamp(1, 4096);
    w.min_replicas = w.min_replicas.map(|m| m.clamp(1, w.replicas));
    w.gpus_per_worker = w.gpus_per_worker.clamp(0, 16);
    w.elastic_timeout_seconds = w.elastic_timeout_seconds.clamp(10, 86_400);
    w.termination_grace_period_seconds = w.termination_grace_period_seconds.clamp(0, 86_400);
    w.max_resizes = w.max_resizes.clamp(0, 1000);
    let r = &mut s.restart_policy;
    r.budget = r.budget.clamp(0, 1000);
    r.stall_budget = r.stall_budget.clamp(0, 1000);
    r.backoff_seconds = r.backoff_seconds.clamp(0, 3600);
    r.force_delete_after_seconds = r.force_delete_after_seconds.clamp(0, 86_400);
    r.max_exempt_restarts = r.max_exempt_restarts.clamp(0, 100_000);
    r.stall_timeout_seconds = r.stall_timeout_seconds.map(|t| t.clamp(0, 86_400));
    let p = &mut s.run_policy;
    p.ttl_seconds_after_finished = p.ttl_seconds_after_finished.map(|t| t.max(0));
    p.active_deadline_seconds = p.active_deadline_seconds.map(|t| t.max(1));
    s
}

fn clock_near(now: i64) -> ReportClock {
    ReportClock {
        now: now as f64,
        created: now as f64 - 86_400.0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any report, accepted or not, through status: no panic; what is
    /// accepted keeps percent within 0–100 %.
    #[test]
    fn any_report_updates_any_status_without_panicking(
        raw in report(),
        (st, _) in status(),
        now in prop_oneof![1_700_000_000i64..1_900_000_000, any_i64()],
    ) {
        // The operator only ever applies validated reports; unvalidated
        // ones must not panic either.
        let mut unchecked = st.clone();
        apply_progress(&mut unchecked, &raw);
        update_run_progress(&mut unchecked, &raw, now);
        if let Ok(p) = validate(raw, clock_near(now)) {
            let mut st = st;
            apply_progress(&mut st, &p);
            update_run_progress(&mut st, &p, now);
            if let Some(progress) = &st.progress {
                let pct: u64 = progress.percent.trim_end_matches('%').parse().unwrap();
                prop_assert!(pct <= 100);
                prop_assert!(progress.step <= progress.total_steps);
            }
        }
    }

    /// Any termination message on a worker pod: observing it does not panic
    /// and the trainer's words are bounded.
    #[test]
    fn any_termination_message_is_observed_without_panicking(
        message in prop_oneof![".{0,300}", report().prop_map(|p| serde_json::to_string(&p).unwrap_or_default())],
        code in any_i32(),
        rank in ".{0,12}",
    ) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "t-0-0", "labels": {"ride.dev/rank": rank, "ride.dev/attempt": "0"}},
            "status": {"phase": "Failed", "containerStatuses": [{
                "name": "trainer", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "message": message}}}]},
        })).unwrap();
        if let Some(o) = observe_pod(&pod) {
            prop_assert!(o.exit_message.map_or(0, |m| m.len()) <= ride_operator::report::MAX_MESSAGE_BYTES);
        }
    }

    /// Any spec, status and observation through the decision: no panic,
    /// never more pods created than the spec's replicas, every created
    /// rank within the world, and the status it writes renders.
    #[test]
    fn any_spec_status_and_pods_decide_without_panicking(
        spec in prop_oneof![spec(), spec().prop_map(within_ranges)],
        (mut st, keep_hash) in status(),
        pods in prop::collection::vec(observed_pod(), 0..8),
        now in prop_oneof![1_700_000_000i64..1_900_000_000, any_i64()],
        service_exists in any::<bool>(),
        generation in prop::option::of(any_i64()),
        queued in prop::option::of(".{0,20}"),
    ) {
        if keep_hash {
            st.spec_hash = Some(ride_operator::lifecycle::spec_hash(&spec));
        }
        let invalid_spec = spec.validate().err().map(|e| e.to_string());
        let valid = invalid_spec.is_none();
        let obs = Observed { now, pods, service_exists, invalid_spec, generation, queued };
        let d = decide(&spec, &st, &obs);
        let created: Vec<(i32, i32)> = d.actions.iter().filter_map(|a| match a {
            Action::CreatePod { rank, world_size, .. } => Some((*rank, *world_size)),
            _ => None,
        }).collect();
        if !created.is_empty() {
            prop_assert!(valid, "pods created for an invalid spec");
            prop_assert!(created.len() as i32 <= spec.workers.replicas);
            for (rank, world) in created {
                prop_assert!((0..world).contains(&rank) && world <= spec.workers.replicas);
            }
        }
        for a in &d.actions {
            if let Action::RequeueAfter(s) = a {
                prop_assert!(*s >= 0, "requeue after {s}");
            }
        }
        serde_json::to_string(&d.status).unwrap();
        // The gauges read the same status.
        let mut rt = example();
        rt.spec = spec;
        rt.status = Some(d.status);
        let sample = ride_operator::training_gauges::sample(&rt, now);
        prop_assert!(sample.progress_ratio.is_none_or(|r| (0.0..=1.0).contains(&r)));
    }

    /// Any valid spec renders pods for any rank of any world it can have.
    #[test]
    fn any_valid_spec_renders_its_pods(
        spec in spec().prop_map(within_ranges),
        rank in any_i32(),
        attempt in any_i32(),
        world in any_i32(),
    ) {
        prop_assert!(spec.validate().is_ok(), "{:?}", spec.validate());
        let mut rt = example();
        rt.spec = spec;
        let pod = ride_operator::pods::worker_pod(&rt, rank, attempt, world);
        prop_assert!(pod.spec.is_some());
    }
}
