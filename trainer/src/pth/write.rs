//! Write `.pth` files that `torch.load` reads, including under its default
//! `weights_only=True` unpickler: the zip layout `torch.save` makes (a
//! pickle `data.pkl` naming one storage file per tensor under `data/`,
//! `version`, `byteorder`), with a pickle that uses only the globals that
//! unpickler allows (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`
//! and the typed storages).
//!
//! libtorch's own `save` writes TorchScript archives, which `torch.load`
//! does not take as a state dict; hence this writer.

use std::io::{Seek, Write};
use std::path::Path;
use tch::{Kind, Tensor};
use thiserror::Error;
use zip::write::SimpleFileOptions;

/// Errors from writing a `.pth` file.
#[derive(Debug, Error)]
pub enum TorchSaveError {
    /// The file or the archive could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// File.
        path: String,
        /// Cause.
        reason: String,
    },
    /// A tensor has a dtype this writer has no storage class for.
    #[error("tensor {name}: dtype {kind:?} cannot be written (float, int and bool dtypes can)")]
    Kind {
        /// Tensor name.
        name: String,
        /// Its dtype.
        kind: Kind,
    },
}

/// A value in the pickled object: what a checkpoint's top-level dict holds.
#[derive(Debug)]
pub enum PickleValue {
    /// An `OrderedDict` of tensors (a state dict).
    StateDict(Vec<(String, Tensor)>),
    /// A Python int.
    Int(i64),
    /// A Python float.
    Float(f64),
    /// A Python str.
    Str(String),
}

/// Pickle protocol 2 opcodes used here.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const GLOBAL: u8 = b'c';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const EMPTY_DICT: u8 = b'}';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const REDUCE: u8 = b'R';
    pub const BINPERSID: u8 = b'Q';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const NEWFALSE: u8 = 0x89;
    pub const SETITEMS: u8 = b'u';
    pub const STOP: u8 = b'.';
}

struct Pickler {
    out: Vec<u8>,
}

