//! `ride-bench`: the benchmarks that `bench/*.sh` run side by side with
//! PyTorch. Kept out of the `ride-trainer` binary and the library so the
//! product path carries no benchmark-only code.

mod io;
mod step;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ride_trainer::config::cli::{parse_device, ConfigArgs};
use ride_trainer::config::Overrides;
use ride_trainer::model::RideSwin;
use std::path::PathBuf;
use tch::{nn, Device, Tensor};

#[derive(Parser)]
#[command(
    name = "ride-bench",
    version,
    about = "Benchmarks of ride-trainer's training step, all-reduce, checkpoints and transforms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Time training steps on random data (forward, loss, backward, AdamW; prints JSON).
    Step(StepArgs),
    /// Measure TCP ring all-reduce bandwidth with N local ranks (prints JSON lines).
    Allreduce(AllreduceArgs),
    /// Measure checkpoint save throughput to a location against a raw upload (prints JSON).
    Checkpoint(CheckpointArgs),
    /// Measure the configured train transform on a folder of images, one thread (prints JSON).
    Transform(TransformArgs),
    /// One-rank NCCL communicator on a GPU: initialise, all-reduce and
    /// broadcast a tensor, check the values (prints JSON; the device check's NCCL row).
    Nccl(NcclArgs),
    /// Print the config's resolved model architecture as JSON, for the
    /// PyTorch side of a benchmark (bench/ride_swin_step.py --spec).
    Spec(ConfigArgs),
}

#[derive(Args)]
struct StepArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Images per step.
    #[arg(long, default_value_t = 8)]
    batch_size: i64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Intra-op threads (0: libtorch default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Use libtorch's fused AdamW kernel.
    #[arg(long)]
    fused_adamw: bool,
    /// Mixed precision: none, float16 (with loss scaling) or bfloat16.
    #[arg(long, default_value = "none")]
    amp: String,
}

#[derive(Args)]
struct AllreduceArgs {
    /// Ranks (processes) to start when not already inside a job.
    #[arg(long, default_value_t = 2)]
    world: usize,
    /// Message sizes in MB (10^6 bytes).
    #[arg(long, value_delimiter = ',', default_value = "1,25,100")]
    sizes_mb: Vec<f64>,
    /// Untimed all-reduces per size.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed all-reduces per size.
    #[arg(long, default_value_t = 10)]
    iters: usize,
}

#[derive(Args)]
struct TransformArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Folder of images (*.jpg, *.png, ...), read in sorted order.
    #[arg(long)]
    images: PathBuf,
    /// Timed passes over the folder.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Time the evaluation transform instead of the training one.
    #[arg(long)]
    eval: bool,
    /// Also write every image's transformed tensor (first pass, seed 0) to
    /// this safetensors file, as `images` [N, 3, S, S] in sorted file order.
    #[arg(long)]
    dump: Option<PathBuf>,
}

#[derive(Args)]
struct NcclArgs {
    /// CUDA device index.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Elements of the test tensor.
    #[arg(long, default_value_t = 1 << 24)]
    elements: i64,
}

#[derive(Args)]
struct CheckpointArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Location to write to (path, file://, s3://, ...).
    #[arg(long)]
    output: String,
    /// Timed rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn cmd_step(b: StepArgs) -> Result<()> {
    let cfg = b.config.load(Overrides::default())?;
    if b.threads > 0 {
        tch::set_num_threads(b.threads);
    }
    let amp = match b.amp.as_str() {
        "none" => None,
        "float16" => Some(ride_trainer::amp::AmpDtype::Float16),
        "bfloat16" => Some(ride_trainer::amp::AmpDtype::BFloat16),
        other => anyhow::bail!("--amp {other}: use none, float16 or bfloat16"),
    };
    let options = step::StepOptions {
        fused_adamw: b.fused_adamw,
        amp,
    };
    let t = step::time_training_steps(
        &cfg,
        parse_device(&b.device)?,
        b.batch_size,
        b.warmup,
        b.steps,
        options,
    )?;
    println!("{}", serde_json::to_string(&t)?);
    Ok(())
}

