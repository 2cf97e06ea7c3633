//! The reconciler's decisions as a pure function: given a RideTraining's
//! spec and status and what is observed of its pods, what to do and what the
//! status becomes. All I/O (the Kubernetes API, clocks) stays outside.
//!
//! Pods are named `<name>-<attempt>-<rank>` (also their host name under the
//! headless Service), so a new attempt never collides with pods of an old one
//! that are still terminating, for example on a lost node.

use crate::crd::{
    ExitAction, LostWorkStatus, Phase, RestartCause, RideTrainingSpec, RideTrainingStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use ride_contract::{classify_exit, ExitClass};
use std::ops::ControlFlow;

#[cfg(test)]
use crate::spec_hash::hashed_spec_json;
use crate::spec_hash::legacy_spec_hash;
pub use crate::spec_hash::spec_hash;

pub use ride_contract::PREEMPTED_EXIT_CODE;
/// Longest restart backoff.
pub const MAX_BACKOFF_SECONDS: i64 = 600;
/// The reason (status, condition, Event) of a training failed for its spec.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// A worker pod's state as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// Not yet scheduled or starting; `unschedulable_since` when the scheduler said it cannot place it.
    Pending {
        /// Unix time the pod was first reported unschedulable.
        unschedulable_since: Option<i64>,
    },
    /// Its trainer container is running.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero (or was killed).
    Failed {
        /// Exit code of the trainer container.
        exit_code: i32,
    },
    /// Disrupted from outside: its node was lost, it was evicted or
    /// preempted (`reason` as the API server gave it).
    Disrupted {
        /// `DeletionByTaintManager`, `EvictionByEvictionAPI`, `NodeLost`, ...
        reason: String,
    },
}

/// One observed worker pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedPod {
    /// Its rank among the attempt's workers (the `ride.dev/rank` label).
    pub rank: i32,
    /// The attempt it belongs to (the `ride.dev/attempt` label).
    pub attempt: i32,
    /// Where its trainer container is.
    pub state: PodState,
    /// When its deletion was requested: the Unix time its grace period ends
    /// (the pod's `deletionTimestamp`), after which its kubelet should have
    /// killed it.
    pub deletion_deadline: Option<i64>,
    /// Unix time it ended or began to be taken away (container finish time,
    /// disruption or deletion request), so the first failure in time decides.
    pub ended_at: Option<i64>,
    /// Why its container cannot start (`ErrImagePull: ...`,
    /// `CreateContainerConfigError: ...`), while the kubelet keeps trying.
    pub start_problem: Option<String>,
    /// What its trainer said when it ended (the `message` of its final
    /// report in the termination message), if anything.
    pub exit_message: Option<String>,
    /// Why its node is lost (unreachable, not ready, deleted), if it is:
    /// such a pod cannot stop gracefully, so it is force-deleted and its
    /// gang replaced at once ([`crate::nodes::node_lost`]).
    pub node_lost: Option<String>,
    /// Its pod is in a terminal phase (`Succeeded`/`Failed`): the kubelet
    /// has stopped every container. Such a pod may still be there (a
    /// finalizer, e.g. Kueue's, keeps it until a replacement exists) but
    /// runs nothing.
    pub stopped: bool,
}

/// Everything the decision needs from the world.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Unix time now.
    pub now: i64,
    /// The worker pods owned by the resource.
    pub pods: Vec<ObservedPod>,
    /// Whether the headless Service exists.
    pub service_exists: bool,
    /// Why the spec cannot be run (`spec.<field>: <problem>`), when
    /// `RideTrainingSpec::validate` or the operator's policy refuses it.
    pub invalid_spec: Option<String>,
    /// The resource's `metadata.generation`.
    pub generation: Option<i64>,
    /// Why this attempt's workers wait for a queue to admit them (Kueue's
    /// scheduling gate is on them), if they do.
    pub queued: Option<String>,
}

/// Something to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create (or apply) the headless Service.
    EnsureService,
    /// Create the pod of `rank` for `attempt` in a world of `world_size`.
    CreatePod {
        /// The worker's rank (0-based), which names the pod.
        rank: i32,
        /// The attempt it belongs to, which names the pod too.
        attempt: i32,
        /// Workers in the attempt (the trainer's world is this times the
        /// GPUs per worker).
        world_size: i32,
    },
    /// Delete a pod; `force` skips the grace period (lost node).
    DeletePod {
        /// The worker's rank.
        rank: i32,
        /// The attempt it belongs to.
        attempt: i32,
        /// Delete with a grace period of 0, for a pod whose kubelet is gone.
        force: bool,
    },
    /// Delete the RideTraining (TTL after finishing).
    DeleteSelf,
    /// Record a Kubernetes Event.
    Event {
        /// CamelCase reason (`WorkerFailed`, `Preempted`, ...), as Events carry it.
        reason: String,
        /// What happened, for people (also in status).
        message: String,
        /// Warning rather than Normal.
        warning: bool,
    },
    /// Look again after this many seconds even without a change.
    RequeueAfter(i64),
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// The status to write.
    pub status: RideTrainingStatus,
}

struct Ctx<'a> {
    spec: &'a RideTrainingSpec,
    obs: &'a Observed,
    st: RideTrainingStatus,
    actions: Vec<Action>,
    /// Ranks of the current attempt to delete without a grace period:
    /// stuck in a stall, they would only run out the clock.
    force_ranks: Vec<i32>,
}

