//! `ride`: print the RideTraining CRD, check manifests, run a manifest
//! locally through `ride-trainer launch`, or on Slurm through an sbatch
//! script rendered from it.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ride_operator::crd::RideTraining;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "ride", version, about = "RideTraining tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinition (YAML).
    Crd,
    /// Check RideTraining manifests as the API server will: the CRD's schema
    /// (types, ranges, patterns, unknown fields), its CEL rules, object names
    /// and cross-field rules, then the operator's pod policy (give it the
    /// operator's own flags). Files may hold several documents; other kinds
    /// are listed and skipped. Exits 1 when any RideTraining is invalid.
    Check {
        /// Manifest files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The operator's pod policy, with the flags it runs with.
        #[command(flatten)]
        policy: ride_operator::pod_policy::PodPolicy,
    },
    /// Run a RideTraining manifest on this machine with `ride-trainer launch`.
    RunLocal {
        /// Manifest file.
        file: PathBuf,
        /// Directory of trainer configs.
        #[arg(long, default_value = "configs")]
        configs: PathBuf,
        /// Output location (default: the manifest's file:// URI, else output/NAME).
        #[arg(long)]
        output: Option<String>,
        /// Print the command instead of running it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Render a RideTraining manifest as a Slurm batch script (workers →
    /// nodes, GPUs per worker → tasks per node, checkpoint URI → output,
    /// overrides → --opts, maxExemptRestarts → requeue bound, deadline →
    /// --time) and print it, or submit it with --submit.
    Sbatch {
        /// Manifest file.
        file: PathBuf,
        /// Directory of trainer configs on the cluster.
        #[arg(long, default_value = "configs")]
        configs: PathBuf,
        /// The ride-trainer binary on the cluster (default: the one next to
        /// this `ride`, else `ride-trainer` from PATH).
        #[arg(long)]
        trainer: Option<String>,
        /// Submit with sbatch instead of printing.
        #[arg(long)]
        submit: bool,
        /// Extra sbatch options after `--` (they override the script's own).
        #[arg(last = true)]
        sbatch_args: Vec<String>,
    },
}

/// The one RideTraining of `file`, checked as `ride check` does.
fn read_manifest(file: &Path) -> Result<RideTraining> {
    use ride_operator::manifest::{check_documents, Verdict};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let verdicts = check_documents(&text, None).with_context(|| format!("{}", file.display()))?;
    let trainings: Vec<&Verdict> = verdicts
        .iter()
        .filter(|v| !matches!(v, Verdict::Other { .. }))
        .collect();
    match trainings.as_slice() {
        [Verdict::Valid { .. }] => {}
        [Verdict::Invalid { errors, .. }] => {
            anyhow::bail!(
                "{} is not a valid RideTraining: {}",
                file.display(),
                errors.join("; ")
            )
        }
        other => anyhow::bail!(
            "{} holds {} RideTrainings; give a file with exactly one",
            file.display(),
            other.len()
        ),
    }
    use serde::Deserialize;
    for doc in serde_norway::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc)?;
        if value["kind"] == "RideTraining" {
            return Ok(serde_json::from_value(value)?);
        }
    }
    anyhow::bail!("{}: no RideTraining", file.display())
}

/// Print a verdict per document of each file; false when any RideTraining is invalid.
fn check(files: &[PathBuf], policy: &ride_operator::pod_policy::PodPolicy) -> Result<bool> {
    use ride_operator::manifest::{check_documents, Verdict};
    let mut all_valid = true;
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let verdicts =
            check_documents(&text, Some(policy)).with_context(|| format!("{}", file.display()))?;
        if verdicts.is_empty() {
            println!("{}: no objects", file.display());
        }
        for v in verdicts {
            match v {
                Verdict::Valid {
                    name,
                    workers,
                    config,
                } => println!(
                    "{}: {name}: ok ({workers} workers, config {config})",
                    file.display()
                ),
                Verdict::Other { kind } => {
                    println!("{}: {kind}: not a RideTraining, skipped", file.display())
                }
                Verdict::Invalid { name, errors } => {
                    all_valid = false;
                    let name = if name.is_empty() { "?" } else { &name };
                    eprintln!("{}: RideTraining {name} is invalid:", file.display());
                    for e in errors {
                        eprintln!("  {e}");
                    }
                }
            }
        }
    }
    Ok(all_valid)
}

fn trainer_binary() -> PathBuf {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(ride_contract::TRAINER_BINARY)));
    match sibling {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from(ride_contract::TRAINER_BINARY),
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            use std::io::Write;
            // A closed pipe (`ride crd | head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(ride_operator::crd_yaml()?.as_bytes());
        }
        Command::Check { files, policy } => {
            if !check(&files, &policy)? {
                std::process::exit(1);
            }
        }
        Command::RunLocal {
            file,
            configs,
            output,
            dry_run,
        } => {
            let rt = read_manifest(&file)?;
            let args = ride_operator::local::launcher_args(&rt, &configs, output.as_deref());
            let bin = trainer_binary();
            if dry_run {
                println!("{} {}", bin.display(), args.join(" "));
                return Ok(());
            }
            let status = std::process::Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Command::Sbatch {
            file,
            configs,
            trainer,
            submit,
            sbatch_args,
        } => {
            let rt = read_manifest(&file)?;
            let trainer = trainer.unwrap_or_else(|| trainer_binary().display().to_string());
            let script = ride_operator::slurm::render(&rt, &configs, &trainer);
            if !submit {
                print!("{script}");
                return Ok(());
            }
            use std::io::Write;
            let mut child = std::process::Command::new("sbatch")
                .args(&sbatch_args)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .context("starting sbatch (is Slurm installed and SLURM_CONF set?)")?;
            child
                .stdin
                .take()
                .context("sbatch's stdin")?
                .write_all(script.as_bytes())?;
            let status = child.wait()?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
    Ok(())
}
