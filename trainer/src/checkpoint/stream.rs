//! A checkpoint file made as it is uploaded: the safetensors image of the
//! host copies is produced tensor by tensor, hashed and handed to a
//! multipart upload whose parts are in flight in parallel, so serialising,
//! hashing and the network overlap and the save holds at most the parts in
//! flight beside the host copy (never a second image of the checkpoint).

use super::{CheckpointError, FileDigest};
use bytes::Bytes;
use object_store::{path::Path as StorePath, ObjectStore, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

/// Bytes per uploaded part (S3 wants at least 5 MiB for all but the last).
pub const PART_BYTES: usize = 16 << 20;
/// Parts uploading at once: enough to fill a link whose round trips are
/// long against one part's transfer, while the memory stays bounded
/// (`PART_BYTES * PARTS_IN_FLIGHT`).
pub const PARTS_IN_FLIGHT: usize = 6;

/// The safetensors dtype name of `kind`.
fn dtype(kind: Kind) -> Result<&'static str, CheckpointError> {
    Ok(match kind {
        Kind::Bool => "BOOL",
        Kind::Uint8 => "U8",
        Kind::Int8 => "I8",
        Kind::Int16 => "I16",
        Kind::Int => "I32",
        Kind::Int64 => "I64",
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        Kind::Float => "F32",
        Kind::Double => "F64",
        other => {
            return Err(CheckpointError::Io(std::io::Error::other(format!(
                "a tensor of kind {other:?} has no safetensors dtype"
            ))))
        }
    })
}

/// The safetensors file's head (the header's length, then the header,
/// padded with spaces to 8 bytes as the format's writers do) for `tensors`
/// laid out in order, and each tensor's size in bytes.
pub fn safetensors_head(
    tensors: &[(String, Tensor)],
) -> Result<(Vec<u8>, Vec<usize>), CheckpointError> {
    let mut header = serde_json::Map::new();
    let mut sizes = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for (name, t) in tensors {
        let kind = t.f_kind()?;
        let bytes = t.numel() * kind.elt_size_in_bytes();
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": dtype(kind)?,
                "shape": t.size(),
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
        sizes.push(bytes);
    }
    let mut json = serde_json::to_vec(&header)?;
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut head = (json.len() as u64).to_le_bytes().to_vec();
    head.extend_from_slice(&json);
    Ok((head, sizes))
}

/// Why a streamed upload failed: the store (classified by the caller,
/// which knows the location) or the checkpoint's contents.
#[derive(Debug)]
pub enum StreamError {
    /// The object store refused or failed.
    Store(object_store::Error),
    /// Making the bytes failed.
    Checkpoint(CheckpointError),
}

impl From<object_store::Error> for StreamError {
    fn from(e: object_store::Error) -> Self {
        Self::Store(e)
    }
}

impl From<CheckpointError> for StreamError {
    fn from(e: CheckpointError) -> Self {
        Self::Checkpoint(e)
    }
}

impl From<tch::TchError> for StreamError {
    fn from(e: tch::TchError) -> Self {
        Self::Checkpoint(e.into())
    }
}

/// A contiguous CPU tensor's bytes, shared without a copy: the handle keeps
/// its storage alive for as long as any piece cut from it lives.
struct TensorBytes {
    tensor: Tensor,
    len: usize,
}

impl AsRef<[u8]> for TensorBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `tensor` is contiguous, on the CPU and holds `len` bytes
        // from its data pointer (checked in `tensor_bytes`); the handle owns
        // a reference to the storage, so the memory outlives the slice, and
        // callers of `safetensors_pieces` leave the tensors unmodified while
        // pieces live.
        unsafe { std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, self.len) }
    }
}

/// The bytes of `t` (`bytes` of them, as the safetensors header says), on
/// the CPU and contiguous, without copying a CPU tensor that already is.
fn tensor_bytes(t: &Tensor, bytes: usize) -> Result<Bytes, StreamError> {
    let tensor = if t.device() == tch::Device::Cpu {
        t.f_contiguous()?
    } else {
        t.f_to_device(tch::Device::Cpu)?.f_contiguous()?
    };
    let elem = tensor.kind().elt_size_in_bytes();
    if !tensor.is_contiguous() || tensor.numel() * elem != bytes {
        return Err(StreamError::Checkpoint(CheckpointError::Io(
            std::io::Error::other(format!(
                "tensor of {} elements of {elem} bytes is not the {bytes} bytes its header says",
                tensor.numel()
            )),
        )));
    }
    Ok(Bytes::from_owner(TensorBytes { tensor, len: bytes }))
}

/// Feed the safetensors image of `tensors` to `sink` in pieces of at most
/// `PART_BYTES`; the same bytes `Tensor::read_safetensors` reads back. The
/// pieces share the tensors' own memory (a tensor not contiguous on the CPU
/// is copied there once), so neither this nor an upload copies them: the
/// tensors must not be written to while a piece lives, which holds for a
/// save's host copies (its own) and for a sink that consumes each piece
/// before returning.
pub fn safetensors_pieces(
    tensors: &[(String, Tensor)],
    mut sink: impl FnMut(Bytes) -> Result<(), StreamError>,
) -> Result<(), StreamError> {
    let (head, sizes) = safetensors_head(tensors)?;
    sink(Bytes::from(head))?;
    for ((_, t), &bytes) in tensors.iter().zip(&sizes) {
        if bytes == 0 {
            continue;
        }
        let data = tensor_bytes(t, bytes)?;
        for start in (0..bytes).step_by(PART_BYTES) {
            sink(data.slice(start..bytes.min(start + PART_BYTES)))?;
        }
    }
    Ok(())
}

