//! The controller: watches RideTrainings and the Pods and Services they own,
//! and for each one observes, asks [`crate::lifecycle::decide`] what to do,
//! writes the status and does it (`act`). All decisions live in
//! `lifecycle`; this module is the I/O around them.
//!
//! Reconciles read the watch caches, not the API server: the training as
//! the controller's store holds it, its pods and Service from reflector
//! stores filled by the very watches that trigger reconciles, nodes from a
//! node cache. Two rules make decisions on caches safe:
//!
//! - **Expectations** ([`crate::expectations`]): a training whose caches do
//!   not yet show the operator's own last creates, deletes and status write
//!   is not decided until they do (their watch events trigger the
//!   reconcile); expectations unmet for a minute mean a watch lost events,
//!   and the API server is read that once.
//! - **The decision is recorded first**, conditionally: the new status is
//!   written carrying the resourceVersion the decision was made on (when
//!   the status does not change but pods are to be created or deleted, an
//!   empty patch carrying it), and only then are pods deleted and created,
//!   Events sent and metrics counted. A training changed since (a newer
//!   status not yet in the cache, a tenant's edit) fails the write with
//!   409 Conflict, nothing is done and it is reconciled again in a second.
//!   A crash after the write leaves a status that the next reconcile
//!   completes (its actions are idempotent), so a restart is never counted
//!   twice nor a verdict lost.
//!
//! Nothing is polled: a training is reconciled when a watch shows a change,
//! when a progress poll of its rank 0 brings a new report, and at the
//! earliest time the decision says something falls due.
//!
//! Progress comes from the trainer's rank 0, never from its storage: its
//! `/progress` endpoint, polled in the background (a slow pod never holds
//! up a reconcile), and its termination message when it ends.

use crate::crd::{
    phase_labels, GangScheduler, Phase, RideTraining, RideTrainingStatus, PENDING_LABEL,
};
use crate::expectations::{CachedPod, Expectations, Verdict};
use crate::lifecycle::{decide, Action, Observed};
use crate::metrics::OperatorMetrics;
use crate::observe::{apply_progress, observe_pod, pod_ip};
use crate::pod_index::PodIndex;
use crate::pod_policy::PodPolicy;
use crate::pods::{service_name, LABEL_ATTEMPT, LABEL_RANK, LABEL_TRAINING, METRICS_PORT};
use crate::report::{ReportClock, ReportError};
use futures::FutureExt;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use ride_contract::Progress;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod act;

/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "ride-operator";

/// Why a reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no namespace or name.
    #[error("RideTraining without {0}")]
    Incomplete(&'static str),
    /// The reconcile panicked: a bug, confined to this training.
    #[error("the operator hit a bug reconciling this training (it panicked: {0}); other trainings are not affected, and this one is retried with backoff")]
    Panicked(String),
    /// The reconcile ran past its deadline (an API server that stopped
    /// answering); it is retried.
    #[error("the reconcile did not finish within {0:?} (is the API server answering?)")]
    Deadline(Duration),
    /// An object the training needs exists under its name but belongs to
    /// something else; the operator does not take it over.
    #[error("{0}")]
    NotOurs(String),
    /// A worker pod could not be turned into the JSON applied (a bug).
    #[error("building a worker pod's manifest: {0}")]
    Manifest(#[from] serde_json::Error),
}

/// Whether `obj` is controlled by the object with `uid`.
fn controlled_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// The refusal for `kind` `name` that exists but is not this training's.
fn not_ours(kind: &str, name: &str, meta: &kube::api::ObjectMeta) -> String {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("controlled by {} {}", o.kind, o.name))
        .unwrap_or_else(|| "not controlled by this training".into());
    format!("{kind} {name} already exists and is {owner}; the operator does not take it over: delete it or rename the training")
}

/// How long a progress request to a trainer may take.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(2);

/// The latest report fetched from a training's rank 0: accepted by
/// [`crate::report::validate`], or why it was refused.
#[derive(Clone)]
struct PolledProgress {
    attempt: i32,
    report: Result<Progress, ReportError>,
}

impl PolledProgress {
    /// Whether `other` says nothing new (a refusal always is news).
    fn same_as(&self, other: &PolledProgress) -> bool {
        self.attempt == other.attempt
            && matches!((&self.report, &other.report), (Ok(a), Ok(b)) if a == b)
    }
}

/// The condition saying the operator hit a bug on this training (a
/// reconcile panicked); False again after the next reconcile that succeeds.
pub const OPERATOR_ERROR_CONDITION: &str = "OperatorError";
/// The condition (and Event reason) of an edit the operator refused while
/// the gang runs on the last accepted spec.
pub const SPEC_REJECTED_CONDITION: &str = "SpecRejected";

/// What the reconciler shares between calls. Everything kept per training
/// is keyed by its uid, never its name: a training deleted and created
/// again under the same name starts with nothing of its predecessor's, and
/// entries of trainings gone from the watch cache are swept
/// ([`Context::sweep`]).
pub struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Arc<OperatorMetrics>,
    progress_interval: Duration,
    last_progress_read: Mutex<HashMap<String, Instant>>,
    /// Reports by training uid, filled by background polls.
    progress: Arc<Mutex<HashMap<String, PolledProgress>>>,
    /// Trainings (uids) whose poll is in flight.
    polling: Arc<Mutex<HashSet<String>>>,
    /// Refused polled reports not yet told in an Event, by training uid.
    refused_polls: Arc<Mutex<HashMap<String, ReportError>>>,
    /// Pods (uids) whose refused termination message was already counted
    /// and told, by training uid.
    refused_final: Mutex<HashMap<String, HashSet<String>>>,
    /// Consecutive failed reconciles by training uid (retry backoff).
    failures: Mutex<HashMap<String, u32>>,
    /// Why the last pod creation failed, by training uid, shown in
    /// status until a creation succeeds.
    create_failures: Mutex<HashMap<String, String>>,
    /// Reconciles in flight by `namespace/name`, and since when (health).
    in_flight: Mutex<HashMap<String, Instant>>,
    /// What the pods made for a tenant may carry (an administrator's
    /// setting, never a tenant's).
    pod_policy: PodPolicy,
    /// The pod, Service and node caches reconciles read.
    caches: Caches,
    /// Their writers, taken by [`run`] (one run per context).
    writers: Mutex<Option<CacheWriters>>,
    /// Whether the node cache has been filled (until then, and when nodes
    /// may not be read, no node counts as lost).
    nodes_synced: Arc<AtomicBool>,
    /// Whether the pod and Service caches have been filled: until then no
    /// training is decided (an empty pod cache would look like a gang that
    /// lost every worker).
    owned_synced: Arc<AtomicBool>,
    /// What this operator did that its caches may not show yet.
    expectations: Mutex<Expectations>,
    /// Trainings whose progress poll brought a new report: reconciled
    /// through `reconcile_on`.
    polled_tx: futures::channel::mpsc::UnboundedSender<ObjectRef<RideTraining>>,
    polled_rx: Mutex<Option<futures::channel::mpsc::UnboundedReceiver<ObjectRef<RideTraining>>>>,
}

