//! The objects a RideTraining owns: one worker Pod per rank and the headless
//! Service that gives them stable DNS names for the rendezvous.

use crate::crd::{RideTraining, RideTrainingSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, Pod,
    PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use ride_contract::{
    CheckpointUri, Scheme, ENV_LOCAL_RANK, ENV_LOCAL_WORLD_SIZE, ENV_LOG_FORMAT, ENV_MASTER_ADDR,
    ENV_MASTER_PORT, ENV_RANK, ENV_RESTART_ATTEMPT, ENV_TERMINATION_LOG, ENV_WORLD_SIZE,
};
use std::collections::BTreeMap;

pub use crate::reserved::{
    reserved_env, RESERVED_MOUNT_PATHS, RESERVED_VOLUMES, TRAINER_CONTAINER,
};

/// Rendezvous store port (rank 0).
pub const MASTER_PORT: i32 = ride_contract::MASTER_PORT as i32;
/// Trainer metrics and progress port.
pub const METRICS_PORT: i32 = ride_contract::METRICS_PORT as i32;
/// Where the trainer leaves its final progress report (the container's
/// termination message, read back from pod status).
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Where configs live in the trainer image.
pub const IMAGE_CONFIGS: &str = "/opt/ride/configs";
/// Label: the owning RideTraining.
pub const LABEL_TRAINING: &str = "ride.dev/training";
/// Label: a worker pod's rank (0-based) within its attempt.
pub const LABEL_RANK: &str = "ride.dev/rank";
/// Label: the attempt (0-based, one per gang start) a worker pod belongs to.
pub const LABEL_ATTEMPT: &str = "ride.dev/attempt";
/// Kueue's queue label; on a RideTraining it is passed to its pods, which
/// Kueue's pod integration then admits as one pod group
/// ([`kueue_pod_group_name`]).
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// Kueue's priority label (a WorkloadPriorityClass name); on a
/// RideTraining with a queue it is passed to its pods like the queue label.
pub const KUEUE_PRIORITY_LABEL: &str = "kueue.x-k8s.io/priority-class";
/// Kueue's pod-group label (pods admitted together).
pub const KUEUE_POD_GROUP_LABEL: &str = "kueue.x-k8s.io/pod-group-name";
/// Kueue's pod-group size annotation.
pub const KUEUE_POD_GROUP_COUNT: &str = "kueue.x-k8s.io/pod-group-total-count";
/// The coscheduling plugin's label naming a pod's PodGroup.
pub const POD_GROUP_LABEL: &str = "scheduling.x-k8s.io/pod-group";

/// The API version of the scheduler's own PodGroup (Kubernetes 1.36 alpha).
pub const NATIVE_POD_GROUP_API_VERSION: &str = "scheduling.k8s.io/v1alpha2";

/// The PodGroup that holds attempt `attempt`'s `world_size` workers until
/// all of them fit (`None` without gang scheduling).
///
/// Coscheduling: one group per training, `minMember` updated on a resize;
/// the scheduler gives up after the elastic timeout, after which the
/// operator may shrink the gang (and the group with it).
///
/// Native: the group's `schedulingPolicy` is immutable, so each attempt
/// gets its own group, named after it like its pods (`NAME-ATTEMPT`) and
/// labelled with the attempt, so older attempts' groups can be collected.
pub fn pod_group(rt: &RideTraining, attempt: i32, world_size: i32) -> Option<serde_json::Value> {
    Some(match gang_scheduler(rt)? {
        crate::crd::GangScheduler::Coscheduling => serde_json::json!({
            "apiVersion": "scheduling.x-k8s.io/v1alpha1",
            "kind": "PodGroup",
            "metadata": {
                "name": name(rt),
                "namespace": rt.metadata.namespace,
                "labels": labels(rt),
                "ownerReferences": [owner(rt)],
            },
            "spec": {
                "minMember": world_size,
                "scheduleTimeoutSeconds": rt.spec.workers.elastic_timeout_seconds,
            },
        }),
        crate::crd::GangScheduler::Native => {
            let mut group_labels = labels(rt);
            group_labels.insert(LABEL_ATTEMPT.into(), attempt.to_string());
            serde_json::json!({
                "apiVersion": NATIVE_POD_GROUP_API_VERSION,
                "kind": "PodGroup",
                "metadata": {
                    "name": native_pod_group_name(rt, attempt),
                    "namespace": rt.metadata.namespace,
                    "labels": group_labels,
                    "ownerReferences": [owner(rt)],
                },
                "spec": {
                    "schedulingPolicy": {"gang": {"minCount": world_size}},
                },
            })
        }
    })
}

/// The Kueue pod group (and so Kueue Workload) of a training's workers at
/// `world_size`: one for the training's life, not one per attempt, so a
/// gang restart keeps the group's admission (Kueue admits the new attempt's
/// pods as replacements of the failed ones) instead of queueing again
/// behind everyone else. Kueue needs every pod of a group to carry the same
/// total count, so a gang resized by the elastic policy is a new group
/// (`-w<size>`). The uid's first 8 characters keep a recreated training of
/// the same name out of its predecessor's group while that one's pods are
/// still going. At most 63 characters, as a label value must be.
pub fn kueue_pod_group_name(rt: &RideTraining, world_size: i32) -> String {
    let uid: String = rt
        .metadata
        .uid
        .as_deref()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    let mut suffix = String::new();
    if !uid.is_empty() {
        suffix = format!("-{uid}");
    }
    if world_size != rt.spec.workers.replicas {
        suffix.push_str(&format!("-w{world_size}"));
    }
    let name = name(rt);
    let keep = 63usize.saturating_sub(suffix.len()).min(name.len());
    // Names are DNS labels (ASCII), so any byte is a char boundary.
    let base = name.get(..keep).unwrap_or(&name).trim_end_matches('-');
    format!("{base}{suffix}")
}

/// The name of attempt `attempt`'s native PodGroup.
pub fn native_pod_group_name(rt: &RideTraining, attempt: i32) -> String {
    format!("{}-{attempt}", name(rt))
}

/// A worker pod as applied: [`worker_pod`], plus, under native gang
/// scheduling, `spec.schedulingGroup` naming its attempt's PodGroup (a
/// Kubernetes 1.36 field the operator's 1.33 API types do not have, so it is
/// added to the JSON).
pub fn worker_pod_manifest(
    rt: &RideTraining,
    rank: i32,
    attempt: i32,
    world_size: i32,
) -> Result<serde_json::Value, serde_json::Error> {
    let mut pod = serde_json::to_value(worker_pod(rt, rank, attempt, world_size))?;
    let native = gang_scheduler(rt) == Some(crate::crd::GangScheduler::Native);
    if let (true, Some(spec)) = (native, pod.get_mut("spec").and_then(|s| s.as_object_mut())) {
        spec.insert(
            "schedulingGroup".into(),
            serde_json::json!({"podGroupName": native_pod_group_name(rt, attempt)}),
        );
    }
    Ok(pod)
}

/// The security context every container of a worker gets unless it says
/// otherwise: what the `restricted` Pod Security Standard asks for.
fn restricted_container_context(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(read_only_root),
        run_as_non_root: Some(true),
        ..Default::default()
    }
}

