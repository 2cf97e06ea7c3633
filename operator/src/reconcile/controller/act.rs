//! Carrying out one decision, after its status is written: Events, the
//! Service and pod deletions at once, then the PodGroup and the pod
//! creations at once. A restart's requests go out together instead of one
//! after another: at thousands of trainings a reconcile's wall time is
//! what the 16 concurrent reconciles are short of, not the CPU.

use super::{
    api_message, controlled_by, is_not_found, lock, not_ours, pod_group_resource, publish,
    report_create_failure, sooner, ReconcileError, FIELD_MANAGER, PREDECESSOR_POLL,
};
use super::{Context, RideTraining};
use crate::crd::GangScheduler;
use crate::lifecycle::Action;
use crate::pods::{
    gang_scheduler, headless_service, pod_group, pod_name, service_name, worker_pod_manifest,
    LABEL_ATTEMPT, LABEL_TRAINING,
};
use futures::future::join_all;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::ResourceExt;
use std::sync::Arc;
use std::time::Instant;

/// At most this many of one decision's pod requests in flight: a gang of
/// thousands (`workers.replicas` allows 4,096, a tenant's choice) must not
/// burst the API server on the operator's behalf.
const POD_REQUESTS_AT_ONCE: usize = 16;

/// Run `requests` with at most [`POD_REQUESTS_AT_ONCE`] in flight; their
/// outputs in their order.
async fn at_most_some_at_once<F: std::future::Future>(
    requests: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    // Collected first: a stream holding the caller's closure across the
    // await fails the controller's bounds on the reconcile future
    // ("implementation of FnOnce is not general enough").
    let requests: Vec<F> = requests.into_iter().collect();
    futures::stream::iter(requests)
        .buffered(POD_REQUESTS_AT_ONCE)
        .collect()
        .await
}

/// What one reconcile acts on, as it observed it.
pub(super) struct Acting<'a> {
    pub ctx: &'a Context,
    pub rts: &'a Api<RideTraining>,
    pub pods_api: &'a Api<Pod>,
    pub svc_api: &'a Api<Service>,
    /// The training as decided on (the accepted spec where an edit was refused).
    pub rt: &'a RideTraining,
    /// Its uid, which keys the per-training state.
    pub key: &'a str,
    pub reference: &'a ObjectReference,
    /// Every pod labelled for this training, a predecessor's included.
    pub pods: &'a [Arc<Pod>],
    /// Those this very training owns.
    pub owned: &'a [&'a Pod],
    /// The cached Service of its name, whoever owns it.
    pub service: Option<Arc<Service>>,
}

/// How a decision's actions ended.
pub(super) enum Acted {
    /// All done; look again after this many seconds (`None`: on a change).
    Done(Option<i64>),
    /// The training deleted itself (its TTL): nothing more to look at.
    DeletedSelf,
}

