//! A test double of the Kubernetes API server, over HTTP on loopback.
//!
//! No real API server can be installed on these machines, so the controller's
//! integration tests, the end-to-end test and the reconcile benchmark talk to
//! this. It honours what the controller and `kubectl` rely on:
//!
//! - discovery (`/api`, `/apis`, group versions, short names, `/version`);
//! - CRDs: creating a `CustomResourceDefinition` serves its resource, with its
//!   structural schema checked on writes (types, required, enum, minimum,
//!   maximum, minLength, minItems, pattern, CEL `x-kubernetes-validations`
//!   through `kube-cel`; unknown fields pruned, or rejected under
//!   `fieldValidation=Strict`), its status subresource and its printer
//!   columns (`kubectl get` asks for a Table);
//! - list and watch with resource versions: a watch from version N replays
//!   every change after N, then streams new ones; label selectors with
//!   `k`, `!k`, `k=v`, `k!=v`;
//! - create, get, replace (optimistic concurrency on `resourceVersion`),
//!   JSON merge patch, strategic merge patch (treated as merge patch, which
//!   is what it is for custom resources), server-side apply (create or merge
//!   the applied fields; field ownership is not tracked), the status
//!   subresource (writes to it change only `.status`; writes to the main
//!   resource leave `.status` alone), `metadata.generation`;
//! - delete with graceful termination for pods bound to a node (the
//!   deletion timestamp is set and the kubelet, here the node-agent double,
//!   finishes it with a zero grace period), finalizers, and owner-reference
//!   garbage collection (dependents of a removed object are deleted).
//!
//! Not modelled: authentication and RBAC, admission webhooks, defaulting
//! from schemas, field selectors, pagination (lists return everything),
//! watch bookmarks, the 410 Gone of an expired resource version.

#![allow(dead_code)]
// Handlers return ready HTTP responses as errors; their size does not matter here.
#![allow(clippy::result_large_err)]

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One served resource type.
#[derive(Clone, Debug)]
pub struct ResourceDef {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub status_subresource: bool,
    /// (name, type, jsonPath)
    pub printer_columns: Vec<(String, String, String)>,
    pub schema: Option<Value>,
}

impl ResourceDef {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        status: bool,
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: vec![],
            status_subresource: status,
            printer_columns: vec![],
            schema: None,
        }
    }

    /// "group/version/plural", the key objects are stored under.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.group, self.version, self.plural)
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    resource: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    uid: u64,
    resources: Vec<ResourceDef>,
    objects: HashMap<String, BTreeMap<(String, String), Value>>,
    log: Vec<Change>,
    requests: u64,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
}

/// The running double.
pub struct ApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn status_error(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// Whether `labels` match a selector like `a=b,c!=d,e,!f`.
pub fn selector_matches(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
            if let Some((k, v)) = term.split_once("!=") {
                get(k) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                get(k) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                get(k).is_none()
            } else {
                get(term).is_some()
            }
        })
}

/// Age as kubectl shows it.
fn human_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10799 => format!("{}m", s / 60),
        10800..=172799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .try_fold(obj, |v, k| v.get(k))
}

