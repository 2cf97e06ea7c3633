use super::*;
use crate::crd::{ExitCodeRule, RideTraining};

fn spec() -> RideTrainingSpec {
    let rt: RideTraining = serde_norway::from_str(
        r#"
apiVersion: ride.dev/v1alpha1
kind: RideTraining
metadata: {name: t}
spec:
  image: ride:1
  trainer: {config: c.yaml}
  workers: {replicas: 4, minReplicas: 2, elasticTimeoutSeconds: 60}
  checkpoint: {uri: "s3://b/t"}
  restartPolicy: {budget: 2, backoffSeconds: 10, preemptionExempt: true}
"#,
    )
    .unwrap();
    rt.spec
}

fn pod(rank: i32, attempt: i32, state: PodState) -> ObservedPod {
    ObservedPod {
        rank,
        attempt,
        state,
        deletion_deadline: None,
        ended_at: None,
        start_problem: None,
        exit_message: None,
        node_lost: None,
        stopped: false,
    }
}

fn gang(attempt: i32, n: i32, state: PodState) -> Vec<ObservedPod> {
    (0..n).map(|r| pod(r, attempt, state.clone())).collect()
}

fn obs(now: i64, pods: Vec<ObservedPod>) -> Observed {
    Observed {
        now,
        pods,
        service_exists: true,
        invalid_spec: None,
        generation: Some(1),
        queued: None,
    }
}

/// Status after the first reconcile and all 4 workers running.
fn running(s: &RideTrainingSpec) -> RideTrainingStatus {
    let d = decide(s, &RideTrainingStatus::default(), &obs(0, vec![]));
    decide(s, &d.status, &obs(5, gang(0, 4, PodState::Running))).status
}

fn creates(d: &Decision) -> Vec<(i32, i32, i32)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreatePod {
                rank,
                attempt,
                world_size,
            } => Some((*rank, *attempt, *world_size)),
            _ => None,
        })
        .collect()
}

fn deletes(d: &Decision) -> Vec<(i32, i32, bool)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::DeletePod {
                rank,
                attempt,
                force,
            } => Some((*rank, *attempt, *force)),
            _ => None,
        })
        .collect()
}

fn has_event(d: &Decision, reason: &str) -> bool {
    d.actions
        .iter()
        .any(|a| matches!(a, Action::Event { reason: r, .. } if r == reason))
}

#[test]
fn a_new_training_gets_a_service_and_every_rank() {
    let s = spec();
    let mut o = obs(0, vec![]);
    o.service_exists = false;
    let d = decide(&s, &RideTrainingStatus::default(), &o);
    assert_eq!(d.actions[1], Action::EnsureService);
    assert_eq!(
        creates(&d),
        vec![(0, 0, 4), (1, 0, 4), (2, 0, 4), (3, 0, 4)]
    );
    assert_eq!(d.status.phase, Some(Phase::Created));
    assert!(has_event(&d, "Created"));
    // Idempotent: the same observation after the pods exist creates nothing more.
    let d2 = decide(
        &s,
        &d.status,
        &obs(
            1,
            gang(
                0,
                4,
                PodState::Pending {
                    unschedulable_since: None,
                },
            ),
        ),
    );
    assert!(creates(&d2).is_empty());
    assert_eq!(d2.status.phase, Some(Phase::Created));
}

#[test]
fn a_gang_coming_up_is_told_by_status_not_by_an_event() {
    let s = spec();
    let created = decide(&s, &RideTrainingStatus::default(), &obs(0, vec![]));
    assert!(has_event(&created, "Created"));
    let d = decide(&s, &created.status, &obs(5, gang(0, 4, PodState::Running)));
    assert_eq!(d.status.phase, Some(Phase::Running));
    assert_eq!(d.status.running_since, Some(5));
    assert!(
        !d.actions.iter().any(|a| matches!(a, Action::Event { .. })),
        "{:?}",
        d.actions
    );
}

#[test]
fn all_workers_running_means_running_once() {
    let s = spec();
    let st = running(&s);
    assert_eq!(st.phase, Some(Phase::Running));
    assert_eq!(st.running_since, Some(5));
    let d = decide(&s, &st, &obs(6, gang(0, 4, PodState::Running)));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
}

#[test]
fn a_failed_worker_restarts_the_whole_gang_after_backoff() {
    let s = spec();
    let st = running(&s);
    let mut pods = gang(0, 4, PodState::Running);
    pods[2].state = PodState::Failed { exit_code: 1 };
    let d = decide(&s, &st, &obs(100, pods));
    assert_eq!(deletes(&d).len(), 4, "the whole gang goes");
    assert_eq!((d.status.attempt, d.status.restarts), (1, 1));
    assert_eq!(d.status.phase, Some(Phase::Restarting));
    assert_eq!(d.status.restart_after, Some(110));
    assert!(has_event(&d, "WorkerFailed"));
    // During the backoff nothing is created.
    let mut old = gang(0, 4, PodState::Running);
    old.iter_mut().for_each(|p| p.deletion_deadline = Some(100));
    let d2 = decide(&s, &d.status, &obs(105, old));
    assert!(creates(&d2).is_empty());
    assert_eq!(d2.actions, vec![Action::RequeueAfter(5)]);
    // After it, attempt 1 waits while attempt 0 is still terminating...
    let mut old = gang(0, 4, PodState::Running);
    old.iter_mut().for_each(|p| p.deletion_deadline = Some(100));
    let d3 = decide(&s, &d2.status, &obs(111, old));
    assert!(creates(&d3).is_empty());
    // ...and starts once it is gone.
    let d3 = decide(&s, &d3.status, &obs(112, vec![]));
    assert_eq!(
        creates(&d3),
        vec![(0, 1, 4), (1, 1, 4), (2, 1, 4), (3, 1, 4)]
    );
    // A second failure doubles the backoff.
    let mut pods = gang(1, 4, PodState::Running);
    pods[0].state = PodState::Failed { exit_code: 137 };
    let d4 = decide(&s, &d3.status, &obs(200, pods));
    assert_eq!(d4.status.restart_after, Some(220));
}

#[test]
fn the_budget_ends_in_failed() {
    let s = spec();
    let mut st = running(&s);
    st.restarts = 2;
    let mut pods = gang(0, 4, PodState::Running);
    pods[1].state = PodState::Failed { exit_code: 1 };
    let d = decide(&s, &st, &obs(50, pods));
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(d.status.reason.as_deref(), Some("RestartBudgetExhausted"));
    assert_eq!(d.status.completion_time, Some(50));
    // The three still running stop; the failed rank stays for its logs.
    assert_eq!(
        deletes(&d),
        vec![(0, 0, false), (2, 0, false), (3, 0, false)]
    );
}

