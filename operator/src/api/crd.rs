//! `RideTraining` types. The CRD YAML in `crds/` is generated from them
//! (`ride crd`); a test fails when the file drifts.

use k8s_openapi::api::core::v1::{
    Container, EnvVar, LocalObjectReference, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use ride_contract::{CheckpointUri, Scheme};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A RIDE training run: a gang of worker pods, one per rank.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "ride.dev",
    version = "v1alpha1",
    kind = "RideTraining",
    namespaced,
    shortname = "rt",
    status = "RideTrainingStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Workers","type":"integer","jsonPath":".status.worldSize"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","jsonPath":".status.lastCheckpoint.epoch"}"#,
    printcolumn = r#"{"name":"Top-1","type":"number","jsonPath":".status.latestEval.overall"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress.percent"}"#,
    printcolumn = r#"{"name":"ETA","type":"string","jsonPath":".status.progress.eta"}"#,
    printcolumn = r#"{"name":"Restarts","type":"integer","jsonPath":".status.restarts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // Pod host names are `<name>-<attempt>-<rank>` and must fit a DNS label
    // (63), the Service `<name>-workers` too.
    // (The API server accepts no fieldPath into metadata; the message names it.)
    validation = Rule::new("self.metadata.name.size() <= 53")
        .message("metadata.name must be at most 53 characters: worker pods are named <name>-<attempt>-<rank> and host names are limited to 63")
)]
#[serde(rename_all = "camelCase")]
pub struct RideTrainingSpec {
    /// Container image with `ride-trainer`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// What to train.
    pub trainer: TrainerSpec,
    /// The worker gang.
    pub workers: WorkersSpec,
    /// Where the data is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetSpec>,
    /// Where checkpoints go.
    pub checkpoint: CheckpointSpec,
    /// How failures are handled.
    #[serde(default)]
    pub restart_policy: RestartPolicySpec,
    /// Suspension, clean-up and deadline.
    #[serde(default)]
    pub run_policy: RunPolicySpec,
    /// Where and how the workers are scheduled: scheduler, node selector,
    /// tolerations, priority class, gang scheduling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<SchedulingSpec>,
}

/// The trainer config.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainerSpec {
    /// A config file name from `configs/` (or a path inside the image).
    #[schemars(length(min = 1))]
    pub config: String,
    /// Config keys to override (`KEY: value`, as `--opts KEY value`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, String>,
}

/// The worker gang.
#[derive(Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
// The API server rejects the cross-field case at apply time; the controller
// checks it again (`RideTrainingSpec::validate`) for objects that predate the rule.
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.replicas")
    .message("must not exceed workers.replicas")
    .field_path(".minReplicas"))]
pub struct WorkersSpec {
    /// Ranks (one pod each).
    #[schemars(range(min = 1, max = 4096))]
    pub replicas: i32,
    /// Smallest world size an elastic restart may shrink to (default: replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub min_replicas: Option<i32>,
    /// GPUs per worker (`nvidia.com/gpu`); 0 trains on CPU.
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub gpus_per_worker: i32,
    /// CPU and memory of each worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Seconds a worker may stay unschedulable before the gang restarts
    /// smaller (never below `minReplicas`); also how long a shrunken gang runs
    /// before trying full size again.
    #[serde(default = "default_elastic_timeout")]
    #[schemars(range(min = 10, max = 86400))]
    pub elastic_timeout_seconds: i64,
    /// Seconds a worker gets between SIGTERM and SIGKILL when its gang is
    /// stopped: the trainer saves a checkpoint in that time.
    #[serde(default = "default_termination_grace")]
    #[schemars(range(min = 0, max = 86400))]
    pub termination_grace_period_seconds: i64,
    /// ServiceAccount the workers run as, e.g. for cloud workload identity
    /// to the checkpoint bucket. Without one the workers get no API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Elastic resizes (shrinks and grow-backs) allowed; once used up, a
    /// shrunken gang stays at its size instead of trying full size again.
    #[serde(default = "default_max_resizes")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_resizes: i32,
    /// What users need on the worker pods that the spec does not name,
    /// merged under the operator's own fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<WorkerTemplate>,
}