impl Acting<'_> {
    /// Do `actions` (from one decision, in its order within each kind).
    pub async fn run(&self, actions: Vec<Action>) -> Result<Acted, ReconcileError> {
        let mut events = Vec::new();
        let mut deletes = Vec::new();
        let mut creates = Vec::new();
        let (mut ensure_service, mut delete_self) = (false, false);
        let mut requeue: Option<i64> = None;
        for action in actions {
            match action {
                Action::Event {
                    reason,
                    message,
                    warning,
                } => events.push((reason, message, warning)),
                Action::EnsureService => ensure_service = true,
                Action::DeletePod {
                    rank,
                    attempt,
                    force,
                } => deletes.push((rank, attempt, force)),
                Action::CreatePod {
                    rank,
                    attempt,
                    world_size,
                } => creates.push((rank, attempt, world_size)),
                Action::DeleteSelf => delete_self = true,
                Action::RequeueAfter(s) => requeue = sooner(requeue, Some(s)),
            }
        }
        // Together; each is awaited, so a failing delete never loses the
        // Event of a transition whose status is already written.
        let (_, service, deleted) = futures::join!(
            join_all(
                events
                    .iter()
                    .map(|(reason, message, warning)| self.event(reason, message, *warning))
            ),
            async {
                match ensure_service {
                    true => self.ensure_service().await,
                    false => Ok(()),
                }
            },
            at_most_some_at_once(
                deletes
                    .iter()
                    .map(|&(rank, attempt, force)| self.delete_pod(rank, attempt, force))
            ),
        );
        service?;
        deleted.into_iter().collect::<Result<Vec<()>, _>>()?;
        if delete_self {
            let name = self.rt.name_any();
            tracing::info!(training = %name, namespace = ?self.rt.namespace(), "deleting after ttlSecondsAfterFinished");
            match self.rts.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Acted::DeletedSelf);
        }
        let wait = self.create_pods(&creates).await?;
        Ok(Acted::Done(sooner(requeue, wait)))
    }

    async fn event(&self, reason: &str, message: &str, warning: bool) {
        tracing::info!(training = %self.rt.name_any(), namespace = ?self.rt.namespace(), %reason, %message, "transition");
        publish(self.ctx, self.reference, reason, message, warning).await;
    }

    /// Fail the reconcile, saying why where users look.
    async fn refuse(&self, message: String) -> ReconcileError {
        let name = self.rt.name_any();
        if let Err(e) = report_create_failure(
            self.ctx,
            self.rts,
            &name,
            self.key,
            self.reference,
            message.clone(),
        )
        .await
        {
            return e;
        }
        ReconcileError::NotOurs(message)
    }

    /// The cache holds only Services with our label. One it lacks is
    /// created (a single request for a new training); only when the name
    /// is taken is it read, so that a same-named Service of someone else's
    /// is refused rather than applied over.
    async fn ensure_service(&self) -> Result<(), ReconcileError> {
        let (rt, svc_api) = (self.rt, self.svc_api);
        let svc = headless_service(rt);
        let existing = match &self.service {
            Some(s) => Some(Arc::clone(s)),
            None => match svc_api.create(&PostParams::default(), &svc).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    svc_api.get_opt(&service_name(rt)).await?.map(Arc::new)
                }
                Err(e) => return Err(e.into()),
            },
        };
        let uid = rt.metadata.uid.as_deref().unwrap_or_default();
        if let Some(foreign) = existing
            .as_ref()
            .filter(|s| !controlled_by(&s.metadata, uid))
        {
            let message = not_ours("Service", &service_name(rt), &foreign.metadata);
            return Err(self.refuse(message).await);
        }
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        svc_api
            .patch(&service_name(rt), &apply, &Patch::Apply(&svc))
            .await?;
        Ok(())
    }

    /// Delete the very pod decided on: a same-named one that is not it (a
    /// predecessor's) is left alone.
    async fn delete_pod(&self, rank: i32, attempt: i32, force: bool) -> Result<(), ReconcileError> {
        let pod_name = crate::pods::pod_name(self.rt, attempt, rank);
        let target = self
            .owned
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(pod_name.as_str()))
            .and_then(|p| p.metadata.uid.clone());
        let params = DeleteParams {
            grace_period_seconds: force.then_some(0),
            preconditions: target.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.pods_api.delete(&pod_name, &params).await {
            Ok(answer) => {
                if let Some(uid) = target {
                    // A Status answer: removed at once (no grace period, no
                    // finalizer); a Pod: now terminating.
                    let mut expect = lock(&self.ctx.expectations);
                    if answer.is_right() {
                        expect.gone(self.key, &uid, Instant::now());
                    } else {
                        expect.deleted(self.key, &uid, Instant::now());
                    }
                }
                Ok(())
            }
            Err(e) if is_not_found(&e) => {
                // Already gone (its node's pod GC, or kwok/kubelet finished
                // it) though the cache still shows it.
                if let Some(uid) = target {
                    lock(&self.ctx.expectations).gone(self.key, &uid, Instant::now());
                }
                Ok(())
            }
            // Precondition failed: not the pod decided on.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The gang's PodGroup first, sized to this attempt, so the scheduler
    /// holds the pods until all fit; then the pods, applied together.
    /// Returns when to look again if a predecessor's same-named pod is
    /// still being collected.
    async fn create_pods(
        &self,
        creates: &[(i32, i32, i32)],
    ) -> Result<Option<i64>, ReconcileError> {
        let Some(&(_, attempt, world_size)) = creates.first() else {
            return Ok(None);
        };
        let rt = self.rt;
        let uid = rt.metadata.uid.as_deref().unwrap_or_default();
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        if let (Some(group), Some(gang)) = (pod_group(rt, attempt, world_size), gang_scheduler(rt))
        {
            self.apply_pod_group(&group, gang, &apply).await?;
            if gang == GangScheduler::Native && attempt > 0 {
                self.delete_older_native_groups(attempt).await?;
            }
        }
        let mut wait = None;
        let mut wanted = Vec::new();
        for &(rank, attempt, world_size) in creates {
            let pod = worker_pod_manifest(rt, rank, attempt, world_size)?;
            let pod_name = pod_name(rt, attempt, rank);
            // A same-named pod of a predecessor (deleted and created again
            // under its name) is still being collected: applying over it
            // would make it ours, and its deletion would then look like a
            // lost worker. Wait until it is gone.
            let predecessor = self.pods.iter().any(|p| {
                p.metadata.name.as_deref() == Some(pod_name.as_str())
                    && !p.owner_references().iter().any(|o| o.uid == uid)
            });
            if predecessor {
                wait = Some(PREDECESSOR_POLL);
            } else {
                wanted.push((pod_name, pod));
            }
        }
        let made = at_most_some_at_once(wanted.iter().map(|(name, pod)| {
            let apply = &apply;
            async move { self.pods_api.patch(name, apply, &Patch::Apply(pod)).await }
        }))
        .await;
        let mut failed = None;
        for ((pod_name, _), made) in wanted.iter().zip(made) {
            match made {
                Ok(made) => {
                    if let Some(made_uid) = made.metadata.uid.as_deref() {
                        lock(&self.ctx.expectations).created(self.key, made_uid, Instant::now());
                    }
                }
                // The first refusal is the one told.
                Err(e) if failed.is_none() => failed = Some((pod_name.clone(), e)),
                Err(_) => {}
            }
        }
        if let Some((pod_name, e)) = failed {
            // Quota, admission, RBAC: say so where users look, then retry
            // with backoff (error_policy).
            let message = format!("cannot create worker pod {pod_name}: {}", api_message(&e));
            let name = rt.name_any();
            report_create_failure(self.ctx, self.rts, &name, self.key, self.reference, message)
                .await?;
            return Err(e.into());
        }
        if !wanted.is_empty() {
            lock(&self.ctx.create_failures).remove(self.key);
        }
        Ok(wait)
    }

    /// Only our own: a same-named PodGroup applied over would be taken over
    /// and then collected with the training.
    async fn apply_pod_group(
        &self,
        group: &serde_json::Value,
        gang: GangScheduler,
        apply: &PatchParams,
    ) -> Result<(), ReconcileError> {
        let rt = self.rt;
        let name = group["metadata"]["name"].as_str().unwrap_or_default();
        let uid = rt.metadata.uid.as_deref().unwrap_or_default();
        let api = self.pod_groups(gang);
        let existing = match api.get_opt(name).await {
            Ok(e) => e,
            // No CRD (or API version not served): the apply below says so.
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(foreign) = existing.filter(|g| !controlled_by(&g.metadata, uid)) {
            let message = not_ours("PodGroup", name, &foreign.metadata);
            return Err(self.refuse(message).await);
        }
        if let Err(e) = api.patch(name, apply, &Patch::Apply(group)).await {
            let hint = match (&e, gang) {
                (kube::Error::Api(s), GangScheduler::Coscheduling) if s.code == 404 => {
                    " (is the scheduler-plugins PodGroup CRD installed?)"
                }
                (kube::Error::Api(s), GangScheduler::Native) if s.code == 404 => {
                    " (is scheduling.k8s.io/v1alpha2 served? Native gang scheduling needs \
                     Kubernetes 1.36 with the feature gates GenericWorkload and GangScheduling \
                     and --runtime-config=scheduling.k8s.io/v1alpha2=true)"
                }
                _ => "",
            };
            let message = format!("cannot create PodGroup {name}: {}{hint}", api_message(&e));
            let rt_name = rt.name_any();
            report_create_failure(
                self.ctx,
                self.rts,
                &rt_name,
                self.key,
                self.reference,
                message,
            )
            .await?;
            return Err(e.into());
        }
        Ok(())
    }

    /// A native PodGroup is immutable and per attempt: once attempt
    /// `attempt`'s group exists the older attempts' groups (this training's
    /// own, found by label, their pods gone before a new attempt starts)
    /// are deleted rather than kept until the training is.
    async fn delete_older_native_groups(&self, attempt: i32) -> Result<(), ReconcileError> {
        let rt = self.rt;
        let uid = rt.metadata.uid.as_deref().unwrap_or_default();
        let api = self.pod_groups(GangScheduler::Native);
        let selector = format!(
            "{LABEL_TRAINING}={},{LABEL_ATTEMPT}!={attempt}",
            rt.name_any()
        );
        let older = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await?;
        for group in older.items {
            if !controlled_by(&group.metadata, uid) {
                continue;
            }
            let name = group.name_any();
            let precondition = DeleteParams {
                preconditions: group.metadata.uid.clone().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &precondition).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The PodGroups of `gang` in the training's namespace.
    fn pod_groups(&self, gang: GangScheduler) -> Api<DynamicObject> {
        let ns = self.rt.namespace().unwrap_or_default();
        Api::namespaced_with(self.ctx.client.clone(), &ns, &pod_group_resource(gang))
    }
}

#[cfg(test)]
mod tests {
    use super::{at_most_some_at_once, POD_REQUESTS_AT_ONCE};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_huge_gang_keeps_a_bounded_number_of_requests_in_flight_in_order() {
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let outputs = at_most_some_at_once((0..4096).map(|i| {
            let (now, most) = (&now, &most);
            async move {
                let in_flight = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(in_flight, Ordering::SeqCst);
                tokio::task::yield_now().await;
                now.fetch_sub(1, Ordering::SeqCst);
                i
            }
        }))
        .await;
        assert_eq!(outputs, (0..4096).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), POD_REQUESTS_AT_ONCE);
    }
}