/// Fill the fields a sidecar left unset with the restricted defaults.
pub(crate) fn harden_sidecar(mut c: Container) -> Container {
    let defaults = restricted_container_context(false);
    let sc = c.security_context.get_or_insert_with(Default::default);
    sc.allow_privilege_escalation = sc
        .allow_privilege_escalation
        .or(defaults.allow_privilege_escalation);
    if sc.capabilities.is_none() {
        sc.capabilities = defaults.capabilities;
    }
    sc.run_as_non_root = sc.run_as_non_root.or(defaults.run_as_non_root);
    c
}

/// The training's gang scheduler, if any.
pub fn gang_scheduler(rt: &RideTraining) -> Option<crate::crd::GangScheduler> {
    rt.spec.scheduling.as_ref()?.gang
}

fn name(rt: &RideTraining) -> String {
    rt.metadata.name.clone().unwrap_or_default()
}

/// The headless Service's name.
pub fn service_name(rt: &RideTraining) -> String {
    format!("{}-workers", name(rt))
}

/// A worker pod's name, which is also its host name under the Service.
pub fn pod_name(rt: &RideTraining, attempt: i32, rank: i32) -> String {
    format!("{}-{attempt}-{rank}", name(rt))
}

fn owner(rt: &RideTraining) -> OwnerReference {
    OwnerReference {
        api_version: "ride.dev/v1alpha1".into(),
        kind: "RideTraining".into(),
        name: name(rt),
        uid: rt.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn labels(rt: &RideTraining) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_TRAINING.to_string(), name(rt))])
}