impl Ctx<'_> {
    fn event(&mut self, reason: &str, message: String, warning: bool) {
        self.actions.push(Action::Event {
            reason: reason.into(),
            message,
            warning,
        });
    }

    /// Say `message` in status and `phase`'s condition, without an Event.
    fn note(&mut self, phase: Phase, reason: &str, message: String) {
        set_conditions(
            &mut self.st.conditions,
            phase,
            reason,
            &message,
            self.obs.now,
            self.obs.generation,
        );
        self.st.message = Some(message);
    }

    /// Move to `phase`, with an Event for every phase but Running: a gang
    /// coming up is routine (its condition and `runningSince` record it),
    /// and at thousands of trainings two Events per attempt are a sixth of
    /// the operator's requests. What users must notice (created, failed,
    /// restarted, suspended, finished) still gets one.
    fn set_phase(&mut self, phase: Phase, reason: &str, message: String) {
        if self.st.phase != Some(phase) && phase != Phase::Running {
            let warning = matches!(phase, Phase::Failed | Phase::Restarting);
            self.event(reason, message.clone(), warning);
        }
        self.note(phase, reason, message);
        self.st.phase = Some(phase);
        self.st.reason = Some(reason.into());
    }

    /// Whether `p` cannot stop by itself: its node is lost, or it is still
    /// there `forceDeleteAfterSeconds` after its grace period ended (its
    /// kubelet is not finishing it).
    fn stuck(&self, p: &ObservedPod) -> bool {
        p.node_lost.is_some()
            || p.deletion_deadline.is_some_and(|t| {
                self.obs.now.saturating_sub(t)
                    >= self.spec.restart_policy.force_delete_after_seconds
            })
    }

    /// When `p`, being deleted, counts as stuck (Unix time), if it will.
    fn stuck_at(&self, p: &ObservedPod) -> Option<i64> {
        p.deletion_deadline
            .map(|t| t.saturating_add(self.spec.restart_policy.force_delete_after_seconds))
    }

    /// Look again at `at` (Unix time), unless an earlier look is due anyway.
    fn wake_at(&mut self, at: i64) {
        self.actions
            .push(Action::RequeueAfter(at.saturating_sub(self.obs.now).max(1)));
    }

    /// The training is over: stop the workers still running or starting.
    /// Workers that exited stay, as a Job's pods do, so `kubectl logs`
    /// still shows rank 0's summary table and a failed rank's last words;
    /// they hold no resources and go with the training (owner references)
    /// or its TTL.
    fn stop_live_pods(&mut self) {
        self.delete_pods_where(|p| {
            !matches!(p.state, PodState::Succeeded | PodState::Failed { .. })
                || p.deletion_deadline.is_some()
        });
    }

    /// Delete every pod not yet being deleted; force-delete ones stuck terminating.
    fn delete_pods(&mut self, only_other_attempts: bool) {
        let current = self.st.attempt;
        self.delete_pods_where(|p| !(only_other_attempts && p.attempt == current));
    }

    /// Delete the pods `wanted` picks that are not yet being deleted, and
    /// force-delete those stuck terminating or stalled in this attempt.
    fn delete_pods_where(&mut self, wanted: impl Fn(&ObservedPod) -> bool) {
        let obs = self.obs;
        for p in obs.pods.iter().filter(|p| wanted(p)) {
            // A stopped pod being deleted is held only by a finalizer (the
            // API server deletes a terminal pod without a grace period):
            // forcing it again changes nothing.
            let held = p.stopped && p.deletion_deadline.is_some();
            let stuck = !held
                && (self.stuck(p)
                    || (p.attempt == self.st.attempt && self.force_ranks.contains(&p.rank)));
            if p.deletion_deadline.is_none() || stuck {
                self.actions.push(Action::DeletePod {
                    rank: p.rank,
                    attempt: p.attempt,
                    force: stuck,
                });
            }
        }
    }

    fn finish(&mut self, phase: Phase, reason: &str, message: String) {
        self.set_phase(phase, reason, message);
        self.st.completion_time.get_or_insert(self.obs.now);
        self.st.restart_after = None;
    }

    /// Add what stopping the gang now throws away to status, under
    /// `cause`; returns it for the message. A preempted worker (exit 75)
    /// saved a checkpoint as it stopped, and a stop the operator itself
    /// decides (spec change, suspension, growing back) deletes pods with a
    /// grace period, in which the trainers save one at their next step on
    /// SIGTERM: neither is counted as lost.
    fn account_lost_work(&mut self, cause: RestartCause) -> String {
        match cause {
            RestartCause::Preemption => {
                return "; no work lost: preempted workers save a checkpoint as they stop (SIGTERM, within terminationGracePeriodSeconds)".into()
            }
            RestartCause::User => {
                return format!(
                    "; the workers save a checkpoint at their next step on SIGTERM, within terminationGracePeriodSeconds ({}s)",
                    self.spec.workers.termination_grace_period_seconds
                )
            }
            _ => {}
        }
        let Some(lost) = lost_work(&self.st, self.obs.now, self.spec.workers.gpus_per_worker)
        else {
            return String::new();
        };
        self.st
            .lost_work
            .get_or_insert_with(Default::default)
            .add(&lost);
        self.st
            .lost_work_by_cause
            .entry(cause.as_str().into())
            .or_default()
            .add(&lost);
        format!(
            "; work lost since the last checkpoint: {} steps, {:.0} s of training, {:.0} GPU-seconds",
            lost.steps, lost.seconds, lost.gpu_seconds
        )
    }

    /// Start a new attempt: delete the gang, back off, recreate at `world`.
    /// Application failures use `restartPolicy.budget`, stalls
    /// `stallBudget`; the other causes use neither.
    fn restart(&mut self, world: i32, cause: RestartCause, reason: &str, message: String) {
        let lost = self.account_lost_work(cause);
        self.delete_pods(false);
        let counts = cause == RestartCause::Application;
        match cause {
            RestartCause::Application => self.st.restarts = self.st.restarts.saturating_add(1),
            RestartCause::Stall => {}
            _ => self.st.exempt_restarts = self.st.exempt_restarts.saturating_add(1),
        }
        self.st.restarts_by_cause.bump(cause);
        self.st.attempt = self.st.attempt.saturating_add(1);
        if world != self.st.world_size {
            let g = crate::global_batch::at_world(self.spec, world);
            let (why, what, warning) = crate::global_batch::resize_event(self.spec, &g);
            self.event(why, what, warning);
            self.st.global_batch = Some(g);
        }
        self.st.world_size = world;
        self.st.running_since = None;
        self.st.restart_time = Some(self.obs.now);
        self.st.attempt_start_time = None;
        let backoff = if counts {
            let base = i64::from(self.spec.restart_policy.backoff_seconds);
            (base << self.st.restarts.saturating_sub(1).clamp(0, 20)).min(MAX_BACKOFF_SECONDS)
        } else {
            i64::from(self.spec.restart_policy.backoff_seconds).min(MAX_BACKOFF_SECONDS)
        };
        self.st.restart_after = Some(self.obs.now.saturating_add(backoff));
        self.set_phase(
            Phase::Restarting,
            reason,
            format!(
                "{message}; attempt {} starts in {backoff}s with {world} workers{lost}",
                self.st.attempt
            ),
        );
    }
}