/// The caches the reconciler reads instead of the API server.
#[derive(Clone)]
struct Caches {
    pods: Store<Pod>,
    /// The pods of each training, fed the pod watch's events before `pods`.
    pod_index: Arc<Mutex<PodIndex>>,
    services: Store<Service>,
    nodes: Store<Node>,
}

/// What fills [`Caches`]: the watches in [`run`].
struct CacheWriters {
    pods: Writer<Pod>,
    services: Writer<Service>,
    nodes: Writer<Node>,
}

/// How soon a training reconciled while the caches still fill (just after
/// start) is looked at again.
pub const CACHE_FILL_RECHECK: Duration = Duration::from_secs(1);

/// How soon a training whose caches do not yet show our own last actions
/// is looked at again if no watch event comes first (one normally does).
pub const EXPECTATION_RECHECK: Duration = Duration::from_secs(5);

impl Context {
    /// A context whose events name `instance` as the reporting instance and
    /// which polls progress at most every `progress_interval` and holds
    /// tenants' pods to `pod_policy`.
    pub fn new(
        client: Client,
        metrics: Arc<OperatorMetrics>,
        instance: &str,
        progress_interval: Duration,
        pod_policy: PodPolicy,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance.into()),
        };
        let (pods, pods_writer) = reflector::store();
        let (services, services_writer) = reflector::store();
        let (nodes, nodes_writer) = reflector::store();
        let (polled_tx, polled_rx) = futures::channel::mpsc::unbounded();
        Arc::new(Self {
            caches: Caches {
                pods,
                pod_index: Arc::new(Mutex::new(PodIndex::new(LABEL_TRAINING))),
                services,
                nodes,
            },
            writers: Mutex::new(Some(CacheWriters {
                pods: pods_writer,
                services: services_writer,
                nodes: nodes_writer,
            })),
            nodes_synced: Arc::new(AtomicBool::new(false)),
            owned_synced: Arc::new(AtomicBool::new(false)),
            expectations: Mutex::new(Expectations::default()),
            polled_tx,
            polled_rx: Mutex::new(Some(polled_rx)),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            progress_interval,
            last_progress_read: Mutex::new(HashMap::new()),
            progress: Arc::new(Mutex::new(HashMap::new())),
            polling: Arc::new(Mutex::new(HashSet::new())),
            refused_polls: Arc::new(Mutex::new(HashMap::new())),
            refused_final: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            create_failures: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            pod_policy,
        })
    }

    /// Fetch rank 0's report in the background unless a fetch is in flight;
    /// it is judged as it arrives, against the training's creation time
    /// `created` (Unix seconds).
    fn poll_progress(
        &self,
        key: String,
        training: ObjectRef<RideTraining>,
        attempt: i32,
        ip: std::net::IpAddr,
        created: f64,
    ) {
        if !lock(&self.polling).insert(key.clone()) {
            return;
        }
        let (cache, polling) = (Arc::clone(&self.progress), Arc::clone(&self.polling));
        let refused = Arc::clone(&self.refused_polls);
        let metrics = Arc::clone(&self.metrics);
        let reconcile = self.polled_tx.clone();
        tokio::spawn(async move {
            match crate::progress::fetch(ip, METRICS_PORT as u16, PROGRESS_TIMEOUT).await {
                Ok(raw) => {
                    let clock = ReportClock {
                        now: ride_contract::unix_now(),
                        created,
                    };
                    let report = crate::report::validate(raw, clock);
                    if let Err(e) = &report {
                        metrics
                            .reports_refused
                            .with_label_values(&["progress"])
                            .inc();
                        tracing::warn!(%training, error = %e, "refused rank 0's progress report");
                        lock(&refused).insert(key.clone(), e.clone());
                    }
                    let new = PolledProgress { attempt, report };
                    let changed = lock(&cache)
                        .insert(key.clone(), new.clone())
                        .is_none_or(|old| !old.same_as(&new));
                    // Only news is worth a reconcile (and a status write).
                    if changed {
                        let _ = reconcile.unbounded_send(training.clone());
                    }
                }
                Err(e) => tracing::debug!(%training, error = %e, "no progress report"),
            }
            lock(&polling).remove(&key);
        });
    }

    /// The last report fetched for `key`, if any.
    fn polled(&self, key: &str) -> Option<PolledProgress> {
        lock(&self.progress).get(key).cloned()
    }

    /// Forget a training (by uid) that is gone or finished.
    fn forget(&self, key: &str) {
        lock(&self.progress).remove(key);
        lock(&self.last_progress_read).remove(key);
        lock(&self.create_failures).remove(key);
        lock(&self.failures).remove(key);
        lock(&self.refused_polls).remove(key);
        lock(&self.refused_final).remove(key);
        lock(&self.expectations).forget(key);
    }

    /// Drop what is kept for trainings not among `live` (the uids in the
    /// watch cache): kube-runtime runs no reconcile for an object that left
    /// its cache, so without this entries would pile up with churn.
    pub fn sweep(&self, live: &HashSet<String>) {
        lock(&self.progress).retain(|k, _| live.contains(k));
        lock(&self.last_progress_read).retain(|k, _| live.contains(k));
        lock(&self.create_failures).retain(|k, _| live.contains(k));
        lock(&self.failures).retain(|k, _| live.contains(k));
        lock(&self.refused_polls).retain(|k, _| live.contains(k));
        lock(&self.refused_final).retain(|k, _| live.contains(k));
        lock(&self.expectations).retain(live);
    }

    /// How many trainings some per-training state is kept for (a test's
    /// window on [`Context::sweep`]).
    pub fn tracked(&self) -> usize {
        let mut all: HashSet<String> = HashSet::new();
        all.extend(lock(&self.progress).keys().cloned());
        all.extend(lock(&self.last_progress_read).keys().cloned());
        all.extend(lock(&self.create_failures).keys().cloned());
        all.extend(lock(&self.failures).keys().cloned());
        all.extend(lock(&self.refused_polls).keys().cloned());
        all.extend(lock(&self.refused_final).keys().cloned());
        all.extend(lock(&self.expectations).keys().cloned());
        all.len()
    }

    /// Whether the refusal of pod `pod`'s termination message is new (and
    /// remember it, so each refused message is counted and told once).
    fn first_refusal(&self, key: &str, pod: &str) -> bool {
        lock(&self.refused_final)
            .entry(key.to_string())
            .or_default()
            .insert(pod.to_string())
    }

    /// Whether a progress poll of `key` is due now (it is then marked
    /// done), or else how long until it is.
    fn progress_due(&self, key: &str) -> Result<(), Duration> {
        let mut map = lock(&self.last_progress_read);
        let since = map.get(key).map(Instant::elapsed);
        match since {
            Some(t) if t < self.progress_interval => Err(self.progress_interval - t),
            _ => {
                map.insert(key.to_string(), Instant::now());
                Ok(())
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The earlier of two looks again (seconds; `None`: none due).
fn sooner(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A JSON merge patch turning `old` into `new` (RFC 7386): removed keys become null.
pub fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = serde_json::Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) if ov == nv => {}
                    Some(ov) => {
                        out.insert(k.clone(), merge_patch(ov, nv));
                    }
                    None => {
                        out.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys() {
                if !n.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        _ => new.clone(),
    }
}

/// Reconcile one RideTraining. A panic anywhere in it (a bug, whatever
/// input caused it) becomes an error of this training alone: it is
/// counted, the training gets the [`OPERATOR_ERROR_CONDITION`] and an
/// Event, and is retried with backoff, while kube-runtime never sees the
/// panic (it would re-raise it and end the operator for every namespace).
pub async fn reconcile(
    cached: Arc<RideTraining>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    let timer = ctx.metrics.reconcile_duration.start_timer();
    let key = format!(
        "{}/{}",
        cached.namespace().unwrap_or_default(),
        cached.name_any()
    );
    lock(&ctx.in_flight).insert(key.clone(), Instant::now());
    let bounded = tokio::time::timeout(RECONCILE_DEADLINE, reconcile_inner(&cached, &ctx));
    let result = match contained(bounded).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => {
            tracing::warn!(training = %key, deadline = ?RECONCILE_DEADLINE, "reconcile ran past its deadline; retrying");
            Err(ReconcileError::Deadline(RECONCILE_DEADLINE))
        }
        Err(why) => {
            ctx.metrics.reconcile_panics.inc();
            tracing::error!(training = %key, panic = %why, "reconcile panicked; only this training is affected");
            let error = ReconcileError::Panicked(why);
            report_operator_error(&ctx, &cached, &error.to_string()).await;
            Err(error)
        }
    };
    lock(&ctx.in_flight).remove(&key);
    timer.observe_duration();
    match result {
        // Someone wrote the training between our read and our conditional
        // status write: nothing failed, the next reconcile reads theirs.
        Err(e) if is_write_conflict(&e) => {
            tracing::debug!(training = %key, "status write lost a race (409 Conflict); reconciling again");
            Ok(Requeue::requeue(CONFLICT_RETRY))
        }
        other => other,
    }
}

/// Seconds between looks at a predecessor's same-named pod that is going away.
const PREDECESSOR_POLL: i64 = 2;

/// How soon a reconcile whose conditional write lost a race runs again.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(1);

/// A write refused because the object changed since it was read (HTTP 409
/// with reason `Conflict`; `AlreadyExists` is a 409 too, and is not this).
pub fn is_write_conflict(e: &ReconcileError) -> bool {
    matches!(e, ReconcileError::Kube(kube::Error::Api(s)) if s.code == 409 && s.reason == "Conflict")
}

/// Run `work`, turning a panic in it into an error saying what it said.
/// Nothing `work` borrows is used after a panic but to report it, so the
/// unwind-safety assertion holds.
pub async fn contained<F: std::future::Future>(work: F) -> Result<F::Output, String> {
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|panic| panic_message(panic.as_ref()))
}

/// What a panic said (its `&str` or `String` payload), shortened.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    crate::report::shorten(&text, 512)
}

