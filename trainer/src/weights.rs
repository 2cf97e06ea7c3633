//! Weights in and out: reference PyTorch checkpoints (`torch.save` zip
//! files holding a `state_dict`, or the reference's `{'model': state_dict}`)
//! and safetensors, loaded into the model by reference parameter name.

use crate::pth::read::{TensorRef, Value};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn, Kind, Tensor};
use thiserror::Error;

/// Errors from reading or applying weights.
#[derive(Debug, Error)]
pub enum WeightsError {
    /// The file could not be parsed.
    #[error("cannot read weights from {path}: {reason}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        reason: String,
    },
    /// Keys or shapes do not match the model.
    #[error("weights do not fit the model:\n{0}")]
    Mismatch(String),
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> WeightsError {
    WeightsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Read a PyTorch `.pth`/`.pt` file: a plain state dict, or one nested
/// under `model` or `state_dict` (the authors' checkpoints; other entries,
/// pickled configs and optimiser state among them, are not read).
pub fn read_pth(path: &Path) -> Result<BTreeMap<String, Tensor>, WeightsError> {
    let mut archive = crate::pth::read::Archive::open(path).map_err(|e| read_err(path, e))?;
    let root = archive.root.clone();
    let tensors_in = |v: &Value| -> Vec<(String, TensorRef)> {
        match v {
            Value::Dict(items) | Value::Object { items, .. } => items
                .iter()
                .filter_map(|(k, v)| match (k, v) {
                    (Value::Str(k), Value::Tensor(t)) => Some((k.clone(), t.clone())),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let found = [Some(&root), root.get("model"), root.get("state_dict")]
        .into_iter()
        .flatten()
        .map(tensors_in)
        .find(|t| !t.is_empty())
        .ok_or_else(|| {
            read_err(
                path,
                "no tensors found at the top level or under 'model' or 'state_dict'",
            )
        })?;
    let mut out = BTreeMap::new();
    for (name, t) in found {
        let tensor = archive
            .tensor(&t)
            .map_err(|e| read_err(path, format!("{name}: {e}")))?;
        // DDP checkpoints prefix every key with `module.`.
        let clean = name.strip_prefix("module.").unwrap_or(&name).to_string();
        out.insert(clean, tensor);
    }
    Ok(out)
}

/// Read weights by file type: `.safetensors`, else a PyTorch pickle.
pub fn read_weights(path: &Path) -> Result<BTreeMap<String, Tensor>, WeightsError> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        let v = Tensor::read_safetensors(path).map_err(|e| read_err(path, e))?;
        Ok(v.into_iter().collect())
    } else {
        read_pth(path)
    }
}

/// Copy `weights` into the model's variables. Every parameter must be
/// present with the right shape; buffers the reference keeps in its state
/// dict (`buffers`) are optional but, when present, must equal ours.
pub fn apply_weights(
    vs: &nn::VarStore,
    buffers: &[(String, Tensor)],
    weights: &BTreeMap<String, Tensor>,
) -> Result<usize, WeightsError> {
    apply_weights_where(vs, buffers, weights, |_| false)
}

/// [`apply_weights`], except that parameters for which `may_be_missing`
/// holds keep their values when the file lacks them (the router, when the
/// router stage starts from an experts-only checkpoint). Returns how many
/// parameters were copied.
pub fn apply_weights_where(
    vs: &nn::VarStore,
    buffers: &[(String, Tensor)],
    weights: &BTreeMap<String, Tensor>,
    may_be_missing: impl Fn(&str) -> bool,
) -> Result<usize, WeightsError> {
    let vars = vs.variables();
    let mut vars: Vec<(String, Tensor)> = vars.into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut missing = Vec::new();
    let mut shape_errors = Vec::new();
    let mut buffer_errors = Vec::new();
    for (name, var) in &vars {
        match weights.get(name) {
            None if may_be_missing(name) => {}
            None => missing.push(name.clone()),
            Some(w) if w.size() != var.size() => shape_errors.push(format!(
                "{name}: file {:?}, model {:?}",
                w.size(),
                var.size()
            )),
            Some(_) => {}
        }
    }
    for (name, ours) in buffers {
        if let Some(theirs) = weights.get(name) {
            let same = theirs.size() == ours.size()
                && theirs.to_kind(Kind::Double).allclose(
                    &ours.to_device(tch::Device::Cpu).to_kind(Kind::Double),
                    0.0,
                    0.0,
                    false,
                );
            if !same {
                buffer_errors.push(format!(
                    "{name}: buffer differs from the one this architecture computes"
                ));
            }
        }
    }
    let unexpected: Vec<&String> = weights
        .keys()
        .filter(|k| !vars.iter().any(|(n, _)| n == *k) && !buffers.iter().any(|(b, _)| b == *k))
        .collect();
    if !(missing.is_empty()
        && shape_errors.is_empty()
        && unexpected.is_empty()
        && buffer_errors.is_empty())
    {
        let mut msg = String::new();
        let mut section = |title: &str, items: Vec<String>| {
            if !items.is_empty() {
                let shown: Vec<String> = items.iter().take(20).cloned().collect();
                msg.push_str(&format!(
                    "  {title} ({}): {}{}\n",
                    items.len(),
                    shown.join(", "),
                    if items.len() > 20 { ", ..." } else { "" }
                ));
            }
        };
        section("missing keys", missing);
        section("unexpected keys", unexpected.into_iter().cloned().collect());
        section("mis-shaped keys", shape_errors);
        section("mismatched buffers", buffer_errors);
        msg.push_str("  (is the --cfg the one the checkpoint was trained with? MODEL.NUM_EXPERTS, USE_NORMED_LINEAR and NUM_CLASSES must match)");
        return Err(WeightsError::Mismatch(msg));
    }
    let mut copied = 0;
    tch::no_grad(|| {
        for (name, var) in &vars {
            if let Some(w) = weights.get(name.as_str()) {
                var.shallow_clone()
                    .copy_(&w.to_kind(var.kind()).to_device(var.device()));
                copied += 1;
            }
        }
    });
    Ok(copied)
}

/// Save the model's parameters as safetensors (the tests' fixtures).
#[cfg(test)]
fn save_safetensors(vs: &nn::VarStore, path: &Path) -> Result<(), WeightsError> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let refs: Vec<(&str, Tensor)> = named
        .iter()
        .map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu)))
        .collect();
    Tensor::write_safetensors(&refs, path).map_err(|e| read_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn mismatch_lists_missing_unexpected_and_misshaped() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _a = vs.root().var("a", &[2], nn::Init::Const(0.0));
        let _b = vs.root().var("b", &[3], nn::Init::Const(0.0));
        let mut w = BTreeMap::new();
        w.insert(
            "a".to_string(),
            Tensor::zeros([4], (Kind::Float, Device::Cpu)),
        );
        w.insert(
            "zzz".to_string(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        );
        let e = apply_weights(&vs, &[], &w).unwrap_err().to_string();
        assert!(e.contains("missing keys (1): b"), "{e}");
        assert!(e.contains("unexpected keys (1): zzz"), "{e}");
        assert!(e.contains("a: file [4], model [2]"), "{e}");
    }

    #[test]
    fn safetensors_round_trip_and_buffer_check() {
        let vs = nn::VarStore::new(Device::Cpu);
        let a = vs.root().var("a", &[2], nn::Init::Const(1.5));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        save_safetensors(&vs, &p).unwrap();
        tch::no_grad(|| {
            let _ = a.shallow_clone().fill_(0.0);
        });
        let mut w = read_weights(&p).unwrap();
        let buf = vec![("idx".to_string(), Tensor::from_slice(&[1i64, 2]))];
        w.insert("idx".into(), Tensor::from_slice(&[1i64, 2]));
        assert_eq!(apply_weights(&vs, &buf, &w).unwrap(), 1);
        assert_eq!(a.double_value(&[1]), 1.5);
        w.insert("idx".into(), Tensor::from_slice(&[1i64, 3]));
        assert!(apply_weights(&vs, &buf, &w)
            .unwrap_err()
            .to_string()
            .contains("idx: buffer differs"));
    }
}