/// What stopping the gang at `now` throws away, from rank 0's last report
/// in `st`: the steps after the last checkpoint, their training time, and
/// device time since the later of the checkpoint and the gang's start.
/// `None` when the gang never ran.
pub fn lost_work(
    st: &RideTrainingStatus,
    now: i64,
    gpus_per_worker: i32,
) -> Option<LostWorkStatus> {
    let running = st.running_since?;
    let checkpoint = st.last_checkpoint.as_ref();
    // A report from before this gang started says nothing about its steps.
    let report = st
        .progress
        .as_ref()
        .filter(|p| p.last_step_time.is_some_and(|t| t >= running));
    let ckpt_step = checkpoint.map_or(0, |c| c.step.max(0) as u64);
    let progress = ride_contract::Progress {
        step: report.map_or(ckpt_step, |p| p.step.max(0) as u64),
        last_step_unix: report.and_then(|p| p.last_step_time).map(|t| t as f64),
        training_since_unix: Some(running as f64),
        checkpoint: checkpoint.map(|c| ride_contract::CheckpointProgress {
            step: ckpt_step,
            saved_unix: c
                .time
                .parse::<jiff::Timestamp>()
                .ok()
                .map(|t| t.as_second() as f64),
            ..Default::default()
        }),
        ..Default::default()
    };
    let workers = u32::try_from(st.world_size.max(0)).unwrap_or(0);
    let gpus = u32::try_from(gpus_per_worker.max(1)).unwrap_or(1);
    // What one restart may add, whatever the report said: no more training
    // than the gang's wall time since it started, no more device time than
    // that times its devices (`max` first: it also turns NaN into 0).
    let wall = now.saturating_sub(running).max(0) as f64;
    let devices = f64::from(workers) * f64::from(gpus);
    ride_contract::LostWork::from_report(&progress, now as f64, workers, gpus).map(|l| {
        LostWorkStatus {
            steps: i64::try_from(l.steps.min(crate::report::MAX_STEPS)).unwrap_or(0),
            seconds: l.seconds.max(0.0).min(wall),
            gpu_seconds: l.device_seconds.max(0.0).min(wall * devices),
        }
    })
}

/// Bring counters an older operator, a bug or a hand edit may have left
/// out of range back into it, so every decision below works on sane
/// numbers: status is the operator's own record, but anyone with write
/// access to `ridetrainings/status` can put anything there.
fn sanitize(st: &mut RideTrainingStatus, spec: &RideTrainingSpec) {
    let min = spec
        .workers
        .min_replicas
        .unwrap_or(spec.workers.replicas)
        .max(1);
    let max = spec.workers.replicas.max(1);
    if st.phase.is_some() && !(min.min(max)..=max).contains(&st.world_size) {
        st.world_size = max;
    }
    for n in [
        &mut st.attempt,
        &mut st.restarts,
        &mut st.exempt_restarts,
        &mut st.resizes,
    ] {
        *n = (*n).max(0);
    }
}

/// The condition saying the gang stalled; it stays True until a new gang runs.
pub const STALLED_CONDITION: &str = "Stalled";

/// The condition saying a worker could not resolve rank 0's address before
/// training (exit 77); True until a new gang runs.
pub const PREFLIGHT_CONDITION: &str = "PreflightFailed";

/// Set a condition that is not a phase (`Stalled`), keeping its
/// transition time unless its status flips.
pub fn set_side_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: i64,
    generation: Option<i64>,
) {
    let want = if status { "True" } else { "False" };
    let time = Time(jiff::Timestamp::from_second(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH));
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != want {
                c.status = want.into();
                c.last_transition_time = time;
            }
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None if status => conditions.push(Condition {
            type_: type_.into(),
            status: want.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: time,
            observed_generation: generation,
        }),
        None => {}
    }
}

/// How long to wait, after a worker reports a stall, for the other
/// workers' watchdogs: twice their check interval (a twentieth of the
/// limit), so that only workers that stopped are named.
pub fn stall_settle_seconds(spec: &RideTrainingSpec) -> i64 {
    match spec.restart_policy.stall_timeout_seconds {
        Some(s) if s > 0 => (s / 10).clamp(2, 12),
        _ => 12,
    }
}

/// Make `phase`'s condition True and every other phase's False (one
/// condition type per [`Phase`]), keeping each condition's transition time
/// unless its status flips; every listed condition is stamped with the
/// `generation` it was judged against.
pub fn set_conditions(
    conditions: &mut Vec<Condition>,
    phase: Phase,
    reason: &str,
    message: &str,
    now: i64,
    generation: Option<i64>,
) {
    let time = Time(jiff::Timestamp::from_second(now).unwrap_or(jiff::Timestamp::UNIX_EPOCH));
    for ty in Phase::ALL {
        let name = ty.as_str();
        let want = if ty == phase { "True" } else { "False" };
        match conditions.iter_mut().find(|c| c.type_ == name) {
            Some(c) => {
                if c.status != want {
                    c.status = want.into();
                    c.last_transition_time = time.clone();
                }
                if ty == phase {
                    c.reason = reason.into();
                    c.message = message.into();
                }
                c.observed_generation = generation;
            }
            // Conditions of phases never entered are not listed.
            None if ty == phase => conditions.push(Condition {
                type_: name.into(),
                status: want.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: time.clone(),
                observed_generation: generation,
            }),
            None => {}
        }
    }
}