/// Check `value` against a structural schema; collect errors and unknown fields.
fn validate(
    value: &Value,
    schema: &Value,
    path: &str,
    errors: &mut Vec<String>,
    unknown: &mut Vec<String>,
) {
    if value.is_null() {
        if !schema
            .get("nullable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            && !path.is_empty()
        {
            errors.push(format!(
                "{path}: Invalid value: \"null\": {path} in body must not be null"
            ));
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(format!(
                "{path}: Invalid value: {value}: {path} in body must be of type int-or-string"
            ));
        }
        return;
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        let fits = any.iter().any(|s| {
            let (mut e, mut u) = (vec![], vec![]);
            validate(value, s, path, &mut e, &mut u);
            e.is_empty()
        });
        if !fits {
            errors.push(format!(
                "{path}: Invalid value: {value}: does not match any allowed form"
            ));
        }
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let type_ok = match ty {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        let got = match value {
            Value::Object(_) => "object",
            Value::Array(_) => "array",
            Value::String(_) => "string",
            Value::Number(_) => "number",
            Value::Bool(_) => "boolean",
            Value::Null => "null",
        };
        errors.push(format!(
            "{path}: Invalid value: \"{got}\": {path} in body must be of type {}: \"{got}\"",
            ty.unwrap_or("?")
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
            errors.push(format!(
                "{path}: Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ));
        }
    }
    if let (Some(min), Some(x)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) {
        if x < min {
            errors.push(format!("{path}: Invalid value: {value}: {path} in body should be greater than or equal to {min}"));
        }
    }
    if let (Some(max), Some(x)) = (
        schema.get("maximum").and_then(Value::as_f64),
        value.as_f64(),
    ) {
        if x > max {
            errors.push(format!("{path}: Invalid value: {value}: {path} in body should be less than or equal to {max}"));
        }
    }
    if let (Some(min), Some(s)) = (
        schema.get("minLength").and_then(Value::as_u64),
        value.as_str(),
    ) {
        if (s.chars().count() as u64) < min {
            errors.push(format!("{path}: Invalid value: {value}: {path} in body should be at least {min} chars long"));
        }
    }
    if let (Some(pattern), Some(text)) = (
        schema.get("pattern").and_then(Value::as_str),
        value.as_str(),
    ) {
        let fits = regex::Regex::new(pattern)
            .map(|re| re.is_match(text))
            .unwrap_or(false);
        if !fits {
            errors.push(format!(
                "{path}: Invalid value: {value}: {path} in body should match '{pattern}'"
            ));
        }
    }
    if let Value::Array(items) = value {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (items.len() as u64) < min {
                errors.push(format!(
                    "{path}: Invalid value: {}: {path} in body should have at least {min} items",
                    items.len()
                ));
            }
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(item, item_schema, &format!("{path}[{i}]"), errors, unknown);
            }
        }
    }
    if let Value::Object(fields) = value {
        let props = schema.get("properties").and_then(Value::as_object);
        if let Some(req) = schema.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !fields.contains_key(r) {
                    let p = if path.is_empty() {
                        r.to_string()
                    } else {
                        format!("{path}.{r}")
                    };
                    errors.push(format!("{p}: Required value"));
                }
            }
        }
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        for (k, v) in fields {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if let Some(s) = props.and_then(|m| m.get(k)) {
                validate(v, s, &p, errors, unknown);
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                validate(v, s, &p, errors, unknown);
            } else if props.is_some()
                && !preserve
                && !(path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&k.as_str()))
            {
                unknown.push(p);
            }
        }
    }
}

/// Remove the `unknown` dotted paths (array indices included) from `value`.
fn prune(value: &mut Value, unknown: &[String]) {
    fn remove(value: &mut Value, parts: &[&str]) {
        match parts {
            [] => {}
            [last] => {
                if let Some(m) = value.as_object_mut() {
                    m.remove(*last);
                }
            }
            [first, rest @ ..] => {
                let (key, idx) = match first.split_once('[') {
                    Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
                    None => (*first, None),
                };
                let Some(next) = value.get_mut(key) else {
                    return;
                };
                let next = match idx {
                    Some(i) => match next.get_mut(i) {
                        Some(n) => n,
                        None => return,
                    },
                    None => next,
                };
                remove(next, rest);
            }
        }
    }
    for path in unknown {
        let parts: Vec<&str> = path.split('.').collect();
        remove(value, &parts);
    }
}