/// Say on the training itself that the operator failed on it: an Event
/// and the [`OPERATOR_ERROR_CONDITION`]. Best effort: this runs after a
/// panic, and whatever fails here is only logged.
async fn report_operator_error(ctx: &Context, cached: &RideTraining, message: &str) {
    let reference = cached.object_ref(&());
    publish(ctx, &reference, "OperatorError", message, true).await;
    let Some(ns) = cached.namespace() else { return };
    let rts: Api<RideTraining> = Api::namespaced(ctx.client.clone(), &ns);
    let written = async {
        let now = rts.get(&cached.name_any()).await?;
        let old = now.status.clone().unwrap_or_default();
        let mut marked = old.clone();
        crate::lifecycle::set_side_condition(
            &mut marked.conditions,
            OPERATOR_ERROR_CONDITION,
            true,
            "ReconcilePanicked",
            message,
            unix_now(),
            now.metadata.generation,
        );
        write_status(&rts, &now, &old, &marked, false).await
    };
    if let Err(e) = written.await {
        tracing::warn!(error = %e, "cannot record the operator error in status");
    }
}

async fn reconcile_inner(cached: &RideTraining, ctx: &Context) -> Result<Requeue, ReconcileError> {
    let ns = cached
        .namespace()
        .ok_or(ReconcileError::Incomplete("a namespace"))?;
    let name = cached
        .meta()
        .name
        .clone()
        .ok_or(ReconcileError::Incomplete("a name"))?;
    let rts: Api<RideTraining> = Api::namespaced(ctx.client.clone(), &ns);
    // Per-training state is keyed by uid (see `Context`).
    let key = cached.metadata.uid.clone().unwrap_or_default();
    if cached.metadata.deletion_timestamp.is_some() {
        // Owner references take the pods and the Service with it: nothing
        // to decide, observe or write.
        ctx.forget(&key);
        return Ok(Requeue::await_change());
    }
    if !ctx.owned_synced.load(Ordering::Acquire) {
        tracing::debug!(training = %name, namespace = %ns, "the pod and Service caches are still filling; waiting");
        return Ok(Requeue::requeue(CACHE_FILL_RECHECK));
    }
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let svc_api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let labelled = |p: &Pod| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && p.labels().get(LABEL_TRAINING) == Some(&name)
    };
    // By the index: scanning the whole cache per reconcile cost most of the
    // operator's CPU at thousands of trainings.
    let names = lock(&ctx.caches.pod_index).pods_of(&ns, &name);
    let cached_pods: Vec<Arc<Pod>> = names
        .iter()
        .filter_map(|pod| ctx.caches.pods.get(&ObjectRef::new(pod).within(&ns)))
        .filter(|p| labelled(p))
        .collect();
    let verdict = lock(&ctx.expectations).check(
        &key,
        cached.metadata.resource_version.as_deref(),
        cached_pods
            .iter()
            .filter(|p| p.owner_references().iter().any(|o| o.uid == key))
            .filter_map(|p| {
                Some(CachedPod {
                    uid: p.metadata.uid.as_deref()?,
                    deleting: p.metadata.deletion_timestamp.is_some(),
                })
            }),
        Instant::now(),
    );
    let (rt, pods, service): (RideTraining, Vec<Arc<Pod>>, Option<Arc<Service>>) = match verdict {
        Verdict::Met => {
            let service = ctx
                .caches
                .services
                .get(&ObjectRef::new(&service_name(cached)).within(&ns));
            ((*cached).clone(), cached_pods, service)
        }
        Verdict::Waiting { what } => {
            tracing::debug!(training = %name, namespace = %ns, %what, "the caches do not yet show our last actions; waiting for their watch events");
            return Ok(Requeue::requeue(EXPECTATION_RECHECK));
        }
        Verdict::Expired { what } => {
            // A watch lost events: decide this once on the API server's word.
            tracing::warn!(training = %name, namespace = %ns, %what, "the caches never showed our last actions; reading the API server");
            let rt = match rts.get(&name).await {
                Ok(rt) => rt,
                Err(e) if is_not_found(&e) => {
                    ctx.forget(&key);
                    return Ok(Requeue::await_change());
                }
                Err(e) => return Err(e.into()),
            };
            if rt.metadata.uid.as_deref() != Some(key.as_str()) {
                // Deleted and created again: the new object's own event
                // reconciles it.
                ctx.forget(&key);
                return Ok(Requeue::await_change());
            }
            let pods = pods_api
                .list(&ListParams::default().labels(&format!("{LABEL_TRAINING}={name}")))
                .await?
                .items
                .into_iter()
                .map(Arc::new)
                .collect();
            let service = svc_api.get_opt(&service_name(&rt)).await?.map(Arc::new);
            (rt, pods, service)
        }
    };
    let old_status = rt.status.clone().unwrap_or_default();
    let now = unix_now();
    // What the API server's schema cannot check (cross-field rules, this
    // operator's policy); `decide` fails the training on it.
    let mut invalid_spec = rt
        .spec
        .validate()
        .and_then(|()| ctx.pod_policy.check(&rt.spec))
        .err()
        .map(|e| e.to_string());
    // An edit refused after a spec was accepted leaves the gang on the
    // accepted one (decisions and pods alike), supervised, with a
    // condition saying why; only a spec never accepted fails the training.
    let mut rt = rt;
    // Status is not the tenant's to write, but whoever can write it must not
    // get past the checks either: the accepted spec is checked again.
    let still_valid = |spec: &crate::crd::RideTrainingSpec| {
        spec.validate()
            .and_then(|()| ctx.pod_policy.check(spec))
            .is_ok()
    };
    let rejected = match &old_status.accepted_spec {
        Some(accepted) if invalid_spec.is_some() && still_valid(accepted) => {
            rt.spec = accepted.clone();
            invalid_spec.take()
        }
        _ => None,
    };

    let uid = rt.metadata.uid.clone().unwrap_or_default();
    // Only pods this very object owns: a recreated RideTraining of the same
    // name must not adopt its predecessor's pods.
    let owned: Vec<&Pod> = pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| p.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    let nodes_synced = ctx.nodes_synced.load(Ordering::Acquire);
    let observed_pods = owned
        .iter()
        .filter_map(|p| {
            let mut seen = observe_pod(p)?;
            if let Some(node) = crate::observe::node_name(p) {
                let cached = ctx.caches.nodes.get(&ObjectRef::new(node));
                seen.node_lost = crate::nodes::node_lost(node, cached.as_deref(), nodes_synced);
            }
            Some(seen)
        })
        .collect();
    // A same-named Service that is not this training's counts as missing,
    // so the attempt to ensure ours says whose it is.
    let service_exists = service
        .as_ref()
        .is_some_and(|s| controlled_by(&s.metadata, &uid));
    let queued = match crate::queue::gated_group(owned.iter().copied(), old_status.attempt) {
        Some(gated) => {
            let workload = kueue_workload(&ctx.client, &ns, &gated.group).await;
            Some(crate::queue::queued_message(&gated, workload.as_ref()))
        }
        None => None,
    };
    let observed = Observed {
        now,
        pods: observed_pods,
        service_exists,
        invalid_spec,
        generation: rt.metadata.generation,
        queued,
    };
    let decision = decide(&rt.spec, &old_status, &observed);
    let mut status = decision.status;
    // This reconcile got this far: a bug reported by an earlier one is over.
    if status
        .conditions
        .iter()
        .any(|c| c.type_ == OPERATOR_ERROR_CONDITION && c.status == "True")
    {
        crate::lifecycle::set_side_condition(
            &mut status.conditions,
            OPERATOR_ERROR_CONDITION,
            false,
            "Reconciled",
            "the last reconcile succeeded",
            now,
            rt.metadata.generation,
        );
    }
    let finished = matches!(status.phase, Some(Phase::Succeeded | Phase::Failed));
    // No periodic look: decide's timers, and the next progress poll while
    // rank 0 runs.
    let mut requeue: Option<i64> = None;

    // Progress: the last background poll of rank 0, then the final reports
    // that ended ranks 0 left in their termination messages. (An invalid
    // spec's status says only why it is invalid.)
    let label = |p: &Pod, l: &str| -> Option<i32> { p.labels().get(l)?.parse().ok() };
    let mut rank0: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| label(p, LABEL_RANK) == Some(0))
        .collect();
    rank0.sort_by_key(|p| label(p, LABEL_ATTEMPT));
    let created = rt
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0.as_second()) as f64;
    let reference = rt.object_ref(&());
    // (reason, note): separate reasons, since the event recorder folds
    // events of one reason into a series that keeps the first note.
    let mut refusals: Vec<(&str, String)> = Vec::new();
    let was_rejected = old_status
        .conditions
        .iter()
        .find(|c| c.type_ == SPEC_REJECTED_CONDITION && c.status == "True");
    match &rejected {
        Some(why) => {
            let message = format!(
                "the edit (generation {}) was refused; the gang runs on the last accepted spec until the spec is fixed: {why}",
                rt.metadata.generation.unwrap_or_default()
            );
            if was_rejected.is_none_or(|c| c.message != message) {
                refusals.push((SPEC_REJECTED_CONDITION, message.clone()));
            }
            crate::lifecycle::set_side_condition(
                &mut status.conditions,
                SPEC_REJECTED_CONDITION,
                true,
                "InvalidEdit",
                &message,
                now,
                rt.metadata.generation,
            );
        }
        None if observed.invalid_spec.is_none() => {
            status.accepted_spec = Some(rt.spec.clone());
            if was_rejected.is_some() {
                crate::lifecycle::set_side_condition(
                    &mut status.conditions,
                    SPEC_REJECTED_CONDITION,
                    false,
                    "Accepted",
                    "the current spec is accepted",
                    now,
                    rt.metadata.generation,
                );
            }
        }
        None => {}
    }
    if observed.invalid_spec.is_none() {
        if let Some(e) = lock(&ctx.refused_polls).remove(&key) {
            refusals.push((
                "ProgressReportRefused",
                format!("rank 0's progress report was refused and not used: {e}"),
            ));
        }
        if let Some(PolledProgress {
            attempt,
            report: Ok(report),
        }) = ctx.polled(&key)
        {
            if attempt <= status.attempt {
                apply_progress(&mut status, &report);
                if attempt == status.attempt {
                    crate::observe::update_run_progress(&mut status, &report, now);
                }
            }
        }
        let clock = ReportClock {
            now: ride_contract::unix_now(),
            created,
        };
        for p in &rank0 {
            let raw = match crate::observe::final_report(p) {
                Ok(Some(report)) => report,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(pod = %p.name_any(), error = %e, "rank 0's final report does not parse as the contract's Progress: are the operator and trainer versions apart? Ignoring it");
                    continue;
                }
            };
            let report = match crate::report::validate(raw, clock) {
                Ok(report) => report,
                Err(e) => {
                    let pod_uid = p.metadata.uid.clone().unwrap_or_else(|| p.name_any());
                    if ctx.first_refusal(&key, &pod_uid) {
                        ctx.metrics
                            .reports_refused
                            .with_label_values(&["termination"])
                            .inc();
                        tracing::warn!(pod = %p.name_any(), error = %e, "refused rank 0's final report");
                        refusals.push((
                            "FinalReportRefused",
                            format!(
                                "the final report in {}'s termination message was refused and not used: {e}",
                                p.name_any()
                            ),
                        ));
                    }
                    continue;
                }
            };
            {
                apply_progress(&mut status, &report);
                if label(p, LABEL_ATTEMPT) == Some(status.attempt) {
                    crate::observe::update_run_progress(&mut status, &report, now);
                }
            }
        }
    }
    let live_rank0 = rank0.iter().rev().find(|p| {
        label(p, LABEL_ATTEMPT) == Some(status.attempt) && p.metadata.deletion_timestamp.is_none()
    });
    if let (false, Some(ip)) = (finished, live_rank0.and_then(|p| pod_ip(p))) {
        let next = match ctx.progress_due(&key) {
            Ok(()) => {
                // Its answer, when it brings news, triggers the reconcile.
                ctx.poll_progress(
                    key.clone(),
                    ObjectRef::from_obj(&rt),
                    status.attempt,
                    ip,
                    created,
                );
                ctx.progress_interval
            }
            Err(left) => left,
        };
        let next = next.as_secs_f64().ceil() as i64;
        requeue = sooner(requeue, Some(next));
    }
    if finished {
        ctx.forget(&key);
    }
    // Pods still to create and the last try failed: keep saying why.
    let creating = decision
        .actions
        .iter()
        .any(|a| matches!(a, Action::CreatePod { .. }));
    let failed_create = lock(&ctx.create_failures).get(&key).cloned();
    match (failed_create, status.phase) {
        (Some(why), Some(phase)) if creating && !finished => {
            let reason = status
                .reason
                .clone()
                .unwrap_or_else(|| phase.as_str().into());
            crate::lifecycle::set_conditions(
                &mut status.conditions,
                phase,
                &reason,
                &why,
                now,
                rt.metadata.generation,
            );
            status.message = Some(why);
        }
        _ => {}
    }

    // Record the decision before acting on it; when pods are to be touched,
    // the write is made (empty if need be) so that it fails on a training
    // changed since the cache's copy, and then nothing is touched.
    let touches_pods = decision.actions.iter().any(|a| {
        matches!(
            a,
            Action::CreatePod { .. } | Action::DeletePod { .. } | Action::DeleteSelf
        )
    });
    if let Some(replaced) = write_status(&rts, &rt, &old_status, &status, touches_pods).await? {
        lock(&ctx.expectations).wrote_status(&key, &replaced, Instant::now());
    }
    record_transitions(&ctx.metrics, &rt, &old_status, &status, now);
    for (reason, note) in refusals {
        publish(ctx, &reference, reason, &note, true).await;
    }

    let acting = act::Acting {
        ctx,
        rts: &rts,
        pods_api: &pods_api,
        svc_api: &svc_api,
        rt: &rt,
        key: &key,
        reference: &reference,
        pods: &pods,
        owned: &owned,
        service,
    };
    match acting.run(decision.actions).await? {
        act::Acted::DeletedSelf => return Ok(Requeue::await_change()),
        act::Acted::Done(then) => requeue = sooner(requeue, then),
    }
    lock(&ctx.failures).remove(&key);
    Ok(match requeue {
        Some(s) => Requeue::requeue(Duration::from_secs(s.max(1) as u64)),
        None => Requeue::await_change(),
    })
}