/// What a failed worker's exit means, by the spec's rules.
pub fn exit_action(spec: &RideTrainingSpec, state: &PodState) -> ExitAction {
    let policy = &spec.restart_policy;
    match state {
        PodState::Disrupted { .. } if policy.preemption_exempt => ExitAction::RestartExempt,
        PodState::Disrupted { .. } => ExitAction::Restart,
        PodState::Failed { exit_code } => {
            if let Some(rule) = policy
                .exit_code_rules
                .iter()
                .find(|r| r.codes.contains(exit_code))
            {
                return rule.action;
            }
            match classify_exit(*exit_code) {
                ExitClass::Preempted if policy.preemption_exempt => ExitAction::RestartExempt,
                ExitClass::Permanent => ExitAction::Fail,
                _ => ExitAction::Restart,
            }
        }
        _ => ExitAction::Restart,
    }
}

/// The operator's own stall check, behind the workers' watchdogs: when
/// rank 0 last reported training steps and none has followed for twice
/// the watchdogs' limit plus a minute, every rank may be stopped (a frozen
/// node, watchdogs that cannot run). `None` while nothing is wrong, or
/// with `stallTimeoutSeconds: 0`.
pub fn progress_stall(
    spec: &RideTrainingSpec,
    st: &RideTrainingStatus,
    now: i64,
) -> Option<String> {
    let (since, watchdog, limit) = progress_stall_clock(spec, st)?;
    let idle = now.saturating_sub(since);
    (idle > limit).then(|| {
        format!(
            "rank 0 reported no optimiser step for {idle}s (the operator's limit: twice the watchdogs' {watchdog}s plus a minute) and no worker's watchdog reported a stall"
        )
    })
}

/// When [`progress_stall`] would first find a stall if no step followed
/// (Unix time), so a timer can be set for it.
pub fn progress_stall_due(spec: &RideTrainingSpec, st: &RideTrainingStatus) -> Option<i64> {
    let (since, _, limit) = progress_stall_clock(spec, st)?;
    Some(since.saturating_add(limit).saturating_add(1))
}

/// (last sign of progress, the watchdogs' limit, the operator's limit).
fn progress_stall_clock(
    spec: &RideTrainingSpec,
    st: &RideTrainingStatus,
) -> Option<(i64, i64, i64)> {
    let p = st.progress.as_ref()?;
    if p.training != Some(true) {
        return None;
    }
    let watchdog = match spec.restart_policy.stall_timeout_seconds {
        Some(0) => return None,
        Some(s) => s,
        // The trainer's default: 20 typical steps, at least 300 s.
        None => p
            .steps_per_second
            .filter(|r| *r > 0.0)
            .map_or(300, |r| ((20.0 / r).ceil() as i64).max(300)),
    };
    let limit = watchdog.saturating_mul(2).saturating_add(60);
    let since = p.last_step_time?.max(st.running_since?);
    Some((since, watchdog, limit))
}

/// A worker's watchdog exited 76 at `first_at`: wait a moment for the
/// other workers' watchdogs, name the workers still running silently as
/// the ones that stopped first, then restart on the stall budget.
fn decide_stall(c: &mut Ctx<'_>, current: &[&ObservedPod], first_at: i64, what: String) {
    let now = c.obs.now;
    let silent: Vec<i32> = current
        .iter()
        .filter(|p| p.state == PodState::Running && p.deletion_deadline.is_none())
        .map(|p| p.rank)
        .collect();
    let settle = stall_settle_seconds(c.spec);
    let waited = now.saturating_sub(first_at);
    if !silent.is_empty() && waited < settle {
        c.actions
            .push(Action::RequeueAfter(settle.saturating_sub(waited).max(1)));
        let phase = c.st.phase.unwrap_or(Phase::Running);
        let reason = c.st.reason.clone().unwrap_or_else(|| "Running".into());
        c.note(
            phase,
            &reason,
            format!("{what} (stalled); waiting up to {settle}s for the other workers' watchdogs"),
        );
        return;
    }
    let first = if silent.is_empty() {
        "every worker's watchdog gave up (the one whose log says it stopped outside a collective stopped first)".to_string()
    } else {
        let names: Vec<String> = silent.iter().map(i32::to_string).collect();
        let (who, were) = match names.as_slice() {
            [one] => (format!("worker {one}"), "it was"),
            _ => (format!("workers {}", names.join(", ")), "they were"),
        };
        format!(
            "{who} stopped first: {were} still running but silent when the others' watchdogs gave up"
        )
    };
    let message = format!("the gang stopped making progress: {what} (no optimiser step for the stall timeout); {first}");
    stall_restart(c, message, silent);
}

/// Say that the gang stalled (condition and Event), then restart it on
/// the stall budget, deleting `stuck` workers without a grace period.
fn stall_restart(c: &mut Ctx<'_>, message: String, stuck: Vec<i32>) {
    let now = c.obs.now;
    let (now_gen, budget) = (c.obs.generation, c.spec.restart_policy.stall_budget);
    set_side_condition(
        &mut c.st.conditions,
        STALLED_CONDITION,
        true,
        "Stalled",
        &message,
        now,
        now_gen,
    );
    c.event("Stalled", message.clone(), true);
    c.force_ranks = stuck;
    if c.st.restarts_by_cause.stall >= budget {
        c.stop_live_pods();
        c.finish(
            Phase::Failed,
            "StallBudgetExhausted",
            format!("{message}; all {budget} stall restarts (restartPolicy.stallBudget) used"),
        );
        return;
    }
    let world = c.st.world_size;
    c.restart(world, RestartCause::Stall, "Stalled", message);
}

/// Decide what to do for one RideTraining: the steps below, then a timer
/// for the earliest time something becomes due without any change the
/// watches would show (the deadline, an elastic shrink, the stall
/// backstop). Nothing else wakes a training: there is no periodic look.
pub fn decide(spec: &RideTrainingSpec, status: &RideTrainingStatus, obs: &Observed) -> Decision {
    let mut d = decide_steps(spec, status, obs);
    if let Some(at) = next_due(spec, &d.status, obs) {
        d.actions
            .push(Action::RequeueAfter(at.saturating_sub(obs.now).max(1)));
    }
    d
}