/// The headless Service (no cluster IP; not-ready addresses published so
/// ranks can rendezvous before any readiness).
pub fn headless_service(rt: &RideTraining) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(rt)),
            namespace: rt.metadata.namespace.clone(),
            labels: Some(labels(rt)),
            owner_references: Some(vec![owner(rt)]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(labels(rt)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: MASTER_PORT,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The credential variables of the checkpoint storage's `scheme`, each a
/// `secretKeyRef` to the key of the same name in `secret`. The operator has
/// no access to Secrets (its RBAC grants none) and never sees the values:
/// the kubelet resolves the references when it starts the container, and a
/// missing Secret or required key keeps the worker from starting
/// (`CreateContainerConfigError`, shown in status as its start problem).
pub fn credential_env(scheme: Scheme, secret: &str) -> Vec<EnvVar> {
    scheme
        .credential_vars()
        .iter()
        .map(|var| EnvVar {
            name: var.name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.into(),
                    key: var.name.into(),
                    optional: Some(!var.required),
                }),
                ..Default::default()
            }),
        })
        .collect()
}

/// The `ride-trainer train` arguments for this training.
pub fn trainer_args(rt: &RideTraining) -> Vec<String> {
    let spec = &rt.spec;
    let cfg = if spec.trainer.config.starts_with('/') {
        spec.trainer.config.clone()
    } else {
        format!("{IMAGE_CONFIGS}/{}", spec.trainer.config)
    };
    let mut args: Vec<String> = vec![
        "train".into(),
        "--cfg".into(),
        cfg,
        "--output".into(),
        spec.checkpoint.uri.clone(),
        "--device".into(),
        device(spec).into(),
        "--no-progress".into(),
        "--metrics-addr".into(),
        ride_contract::DEFAULT_METRICS_ADDR.into(),
        "--checkpoint-every".into(),
        spec.checkpoint.every_or_default().into(),
    ];
    args.extend(data_and_override_args(spec));
    args
}

/// The trainer's `--device` for this spec: CUDA when workers get GPUs.
pub fn device(spec: &RideTrainingSpec) -> &'static str {
    if spec.workers.gpus_per_worker > 0 {
        "cuda"
    } else {
        "cpu"
    }
}

/// The `train` arguments that come straight from the spec, for pods and
/// local runs alike: `--data-path` and the config overrides (`--opts`).
pub fn data_and_override_args(spec: &RideTrainingSpec) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(d) = &spec.dataset {
        args.extend(["--data-path".into(), d.path.clone()]);
    }
    if !spec.trainer.overrides.is_empty() {
        args.push("--opts".into());
        for (k, v) in &spec.trainer.overrides {
            args.extend([k.clone(), v.clone()]);
        }
    }
    args
}

/// Ranks each worker pod runs: one per GPU, one on CPU.
pub fn ranks_per_worker(spec: &RideTrainingSpec) -> i32 {
    spec.workers.gpus_per_worker.max(1)
}

