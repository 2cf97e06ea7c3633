//! Inference: JSON lines of top-k classes for image files, or the raw
//! eval-mode outputs for a preprocessed tensor (safetensors in and out).

use crate::config::{load_config, Overrides};
use crate::data::RgbImage;
use crate::model::router::Router;
use crate::model::Network;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// Decode an image file into RGB (grayscale and alpha are converted).
pub fn read_image(path: &Path) -> Result<RgbImage> {
    let img = image::open(path)
        .with_context(|| format!("cannot decode {}", path.display()))?
        .to_rgb8();
    Ok(RgbImage {
        width: img.width() as usize,
        height: img.height() as usize,
        pixels: img.into_raw(),
    })
}

/// Run `ride-trainer predict`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    cfg_path: &Option<PathBuf>,
    opts: &[String],
    stage: Option<&str>,
    weights: &Path,
    images: Option<&Path>,
    input_tensor: Option<&Path>,
    output: Option<&Path>,
    topk: i64,
    device: Device,
) -> Result<()> {
    let cfg = load_config(
        cfg_path.as_deref(),
        &Overrides {
            opts: opts.to_vec(),
            stage: stage.map(str::to_string),
            ..Default::default()
        },
    )?;
    let vs = nn::VarStore::new(device);
    let model =
        Network::new(&vs.root(), &cfg).map_err(|m| anyhow::anyhow!("invalid model config: {m}"))?;
    let router = cfg.router_spec().map(|spec| {
        Router::new(
            &vs.root(),
            model.num_features(),
            cfg.model.num_experts,
            &spec,
        )
    });
    let w = model.from_reference_names(crate::weights::read_weights(weights)?);
    crate::weights::apply_weights(&vs, &model.buffers(), &w)?;
    let threshold = cfg.model.router.threshold;
    // With a router: the routed mean and the experts each image used;
    // without: the mean of all experts.
    let infer = |x: &Tensor| -> (Tensor, Option<Tensor>) {
        tch::no_grad(|| match &router {
            Some(r) => {
                let routed = model.forward_routed(r, x, threshold);
                (routed.outputs, Some(routed.experts_used))
            }
            None => (model.forward(x, false).mean(), None),
        })
    };
    if let Some(input) = input_tensor {
        let tensors = Tensor::read_safetensors(input)
            .with_context(|| format!("reading {}", input.display()))?;
        if tensors.len() != 1 {
            bail!(
                "{} must hold exactly one tensor, found {}",
                input.display(),
                tensors.len()
            );
        }
        let x = tensors[0].1.to_kind(Kind::Float).to_device(device);
        if x.dim() != 4 || x.size()[1] != 3 {
            bail!("input tensor must be [N,3,H,W], got {:?}", x.size());
        }
        let per_expert = tch::no_grad(|| model.forward(&x, false))
            .stacked()
            .to_device(Device::Cpu);
        let (logits, used) = infer(&x);
        let mut named = vec![
            ("logits", logits.to_device(Device::Cpu)),
            ("per_expert", per_expert),
        ];
        if let Some(u) = used {
            named.push(("experts_used", u.to_device(Device::Cpu)));
        }
        let dest = output.context("--output is required with --input-tensor")?;
        Tensor::write_safetensors(&named, dest)?;
        tracing::info!("wrote {}", dest.display());
        return Ok(());
    }
    let Some(list) = images else {
        bail!("give --images LIST or --input-tensor X.safetensors")
    };
    let text =
        std::fs::read_to_string(list).with_context(|| format!("reading {}", list.display()))?;
    let transform = crate::data::select::eval_transform(&cfg)?;
    let mut sink: Box<dyn Write> = match output {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Box::new(std::io::stdout()),
    };
    let size = cfg.data.img_size;
    let mut rng = rand::rng();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let img = match read_image(Path::new(line)) {
            Ok(i) => i,
            Err(e) => {
                writeln!(
                    sink,
                    "{}",
                    serde_json::json!({"path": line, "error": format!("{e:#}")})
                )?;
                continue;
            }
        };
        let mut buf = vec![0f32; (3 * size * size) as usize];
        transform.apply(&img, &mut rng, &mut buf);
        let x = Tensor::from_slice(&buf)
            .view([1, 3, size, size])
            .to_device(device);
        let (logits, used) = infer(&x);
        let probs = logits.softmax(-1, Kind::Float).to_device(Device::Cpu);
        let (p, c) = probs.topk(topk.min(cfg.model.num_classes), -1, true, true);
        let classes: Vec<i64> = Vec::try_from(c.view([-1]))?;
        let scores: Vec<f32> = Vec::try_from(p.view([-1]))?;
        let mut row = serde_json::json!({"path": line, "classes": classes, "scores": scores});
        if let Some(u) = used {
            row["experts_used"] = serde_json::json!(u.int64_value(&[0]));
        }
        writeln!(sink, "{row}")?;
    }
    Ok(())
}