#[test]
fn preemption_and_node_loss_do_not_use_the_budget_and_rules_can_fail_fast() {
    let mut s = spec();
    let st = running(&s);
    let lost = PodState::Disrupted {
        reason: "DeletionByTaintManager".into(),
    };
    for state in [PodState::Failed { exit_code: 75 }, lost] {
        let mut pods = gang(0, 4, PodState::Running);
        pods[3].state = state;
        let d = decide(&s, &st, &obs(30, pods));
        assert_eq!(
            (
                d.status.restarts,
                d.status.exempt_restarts,
                d.status.attempt
            ),
            (0, 1, 1)
        );
        assert!(has_event(&d, "Preempted"));
    }
    s.restart_policy.exit_code_rules = vec![ExitCodeRule {
        codes: vec![2],
        action: ExitAction::Fail,
    }];
    let st = running(&s);
    let mut pods = gang(0, 4, PodState::Running);
    pods[0].state = PodState::Failed { exit_code: 2 };
    let d = decide(&s, &st, &obs(30, pods));
    assert_eq!(d.status.phase, Some(Phase::Failed));
    s.restart_policy.preemption_exempt = false;
    assert_eq!(
        exit_action(&s, &PodState::Failed { exit_code: 75 }),
        ExitAction::Restart
    );
}

#[test]
fn a_rank_that_exits_zero_while_another_fails_is_still_a_failure() {
    let s = spec();
    let st = running(&s);
    let pods = vec![
        pod(0, 0, PodState::Succeeded),
        pod(1, 0, PodState::Failed { exit_code: 1 }),
        pod(2, 0, PodState::Running),
        pod(3, 0, PodState::Succeeded),
    ];
    let d = decide(&s, &st, &obs(40, pods));
    assert_eq!(d.status.phase, Some(Phase::Restarting));
    assert_eq!(d.status.restarts, 1);
    // Only when every rank succeeded is the training done.
    let d = decide(&s, &st, &obs(40, gang(0, 4, PodState::Succeeded)));
    assert_eq!(d.status.phase, Some(Phase::Succeeded));
    assert!(has_event(&d, "Succeeded"));
    // Finished workers stay (rank 0's log has the summary table).
    assert!(deletes(&d).is_empty(), "{:?}", d.actions);
    let after = decide(&s, &d.status, &obs(41, gang(0, 4, PodState::Succeeded)));
    assert!(deletes(&after).is_empty(), "{:?}", after.actions);
}

#[test]
fn a_starting_gang_is_counted_only_once_it_takes_a_while() {
    let s = spec();
    let d = decide(&s, &RideTrainingStatus::default(), &obs(0, vec![]));
    let mut pods = gang(0, 4, PodState::Running);
    pods[3].state = PodState::Pending {
        unschedulable_since: None,
    };
    // Three of four up within the first seconds: one message, and a look
    // again when counting starts.
    let early = decide(&s, &d.status, &obs(3, pods.clone()));
    assert_eq!(early.status.message, d.status.message);
    assert!(
        early.actions.contains(&Action::RequeueAfter(7)),
        "{:?}",
        early.actions
    );
    let late = decide(&s, &early.status, &obs(10, pods));
    assert_eq!(
        late.status.message.as_deref(),
        Some("3 of 4 workers running")
    );
}

#[test]
fn a_pod_stuck_terminating_on_a_lost_node_is_force_deleted_and_then_stops_blocking() {
    let s = spec();
    let mut st = running(&s);
    st.attempt = 1;
    st.running_since = None;
    let mut stuck = pod(
        2,
        0,
        PodState::Disrupted {
            reason: "DeletionByTaintManager".into(),
        },
    );
    stuck.deletion_deadline = Some(1000);
    let d = decide(&s, &st, &obs(1100, vec![stuck.clone()]));
    assert!(
        deletes(&d).is_empty(),
        "deletion already requested; wait for the grace"
    );
    assert!(
        creates(&d).is_empty(),
        "attempt 1 waits while a pod of attempt 0 may still run"
    );
    let grace = s.restart_policy.force_delete_after_seconds;
    assert!(
        d.actions
            .contains(&Action::RequeueAfter(1000 + grace - 1100)),
        "woken when it becomes stuck, not polled"
    );
    let d = decide(&s, &st, &obs(1000 + grace, vec![stuck]));
    assert_eq!(deletes(&d), vec![(2, 0, true)]);
    assert_eq!(creates(&d).len(), 4, "past the grace it no longer blocks");
}

#[test]
fn attempts_never_overlap() {
    let s = spec();
    let st = running(&s);
    let mut pods = gang(0, 4, PodState::Running);
    pods[1].state = PodState::Failed { exit_code: 1 };
    let d = decide(&s, &st, &obs(30, pods.clone()));
    assert_eq!(d.status.attempt, 1);
    assert_eq!(deletes(&d).len(), 4);
    // After the backoff, three old ranks are still saving their checkpoint.
    let mut old = pods.clone();
    for p in &mut old {
        p.deletion_deadline = Some(31);
    }
    old.remove(1);
    let d2 = decide(&s, &d.status, &obs(45, old));
    assert!(creates(&d2).is_empty(), "{:?}", d2.actions);
    assert!(d2
        .status
        .message
        .as_deref()
        .unwrap_or_default()
        .contains("waiting for 3 workers"));
    assert_eq!(d2.status.attempt, 1, "waiting is not another restart");
    // Once they are gone the new gang starts.
    let d3 = decide(&s, &d2.status, &obs(50, vec![]));
    assert_eq!(creates(&d3).len(), 4);
    assert!(creates(&d3).iter().all(|c| c.1 == 1));
}