/// The container's arguments: `train` for one rank per worker; for several
/// (one per GPU), `launch` as this pod's share of the gang, global ranks
/// node-major, restarts left to the operator.
pub fn worker_args(
    rt: &RideTraining,
    rank: i32,
    world_size: i32,
    master_addr: &str,
) -> Vec<String> {
    let train = trainer_args(rt);
    let g = ranks_per_worker(&rt.spec);
    if g == 1 {
        return train;
    }
    let mut args: Vec<String> = [
        "launch",
        "--nproc-per-node",
        &g.to_string(),
        "--nnodes",
        &world_size.to_string(),
        "--node-rank",
        &rank.to_string(),
        "--master-addr",
        master_addr,
        "--master-port",
        &MASTER_PORT.to_string(),
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // `launch` adds the `train` itself.
    args.extend(train.into_iter().skip(1));
    args
}

/// The metrics ports of a pod running `ranks` ranks: each local rank serves
/// on the metrics port plus its local rank (`metrics`, `metrics-1`, ...),
/// so the PodMonitor scrapes every one.
pub fn metrics_ports(ranks: i32) -> impl Iterator<Item = ContainerPort> {
    (0..ranks.max(1)).map(|r| ContainerPort {
        name: Some(if r == 0 {
            "metrics".to_string()
        } else {
            format!("metrics-{r}")
        }),
        container_port: METRICS_PORT + r,
        ..Default::default()
    })
}

/// The pod of `rank` in `attempt`, for a world of `world_size` workers.
pub fn worker_pod(rt: &RideTraining, rank: i32, attempt: i32, world_size: i32) -> Pod {
    let spec = &rt.spec;
    let pod = pod_name(rt, attempt, rank);
    let svc = service_name(rt);
    let master_addr = format!("{}.{svc}", pod_name(rt, attempt, 0));
    let g = ranks_per_worker(spec);
    // With several ranks per pod, `launch` sets each one's own values; these
    // describe the pod's first rank.
    let mut env_vars = vec![
        env(ENV_RANK, rank.saturating_mul(g).to_string()),
        env(ENV_WORLD_SIZE, world_size.saturating_mul(g).to_string()),
        env(ENV_LOCAL_RANK, "0"),
        env(ENV_LOCAL_WORLD_SIZE, g.to_string()),
        env(ENV_MASTER_ADDR, master_addr.clone()),
        env(ENV_MASTER_PORT, MASTER_PORT.to_string()),
        env(ENV_RESTART_ATTEMPT, attempt.to_string()),
        env(ENV_TERMINATION_LOG, TERMINATION_LOG),
        // Caches (libtorch, HOME-relative tools) land on the writable /tmp.
        env("HOME", "/tmp"),
        env("XDG_CACHE_HOME", "/tmp/.cache"),
    ];
    if let Some(secs) = spec.restart_policy.stall_timeout_seconds {
        env_vars.push(env(ride_contract::ENV_STALL_TIMEOUT, secs.to_string()));
    }
    // The URI was validated before any pod is built.
    let storage = CheckpointUri::parse(&spec.checkpoint.uri).map(|u| u.scheme());
    if let (Some(secret), Ok(scheme)) = (&spec.checkpoint.credentials_secret, storage) {
        env_vars.extend(credential_env(scheme, secret));
    }
    let mut resources = spec.workers.resources.clone().unwrap_or_default();
    if spec.workers.gpus_per_worker > 0 {
        let gpus = Quantity(spec.workers.gpus_per_worker.to_string());
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert("nvidia.com/gpu".into(), gpus);
    }
    // The root filesystem is read-only; the trainer writes only to these.
    let mut volumes = vec![
        Volume {
            name: "dshm".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "dshm".into(),
            mount_path: "/dev/shm".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    if let Some(d) = &spec.dataset {
        if let Some(v) = &d.volume {
            let mut v = v.clone();
            v.name = "dataset".into();
            volumes.push(v);
            mounts.push(VolumeMount {
                name: "dataset".into(),
                mount_path: d.path.clone(),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    let template = spec.workers.template.clone().unwrap_or_default();
    // Both validated before any pod is built (a malformed one fails the
    // training with InvalidSpec), so nothing is dropped here.
    let sidecars = template.sidecar_containers().unwrap_or_default();
    volumes.extend(template.volume_list().unwrap_or_default());
    let meta = template.metadata.unwrap_or_default();
    // The user's labels and annotations first, so ours win on a clash.
    let mut pod_labels = meta.labels;
    let mut annotations = meta.annotations;
    let training_label = |key: &str| rt.metadata.labels.as_ref()?.get(key).cloned();
    if let Some(queue) = training_label(KUEUE_QUEUE_LABEL) {
        pod_labels.insert(KUEUE_QUEUE_LABEL.into(), queue);
        pod_labels.insert(
            KUEUE_POD_GROUP_LABEL.into(),
            kueue_pod_group_name(rt, world_size),
        );
        annotations.insert(KUEUE_POD_GROUP_COUNT.into(), world_size.to_string());
        if let Some(priority) = training_label(KUEUE_PRIORITY_LABEL) {
            pod_labels.insert(KUEUE_PRIORITY_LABEL.into(), priority);
        }
    }
    if gang_scheduler(rt) == Some(crate::crd::GangScheduler::Coscheduling) {
        pod_labels.insert(POD_GROUP_LABEL.into(), name(rt));
    }
    pod_labels.extend(labels(rt));
    pod_labels.insert(LABEL_RANK.into(), rank.to_string());
    pod_labels.insert(LABEL_ATTEMPT.into(), attempt.to_string());
    annotations.insert(
        "ride.dev/spec-hash".to_string(),
        crate::spec_hash::spec_hash(spec),
    );
    // JSON logs, so the trainer's lines join the operator's in one log
    // stack; a template that sets the variable (e.g. to `text`) wins.
    if !template.env.iter().any(|e| e.name == ENV_LOG_FORMAT) {
        env_vars.push(env(ENV_LOG_FORMAT, "json"));
    }
    env_vars.extend(template.env);

    mounts.extend(template.volume_mounts);
    let sched = spec.scheduling.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(pod.clone()),
            namespace: rt.metadata.namespace.clone(),
            labels: Some(pod_labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner(rt)]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            hostname: Some(pod),
            subdomain: Some(svc),
            restart_policy: Some("Never".into()),
            termination_grace_period_seconds: Some(spec.workers.termination_grace_period_seconds),
            // Workers do not talk to the API server; a token is mounted only
            // for a ServiceAccount the user names (cloud workload identity).
            service_account_name: spec.workers.service_account_name.clone(),
            automount_service_account_token: Some(spec.workers.service_account_name.is_some()),
            image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                .then(|| spec.image_pull_secrets.clone()),
            // What the `restricted` Pod Security Standard asks for.
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            scheduler_name: sched.scheduler_name,
            node_selector: (!sched.node_selector.is_empty()).then_some(sched.node_selector),
            tolerations: (!sched.tolerations.is_empty()).then_some(sched.tolerations),
            priority_class_name: sched.priority_class_name,
            volumes: Some(volumes),
            containers: std::iter::once(Container {
                name: TRAINER_CONTAINER.into(),
                image: Some(spec.image.clone()),
                termination_message_path: Some(TERMINATION_LOG.into()),
                security_context: Some(restricted_container_context(true)),
                // A trainer that dies before writing its report still says why.
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                command: Some(vec![ride_contract::TRAINER_BINARY.into()]),
                args: Some(worker_args(rt, rank, world_size, &master_addr)),
                env: Some(env_vars),
                resources: Some(ResourceRequirements { ..resources }),
                volume_mounts: Some(mounts),
                ports: Some(
                    std::iter::once(ContainerPort {
                        name: Some("rendezvous".into()),
                        container_port: MASTER_PORT,
                        ..Default::default()
                    })
                    .chain(metrics_ports(g))
                    .collect(),
                ),
                ..Default::default()
            })
            .chain(sidecars.into_iter().map(harden_sidecar))
            .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> RideTraining {
        let mut rt: RideTraining = serde_norway::from_str(
            &std::fs::read_to_string(crate::repo_file("examples/ride-tiny-2e.yaml")).unwrap(),
        )
        .unwrap();
        rt.metadata.namespace = Some("ml".into());
        rt.metadata.uid = Some("uid-1".into());
        rt
    }

    #[test]
    fn worker_pods_carry_torchrun_env_gpus_shm_and_stable_names() {
        let rt = rt();
        let p = worker_pod(&rt, 3, 2, 8);
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("ride-tiny-2e-2-3"));
        assert_eq!(spec.hostname.as_deref(), Some("ride-tiny-2e-2-3"));
        assert_eq!(spec.subdomain.as_deref(), Some("ride-tiny-2e-workers"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let c = &spec.containers[0];
        let env: BTreeMap<_, _> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
            .collect();
        assert_eq!(env["RANK"], "3");
        assert_eq!(env["WORLD_SIZE"], "8");
        assert_eq!(env["MASTER_ADDR"], "ride-tiny-2e-2-0.ride-tiny-2e-workers");
        assert_eq!(env["MASTER_PORT"], "29500");
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["nvidia.com/gpu"], Quantity("1".into()));
        assert_eq!(limits["memory"], Quantity("64Gi".into()));
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().any(|m| m.mount_path == "/dev/shm"));
        assert!(mounts
            .iter()
            .any(|m| m.mount_path == "/data/ImageNet_LT" && m.read_only == Some(true)));
        let args = c.args.as_ref().unwrap().join(" ");
        assert!(args.starts_with("train --cfg /opt/ride/configs/swin_tiny_patch4_window7_224_lt_2_experts_ride.yaml --output s3://ride-checkpoints/ride-tiny-2e --device cuda"), "{args}");
        assert!(
            args.ends_with("--opts DATA.BATCH_SIZE 64 TRAIN.ACCUMULATION_STEPS 2"),
            "{args}"
        );
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("RideTraining", "uid-1", Some(true))
        );
    }

    #[test]
    fn trainers_log_json_unless_the_template_asks_otherwise() {
        let log_format = |rt: &RideTraining| {
            let p = worker_pod(rt, 0, 0, 2);
            let env = p.spec.unwrap().containers[0].env.clone().unwrap();
            let set: Vec<String> = env
                .iter()
                .filter(|e| e.name == ENV_LOG_FORMAT)
                .map(|e| e.value.clone().unwrap_or_default())
                .collect();
            set
        };
        let mut rt = rt();
        assert_eq!(log_format(&rt), ["json"]);
        let mut template = rt.spec.workers.template.clone().unwrap_or_default();
        template.env.push(EnvVar {
            name: ENV_LOG_FORMAT.into(),
            value: Some("text".into()),
            ..Default::default()
        });
        rt.spec.workers.template = Some(template);
        assert_eq!(log_format(&rt), ["text"]);
    }

    #[test]
    fn credentials_are_secret_references_never_values() {
        let rt = rt();
        let p = worker_pod(&rt, 0, 0, 8);
        let env = p.spec.unwrap().containers[0].env.clone().unwrap();
        let secret_vars: Vec<&EnvVar> = env.iter().filter(|e| e.name.starts_with("AWS_")).collect();
        assert_eq!(secret_vars.len(), 6);
        for e in secret_vars {
            assert!(e.value.is_none(), "{} has a literal value", e.name);
            let r = e
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            assert_eq!(
                (r.name.as_str(), r.key.as_str()),
                ("ride-s3", e.name.as_str())
            );
        }
    }

    #[test]
    fn each_scheme_gets_its_credential_keys_and_the_optional_ones_are_optional() {
        let keys = |scheme| -> Vec<(String, Option<bool>)> {
            credential_env(scheme, "creds")
                .into_iter()
                .map(|e| {
                    let r = e.value_from.unwrap().secret_key_ref.unwrap();
                    assert_eq!(
                        (r.name.as_str(), r.key.as_str()),
                        ("creds", e.name.as_str())
                    );
                    (e.name, r.optional)
                })
                .collect()
        };
        let named = |list: &[(&str, bool)]| -> Vec<(String, Option<bool>)> {
            list.iter()
                .map(|(n, optional)| (n.to_string(), Some(*optional)))
                .collect()
        };
        assert_eq!(
            keys(Scheme::S3),
            named(&[
                ("AWS_ACCESS_KEY_ID", false),
                ("AWS_SECRET_ACCESS_KEY", false),
                ("AWS_SESSION_TOKEN", true),
                ("AWS_REGION", true),
                ("AWS_ENDPOINT_URL", true),
                ("AWS_CONDITIONAL_PUT", true),
            ])
        );
        assert_eq!(
            keys(Scheme::Gcs),
            named(&[("GOOGLE_SERVICE_ACCOUNT_KEY", false)])
        );
        assert_eq!(
            keys(Scheme::Azure),
            named(&[
                ("AZURE_STORAGE_ACCOUNT_NAME", false),
                ("AZURE_STORAGE_ACCOUNT_KEY", false),
                ("AZURE_STORAGE_ENDPOINT", true),
            ])
        );
        assert!(keys(Scheme::File).is_empty());
        // The aliases are the same storage: s3a:// gets the S3 keys.
        let mut rt = rt();
        rt.spec.checkpoint.uri = "s3a://ride-checkpoints/run".into();
        let env = worker_pod(&rt, 0, 0, 2).spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        assert_eq!(env.iter().filter(|e| e.name.starts_with("AWS_")).count(), 6);
        // No template may set them.
        for scheme in Scheme::ALL {
            for v in scheme.credential_vars() {
                assert!(reserved_env(v.name), "{}", v.name);
            }
        }
    }

    #[test]
    fn the_service_is_headless_and_selects_the_gang() {
        let s = headless_service(&rt());
        let spec = s.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.unwrap()[LABEL_TRAINING], "ride-tiny-2e");
    }

    #[test]
    fn a_kueue_pod_group_lasts_the_training_and_changes_with_its_size() {
        let mut rt = rt();
        rt.metadata.labels = Some(BTreeMap::from([(
            KUEUE_QUEUE_LABEL.to_string(),
            "team-a".to_string(),
        )]));
        rt.metadata.uid = Some("3F2A9C1E-77aa-4b1c-9d2e-000000000000".into());
        let full = rt.spec.workers.replicas;
        let group = |attempt, world| {
            worker_pod(&rt, 0, attempt, world).metadata.labels.unwrap()[KUEUE_POD_GROUP_LABEL]
                .clone()
        };
        assert_eq!(group(0, full), "ride-tiny-2e-3f2a9c1e");
        assert_eq!(group(5, full), group(0, full));
        assert_eq!(
            group(1, full - 1),
            format!("ride-tiny-2e-3f2a9c1e-w{}", full - 1)
        );
        // A long name is cut so that the suffix still fits a label value.
        rt.metadata.name = Some(format!("{}-x", "a".repeat(61)));
        let long = kueue_pod_group_name(&rt, 3);
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with("-3f2a9c1e-w3"), "{long}");
        assert!(!long.contains("--"), "{long}");
    }

    fn with_template(yaml: &str) -> RideTraining {
        let mut rt = rt();
        rt.spec.workers.template = Some(serde_norway::from_str(yaml).unwrap());
        rt
    }

    const TEMPLATE: &str = r#"
metadata:
  labels: {team: vision, ride.dev/rank: "99"}
  annotations: {prometheus.io/scrape: "true"}
env: [{name: NCCL_DEBUG, value: INFO}]
volumes: [{name: scratch, emptyDir: {}}]
volumeMounts: [{name: scratch, mountPath: /scratch}]
sidecars: [{name: shipper, image: "fluent-bit:3"}]
"#;

    #[test]
    fn a_template_adds_under_the_operators_fields() {
        let mut rt = with_template(TEMPLATE);
        rt.spec.validate().unwrap();
        rt.metadata.labels = Some(BTreeMap::from([
            (KUEUE_QUEUE_LABEL.to_string(), "team-a".to_string()),
            (KUEUE_PRIORITY_LABEL.to_string(), "low".to_string()),
        ]));
        let pod = worker_pod(&rt, 1, 2, 4);
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "vision");
        // Ours win a clash.
        assert_eq!(labels[LABEL_RANK], "1");
        assert_eq!(labels[KUEUE_QUEUE_LABEL], "team-a");
        assert_eq!(labels[KUEUE_PRIORITY_LABEL], "low");
        // One group for every attempt at this size (attempt 2 here); 4 is
        // not the spec's size, so the group is the resized one.
        assert_eq!(labels[KUEUE_POD_GROUP_LABEL], "ride-tiny-2e-uid1-w4");
        let ann = pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[KUEUE_POD_GROUP_COUNT], "4");
        assert_eq!(ann["prometheus.io/scrape"], "true");
        assert!(ann.contains_key("ride.dev/spec-hash"));
        let spec = pod.spec.unwrap();
        let trainer = &spec.containers[0];
        let env = trainer.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "NCCL_DEBUG"));
        assert!(env.iter().any(|e| e.name == "RANK"));
        assert!(spec.volumes.unwrap().iter().any(|v| v.name == "scratch"));
        assert!(trainer
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.mount_path == "/scratch"));
        // The sidecar runs beside it, with the restricted defaults filled in.
        let shipper = &spec.containers[1];
        assert_eq!(shipper.name, "shipper");
        let sc = shipper.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        // Without the queue label, no Kueue group.
        let plain = worker_pod(&with_template(TEMPLATE), 0, 0, 4);
        assert!(!plain
            .metadata
            .labels
            .unwrap()
            .contains_key(KUEUE_POD_GROUP_LABEL));
    }

    #[test]
    fn a_template_cannot_replace_what_the_operator_sets() {
        let field = |yaml: &str| with_template(yaml).spec.validate().expect_err(yaml).field;
        assert_eq!(
            field("env: [{name: RANK, value: '0'}]"),
            "workers.template.env[0].name"
        );
        assert_eq!(
            field("env: [{name: A, value: x}, {name: AWS_SECRET_ACCESS_KEY, value: x}]"),
            "workers.template.env[1].name"
        );
        assert_eq!(
            field("volumes: [{name: tmp, emptyDir: {}}]"),
            "workers.template.volumes[0].name"
        );
        assert_eq!(
            field(
                "volumes: [{name: x, emptyDir: {}}]\nvolumeMounts: [{name: x, mountPath: /tmp/}]"
            ),
            "workers.template.volumeMounts[0].mountPath"
        );
        assert_eq!(
            field("volumeMounts: [{name: nowhere, mountPath: /x}]"),
            "workers.template.volumeMounts[0].name"
        );
        assert_eq!(
            field("sidecars: [{name: trainer}]"),
            "workers.template.sidecars[0].name"
        );
        assert_eq!(
            field("sidecars: [{image: x}]"),
            "workers.template.sidecars[0].name"
        );
        assert_eq!(
            field("sidecars: [{name: x, ports: 8080}]"),
            "workers.template.sidecars[0]"
        );
        assert_eq!(
            field("volumes: [{emptyDir: {}}]"),
            "workers.template.volumes[0].name"
        );
    }

    #[test]
    fn a_worker_with_several_gpus_runs_one_rank_per_gpu() {
        let mut rt = rt();
        rt.spec.workers.gpus_per_worker = 4;
        let pod = worker_pod(&rt, 1, 0, 2);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let args = c.args.clone().unwrap();
        let expect = [
            "launch",
            "--nproc-per-node",
            "4",
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master-addr",
            "ride-tiny-2e-0-0.ride-tiny-2e-workers",
            "--master-port",
            "29500",
            "--",
            "--cfg",
        ];
        assert_eq!(&args[..expect.len()], expect);
        assert!(!args.contains(&"train".to_string()), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--device", "cuda"]));
        let var = |n: &str| {
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(var("WORLD_SIZE").as_deref(), Some("8"));
        assert_eq!(var("RANK").as_deref(), Some("4"));
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["nvidia.com/gpu"].0, "4");
        // One GPU: the trainer itself, as before.
        rt.spec.workers.gpus_per_worker = 1;
        let one = worker_pod(&rt, 1, 0, 2);
        assert_eq!(
            one.spec.unwrap().containers[0].args.as_ref().unwrap()[0],
            "train"
        );
    }

    #[test]
    fn a_gang_gets_one_pod_group_sized_to_the_attempt() {
        let mut rt = rt();
        assert!(pod_group(&rt, 1, 2).is_none());
        let plain = worker_pod_manifest(&rt, 0, 1, 2).unwrap();
        assert!(plain["spec"].get("schedulingGroup").is_none(), "{plain}");
        rt.spec.scheduling = Some(crate::crd::SchedulingSpec {
            gang: Some(crate::crd::GangScheduler::Coscheduling),
            ..Default::default()
        });
        let g = pod_group(&rt, 1, 3).unwrap();
        assert_eq!(g["kind"], "PodGroup");
        assert_eq!(g["metadata"]["name"], "ride-tiny-2e");
        assert_eq!(g["spec"]["minMember"], 3);
        assert_eq!(g["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let pod = worker_pod(&rt, 0, 1, 3);
        assert_eq!(
            pod.metadata.labels.unwrap()[POD_GROUP_LABEL],
            "ride-tiny-2e"
        );
        let applied = worker_pod_manifest(&rt, 0, 1, 3).unwrap();
        assert!(applied["spec"].get("schedulingGroup").is_none());
    }

    #[test]
    fn a_native_gang_gets_one_immutable_pod_group_per_attempt_named_by_its_pods() {
        let mut rt = rt();
        rt.spec.scheduling = Some(crate::crd::SchedulingSpec {
            gang: Some(crate::crd::GangScheduler::Native),
            ..Default::default()
        });
        let g = pod_group(&rt, 4, 3).unwrap();
        assert_eq!(g["apiVersion"], NATIVE_POD_GROUP_API_VERSION);
        assert_eq!(g["metadata"]["name"], "ride-tiny-2e-4");
        assert_eq!(g["metadata"]["labels"][LABEL_ATTEMPT], "4");
        assert_eq!(g["metadata"]["labels"][LABEL_TRAINING], "ride-tiny-2e");
        assert_eq!(g["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(
            g["spec"],
            serde_json::json!({"schedulingPolicy": {"gang": {"minCount": 3}}})
        );
        let pod = worker_pod_manifest(&rt, 2, 4, 3).unwrap();
        assert_eq!(
            pod["spec"]["schedulingGroup"],
            serde_json::json!({"podGroupName": "ride-tiny-2e-4"})
        );
        assert_eq!(pod["metadata"]["name"], "ride-tiny-2e-4-2");
        assert!(
            pod["metadata"]["labels"].get(POD_GROUP_LABEL).is_none(),
            "no coscheduling label: {pod}"
        );
    }

    #[test]
    fn every_local_rank_has_a_named_metrics_port() {
        let mut rt = rt();
        rt.spec.workers.gpus_per_worker = 4;
        let p = worker_pod(&rt, 0, 0, 2);
        let ports: Vec<(String, i32)> = p.spec.unwrap().containers[0]
            .ports
            .clone()
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("rendezvous".to_string(), MASTER_PORT),
                ("metrics".to_string(), METRICS_PORT),
                ("metrics-1".to_string(), METRICS_PORT + 1),
                ("metrics-2".to_string(), METRICS_PORT + 2),
                ("metrics-3".to_string(), METRICS_PORT + 3),
            ]
        );
    }
}