/// The earliest future time (Unix) a decision on an unchanged world would
/// differ: `activeDeadlineSeconds` running out, a worker unschedulable for
/// the elastic timeout, the operator's stall backstop.
fn next_due(spec: &RideTrainingSpec, st: &RideTrainingStatus, obs: &Observed) -> Option<i64> {
    if obs.invalid_spec.is_some()
        || matches!(
            st.phase,
            None | Some(Phase::Succeeded | Phase::Failed | Phase::Suspended)
        )
    {
        return None;
    }
    let deadline = spec
        .run_policy
        .active_deadline_seconds
        .zip(st.start_time)
        .map(|(limit, start)| start.saturating_add(limit));
    let min = spec.workers.min_replicas.unwrap_or(spec.workers.replicas);
    let shrink = (min < st.world_size)
        .then(|| {
            obs.pods
                .iter()
                .filter(|p| p.attempt == st.attempt)
                .filter_map(|p| match p.state {
                    PodState::Pending {
                        unschedulable_since: Some(t),
                    } => Some(t.saturating_add(spec.workers.elastic_timeout_seconds)),
                    _ => None,
                })
                .min()
        })
        .flatten();
    let stall = st.running_since.and_then(|_| progress_stall_due(spec, st));
    [deadline, shrink, stall]
        .into_iter()
        .flatten()
        .filter(|t| *t > obs.now)
        .min()
}

fn decide_steps(spec: &RideTrainingSpec, status: &RideTrainingStatus, obs: &Observed) -> Decision {
    let mut c = Ctx {
        spec,
        obs,
        st: status.clone(),
        actions: Vec::new(),
        force_ranks: Vec::new(),
    };
    let _ = steps(&mut c);
    Decision {
        actions: c.actions,
        status: c.st,
    }
}

/// The steps of a decision, in order; each either decides (`Break`) or
/// hands on to the next.
fn steps(c: &mut Ctx<'_>) -> ControlFlow<()> {
    validation(c)?;
    first_sight(c);
    finished(c)?;
    suspension(c)?;
    deadline(c)?;
    resumption(c);
    housekeeping(c);
    spec_change(c)?;
    backoff(c)?;
    failure(c)?;
    success(c)?;
    elastic(c)?;
    old_gang(c)?;
    start_and_watch(c);
    ControlFlow::Continue(())
}

/// A spec that cannot run fails the training, once, whatever its state;
/// nothing else happens until it is fixed (a running gang is left alone).
fn validation(c: &mut Ctx<'_>) -> ControlFlow<()> {
    let Some(why) = c.obs.invalid_spec.clone() else {
        return ControlFlow::Continue(());
    };
    let failed = c.st.phase == Some(Phase::Failed);
    if !failed || c.st.reason.as_deref() != Some(INVALID_SPEC) {
        c.note(Phase::Failed, INVALID_SPEC, why.clone());
        c.st.phase = Some(Phase::Failed);
        c.st.reason = Some(INVALID_SPEC.into());
        c.st.completion_time = Some(c.obs.now);
        c.st.observed_generation = c.obs.generation;
        c.event(INVALID_SPEC, why, true);
    }
    ControlFlow::Break(())
}

/// Sane counters, the generation judged, and a first status for a new
/// training.
fn first_sight(c: &mut Ctx<'_>) {
    let spec = c.spec;
    sanitize(&mut c.st, spec);
    c.st.observed_generation = c.obs.generation;
    if c.st.phase.is_none() {
        c.st.world_size = spec.workers.replicas;
        // Created suspended (as Kueue does): the clock starts at admission.
        c.st.start_time = (!spec.run_policy.suspend).then_some(c.obs.now);
        c.st.spec_hash = Some(spec_hash(spec));
        c.set_phase(
            Phase::Created,
            "Created",
            format!("gang of {} workers", spec.workers.replicas),
        );
    }
}

/// Finished: stop workers still running, then honour the TTL.
fn finished(c: &mut Ctx<'_>) -> ControlFlow<()> {
    if !matches!(c.st.phase, Some(Phase::Succeeded | Phase::Failed)) {
        return ControlFlow::Continue(());
    }
    c.stop_live_pods();
    if let (Some(ttl), Some(done)) = (
        c.spec.run_policy.ttl_seconds_after_finished,
        c.st.completion_time,
    ) {
        let due = done.saturating_add(ttl);
        if c.obs.now >= due {
            c.actions.push(Action::DeleteSelf);
        } else {
            c.actions
                .push(Action::RequeueAfter(due.saturating_sub(c.obs.now)));
        }
    }
    ControlFlow::Break(())
}

/// Suspended: no workers. Suspended time does not count towards the
/// deadline (as for a Job): the clock stops here and restarts from zero on
/// resume.
fn suspension(c: &mut Ctx<'_>) -> ControlFlow<()> {
    if !c.spec.run_policy.suspend {
        return ControlFlow::Continue(());
    }
    if c.st.phase != Some(Phase::Suspended) && c.st.running_since.is_some() {
        let saving = c.account_lost_work(RestartCause::User);
        c.st.restarts_by_cause.bump(RestartCause::User);
        c.event("Suspending", format!("suspending{saving}"), false);
    }
    c.delete_pods(false);
    c.st.running_since = None;
    c.st.start_time = None;
    c.set_phase(
        Phase::Suspended,
        "Suspended",
        "workers deleted; set runPolicy.suspend false to resume".into(),
    );
    ControlFlow::Break(())
}

/// `activeDeadlineSeconds` ran out: the training fails.
fn deadline(c: &mut Ctx<'_>) -> ControlFlow<()> {
    let (Some(limit), Some(start)) = (c.spec.run_policy.active_deadline_seconds, c.st.start_time)
    else {
        return ControlFlow::Continue(());
    };
    if c.obs.now.saturating_sub(start) < limit {
        return ControlFlow::Continue(());
    }
    c.stop_live_pods();
    c.finish(
        Phase::Failed,
        "DeadlineExceeded",
        format!("ran longer than activeDeadlineSeconds ({limit}s)"),
    );
    ControlFlow::Break(())
}