#[test]
fn an_evicted_or_deleted_rank_ends_the_attempt_without_using_the_budget() {
    let s = spec();
    let st = running(&s);
    // Evicted through the Eviction API while running: deletion timestamp and
    // a DisruptionTarget condition, no exit code yet.
    let mut pods = gang(0, 4, PodState::Running);
    pods[2].state = PodState::Disrupted {
        reason: "EvictionByEvictionAPI".into(),
    };
    pods[2].deletion_deadline = Some(29);
    let d = decide(&s, &st, &obs(30, pods));
    assert_eq!(
        (
            d.status.restarts,
            d.status.exempt_restarts,
            d.status.attempt
        ),
        (0, 1, 1)
    );
    assert!(d.status.message.unwrap().contains("worker 2 was disrupted"));
    // A plain `kubectl delete pod` of a running rank.
    let mut pods = gang(0, 4, PodState::Running);
    pods[0].deletion_deadline = Some(29);
    let d = decide(&s, &st, &obs(30, pods));
    assert_eq!((d.status.exempt_restarts, d.status.attempt), (1, 1));
    assert!(d.status.message.unwrap().contains("worker 0 was deleted"));
    // A rank that vanished (force-deleted) after the gang was complete.
    let mut pods = gang(0, 4, PodState::Running);
    pods.remove(3);
    let d = decide(&s, &st, &obs(30, pods));
    assert_eq!(d.status.attempt, 1);
    assert!(d.status.message.unwrap().contains("worker 3 disappeared"));
    // Before the gang ever ran, a missing rank is only not created yet.
    let fresh = decide(&s, &RideTrainingStatus::default(), &obs(0, vec![]));
    let d = decide(
        &s,
        &fresh.status,
        &obs(
            1,
            gang(
                0,
                3,
                PodState::Pending {
                    unschedulable_since: None,
                },
            ),
        ),
    );
    assert_eq!(d.status.attempt, 0);
    assert_eq!(creates(&d), vec![(3, 0, 4)]);
}

#[test]
fn a_spec_change_while_running_restarts_with_the_new_spec() {
    let mut s = spec();
    let st = running(&s);
    s.image = "ride:2".into();
    let d = decide(&s, &st, &obs(60, gang(0, 4, PodState::Running)));
    assert_eq!(d.status.attempt, 1);
    assert_eq!((d.status.restarts, d.status.exempt_restarts), (0, 1));
    assert!(has_event(&d, "SpecChanged"));
    assert_eq!(deletes(&d).len(), 4);
    // Changing only the TTL is not a restart.
    let mut s2 = spec();
    s2.run_policy.ttl_seconds_after_finished = Some(5);
    let d = decide(
        &s2,
        &running(&spec()),
        &obs(60, gang(0, 4, PodState::Running)),
    );
    assert!(deletes(&d).is_empty());
}

#[test]
fn an_invalid_spec_fails_the_training_once_and_leaves_the_gang_alone() {
    let s = spec();
    let st = running(&s);
    let why = "spec.workers.minReplicas: must be between 1 and workers.replicas (4)";
    let mut o = obs(70, gang(0, 4, PodState::Running));
    o.invalid_spec = Some(why.into());
    o.generation = Some(2);
    let d = decide(&s, &st, &o);
    assert_eq!(
        d.actions,
        [Action::Event {
            reason: "InvalidSpec".into(),
            message: why.into(),
            warning: true,
        }]
    );
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(d.status.reason.as_deref(), Some("InvalidSpec"));
    assert_eq!(d.status.message.as_deref(), Some(why));
    assert_eq!(
        (d.status.completion_time, d.status.observed_generation),
        (Some(70), Some(2))
    );
    let failed = d.status.conditions.iter().find(|c| c.type_ == "Failed");
    let failed = failed.unwrap();
    assert_eq!(
        (
            failed.status.as_str(),
            failed.reason.as_str(),
            failed.message.as_str()
        ),
        ("True", "InvalidSpec", why)
    );
    assert!(d
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == "Running" && c.status == "False"));
    // Still invalid (another problem, a later generation): no new verdict.
    o.now = 90;
    o.generation = Some(3);
    o.invalid_spec = Some("spec.checkpoint.uri: 'x' must be a URI".into());
    let again = decide(&s, &d.status, &o);
    assert!(again.actions.is_empty());
    assert_eq!(again.status, d.status);
    // Failed for another reason first: the spec's problem is still said.
    let mut budget_spent = d.status.clone();
    budget_spent.reason = Some("RestartBudgetExhausted".into());
    let d = decide(&s, &budget_spent, &o);
    assert!(has_event(&d, "InvalidSpec"));
    assert_eq!(d.status.reason.as_deref(), Some("InvalidSpec"));
    // A new training that is invalid from the start never reaches Created.
    let d = decide(&s, &RideTrainingStatus::default(), &o);
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert!(!has_event(&d, "Created"));
    assert!(creates(&d).is_empty());
}

#[test]
fn suspend_deletes_the_workers_and_resume_recreates_them() {
    let mut s = spec();
    let st = running(&s);
    s.run_policy.suspend = true;
    let d = decide(&s, &st, &obs(70, gang(0, 4, PodState::Running)));
    assert_eq!(d.status.phase, Some(Phase::Suspended));
    assert_eq!(deletes(&d).len(), 4);
    s.run_policy.suspend = false;
    let d = decide(&s, &d.status, &obs(80, vec![]));
    assert_eq!(d.status.attempt, 1);
    assert_eq!(creates(&d).len(), 4);
    assert!(has_event(&d, "Resumed"));
    assert_eq!(d.status.restarts, 0);
}

#[test]
fn ttl_and_deadline() {
    let mut s = spec();
    s.run_policy.ttl_seconds_after_finished = Some(100);
    let st = running(&s);
    let d = decide(&s, &st, &obs(10, gang(0, 4, PodState::Succeeded)));
    assert_eq!(d.status.completion_time, Some(10));
    let d2 = decide(&s, &d.status, &obs(50, vec![]));
    assert_eq!(d2.actions, vec![Action::RequeueAfter(60)]);
    let d3 = decide(&s, &d.status, &obs(110, vec![]));
    assert_eq!(d3.actions, vec![Action::DeleteSelf]);
    let mut s = spec();
    s.run_policy.active_deadline_seconds = Some(3600);
    let st = running(&s);
    let d = decide(&s, &st, &obs(3600, gang(0, 4, PodState::Running)));
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(d.status.reason.as_deref(), Some("DeadlineExceeded"));
}

