//! The Helm chart, linted and rendered by Helm v4's engine (the PyPI
//! `helm-python-sdk`, which `scripts/setup.sh` installs into the project's
//! virtual environment): lint is clean, the CRD it ships is the generated
//! one, RBAC grants what the controller does, options change what they say,
//! and the Grafana dashboard only uses metrics that exist.

mod common;

use common::repo;
use serde_json::Value;
use std::collections::BTreeSet;

fn python() -> std::path::PathBuf {
    let venv = std::env::var("RIDE_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            let cache = std::env::var("RIDE_CACHE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|_| {
                    std::path::PathBuf::from(std::env::var("HOME").expect("HOME"))
                        .join(".cache/ride")
                });
            cache.join("venv")
        });
    venv.join("bin/python")
}

struct Rendered {
    lint: Value,
    objects: Vec<Value>,
    crds: Vec<Value>,
}

fn render(values: &str) -> Rendered {
    let out = std::process::Command::new(python())
        .arg(repo().join("charts/render.py"))
        .arg(repo().join("charts/ride-operator"))
        .arg(values)
        .output()
        .expect("the project's Python (run scripts/setup.sh)");
    assert!(
        out.status.success(),
        "charts/render.py failed (is helm-python-sdk installed? scripts/setup.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON from render.py");
    let mut objects = vec![];
    for (path, text) in v["manifests"].as_object().expect("manifests") {
        for doc in text.as_str().unwrap_or_default().split("\n---") {
            if doc.trim().is_empty()
                || doc
                    .lines()
                    .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            {
                continue;
            }
            let obj: Value =
                serde_norway::from_str(doc).unwrap_or_else(|e| panic!("{path}: {e}\n{doc}"));
            if !obj.is_null() {
                objects.push(obj);
            }
        }
    }
    let crds = v["crds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| serde_norway::from_str(c["data"].as_str().unwrap_or_default()).expect("CRD YAML"))
        .collect();
    Rendered {
        lint: v["lint"].clone(),
        objects,
        crds,
    }
}

fn kinds(r: &Rendered) -> Vec<String> {
    r.objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn find<'a>(r: &'a Rendered, kind: &str) -> &'a Value {
    r.objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {:?}", kinds(r)))
}

/// ClusterRoles that are not the operator's own: the metrics endpoint's
/// and the tenants' aggregated ones.
fn helper_role(o: &Value) -> bool {
    let name = o["metadata"]["name"].as_str().unwrap_or_default();
    name.contains("-metrics-")
        || name.contains("-ridetrainings-")
        || name.ends_with("-nodes-reader")
}

/// The ClusterRole whose name ends with `suffix`.
fn cluster_role_ending<'a>(r: &'a Rendered, suffix: &str) -> &'a Value {
    r.objects
        .iter()
        .find(|o| {
            o["kind"] == "ClusterRole"
                && o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with(suffix)
        })
        .unwrap_or_else(|| panic!("no ClusterRole ending in {suffix} in {:?}", kinds(r)))
}

/// The operator's own ClusterRole (not the metrics or tenant ones).
fn operator_cluster_role(r: &Rendered) -> &Value {
    r.objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && !helper_role(o))
        .unwrap_or_else(|| panic!("no operator ClusterRole in {:?}", kinds(r)))
}