fn default_max_resizes() -> i32 {
    10
}

/// Labels and annotations of the worker pods.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTemplateMetadata {
    /// Extra labels (the operator's `ride.dev/*` labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Additions to every worker pod.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTemplate {
    /// Labels and annotations added to every worker pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<WorkerTemplateMetadata>,
    /// Environment of the trainer container (`NCCL_DEBUG`, ...); names the
    /// operator sets itself (`RANK`, `WORLD_SIZE`, ...) are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra volumes of the pod, as in a pod spec (`hostPath` only where the
    /// operator allows it); checked by the operator, like `sidecars`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_form_objects")]
    pub volumes: Vec<serde_json::Value>,
    /// Where the trainer container mounts them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Containers run beside the trainer (log shippers, proxies), as in a
    /// pod spec. Their schema is checked by the operator, not the CRD: the
    /// full container schema would triple the CRD's size, past what
    /// client-side `kubectl apply` can store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_form_objects")]
    pub sidecars: Vec<serde_json::Value>,
}

fn free_form_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

impl WorkerTemplate {
    /// The extra volumes, or which one is malformed and why.
    pub fn volume_list(&self) -> Result<Vec<Volume>, SpecError> {
        typed(&self.volumes, "volumes", "a volume")
    }

    /// The sidecars as containers, or which one is malformed and why.
    pub fn sidecar_containers(&self) -> Result<Vec<Container>, SpecError> {
        typed(&self.sidecars, "sidecars", "a container")
    }
}

/// Free-form template entries as Kubernetes types, naming the bad one.
fn typed<T: serde::de::DeserializeOwned>(
    items: &[serde_json::Value],
    field: &str,
    what: &str,
) -> Result<Vec<T>, SpecError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value::<T>(v.clone()).map_err(|e| SpecError {
                field: format!("workers.template.{field}[{i}]"),
                message: format!("not {what}: {e}"),
            })
        })
        .collect()
}

fn default_termination_grace() -> i64 {
    120
}

fn default_elastic_timeout() -> i64 {
    300
}

/// The dataset volume.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// `DATA.DATA_PATH` inside the pod.
    #[schemars(length(min = 1))]
    pub path: String,
    /// The volume holding it, mounted read-only at `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
}

/// Checkpoint storage.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Where the trainer writes checkpoints and reads them back on restart,
    /// passed as its `--output`: an `s3://` (or `s3a://`) or `gs://` bucket,
    /// an `az://` (`azure://`, `abfs://`, `abfss://`) container, or a
    /// `file://` path on a volume every worker mounts. A plain path is
    /// refused: the workers share no local directory.
    #[schemars(length(min = 1), regex(pattern = checkpoint_uri_pattern()))]
    pub uri: String,
    /// Secret whose keys become the worker's environment (`AWS_ACCESS_KEY_ID`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Also checkpoint mid-epoch whenever this long has passed since the last
    /// save (`90s`, `30m`, `1h30m`; `0` turns it off), beside the config's
    /// epoch rules (`SAVE_FREQ`): a failure then loses at most about this
    /// much work. The trainer's `--checkpoint-every`; default 30m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(0|([0-9]+(ms|s|m|h))+)$"))]
    pub every: Option<String>,
}

impl CheckpointSpec {
    /// The `--checkpoint-every` value: the spec's, else the default.
    pub fn every_or_default(&self) -> &str {
        self.every
            .as_deref()
            .unwrap_or(ride_contract::DEFAULT_CHECKPOINT_EVERY)
    }
}

/// The CRD's pattern for `checkpoint.uri`: one of the schemes the trainer
/// opens (`ride_contract::Scheme`), then something after `://`.
fn checkpoint_uri_pattern() -> String {
    let names: Vec<&str> = Scheme::all_names().collect();
    format!("^({})://.+", names.join("|"))
}