#[test]
fn elastic_shrink_when_unschedulable_and_grow_back_later() {
    let s = spec();
    let d = decide(&s, &RideTrainingStatus::default(), &obs(0, vec![]));
    let mut pods = gang(0, 4, PodState::Running);
    pods[3].state = PodState::Pending {
        unschedulable_since: Some(10),
    };
    // Not yet past the timeout.
    let d1 = decide(&s, &d.status, &obs(60, pods.clone()));
    assert_eq!(d1.status.attempt, 0);
    // Past it: restart with 3 workers, outside the budget.
    let d2 = decide(&s, &d1.status, &obs(70, pods));
    assert_eq!(
        (d2.status.attempt, d2.status.world_size, d2.status.restarts),
        (1, 3, 0)
    );
    assert!(has_event(&d2, "Shrinking"));
    // 4 ranks x 1 accumulation step cannot be 3 ranks x a whole number.
    assert!(has_event(&d2, "GlobalBatchChanged"));
    let g = d2.status.global_batch.clone().unwrap();
    assert_eq!((g.ranks, g.accumulation_steps, g.kept), (3, 1, false));
    let d3 = decide(&s, &d2.status, &obs(81, vec![]));
    assert_eq!(creates(&d3), vec![(0, 1, 3), (1, 1, 3), (2, 1, 3)]);
    let d4 = decide(&s, &d3.status, &obs(90, gang(1, 3, PodState::Running)));
    assert_eq!(d4.status.phase, Some(Phase::Running));
    // After the timeout at reduced size, try the full size again.
    let d5 = decide(&s, &d4.status, &obs(150, gang(1, 3, PodState::Running)));
    assert_eq!((d5.status.attempt, d5.status.world_size), (2, 4));
    assert!(has_event(&d5, "Growing"));
    assert!(has_event(&d5, "GlobalBatchKept"));
    assert_eq!(d5.status.global_batch.as_ref().map(|g| g.kept), Some(true));
    // Never below minReplicas: with 3 of 4 unschedulable nothing shrinks.
    let mut pods = gang(
        0,
        4,
        PodState::Pending {
            unschedulable_since: Some(0),
        },
    );
    pods[0].state = PodState::Running;
    let d6 = decide(&s, &d.status, &obs(100, pods));
    assert_eq!(d6.status.attempt, 0);
}

#[test]
fn spec_hash_is_stable_and_sensitive() {
    let a = spec();
    let mut b = spec();
    assert_eq!(spec_hash(&a), spec_hash(&b));
    b.workers.replicas = 8;
    assert_ne!(spec_hash(&a), spec_hash(&b));
}

fn failed_at(rank: i32, code: i32, at: i64) -> ObservedPod {
    ObservedPod {
        ended_at: Some(at),
        ..pod(rank, 0, PodState::Failed { exit_code: code })
    }
}

#[test]
fn the_first_failure_in_time_decides_not_the_list_order() {
    let s = spec();
    let st = running(&s);
    // Rank 1 crashed first (exit 1); rank 0 was told to stop after it and
    // saved a checkpoint (75). The crash decides: a budgeted restart.
    let mut pods = gang(0, 4, PodState::Running);
    pods[0] = failed_at(0, PREEMPTED_EXIT_CODE, 30);
    pods[1] = failed_at(1, 1, 10);
    let d = decide(&s, &st, &obs(40, pods.clone()));
    assert_eq!((d.status.restarts, d.status.exempt_restarts), (1, 0));
    assert!(d
        .status
        .message
        .unwrap()
        .contains("worker 1 exited with code 1"));
    // The other way round, the preemption came first: exempt.
    pods[0] = failed_at(0, PREEMPTED_EXIT_CODE, 10);
    pods[1] = failed_at(1, 1, 30);
    let d = decide(&s, &st, &obs(40, pods));
    assert_eq!((d.status.restarts, d.status.exempt_restarts), (0, 1));
}

#[test]
fn without_a_rule_the_trainers_codes_decide() {
    let s = spec();
    let st = running(&s);
    let code = |c: i32| {
        let mut pods = gang(0, 4, PodState::Running);
        pods[2] = failed_at(2, c, 10);
        decide(&s, &st, &obs(20, pods)).status
    };
    let bad_config = code(ride_contract::CONFIG_ERROR_EXIT_CODE);
    assert_eq!(bad_config.phase, Some(Phase::Failed));
    assert!(bad_config.message.unwrap().contains("invalid config"));
    assert_eq!(code(2).phase, Some(Phase::Failed));
    // OOM-killed (137), a panic (101), an error (1): another try.
    for c in [137, 101, 1] {
        let st = code(c);
        assert_eq!((st.phase, st.restarts), (Some(Phase::Restarting), 1), "{c}");
    }
    // A rule still wins over the default.
    let mut ruled = spec();
    ruled.restart_policy.exit_code_rules = vec![ExitCodeRule {
        codes: vec![78],
        action: ExitAction::Restart,
    }];
    let mut pods = gang(0, 4, PodState::Running);
    pods[2] = failed_at(2, 78, 10);
    let d = decide(&ruled, &running(&ruled), &obs(20, pods));
    assert_eq!(d.status.phase, Some(Phase::Restarting));
}

#[test]
fn exempt_restarts_past_their_limit_use_the_budget() {
    let mut s = spec();
    s.restart_policy.max_exempt_restarts = 2;
    let mut st = running(&s);
    st.exempt_restarts = 2;
    let mut pods = gang(0, 4, PodState::Running);
    pods[0] = failed_at(0, PREEMPTED_EXIT_CODE, 10);
    let d = decide(&s, &st, &obs(20, pods.clone()));
    assert_eq!((d.status.restarts, d.status.exempt_restarts), (1, 2));
    assert!(d.status.message.unwrap().contains("maxExemptRestarts"));
    // And with the budget gone too, the training fails.
    st.restarts = s.restart_policy.budget;
    let d = decide(&s, &st, &obs(20, pods));
    assert_eq!(d.status.reason.as_deref(), Some("RestartBudgetExhausted"));
}

#[test]
fn resizes_stop_at_their_limit_and_the_gang_stays_small() {
    let mut s = spec();
    s.workers.max_resizes = 1;
    let d = decide(&s, &RideTrainingStatus::default(), &obs(0, vec![]));
    let mut pods = gang(0, 4, PodState::Running);
    pods[3].state = PodState::Pending {
        unschedulable_since: Some(0),
    };
    let shrunk = decide(&s, &d.status, &obs(70, pods));
    assert_eq!((shrunk.status.world_size, shrunk.status.resizes), (3, 1));
    let d = decide(&s, &shrunk.status, &obs(81, vec![]));
    let running = decide(&s, &d.status, &obs(90, gang(1, 3, PodState::Running)));
    // Long past the elastic timeout: no grow-back, no timer for one.
    let later = decide(
        &s,
        &running.status,
        &obs(1000, gang(1, 3, PodState::Running)),
    );
    assert_eq!((later.status.attempt, later.status.world_size), (1, 3));
    assert!(!later
        .actions
        .iter()
        .any(|a| matches!(a, Action::RequeueAfter(_))));
}

