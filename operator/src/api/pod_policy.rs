//! What the pods the operator creates for a tenant may carry: the Pod
//! Security Standard an administrator chose (`restricted` unless loosened)
//! over every container and volume a RideTraining adds, plus the
//! administrator's lists for what the standards leave open but a shared
//! cluster must not hand to any tenant (host paths, priority classes,
//! tolerations of control-plane taints).
//!
//! The operator's own trainer container and volumes already meet
//! `restricted`; what a tenant adds (sidecars, template volumes and mounts,
//! the dataset volume, pod annotations, scheduling) is checked here, and a
//! refused spec names the field. Pure: the controller and `ride check` both
//! call it.

use crate::crd::{RideTrainingSpec, SpecError};
use k8s_openapi::api::core::v1::{Container, Toleration, Volume, VolumeMount};
use std::collections::BTreeSet;

/// The Pod Security Standard the operator holds tenant additions to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// The `restricted` standard: non-root, no privilege escalation, all
    /// capabilities dropped, only the projected and claim-backed volume types.
    #[default]
    Restricted,
    /// The `baseline` standard: no privileged containers, host ports, host
    /// paths or unsafe capabilities; root and any non-host volume type allowed.
    Baseline,
    /// No standard: what the tenant writes is created as written (the host
    /// path, priority and toleration lists still apply).
    Privileged,
}

impl Profile {
    /// The flag value (`restricted`, `baseline`, `privileged`).
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Restricted => "restricted",
            Profile::Baseline => "baseline",
            Profile::Privileged => "privileged",
        }
    }
}

/// Capabilities `baseline` lets a container add (the standard's list).
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Volume types `restricted` allows.
const RESTRICTED_VOLUME_TYPES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// SELinux types `baseline` allows (besides none).
const BASELINE_SELINUX_TYPES: [&str; 4] = [
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Taints that keep ordinary workloads off nodes that are not theirs: the
/// control plane, cordoned nodes, nodes not yet set up. Tolerating them is
/// for system components, so a tenant needs the administrator's leave.
pub const PROTECTED_TAINT_KEYS: [&str; 5] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
    "node.kubernetes.io/unschedulable",
    "node.cloudprovider.kubernetes.io/uninitialized",
    "node.kubernetes.io/network-unavailable",
];

/// The administrator's pod policy: the operator's flags (and chart values),
/// shared by `ride-operator` and `ride check` so both give the same verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct PodPolicy {
    /// The Pod Security Standard every container and volume a training adds
    /// is held to; a training that asks for more fails with InvalidSpec,
    /// naming the field.
    #[arg(long = "pod-security", value_enum, default_value_t = Profile::Restricted)]
    pub profile: Profile,
    /// Host path prefixes datasets and template volumes may use (comma
    /// separated or repeated; none by default: a host path reads the node's
    /// files). Mounted read-only unless --pod-security=privileged.
    #[arg(
        long = "allow-host-path-datasets",
        value_name = "PREFIX",
        value_delimiter = ','
    )]
    pub host_path_prefixes: Vec<String>,
    /// PriorityClasses trainings may name (none by default: they get the
    /// cluster's default).
    #[arg(
        long = "allowed-priority-classes",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub priority_classes: Vec<String>,
    /// Control-plane, cordon and set-up taint keys trainings may tolerate
    /// (`*`: also tolerations without a key, which tolerate every taint);
    /// none by default.
    #[arg(
        long = "allowed-toleration-keys",
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub toleration_keys: Vec<String>,
}