impl Store {
    fn builtins() -> Vec<ResourceDef> {
        vec![
            ResourceDef::builtin("", "v1", "pods", "Pod", true, true),
            ResourceDef::builtin("", "v1", "services", "Service", true, true),
            ResourceDef::builtin("", "v1", "secrets", "Secret", true, false),
            ResourceDef::builtin("", "v1", "events", "Event", true, false),
            ResourceDef::builtin("", "v1", "namespaces", "Namespace", false, true),
            ResourceDef::builtin("events.k8s.io", "v1", "events", "Event", true, false),
            ResourceDef::builtin("coordination.k8s.io", "v1", "leases", "Lease", true, false),
            ResourceDef::builtin(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                true,
            ),
        ]
    }

    fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    fn record(
        &mut self,
        tx: &broadcast::Sender<Change>,
        resource: &str,
        kind: &'static str,
        object: Value,
    ) {
        let change = Change {
            rv: self.rv,
            resource: resource.into(),
            kind,
            object,
        };
        self.log.push(change.clone());
        let _ = tx.send(change);
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Register the resources a CRD defines.
    fn register_crd(&mut self, crd: &Value) {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default().to_string();
        let names = &spec["names"];
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            let def = ResourceDef {
                group: group.clone(),
                version: v["name"].as_str().unwrap_or_default().into(),
                plural: names["plural"].as_str().unwrap_or_default().into(),
                singular: names["singular"].as_str().unwrap_or_default().into(),
                kind: names["kind"].as_str().unwrap_or_default().into(),
                namespaced: spec["scope"].as_str() == Some("Namespaced"),
                short_names: names["shortNames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect(),
                status_subresource: v["subresources"]["status"].is_object(),
                printer_columns: v["additionalPrinterColumns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        (
                            c["name"].as_str().unwrap_or_default().into(),
                            c["type"].as_str().unwrap_or("string").into(),
                            c["jsonPath"].as_str().unwrap_or_default().into(),
                        )
                    })
                    .collect(),
                schema: Some(v["schema"]["openAPIV3Schema"].clone()),
            };
            self.resources.retain(|r| r.id() != def.id());
            self.resources.push(def);
        }
    }

    /// Remove an object for good and garbage-collect what it owned.
    fn remove(&mut self, tx: &broadcast::Sender<Change>, res: &str, key: &(String, String)) {
        let Some(mut obj) = self.objects.get_mut(res).and_then(|m| m.remove(key)) else {
            return;
        };
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.record(tx, res, "DELETED", obj);
        // Background cascading deletion of dependents.
        let mut dependents = vec![];
        for (r, objs) in &self.objects {
            for (k, o) in objs {
                let owned = o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| {
                        refs.iter().any(|x| x["uid"].as_str() == Some(uid.as_str()))
                    });
                if owned {
                    dependents.push((r.clone(), k.clone()));
                }
            }
        }
        for (r, k) in dependents {
            self.delete(tx, &r, &k, None);
        }
    }

    /// Delete as the API server does: graceful for pods on a node, finalizers honoured.
    fn delete(
        &mut self,
        tx: &broadcast::Sender<Change>,
        res: &str,
        key: &(String, String),
        grace: Option<i64>,
    ) -> Option<Value> {
        let obj = self.objects.get(res)?.get(key)?.clone();
        let on_node = res == "/v1/pods" && obj["spec"]["nodeName"].is_string();
        let finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let grace = grace.unwrap_or_else(|| {
            obj["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30)
        });
        if (on_node && grace > 0) || finalizers {
            let already = obj["metadata"]["deletionTimestamp"].is_string();
            let rv = self.next_rv();
            let o = self.objects.get_mut(res)?.get_mut(key)?;
            if !already {
                o["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            }
            o["metadata"]["deletionGracePeriodSeconds"] = json!(if on_node { grace } else { 0 });
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
            let o = o.clone();
            self.record(tx, res, "MODIFIED", o.clone());
            return Some(o);
        }
        self.remove(tx, res, key);
        Some(obj)
    }

    /// Store a new version of an object (create when `created`).
    fn put(
        &mut self,
        tx: &broadcast::Sender<Change>,
        def: &ResourceDef,
        key: (String, String),
        mut obj: Value,
        created: bool,
    ) -> Value {
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if created {
            self.uid += 1;
            obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid));
            obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
            if def.status_subresource && !def.group.is_empty() {
                obj["metadata"]["generation"] = json!(1);
            }
        }
        obj["apiVersion"] = json!(def.api_version());
        obj["kind"] = json!(def.kind);
        if def.namespaced {
            obj["metadata"]["namespace"] = json!(key.0);
        }
        let finished = obj["metadata"]["deletionTimestamp"].is_string()
            && obj["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty())
            && !(def.id() == "/v1/pods" && obj["spec"]["nodeName"].is_string());
        if def.id() == "apiextensions.k8s.io/v1/customresourcedefinitions" {
            self.register_crd(&obj);
        }
        self.objects
            .entry(def.id())
            .or_default()
            .insert(key.clone(), obj.clone());
        self.record(
            tx,
            &def.id(),
            if created { "ADDED" } else { "MODIFIED" },
            obj.clone(),
        );
        if finished {
            self.remove(tx, &def.id(), &key);
        }
        obj
    }
}

/// What a request addresses.
struct Target {
    def: ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_target(store: &Store, path: &str) -> Result<Target, Response> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return Err(status_error(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ))
        }
    };
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() && tail != ["status"] => {
            (Some(ns.to_string()), tail)
        }
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [p] => (*p, None, false),
        [p, n] => (*p, Some(n.to_string()), false),
        [p, n, "status"] => (*p, Some(n.to_string()), true),
        _ => {
            return Err(status_error(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ))
        }
    };
    let def = store.find(group, version, plural).ok_or_else(|| {
        status_error(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    })?;
    if status && !def.status_subresource {
        return Err(status_error(
            404,
            "NotFound",
            format!("{} has no status subresource", def.plural),
        ));
    }
    Ok(Target {
        def,
        namespace,
        name,
        status,
    })
}