#[test]
fn the_deadline_does_not_run_while_suspended_and_restarts_on_resume() {
    let mut s = spec();
    s.run_policy.active_deadline_seconds = Some(100);
    s.run_policy.suspend = true;
    // Created suspended (Kueue): no clock yet.
    let d = decide(&s, &RideTrainingStatus::default(), &obs(0, vec![]));
    assert_eq!(d.status.phase, Some(Phase::Suspended));
    assert_eq!(d.status.start_time, None);
    let d = decide(&s, &d.status, &obs(500, vec![]));
    assert_eq!(d.status.phase, Some(Phase::Suspended));
    // Admitted at 500: the deadline counts from there.
    s.run_policy.suspend = false;
    let d = decide(&s, &d.status, &obs(500, vec![]));
    assert_eq!(d.status.start_time, Some(500));
    assert_eq!(creates(&d).len(), 4);
    let d = decide(&s, &d.status, &obs(599, gang(1, 4, PodState::Running)));
    assert_eq!(d.status.phase, Some(Phase::Running));
    // Suspended again at 550 for a long while, then resumed: a fresh clock.
    s.run_policy.suspend = true;
    let d = decide(&s, &d.status, &obs(599, gang(1, 4, PodState::Running)));
    assert_eq!(d.status.start_time, None);
    s.run_policy.suspend = false;
    let d = decide(&s, &d.status, &obs(5000, vec![]));
    assert_eq!(d.status.start_time, Some(5000));
    let d = decide(&s, &d.status, &obs(5100, gang(2, 4, PodState::Running)));
    assert_eq!(d.status.reason.as_deref(), Some("DeadlineExceeded"));
}

#[test]
fn policy_edits_leave_a_healthy_gang_alone() {
    let s = spec();
    let st = running(&s);
    let mut edited = s.clone();
    edited.restart_policy.budget = 10;
    edited.restart_policy.backoff_seconds = 1;
    edited.run_policy.active_deadline_seconds = Some(99_999);
    edited.workers.min_replicas = Some(1);
    edited.workers.elastic_timeout_seconds = 600;
    edited.workers.max_resizes = 3;
    let d = decide(&edited, &st, &obs(10, gang(0, 4, PodState::Running)));
    assert_eq!(
        (d.status.attempt, d.status.phase),
        (0, Some(Phase::Running))
    );
    assert!(deletes(&d).is_empty());
    // What the pods run still restarts them.
    let mut image = s.clone();
    image.image = "ride:2".into();
    let d = decide(&image, &st, &obs(10, gang(0, 4, PodState::Running)));
    assert!(has_event(&d, "SpecChanged"));
}

#[test]
fn a_hash_from_the_previous_operator_restarts_nothing() {
    let s = spec();
    let mut st = running(&s);
    st.spec_hash = Some(legacy_spec_hash(&s));
    assert_ne!(st.spec_hash, Some(spec_hash(&s)));
    let d = decide(&s, &st, &obs(10, gang(0, 4, PodState::Running)));
    assert_eq!(d.status.attempt, 0);
    assert_eq!(d.status.spec_hash, Some(spec_hash(&s)));
    // The value operator 81e4454 stored for this spec (its spec_hash, run
    // on the same fixture): upgrading keeps matching it.
    assert_eq!(legacy_spec_hash(&s), "3352d937febd40ee");
}

#[test]
fn status_and_conditions_carry_the_generation_they_reflect() {
    let s = spec();
    let mut o = obs(0, vec![]);
    o.generation = Some(7);
    let d = decide(&s, &RideTrainingStatus::default(), &o);
    assert_eq!(d.status.observed_generation, Some(7));
    assert!(d
        .status
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(7)));
}

#[test]
fn a_worker_that_cannot_start_is_named_in_status_and_an_event_once() {
    let s = spec();
    let d = decide(&s, &RideTrainingStatus::default(), &obs(0, vec![]));
    let mut pods = gang(0, 4, PodState::Running);
    pods[2] = ObservedPod {
        start_problem: Some("ErrImagePull: no such image ride:1".into()),
        ..pod(
            2,
            0,
            PodState::Pending {
                unschedulable_since: None,
            },
        )
    };
    let d1 = decide(&s, &d.status, &obs(5, pods.clone()));
    let m = d1.status.message.clone().unwrap();
    assert_eq!(
        m,
        "worker 2 cannot start: ErrImagePull: no such image ride:1"
    );
    assert!(has_event(&d1, "WorkerNotStarting"));
    // The same problem next time: no new Event.
    let d2 = decide(&s, &d1.status, &obs(10, pods));
    assert!(!has_event(&d2, "WorkerNotStarting"));
    assert_eq!(d2.status.message, d1.status.message);
    // Fixed: the count again.
    let d3 = decide(&s, &d2.status, &obs(15, gang(0, 4, PodState::Running)));
    assert_eq!(d3.status.phase, Some(Phase::Running));
}

/// `running(s)` with rank 0's report at step 130 (last step at 1000) and a
/// checkpoint at step 100 saved at 700; the gang runs since 5.
fn running_with_progress(s: &RideTrainingSpec) -> RideTrainingStatus {
    let mut st = running(s);
    st.progress = Some(crate::crd::ProgressStatus {
        step: 130,
        last_step_time: Some(1000),
        ..Default::default()
    });
    st.last_checkpoint = Some(crate::crd::CheckpointStatus {
        uri: "s3://b/t/ckpt_epoch_9".into(),
        epoch: 9,
        step: 100,
        time: "1970-01-01T00:11:40Z".into(),
    });
    st
}

fn condition<'a>(st: &'a RideTrainingStatus, ty: &str) -> Option<&'a Condition> {
    st.conditions.iter().find(|c| c.type_ == ty)
}