/// What to do with a worker exit code.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ExitAction {
    /// Restart the gang, using the budget.
    Restart,
    /// Restart the gang without using the budget (preemption).
    RestartExempt,
    /// Fail the training.
    Fail,
}

/// An exit-code rule.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExitCodeRule {
    /// Exit codes the rule matches.
    #[schemars(length(min = 1))]
    pub codes: Vec<i32>,
    /// What a worker exiting with one of them makes the operator do.
    pub action: ExitAction,
}

/// Failure handling.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestartPolicySpec {
    /// Gang restarts allowed.
    #[serde(default = "default_budget")]
    #[schemars(range(min = 0, max = 1000))]
    pub budget: i32,
    /// Seconds before recreating the gang (doubling per attempt, capped at 10 minutes).
    #[serde(default = "default_backoff_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub backoff_seconds: i32,
    /// Rules by exit code; the first match wins. Without a match, the
    /// trainer's own codes decide: 75 (preempted) restarts outside the
    /// budget, 78 (invalid config) and 2 (usage) fail, anything else restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_code_rules: Vec<ExitCodeRule>,
    /// Exit code 75 (preempted, checkpoint saved), node loss, evictions and
    /// deleted workers restart without using the budget.
    #[serde(default = "default_true")]
    pub preemption_exempt: bool,
    /// A worker of an old attempt still there this long after its
    /// termination grace period ended (its node is unreachable, say) is
    /// force-deleted; until then the next attempt waits for it, so two gangs
    /// never run at once.
    #[serde(default = "default_force_delete_after")]
    #[schemars(range(min = 0, max = 86400))]
    pub force_delete_after_seconds: i64,
    /// Restarts outside the budget (preemption, node loss) allowed before
    /// further ones count against it: a guard against endless loops.
    #[serde(default = "default_max_exempt_restarts")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_exempt_restarts: i32,
    /// Seconds without an optimiser step, while training, after which a
    /// worker's watchdog gives up on the gang (exit code 76) and the gang
    /// restarts (`RIDE_STALL_TIMEOUT`). 0 turns the watchdog off; unset,
    /// the trainer uses 20 typical steps and at least 300 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub stall_timeout_seconds: Option<i64>,
    /// Gang restarts allowed after stalls, separate from `budget`.
    #[serde(default = "default_budget")]
    #[schemars(range(min = 0, max = 1000))]
    pub stall_budget: i32,
}

fn default_max_exempt_restarts() -> i32 {
    100
}

fn default_force_delete_after() -> i64 {
    300
}

fn default_budget() -> i32 {
    3
}

fn default_backoff_seconds() -> i32 {
    10
}

fn default_true() -> bool {
    true
}

impl Default for RestartPolicySpec {
    fn default() -> Self {
        Self {
            budget: default_budget(),
            backoff_seconds: default_backoff_seconds(),
            exit_code_rules: Vec::new(),
            preemption_exempt: default_true(),
            force_delete_after_seconds: default_force_delete_after(),
            max_exempt_restarts: default_max_exempt_restarts(),
            stall_timeout_seconds: None,
            stall_budget: default_budget(),
        }
    }
}

/// Suspension, clean-up, deadline.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunPolicySpec {
    /// Delete the workers and keep the resource (Kueue-style); resume by setting false.
    #[serde(default)]
    pub suspend: bool,
    /// Delete the resource this long after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Fail the training after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
}

/// Placement of the workers.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Scheduler (e.g. a gang scheduler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// Node labels the workers need.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the workers tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// PriorityClass of the worker pods (the cluster default without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Gang scheduling, so that all workers are placed together or none
    /// (the named scheduler must be running; set `schedulerName` to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangScheduler>,
}

