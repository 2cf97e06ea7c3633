//! `ride-trainer`: train, evaluate, summarise and run RIDE-Swin models.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ride_trainer::config::{load_config, Config, Overrides};
use ride_trainer::model::ride_swin::parameter_count;
use ride_trainer::model::RideSwin;
use ride_trainer::train::{run, RunOptions, RunSummary};
use std::path::PathBuf;
use tch::{nn, Device, Tensor};

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
    /// Run N ranks of `train` on this machine; restart the gang on failure.
    Launch(LaunchArgs),
    /// Class counts and the many/medium/few split of the training set (labels only), with a plot.
    DataStats(DataStatsArgs),
    /// Measure TCP ring all-reduce bandwidth with N local ranks (prints JSON lines).
    BenchAllreduce(BenchAllreduceArgs),
    /// Measure checkpoint save throughput to a location against a raw upload (prints JSON).
    BenchCheckpoint(BenchCheckpointArgs),
    /// Measure the configured train transform on a folder of images, one thread (prints JSON).
    BenchTransform(BenchTransformArgs),
}

#[derive(Args)]
struct DataStatsArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Dataset root (DATA.DATA_PATH).
    #[arg(long)]
    data_path: Option<String>,
    /// Where to write the class-size plot (SVG).
    #[arg(long, default_value = "class_sizes.svg")]
    plot: PathBuf,
    /// Print the statistics as JSON too.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchAllreduceArgs {
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
struct BenchTransformArgs {
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
struct BenchCheckpointArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Location to write to (path, file://, s3://, ...).
    #[arg(long)]
    output: String,
    /// Timed rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Args)]
struct LaunchArgs {
    /// Ranks to start on this machine (one GPU each when training on CUDA).
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Gang restarts allowed after a rank fails (preemptions are not counted).
    #[arg(long, default_value_t = 3)]
    max_restarts: u32,
    /// Rendezvous port (default: a free port per attempt).
    #[arg(long)]
    master_port: Option<u16>,
    /// Seconds between SIGTERM and SIGKILL when stopping the other ranks.
    #[arg(long, default_value_t = 10.0)]
    grace_seconds: f64,
    /// Machines in the gang; above 1 this launcher runs one node's share
    /// and leaves restarts to whoever started all nodes.
    #[arg(long, default_value_t = 1)]
    nnodes: usize,
    /// This machine's index among --nnodes (global ranks are node-major).
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Host of global rank 0 (with --nnodes above 1).
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// Arguments for `ride-trainer train`, after `--`.
    #[arg(last = true)]
    train_args: Vec<String>,
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
    if s.skipped_samples > 0 {
        println!(
            "skipped      {} training samples that could not be decoded",
            s.skipped_samples
        );
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
    let world = ride_trainer::dist::WorldInfo::from_env()?;
    let is_main = world.rank == 0;
    let report = ride_trainer::train::SharedProgress::default();
    let result = run(
        &cfg,
        &RunOptions {
            device: parse_device(&a.device)?,
            metrics_addr,
            progress,
            stop: Some(stop_flag()?),
            world,
            report: report.clone(),
        },
    );
    write_termination_message(&report, &result);
    if !is_main {
        if let Err(e) = &result {
            if e.downcast_ref::<ride_trainer::train::Preempted>().is_some() {
                // Rank 0 says where the checkpoint went; the others just stop.
                std::process::exit(ride_trainer::train::PREEMPTED_EXIT_CODE);
            }
        }
    }
    let summary = result?;
    if !is_main {
        return Ok(());
    }
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

/// Leave the final progress report where the launcher reads it (on
/// Kubernetes the container's termination message), when it names a file.
fn write_termination_message(
    report: &ride_trainer::train::SharedProgress,
    result: &Result<ride_trainer::train::RunSummary>,
) {
    use ride_contract::RunState;
    let Some(path) = std::env::var_os(ride_contract::ENV_TERMINATION_LOG) else {
        return;
    };
    ride_trainer::train::update_progress(report, |p| match result {
        Ok(_) => {
            p.state = RunState::Finished;
            p.message = None;
        }
        Err(e) => match e.downcast_ref::<ride_trainer::train::Preempted>() {
            Some(pre) => {
                p.state = RunState::Preempted;
                p.message = Some(pre.to_string());
            }
            None => {
                p.state = RunState::Failed;
                p.message = Some(format!("{e:#}"));
            }
        },
    });
    let text = report
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .termination_message();
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!(
            "warning: cannot write the termination message to {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
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

fn cmd_launch(a: LaunchArgs) -> Result<()> {
    anyhow::ensure!(a.nproc_per_node >= 1, "--nproc-per-node must be at least 1");
    anyhow::ensure!(
        a.nnodes >= 1 && a.node_rank < a.nnodes,
        "--node-rank {} must be below --nnodes {}",
        a.node_rank,
        a.nnodes
    );
    anyhow::ensure!(
        a.nnodes == 1 || a.master_port.is_some(),
        "--master-port is required with --nnodes above 1: every node must dial the same port"
    );
    let node = (a.nnodes > 1).then(|| ride_trainer::launch::NodePlacement {
        nnodes: a.nnodes,
        node_rank: a.node_rank,
        master_addr: a.master_addr.clone(),
    });
    let opts = ride_trainer::launch::LaunchOptions {
        nproc: a.nproc_per_node,
        max_restarts: a.max_restarts,
        master_port: a.master_port,
        train_args: a.train_args,
        program: std::env::current_exe().context("finding the ride-trainer executable")?,
        grace: std::time::Duration::from_secs_f64(a.grace_seconds.max(0.0)),
        node,
    };
    let code = ride_trainer::launch::launch(&opts, stop_flag()?).context("launching ranks")?;
    std::process::exit(code);
}

fn cmd_data_stats(a: DataStatsArgs) -> Result<()> {
    let cfg = load(
        &a.config,
        Overrides {
            data_path: a.data_path.clone(),
            ..Default::default()
        },
    )?;
    let started = std::time::Instant::now();
    let data = ride_trainer::data::select::build_datasets(&cfg)?;
    let stats = ride_trainer::data::stats::DataStats::of(data.train.as_ref());
    println!(
        "{} training split ({} test images), read and checked in {:.2}s",
        cfg.data.dataset,
        data.test.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{}", stats.table());
    stats.plot_svg(
        &a.plot,
        &format!("{}: training images per class", cfg.data.dataset),
    )?;
    println!("plot         {}", a.plot.display());
    if a.json {
        println!("{}", serde_json::to_string(&stats)?);
    }
    Ok(())
}

fn cmd_bench_allreduce(a: BenchAllreduceArgs) -> Result<()> {
    let sizes: Vec<usize> = a
        .sizes_mb
        .iter()
        .map(|mb| (mb * 1e6) as usize / 4 * 4)
        .collect();
    if std::env::var_os("WORLD_SIZE").is_some() {
        let (rank, timings) =
            ride_trainer::bench_io::all_reduce_bandwidth_from_env(&sizes, a.warmup, a.iters)?;
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
    let children: Vec<std::process::Child> = (0..a.world)
        .map(|rank| {
            std::process::Command::new(&exe)
                .arg("bench-allreduce")
                .arg("--sizes-mb")
                .arg(
                    a.sizes_mb
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                )
                .args([
                    "--warmup",
                    &a.warmup.to_string(),
                    "--iters",
                    &a.iters.to_string(),
                ])
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

fn cmd_bench_transform(a: BenchTransformArgs) -> Result<()> {
    let cfg = load(&a.config, Overrides::default())?;
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
        let outputs = ride_trainer::bench_io::transform_outputs(&files, &transform)?;
        let s = transform.size() as i64;
        let images = Tensor::from_slice(&outputs).reshape([files.len() as i64, 3, s, s]);
        Tensor::write_safetensors(&[("images", images)], path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let t = ride_trainer::bench_io::transform_throughput(&files, &transform, a.rounds)?;
    println!("{}", serde_json::to_string(&t)?);
    Ok(())
}

fn cmd_bench_checkpoint(a: BenchCheckpointArgs) -> Result<()> {
    let cfg = load(&a.config, Overrides::default())?;
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = RideSwin::new(&vs.root(), &cfg.swin_spec())
        .map_err(|m| anyhow::anyhow!("invalid model config: {m}"))?;
    let opt = ride_trainer::optim::AdamW::new(&vs, 0.05, 1e-8, (0.9, 0.999));
    let model: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    let t =
        ride_trainer::bench_io::checkpoint_throughput(&a.output, &model, &opt.state(), a.rounds)?;
    println!("{}", serde_json::to_string(&t)?);
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => cmd_train(a),
        Command::Summary(c) => cmd_summary(c),
        Command::BenchStep(b) => cmd_bench(b),
        Command::Launch(a) => cmd_launch(a),
        Command::DataStats(a) => cmd_data_stats(a),
        Command::BenchAllreduce(a) => cmd_bench_allreduce(a),
        Command::BenchCheckpoint(a) => cmd_bench_checkpoint(a),
        Command::BenchTransform(a) => cmd_bench_transform(a),
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
        // Bad config: tell launchers that another try cannot help.
        if e.chain()
            .any(|c| c.is::<ride_trainer::config::ConfigError>())
        {
            std::process::exit(ride_contract::CONFIG_ERROR_EXIT_CODE);
        }
        std::process::exit(1);
    }
}
