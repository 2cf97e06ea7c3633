//! Loading: defaults ← `BASE` files ← the file ← `--opts` ← flags, with
//! yacs-like strictness (every key must exist in the defaults).

use super::Config;
use serde_norway::{Mapping, Value};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors from loading a configuration; each names the key or file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid YAML.
    #[error("{path} is not valid YAML: {source}")]
    Yaml {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: serde_norway::Error,
    },
    /// A key that the reference config does not have.
    #[error("unknown config key {key} (in {origin}); check the spelling against docs/config.md")]
    UnknownKey {
        /// Dotted key.
        key: String,
        /// Where it came from.
        origin: String,
    },
    /// A value of the wrong type.
    #[error("config key {key} has the wrong type: {message}")]
    WrongType {
        /// Dotted key.
        key: String,
        /// Serde's message.
        message: String,
    },
    /// A value that is well-typed but not allowed.
    #[error("config key {key}: {message}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// Why.
        message: String,
    },
    /// `--opts` was given an odd number of items.
    #[error("--opts needs KEY VALUE pairs; got an odd number of items")]
    OddOpts,
}

/// Command-line overrides applied after the file and `--opts`.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--opts KEY VALUE ...`.
    pub opts: Vec<String>,
    /// `--batch-size`.
    pub batch_size: Option<usize>,
    /// `--data-path`.
    pub data_path: Option<String>,
    /// `--resume`.
    pub resume: Option<String>,
    /// `--accumulation-steps`.
    pub accumulation_steps: Option<usize>,
    /// `--use-checkpoint`.
    pub use_checkpoint: bool,
    /// `--amp-opt-level`.
    pub amp_opt_level: Option<String>,
    /// `--output`.
    pub output: Option<String>,
    /// `--tag`.
    pub tag: Option<String>,
    /// `--eval`.
    pub eval: bool,
    /// `--throughput`.
    pub throughput: bool,
    /// `--stage` (TRAIN.STAGE).
    pub stage: Option<String>,
}

fn read_yaml(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.into(),
        source,
    })?;
    let v: Value = serde_norway::from_str(&text).map_err(|source| ConfigError::Yaml {
        path: path.into(),
        source,
    })?;
    Ok(if v.is_null() {
        Value::Mapping(Mapping::new())
    } else {
        v
    })
}

/// Merge `src` into `dst`; every key of `src` must exist in `dst`.
fn merge(dst: &mut Value, src: &Value, prefix: &str, origin: &str) -> Result<(), ConfigError> {
    let (Value::Mapping(d), Value::Mapping(s)) = (&mut *dst, src) else {
        *dst = src.clone();
        return Ok(());
    };
    for (k, v) in s {
        let name = k
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{k:?}"));
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match d.get_mut(k) {
            None => {
                return Err(ConfigError::UnknownKey {
                    key,
                    origin: origin.into(),
                })
            }
            Some(slot) if slot.is_mapping() => {
                if !v.is_mapping() {
                    return Err(ConfigError::WrongType {
                        key,
                        message: "expected a mapping of sub-keys".into(),
                    });
                }
                merge(slot, v, &key, origin)?
            }
            Some(slot) => *slot = v.clone(),
        }
    }
    Ok(())
}

/// Merge a file and, first, the files in its `BASE` list.
fn merge_file(tree: &mut Value, path: &Path, depth: usize) -> Result<(), ConfigError> {
    if depth > 16 {
        return Err(ConfigError::Invalid {
            key: "BASE".into(),
            message: format!("{} nests BASE files too deeply", path.display()),
        });
    }
    let file = read_yaml(path)?;
    if let Some(Value::Sequence(bases)) = file.get("BASE") {
        for b in bases
            .iter()
            .filter_map(Value::as_str)
            .filter(|b| !b.is_empty())
        {
            let base_path = path.parent().unwrap_or(Path::new(".")).join(b);
            merge_file(tree, &base_path, depth + 1)?;
        }
    }
    merge(tree, &file, "", &path.display().to_string())
}

fn set_dotted(tree: &mut Value, key: &str, value: Value) -> Result<(), ConfigError> {
    let mut cur = tree;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let unknown = || ConfigError::UnknownKey {
            key: key.into(),
            origin: "--opts".into(),
        };
        let map = cur.as_mapping_mut().ok_or_else(unknown)?;
        let slot = map.get_mut(*p).ok_or_else(unknown)?;
        if i + 1 == parts.len() {
            if slot.is_mapping() {
                return Err(ConfigError::WrongType {
                    key: key.into(),
                    message: "is a section; set one of its keys".into(),
                });
            }
            *slot = value;
            return Ok(());
        }
        cur = slot;
    }
    Ok(())
}

/// Turn a merged YAML tree into a [`Config`], naming the key on type errors.
pub fn from_tree(tree: Value) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::WrongType {
            key,
            message: e.into_inner().to_string(),
        }
    })
}

