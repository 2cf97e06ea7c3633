//! `RideTraining` types. The CRD YAML in `crds/` is generated from them
//! (`ride crd`); a test fails when the file drifts.

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements, Toleration, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
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
    /// Placement.
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
    /// `s3://`, `gs://`, `az://` or `file://` URI.
    #[schemars(length(min = 1), regex(pattern = r"^(s3|gs|az|file)://.+"))]
    pub uri: String,
    /// Secret whose keys become the worker's environment (`AWS_ACCESS_KEY_ID`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
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
    /// What to do.
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
    /// Rules by exit code; the first match wins, otherwise `Restart`.
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
    /// Priority class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Lifecycle phase.
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
    /// Finished.
    Succeeded,
    /// Gave up.
    Failed,
}

impl Phase {
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

/// Last checkpoint, read from the `latest` manifest.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// Checkpoint URI.
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

/// Observed state.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RideTrainingStatus {
    /// Phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Conditions (Created, Running, Restarting, Suspended, Succeeded, Failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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
    /// Last checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,
    /// Latest evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_eval: Option<EvalStatus>,
    /// Restarts that did not use the budget (preemption, node loss, elastic resizing, spec changes).
    #[serde(default)]
    pub exempt_restarts: i32,
    /// Hash of the spec the current attempt runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// Unix time the next attempt may start (restart backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_after: Option<i64>,
    /// Unix time the training started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    /// Unix time the current attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_start_time: Option<i64>,
    /// Unix time all workers of the current attempt were first seen running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since: Option<i64>,
    /// Unix time the latest gang restart began (a failure, preemption or resize was seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_time: Option<i64>,
    /// Unix time it succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<i64>,
    /// Why the phase is what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
        if self.workers.replicas < 1 {
            return err("workers.replicas", "must be at least 1".into());
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
        let scheme = self.checkpoint.uri.split("://").next().unwrap_or("");
        if !self.checkpoint.uri.contains("://") || !["s3", "gs", "az", "file"].contains(&scheme) {
            return err(
                "checkpoint.uri",
                format!(
                    "'{}' must be an s3://, gs://, az:// or file:// URI",
                    self.checkpoint.uri
                ),
            );
        }
        if self.restart_policy.budget < 0 {
            return err("restartPolicy.budget", "must not be negative".into());
        }
        for key in self.trainer.overrides.keys() {
            if key.is_empty() || key.contains(char::is_whitespace) {
                return err("trainer.overrides", format!("'{key}' is not a config key"));
            }
        }
        Ok(())
    }
}