impl PodPolicy {
    /// Every refusal for `spec`, each naming its field (empty: allowed).
    /// A malformed sidecar or volume is the spec validation's to report, so
    /// it is skipped here.
    pub fn violations(&self, spec: &RideTrainingSpec) -> Vec<SpecError> {
        let mut out = Vec::new();
        let template = spec.workers.template.clone().unwrap_or_default();
        let template_volumes = template.volume_list().unwrap_or_default();
        let mut volumes: Vec<(String, &Volume)> = Vec::new();
        if let Some(v) = spec.dataset.as_ref().and_then(|d| d.volume.as_ref()) {
            volumes.push(("dataset.volume".into(), v));
        }
        for (i, v) in template_volumes.iter().enumerate() {
            volumes.push((format!("workers.template.volumes[{i}]"), v));
        }
        for (field, v) in &volumes {
            self.check_volume(field, v, &mut out);
        }
        let host_volumes: BTreeSet<&str> = template_volumes
            .iter()
            .filter(|v| v.host_path.is_some())
            .map(|v| v.name.as_str())
            .collect();
        // Host paths are read-only unless the profile is privileged.
        let check_mounts = |field: &str, mounts: &[VolumeMount], out: &mut Vec<SpecError>| {
            if self.profile == Profile::Privileged {
                return;
            }
            for (i, m) in mounts.iter().enumerate() {
                if host_volumes.contains(m.name.as_str()) && m.read_only != Some(true) {
                    out.push(self.refuse(
                        format!("{field}.volumeMounts[{i}].readOnly"),
                        format!("a host path volume ({}) is mounted read-only", m.name),
                    ));
                }
            }
        };
        check_mounts("workers.template", &template.volume_mounts, &mut out);
        for (i, c) in template
            .sidecar_containers()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let field = format!("workers.template.sidecars[{i}]");
            check_mounts(
                &field,
                c.volume_mounts.as_deref().unwrap_or_default(),
                &mut out,
            );
            // What the pod will carry: the operator's defaults filled in.
            self.check_container(&field, &crate::pods::harden_sidecar(c), &mut out);
        }
        if let Some(meta) = &template.metadata {
            for (k, v) in &meta.annotations {
                if self.profile != Profile::Privileged && unconfined_annotation(k, v) {
                    out.push(self.refuse(
                        format!("workers.template.metadata.annotations[{k}]"),
                        format!("{v:?} turns off the container's confinement"),
                    ));
                }
            }
        }
        if let Some(s) = &spec.scheduling {
            if let Some(p) = &s.priority_class_name {
                if !self.priority_classes.contains(p) {
                    out.push(SpecError {
                        field: "scheduling.priorityClassName".into(),
                        message: format!(
                            "PriorityClass {p:?} is not one this operator lets trainings use ({}); leave it out for the cluster's default, or ask the cluster admin to list it (--allowed-priority-classes, chart value podPolicy.priorityClasses)",
                            listed(&self.priority_classes)
                        ),
                    });
                }
            }
            for (i, t) in s.tolerations.iter().enumerate() {
                if let Some(why) = self.protected_toleration(t) {
                    out.push(SpecError {
                        field: format!("scheduling.tolerations[{i}]"),
                        message: format!(
                            "{why}, which is for system components; remove it, or ask the cluster admin to list the key (--allowed-toleration-keys, chart value podPolicy.tolerationKeys)"
                        ),
                    });
                }
            }
        }
        out
    }

    /// The first refusal for `spec`, if any.
    pub fn check(&self, spec: &RideTrainingSpec) -> Result<(), SpecError> {
        match self.violations(spec).into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A refusal under the profile, saying how an admin loosens it.
    fn refuse(&self, field: String, why: String) -> SpecError {
        let looser = match self.profile {
            Profile::Restricted => "--pod-security=baseline or privileged",
            Profile::Baseline | Profile::Privileged => "--pod-security=privileged",
        };
        SpecError {
            field,
            message: format!(
                "not allowed by the {} Pod Security Standard this operator enforces: {why}; change it, or ask the cluster admin to loosen the operator ({looser}, chart value podSecurity)",
                self.profile.as_str()
            ),
        }
    }

    fn check_volume(&self, field: &str, v: &Volume, out: &mut Vec<SpecError>) {
        if let Some(h) = &v.host_path {
            if !under_prefix(&h.path, &self.host_path_prefixes) {
                out.push(SpecError {
                    field: format!("{field}.hostPath.path"),
                    message: format!(
                        "host path {:?} is not under a prefix this operator allows ({}): a host path reads the node's files; use a PersistentVolumeClaim, or ask the cluster admin to allow the prefix (--allow-host-path-datasets=PREFIX, chart value podPolicy.hostPathPrefixes)",
                        h.path,
                        listed(&self.host_path_prefixes)
                    ),
                });
            }
            // An allowed host path is the admin's exception to either standard.
            return;
        }
        if self.profile != Profile::Restricted {
            return;
        }
        let kinds = volume_types(v);
        for kind in kinds {
            if !RESTRICTED_VOLUME_TYPES.contains(&kind.as_str()) {
                out.push(self.refuse(
                    format!("{field}.{kind}"),
                    format!(
                        "{kind} volumes are outside its list ({})",
                        RESTRICTED_VOLUME_TYPES.join(", ")
                    ),
                ));
            }
        }
    }

    fn check_container(&self, field: &str, c: &Container, out: &mut Vec<SpecError>) {
        if self.profile == Profile::Privileged {
            return;
        }
        let restricted = self.profile == Profile::Restricted;
        for (i, p) in c.ports.iter().flatten().enumerate() {
            if p.host_port.is_some_and(|h| h != 0) {
                out.push(self.refuse(
                    format!("{field}.ports[{i}].hostPort"),
                    "a host port binds the node's network".into(),
                ));
            }
        }
        let Some(sc) = &c.security_context else {
            return;
        };
        let sc_field = format!("{field}.securityContext");
        if sc.privileged == Some(true) {
            out.push(self.refuse(
                format!("{sc_field}.privileged"),
                "a privileged container has the node's devices and kernel".into(),
            ));
        }
        if sc
            .windows_options
            .as_ref()
            .is_some_and(|w| w.host_process == Some(true))
        {
            out.push(self.refuse(
                format!("{sc_field}.windowsOptions.hostProcess"),
                "a host process runs on the node itself".into(),
            ));
        }
        if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
            out.push(self.refuse(
                format!("{sc_field}.procMount"),
                "an unmasked /proc shows the node's kernel settings".into(),
            ));
        }
        if let Some(se) = &sc.se_linux_options {
            let bad_type = se
                .type_
                .as_deref()
                .is_some_and(|t| !t.is_empty() && !BASELINE_SELINUX_TYPES.contains(&t));
            if bad_type || se.user.is_some() || se.role.is_some() {
                out.push(self.refuse(
                    format!("{sc_field}.seLinuxOptions"),
                    "a custom SELinux user, role or type can leave the container's label".into(),
                ));
            }
        }
        if sc
            .seccomp_profile
            .as_ref()
            .is_some_and(|s| s.type_ == "Unconfined")
        {
            out.push(self.refuse(
                format!("{sc_field}.seccompProfile.type"),
                "Unconfined turns off the system-call filter".into(),
            ));
        }
        if sc
            .app_armor_profile
            .as_ref()
            .is_some_and(|a| a.type_ == "Unconfined")
        {
            out.push(self.refuse(
                format!("{sc_field}.appArmorProfile.type"),
                "Unconfined turns off AppArmor".into(),
            ));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        for (i, cap) in caps.add.iter().flatten().enumerate() {
            let name = cap.trim_start_matches("CAP_");
            let allowed = if restricted {
                name == "NET_BIND_SERVICE"
            } else {
                BASELINE_CAPABILITIES.contains(&name)
            };
            if !allowed {
                out.push(self.refuse(
                    format!("{sc_field}.capabilities.add[{i}]"),
                    format!("capability {cap} is not one it lets a container add"),
                ));
            }
        }
        if !restricted {
            return;
        }
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            out.push(self.refuse(
                format!("{sc_field}.capabilities.drop"),
                "a container drops ALL capabilities".into(),
            ));
        }
        if sc.allow_privilege_escalation != Some(false) {
            out.push(self.refuse(
                format!("{sc_field}.allowPrivilegeEscalation"),
                "a container may not gain privileges (set it to false)".into(),
            ));
        }
        if sc.run_as_non_root == Some(false) {
            out.push(self.refuse(
                format!("{sc_field}.runAsNonRoot"),
                "a container runs as a non-root user".into(),
            ));
        }
        if sc.run_as_user == Some(0) {
            out.push(self.refuse(format!("{sc_field}.runAsUser"), "user 0 is root".into()));
        }
    }

    /// Why toleration `t` needs the admin's leave, if it does.
    fn protected_toleration(&self, t: &Toleration) -> Option<String> {
        let key = t.key.as_deref().unwrap_or_default();
        if key.is_empty() {
            // With no key (operator Exists) it tolerates every taint.
            return (!self.toleration_keys.iter().any(|k| k == "*")).then(|| {
                "a toleration without a key tolerates every taint, control-plane ones included"
                    .to_string()
            });
        }
        (PROTECTED_TAINT_KEYS.contains(&key) && !self.toleration_keys.iter().any(|k| k == key))
            .then(|| format!("it tolerates the {key} taint"))
    }
}

