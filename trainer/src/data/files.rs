//! File-backed datasets: list files as the reference reads them
//! (`relative/path label` per line, e.g. `ImageNet_LT_train.txt`, which also
//! covers iNaturalist-2018 and Places-LT) and image folders
//! (`class_name/*.jpg`, classes in sorted order as torchvision's
//! `ImageFolder`). Construction checks the whole list up front.

use super::{DataError, Dataset, ImageSource, RgbImage};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Bad dataset input, reported before training with the first offending lines.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A file or directory could not be read.
    #[error("{path}: {message}")]
    Unreadable {
        /// The path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The list or folder has problems (all of them summarised).
    #[error("{0}")]
    Invalid(String),
}

/// File extensions read as images.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["jpg", "jpeg", "png", "bmp", "gif", "tif", "tiff", "webp"];

/// Images on disk with labels.
pub struct FileDataset {
    root: PathBuf,
    items: Vec<(PathBuf, usize)>,
    num_classes: usize,
    class_names: Option<Vec<String>>,
}

/// Problems found in a list, grouped, with up to `SHOWN` examples each.
#[derive(Default)]
struct Problems {
    groups: Vec<(String, usize, Vec<String>)>,
}

const SHOWN: usize = 5;

impl Problems {
    fn add(&mut self, group: &str, example: String) {
        match self.groups.iter_mut().find(|g| g.0 == group) {
            Some(g) => {
                g.1 += 1;
                if g.2.len() < SHOWN {
                    g.2.push(example);
                }
            }
            None => self.groups.push((group.to_string(), 1, vec![example])),
        }
    }

    fn into_result(self, what: &str, total: usize, hint: &str) -> Result<(), DatasetError> {
        if self.groups.is_empty() {
            return Ok(());
        }
        let mut msg = format!("{what}: problems in {total} entries:");
        for (group, n, examples) in self.groups {
            msg.push_str(&format!("\n  {group}: {n}"));
            for e in examples {
                msg.push_str(&format!("\n    {e}"));
            }
            if n > SHOWN {
                msg.push_str(&format!("\n    … and {} more", n - SHOWN));
            }
        }
        msg.push_str(&format!("\n{hint}"));
        Err(DatasetError::Invalid(msg))
    }
}

impl FileDataset {
    /// Read `list` (paths relative to `root`) and check every entry: the file
    /// exists, the label is below `num_classes`, and no class is empty.
    pub fn from_list(root: &Path, list: &Path, num_classes: usize) -> Result<Self, DatasetError> {
        let text = std::fs::read_to_string(list).map_err(|e| DatasetError::Unreadable {
            path: list.display().to_string(),
            message: format!("{e} (set DATA.DATA_PATH to the directory holding the list files)"),
        })?;
        let mut problems = Problems::default();
        let mut items = Vec::new();
        let mut line_numbers = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(path), Some(label)) = (parts.next(), parts.next()) else {
                problems.add(
                    "lines without 'path label'",
                    format!("line {}: {line}", i + 1),
                );
                continue;
            };
            match label.parse::<usize>() {
                Ok(l) if l < num_classes => {
                    items.push((PathBuf::from(path), l));
                    line_numbers.push(i + 1);
                }
                Ok(l) => problems.add(
                    &format!("labels outside 0..{num_classes} (MODEL.NUM_CLASSES)"),
                    format!("line {}: {path} {l}", i + 1),
                ),
                Err(_) => problems.add(
                    "labels that are not integers",
                    format!("line {}: {line}", i + 1),
                ),
            }
        }
        let missing: Vec<usize> = items
            .par_iter()
            .enumerate()
            .filter(|(_, (p, _))| !root.join(p).is_file())
            .map(|(k, _)| k)
            .collect();
        for k in missing {
            problems.add(
                "missing files",
                format!(
                    "line {}: {}",
                    line_numbers[k],
                    root.join(&items[k].0).display()
                ),
            );
        }
        let ds = Self {
            root: root.to_path_buf(),
            items,
            num_classes,
            class_names: None,
        };
        let total = ds.items.len();
        let counts = ds.class_counts();
        for (c, n) in counts.iter().enumerate() {
            if *n == 0 && total > 0 {
                problems.add("classes without any image", format!("class {c}"));
            }
        }
        problems.into_result(
            &list.display().to_string(),
            text.lines().filter(|l| !l.trim().is_empty()).count(),
            "fix the list, DATA.DATA_PATH or MODEL.NUM_CLASSES",
        )?;
        Ok(ds)
    }

    /// Read `dir/<class>/<image>`: classes are the sorted sub-directory names.
    /// With `classes`, use that class order (the training split's) instead.
    pub fn from_folder(dir: &Path, classes: Option<&[String]>) -> Result<Self, DatasetError> {
        let unreadable = |p: &Path, e: std::io::Error| DatasetError::Unreadable {
            path: p.display().to_string(),
            message: e.to_string(),
        };
        let mut found: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| unreadable(dir, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        let names: Vec<String> = classes.map_or(found.clone(), |c| c.to_vec());
        let mut problems = Problems::default();
        for f in &found {
            if !names.contains(f) {
                problems.add("class folders unknown to the training split", f.clone());
            }
        }
        let mut items = Vec::new();
        for (label, name) in names.iter().enumerate() {
            let cdir = dir.join(name);
            let mut files: Vec<PathBuf> = match std::fs::read_dir(&cdir) {
                Ok(rd) => rd
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                            IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())
                        })
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            files.sort();
            if files.is_empty() {
                problems.add("classes without any image", cdir.display().to_string());
            }
            items.extend(files.into_iter().map(|p| (p, label)));
        }
        problems.into_result(
            &dir.display().to_string(),
            items.len(),
            "every class needs a folder with at least one image",
        )?;
        Ok(Self {
            root: PathBuf::new(),
            num_classes: names.len(),
            items,
            class_names: Some(names),
        })
    }

    /// Class names (image folders only).
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    fn read(&self, index: usize) -> Result<Vec<u8>, DataError> {
        let (path, _) = self.items.get(index).ok_or(DataError::OutOfRange {
            index,
            len: self.items.len(),
        })?;
        let full = self.root.join(path);
        std::fs::read(&full).map_err(|e| DataError::Decode {
            index,
            reason: format!("{}: {e}", full.display()),
        })
    }
}

impl Dataset for FileDataset {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn label(&self, index: usize) -> usize {
        self.items[index].1
    }

    fn image(&self, index: usize) -> Result<RgbImage, DataError> {
        self.source(index)?
            .decode_at_least(usize::MAX, usize::MAX)
            .map_err(|reason| DataError::Decode {
                index,
                reason: format!(
                    "{}: {reason}",
                    self.root.join(&self.items[index].0).display()
                ),
            })
    }

    fn source(&self, index: usize) -> Result<ImageSource, DataError> {
        Ok(ImageSource::Encoded(self.read(index)?))
    }

    fn describe(&self, index: usize) -> String {
        match self.items.get(index) {
            Some((p, _)) => format!("sample {index} ({})", self.root.join(p).display()),
            None => format!("sample {index}"),
        }
    }
}