fn query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), url_decode(v))
        })
        .collect()
}

fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn discovery_list(store: &Store, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = store
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(|r| {
            let mut v = vec![json!({
                "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                "kind": r.kind, "shortNames": r.short_names,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            })];
            if r.status_subresource {
                v.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": ["get", "patch", "update"]}));
            }
            v
        })
        .collect();
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn group_list(store: &Store) -> Value {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in store.resources.iter().filter(|r| !r.group.is_empty()) {
        let vs = groups.entry(r.group.clone()).or_default();
        if !vs.contains(&r.version) {
            vs.push(r.version.clone());
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": versions, "preferredVersion": versions[0].clone()})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The OpenAPI v3 index kubectl reads to find a group version's document.
fn openapi_index(store: &Store) -> Value {
    let mut paths = Map::new();
    for r in &store.resources {
        let gv = if r.group.is_empty() {
            format!("api/{}", r.version)
        } else {
            format!("apis/{}/{}", r.group, r.version)
        };
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash=1")}),
        );
    }
    json!({"paths": paths})
}

/// A group version's OpenAPI v3 document: each resource's PATCH operation
/// (tagged with its kind and accepting `fieldValidation`, so kubectl leaves
/// validation to the server) and, for custom resources, the schema.
fn openapi_group(store: &Store, group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in store
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
        let prefix = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let item = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        ]);
        paths.insert(item, json!({
            "patch": {"x-kubernetes-group-version-kind": gvk[0].clone(), "x-kubernetes-action": "patch",
                      "parameters": params, "responses": {"200": {"description": "OK"}}},
        }));
        if let Some(schema) = &r.schema {
            let reversed: Vec<&str> = r.group.split('.').rev().collect();
            let mut schema = schema.clone();
            schema["x-kubernetes-group-version-kind"] = gvk;
            schemas.insert(
                format!("{}.{}.{}", reversed.join("."), r.version, r.kind),
                schema,
            );
        }
    }
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.33.0"},
           "paths": paths, "components": {"schemas": schemas}})
}

fn table(def: &ResourceDef, items: &[Value], rv: u64) -> Value {
    let now = jiff::Timestamp::now().as_second();
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}),
    ];
    let mut paths = vec![];
    if def.printer_columns.is_empty() {
        columns.push(
            json!({"name": "Age", "type": "date", "format": "", "description": "", "priority": 0}),
        );
        paths.push((
            "date".to_string(),
            ".metadata.creationTimestamp".to_string(),
        ));
    }
    for (name, ty, path) in &def.printer_columns {
        columns.push(
            json!({"name": name, "type": ty, "format": "", "description": "", "priority": 0}),
        );
        paths.push((ty.clone(), path.clone()));
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for (ty, path) in &paths {
                let v = json_path(o, path).cloned().unwrap_or(Value::Null);
                let cell = match (ty.as_str(), v.as_str()) {
                    ("date", Some(t)) => t
                        .parse::<jiff::Timestamp>()
                        .map(|t| json!(human_age(now - t.as_second())))
                        .unwrap_or(Value::Null),
                    _ => v,
                };
                cells.push(cell);
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()},
           "columnDefinitions": columns, "rows": rows})
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, Response> {
    let _ = headers;
    serde_json::from_slice(body)
        .or_else(|_| serde_norway::from_slice::<Value>(body))
        .map_err(|e| status_error(400, "BadRequest", format!("cannot parse the body: {e}")))
}