#[test]
fn a_stall_waits_for_the_other_watchdogs_names_the_silent_worker_and_uses_its_own_budget() {
    let mut s = spec();
    s.restart_policy.stall_timeout_seconds = Some(30);
    s.restart_policy.stall_budget = 1;
    assert_eq!(stall_settle_seconds(&s), 3);
    let st = running_with_progress(&s);
    // Workers 0, 2 and 3 gave up at 1010 (exit 76); worker 1 is frozen.
    let mut pods = gang(0, 4, PodState::Failed { exit_code: 76 });
    pods[1].state = PodState::Running;
    for p in &mut pods {
        p.ended_at = Some(1010);
    }
    // Within the settle time: wait, touch nothing.
    let d = decide(&s, &st, &obs(1011, pods.clone()));
    assert!(deletes(&d).is_empty());
    assert!(d.actions.contains(&Action::RequeueAfter(2)));
    assert_eq!(d.status.attempt, 0);
    // After it: worker 1 stopped first; a restart on the stall budget.
    let d = decide(&s, &st, &obs(1013, pods.clone()));
    assert_eq!(d.status.attempt, 1);
    // The frozen worker goes without a grace period; the others had exited.
    assert!(deletes(&d).contains(&(1, 0, true)), "{:?}", deletes(&d));
    assert!(deletes(&d).contains(&(0, 0, false)), "{:?}", deletes(&d));
    assert_eq!(d.status.restarts, 0, "the failure budget is untouched");
    assert_eq!(d.status.restarts_by_cause.stall, 1);
    assert_eq!(d.status.reason.as_deref(), Some("Stalled"));
    assert!(has_event(&d, "Stalled"));
    let stalled = condition(&d.status, STALLED_CONDITION).unwrap();
    assert_eq!(stalled.status, "True");
    assert!(
        stalled
            .message
            .contains("worker 1 stopped first: it was still running but silent"),
        "{}",
        stalled.message
    );
    // Lost: steps 100..130, trained from the checkpoint (700) to the last
    // step (1000); 4 workers idle or not from 700 until 1013.
    let lost = d.status.lost_work.unwrap();
    assert_eq!(lost.steps, 30);
    assert_eq!(lost.seconds, 300.0);
    assert_eq!(lost.gpu_seconds, 313.0 * 4.0);
    assert_eq!(d.status.lost_work_by_cause["stall"], lost);
    assert!(d
        .status
        .message
        .as_ref()
        .unwrap()
        .contains("work lost since the last checkpoint: 30 steps"));
    // The next gang runs: the condition clears.
    let d2 = decide(&s, &d.status, &obs(2000, gang(1, 4, PodState::Running)));
    assert_eq!(d2.status.phase, Some(Phase::Running));
    let cleared = condition(&d2.status, STALLED_CONDITION).unwrap();
    assert_eq!(
        (cleared.status.as_str(), cleared.reason.as_str()),
        ("False", "Recovered")
    );
    // A second stall: the budget of 1 is spent.
    let mut pods = gang(1, 4, PodState::Failed { exit_code: 76 });
    for p in &mut pods {
        p.ended_at = Some(2100);
    }
    let d3 = decide(&s, &d2.status, &obs(2101, pods));
    assert_eq!(d3.status.phase, Some(Phase::Failed));
    assert_eq!(d3.status.reason.as_deref(), Some("StallBudgetExhausted"));
}

#[test]
fn a_stall_past_its_budget_force_deletes_the_frozen_worker_and_keeps_the_exited_ones() {
    let mut s = spec();
    s.restart_policy.stall_timeout_seconds = Some(30);
    s.restart_policy.stall_budget = 1;
    let mut st = running_with_progress(&s);
    st.restarts_by_cause.stall = 1;
    // Workers 0, 2 and 3 gave up at 1010 (exit 76); worker 1 is frozen.
    let mut pods = gang(0, 4, PodState::Failed { exit_code: 76 });
    pods[1].state = PodState::Running;
    for p in &mut pods {
        p.ended_at = Some(1010);
    }
    let d = decide(&s, &st, &obs(1013, pods));
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(d.status.reason.as_deref(), Some("StallBudgetExhausted"));
    // A frozen trainer would run out its whole grace period on SIGTERM:
    // it goes without one. The exited workers stay for `kubectl logs`.
    assert_eq!(deletes(&d), vec![(1, 0, true)]);
    assert!(d
        .actions
        .iter()
        .all(|a| !matches!(a, Action::CreatePod { .. })));
}

#[test]
fn restarts_are_counted_by_cause() {
    let s = spec();
    let st = running_with_progress(&s);
    let fail = |state: PodState| {
        let mut pods = gang(0, 4, PodState::Running);
        pods[2].state = state;
        pods[2].ended_at = Some(1010);
        decide(&s, &st, &obs(1011, pods)).status
    };
    let app = fail(PodState::Failed { exit_code: 1 });
    assert_eq!((app.restarts, app.restarts_by_cause.application), (1, 1));
    assert!(app.lost_work_by_cause.contains_key("application"));
    let pre = fail(PodState::Failed { exit_code: 75 });
    assert_eq!((pre.restarts, pre.restarts_by_cause.preemption), (0, 1));
    // Exit 75 means a checkpoint was saved as it stopped: nothing lost.
    assert_eq!(pre.lost_work, None);
    assert!(pre.message.unwrap().contains("no work lost"));
    let infra = fail(PodState::Disrupted {
        reason: "NodeLost".into(),
    });
    assert_eq!(infra.restarts_by_cause.infrastructure, 1);
    // A report older than the gang says nothing about its steps.
    let mut stale = st.clone();
    stale.running_since = Some(1005);
    let lost = lost_work(&stale, 1011, 2).unwrap();
    assert_eq!((lost.steps, lost.seconds), (0, 0.0));
    assert_eq!(lost.gpu_seconds, 6.0 * 4.0 * 2.0);
    // A gang that never ran lost nothing.
    assert_eq!(lost_work(&RideTrainingStatus::default(), 10, 1), None);
}

#[test]
fn suspending_is_counted_once_and_lets_the_workers_checkpoint() {
    let mut s = spec();
    let st = running_with_progress(&s);
    s.run_policy.suspend = true;
    let d = decide(&s, &st, &obs(1100, gang(0, 4, PodState::Running)));
    assert_eq!(d.status.phase, Some(Phase::Suspended));
    assert_eq!(d.status.restarts_by_cause.user, 1);
    // Deleted with their grace period: the trainers save on SIGTERM.
    assert!(deletes(&d).iter().all(|(_, _, force)| !force));
    assert!(d.actions.iter().any(|a| matches!(a,
        Action::Event { reason, message, .. } if reason == "Suspending" && message.contains("save a checkpoint"))));
    assert_eq!(d.status.lost_work, None);
    let again = decide(&s, &d.status, &obs(1200, vec![]));
    assert_eq!(again.status.restarts_by_cause.user, 1);
}