/// Resuming is a fresh attempt from the latest checkpoint, outside the budget.
fn resumption(c: &mut Ctx<'_>) {
    if c.st.phase != Some(Phase::Suspended) {
        return;
    }
    c.st.attempt = c.st.attempt.saturating_add(1);
    c.st.world_size = c.spec.workers.replicas;
    c.st.attempt_start_time = None;
    c.st.start_time = Some(c.obs.now);
    c.set_phase(
        Phase::Created,
        "Resumed",
        "recreating the workers from the latest checkpoint".into(),
    );
}

/// The Service exists, and pods of older attempts go, whatever happens next.
fn housekeeping(c: &mut Ctx<'_>) {
    if !c.obs.service_exists {
        c.actions.push(Action::EnsureService);
    }
    c.delete_pods(true);
}

/// A changed spec (image, config, workers...) restarts the gang with it.
fn spec_change(c: &mut Ctx<'_>) -> ControlFlow<()> {
    let spec = c.spec;
    let hash = spec_hash(spec);
    if c.st.spec_hash.as_deref() == Some(hash.as_str()) {
        return ControlFlow::Continue(());
    }
    // (The legacy hash serialises the spec again: only on a mismatch.)
    if c.st.spec_hash.as_deref() == Some(legacy_spec_hash(spec).as_str()) {
        // Written by an older operator for this very spec: same pods.
        c.st.spec_hash = Some(hash);
        return ControlFlow::Continue(());
    }
    c.st.spec_hash = Some(hash);
    c.restart(
        spec.workers.replicas,
        RestartCause::User,
        "SpecChanged",
        "the spec changed".into(),
    );
    ControlFlow::Break(())
}

/// Within a restart's backoff nothing is created.
fn backoff(c: &mut Ctx<'_>) -> ControlFlow<()> {
    let Some(after) = c.st.restart_after else {
        return ControlFlow::Continue(());
    };
    if c.obs.now < after {
        c.actions
            .push(Action::RequeueAfter(after.saturating_sub(c.obs.now)));
        return ControlFlow::Break(());
    }
    // Over; cleared by the write that records the new gang's start, so
    // the end of a backoff costs no status write of its own.
    ControlFlow::Continue(())
}

/// The current attempt's pods, those being deleted included: nothing of
/// ours deletes them while the attempt is current, so a deletion came from
/// outside (an eviction, a lost node, a user) and ends the attempt.
fn current<'a>(c: &Ctx<'a>) -> Vec<&'a ObservedPod> {
    let attempt = c.st.attempt;
    c.obs.pods.iter().filter(|p| p.attempt == attempt).collect()
}

/// A failure of the current attempt: when it happened, the rank, its
/// state (deletions and lost nodes as disruptions), and what to say.
struct Failure {
    at: i64,
    state: PodState,
    what: String,
}

/// The first failure in time of the current attempt, if any: when a rank
/// crashes, the others fail after it (a broken collective), and their
/// codes say nothing. A rank that exited 0 does not mask another's failure.
fn first_failure(c: &Ctx<'_>, current: &[&ObservedPod]) -> Option<Failure> {
    let now = c.obs.now;
    let mut failures: Vec<(i64, i32, Failure)> = current
        .iter()
        .filter_map(|p| {
            let what = match &p.state {
                PodState::Failed { exit_code } => {
                    format!("worker {} exited with code {exit_code}", p.rank)
                }
                PodState::Disrupted { reason } => {
                    format!("worker {} was disrupted ({reason})", p.rank)
                }
                PodState::Succeeded => return None,
                _ if p.node_lost.is_some() => format!(
                    "worker {} was lost: {}",
                    p.rank,
                    p.node_lost.as_deref().unwrap_or_default()
                ),
                _ if p.deletion_deadline.is_some() => format!("worker {} was deleted", p.rank),
                _ => return None,
            };
            // A deletion without an exit code yet is classified like a disruption.
            let state = match &p.state {
                PodState::Failed { .. } | PodState::Disrupted { .. } => p.state.clone(),
                _ if p.node_lost.is_some() => PodState::Disrupted {
                    reason: "NodeLost".into(),
                },
                _ => PodState::Disrupted {
                    reason: "Deleted".into(),
                },
            };
            let at = p.ended_at.unwrap_or(now);
            Some((at, p.rank, Failure { at, state, what }))
        })
        .collect();
    if failures.is_empty() {
        // A rank that vanished after the gang was complete (force-deleted
        // before we saw it go) ends the attempt too: the others cannot go
        // on without it.
        let missing = (0..c.st.world_size)
            .find(|r| c.st.running_since.is_some() && !current.iter().any(|p| p.rank == *r))?;
        return Some(Failure {
            at: now,
            state: PodState::Disrupted {
                reason: "Deleted".into(),
            },
            what: format!("worker {missing} disappeared"),
        });
    }
    failures.sort_by_key(|(t, rank, _)| (*t, *rank));
    failures.into_iter().next().map(|(_, _, f)| f)
}

/// A failed attempt: a stall, a failed preflight, or a restart or failure
/// by the exit-code rules and budgets.
fn failure(c: &mut Ctx<'_>) -> ControlFlow<()> {
    let current = current(c);
    let Some(Failure { at, state, what }) = first_failure(c, &current) else {
        return ControlFlow::Continue(());
    };
    let policy = &c.spec.restart_policy;
    let by_rule = matches!(&state, PodState::Failed { exit_code }
        if policy.exit_code_rules.iter().any(|r| r.codes.contains(exit_code)));
    let class = match &state {
        PodState::Failed { exit_code } if !by_rule => Some(classify_exit(*exit_code)),
        _ => None,
    };
    match class {
        Some(ExitClass::Stalled) => decide_stall(c, &current, at, what),
        Some(ExitClass::Unreachable) => preflight_failed(c, &current, what),
        _ => restart_or_fail(c, &state, by_rule, what),
    }
    ControlFlow::Break(())
}