impl Pickler {
    fn global(&mut self, module: &str, name: &str) {
        self.out.push(op::GLOBAL);
        self.out
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn str(&mut self, s: &str) {
        self.out.push(op::BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: i64) {
        if let Ok(small) = i32::try_from(v) {
            self.out.push(op::BININT);
            self.out.extend_from_slice(&small.to_le_bytes());
        } else {
            // LONG1: little-endian two's complement, 8 bytes always suffice.
            self.out.push(op::LONG1);
            self.out.push(8);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn float(&mut self, v: f64) {
        self.out.push(op::BINFLOAT);
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    fn int_tuple(&mut self, vs: &[i64]) {
        self.out.push(op::MARK);
        for &v in vs {
            self.int(v);
        }
        self.out.push(op::TUPLE);
    }
    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.push(op::EMPTY_TUPLE);
        self.out.push(op::REDUCE);
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`
    /// over storage file `key`.
    fn tensor(&mut self, key: &str, class: &str, numel: i64, size: &[i64]) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(op::MARK);
        self.out.push(op::MARK);
        self.str("storage");
        self.global("torch", class);
        self.str(key);
        self.str("cpu");
        self.int(numel);
        self.out.push(op::TUPLE);
        self.out.push(op::BINPERSID);
        self.int(0);
        self.int_tuple(size);
        self.int_tuple(&contiguous_strides(size));
        self.out.push(op::NEWFALSE);
        self.empty_ordered_dict();
        self.out.push(op::TUPLE);
        self.out.push(op::REDUCE);
    }
}

fn contiguous_strides(size: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * size[i + 1].max(1);
    }
    strides
}

/// One tensor's storage, ready for the archive.
struct Storage {
    key: String,
    bytes: Vec<u8>,
}

fn storage_bytes(name: &str, t: &Tensor) -> Result<(Vec<u8>, &'static str), TorchSaveError> {
    let kind = t.kind();
    let (class, elem) = super::storage_of_kind(kind).ok_or(TorchSaveError::Kind {
        name: name.to_string(),
        kind,
    })?;
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * elem];
    t.copy_data_u8(&mut bytes, numel);
    Ok((bytes, class))
}

/// Pickle `top` (a dict of `PickleValue`s, or the bare state dict when
/// `bare` is set) and collect the storages it refers to.
fn pickle(
    top: &[(String, PickleValue)],
    bare: bool,
) -> Result<(Vec<u8>, Vec<Storage>), TorchSaveError> {
    let mut p = Pickler {
        out: vec![op::PROTO, 2],
    };
    let mut storages = Vec::new();
    let state_dict = |p: &mut Pickler,
                      tensors: &[(String, Tensor)],
                      storages: &mut Vec<Storage>|
     -> Result<(), TorchSaveError> {
        p.empty_ordered_dict();
        if tensors.is_empty() {
            return Ok(());
        }
        p.out.push(op::MARK);
        for (name, t) in tensors {
            let (bytes, class) = storage_bytes(name, t)?;
            let key = storages.len().to_string();
            p.str(name);
            p.tensor(&key, class, t.numel() as i64, &t.size());
            storages.push(Storage { key, bytes });
        }
        p.out.push(op::SETITEMS);
        Ok(())
    };
    if bare {
        match top {
            [(_, PickleValue::StateDict(t))] => state_dict(&mut p, t, &mut storages)?,
            _ => unreachable!("a bare state dict is written from exactly one StateDict"),
        }
    } else {
        p.out.push(op::EMPTY_DICT);
        if !top.is_empty() {
            p.out.push(op::MARK);
            for (k, v) in top {
                p.str(k);
                match v {
                    PickleValue::StateDict(t) => state_dict(&mut p, t, &mut storages)?,
                    PickleValue::Int(i) => p.int(*i),
                    PickleValue::Float(f) => p.float(*f),
                    PickleValue::Str(s) => p.str(s),
                }
            }
            p.out.push(op::SETITEMS);
        }
    }
    p.out.push(op::STOP);
    Ok((p.out, storages))
}

fn write_archive<W: Write + Seek>(
    w: W,
    root: &str,
    pickle: &[u8],
    storages: &[Storage],
) -> zip::result::ZipResult<()> {
    let mut zip = zip::ZipWriter::new(w);
    // torch.save stores entries uncompressed and 64-byte aligned so that
    // `torch.load(mmap=True)` can map the storages in place.
    let opts = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64)
        .large_file(true);
    zip.start_file(format!("{root}/data.pkl"), opts)?;
    zip.write_all(pickle)?;
    zip.start_file(format!("{root}/byteorder"), opts)?;
    zip.write_all(b"little")?;
    for s in storages {
        zip.start_file(format!("{root}/data/{}", s.key), opts)?;
        zip.write_all(&s.bytes)?;
    }
    zip.start_file(format!("{root}/version"), opts)?;
    zip.write_all(b"3\n")?;
    zip.start_file(format!("{root}/.data/version"), opts)?;
    zip.write_all(b"3\n")?;
    zip.finish()?;
    Ok(())
}

/// Write `top` as `torch.save(dict(top), path)` would: a dict whose state
/// dict values are `OrderedDict`s of tensors. With `bare`, `top` must be one
/// state dict and the file holds just that (`torch.save(state_dict, path)`).
/// The file appears whole or not at all (written beside, then renamed).
pub fn save(path: &Path, top: &[(String, PickleValue)], bare: bool) -> Result<(), TorchSaveError> {
    let err = |e: &dyn std::fmt::Display| TorchSaveError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if bare && !matches!(top, [(_, PickleValue::StateDict(_))]) {
        return Err(err(&"a bare .pth holds exactly one state dict"));
    }
    let (pkl, storages) = pickle(top, bare)?;
    // torch.save names the archive's root folder after the file.
    let root: String = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("archive")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| err(&e))?;
    write_archive(tmp.as_file(), &root, &pkl, &storages).map_err(|e| err(&e))?;
    tmp.as_file().sync_all().map_err(|e| err(&e))?;
    tmp.persist(path).map_err(|e| err(&e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<i64>::new());
        assert_eq!(contiguous_strides(&[5]), vec![1]);
    }

    #[test]
    fn written_file_reads_back_through_the_pth_reader() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.pth");
        let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 4.0, 5.0, 6.0]).view([2, 3]);
        let b = Tensor::from_slice(&[7i64, 8, 9]);
        let sd = vec![
            ("w".to_string(), a.shallow_clone()),
            ("idx".to_string(), b.shallow_clone()),
        ];
        save(
            &p,
            &[
                ("model".into(), PickleValue::StateDict(sd)),
                ("epoch".into(), PickleValue::Int(3)),
            ],
            false,
        )
        .unwrap();
        let back = crate::weights::read_pth(&p).unwrap();
        assert_eq!(back.len(), 2);
        assert!(back["w"].equal(&a));
        assert!(back["idx"].equal(&b));
    }

    #[test]
    fn unsupported_dtypes_name_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::zeros([2], (Kind::ComplexFloat, tch::Device::Cpu));
        let e = save(
            &dir.path().join("x.pth"),
            &[(
                "model".into(),
                PickleValue::StateDict(vec![("odd".into(), t)]),
            )],
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tensor odd"), "{e}");
    }
}
