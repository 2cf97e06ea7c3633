//! `ride`: print the RideTraining CRD, check manifests, and run a manifest
//! locally through `ride-trainer launch`.

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
    /// Check a RideTraining manifest (schema types and cross-field rules).
    Check {
        /// Manifest file.
        file: PathBuf,
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
}

fn read_manifest(file: &Path) -> Result<RideTraining> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let de = serde_norway::Deserializer::from_str(&text);
    let rt: RideTraining = serde_path_to_error_free(de)
        .with_context(|| format!("{} is not a valid RideTraining", file.display()))?;
    rt.spec
        .validate()
        .with_context(|| format!("{}", file.display()))?;
    Ok(rt)
}

/// Deserialise, keeping serde's message (which names the field).
fn serde_path_to_error_free(de: serde_norway::Deserializer<'_>) -> Result<RideTraining> {
    Ok(serde::Deserialize::deserialize(de)?)
}

fn trainer_binary() -> PathBuf {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("ride-trainer")));
    match sibling {
        Some(p) if p.is_file() => p,
        _ => PathBuf::from("ride-trainer"),
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            use std::io::Write;
            // A closed pipe (`ride crd | head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(ride_operator::crd_yaml()?.as_bytes());
        }
        Command::Check { file } => {
            let rt = read_manifest(&file)?;
            println!(
                "{}: ok ({} workers, config {})",
                rt.metadata.name.as_deref().unwrap_or("?"),
                rt.spec.workers.replicas,
                rt.spec.trainer.config
            );
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
    }
    Ok(())
}