/// Which gang scheduler places the workers.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum GangScheduler {
    /// The scheduler-plugins coscheduling plugin: one
    /// `scheduling.x-k8s.io/v1alpha1` PodGroup per training whose
    /// `minMember` is the current world size, pods labelled
    /// `scheduling.x-k8s.io/pod-group`.
    Coscheduling,
    /// The scheduler's own gang scheduling (Kubernetes 1.36 alpha: feature
    /// gates `GenericWorkload` and `GangScheduling`, API
    /// `scheduling.k8s.io/v1alpha2` served): one PodGroup per attempt,
    /// `schedulingPolicy.gang.minCount` its world size, named by each
    /// worker's `spec.schedulingGroup`.
    Native,
}

/// Where a training is in its lifecycle (`status.phase`, also the
/// condition types): Created, Running (or Restarting, Suspended) until it
/// Succeeded or Failed.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, workers not all running yet.
    Created,
    /// All workers running.
    Running,
    /// Gang being recreated after a failure.
    Restarting,
    /// Workers deleted on request.
    Suspended,
    /// Every worker exited 0: training is complete.
    Succeeded,
    /// Given up for good: restart budget used, deadline passed, a
    /// permanent exit code or an invalid spec (`reason` says which).
    Failed,
}

impl Phase {
    /// Every phase, in lifecycle order; each also has a condition type of
    /// its name.
    pub const ALL: [Phase; 6] = [
        Phase::Created,
        Phase::Running,
        Phase::Restarting,
        Phase::Suspended,
        Phase::Succeeded,
        Phase::Failed,
    ];

    /// The name as serialised, also the condition type and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Created => "Created",
            Phase::Running => "Running",
            Phase::Restarting => "Restarting",
            Phase::Suspended => "Suspended",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// The `phase` metrics label of a training not reconciled yet.
pub const PENDING_LABEL: &str = "Pending";

/// Every value of the `phase` metrics label: not reconciled yet, then each phase.
pub fn phase_labels() -> impl Iterator<Item = &'static str> {
    std::iter::once(PENDING_LABEL).chain(Phase::ALL.map(Phase::as_str))
}

/// Why a gang restarted (or, for `user`, was stopped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RestartCause {
    /// A worker failed: uses `restartPolicy.budget`.
    Application,
    /// A node was lost, a worker evicted or deleted, or workers could not
    /// be scheduled (elastic shrink).
    Infrastructure,
    /// A worker exited 75 (preempted, with a checkpoint), or a scheduler
    /// or a queue (Kueue) preempted the gang; they save as they stop.
    Preemption,
    /// The gang stopped making progress (a watchdog exited 76): uses
    /// `restartPolicy.stallBudget`.
    Stall,
    /// The user changed the spec, suspended, or the gang grew back.
    User,
}

impl RestartCause {
    /// Every cause, in a fixed order.
    pub const ALL: [RestartCause; 5] = [
        RestartCause::Application,
        RestartCause::Infrastructure,
        RestartCause::Preemption,
        RestartCause::Stall,
        RestartCause::User,
    ];

    /// The name in status and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartCause::Application => "application",
            RestartCause::Infrastructure => "infrastructure",
            RestartCause::Preemption => "preemption",
            RestartCause::Stall => "stall",
            RestartCause::User => "user",
        }
    }
}

/// Gang restarts so far, by cause (suspensions count under `user`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestartsByCause {
    /// Worker failures.
    #[serde(default)]
    pub application: i32,
    /// Lost nodes, evictions, deleted or unschedulable workers.
    #[serde(default)]
    pub infrastructure: i32,
    /// Exit code 75.
    #[serde(default)]
    pub preemption: i32,
    /// Stalls (exit code 76).
    #[serde(default)]
    pub stall: i32,
    /// Spec changes, suspensions, elastic grow-backs.
    #[serde(default)]
    pub user: i32,
}

impl RestartsByCause {
    /// The count for `cause`.
    pub fn get(&self, cause: RestartCause) -> i32 {
        match cause {
            RestartCause::Application => self.application,
            RestartCause::Infrastructure => self.infrastructure,
            RestartCause::Preemption => self.preemption,
            RestartCause::Stall => self.stall,
            RestartCause::User => self.user,
        }
    }