/// The volume source types a volume names (the keys beside `name`).
fn volume_types(v: &Volume) -> Vec<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k != "name")
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether `path` is one of `prefixes` or below one, by whole components
/// (`/data` covers `/data/x`, not `/database`); a path with `..` or not
/// absolute is never covered.
pub fn under_prefix(path: &str, prefixes: &[String]) -> bool {
    let components = |p: &str| -> Option<Vec<String>> {
        if !p.starts_with('/') {
            return None;
        }
        let parts: Vec<String> = p
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect();
        (!parts.iter().any(|c| c == "..")).then_some(parts)
    };
    let Some(path) = components(path) else {
        return false;
    };
    prefixes.iter().any(|p| {
        components(p)
            .is_some_and(|prefix| path.len() >= prefix.len() && path[..prefix.len()] == prefix[..])
    })
}

/// Pod annotations that switch off seccomp or AppArmor (the pre-field way).
fn unconfined_annotation(key: &str, value: &str) -> bool {
    let confinement = key.starts_with("container.apparmor.security.beta.kubernetes.io/")
        || key == "seccomp.security.alpha.kubernetes.io/pod"
        || key.starts_with("container.seccomp.security.alpha.kubernetes.io/");
    confinement && value.eq_ignore_ascii_case("unconfined")
}