fn args(r: &Rendered) -> Vec<String> {
    find(r, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// (apiGroup, resource, verb) the controller needs, from what it calls.
const NEEDED: &[(&str, &str, &str)] = &[
    ("ride.dev", "ridetrainings", "get"),
    ("ride.dev", "ridetrainings", "list"),
    ("ride.dev", "ridetrainings", "watch"),
    ("ride.dev", "ridetrainings", "delete"),
    ("ride.dev", "ridetrainings/status", "patch"),
    ("ride.dev", "ridetrainings/finalizers", "update"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods", "patch"),
    ("", "pods", "create"),
    ("", "pods", "delete"),
    ("", "services", "get"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("", "services", "patch"),
    ("", "services", "create"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
    ("scheduling.x-k8s.io", "podgroups", "get"),
    ("scheduling.x-k8s.io", "podgroups", "create"),
    ("scheduling.x-k8s.io", "podgroups", "patch"),
    ("scheduling.k8s.io", "podgroups", "get"),
    ("scheduling.k8s.io", "podgroups", "list"),
    ("scheduling.k8s.io", "podgroups", "create"),
    ("scheduling.k8s.io", "podgroups", "patch"),
    ("scheduling.k8s.io", "podgroups", "delete"),
    ("kueue.x-k8s.io", "workloads", "get"),
];

fn granted(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for g in rule["apiGroups"].as_array().into_iter().flatten() {
            for res in rule["resources"].as_array().into_iter().flatten() {
                for verb in rule["verbs"].as_array().into_iter().flatten() {
                    out.insert((
                        g.as_str().unwrap().to_string(),
                        res.as_str().unwrap().to_string(),
                        verb.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn default_install_is_lint_clean_with_crd_rbac_and_leader_election() {
    let r = render("{}");
    let messages = r.lint["messages"].as_array().cloned().unwrap_or_default();
    let problems: Vec<&Value> = messages
        .iter()
        .filter(|m| m["severity"].as_i64().unwrap_or(0) >= 2)
        .collect();
    assert!(problems.is_empty(), "helm lint: {problems:?}");
    assert!(
        r.lint["errors"].as_array().is_none_or(|e| e.is_empty()),
        "{}",
        r.lint
    );

    let generated: Value = serde_norway::from_str(&ride_operator::crd_yaml().unwrap()).unwrap();
    assert_eq!(r.crds.len(), 1);
    assert!(
        r.crds[0] == generated,
        "charts/ride-operator/crds/ is out of date: cp crds/ridetrainings.ride.dev.yaml charts/ride-operator/crds/"
    );

    let role = operator_cluster_role(&r);
    let have = granted(role);
    for (g, res, verb) in NEEDED {
        assert!(
            have.contains(&(g.to_string(), res.to_string(), verb.to_string())),
            "ClusterRole lacks {verb} {res} in '{g}'"
        );
    }
    // Nothing beyond what the controller calls; no Secrets above all.
    let needed: BTreeSet<(String, String, String)> = NEEDED
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let extra: Vec<_> = have.difference(&needed).collect();
    assert!(
        extra.is_empty(),
        "ClusterRole grants more than needed: {extra:?}"
    );
    // Nodes: read only, for lost-node recovery.
    let nodes = granted(cluster_role_ending(&r, "-nodes-reader"));
    let read: BTreeSet<(String, String, String)> = ["get", "list", "watch"]
        .iter()
        .map(|v| (String::new(), "nodes".to_string(), v.to_string()))
        .collect();
    assert_eq!(nodes, read);
    let leader = r
        .objects
        .iter()
        .find(|o| o["kind"] == "Role")
        .expect("leader Role");
    assert!(granted(leader).contains(&(
        "coordination.k8s.io".into(),
        "leases".into(),
        "update".into()
    )));

    let a = args(&r);
    assert!(
        a.contains(&"--lease-name=ride-operator".to_string()),
        "{a:?}"
    );
    assert!(!a.iter().any(|x| x.starts_with("--namespace")), "{a:?}");
    let dep = find(&r, "Deployment");
    assert_eq!(dep["spec"]["replicas"], 2);
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(!kinds(&r).contains(&"ServiceMonitor".to_string()));
}

#[test]
fn one_namespace_without_leader_election_gets_a_role_and_one_replica() {
    let r = render(r#"{"watchNamespace": "team-a", "leaderElection": {"enabled": false}}"#);
    // Only the metrics endpoint's reviews and the node reader are
    // cluster-wide (they are cluster-scoped APIs).
    let cluster_roles: Vec<&Value> = r
        .objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .collect();
    assert!(
        cluster_roles.iter().all(|o| helper_role(o)),
        "{:?}",
        kinds(&r)
    );
    assert!(
        cluster_roles.iter().any(|o| o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .ends_with("-nodes-reader")),
        "lost-node recovery reads nodes in one namespace too"
    );
    let role = r
        .objects
        .iter()
        .find(|o| o["kind"] == "Role")
        .expect("Role");
    assert_eq!(role["metadata"]["namespace"], "team-a");
    let a = args(&r);
    assert!(a.contains(&"--namespace=team-a".to_string()), "{a:?}");
    assert!(a.contains(&"--no-leader-election".to_string()), "{a:?}");
    assert_eq!(find(&r, "Deployment")["spec"]["replicas"], 1);
}

#[test]
fn monitoring_objects_and_dashboard_use_exported_metrics() {
    let r = render(
        r#"{"metrics": {"serviceMonitor": {"enabled": true}}, "grafanaDashboard": {"enabled": true}}"#,
    );
    let k = kinds(&r);
    assert!(
        k.contains(&"ServiceMonitor".to_string()) && k.contains(&"PodMonitor".to_string()),
        "{k:?}"
    );
    let cm = r
        .objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("dashboard ConfigMap");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["ride-trainings.json"].as_str().unwrap())
            .expect("dashboard JSON");
    // Every ride_* series the dashboard queries is documented (docs/metrics.md
    // lists both the trainer's and the operator's metrics).
    let reference = std::fs::read_to_string(repo().join("docs/metrics.md")).unwrap();
    let mut used = BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("ride_") {
                    let base = word
                        .trim_end_matches("_bucket")
                        .trim_end_matches("_count")
                        .trim_end_matches("_sum");
                    used.insert(base.to_string());
                }
            }
        }
    }
    assert!(used.len() >= 8, "{used:?}");
    // A training is selected exactly, never by a pod-name pattern that
    // would also match `ride-tiny-2e` when asking for `ride-tiny`.
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(!expr.contains("=~"), "pattern match in {expr}");
            if expr.contains("ride_operator_training_") {
                assert!(expr.contains(r#"name="$training""#), "{expr}");
            } else if !expr.contains("ride_operator_") {
                assert!(
                    expr.contains(r#"namespace="$namespace", training="$training""#),
                    "{expr}"
                );
            }
        }
    }
    // The PodMonitor gives the trainer series those labels; the operator's
    // own namespace label must not overwrite the trainings' one.
    let pm = find(&r, "PodMonitor");
    let relabel = &pm["spec"]["podMetricsEndpoints"][0]["relabelings"];
    for (source, target) in [
        ("__meta_kubernetes_pod_label_ride_dev_training", "training"),
        ("__meta_kubernetes_pod_label_ride_dev_rank", "rank"),
    ] {
        assert!(
            relabel
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["sourceLabels"][0] == source && r["targetLabel"] == target),
            "{relabel}"
        );
    }
    // Every rank's port, not only the first (pods with several GPUs).
    let keep = relabel
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "keep")
        .expect("a keep on the port name");
    let re = regex::Regex::new(&format!("^(?:{})$", keep["regex"].as_str().unwrap())).unwrap();
    for port in ride_operator::pods::metrics_ports(4) {
        assert!(re.is_match(port.name.as_deref().unwrap()), "{port:?}");
    }
    assert!(!re.is_match("rendezvous"));
    assert!(
        pm["spec"]["podMetricsEndpoints"][0]["port"].is_null(),
        "{pm}"
    );
    assert_eq!(
        find(&r, "ServiceMonitor")["spec"]["endpoints"][0]["honorLabels"],
        true
    );
    for m in &used {
        assert!(
            reference.contains(&format!("`{m}`")),
            "dashboard uses {m}, which docs/metrics.md does not list"
        );
    }
    // And the operator really exports its own.
    let exported = ride_operator::metrics::OperatorMetrics::new().metric_names();
    for m in used.iter().filter(|m| m.starts_with("ride_operator_")) {
        assert!(exported.contains(m), "the operator does not export {m}");
    }
}

#[test]
fn several_replicas_get_a_disruption_budget_spread_and_a_seccomp_profile() {
    let r = render("{}");
    let pdb = find(&r, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let pod = &find(&r, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
            ["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    // Cluster-scoped names carry the namespace (two releases named alike).
    assert_eq!(
        operator_cluster_role(&r)["metadata"]["name"],
        "ride-system-ride"
    );
    let one = render(r#"{"replicas": 1}"#);
    assert!(!kinds(&one).contains(&"PodDisruptionBudget".to_string()));
    assert!(
        find(&one, "Deployment")["spec"]["template"]["spec"]["affinity"].is_null(),
        "no spreading rule for one replica"
    );
}

#[test]
fn the_real_helm_checks_values_against_the_schema() {
    let helm = common::k8s_bin().join("helm");
    assert!(
        helm.is_file(),
        "{} missing: run scripts/k8s-tools.sh (scripts/test.sh does)",
        helm.display()
    );
    let template = |set: &[&str]| {
        let mut cmd = std::process::Command::new(&helm);
        cmd.args(["template", "ride"])
            .arg(repo().join("charts/ride-operator"))
            .args(["-n", "ride-system"]);
        for s in set {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().expect("run helm");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = template(&[]);
    assert!(ok, "{err}");
    for (bad, field) in [
        ("logFormat=xml", "logFormat"),
        ("replicas=-1", "replicas"),
        ("replica=2", "replica"),
        ("metrics.port=70000", "port"),
    ] {
        let (ok, err) = template(&[bad]);
        assert!(!ok, "helm accepted {bad}");
        assert!(err.contains(field), "{bad}: {err}");
    }
}

/// The PrometheusRule the chart renders (default thresholds) passes
/// `promtool check rules` and the unit tests in `charts/alerts.test.yaml`.
#[test]
fn alerts_pass_their_promtool_unit_tests() {
    let r = render(r#"{"alerts": {"enabled": true}}"#);
    let rule = find(&r, "PrometheusRule");
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_norway::to_string(&rule["spec"]).unwrap()).unwrap();
    let tests = dir.path().join("alerts.test.yaml");
    std::fs::copy(repo().join("charts/alerts.test.yaml"), &tests).unwrap();
    let promtool = |args: &[&str]| {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("promtool (scripts/prometheus.sh install)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        text
    };
    let checked = promtool(&["check", "rules", "rules.yaml"]);
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    println!("{}", promtool(&["test", "rules", "alerts.test.yaml"]));
    // Every alert has a unit test.
    let test_text = std::fs::read_to_string(&tests).unwrap();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            let name = r["alert"].as_str().unwrap();
            assert!(
                test_text.contains(&format!("alertname: {name}")),
                "{name} has no test"
            );
        }
    }
    // Off by default.
    let k = kinds(&render("{}"));
    assert!(!k.contains(&"PrometheusRule".to_string()), "{k:?}");
}

/// One version everywhere: the crates, the chart's appVersion (the default
/// operator image tag) and the trainer image in every example, which is the
/// tag `scripts/images.sh` gives the images it builds.
#[test]
fn the_crate_version_is_the_image_tag_everywhere() {
    let version = env!("CARGO_PKG_VERSION");
    let chart = std::fs::read_to_string(repo().join("charts/ride-operator/Chart.yaml")).unwrap();
    assert!(
        chart.contains(&format!("appVersion: \"{version}\"")),
        "Chart.yaml appVersion is not {version}:\n{chart}"
    );
    let mut examples = 0;
    for entry in std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        for line in text.lines().filter(|l| l.contains("ride-trainer:")) {
            assert!(
                line.trim_end()
                    .ends_with(&format!("/ride-trainer:{version}")),
                "{}: {line}",
                entry.path().display()
            );
            examples += 1;
        }
    }
    assert!(examples >= 5, "{examples}");
    let out = std::process::Command::new(repo().join("scripts/images.sh"))
        .arg("tag")
        .output()
        .unwrap();
    let tags = String::from_utf8_lossy(&out.stdout);
    assert_eq!(tags.split_whitespace().next(), Some(version), "{tags}");
}

#[test]
fn the_pod_policy_values_reach_the_operator_and_its_admission_policy() {
    let r = render("{}");
    let a = args(&r);
    assert!(
        a.contains(&"--pod-security=restricted".to_string()),
        "{a:?}"
    );
    assert!(
        !a.iter().any(|x| x.starts_with("--allow-host-path")),
        "{a:?}"
    );
    let policy = find(&r, "ValidatingAdmissionPolicy");
    let binding = find(&r, "ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"][0], "Deny");
    let rules = policy["spec"]["validations"].to_string();
    assert!(rules.contains("allowPrivilegeEscalation"), "{rules}");

    let loose = render(
        r#"{"podSecurity": "baseline", "watchNamespace": "team-a",
            "podPolicy": {"hostPathPrefixes": ["/data"], "priorityClasses": ["high"], "tolerationKeys": ["*"]}}"#,
    );
    let a = args(&loose);
    for flag in [
        "--pod-security=baseline",
        "--allow-host-path-datasets=/data",
        "--allowed-priority-classes=high",
        "--allowed-toleration-keys=*",
    ] {
        assert!(a.contains(&flag.to_string()), "{flag} in {a:?}");
    }
    let policy = find(&loose, "ValidatingAdmissionPolicy");
    let rules = policy["spec"]["validations"].to_string();
    // Baseline lets a container escalate and run as root; the lists are in.
    assert!(!rules.contains("allowPrivilegeEscalation"), "{rules}");
    assert!(rules.contains("privileged"), "{rules}");
    assert!(rules.contains(r#"[\"high\"]"#), "{rules}");
    assert!(
        policy["spec"]["variables"].to_string().contains("/data"),
        "{policy}"
    );
    let binding = find(&loose, "ValidatingAdmissionPolicyBinding");
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]
            ["kubernetes.io/metadata.name"],
        "team-a"
    );

    let off = render(r#"{"podPolicy": {"admission": false}}"#);
    assert!(!kinds(&off).contains(&"ValidatingAdmissionPolicy".to_string()));
}

#[test]
fn metrics_are_served_over_tls_to_the_metrics_reader_role() {
    let r = render(
        r#"{"metrics": {"serviceMonitor": {"enabled": true, "readerServiceAccount": {"name": "prometheus", "namespace": "monitoring"}}}}"#,
    );
    let a = args(&r);
    assert!(
        a.contains(&"--secure-metrics-addr=0.0.0.0:8443".to_string()),
        "{a:?}"
    );
    assert!(!a.contains(&"--insecure-metrics".to_string()), "{a:?}");
    let auth = cluster_role_ending(&r, "-metrics-auth");
    let have = granted(auth);
    assert!(have.contains(&(
        "authentication.k8s.io".into(),
        "tokenreviews".into(),
        "create".into()
    )));
    assert!(have.contains(&(
        "authorization.k8s.io".into(),
        "subjectaccessreviews".into(),
        "create".into()
    )));
    let reader = cluster_role_ending(&r, "-metrics-reader");
    assert_eq!(reader["rules"][0]["nonResourceURLs"][0], "/metrics");
    let bound = r
        .objects
        .iter()
        .find(|o| {
            o["kind"] == "ClusterRoleBinding" && o["roleRef"]["name"] == reader["metadata"]["name"]
        })
        .expect("Prometheus bound to metrics-reader");
    assert_eq!(bound["subjects"][0]["name"], "prometheus");
    let monitor = find(&r, "ServiceMonitor");
    let ep = &monitor["spec"]["endpoints"][0];
    assert_eq!(ep["port"], "https-metrics");
    assert_eq!(ep["scheme"], "https");
    let svc = r
        .objects
        .iter()
        .find(|o| o["kind"] == "Service")
        .expect("the metrics Service");
    let ports: Vec<&str> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["https-metrics"]);
    let insecure = render(r#"{"metrics": {"insecure": true}}"#);
    assert!(args(&insecure).contains(&"--insecure-metrics".to_string()));
}

#[test]
fn tenants_get_ridetrainings_through_the_built_in_edit_and_view_roles() {
    let r = render("{}");
    let role = |suffix: &str| cluster_role_ending(&r, suffix);
    let edit = role("-ridetrainings-edit");
    let labels = &edit["metadata"]["labels"];
    assert_eq!(
        labels["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    assert_eq!(
        labels["rbac.authorization.k8s.io/aggregate-to-admin"],
        "true"
    );
    assert!(granted(edit).contains(&("ride.dev".into(), "ridetrainings".into(), "create".into())));
    let view = role("-ridetrainings-view");
    assert_eq!(
        view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    let verbs: BTreeSet<String> = granted(view).into_iter().map(|(_, _, v)| v).collect();
    assert_eq!(
        verbs,
        BTreeSet::from(["get".into(), "list".into(), "watch".into()])
    );
    let off = render(r#"{"tenantRoles": {"enabled": false}}"#);
    assert!(!off.objects.iter().any(|o| o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .contains("-ridetrainings-")));
}