    /// Count one more for `cause`.
    pub fn bump(&mut self, cause: RestartCause) {
        let n = match cause {
            RestartCause::Application => &mut self.application,
            RestartCause::Infrastructure => &mut self.infrastructure,
            RestartCause::Preemption => &mut self.preemption,
            RestartCause::Stall => &mut self.stall,
            RestartCause::User => &mut self.user,
        };
        *n = n.saturating_add(1);
    }
}

/// Training thrown away by restarts: what ran after the last durable
/// checkpoint, which the next gang computes again.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LostWorkStatus {
    /// Optimiser steps after the checkpoint.
    pub steps: i64,
    /// Seconds of training those steps took (work to redo).
    pub seconds: f64,
    /// Device time lost: from the checkpoint (or the gang's start, if
    /// later) until the failure was seen, idle time included, times
    /// workers × GPUs per worker (workers alone on CPU).
    pub gpu_seconds: f64,
}

impl LostWorkStatus {
    /// Add another restart's loss.
    pub fn add(&mut self, other: &LostWorkStatus) {
        self.steps = self.steps.saturating_add(other.steps);
        self.seconds += other.seconds;
        self.gpu_seconds += other.gpu_seconds;
    }
}

/// The last durable checkpoint, as rank 0 reported it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// Where it is (`<checkpoint.uri>/…/ckpt_epoch_N`).
    pub uri: String,
    /// Epoch (0-based).
    pub epoch: i64,
    /// Optimiser step.
    pub step: i64,
    /// When it was saved (RFC 3339).
    pub time: String,
}

/// Latest evaluation, percent.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EvalStatus {
    /// Top-1 overall.
    pub overall: f64,
    /// Many-shot classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub many: Option<f64>,
    /// Medium-shot classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<f64>,
    /// Few-shot classes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub few: Option<f64>,
}

/// How far the run is, from rank 0's latest report.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProgressStatus {
    /// Current epoch (1-based, as users count).
    pub epoch: i64,
    /// Epochs in the run.
    pub epochs: i64,
    /// Optimiser steps taken.
    pub step: i64,
    /// Optimiser steps the whole run takes.
    pub total_steps: i64,
    /// `step` of `totalSteps`, e.g. `"37%"`.
    pub percent: String,
    /// Recent steps per second (smoothed over reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_per_second: Option<f64>,
    /// Whether rank 0 was running training steps at its last report (not
    /// starting up, evaluating or done): only then does a step clock run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<bool>,
    /// When the last reported step finished (RFC 3339).
    #[serde(
        default,
        with = "crate::timestamps",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<Time>")]
    pub last_step_time: Option<i64>,
    /// Estimated end of training at the recent rate (RFC 3339); evaluation
    /// and restarts not included.
    #[serde(
        default,
        with = "crate::timestamps",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<Time>")]
    pub eta: Option<i64>,
}