#[test]
fn the_stall_timeout_shapes_the_pods_and_new_defaults_leave_old_hashes_alone() {
    let s = spec();
    assert!(!hashed_spec_json(&s).contains("stall"));
    let mut t = s.clone();
    t.restart_policy.stall_budget = 9;
    assert_eq!(spec_hash(&t), spec_hash(&s));
    t.restart_policy.stall_timeout_seconds = Some(60);
    assert_ne!(spec_hash(&t), spec_hash(&s));
}

#[test]
fn a_preflight_failure_is_a_condition_with_the_workers_words_and_an_infrastructure_restart() {
    let s = spec();
    let st = running(&s);
    let mut pods = gang(0, 4, PodState::Running);
    pods[3].state = PodState::Failed { exit_code: 77 };
    pods[3].ended_at = Some(50);
    pods[3].exit_message = Some("preflight: MASTER_ADDR t-0-0.t does not resolve".into());
    let d = decide(&s, &st, &obs(51, pods));
    assert_eq!(d.status.attempt, 1);
    assert_eq!(d.status.restarts, 0);
    assert_eq!(d.status.restarts_by_cause.infrastructure, 1);
    let c = condition(&d.status, PREFLIGHT_CONDITION).unwrap();
    assert_eq!(c.status, "True");
    assert!(
        c.message
            .contains("worker 3 exited with code 77 before training"),
        "{}",
        c.message
    );
    assert!(
        c.message.contains("t-0-0.t does not resolve"),
        "{}",
        c.message
    );
    assert!(has_event(&d, "PreflightFailed"));
    let d2 = decide(&s, &d.status, &obs(200, gang(1, 4, PodState::Running)));
    assert_eq!(
        condition(&d2.status, PREFLIGHT_CONDITION).unwrap().status,
        "False"
    );
}

#[test]
fn the_operator_restarts_a_gang_whose_reported_steps_stopped_when_no_watchdog_could() {
    let mut s = spec();
    s.restart_policy.stall_timeout_seconds = Some(30);
    let mut st = running_with_progress(&s);
    st.progress.as_mut().unwrap().training = Some(true);
    let all = || gang(0, 4, PodState::Running);
    // Limit: 2 x 30 + 60 = 120 s after the last step (1000).
    assert_eq!(progress_stall(&s, &st, 1120), None);
    let d = decide(&s, &st, &obs(1120, all()));
    assert_eq!(d.status.attempt, 0);
    let d = decide(&s, &st, &obs(1121, all()));
    assert_eq!(d.status.attempt, 1);
    assert_eq!(d.status.restarts_by_cause.stall, 1);
    let c = condition(&d.status, STALLED_CONDITION).unwrap();
    assert!(
        c.message
            .contains("rank 0 reported no optimiser step for 121s"),
        "{}",
        c.message
    );
    assert_eq!(deletes(&d).len(), 4);
    assert!(deletes(&d).iter().all(|(_, _, force)| *force));
    // Evaluating, or the watchdog turned off: no clock runs.
    let mut evaluating = st.clone();
    evaluating.progress.as_mut().unwrap().training = Some(false);
    assert_eq!(progress_stall(&s, &evaluating, 5000), None);
    let mut off = s.clone();
    off.restart_policy.stall_timeout_seconds = Some(0);
    assert_eq!(progress_stall(&off, &st, 5000), None);
    // Unset: the trainer's default (20 steps, at least 300 s), doubled plus a minute.
    let mut default = s.clone();
    default.restart_policy.stall_timeout_seconds = None;
    assert_eq!(progress_stall(&default, &st, 1660), None);
    assert!(progress_stall(&default, &st, 1661).is_some());
}

#[test]
fn a_lost_node_restarts_the_gang_at_once_force_deleting_only_its_worker() {
    let s = spec();
    let st = running(&s);
    let mut pods = gang(0, 4, PodState::Running);
    pods[1].node_lost = Some("its node n-2 stopped reporting (Ready Unknown)".into());
    let d = decide(&s, &st, &obs(100, pods.clone()));
    assert_eq!(d.status.attempt, 1);
    assert_eq!((d.status.restarts, d.status.exempt_restarts), (0, 1));
    let mut gone = deletes(&d);
    gone.sort();
    assert_eq!(
        gone,
        vec![(0, 0, false), (1, 0, true), (2, 0, false), (3, 0, false)],
        "no kubelet is there to honour a grace period; the others save on SIGTERM"
    );
    let said = d.actions.iter().any(|a| {
        matches!(a, Action::Event { message, .. } if message.contains("worker 1 was lost: its node n-2 stopped reporting"))
    });
    assert!(said, "{:?}", d.actions);
    // After the backoff: the survivors are still stopping, the lost one no
    // longer counts; once the survivors are gone the new gang starts
    // without waiting for the lost node's pod.
    let mut old = pods;
    for p in &mut old {
        p.deletion_deadline = Some(220);
    }
    let d2 = decide(&s, &d.status, &obs(111, old.clone()));
    assert!(creates(&d2).is_empty());
    assert!(d2
        .status
        .message
        .as_deref()
        .unwrap_or_default()
        .contains("waiting for 3 workers"));
    assert!(
        deletes(&d2).contains(&(1, 0, true)),
        "forced until it is gone"
    );
    let d3 = decide(&s, &d2.status, &obs(115, vec![old[1].clone()]));
    assert_eq!(creates(&d3).len(), 4);
}

#[test]
fn timers_are_set_only_for_what_falls_due() {
    let mut s = spec();
    // Running, nothing due: no timer at all (the watches wake it).
    let st = running(&s);
    let d = decide(&s, &st, &obs(50, gang(0, 4, PodState::Running)));
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::RequeueAfter(_))),
        "{:?}",
        d.actions
    );
    // The deadline.
    s.run_policy.active_deadline_seconds = Some(1000);
    let d = decide(&s, &st, &obs(50, gang(0, 4, PodState::Running)));
    assert_eq!(d.actions, vec![Action::RequeueAfter(1000 - 50)]);
    // A worker unschedulable since 40: the shrink is due at 40 + 60.
    s.run_policy.active_deadline_seconds = None;
    let mut pods = gang(0, 4, PodState::Running);
    pods[3].state = PodState::Pending {
        unschedulable_since: Some(40),
    };
    let fresh = decide(&s, &RideTrainingStatus::default(), &obs(0, vec![]));
    let d = decide(&s, &fresh.status, &obs(50, pods));
    assert!(
        d.actions.contains(&Action::RequeueAfter(50)),
        "{:?}",
        d.actions
    );
    // The stall backstop: the last step at 1000, the watchdogs' 300 s
    // default: due after 1000 + 2 * 300 + 60.
    let mut st = running_with_progress(&s);
    if let Some(p) = st.progress.as_mut() {
        p.training = Some(true);
    }
    let d = decide(&s, &st, &obs(1100, gang(0, 4, PodState::Running)));
    assert!(
        d.actions
            .contains(&Action::RequeueAfter(1000 + 660 + 1 - 1100)),
        "{:?}",
        d.actions
    );
}