/// A worker could not reach rank 0 before training (exit 77): say what it
/// said, and restart outside the budget.
fn preflight_failed(c: &mut Ctx<'_>, current: &[&ObservedPod], what: String) {
    let said = current
        .iter()
        .filter(|p| matches!(p.state, PodState::Failed { exit_code } if classify_exit(exit_code) == ExitClass::Unreachable))
        .find_map(|p| p.exit_message.clone())
        .map_or(String::new(), |m| format!(": {m}"));
    let message = format!("{what} before training, in the preflight check{said}");
    set_side_condition(
        &mut c.st.conditions,
        PREFLIGHT_CONDITION,
        true,
        "PreflightFailed",
        &message,
        c.obs.now,
        c.obs.generation,
    );
    let world = c.st.world_size;
    c.restart(
        world,
        RestartCause::Infrastructure,
        "PreflightFailed",
        message,
    );
}

/// What the exit-code rules and the budgets make of a failure.
fn restart_or_fail(c: &mut Ctx<'_>, state: &PodState, by_rule: bool, what: String) {
    let policy = &c.spec.restart_policy;
    let mut action = exit_action(c.spec, state);
    let mut what = what;
    if action == ExitAction::RestartExempt && c.st.exempt_restarts >= policy.max_exempt_restarts {
        // A loop guard: past the limit, disruptions use the budget too.
        action = ExitAction::Restart;
        what = format!(
            "{what} (after {} restarts outside the budget, maxExemptRestarts)",
            c.st.exempt_restarts
        );
    }
    let world = c.st.world_size;
    match action {
        ExitAction::Fail => {
            let why = if by_rule {
                "the exit-code rules say fail"
            } else {
                "the code means an invalid config or command line; another try cannot help"
            };
            c.stop_live_pods();
            c.finish(Phase::Failed, "WorkerFailed", format!("{what}; {why}"));
        }
        ExitAction::Restart if c.st.restarts >= policy.budget => {
            c.stop_live_pods();
            c.finish(
                Phase::Failed,
                "RestartBudgetExhausted",
                format!("{what}; all {} restarts used", policy.budget),
            );
        }
        ExitAction::Restart => {
            c.restart(world, RestartCause::Application, "WorkerFailed", what);
        }
        ExitAction::RestartExempt => {
            let cause = match state {
                PodState::Failed { .. } => RestartCause::Preemption,
                PodState::Disrupted { reason } if crate::observe::is_preemption(reason) => {
                    RestartCause::Preemption
                }
                _ => RestartCause::Infrastructure,
            };
            c.restart(world, cause, "Preempted", what);
        }
    }
}

/// Only when every rank succeeded is the training done.
fn success(c: &mut Ctx<'_>) -> ControlFlow<()> {
    let world = c.st.world_size;
    let current = current(c);
    if current.len() as i32 != world || !current.iter().all(|p| p.state == PodState::Succeeded) {
        return ControlFlow::Continue(());
    }
    c.finish(
        Phase::Succeeded,
        "Succeeded",
        format!("all {world} workers finished"),
    );
    ControlFlow::Break(())
}

/// Elastic: shrink when workers stay unschedulable, grow back after a
/// while. Growing back is optional: once the resizes are used up, a
/// shrunken gang stays as it is rather than cycling between sizes.
fn elastic(c: &mut Ctx<'_>) -> ControlFlow<()> {
    let (spec, now, world) = (c.spec, c.obs.now, c.st.world_size);
    let timeout = spec.workers.elastic_timeout_seconds;
    let min = spec.workers.min_replicas.unwrap_or(spec.workers.replicas);
    let stuck = current(c)
        .iter()
        .filter(|p| matches!(p.state, PodState::Pending { unschedulable_since: Some(t) } if now.saturating_sub(t) >= timeout))
        .count() as i32;
    let placed = world.saturating_sub(stuck);
    if stuck > 0 && placed >= min && placed < world {
        c.st.resizes = c.st.resizes.saturating_add(1);
        c.restart(
            placed,
            RestartCause::Infrastructure,
            "Shrinking",
            format!("{stuck} workers unschedulable for {timeout}s"),
        );
        return ControlFlow::Break(());
    }
    let may_grow = c.st.resizes < spec.workers.max_resizes;
    if may_grow
        && world < spec.workers.replicas
        && c.st
            .running_since
            .is_some_and(|t| now.saturating_sub(t) >= timeout)
    {
        c.st.resizes = c.st.resizes.saturating_add(1);
        let full = spec.workers.replicas;
        c.restart(
            full,
            RestartCause::User,
            "Growing",
            format!("trying {full} workers again"),
        );
        return ControlFlow::Break(());
    }
    ControlFlow::Continue(())
}

/// Two gangs never run at once: the new attempt waits until every pod of
/// older attempts is gone or stopped (force-deleted once stuck past the
/// grace, or at once on a lost node). A deleted pod whose phase is terminal
/// counts as stopped: Kueue keeps a replaced pod of a pod group (its
/// finalizer) until the replacement exists, so waiting for it to be gone
/// would wait forever.
fn old_gang(c: &mut Ctx<'_>) -> ControlFlow<()> {
    let attempt = c.st.attempt;
    let waiting_for_old = c
        .obs
        .pods
        .iter()
        .filter(|p| {
            p.attempt != attempt && !c.stuck(p) && !(p.stopped && p.deletion_deadline.is_some())
        })
        .count();
    if waiting_for_old == 0 {
        return ControlFlow::Continue(());
    }
    // Their deletions wake us as they land; a pod that never goes becomes
    // stuck (and is force-deleted) at a known time.
    let stuck_at = c
        .obs
        .pods
        .iter()
        .filter(|p| p.attempt != attempt)
        .filter_map(|p| c.stuck_at(p))
        .min();
    if let Some(at) = stuck_at {
        c.wake_at(at);
    }
    // Right after a restart the old gang normally goes within seconds: the
    // restart's own message (why, and what was lost) stays until then, so
    // each worker that goes costs no status write. One that lingers past
    // this is named.
    let quiet_until =
        c.st.restart_time
            .map(|t| t.saturating_add(OLD_GANG_QUIET_SECONDS));
    if let Some(until) = quiet_until.filter(|&t| c.obs.now < t) {
        c.wake_at(until);
        return ControlFlow::Break(());
    }
    let message = format!("waiting for {waiting_for_old} workers of the previous attempt to stop");
    let phase = c.st.phase.unwrap_or(Phase::Created);
    let reason = c.st.reason.clone().unwrap_or_else(|| "Created".into());
    c.note(phase, &reason, message);
    ControlFlow::Break(())
}