/// What the operator last saw and decided: phase and conditions, attempt
/// and restart counts, and rank 0's progress, checkpoint and evaluation.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RideTrainingStatus {
    /// The `metadata.generation` this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the training is in its lifecycle; absent until the operator
    /// first reconciles it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Conditions, one per type (Created, Running, Restarting, Suspended,
    /// Succeeded, Failed), with `metav1.Condition` semantics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Gang restarts that used the budget.
    #[serde(default)]
    pub restarts: i32,
    /// Current attempt (0-based).
    #[serde(default)]
    pub attempt: i32,
    /// Ranks of the current attempt.
    #[serde(default)]
    pub world_size: i32,
    /// How far the run is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressStatus>,
    /// The last durable checkpoint the trainer reported (a restart resumes
    /// from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,
    /// The trainer's latest evaluation (top-1 accuracies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_eval: Option<EvalStatus>,
    /// Restarts that did not use the budget (preemption, node loss, elastic resizing, spec changes).
    #[serde(default)]
    pub exempt_restarts: i32,
    /// Every gang restart (and suspension) by cause; stalls use
    /// `restartPolicy.stallBudget`.
    #[serde(default)]
    pub restarts_by_cause: RestartsByCause,
    /// Work thrown away by restarts and suspensions so far, in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_work: Option<LostWorkStatus>,
    /// The same, by cause (`application`, `infrastructure`, `preemption`,
    /// `stall`, `user`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub lost_work_by_cause: std::collections::BTreeMap<String, LostWorkStatus>,
    /// Elastic resizes so far (shrinks and grow-backs), limited by `workers.maxResizes`.
    #[serde(default)]
    pub resizes: i32,
    /// The global batch of the current gang against the recipe's, set at
    /// each resize (see `docs/distributed.md`, "Elastic resume").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<GlobalBatchStatus>,
    /// Hash of the pod-shaping part of the spec the current attempt runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// When the next attempt may start (restart backoff).
    #[serde(
        default,
        with = "crate::timestamps",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<Time>")]
    pub restart_after: Option<i64>,
    /// When the training started, or was last resumed (the deadline counts from it).
    #[serde(
        default,
        with = "crate::timestamps",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<Time>")]
    pub start_time: Option<i64>,
    /// When the current attempt started.
    #[serde(
        default,
        with = "crate::timestamps",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<Time>")]
    pub attempt_start_time: Option<i64>,
    /// When all workers of the current attempt were first seen running.
    #[serde(
        default,
        with = "crate::timestamps",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<Time>")]
    pub running_since: Option<i64>,
    /// When the latest gang restart began (a failure, preemption or resize was seen).
    #[serde(
        default,
        with = "crate::timestamps",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<Time>")]
    pub restart_time: Option<i64>,
    /// When it succeeded or failed.
    #[serde(
        default,
        with = "crate::timestamps",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<Time>")]
    pub completion_time: Option<i64>,
    /// Why the phase is what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The last spec the operator accepted, which the gang runs under: an
    /// edit it refuses (condition `SpecRejected`) leaves the gang on this
    /// one instead of unsupervised. Free-form in the schema (it is the
    /// spec's own shape), so the CRD does not carry the spec's schema twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub accepted_spec: Option<RideTrainingSpec>,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A spec problem, naming the field.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("spec.{field}: {message}")]