/// The most one reconcile can add to `ride_operator_lost_work_total`, by
/// unit (steps, seconds, GPU-seconds): one restart of the gang that ran
/// since `old.runningSince`, for its wall time and its devices.
fn lost_work_caps(rt: &RideTraining, old: &RideTrainingStatus, now: i64) -> [f64; 3] {
    let wall = old
        .running_since
        .map_or(0, |t| now.saturating_sub(t).max(0)) as f64;
    let devices =
        f64::from(old.world_size.max(0)) * f64::from(rt.spec.workers.gpus_per_worker.max(1));
    [crate::report::MAX_STEPS as f64, wall, wall * devices]
}

/// Restart counters and time-to-running histograms from a status change
/// decided at `now`.
fn record_transitions(
    metrics: &OperatorMetrics,
    rt: &RideTraining,
    old: &RideTrainingStatus,
    new: &RideTrainingStatus,
    now: i64,
) {
    let budget = new.restarts.saturating_sub(old.restarts).max(0) as u64;
    let exempt = new
        .exempt_restarts
        .saturating_sub(old.exempt_restarts)
        .max(0) as u64;
    if budget > 0 {
        metrics
            .restarts
            .with_label_values(&["budget"])
            .inc_by(budget);
    }
    if exempt > 0 {
        metrics
            .restarts
            .with_label_values(&["exempt"])
            .inc_by(exempt);
    }
    for cause in crate::crd::RestartCause::ALL {
        let n = new
            .restarts_by_cause
            .get(cause)
            .saturating_sub(old.restarts_by_cause.get(cause))
            .max(0);
        if n > 0 {
            metrics
                .restarts_by_cause
                .with_label_values(&[cause.as_str()])
                .inc_by(n as u64);
        }
        let key = cause.as_str();
        let (Some(after), before) = (
            new.lost_work_by_cause.get(key),
            old.lost_work_by_cause.get(key).copied().unwrap_or_default(),
        ) else {
            continue;
        };
        let deltas = [
            after.steps.saturating_sub(before.steps) as f64,
            after.seconds - before.seconds,
            after.gpu_seconds - before.gpu_seconds,
        ];
        for ((unit, d), cap) in crate::metrics::LOST_WORK_UNITS
            .iter()
            .zip(deltas)
            .zip(lost_work_caps(rt, old, now))
        {
            // The counter is cluster-wide: one training's status (which
            // its tenant may be able to write) must not move it further
            // than one restart of its gang can lose.
            if d.is_finite() && d > 0.0 {
                metrics
                    .lost_work
                    .with_label_values(&[key, unit])
                    .inc_by(d.min(cap));
            }
        }
    }
    if let (None, Some(running)) = (old.running_since, new.running_since) {
        if new.attempt == 0 {
            let created = rt
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .or(new.start_time);
            if let Some(c) = created {
                metrics
                    .time_to_running
                    .observe(running.saturating_sub(c).max(0) as f64);
            }
        } else if let Some(r) = new.restart_time {
            metrics
                .time_to_restart
                .observe(running.saturating_sub(r).max(0) as f64);
        }
    }
}

