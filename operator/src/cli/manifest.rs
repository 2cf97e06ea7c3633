//! Checking RideTraining manifests the way the API server will: every
//! document of a (multi-document) YAML file is validated against the CRD's
//! structural schema (types, required fields, enums, ranges, lengths,
//! patterns; unknown fields are errors as under `kubectl apply`'s default
//! strict field validation), its CEL rules (`x-kubernetes-validations`,
//! evaluated with `kube-cel`), the object name rules, and then the
//! controller's own cross-field checks and, given one, its pod policy.
//! `ride check` prints the verdicts; a
//! test compares them with the real API server's on every manifest it
//! applies.

use crate::crd::RideTraining;
use crate::pod_policy::PodPolicy;
use serde_json::Value;

/// What `ride check` says about one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A valid RideTraining.
    Valid {
        /// `metadata.name`.
        name: String,
        /// `spec.workers.replicas`.
        workers: i32,
        /// `spec.trainer.config`.
        config: String,
    },
    /// A RideTraining the API server would refuse; each error names its field.
    Invalid {
        /// `metadata.name` (empty when missing).
        name: String,
        /// One message per problem, `field: what is wrong`.
        errors: Vec<String>,
    },
    /// Another kind of object, not checked here (kubectl applies it as is).
    Other {
        /// `apiVersion/kind` of the document.
        kind: String,
    },
}

/// Why a file could not be checked at all.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML.
    #[error("document {index}: not valid YAML: {source}")]
    Yaml {
        /// 1-based document number.
        index: usize,
        /// The parser's message.
        source: serde_norway::Error,
    },
    /// The CRD could not be built from the types (a bug).
    #[error("the CRD schema: {0}")]
    Schema(String),
}

/// Check every document of `text` (empty documents are skipped, as kubectl does),
/// and with `policy` also the operator's pod policy, as the operator would.
pub fn check_documents(
    text: &str,
    policy: Option<&PodPolicy>,
) -> Result<Vec<Verdict>, ManifestError> {
    use serde::Deserialize;
    let schema = crd_schema()?;
    let mut verdicts = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| ManifestError::Yaml {
            index: i + 1,
            source,
        })?;
        if value.is_null() {
            continue;
        }
        verdicts.push(check_value(&value, &schema, policy));
    }
    Ok(verdicts)
}

fn crd_schema() -> Result<Value, ManifestError> {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(RideTraining::crd())
        .map_err(|e| ManifestError::Schema(e.to_string()))?;
    let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    if schema.is_object() {
        Ok(schema)
    } else {
        Err(ManifestError::Schema("no openAPIV3Schema".into()))
    }
}

/// One document against the schema.
fn check_value(value: &Value, schema: &Value, policy: Option<&PodPolicy>) -> Verdict {
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    let kind = value["kind"].as_str().unwrap_or_default();
    if api_version != "ride.dev/v1alpha1" || kind != "RideTraining" {
        return Verdict::Other {
            kind: format!("{api_version}/{kind}"),
        };
    }
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut errors = Vec::new();
    match value["metadata"]["name"].as_str() {
        None if value["metadata"]["generateName"].is_string() => {}
        None => {
            errors.push("metadata.name: Required value: name or generateName is required".into())
        }
        Some(n) => {
            if let Some(problem) = dns_subdomain_problem(n) {
                errors.push(format!("metadata.name: Invalid value: {n:?}: {problem}"));
            }
        }
    }
    let mut unknown = Vec::new();
    validate(value, schema, "", &mut errors, &mut unknown);
    for u in &unknown {
        errors.push(format!("{u}: unknown field \"{u}\""));
    }
    // CEL rules run on structurally valid objects, as in the API server.
    if errors.is_empty() {
        if let Err(failures) = kube_cel::validate(schema, value, None) {
            for f in failures.into_vec() {
                errors.push(format!("{}: Invalid value: {}", f.field_path, f.message));
            }
        }
    }
    if !errors.is_empty() {
        return Verdict::Invalid { name, errors };
    }
    match serde_json::from_value::<RideTraining>(value.clone()) {
        Err(e) => Verdict::Invalid {
            name,
            errors: vec![e.to_string()],
        },
        Ok(rt) => match rt.spec.validate() {
            Err(e) => Verdict::Invalid {
                name,
                errors: vec![e.to_string()],
            },
            Ok(()) => {
                let refused = policy.map(|p| p.violations(&rt.spec)).unwrap_or_default();
                if refused.is_empty() {
                    Verdict::Valid {
                        name,
                        workers: rt.spec.workers.replicas,
                        config: rt.spec.trainer.config,
                    }
                } else {
                    Verdict::Invalid {
                        name,
                        errors: refused.iter().map(|e| e.to_string()).collect(),
                    }
                }
            }
        },
    }
}