pub struct SpecError {
    /// Dotted path of the field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl RideTrainingSpec {
    /// Checks the schema cannot express (cross-field rules, URI schemes).
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |field: &str, message: String| {
            Err(SpecError {
                field: field.into(),
                message,
            })
        };
        // The CRD's ranges, again: objects stored before a rule existed, or
        // written past the schema, must not feed huge numbers to decisions.
        let ranges: [(&str, i64, i64, i64); 13] = [
            ("workers.replicas", self.workers.replicas.into(), 1, 4096),
            (
                "workers.minReplicas",
                self.workers.min_replicas.unwrap_or(1).into(),
                1,
                4096,
            ),
            (
                "workers.elasticTimeoutSeconds",
                self.workers.elastic_timeout_seconds,
                10,
                86_400,
            ),
            (
                "workers.terminationGracePeriodSeconds",
                self.workers.termination_grace_period_seconds,
                0,
                86_400,
            ),
            (
                "workers.maxResizes",
                self.workers.max_resizes.into(),
                0,
                1000,
            ),
            (
                "restartPolicy.budget",
                self.restart_policy.budget.into(),
                0,
                1000,
            ),
            (
                "restartPolicy.stallBudget",
                self.restart_policy.stall_budget.into(),
                0,
                1000,
            ),
            (
                "restartPolicy.backoffSeconds",
                self.restart_policy.backoff_seconds.into(),
                0,
                3600,
            ),
            (
                "restartPolicy.forceDeleteAfterSeconds",
                self.restart_policy.force_delete_after_seconds,
                0,
                86_400,
            ),
            (
                "restartPolicy.maxExemptRestarts",
                self.restart_policy.max_exempt_restarts.into(),
                0,
                100_000,
            ),
            (
                "restartPolicy.stallTimeoutSeconds",
                self.restart_policy.stall_timeout_seconds.unwrap_or(0),
                0,
                86_400,
            ),
            (
                "runPolicy.ttlSecondsAfterFinished",
                self.run_policy.ttl_seconds_after_finished.unwrap_or(0),
                0,
                i64::MAX,
            ),
            (
                "runPolicy.activeDeadlineSeconds",
                self.run_policy.active_deadline_seconds.unwrap_or(1),
                1,
                i64::MAX,
            ),
        ];
        for (field, value, lo, hi) in ranges {
            if !(lo..=hi).contains(&value) {
                let range = if hi == i64::MAX {
                    format!("at least {lo}")
                } else {
                    format!("between {lo} and {hi}")
                };
                return err(field, format!("must be {range}, not {value}"));
            }
        }
        if let Some(m) = self.workers.min_replicas {
            if m < 1 || m > self.workers.replicas {
                return err(
                    "workers.minReplicas",
                    format!(
                        "must be between 1 and workers.replicas ({})",
                        self.workers.replicas
                    ),
                );
            }
        }
        if !(0..=16).contains(&self.workers.gpus_per_worker) {
            return err("workers.gpusPerWorker", "must be between 0 and 16".into());
        }
        match CheckpointUri::parse(&self.checkpoint.uri) {
            Err(e) => return err("checkpoint.uri", e.to_string()),
            // The trainer takes a plain path as a local directory, but
            // workers on different nodes would each write their own.
            Ok(uri) if uri.is_plain_path() => {
                return err(
                    "checkpoint.uri",
                    format!(
                        "'{uri}' must be a {} URI: the workers share no local directory",
                        Scheme::accepted_prefixes()
                    ),
                )
            }
            Ok(_) => {}
        }
        if let Err(e) = ride_contract::parse_duration(self.checkpoint.every_or_default()) {
            return err("checkpoint.every", e);
        }
        for key in self.trainer.overrides.keys() {
            if key.is_empty() || key.contains(char::is_whitespace) {
                return err("trainer.overrides", format!("'{key}' is not a config key"));
            }
        }
        if let Some(t) = &self.workers.template {
            self.validate_template(t)?;
        }
        Ok(())
    }

    /// A template may add to the pods but not replace what the operator sets.
    fn validate_template(&self, t: &WorkerTemplate) -> Result<(), SpecError> {
        use crate::reserved::{
            reserved_env, RESERVED_MOUNT_PATHS, RESERVED_VOLUMES, TRAINER_CONTAINER,
        };
        let err = |field: String, message: String| Err(SpecError { field, message });
        for (i, e) in t.env.iter().enumerate() {
            if reserved_env(&e.name) {
                return err(
                    format!("workers.template.env[{i}].name"),
                    format!("{} is set by the operator (the process contract or the checkpoint credentials)", e.name),
                );
            }
        }
        let volumes = t.volume_list()?;
        for (i, v) in volumes.iter().enumerate() {
            if v.name.is_empty() {
                return err(
                    format!("workers.template.volumes[{i}].name"),
                    "is required".into(),
                );
            }
            if RESERVED_VOLUMES.contains(&v.name.as_str()) {
                return err(
                    format!("workers.template.volumes[{i}].name"),
                    format!(
                        "'{}' is one of the operator's volumes ({})",
                        v.name,
                        RESERVED_VOLUMES.join(", ")
                    ),
                );
            }
        }
        let dataset = self.dataset.as_ref().map(|d| d.path.as_str());
        for (i, m) in t.volume_mounts.iter().enumerate() {
            let path = m.mount_path.trim_end_matches('/');
            if RESERVED_MOUNT_PATHS.contains(&path)
                || Some(path) == dataset.map(|d| d.trim_end_matches('/'))
            {
                return err(
                    format!("workers.template.volumeMounts[{i}].mountPath"),
                    format!("{} is mounted by the operator", m.mount_path),
                );
            }
            let known = volumes.iter().any(|v| v.name == m.name);
            if !known {
                return err(
                    format!("workers.template.volumeMounts[{i}].name"),
                    format!("no volume '{}' in workers.template.volumes", m.name),
                );
            }
        }
        for (i, c) in t.sidecar_containers()?.iter().enumerate() {
            if c.name.is_empty() {
                return err(
                    format!("workers.template.sidecars[{i}].name"),
                    "is required".into(),
                );
            }
            if c.name == TRAINER_CONTAINER {
                return err(
                    format!("workers.template.sidecars[{i}].name"),
                    format!("'{TRAINER_CONTAINER}' is the trainer container's name"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_uri(uri: &str) -> RideTrainingSpec {
        let rt: RideTraining = serde_norway::from_str(
            &std::fs::read_to_string(crate::repo_file("examples/ride-cpu.yaml")).unwrap(),
        )
        .unwrap();
        let mut spec = rt.spec;
        spec.checkpoint.uri = uri.into();
        spec
    }

    #[test]
    fn checkpoint_uris_of_every_trainer_scheme_pass_the_pattern_and_validation() {
        let pattern = regex::Regex::new(&checkpoint_uri_pattern()).unwrap();
        for uri in [
            "s3://b/run",
            "s3a://b/run",
            "gs://b/run",
            "az://c/run",
            "azure://c/run",
            "abfs://c/run",
            "abfss://c@account.dfs.core.windows.net/run",
            "file:///shared/run",
        ] {
            assert!(pattern.is_match(uri), "{uri}");
            assert_eq!(spec_with_uri(uri).validate(), Ok(()), "{uri}");
        }
        // A plain path is a directory the workers do not share; an unknown
        // scheme or a missing bucket no trainer can open.
        for uri in ["output/run", "/data/run", "ftp://host/run"] {
            assert!(!pattern.is_match(uri), "{uri}");
            let e = spec_with_uri(uri).validate().unwrap_err();
            assert_eq!(e.field, "checkpoint.uri", "{uri}");
        }
        // Schemes are case-insensitive to the trainer; the API server wants
        // them as the trainer's messages write them.
        assert!(!pattern.is_match("S3://b/run"));
        let e = spec_with_uri("/data/run").validate().unwrap_err();
        assert!(e.message.contains("share no local directory"), "{e}");
        let e = spec_with_uri("s3:///run").validate().unwrap_err();
        assert_eq!(e.field, "checkpoint.uri");
        assert!(e.message.contains("names no bucket"), "{e}");
    }

    #[test]
    fn checkpoint_intervals_are_durations_or_zero_and_default_to_30m() {
        let mut spec = spec_with_uri("s3://b/run");
        assert_eq!(spec.checkpoint.every_or_default(), "30m");
        let pods = crate::pods::trainer_args(&RideTraining::new("x", spec.clone()));
        let at = pods.iter().position(|a| a == "--checkpoint-every").unwrap();
        assert_eq!(pods[at + 1], "30m");
        let pattern = regex::Regex::new(r"^(0|([0-9]+(ms|s|m|h))+)$").unwrap();
        for ok in ["0", "45s", "1h30m", "500ms"] {
            assert!(pattern.is_match(ok), "{ok}");
            spec.checkpoint.every = Some(ok.into());
            assert_eq!(spec.validate(), Ok(()), "{ok}");
        }
        for bad in ["30", "1.5h", "1d", "99999999999999999999h"] {
            spec.checkpoint.every = Some(bad.into());
            let e = spec.validate().unwrap_err();
            assert_eq!(e.field, "checkpoint.every", "{bad}");
        }
    }
}

/// Per-rank batch x ranks x accumulation steps of a resized gang.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GlobalBatchStatus {
    /// Ranks (workers x GPUs per worker).
    pub ranks: i64,
    /// Gradient accumulation steps the trainer runs with.
    pub accumulation_steps: i64,
    /// Whether the recipe's global batch (and so its LR) is kept.
    pub kept: bool,
    /// `DATA.BATCH_SIZE` when the overrides set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_rank_batch: Option<i64>,
    /// Images per optimiser step now (when the per-rank batch is known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<i64>,
    /// Images per optimiser step in the recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_images: Option<i64>,
}
