//! `ride-trainer`: train, evaluate, summarise and run RIDE-Swin models.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ride_trainer::config::{load_config, Config, Overrides};
use ride_trainer::model::ride_swin::parameter_count;
use ride_trainer::model::RideSwin;
use ride_trainer::train::{run, RunOptions, RunSummary};
use std::path::PathBuf;
use tch::{nn, Device};

#[derive(Parser)]
#[command(
    name = "ride-trainer",
    version,
    about = "RIDE long-tailed recognition on a Swin Transformer (libtorch)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train (or with --eval evaluate, or with --throughput measure) a model.
    Train(TrainArgs),
    /// Print the parameter count and FLOPs per image of a config.
    Summary(ConfigArgs),
    /// Run inference with trained weights.
    Predict(PredictArgs),
    /// Time training steps on random data (forward, loss, backward, AdamW).
    BenchStep(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
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
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// Config YAML (reference keys).
    #[arg(long)]
    cfg: Option<PathBuf>,
    /// Override config keys: KEY VALUE pairs, e.g. --opts TRAIN.EPOCHS 5.
    #[arg(long, num_args = 1..)]
    opts: Vec<String>,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Per-process batch size (DATA.BATCH_SIZE).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Dataset root (DATA.DATA_PATH).
    #[arg(long)]
    data_path: Option<String>,
    /// Weights to start from (MODEL.RESUME): .pth, .pt or .safetensors.
    #[arg(long)]
    resume: Option<String>,
    /// Gradient accumulation steps (TRAIN.ACCUMULATION_STEPS).
    #[arg(long)]
    accumulation_steps: Option<usize>,
    /// Activation checkpointing (TRAIN.USE_CHECKPOINT).
    #[arg(long)]
    use_checkpoint: bool,
    /// Mixed precision level: O0 (off), O1, O2 (AMP_OPT_LEVEL).
    #[arg(long)]
    amp_opt_level: Option<String>,
    /// Output root: path or file:// URI (OUTPUT); runs go to OUTPUT/MODEL.NAME/TAG.
    #[arg(long)]
    output: Option<String>,
    /// Run tag (TAG).
    #[arg(long)]
    tag: Option<String>,
    /// Evaluate only.
    #[arg(long)]
    eval: bool,
    /// Measure forward throughput only.
    #[arg(long)]
    throughput: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Prometheus endpoint address, or "off".
    #[arg(long, default_value = "0.0.0.0:9400")]
    metrics_addr: String,
    /// Print the evaluation as JSON on stdout too.
    #[arg(long)]
    json: bool,
    /// No progress bars (log lines every PRINT_FREQ iterations instead).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Trained weights (.safetensors, .pth, .pt, or a checkpoint directory's model.safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// A file listing one image path per line; writes JSON lines.
    #[arg(long, conflicts_with = "input_tensor")]
    images: Option<PathBuf>,
    /// A safetensors file with one [N,3,H,W] float tensor (already preprocessed).
    #[arg(long, requires = "output")]
    input_tensor: Option<PathBuf>,
    /// Where to write: safetensors for --input-tensor; JSON lines for --images (default stdout).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Classes to report per image.
    #[arg(long, default_value_t = 5)]
    topk: i64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

fn parse_device(s: &str) -> Result<Device> {
    Ok(match s {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => anyhow::bail!("unknown device '{other}': use cpu, cuda, cuda:N or auto"),
        },
    })
}

fn load(c: &ConfigArgs, o: Overrides) -> Result<Config> {
    let o = Overrides {
        opts: c.opts.clone(),
        ..o
    };
    Ok(load_config(c.cfg.as_deref(), &o)?)
}

fn print_summary(s: &RunSummary) {
    println!();
    println!("== run summary ==");
    println!("output       {}", s.output);
    println!("parameters   {}", s.parameters);
    println!("epochs run   {}", s.epochs_run);
    println!("steps        {}", s.steps);
    if s.train_seconds > 0.0 {
        println!(
            "train time   {:.1}s ({:.1} img/s)",
            s.train_seconds, s.images_per_second
        );
    }
    if let Some(c) = &s.checkpoint {
        println!("checkpoint   {c}");
    }
    if let Some(e) = &s.eval {
        println!("{}", e.table());
    }
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let o = Overrides {
        batch_size: a.batch_size,
        data_path: a.data_path.clone(),
        resume: a.resume.clone(),
        accumulation_steps: a.accumulation_steps,
        use_checkpoint: a.use_checkpoint,
        amp_opt_level: a.amp_opt_level.clone(),
        output: a.output.clone(),
        tag: a.tag.clone(),
        eval: a.eval,
        throughput: a.throughput,
        ..Default::default()
    };
    let cfg = load(&a.config, o)?;
    let metrics_addr =
        (a.metrics_addr != "off" && !a.metrics_addr.is_empty()).then(|| a.metrics_addr.clone());
    let progress = !a.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let summary = run(
        &cfg,
        &RunOptions {
            device: parse_device(&a.device)?,
            metrics_addr,
            progress,
            stop: Some(stop_flag()?),
        },
    )?;
    print_summary(&summary);
    if let Some(e) = &summary.eval {
        if a.json {
            println!("{}", serde_json::to_string(e)?);
        }
    }
    if let Some(dir) = &summary.artifacts {
        println!("eval json    {}", dir.join("eval.json").display());
        println!(
            "plot         {}",
            dir.join("per_class_accuracy.svg").display()
        );
    }
    Ok(())
}

/// SIGTERM and SIGUSR1 ask training to checkpoint and exit at the next step.
fn stop_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register(sig, flag.clone()).context("installing signal handlers")?;
    }
    Ok(flag)
}

fn cmd_summary(c: ConfigArgs) -> Result<()> {
    let cfg = load(&c, Overrides::default())?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = RideSwin::new(&vs.root(), &cfg.swin_spec())
        .map_err(|m| anyhow::anyhow!("invalid model config: {m}"))?;
    println!("model        {}", cfg.model.name);
    println!("experts      {}", cfg.model.num_experts);
    println!("parameters   {}", parameter_count(&vs));
    println!("flops        {}", model.flops());
    println!("gflops       {:.3}", model.flops() as f64 / 1e9);
    Ok(())
}

fn cmd_bench(b: BenchArgs) -> Result<()> {
    let cfg = load(&b.config, Overrides::default())?;
    if b.threads > 0 {
        tch::set_num_threads(b.threads);
    }
    let t = ride_trainer::bench::time_training_steps(
        &cfg,
        parse_device(&b.device)?,
        b.batch_size,
        b.warmup,
        b.steps,
    )?;
    println!("{}", serde_json::to_string(&t)?);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Summary(c) => cmd_summary(c),
        Command::BenchStep(b) => cmd_bench(b),
        Command::Predict(p) => ride_trainer::predict::run(
            &p.config.cfg,
            &p.config.opts,
            &p.weights,
            p.images.as_deref(),
            p.input_tensor.as_deref(),
            p.output.as_deref(),
            p.topk,
            parse_device(&p.device).unwrap_or(Device::Cpu),
        )
        .context("predict"),
    };
    if let Err(e) = result {
        if let Some(p) = e.downcast_ref::<ride_trainer::train::Preempted>() {
            eprintln!("{p}");
            std::process::exit(ride_trainer::train::PREEMPTED_EXIT_CODE);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