fn matches_change(c: &Change, def_id: &str, ns: &Option<String>, selector: &str) -> bool {
    c.resource == def_id
        && ns
            .as_ref()
            .is_none_or(|n| c.object["metadata"]["namespace"].as_str() == Some(n))
        && selector_matches(selector, &c.object["metadata"]["labels"])
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let q = query(&uri);
    let mut store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    store.requests += 1;
    match path.as_str() {
        "/version" => {
            return ok_json(
                200,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-ride-test-double",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-11-29T00:00:00Z",
                "goVersion": "", "compiler": "", "platform": "linux/amd64"}),
            )
        }
        "/api" => {
            return ok_json(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            )
        }
        "/apis" => return ok_json(200, &group_list(&store)),
        _ => {}
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["openapi", "v3"] => return ok_json(200, &openapi_index(&store)),
        ["openapi", "v3", "api", v] => return ok_json(200, &openapi_group(&store, "", v)),
        ["openapi", "v3", "apis", g, v] => return ok_json(200, &openapi_group(&store, g, v)),
        ["api", v] => return ok_json(200, &discovery_list(&store, "", v)),
        ["apis", g, v] => return ok_json(200, &discovery_list(&store, g, v)),
        _ => {}
    }
    let t = match parse_target(&store, &path) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let def_id = t.def.id();
    let ns = if t.def.namespaced {
        t.namespace.clone()
    } else {
        None
    };
    let tx = shared.changes.clone();
    let noun = format!(
        "{}{}",
        t.def.plural,
        if t.def.group.is_empty() {
            String::new()
        } else {
            format!(".{}", t.def.group)
        }
    );
    let not_found =
        |name: &str| status_error(404, "NotFound", format!("{noun} \"{name}\" not found"));
    match (method, &t.name) {
        (Method::GET, None) => {
            let selector = q.get("labelSelector").cloned().unwrap_or_default();
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
                let from: u64 = q
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let timeout = q
                    .get("timeoutSeconds")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1800u64);
                let mut rx = shared.changes.subscribe();
                let replay: Vec<Change> = if from == 0 {
                    store
                        .objects
                        .get(&def_id)
                        .into_iter()
                        .flat_map(|m| m.values())
                        .map(|o| Change {
                            rv: store.rv,
                            resource: def_id.clone(),
                            kind: "ADDED",
                            object: o.clone(),
                        })
                        .filter(|c| matches_change(c, &def_id, &ns, &selector))
                        .collect()
                } else {
                    store
                        .log
                        .iter()
                        .filter(|c| c.rv > from && matches_change(c, &def_id, &ns, &selector))
                        .cloned()
                        .collect()
                };
                let upto = store.rv;
                drop(store);
                let (out, stream_rx) =
                    tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
                tokio::spawn(async move {
                    let line = |c: &Change| {
                        Bytes::from(format!("{}\n", json!({"type": c.kind, "object": c.object})))
                    };
                    for c in &replay {
                        if out.send(Ok(line(c))).await.is_err() {
                            return;
                        }
                    }
                    let deadline =
                        tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
                    loop {
                        let next = tokio::time::timeout_at(deadline, rx.recv()).await;
                        match next {
                            Err(_) => return,
                            Ok(Err(broadcast::error::RecvError::Closed)) => return,
                            // A slow watcher would miss changes: end the watch so the client relists.
                            Ok(Err(broadcast::error::RecvError::Lagged(_))) => return,
                            Ok(Ok(c)) => {
                                if c.rv > upto
                                    && matches_change(&c, &def_id, &ns, &selector)
                                    && out.send(Ok(line(&c))).await.is_err()
                                {
                                    return;
                                }
                            }
                        }
                    }
                });
                let stream = futures::stream::unfold(stream_rx, |mut rx| async move {
                    rx.recv().await.map(|x| (x, rx))
                });
                return Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from_stream(stream))
                    .unwrap_or_else(|_| status_error(500, "InternalError", "stream".into()));
            }
            let items: Vec<Value> = store
                .objects
                .get(&def_id)
                .into_iter()
                .flat_map(|m| m.values())
                .filter(|o| {
                    ns.as_ref()
                        .is_none_or(|n| o["metadata"]["namespace"].as_str() == Some(n))
                })
                .filter(|o| selector_matches(&selector, &o["metadata"]["labels"]))
                .cloned()
                .collect();
            let accept = headers
                .get("accept")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if accept.contains("as=Table") {
                return ok_json(200, &table(&t.def, &items, store.rv));
            }
            ok_json(
                200,
                &json!({"kind": format!("{}List", t.def.kind), "apiVersion": t.def.api_version(),
                "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
            )
        }
        (Method::GET, Some(name)) => {
            let key = (ns.clone().unwrap_or_default(), name.clone());
            match store.objects.get(&def_id).and_then(|m| m.get(&key)) {
                Some(o) => {
                    let accept = headers
                        .get("accept")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    if accept.contains("as=Table") {
                        ok_json(200, &table(&t.def, std::slice::from_ref(o), store.rv))
                    } else {
                        ok_json(200, o)
                    }
                }
                None => not_found(name),
            }
        }
        (Method::POST, None) => {
            let mut obj = match parse_body(&headers, &body) {
                Ok(v) => v,
                Err(r) => return r,
            };
            if obj["metadata"]["name"].as_str().is_none() {
                if let Some(prefix) = obj["metadata"]["generateName"].as_str() {
                    obj["metadata"]["name"] = json!(format!("{prefix}{:05x}", store.rv + 1));
                }
            }
            let Some(name) = obj["metadata"]["name"].as_str().map(String::from) else {
                return status_error(422, "Invalid", "metadata.name: Required value".into());
            };
            if let Err(m) = check_schema(&t.def, &mut obj, &name, &q) {
                return status_error(422, "Invalid", m);
            }
            let key = (ns.clone().unwrap_or_default(), name.clone());
            if store
                .objects
                .get(&def_id)
                .is_some_and(|m| m.contains_key(&key))
            {
                return status_error(
                    409,
                    "AlreadyExists",
                    format!("{noun} \"{name}\" already exists"),
                );
            }
            if t.def.status_subresource && !t.def.group.is_empty() {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
            let stored = store.put(&tx, &t.def, key, obj, true);
            ok_json(201, &stored)
        }
        (Method::PUT | Method::PATCH, Some(name)) => {
            let key = (ns.clone().unwrap_or_default(), name.clone());
            let current = store
                .objects
                .get(&def_id)
                .and_then(|m| m.get(&key))
                .cloned();
            let body_value = match parse_body(&headers, &body) {
                Ok(v) => v,
                Err(r) => return r,
            };
            let ctype = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let is_apply = ctype.starts_with("application/apply-patch");
            let (mut new, created) = match (current.clone(), is_apply) {
                (None, true) => (body_value.clone(), true),
                (None, false) => return not_found(name),
                (Some(cur), _) => {
                    if let Some(want) = body_value["metadata"]["resourceVersion"].as_str() {
                        if Some(want) != cur["metadata"]["resourceVersion"].as_str() {
                            return status_error(409, "Conflict", format!(
                                "Operation cannot be fulfilled on {noun} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"));
                        }
                    }
                    let mut new = if method_is_put(&ctype) {
                        body_value.clone()
                    } else {
                        cur.clone()
                    };
                    if !method_is_put(&ctype) {
                        if ctype.contains("json-patch+json") {
                            return status_error(
                                415,
                                "UnsupportedMediaType",
                                "JSON patch is not supported by the test double".into(),
                            );
                        }
                        merge(&mut new, &body_value);
                    }
                    // Server-owned metadata survives whatever the client sent.
                    for k in [
                        "uid",
                        "creationTimestamp",
                        "generation",
                        "deletionTimestamp",
                        "namespace",
                        "name",
                    ] {
                        match cur["metadata"].get(k) {
                            Some(v) => new["metadata"][k] = v.clone(),
                            None => {
                                if let Some(m) = new["metadata"].as_object_mut() {
                                    m.remove(k);
                                }
                            }
                        }
                    }
                    if t.status {
                        let mut only_status = cur.clone();
                        only_status["status"] = new.get("status").cloned().unwrap_or(Value::Null);
                        only_status["metadata"] = new["metadata"].clone();
                        new = only_status;
                    } else if t.def.status_subresource {
                        match cur.get("status") {
                            Some(s) => new["status"] = s.clone(),
                            None => {
                                if let Some(m) = new.as_object_mut() {
                                    m.remove("status");
                                }
                            }
                        }
                        let spec_of = |o: &Value| {
                            let mut o = o.clone();
                            if let Some(m) = o.as_object_mut() {
                                m.remove("metadata");
                                m.remove("status");
                            }
                            o
                        };
                        if spec_of(&cur) != spec_of(&new) && !t.def.group.is_empty() {
                            let g = cur["metadata"]["generation"].as_i64().unwrap_or(1);
                            new["metadata"]["generation"] = json!(g + 1);
                        }
                    }
                    (new, false)
                }
            };
            if let Err(m) = check_schema(&t.def, &mut new, name, &q) {
                return status_error(422, "Invalid", m);
            }
            let stored = store.put(&tx, &t.def, key, new, created);
            ok_json(if created { 201 } else { 200 }, &stored)
        }
        (Method::DELETE, Some(name)) => {
            let key = (ns.clone().unwrap_or_default(), name.clone());
            let opts: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let grace = opts["gracePeriodSeconds"]
                .as_i64()
                .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
            match store.delete(&tx, &def_id, &key, grace) {
                Some(o) => ok_json(200, &o),
                None => not_found(name),
            }
        }
        (m, _) => status_error(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported here"),
        ),
    }
}