#[test]
fn a_restart_writes_status_when_it_decides_when_the_new_gang_starts_and_when_it_runs() {
    let mut s = spec();
    s.restart_policy.backoff_seconds = 0;
    let st = running(&s);
    let mut pods = gang(0, 4, PodState::Running);
    pods[2].state = PodState::Failed { exit_code: 1 };
    pods[2].ended_at = Some(100);
    let restart = decide(&s, &st, &obs(101, pods.clone()));
    assert_eq!(restart.status.attempt, 1);
    // The old gang going, worker by worker, past the (zero) backoff: the
    // status stays as the restart wrote it, so nothing is written.
    let mut going = pods.clone();
    for p in &mut going {
        p.deletion_deadline = Some(131);
    }
    for (now, left) in [(101, 4), (102, 3), (103, 1)] {
        let d = decide(&s, &restart.status, &obs(now, going[..left].to_vec()));
        assert_eq!(d.status, restart.status, "at {now} with {left} left");
        assert!(creates(&d).is_empty());
    }
    // One that lingers is named after a while.
    let d = decide(&s, &restart.status, &obs(111, going[..1].to_vec()));
    assert!(d
        .status
        .message
        .as_deref()
        .unwrap()
        .contains("waiting for 1 workers of the previous attempt"));
    // Gone: one write records the new gang's start (and ends the backoff)
    // before its pods are made.
    let start = decide(&s, &restart.status, &obs(104, vec![]));
    assert_eq!(creates(&start).len(), 4);
    assert_eq!(start.status.restart_after, None);
    assert_eq!(start.status.attempt_start_time, Some(104));
    let run = decide(&s, &start.status, &obs(105, gang(1, 4, PodState::Running)));
    assert_eq!(run.status.phase, Some(Phase::Running));
}

#[test]
fn an_old_gang_held_only_by_a_finalizer_does_not_hold_the_new_attempt_back() {
    let mut s = spec();
    s.restart_policy.backoff_seconds = 0;
    let st = running(&s);
    let mut pods = gang(0, 4, PodState::Running);
    pods[2].state = PodState::Failed { exit_code: 1 };
    pods[2].ended_at = Some(100);
    let restart = decide(&s, &st, &obs(101, pods.clone()));
    // Every old pod is being deleted; three still run their trainer.
    let mut going = pods.clone();
    for p in &mut going {
        p.deletion_deadline = Some(131);
    }
    going[2].stopped = true;
    let d = decide(&s, &restart.status, &obs(102, going.clone()));
    assert!(creates(&d).is_empty(), "{:?}", d.actions);
    // All stopped (terminal phase) but kept by a finalizer, as Kueue keeps
    // a group's pods until their replacements exist: the new gang starts,
    // and the held pods are not force-deleted over and over.
    for p in &mut going {
        p.state = PodState::Failed { exit_code: 75 };
        p.stopped = true;
    }
    let d = decide(&s, &restart.status, &obs(400, going));
    assert_eq!(creates(&d).len(), 4, "{:?}", d.actions);
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::DeletePod { .. })),
        "{:?}",
        d.actions
    );
}

#[test]
fn workers_held_by_a_queue_say_so_and_say_admitted_once_let_go() {
    let s = spec();
    let first = decide(&s, &RideTrainingStatus::default(), &obs(0, vec![]));
    let pending = PodState::Pending {
        unschedulable_since: None,
    };
    let mut queued = obs(1, gang(0, 4, pending.clone()));
    queued.queued =
        Some("waiting for Kueue to admit workload t-1 (LocalQueue q): Pending: no quota".into());
    let d = decide(&s, &first.status, &queued);
    assert_eq!(d.status.reason.as_deref(), Some(QUEUED_REASON));
    assert_eq!(d.status.phase, Some(Phase::Created));
    assert!(d.status.message.as_deref().unwrap().ends_with("no quota"));
    let queued_event = |d: &Decision| {
        d.actions
            .iter()
            .any(|a| matches!(a, Action::Event { reason, .. } if reason == QUEUED_REASON))
    };
    assert!(queued_event(&d), "{:?}", d.actions);
    assert!(d
        .actions
        .contains(&Action::RequeueAfter(QUEUED_LOOK_AGAIN_SECONDS)));
    // Still queued: no second Event.
    let again = decide(&s, &d.status, &queued);
    assert!(!queued_event(&again), "{:?}", again.actions);
    // Admitted, still starting: the reason moves on.
    let d = decide(&s, &again.status, &obs(2, gang(0, 4, pending)));
    assert_eq!(d.status.reason.as_deref(), Some(ADMITTED_REASON));
    let d = decide(&s, &d.status, &obs(3, gang(0, 4, PodState::Running)));
    assert_eq!(d.status.phase, Some(Phase::Running));
}

#[test]
fn a_queue_or_scheduler_preemption_is_a_preemption_restart_and_an_eviction_is_not() {
    let s = spec();
    for (reason, want) in [
        ("WorkloadEvictedDueToPreempted", RestartCause::Preemption),
        ("PreemptionByScheduler", RestartCause::Preemption),
        ("EvictionByEvictionAPI", RestartCause::Infrastructure),
        ("DeletionByTaintManager", RestartCause::Infrastructure),
    ] {
        let st = running(&s);
        let mut pods = gang(0, 4, PodState::Running);
        pods[1].state = PodState::Disrupted {
            reason: reason.into(),
        };
        pods[1].ended_at = Some(100);
        let d = decide(&s, &st, &obs(101, pods));
        assert_eq!(d.status.attempt, 1, "{reason}");
        assert_eq!(d.status.restarts, 0, "{reason}: outside the budget");
        assert_eq!(
            d.status.restarts_by_cause.get(want),
            1,
            "{reason}: {:?}",
            d.status.restarts_by_cause
        );
    }
}