/// Write `new` over `old` as a JSON merge patch carrying `rt`'s
/// resourceVersion, so that it fails (409) on a training changed since.
/// With nothing to write it is skipped, unless `guard`: then an empty patch
/// still checks the version. Returns the version a change replaced.
async fn write_status(
    rts: &Api<RideTraining>,
    rt: &RideTraining,
    old: &RideTrainingStatus,
    new: &RideTrainingStatus,
    guard: bool,
) -> Result<Option<String>, kube::Error> {
    let unchanged = old == new && rt.status.is_some();
    if unchanged && !guard {
        return Ok(None);
    }
    // Diff against what the server holds (absent fields included), not the
    // defaults it deserialised to, or zero counters would never be written.
    let old_json = match &rt.status {
        Some(_) => serde_json::to_value(old).unwrap_or_default(),
        None => serde_json::json!({}),
    };
    let new_json = serde_json::to_value(new).unwrap_or_default();
    let version = rt.resource_version();
    let patch = if unchanged {
        serde_json::json!({"metadata": {"resourceVersion": version}})
    } else {
        serde_json::json!({
            "metadata": {"resourceVersion": version},
            "status": merge_patch(&old_json, &new_json),
        })
    };
    if tracing::enabled!(tracing::Level::DEBUG) {
        // What makes the writes, for whoever counts them.
        let fields: Vec<&str> = patch["status"]
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        tracing::debug!(training = %rt.name_any(), ?fields, phase = ?new.phase, "writing status");
    }
    let written = rts
        .patch_status(
            &rt.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(version.filter(|v| written.resource_version().as_ref() != Some(v)))
}

async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    reason: &str,
    message: &str,
    warning: bool,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(message.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    // An event that cannot be recorded must not stop the reconcile.
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, %reason, "cannot record event");
    }
}

