//! Building the train and test datasets that `DATA.DATASET` names, with the
//! reference's file layout under `DATA.DATA_PATH`.

use super::cifar::{CifarDataset, Variant};
use super::files::FileDataset;
use super::synthetic::{SyntheticDataset, SyntheticSpec, SyntheticSplit};
use super::Dataset;
use crate::config::Config;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;

/// The train and test splits of the configured dataset.
pub struct Datasets {
    /// Training split (long-tailed).
    pub train: Arc<dyn Dataset>,
    /// Evaluation split.
    pub test: Arc<dyn Dataset>,
}

/// The list files of each list-based dataset: (train, evaluation). ImageNet-LT
/// evaluates on its test list, as the reference does.
pub fn list_files(dataset: &str) -> Option<(&'static str, &'static str)> {
    match dataset {
        "imagenet-lt" => Some(("ImageNet_LT_train.txt", "ImageNet_LT_test.txt")),
        "places-lt" => Some(("Places_LT_train.txt", "Places_LT_test.txt")),
        "inat" | "inaturalist" => Some(("iNaturalist18_train.txt", "iNaturalist18_val.txt")),
        _ => None,
    }
}

const KNOWN: &str =
    "synthetic, imagenet-lt, places-lt, inat, imagenet (image folders train/ and val/), \
                     image-folder, cifar10, cifar100, cifar10-lt, cifar100-lt";

/// Build the datasets named by `DATA.DATASET`; every file-backed split is
/// checked up front (missing files, labels, empty classes).
pub fn build_datasets(cfg: &Config) -> Result<Datasets> {
    let root = Path::new(&cfg.data.data_path);
    let classes = cfg.model.num_classes as usize;
    let dataset = cfg.data.dataset.as_str();
    let ds = match dataset {
        "synthetic" => {
            let s = &cfg.data.synthetic;
            let spec = SyntheticSpec {
                num_classes: s.num_classes,
                max_per_class: s.max_per_class,
                imbalance: s.imbalance_factor,
                test_per_class: s.test_per_class,
                image_size: cfg.data.img_size as usize,
                seed: s.seed,
            };
            Datasets {
                train: Arc::new(SyntheticDataset::new(spec.clone(), SyntheticSplit::Train)),
                test: Arc::new(SyntheticDataset::new(spec, SyntheticSplit::Test)),
            }
        }
        d if list_files(d).is_some() => {
            let (train, test) = list_files(d).unwrap_or_default();
            let read = |name: &str| {
                FileDataset::from_list(root, &root.join(name), classes)
                    .with_context(|| format!("DATA.DATASET {d}: reading {name}"))
            };
            Datasets {
                train: Arc::new(read(train)?),
                test: Arc::new(read(test)?),
            }
        }
        "imagenet" | "image-folder" => {
            let train = FileDataset::from_folder(&root.join("train"), None)
                .with_context(|| format!("DATA.DATASET {dataset}: reading the train/ folder"))?;
            let names = train.class_names().map(<[String]>::to_vec);
            let test = FileDataset::from_folder(&root.join("val"), names.as_deref())
                .with_context(|| format!("DATA.DATASET {dataset}: reading the val/ folder"))?;
            Datasets {
                train: Arc::new(train),
                test: Arc::new(test),
            }
        }
        "cifar10" | "cifar100" | "cifar10-lt" | "cifar100-lt" => {
            let variant = if dataset.starts_with("cifar100") {
                Variant::Cifar100
            } else {
                Variant::Cifar10
            };
            let mut train = CifarDataset::load(root, variant, true)?;
            if dataset.ends_with("-lt") {
                train = train.long_tailed(cfg.data.imb_factor, cfg.seed);
            }
            Datasets {
                train: Arc::new(train),
                test: Arc::new(CifarDataset::load(root, variant, false)?),
            }
        }
        other => bail!("DATA.DATASET '{other}' is not known; use one of: {KNOWN}"),
    };
    if ds.train.num_classes() != classes {
        bail!(
            "MODEL.NUM_CLASSES is {classes} but DATA.DATASET {dataset} has {} classes; set MODEL.NUM_CLASSES {}",
            ds.train.num_classes(),
            ds.train.num_classes()
        );
    }
    Ok(ds)
}

/// The training transform the config asks for (timm's `create_transform`
/// semantics: RandAugment when `AUG.AUTO_AUGMENT` is set, else ColorJitter).
pub fn train_transform(cfg: &Config) -> Result<super::transforms::Transform> {
    use super::augment::RandAugment;
    use super::transforms::{Interpolation, TrainAugment, Transform};
    let interpolation = Interpolation::parse(&cfg.data.interpolation)
        .map_err(|m| anyhow::anyhow!("DATA.INTERPOLATION: {m}"))?;
    let aa = cfg.aug.auto_augment.as_str();
    let rand_augment = if aa.is_empty() || aa == "none" {
        None
    } else {
        Some(RandAugment::parse(aa).map_err(|m| anyhow::anyhow!("AUG.AUTO_AUGMENT: {m}"))?)
    };
    Ok(Transform::Train(TrainAugment {
        size: cfg.data.img_size as usize,
        erase_prob: cfg.aug.reprob as f32,
        flip_prob: 0.5,
        interpolation,
        rand_augment,
        color_jitter: cfg.aug.color_jitter as f32,
    }))
}

/// The evaluation transform (resize + center crop, or plain resize).
pub fn eval_transform(cfg: &Config) -> Result<super::transforms::Transform> {
    use super::transforms::{Interpolation, Transform};
    Ok(Transform::Eval {
        size: cfg.data.img_size as usize,
        center_crop: cfg.test.crop,
        interpolation: Interpolation::parse(&cfg.data.interpolation)
            .map_err(|m| anyhow::anyhow!("DATA.INTERPOLATION: {m}"))?,
    })
}
