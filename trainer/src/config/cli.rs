//! The command-line side of configuration, shared by `ride-trainer` and
//! `ride-bench`: which YAML file, which overrides, which device.

use super::{load_config, Config, ConfigError, Overrides};
use std::path::PathBuf;
use tch::Device;

/// `--cfg FILE --opts KEY VALUE ...`, as the reference's `main.py` takes them.
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArgs {
    /// Config YAML (reference keys).
    #[arg(long)]
    pub cfg: Option<PathBuf>,
    /// Override config keys: KEY VALUE pairs, e.g. --opts TRAIN.EPOCHS 5.
    #[arg(long, num_args = 1..)]
    pub opts: Vec<String>,
}

impl ConfigArgs {
    /// Load the config with these `--opts` on top of the other overrides.
    pub fn load(&self, overrides: Overrides) -> Result<Config, ConfigError> {
        let o = Overrides {
            opts: self.opts.clone(),
            ..overrides
        };
        load_config(self.cfg.as_deref(), &o)
    }
}

/// A `--device` value that is none of the accepted forms.
#[derive(Debug, thiserror::Error)]
#[error("unknown device '{0}': use cpu, cuda, cuda:N or auto")]
pub struct UnknownDevice(pub String);

/// Parse `--device`: `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto` (GPU 0 when
/// CUDA is available, else CPU).
pub fn parse_device(s: &str) -> Result<Device, UnknownDevice> {
    Ok(match s {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => return Err(UnknownDevice(other.to_string())),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_unknown_ones_are_named() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(parse_device("cuda:3").unwrap(), Device::Cuda(3));
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("'tpu'") && e.contains("cuda:N"), "{e}");
        assert!(parse_device("cuda:x").is_err());
    }
}