/// The whole safetensors image of `tensors` in memory (for small files
/// and references; saves stream instead).
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, CheckpointError> {
    let mut all = Vec::new();
    safetensors_pieces(tensors, |piece| {
        all.extend_from_slice(&piece);
        Ok(())
    })
    .map_err(|e| match e {
        StreamError::Checkpoint(e) => e,
        StreamError::Store(e) => CheckpointError::Io(std::io::Error::other(e)),
    })?;
    Ok(all)
}

/// Upload what `produce` feeds to its sink as the object `key`, hashing it
/// on the way: a multipart upload with `PARTS_IN_FLIGHT` parts in flight
/// where the store takes one, else (a store that answers "not
/// implemented") one request with the whole file. An error aborts the
/// upload, so no partial object is left under `key`.
pub fn put_streamed(
    rt: &tokio::runtime::Runtime,
    store: &dyn ObjectStore,
    key: &StorePath,
    produce: impl FnOnce(&mut dyn FnMut(Bytes) -> Result<(), StreamError>) -> Result<(), StreamError>,
) -> Result<FileDigest, StreamError> {
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let upload = match rt.block_on(store.put_multipart(key)) {
        Ok(upload) => Some(upload),
        Err(object_store::Error::NotImplemented | object_store::Error::NotSupported { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let Some(upload) = upload else {
        let mut whole = Vec::new();
        produce(&mut |piece| {
            hasher.update(&piece);
            bytes += piece.len() as u64;
            whole.extend_from_slice(&piece);
            Ok(())
        })?;
        rt.block_on(store.put(key, PutPayload::from(whole)))?;
        return Ok(digest(hasher, bytes));
    };
    // Part uploads are spawned onto the runtime's workers and go on while
    // this thread copies and hashes the next part.
    let _in_runtime = rt.enter();
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let fed = produce(&mut |piece| {
        hasher.update(&piece);
        bytes += piece.len() as u64;
        rt.block_on(writer.wait_for_capacity(PARTS_IN_FLIGHT))?;
        writer.put(piece);
        Ok(())
    });
    match fed {
        Ok(()) => {
            rt.block_on(writer.finish())?;
            Ok(digest(hasher, bytes))
        }
        Err(e) => {
            let _ = rt.block_on(writer.abort());
            Err(e)
        }
    }
}

fn digest(hasher: Sha256, bytes: u64) -> FileDigest {
    FileDigest {
        sha256: super::hex(&hasher.finalize()),
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn sample() -> Vec<(String, Tensor)> {
        vec![
            (
                "w".into(),
                Tensor::randn([3, 5], (Kind::Float, Device::Cpu)),
            ),
            // Not contiguous: a transposed view.
            (
                "t".into(),
                Tensor::arange(12, (Kind::Double, Device::Cpu))
                    .reshape([3, 4])
                    .transpose(0, 1),
            ),
            ("step".into(), Tensor::from(7i64)),
            ("mask".into(), Tensor::from_slice(&[true, false, true])),
            (
                "half".into(),
                Tensor::ones([4], (Kind::BFloat16, Device::Cpu)),
            ),
            (
                "empty".into(),
                Tensor::zeros([0, 3], (Kind::Float, Device::Cpu)),
            ),
        ]
    }

    /// A directory as a store, and a runtime like the checkpoint store's.
    fn local_store() -> (
        tempfile::TempDir,
        object_store::local::LocalFileSystem,
        tokio::runtime::Runtime,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        (dir, store, rt)
    }

    #[test]
    fn the_image_reads_back_as_the_same_tensors() {
        let tensors = sample();
        let bytes = safetensors_bytes(&tensors).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        std::fs::write(&p, &bytes).unwrap();
        let back: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(&p).unwrap().into_iter().collect();
        assert_eq!(back.len(), tensors.len());
        for (name, t) in &tensors {
            let b = &back[name];
            assert_eq!(b.kind(), t.kind(), "{name}");
            assert_eq!(b.size(), t.size(), "{name}");
            assert!(b.equal(t), "{name}");
        }
        // The header is padded to 8 bytes, as the format's writers do.
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(n % 8, 0);
    }

    #[test]
    fn a_multipart_upload_hashes_and_stores_exactly_the_bytes() {
        // More than two parts, with a tensor larger than a part.
        let big = Tensor::randn(
            [(PART_BYTES * 5 / 2 / 4) as i64],
            (Kind::Float, Device::Cpu),
        );
        let tensors = vec![
            ("big".to_string(), big),
            ("small".into(), Tensor::from(1.5f32)),
        ];
        let expected = safetensors_bytes(&tensors).unwrap();
        let (dir, store, rt) = local_store();
        let key = StorePath::from("ckpt/model.safetensors");
        let digest =
            put_streamed(&rt, &store, &key, |sink| safetensors_pieces(&tensors, sink)).unwrap();
        let stored = std::fs::read(dir.path().join("ckpt/model.safetensors")).unwrap();
        assert_eq!(stored, expected);
        assert_eq!(digest.bytes, expected.len() as u64);
        assert_eq!(digest.sha256, super::super::sha256_hex(&expected));
    }

    #[test]
    fn a_failure_while_producing_leaves_no_object() {
        let (dir, store, rt) = local_store();
        let key = StorePath::from("ckpt/model.safetensors");
        let chunk = Bytes::from(vec![7u8; PART_BYTES]);
        let result = put_streamed(&rt, &store, &key, |sink| {
            sink(chunk.clone())?;
            sink(chunk.clone())?;
            Err(CheckpointError::Io(std::io::Error::other("the tensors went away")).into())
        });
        assert!(matches!(result, Err(StreamError::Checkpoint(_))));
        assert!(!dir.path().join("ckpt/model.safetensors").exists());
    }
}