fn cmd_allreduce(a: AllreduceArgs) -> Result<()> {
    let sizes: Vec<usize> = a
        .sizes_mb
        .iter()
        .map(|mb| (mb * 1e6) as usize / 4 * 4)
        .collect();
    if std::env::var_os("WORLD_SIZE").is_some() {
        let (rank, timings) = io::all_reduce_bandwidth_from_env(&sizes, a.warmup, a.iters)?;
        if rank == 0 {
            for t in timings {
                println!("{}", serde_json::to_string(&t)?);
            }
        }
        return Ok(());
    }
    // Not inside a job: start `world` ranks of ourselves, as the launcher does.
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let sizes_mb: Vec<String> = a.sizes_mb.iter().map(|s| s.to_string()).collect();
    let children: Vec<std::process::Child> = (0..a.world)
        .map(|rank| {
            std::process::Command::new(&exe)
                .args(["allreduce", "--sizes-mb", &sizes_mb.join(",")])
                .args(["--warmup", &a.warmup.to_string()])
                .args(["--iters", &a.iters.to_string()])
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", a.world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    for mut c in children {
        anyhow::ensure!(c.wait()?.success(), "a benchmark rank failed");
    }
    Ok(())
}

fn cmd_transform(a: TransformArgs) -> Result<()> {
    let cfg = a.config.load(Overrides::default())?;
    let transform = if a.eval {
        ride_trainer::data::select::eval_transform(&cfg)?
    } else {
        ride_trainer::data::select::train_transform(&cfg)?
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.images)
        .with_context(|| format!("reading {}", a.images.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no images in {}", a.images.display());
    if let Some(path) = &a.dump {
        let outputs = io::transform_outputs(&files, &transform)?;
        let s = transform.size() as i64;
        let images = Tensor::from_slice(&outputs).reshape([files.len() as i64, 3, s, s]);
        Tensor::write_safetensors(&[("images", images)], path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let t = io::transform_throughput(&files, &transform, a.rounds)?;
    println!("{}", serde_json::to_string(&t)?);
    Ok(())
}

fn cmd_checkpoint(a: CheckpointArgs) -> Result<()> {
    let cfg = a.config.load(Overrides::default())?;
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = RideSwin::new(&vs.root(), &cfg.swin_spec())
        .map_err(|m| anyhow::anyhow!("invalid model config: {m}"))?;
    let opt = ride_trainer::optim::AdamW::new(&vs, 0.05, 1e-8, (0.9, 0.999));
    let model: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    let t = io::checkpoint_throughput(&a.output, &model, &opt.state(), a.rounds)?;
    println!("{}", serde_json::to_string(&t)?);
    Ok(())
}

fn cmd_nccl(a: NcclArgs) -> Result<()> {
    use ride_trainer::dist::Collective;
    let started = std::time::Instant::now();
    let single = Box::new(ride_trainer::dist::SingleProcess);
    let comm = ride_trainer::dist::nccl::NcclCollective::new(single, a.device)?;
    let init_s = started.elapsed().as_secs_f64();
    let device = Device::Cuda(a.device);
    let x = Tensor::arange(a.elements, (tch::Kind::Float, device)).remainder(1000.0);
    let want = x.copy();
    let t = std::time::Instant::now();
    comm.all_reduce_sum_tensor(&x)?;
    comm.broadcast_tensor(&x, 0)?;
    tch::Cuda::synchronize(a.device as i64);
    let op_s = t.elapsed().as_secs_f64();
    let equal = x.equal(&want);
    println!(
        "{}",
        serde_json::json!({"backend": comm.backend(), "init_s": init_s, "ops_s": op_s,
                           "elements": a.elements, "values_equal": equal})
    );
    anyhow::ensure!(equal, "1-rank all-reduce/broadcast changed the values");
    Ok(())
}

fn cmd_spec(c: ConfigArgs) -> Result<()> {
    let s = c.load(Overrides::default())?.swin_spec();
    s.validate()
        .map_err(|m| anyhow::anyhow!("invalid model config: {m}"))?;
    let spec = serde_json::json!({
        "img_size": s.img_size, "patch_size": s.patch_size, "in_chans": s.in_chans,
        "num_classes": s.num_classes, "embed_dim": s.embed_dim, "depths": s.depths,
        "num_heads": s.num_heads, "window_size": s.window_size, "mlp_ratio": s.mlp_ratio,
        "qkv_bias": s.qkv_bias, "qk_scale": s.qk_scale, "drop_rate": s.drop_rate,
        "drop_path_rate": s.drop_path_rate, "ape": s.ape, "patch_norm": s.patch_norm,
        "use_normed_linear": s.use_normed_linear, "num_experts": s.num_experts,
        "branching_start": s.branching_start,
        "force_original_feature_dim": s.force_original_feature_dim,
        "force_no_branches": s.force_no_branches,
    });
    println!("{spec}");
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Step(a) => cmd_step(a),
        Command::Allreduce(a) => cmd_allreduce(a),
        Command::Checkpoint(a) => cmd_checkpoint(a),
        Command::Transform(a) => cmd_transform(a),
        Command::Spec(c) => cmd_spec(c),
        Command::Nccl(a) => cmd_nccl(a),
    }
}