fn listed(items: &[String]) -> String {
    if items.is_empty() {
        "none listed".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RideTraining;

    fn spec_with(extra: &str) -> RideTrainingSpec {
        let base = std::fs::read_to_string(crate::repo_file("examples/ride-tiny-2e.yaml")).unwrap();
        let mut rt: serde_json::Value = serde_norway::from_str(&base).unwrap();
        let extra: serde_json::Value = serde_norway::from_str(extra).unwrap();
        merge(&mut rt["spec"], extra);
        serde_json::from_value::<RideTraining>(rt).unwrap().spec
    }

    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn fields(policy: &PodPolicy, extra: &str) -> Vec<String> {
        policy
            .violations(&spec_with(extra))
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    fn sidecar(sc: &str) -> String {
        format!("workers: {{template: {{sidecars: [{{name: s, image: busybox, {sc}}}]}}}}")
    }

    #[test]
    fn the_shipped_example_is_allowed_under_restricted() {
        assert_eq!(fields(&PodPolicy::default(), "{}"), Vec::<String>::new());
    }

    #[test]
    fn restricted_refuses_each_broadening_of_a_sidecar_by_its_field() {
        let p = PodPolicy::default();
        let cases = [
            (
                "securityContext: {privileged: true}",
                "workers.template.sidecars[0].securityContext.privileged",
            ),
            (
                "securityContext: {allowPrivilegeEscalation: true}",
                "workers.template.sidecars[0].securityContext.allowPrivilegeEscalation",
            ),
            (
                "securityContext: {runAsUser: 0}",
                "workers.template.sidecars[0].securityContext.runAsUser",
            ),
            (
                "securityContext: {runAsNonRoot: false}",
                "workers.template.sidecars[0].securityContext.runAsNonRoot",
            ),
            (
                "securityContext: {seccompProfile: {type: Unconfined}}",
                "workers.template.sidecars[0].securityContext.seccompProfile.type",
            ),
            (
                "securityContext: {capabilities: {add: [NET_ADMIN], drop: [ALL]}}",
                "workers.template.sidecars[0].securityContext.capabilities.add[0]",
            ),
            (
                "securityContext: {capabilities: {add: [CHOWN]}}",
                "workers.template.sidecars[0].securityContext.capabilities.drop",
            ),
            (
                "ports: [{containerPort: 80, hostPort: 80}]",
                "workers.template.sidecars[0].ports[0].hostPort",
            ),
            (
                "securityContext: {procMount: Unmasked}",
                "workers.template.sidecars[0].securityContext.procMount",
            ),
        ];
        for (sc, field) in cases {
            let got = fields(&p, &sidecar(sc));
            assert!(got.contains(&field.to_string()), "{sc}: {got:?}");
        }
        // Left unset, the operator's defaults make a sidecar restricted.
        assert_eq!(fields(&p, &sidecar("args: [sleep]")), Vec::<String>::new());
    }

    #[test]
    fn baseline_allows_root_and_safe_capabilities_but_not_privilege() {
        let p = PodPolicy {
            profile: Profile::Baseline,
            ..Default::default()
        };
        assert!(fields(&p, &sidecar("securityContext: {runAsUser: 0, runAsNonRoot: false, allowPrivilegeEscalation: true, capabilities: {add: [CHOWN]}}")).is_empty());
        assert_eq!(
            fields(&p, &sidecar("securityContext: {privileged: true}")),
            ["workers.template.sidecars[0].securityContext.privileged"]
        );
        assert_eq!(
            fields(
                &p,
                &sidecar("securityContext: {capabilities: {add: [SYS_ADMIN]}}")
            ),
            ["workers.template.sidecars[0].securityContext.capabilities.add[0]"]
        );
        let privileged = PodPolicy {
            profile: Profile::Privileged,
            ..Default::default()
        };
        assert!(fields(&privileged, &sidecar("securityContext: {privileged: true}")).is_empty());
    }

    #[test]
    fn volume_types_outside_restricted_are_refused_and_baseline_allows_them() {
        let nfs = "workers: {template: {volumes: [{name: a, emptyDir: {}}, {name: n, nfs: {server: s, path: /x}}]}}";
        assert_eq!(
            fields(&PodPolicy::default(), nfs),
            ["workers.template.volumes[1].nfs"]
        );
        let baseline = PodPolicy {
            profile: Profile::Baseline,
            ..Default::default()
        };
        assert!(fields(&baseline, nfs).is_empty());
        let dataset = "dataset: {volume: {name: d, iscsi: {targetPortal: p, iqn: q, lun: 0}}}";
        assert_eq!(
            fields(&PodPolicy::default(), dataset),
            ["dataset.volume.iscsi"]
        );
    }

    #[test]
    fn host_paths_need_a_listed_prefix_and_a_read_only_mount() {
        let tmpl = "workers: {template: {volumes: [{name: h, hostPath: {path: /data/imagenet}}], volumeMounts: [{name: h, mountPath: /h}]}}";
        let none = PodPolicy::default();
        assert_eq!(
            fields(&none, tmpl),
            [
                "workers.template.volumes[0].hostPath.path",
                "workers.template.volumeMounts[0].readOnly"
            ]
        );
        let allowed = PodPolicy {
            host_path_prefixes: vec!["/data".into()],
            ..Default::default()
        };
        assert_eq!(
            fields(&allowed, tmpl),
            ["workers.template.volumeMounts[0].readOnly"]
        );
        assert!(fields(
            &allowed,
            &tmpl.replace("mountPath: /h", "mountPath: /h, readOnly: true")
        )
        .is_empty());
        let privileged = PodPolicy {
            profile: Profile::Privileged,
            ..allowed.clone()
        };
        assert!(fields(&privileged, tmpl).is_empty());
        let dataset = "dataset: {volume: {name: d, hostPath: {path: /etc}}}";
        assert_eq!(fields(&allowed, dataset), ["dataset.volume.hostPath.path"]);
        assert!(fields(&allowed, &dataset.replace("/etc", "/data/x")).is_empty());
    }

    #[test]
    fn prefixes_match_whole_components_and_never_climb_out() {
        let p = vec!["/data".to_string()];
        assert!(under_prefix("/data", &p));
        assert!(under_prefix("/data/imagenet/", &p));
        assert!(!under_prefix("/database", &p));
        assert!(!under_prefix("/data/../etc", &p));
        assert!(!under_prefix("data/x", &p));
        assert!(!under_prefix("/", &p));
        assert!(under_prefix("/anything", &["/".to_string()]));
    }

    #[test]
    fn priority_classes_and_control_plane_tolerations_need_the_admins_list() {
        let p = PodPolicy::default();
        let prio = "scheduling: {priorityClassName: system-node-critical}";
        assert_eq!(fields(&p, prio), ["scheduling.priorityClassName"]);
        let listed = PodPolicy {
            priority_classes: vec!["system-node-critical".into()],
            ..Default::default()
        };
        assert!(fields(&listed, prio).is_empty());
        let tol = "scheduling: {tolerations: [{key: nvidia.com/gpu, operator: Exists}, {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}, {operator: Exists}]}";
        assert_eq!(
            fields(&p, tol),
            ["scheduling.tolerations[1]", "scheduling.tolerations[2]"]
        );
        let keys = PodPolicy {
            toleration_keys: vec!["node-role.kubernetes.io/control-plane".into(), "*".into()],
            ..Default::default()
        };
        assert!(fields(&keys, tol).is_empty());
    }

    #[test]
    fn unconfined_annotations_are_refused_unless_privileged() {
        let a = "workers: {template: {metadata: {annotations: {container.apparmor.security.beta.kubernetes.io/s: unconfined}}}}";
        assert_eq!(
            fields(&PodPolicy::default(), a),
            ["workers.template.metadata.annotations[container.apparmor.security.beta.kubernetes.io/s]"]
        );
        let privileged = PodPolicy {
            profile: Profile::Privileged,
            ..Default::default()
        };
        assert!(fields(&privileged, a).is_empty());
    }
}
