//! `ride-trainer export`: trained weights back into the authors' layout, so
//! their `main.py --eval --resume OUT.pth` (and anything that reads a Swin
//! state dict) takes them: `{'model': state_dict}` in a `.pth` that
//! `torch.load` reads with its default `weights_only=True`, or the same
//! state dict as safetensors. The state dict has the authors' key set
//! exactly (parameters plus the position-index and shift-mask buffers their
//! modules register), so `load_state_dict(strict=True)` accepts it.

use crate::config::{load_config, Overrides};
use crate::model::router::ROUTER_PREFIX;
use crate::model::Network;
use crate::pth::write::{self as torch_save, PickleValue};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

/// What an export wrote.
#[derive(Debug)]
pub struct ExportSummary {
    /// The file written.
    pub output: PathBuf,
    /// Tensors in its state dict (parameters and buffers).
    pub tensors: usize,
    /// Parameter elements.
    pub parameters: i64,
    /// Router tensors in the input left out (the authors' Swin code has no router).
    pub router_tensors_dropped: usize,
}

/// The file a `--weights` argument names: a checkpoint directory means its
/// `model.safetensors`.
fn weights_file(weights: &Path) -> PathBuf {
    if weights.is_dir() {
        weights.join("model.safetensors")
    } else {
        weights.to_path_buf()
    }
}

/// Build the configured model, load `weights` into it (every parameter must
/// be there, as for evaluation) and write its state dict to `output`.
pub fn run(
    cfg_path: Option<&Path>,
    opts: &[String],
    weights: &Path,
    output: &Path,
) -> Result<ExportSummary> {
    let format = match output.extension().and_then(|e| e.to_str()) {
        Some("pth" | "pt") => "pth",
        Some("safetensors") => "safetensors",
        _ => bail!(
            "--output {}: name a .pth (the authors' {{'model': state_dict}}) or a .safetensors file",
            output.display()
        ),
    };
    let cfg = load_config(
        cfg_path,
        &Overrides {
            opts: opts.to_vec(),
            ..Default::default()
        },
    )?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model =
        Network::new(&vs.root(), &cfg).map_err(|m| anyhow::anyhow!("invalid model config: {m}"))?;
    if matches!(model, Network::ResNet(_)) {
        bail!(
            "export writes the Swin authors' layout; MODEL.TYPE resnet32 checkpoints are not exported \
             (their ResNet code saves a different layout: use the safetensors checkpoint as it is)"
        );
    }
    let file = weights_file(weights);
    let read = crate::weights::read_weights(&file)
        .with_context(|| format!("--weights {}", file.display()))?;
    let before = read.len();
    let w: std::collections::BTreeMap<String, Tensor> = model
        .from_reference_names(read)
        .into_iter()
        .filter(|(k, _)| !k.starts_with(ROUTER_PREFIX))
        .collect();
    let router_tensors_dropped = before - w.len();
    crate::weights::apply_weights(&vs, &model.buffers(), &w)
        .with_context(|| format!("--weights {} against --cfg", file.display()))?;
    let mut state: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .chain(model.buffers())
        .map(|(k, t)| (k, t.detach().to_device(Device::Cpu)))
        .collect();
    state.sort_by(|a, b| a.0.cmp(&b.0));
    let parameters: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    let tensors = state.len();
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match format {
        "pth" => torch_save::save(
            output,
            &[("model".into(), PickleValue::StateDict(state))],
            false,
        )?,
        _ => {
            let refs: Vec<(&str, &Tensor)> = state.iter().map(|(k, t)| (k.as_str(), t)).collect();
            Tensor::write_safetensors(&refs, output)
                .with_context(|| format!("writing {}", output.display()))?
        }
    }
    Ok(ExportSummary {
        output: output.to_path_buf(),
        tensors,
        parameters,
        router_tensors_dropped,
    })
}