fn method_is_put(ctype: &str) -> bool {
    // PUT bodies arrive as plain JSON; every PATCH flavour names its type.
    !ctype.contains("patch")
}

fn check_schema(
    def: &ResourceDef,
    obj: &mut Value,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<(), String> {
    let Some(schema) = &def.schema else {
        return Ok(());
    };
    let (mut errors, mut unknown) = (vec![], vec![]);
    validate(obj, schema, "", &mut errors, &mut unknown);
    if q.get("fieldValidation").map(String::as_str) == Some("Strict") {
        for u in &unknown {
            errors.push(format!("{u}: unknown field \"{u}\""));
        }
    }
    // CEL rules (x-kubernetes-validations) run on structurally valid
    // objects, as in the API server; kube-cel evaluates them.
    if errors.is_empty() {
        if let Err(failures) = kube_cel::validate(schema, obj, None) {
            for f in failures.into_vec() {
                errors.push(format!(
                    "{}: Invalid value: \"object\": {}",
                    f.field_path, f.message
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(format!(
            "{}.{} \"{name}\" is invalid: {}",
            def.kind,
            def.group,
            errors.join(", ")
        ));
    }
    prune(obj, &unknown);
    Ok(())
}

impl ApiServer {
    /// Start on a free loopback port.
    pub async fn start() -> Self {
        let (changes, _) = broadcast::channel(65536);
        let store = Store {
            resources: Store::builtins(),
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            changes,
        });
        {
            let mut s = shared.store.lock().unwrap();
            let def = s.find("", "v1", "namespaces").unwrap();
            let tx = shared.changes.clone();
            s.put(
                &tx,
                &def,
                (String::new(), "default".into()),
                json!({"metadata": {"name": "default"}}),
                true,
            );
        }
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// The server URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server (namespace `default`).
    pub fn write_kubeconfig(&self, path: &std::path::Path) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\nusers:\n- name: tester\n  user:\n    token: test-token\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: tester\n    namespace: default\ncurrent-context: double\n",
            self.url()
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.shared.store.lock().unwrap().requests
    }

    /// Objects of `resource` ("group/version/plural", core group empty: "/v1/pods") in `ns`.
    pub fn list(&self, resource: &str, ns: &str) -> Vec<Value> {
        let s = self.shared.store.lock().unwrap();
        s.objects
            .get(resource)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((n, _), _)| n == ns)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// One object.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<Value> {
        let s = self.shared.store.lock().unwrap();
        s.objects
            .get(resource)?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Merge `patch` into an object as a client's merge patch would (status included).
    pub fn patch(&self, resource: &str, ns: &str, name: &str, patch: Value) -> Option<Value> {
        let mut s = self.shared.store.lock().unwrap();
        let key = (ns.to_string(), name.to_string());
        let mut obj = s.objects.get(resource)?.get(&key)?.clone();
        merge(&mut obj, &patch);
        let def = s.resources.iter().find(|r| r.id() == resource)?.clone();
        let tx = self.shared.changes.clone();
        Some(s.put(&tx, &def, key, obj, false))
    }

    /// Create an object directly (as another client would; the schema is checked).
    pub fn create(&self, resource: &str, ns: &str, mut obj: Value) -> Value {
        let mut s = self.shared.store.lock().unwrap();
        let def = s
            .resources
            .iter()
            .find(|r| r.id() == resource)
            .cloned()
            .expect("known resource");
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_string();
        // Checked as for any client; a rejection is a bug in the test.
        let strict = HashMap::from([("fieldValidation".to_string(), "Strict".to_string())]);
        if let Err(m) = check_schema(&def, &mut obj, &name, &strict) {
            panic!("the API server rejects it: {m}");
        }
        let tx = self.shared.changes.clone();
        s.put(&tx, &def, (ns.to_string(), name), obj, true)
    }

    /// Delete as a client would (`grace` None: the object's default).
    pub fn delete(
        &self,
        resource: &str,
        ns: &str,
        name: &str,
        grace: Option<i64>,
    ) -> Option<Value> {
        let mut s = self.shared.store.lock().unwrap();
        let tx = self.shared.changes.clone();
        s.delete(&tx, resource, &(ns.to_string(), name.to_string()), grace)
    }

    /// Install the project's CRD.
    pub fn install_crd(&self, yaml: &str) {
        let crd: Value = serde_norway::from_str(yaml).expect("CRD YAML");
        self.create("apiextensions.k8s.io/v1/customresourcedefinitions", "", crd);
    }
}
