//! `ride-trainer`: train, evaluate, summarise and run RIDE-Swin models.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ride_trainer::config::cli::{parse_device, ConfigArgs};
use ride_trainer::config::Overrides;
use ride_trainer::model::ride_swin::parameter_count;
use ride_trainer::model::Network;
use ride_trainer::train::{run, RunOptions, RunSummary};
use std::path::PathBuf;
use tch::{nn, Device};

#[derive(Parser)]
#[command(
    name = ride_contract::TRAINER_BINARY,
    version,
    about = "RIDE long-tailed recognition on a Swin Transformer (libtorch)"
)]
struct Cli {
    /// Log format on stderr: `text` (plain lines) or `json` (one object per line).
    #[arg(long, global = true, env = ride_trainer::logging::ENV_LOG_FORMAT, default_value = "text")]
    log_format: ride_trainer::logging::LogFormat,
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
    /// Run N ranks of `train` on this machine; restart the gang on failure.
    Launch(LaunchArgs),
    /// Class counts and the many/medium/few split of the training set (labels only), with a plot.
    DataStats(DataStatsArgs),
    /// Write trained weights in the authors' layout: a `.pth` holding
    /// `{'model': state_dict}` (what their `main.py --eval --resume` loads)
    /// or the same state dict as `.safetensors`.
    Export(ExportArgs),
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Trained weights: a checkpoint directory, its model.safetensors, or a .pth/.pt.
    #[arg(long)]
    weights: PathBuf,
    /// The file to write: OUT.pth or OUT.safetensors.
    #[arg(long)]
    output: PathBuf,
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
struct LaunchArgs {
    /// Ranks to start on this machine (one GPU each when training on CUDA).
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Gang restarts allowed after a rank fails (preemptions are not counted).
    #[arg(long, default_value_t = 3)]
    max_restarts: u32,
    /// Gang restarts allowed after the gang stalls (a rank's watchdog
    /// exits 76 after RIDE_STALL_TIMEOUT seconds without an optimiser step).
    #[arg(long, default_value_t = 3)]
    max_stall_restarts: u32,
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
    /// Output root: a path, or a file://, s3://, gs:// or az:// URI (OUTPUT); runs go to OUTPUT/MODEL.NAME/TAG.
    #[arg(long)]
    output: Option<String>,
    /// Also save a mid-epoch checkpoint whenever this long has passed since
    /// the last save (90s, 30m, 1h30m; 0: off): every rank agrees at the next
    /// optimiser step and rank 0 saves in the background. Retention keeps the
    /// newest KEEP_LAST of these beside the epoch checkpoints; evaluation
    /// stays on the epoch rules.
    #[arg(long, env = ride_contract::ENV_CHECKPOINT_EVERY, default_value = ride_contract::DEFAULT_CHECKPOINT_EVERY, value_parser = checkpoint_every)]
    checkpoint_every: Every,
    /// Run tag (TAG).
    #[arg(long)]
    tag: Option<String>,
    /// Evaluate only.
    #[arg(long)]
    eval: bool,
    /// Measure forward throughput only.
    #[arg(long)]
    throughput: bool,
    /// `experts` trains the model; `router` freezes its experts and trains
    /// the expert assignment module, starting from the experts run's newest
    /// checkpoint (same --cfg, --output, --tag) or from --resume; with
    /// --eval it evaluates the router stage's newest checkpoint (TRAIN.STAGE).
    #[arg(long)]
    stage: Option<String>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Prometheus endpoint address, or "off".
    #[arg(long, default_value = ride_contract::DEFAULT_METRICS_ADDR)]
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
    /// `router`: the weights hold a router (a router-stage checkpoint);
    /// route each image through only the experts it needs (TRAIN.STAGE).
    #[arg(long)]
    stage: Option<String>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
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
        println!(
            "data wait    {:.1}s ({:.0}% of train time waiting for the loader)",
            s.data_wait_seconds,
            100.0 * s.data_wait_seconds / s.train_seconds
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

fn cmd_train(a: TrainArgs, log_format: ride_trainer::logging::LogFormat) -> Result<()> {
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
        stage: a.stage.clone(),
        ..Default::default()
    };
    let cfg = a.config.load(o)?;
    let metrics_addr = (a.metrics_addr != ride_contract::METRICS_OFF && !a.metrics_addr.is_empty())
        .then(|| a.metrics_addr.clone());
    // Bars are for a person at a terminal; JSON logs get PRINT_FREQ lines.
    let progress = !a.no_progress
        && log_format == ride_trainer::logging::LogFormat::Text
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let world = ride_trainer::dist::WorldInfo::from_env()?;
    let _rank = tracing::info_span!("rank", rank = world.rank).entered();
    let is_main = world.rank == 0;
    let report = ride_trainer::train::SharedProgress::default();
    let result = run(
        &cfg,
        &RunOptions {
            device: parse_device(&a.device)?,
            metrics_addr,
            progress,
            stop: Some(stop_flag()?),
            checkpoint_every: a.checkpoint_every.0,
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
        if summary.eval.as_ref().is_some_and(|e| e.routing.is_some()) {
            println!(
                "routing plot {}",
                dir.join(ride_trainer::train::ROUTING_CURVE_FILE).display()
            );
        }
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
    if std::env::var_os(ride_contract::ENV_TERMINATION_LOG).is_none() {
        return;
    }
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
    ride_trainer::train::write_termination_log(report);
}

/// SIGTERM and SIGUSR1 ask training to checkpoint and exit at the next step.
/// A `--checkpoint-every` value (`None`: off).
#[derive(Clone, Copy, Debug)]
struct Every(Option<std::time::Duration>);

fn checkpoint_every(s: &str) -> Result<Every, String> {
    ride_contract::parse_duration(s).map(Every)
}

fn stop_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register(sig, flag.clone()).context("installing signal handlers")?;
    }
    Ok(flag)
}

fn cmd_summary(c: ConfigArgs) -> Result<()> {
    let cfg = c.load(Overrides::default())?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model =
        Network::new(&vs.root(), &cfg).map_err(|m| anyhow::anyhow!("invalid model config: {m}"))?;
    let flops = model.flops(cfg.data.img_size);
    println!("model        {} ({})", cfg.model.name, cfg.model.kind);
    println!("experts      {}", cfg.model.num_experts);
    println!("parameters   {}", parameter_count(&vs));
    println!("flops        {flops}");
    println!("gflops       {:.3}", flops as f64 / 1e9);
    Ok(())
}

fn cmd_launch(a: LaunchArgs, log_format: ride_trainer::logging::LogFormat) -> Result<()> {
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
        max_stall_restarts: a.max_stall_restarts,
        master_port: a.master_port,
        train_args: a.train_args,
        program: std::env::current_exe().context("finding the ride-trainer executable")?,
        grace: std::time::Duration::from_secs_f64(a.grace_seconds.max(0.0)),
        node,
        log_format,
    };
    let code = ride_trainer::launch::launch(&opts, stop_flag()?).context("launching ranks")?;
    std::process::exit(code);
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    let s = ride_trainer::export::run(
        a.config.cfg.as_deref(),
        &a.config.opts,
        &a.weights,
        &a.output,
    )
    .context("export")?;
    if s.router_tensors_dropped > 0 {
        println!(
            "left out {} router tensors (the authors' Swin code has no router; `predict --stage router` uses them)",
            s.router_tensors_dropped
        );
    }
    println!(
        "wrote {} ({} tensors, {} parameters)",
        s.output.display(),
        s.tensors,
        s.parameters
    );
    Ok(())
}

fn cmd_data_stats(a: DataStatsArgs) -> Result<()> {
    let cfg = a.config.load(Overrides {
        data_path: a.data_path.clone(),
        ..Default::default()
    })?;
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

fn main() {
    let cli = Cli::parse();
    ride_trainer::logging::init(cli.log_format);
    let result = match cli.command {
        Command::Train(a) => cmd_train(a, cli.log_format),
        Command::Summary(c) => cmd_summary(c),
        Command::Launch(a) => cmd_launch(a, cli.log_format),
        Command::DataStats(a) => cmd_data_stats(a),
        Command::Export(a) => cmd_export(a),
        Command::Predict(p) => ride_trainer::predict::run(
            &p.config.cfg,
            &p.config.opts,
            p.stage.as_deref(),
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
            tracing::warn!(checkpoint = %p.checkpoint, "{p}");
            std::process::exit(ride_trainer::train::PREEMPTED_EXIT_CODE);
        }
        tracing::error!(error = %format!("{e:#}"), "error: {e:#}");
        if e.chain().any(|c| {
            matches!(
                c.downcast_ref(),
                Some(ride_trainer::dist::DistError::Preflight { .. })
            )
        }) {
            std::process::exit(ride_contract::PREFLIGHT_EXIT_CODE);
        }
        // Bad config: tell launchers that another try cannot help.
        if e.chain()
            .any(|c| c.is::<ride_trainer::config::ConfigError>())
        {
            std::process::exit(ride_contract::CONFIG_ERROR_EXIT_CODE);
        }
        std::process::exit(1);
    }
}