/// How long after a restart the old gang may take to stop before status
/// says it is being waited for.
const OLD_GANG_QUIET_SECONDS: i64 = 10;

/// Create the missing ranks of this attempt, and follow it: running (or
/// stalled past the operator's backstop), or still starting and why.
fn start_and_watch(c: &mut Ctx<'_>) {
    let (spec, now, world) = (c.spec, c.obs.now, c.st.world_size);
    let current = current(c);
    for rank in 0..world {
        if !current.iter().any(|p| p.rank == rank) {
            c.actions.push(Action::CreatePod {
                rank,
                attempt: c.st.attempt,
                world_size: world,
            });
        }
    }
    c.st.attempt_start_time.get_or_insert(now);
    c.st.restart_after = None;
    let running = current
        .iter()
        .filter(|p| matches!(p.state, PodState::Running | PodState::Succeeded))
        .count() as i32;
    if running == world && c.st.running_since.is_some() {
        if let Some(why) = progress_stall(spec, &c.st, now) {
            let everyone: Vec<i32> = (0..world).collect();
            stall_restart(
                c,
                format!("the gang stopped making progress: {why}; every worker is deleted without a grace period"),
                everyone,
            );
            return;
        }
    }
    if running == world {
        running_gang(c);
    } else if c.st.phase != Some(Phase::Running) {
        starting_gang(c, &current, running);
    }
    if c.st.resizes < spec.workers.max_resizes && world < spec.workers.replicas {
        c.actions
            .push(Action::RequeueAfter(spec.workers.elastic_timeout_seconds));
    }
}

/// Every worker runs: the attempt is Running, and a stall or failed
/// preflight before it is over.
fn running_gang(c: &mut Ctx<'_>) {
    let (now, world) = (c.obs.now, c.st.world_size);
    c.st.running_since.get_or_insert(now);
    for ty in [STALLED_CONDITION, PREFLIGHT_CONDITION] {
        let on =
            c.st.conditions
                .iter()
                .any(|k| k.type_ == ty && k.status == "True");
        if on {
            set_side_condition(
                &mut c.st.conditions,
                ty,
                false,
                "Recovered",
                &format!("attempt {} runs all {world} workers", c.st.attempt),
                now,
                c.obs.generation,
            );
        }
    }
    c.set_phase(
        Phase::Running,
        "Running",
        format!("{world} workers running"),
    );
}

/// The reason while a queue (Kueue) holds the attempt's workers back.
pub const QUEUED_REASON: &str = "Queued";
/// The reason once the queue let them go, until they all run.
pub const ADMITTED_REASON: &str = "Admitted";
/// How often a queued training's message is brought up to date with what
/// Kueue says: one GET of its Workload each time.
pub const QUEUED_LOOK_AGAIN_SECONDS: i64 = 15;

/// How long a starting gang says "starting N workers" before it counts
/// them: a gang that comes up within it costs one status write on the way
/// to Running instead of one per worker; one that takes longer says how
/// far it got.
const COUNT_STARTING_AFTER_SECONDS: i64 = 10;

/// Still starting: keep the phase and reason that began this attempt
/// (Created, Resumed, or Restarting after a failure); update the count, or
/// say why a worker cannot start.
fn starting_gang(c: &mut Ctx<'_>, current: &[&ObservedPod], running: i32) {
    let world = c.st.world_size;
    let phase = match c.st.phase {
        Some(p @ (Phase::Created | Phase::Restarting)) => p,
        _ if c.st.attempt > 0 => Phase::Restarting,
        _ => Phase::Created,
    };
    if let Some(why) = &c.obs.queued {
        // Waiting for a queue is not a worker failing to start: say whose
        // turn it is (Kueue's words) as the reason and message, with one
        // Event when the wait begins.
        if c.st.reason.as_deref() != Some(QUEUED_REASON) {
            c.event(QUEUED_REASON, why.clone(), false);
        }
        c.note(phase, QUEUED_REASON, why.clone());
        c.st.phase = Some(phase);
        c.st.reason = Some(QUEUED_REASON.into());
        // Admission lifts the gate, a pod event that wakes us; what Kueue
        // says meanwhile (its Workload is not watched) is looked at again.
        c.wake_at(c.obs.now.saturating_add(QUEUED_LOOK_AGAIN_SECONDS));
        return;
    }
    let reason = match c.st.reason.clone() {
        Some(r) if r == QUEUED_REASON => ADMITTED_REASON.to_string(),
        Some(r) => r,
        None => "Created".into(),
    };
    // A worker that cannot start (image, missing Secret key) is what users
    // need to read, not a count; say it once as an Event too.
    let problem = current.iter().find_map(|p| {
        Some(format!(
            "worker {} cannot start: {}",
            p.rank,
            p.start_problem.as_ref()?
        ))
    });
    let message = match problem {
        Some(problem) => {
            if c.st.message.as_deref() != Some(problem.as_str()) {
                c.event("WorkerNotStarting", problem.clone(), true);
            }
            problem
        }
        None => {
            let count_from =
                c.st.attempt_start_time
                    .unwrap_or(c.obs.now)
                    .saturating_add(COUNT_STARTING_AFTER_SECONDS);
            if c.obs.now < count_from {
                c.wake_at(count_from);
                format!("starting {world} workers")
            } else {
                format!("{running} of {world} workers running")
            }
        }
    };
    c.note(phase, &reason, message);
    c.st.phase = Some(phase);
    c.st.reason = Some(reason);
}

#[cfg(test)]
mod tests;