/// Kubernetes object names (DNS-1123 subdomain).
fn dns_subdomain_problem(n: &str) -> Option<&'static str> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if n.len() > 253 {
        Some("must be no more than 253 characters")
    } else if !n.split('.').all(label_ok) {
        Some("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")
    } else {
        None
    }
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
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
        let nullable = schema.get("nullable").and_then(Value::as_bool) == Some(true);
        if !nullable && !path.is_empty() {
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
        let got = value_type(value);
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
            errors.push(format!(
                "{path}: Invalid value: {value}: {path} in body should be less than or equal to {max}"
            ));
        }
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if chars < min {
                errors.push(format!(
                    "{path}: Invalid value: {value}: {path} in body should be at least {min} chars long"
                ));
            }
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if chars > max {
                errors.push(format!(
                    "{path}: Too long: may not be more than {max} bytes"
                ));
            }
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            let fits = regex::Regex::new(pattern)
                .map(|re| re.is_match(s))
                .unwrap_or(false);
            if !fits {
                errors.push(format!(
                    "{path}: Invalid value: {value}: {path} in body should match '{pattern}'"
                ));
            }
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
                    errors.push(format!("{}: Required value", child(path, r)));
                }
            }
        }
        let preserve = schema
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            == Some(true);
        for (k, v) in fields {
            let p = child(path, k);
            if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&k.as_str()) {
                continue;
            }
            if let Some(s) = props.and_then(|m| m.get(k)) {
                validate(v, s, &p, errors, unknown);
            } else if let Some(s) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                validate(v, s, &p, errors, unknown);
            } else if props.is_some() && !preserve {
                unknown.push(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> String {
        std::fs::read_to_string(crate::repo_file("examples/ride-cpu.yaml")).unwrap()
    }

    fn errors_of(text: &str) -> Vec<String> {
        match check_documents(text, None).unwrap().pop().unwrap() {
            Verdict::Invalid { errors, .. } => errors,
            v => panic!("expected invalid, got {v:?}"),
        }
    }

    #[test]
    fn the_example_is_valid() {
        let v = check_documents(&example(), None).unwrap();
        assert_eq!(
            v,
            [Verdict::Valid {
                name: "ride-cpu".into(),
                workers: 2,
                config: "synthetic_ride_2e_cpu.yaml".into()
            }]
        );
    }

    #[test]
    fn schema_ranges_lengths_patterns_unknown_fields_and_cel_name_the_field() {
        let good = example();
        for (from, to, field) in [
            ("replicas: 2", "replicas: 0", "spec.workers.replicas"),
            (
                "backoffSeconds: 1",
                "backoffSeconds: -5",
                "spec.restartPolicy.backoffSeconds",
            ),
            (
                "image: ghcr.io/ride-on-cluster/ride-trainer:0.1.0",
                "image: \"\"",
                "spec.image",
            ),
            ("uri: file://", "uri: ftp://", "spec.checkpoint.uri"),
            (
                "uri: file://",
                "url: file://",
                "spec.checkpoint.url: unknown field",
            ),
            (
                "replicas: 2",
                "replicas: \"two\"",
                "spec.workers.replicas: Invalid value: \"string\"",
            ),
            (
                "replicas: 2",
                "replicas: 2\n    minReplicas: 3",
                "spec.workers.minReplicas: Invalid value: must not exceed workers.replicas",
            ),
            ("name: ride-cpu", "name: Ride_CPU", "metadata.name"),
        ] {
            assert!(good.contains(from), "{from}");
            let errors = errors_of(&good.replacen(from, to, 1));
            assert!(errors.iter().any(|e| e.contains(field)), "{to}: {errors:?}");
        }
    }

    #[test]
    fn multi_document_files_are_checked_document_by_document() {
        let second = example().replace("name: ride-cpu", "name: other");
        let text = format!(
            "---\n{}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n---\n{}\n---\n",
            example(),
            second.replace("replicas: 2", "replicas: 0")
        );
        let v = check_documents(&text, None).unwrap();
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(matches!(&v[0], Verdict::Valid { name, .. } if name == "ride-cpu"));
        assert_eq!(
            v[1],
            Verdict::Other {
                kind: "v1/Secret".into()
            }
        );
        assert!(matches!(&v[2], Verdict::Invalid { name, .. } if name == "other"));
    }
}