/// Load `path` (or only the defaults when `None`) and apply `overrides`.
pub fn load_config(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let mut tree = serde_norway::to_value(Config::default()).expect("defaults serialise");
    if let Some(p) = path {
        merge_file(&mut tree, p, 0)?;
    }
    if overrides.opts.len() % 2 != 0 {
        return Err(ConfigError::OddOpts);
    }
    for pair in overrides.opts.chunks(2) {
        let value: Value =
            serde_norway::from_str(&pair[1]).unwrap_or_else(|_| Value::String(pair[1].clone()));
        set_dotted(&mut tree, &pair[0], value)?;
    }
    let mut cfg = from_tree(tree)?;
    let o = overrides;
    if let Some(b) = o.batch_size.filter(|&b| b > 0) {
        cfg.data.batch_size = b;
    }
    if let Some(p) = &o.data_path {
        cfg.data.data_path = p.clone();
    }
    if let Some(r) = &o.resume {
        cfg.model.resume = r.clone();
    }
    if let Some(a) = o.accumulation_steps.filter(|&a| a > 0) {
        cfg.train.accumulation_steps = a;
    }
    if o.use_checkpoint {
        cfg.train.use_checkpoint = true;
    }
    if let Some(a) = &o.amp_opt_level {
        cfg.amp_opt_level = a.clone();
    }
    if let Some(out) = &o.output {
        cfg.output = out.clone();
    }
    if let Some(t) = &o.tag {
        cfg.tag = t.clone();
    }
    if let Some(st) = &o.stage {
        cfg.train.stage = st.clone();
    }
    cfg.eval_mode |= o.eval;
    cfg.throughput_mode |= o.throughput;
    if cfg.data.dataset == "synthetic" {
        cfg.model.num_classes = cfg.data.synthetic.num_classes as i64;
    }
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        p
    }

    #[test]
    fn defaults_match_reference_values() {
        let c = load_config(None, &Overrides::default()).unwrap();
        assert_eq!(c.data.batch_size, 128);
        assert_eq!(c.train.base_lr, 5e-4);
        assert_eq!(c.train.loss.additional_div_factor, -0.2);
        assert_eq!(c.aug.auto_augment, "rand-m9-mstd0.5-inc1");
        assert_eq!(c.model.branching_start, 2);
        assert_eq!(c.save_freq, 1);
    }

    #[test]
    fn unknown_key_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.yaml", "MODEL:\n  SWIN:\n    EMBED_DIMS: 3\n");
        let e = load_config(Some(&p), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("MODEL.SWIN.EMBED_DIMS"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.yaml", "TRAIN:\n  EPOCHS: many\n");
        let e = load_config(Some(&p), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("TRAIN.EPOCHS"), "{e}");
    }

    #[test]
    fn base_files_then_file_then_opts_then_flags() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "base.yaml",
            "TRAIN:\n  EPOCHS: 7\n  WARMUP_EPOCHS: 1\nDATA:\n  BATCH_SIZE: 4\n",
        );
        let p = write(
            d.path(),
            "top.yaml",
            "BASE: ['base.yaml']\nTRAIN:\n  EPOCHS: 9\n",
        );
        let o = Overrides {
            opts: vec![
                "TRAIN.WARMUP_EPOCHS".into(),
                "2".into(),
                "MODEL.NAME".into(),
                "x".into(),
            ],
            batch_size: Some(16),
            ..Default::default()
        };
        let c = load_config(Some(&p), &o).unwrap();
        assert_eq!(
            (c.train.epochs, c.train.warmup_epochs, c.data.batch_size),
            (9, 2.0, 16)
        );
        assert_eq!(c.model.name, "x");
        let bad = Overrides {
            opts: vec!["TRAIN.NOPE".into(), "1".into()],
            ..Default::default()
        };
        assert!(load_config(Some(&p), &bad)
            .unwrap_err()
            .to_string()
            .contains("TRAIN.NOPE"));
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let o = Overrides {
            opts: vec!["TRAIN.LOSS_TYPE".into(), "FOCAL".into()],
            ..Default::default()
        };
        let e = load_config(None, &o).unwrap_err().to_string();
        assert!(e.contains("TRAIN.LOSS_TYPE"), "{e}");
        let stage = |stage: &str, opts: &[&str]| {
            let o = Overrides {
                opts: opts.iter().map(|s| s.to_string()).collect(),
                stage: Some(stage.into()),
                ..Default::default()
            };
            load_config(None, &o)
        };
        let e = stage("distill", &[]).unwrap_err().to_string();
        assert!(e.contains("TRAIN.STAGE") && e.contains("distill"), "{e}");
        let e = stage("router", &[]).unwrap_err().to_string();
        assert!(
            e.contains("TRAIN.STAGE") && e.contains("NUM_EXPERTS"),
            "{e}"
        );
        let e = stage(
            "router",
            &["MODEL.NUM_EXPERTS", "3", "MODEL.ROUTER.THRESHOLD", "1.5"],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("MODEL.ROUTER.THRESHOLD"), "{e}");
        // The router stage trains on its own schedule, without mixup.
        let c = stage(
            "router",
            &["MODEL.NUM_EXPERTS", "3", "TRAIN.ROUTER.EPOCHS", "7"],
        )
        .unwrap()
        .for_stage();
        assert_eq!((c.train.epochs, c.aug.mixup, c.train.min_lr), (7, 0.0, 0.0));
        assert_eq!(c.router_spec().unwrap().top_choices_num, 50);
    }
}