/// What the API server said, or the client error.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// The API resource of a gang scheduler's PodGroup.
fn pod_group_resource(gang: GangScheduler) -> ApiResource {
    let gvk = match gang {
        GangScheduler::Coscheduling => {
            GroupVersionKind::gvk("scheduling.x-k8s.io", "v1alpha1", "PodGroup")
        }
        GangScheduler::Native => GroupVersionKind::gvk("scheduling.k8s.io", "v1alpha2", "PodGroup"),
    };
    ApiResource::from_gvk_with_plural(&gvk, "podgroups")
}

/// Kueue's Workload `name` in `ns`, if it can be read. Only asked while
/// the current attempt's workers carry Kueue's gate, which is rare next to
/// the pod events that drive reconciles; without Kueue's CRD or the
/// permission to read Workloads the status just says less.
async fn kueue_workload(client: &Client, ns: &str, name: &str) -> Option<serde_json::Value> {
    let gvk = GroupVersionKind::gvk(
        crate::queue::KUEUE_GROUP,
        crate::queue::KUEUE_VERSION,
        "Workload",
    );
    let resource = ApiResource::from_gvk_with_plural(&gvk, "workloads");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    match api.get_opt(name).await {
        Ok(found) => found.map(|w| w.data),
        Err(e) => {
            tracing::debug!(workload = name, error = %e, "Kueue Workload not readable");
            None
        }
    }
}

/// Say why a worker (or its PodGroup) cannot be created where users look:
/// an Event and the status message (kept until a creation succeeds).
async fn report_create_failure(
    ctx: &Context,
    rts: &Api<RideTraining>,
    name: &str,
    key: &str,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    message: String,
) -> Result<(), ReconcileError> {
    lock(&ctx.create_failures).insert(key.to_string(), message.clone());
    publish(ctx, reference, "FailedCreatePod", &message, true).await;
    let now = rts.get(name).await?;
    let old = now.status.clone().unwrap_or_default();
    if old.message.as_deref() != Some(message.as_str()) {
        let mut failing = old.clone();
        // The current phase's condition says it too (kubectl wait, UIs).
        if let Some(phase) = old.phase {
            let reason = old.reason.clone().unwrap_or_else(|| phase.as_str().into());
            crate::lifecycle::set_conditions(
                &mut failing.conditions,
                phase,
                &reason,
                &message,
                unix_now(),
                now.metadata.generation,
            );
        }
        failing.message = Some(message);
        write_status(rts, &now, &old, &failing, false).await?;
    }
    Ok(())
}

/// Retry a failed reconcile, backing off per training: 5 s, doubling up to 5 minutes.
pub fn error_policy(rt: Arc<RideTraining>, error: &ReconcileError, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.reconcile_errors.inc();
    let key = rt.metadata.uid.clone().unwrap_or_default();
    let n = {
        let mut f = lock(&ctx.failures);
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = retry_delay(n);
    tracing::warn!(training = %rt.name_any(), namespace = ?rt.namespace(), error = %error, retry_in = ?delay, "reconcile failed; retrying");
    Requeue::requeue(delay)
}

/// The wait before retry `n` (1-based) of a failing reconcile.
pub fn retry_delay(n: u32) -> Duration {
    Duration::from_secs((5u64 << n.saturating_sub(1).min(6)).min(300))
}

/// The most one reconcile may take; each API request has a shorter
/// limit of its own ([`request_client_config`]).
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(120);

/// The client settings for the reconciler's and the Lease's requests: a
/// connection, a request and each response must come within these, so a
/// half-open connection fails the request instead of hanging the reconcile.
/// (Watches use a client without the read limit: an idle watch is normal.)
pub fn request_client_config(mut config: kube::Config) -> kube::Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(Duration::from_secs(30));
    config.write_timeout = Some(Duration::from_secs(30));
    // The limit counts from the request, not from when a pooled
    // connection went idle.
    config.reset_reader_on_write = true;
    config
}

/// The client settings for watches: the same connect limit, no response
/// limit (a quiet watch is not a dead one; kube-runtime's watcher has its
/// own idle handling).
pub fn watch_client_config(mut config: kube::Config) -> kube::Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config
}

/// How long opening a connection to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A reconcile running this long is stuck (each API call has its own
/// timeout well below it); `/healthz` then fails so the kubelet restarts us.
pub const STUCK_RECONCILE: Duration = Duration::from_secs(300);

/// Tasks that end with the owner.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Count RideTrainings by phase from the watch cache.
pub fn update_phase_gauges(metrics: &OperatorMetrics, store: &Store<RideTraining>) {
    let mut counts: BTreeMap<&'static str, i64> = phase_labels().map(|p| (p, 0)).collect();
    for rt in store.state() {
        let phase = rt
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map_or(PENDING_LABEL, Phase::as_str);
        *counts.entry(phase).or_default() += 1;
    }
    for (phase, n) in counts {
        metrics.trainings.with_label_values(&[phase]).set(n);
    }
}

/// Run the controller until `shutdown` resolves. `namespace` limits it to one
/// namespace; `None` watches all. At most `concurrency` reconciles run at
/// once (0: unbounded); one object is never reconciled twice at once.
pub async fn run(
    ctx: Arc<Context>,
    watch_client: Client,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = watch_client;
    let (rts, pods, svcs): (Api<RideTraining>, Api<Pod>, Api<Service>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let Some(writers) = lock(&ctx.writers).take() else {
        tracing::error!("controller::run called twice on one context; not running");
        return;
    };
    let polled = lock(&ctx.polled_rx).take();
    // One watch per kind both fills the cache reconciles read and triggers
    // them.
    let owned = watcher::Config::default().labels(LABEL_TRAINING);
    // Managed fields are most of an object's bytes and no decision reads
    // them: the caches go without (pods keep only what reconciles read).
    let index = Arc::clone(&ctx.caches.pod_index);
    let pod_events = watcher(pods, owned.clone())
        .default_backoff()
        .modify(crate::observe::slim_pod)
        .inspect_ok(move |event| lock(&index).apply(event))
        .reflect(writers.pods)
        .touched_objects();
    let svc_events = watcher(svcs, owned)
        .default_backoff()
        .modify(|s: &mut Service| s.metadata.managed_fields = None)
        .reflect(writers.services)
        .touched_objects();
    // Nodes: only whether one is lost matters, and only then are the
    // trainings with pods on it reconciled (a node's heartbeats are not).
    let pod_cache = ctx.caches.pods.clone();
    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(crate::nodes::slim)
        .reflect(writers.nodes)
        .touched_objects()
        .filter_map(|event| {
            std::future::ready(match event {
                Ok(node) => Some(node),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch nodes (the chart's ClusterRole grants get/list/watch); lost nodes are noticed only when their pods are evicted");
                    None
                }
            })
        });
    let on_lost_node = move |node: Node| {
        let name = node.name_any();
        if crate::nodes::node_lost(&name, Some(&node), true).is_none() {
            return Vec::new();
        }
        let mut trainings: Vec<ObjectRef<RideTraining>> = pod_cache
            .state_filter(|p| crate::observe::node_name(p) == Some(name.as_str()))
            .iter()
            .filter_map(|p| {
                let owner = p
                    .owner_references()
                    .iter()
                    .find(|o| o.kind == "RideTraining")?;
                Some(ObjectRef::new(&owner.name).within(p.metadata.namespace.as_deref()?))
            })
            .collect();
        trainings.dedup();
        trainings
    };
    let (training_store, training_writer) = reflector::store();
    let trainings = watcher(rts, watcher::Config::default())
        .default_backoff()
        .modify(|rt: &mut RideTraining| rt.metadata.managed_fields = None)
        .reflect(training_writer)
        .applied_objects();
    let mut controller = Controller::for_stream(trainings, training_store)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .owns_stream(pod_events)
        .owns_stream(svc_events)
        .watches_stream(node_events.map(Ok), on_lost_node)
        .graceful_shutdown_on(shutdown);
    if let Some(polled) = polled {
        controller = controller.reconcile_on(polled);
    }
    let store = controller.store();
    let metrics = Arc::clone(&ctx.metrics);
    // Leading but not yet ready until the RideTraining cache is filled:
    // decisions made before that would see an incomplete world.
    metrics.set_ready(false);
    let ready = {
        let (store, metrics) = (store.clone(), Arc::clone(&metrics));
        tokio::spawn(async move {
            // kube-runtime's readiness signal wakes only its last waiter (a
            // oneshot underneath) and the controller waits on it too, so ask
            // again every half second rather than wait once.
            loop {
                let wait = store.wait_until_ready();
                match tokio::time::timeout(Duration::from_millis(500), wait).await {
                    Ok(Ok(())) => {
                        tracing::info!("RideTraining cache synced; ready");
                        metrics.set_ready(true);
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "RideTraining cache never synced");
                        return;
                    }
                    Err(_) => {}
                }
            }
        })
    };
    let watchdog = Arc::clone(&ctx);
    let gauges = tokio::spawn(async move {
        loop {
            let trainings = store.state();
            // A bug here must not end the loop: its heartbeat is /healthz.
            let refreshed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                update_phase_gauges(&metrics, &store);
                crate::training_gauges::update(
                    &metrics.training,
                    &trainings,
                    jiff::Timestamp::now().as_second(),
                );
            }));
            if let Err(panic) = refreshed {
                tracing::error!(panic = %panic_message(panic.as_ref()), "refreshing the per-training gauges panicked");
            }
            if metrics.is_ready() {
                let live: HashSet<String> = trainings
                    .iter()
                    .filter_map(|rt| rt.metadata.uid.clone())
                    .collect();
                watchdog.sweep(&live);
            }
            metrics.tracked_trainings.set(watchdog.tracked() as i64);
            // Check in for /healthz, saying so if a reconcile hangs.
            let stuck = lock(&watchdog.in_flight)
                .iter()
                .map(|(k, t)| (k.clone(), t.elapsed()))
                .max_by_key(|(_, age)| *age)
                .filter(|(_, age)| *age >= STUCK_RECONCILE);
            metrics.heartbeat(stuck.map(|(k, age)| {
                format!(
                    "the reconcile of {k} has been running for {}s",
                    age.as_secs()
                )
            }));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    let owned_ready = {
        let (pods, services) = (ctx.caches.pods.clone(), ctx.caches.services.clone());
        let synced = Arc::clone(&ctx.owned_synced);
        tokio::spawn(async move {
            if pods.wait_until_ready().await.is_ok() && services.wait_until_ready().await.is_ok() {
                tracing::info!("pod and Service caches synced");
                synced.store(true, Ordering::Release);
            }
        })
    };
    let nodes_ready = {
        let (nodes, synced) = (ctx.caches.nodes.clone(), Arc::clone(&ctx.nodes_synced));
        tokio::spawn(async move {
            if nodes.wait_until_ready().await.is_ok() {
                tracing::info!("node cache synced");
                synced.store(true, Ordering::Release);
            }
        })
    };
    // Aborted however this future ends, dropped included (a replica that
    // lost the Lease drops it): a stale loop must not keep checking in.
    let _helpers = AbortOnDrop(vec![gauges, ready, owned_ready, nodes_ready]);
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn only_a_lost_write_race_is_a_conflict() {
        let api = |code: u16, reason: &str| {
            super::ReconcileError::Kube(kube::Error::Api(Box::new(kube::core::Status {
                code,
                reason: reason.into(),
                ..Default::default()
            })))
        };
        assert!(super::is_write_conflict(&api(409, "Conflict")));
        assert!(!super::is_write_conflict(&api(409, "AlreadyExists")));
        assert!(!super::is_write_conflict(&api(422, "Invalid")));
        assert!(!super::is_write_conflict(
            &super::ReconcileError::Incomplete("name")
        ));
    }

    #[tokio::test]
    async fn a_panic_is_contained_and_says_what_it_said() {
        let fine = super::contained(async { 7 }).await;
        assert_eq!(fine, Ok(7));
        let total: u64 = std::hint::black_box(0);
        let boom = super::contained(async move { 100 / total }).await;
        assert!(boom.unwrap_err().contains("divide by zero"));
        let said = super::contained(async { panic!("training {} broke it", "a/b") }).await;
        assert_eq!(said, Err::<(), _>("training a/b broke it".into()));
        // The runtime is still fine afterwards.
        assert_eq!(super::contained(async { 1 }).await, Ok(1));
    }

    #[test]
    fn failing_reconciles_back_off_to_five_minutes() {
        let d: Vec<u64> = (1..=8).map(|n| super::retry_delay(n).as_secs()).collect();
        assert_eq!(d, [5, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn the_sooner_look_wins_and_none_means_none_due() {
        use super::sooner;
        assert_eq!(sooner(Some(5), Some(2)), Some(2));
        assert_eq!(sooner(None, Some(7)), Some(7));
        assert_eq!(sooner(Some(3), None), Some(3));
        assert_eq!(sooner(None, None), None);
    }

    #[test]
    fn merge_patch_nulls_removed_keys_and_keeps_equal_ones_out() {
        let old = json!({"phase": "Running", "restartAfter": 10, "n": {"a": 1, "b": 2}});
        let new = json!({"phase": "Restarting", "n": {"a": 1, "b": 3}, "attempt": 1});
        assert_eq!(
            merge_patch(&old, &new),
            json!({"phase": "Restarting", "restartAfter": null, "n": {"b": 3}, "attempt": 1})
        );
    }
}
