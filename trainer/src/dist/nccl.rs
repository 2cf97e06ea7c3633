//! The NCCL backend: gradient all-reduces and parameter broadcasts run
//! between GPUs through NCCL on the tensors' device memory; everything else
//! (rank discovery, small byte messages, barriers) stays on the TCP ring.
//!
//! NCCL is loaded at run time (`libnccl.so.2`, which the PyTorch CUDA wheel
//! ships and libtorch_cuda already links), so binaries built without CUDA
//! start everywhere; on a machine without NCCL or without a GPU, choosing
//! this backend fails with an error that says which, never a panic.
//!
//! NCCL runs on the legacy default stream, the one PyTorch (and so tch)
//! launches its kernels on by default: an all-reduce is ordered after the
//! backward kernels that produced the gradients and before the optimiser's,
//! with no host synchronisation. (It does not yet overlap with the backward
//! pass: buckets are reduced after it.)

use super::{Collective, DistError};
use libloading::Library;
use std::ffi::{c_char, c_int, c_void, CStr};
use tch::{Device, Kind, Tensor};

const NCCL_LIBRARY: &str = "libnccl.so.2";
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;

/// NCCL's unique id: 128 opaque bytes rank 0 creates and every rank passes
/// to `ncclCommInitRank`.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; 128],
}

type Comm = *mut c_void;
type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueId = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    Comm,
    *mut c_void,
) -> c_int;
type Broadcast = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    Comm,
    *mut c_void,
) -> c_int;
type CommDestroy = unsafe extern "C" fn(Comm) -> c_int;
type GetErrorString = unsafe extern "C" fn(c_int) -> *const c_char;

/// The NCCL functions this backend calls, resolved from the loaded library.
struct Nccl {
    _lib: Library,
    version: c_int,
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    all_reduce: AllReduce,
    broadcast: Broadcast,
    comm_destroy: CommDestroy,
    error_string: GetErrorString,
}

fn nccl_error(message: String) -> DistError {
    DistError::Backend {
        backend: "nccl",
        message,
    }
}

/// The entry point `name` of NCCL as a `T`.
///
/// # Safety
/// `T` must be the C signature NCCL declares for `name`.
unsafe fn symbol<T: Copy>(lib: &Library, name: &str) -> Result<T, DistError> {
    lib.get::<T>(name.as_bytes())
        .map(|s| *s)
        .map_err(|_| nccl_error(format!("{NCCL_LIBRARY} lacks {name}")))
}

impl Nccl {
    /// Load `libnccl.so.2` and resolve its entry points.
    fn load() -> Result<Self, DistError> {
        // SAFETY: loading NCCL runs its library initialisers, which only set
        // up NCCL's own state.
        let lib = unsafe { Library::new(NCCL_LIBRARY) }.map_err(|e| {
            nccl_error(format!(
                "cannot load {NCCL_LIBRARY} ({e}): install the CUDA build of the PyTorch wheel (it ships NCCL), or unset RIDE_DIST_BACKEND for the TCP backend, which trains on GPUs too"
            ))
        })?;
        // SAFETY: each symbol is resolved with the signature of NCCL's
        // public C API (nccl.h, NCCL 2.x); the pointers live as long as `lib`,
        // which this struct keeps.
        unsafe {
            let get_version = symbol::<GetVersion>(&lib, "ncclGetVersion")?;
            let mut version = 0;
            get_version(&mut version);
            Ok(Self {
                version,
                get_unique_id: symbol(&lib, "ncclGetUniqueId")?,
                comm_init_rank: symbol(&lib, "ncclCommInitRank")?,
                all_reduce: symbol(&lib, "ncclAllReduce")?,
                broadcast: symbol(&lib, "ncclBroadcast")?,
                comm_destroy: symbol(&lib, "ncclCommDestroy")?,
                error_string: symbol(&lib, "ncclGetErrorString")?,
                _lib: lib,
            })
        }
    }

    /// `what` failed with NCCL result `code`: an error with NCCL's own words.
    fn check(&self, code: c_int, what: &str) -> Result<(), DistError> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static NUL-terminated string.
        let text = unsafe { CStr::from_ptr((self.error_string)(code)) }.to_string_lossy();
        Err(nccl_error(format!("{what}: NCCL error {code}: {text}")))
    }

    /// NCCL's version as `major.minor.patch`.
    fn version_string(&self) -> String {
        let v = self.version;
        // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
        format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
    }
}

/// Data-parallel collectives over NCCL for CUDA tensors; everything else,
/// and the job's ranks, from the host backend beside it (the TCP ring, or
/// a single process).
pub struct NcclCollective {
    nccl: Nccl,
    comm: Comm,
    host: Box<dyn Collective>,
    device: usize,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls
// on it are not concurrent; the training loop is the only caller.
unsafe impl Send for NcclCollective {}
// SAFETY: as above; collectives are issued by one thread in program order.
unsafe impl Sync for NcclCollective {}

impl NcclCollective {
    /// Join an NCCL communicator on CUDA device `device` with the ranks of
    /// `host` (from [`super::init`]): rank 0 creates the unique id and `host`
    /// carries it to the others.
    pub fn new(host: Box<dyn Collective>, device: usize) -> Result<Self, DistError> {
        let (rank, world_size) = (host.rank(), host.world_size());
        let nccl = Nccl::load()?;
        let gpus = tch::Cuda::device_count().max(0) as usize;
        if device >= gpus {
            return Err(nccl_error(format!(
                "NCCL {} is loaded but this process sees {}, so not cuda:{device}: run where that GPU is visible (CUDA_VISIBLE_DEVICES), or train with --device cpu",
                nccl.version_string(),
                crate::dist::env::count(gpus, "CUDA device")
            )));
        }
        let mut id = UniqueId { internal: [0; 128] };
        if rank == 0 {
            // SAFETY: writes 128 bytes into `id`.
            nccl.check(unsafe { (nccl.get_unique_id)(&mut id) }, "ncclGetUniqueId")?;
        }
        let mut bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
        host.broadcast_bytes(&mut bytes, 0)?;
        for (d, s) in id.internal.iter_mut().zip(&bytes) {
            *d = *s as c_char;
        }
        // NCCL binds the communicator to the current device; make it ours by
        // creating a tensor there first (libtorch sets the device for its work).
        let _touch = Tensor::zeros([1], (Kind::Float, Device::Cuda(device)));
        let mut comm: Comm = std::ptr::null_mut();
        // SAFETY: `comm` receives the new communicator; `id` is the job's id.
        let code =
            unsafe { (nccl.comm_init_rank)(&mut comm, world_size as c_int, id, rank as c_int) };
        nccl.check(
            code,
            &format!("ncclCommInitRank (rank {rank} of {world_size} on cuda:{device})"),
        )?;
        Ok(Self {
            nccl,
            comm,
            host,
            device,
        })
    }

    /// The tensor's device memory, when NCCL can work on it in place.
    fn nccl_buffer(&self, t: &Tensor) -> Option<*mut c_void> {
        (t.device() == Device::Cuda(self.device) && t.kind() == Kind::Float && t.is_contiguous())
            .then(|| t.data_ptr())
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // SAFETY: the communicator was created by ncclCommInitRank and is
        // not used after this.
        unsafe {
            (self.nccl.comm_destroy)(self.comm);
        }
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn world_size(&self) -> usize {
        self.host.world_size()
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_sum_f32(&self, data: &mut [f32]) -> Result<(), DistError> {
        self.host.all_reduce_sum_f32(data)
    }
    fn broadcast_bytes(&self, data: &mut Vec<u8>, root: usize) -> Result<(), DistError> {
        self.host.broadcast_bytes(data, root)
    }
    fn all_gather_bytes(&self, data: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        self.host.all_gather_bytes(data)
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.host.barrier()
    }

    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<(), DistError> {
        let Some(buf) = self.nccl_buffer(t) else {
            return self.host.all_reduce_sum_tensor(t);
        };
        // SAFETY: `buf` is `t`'s contiguous float32 device memory of numel
        // elements, alive for the call; NCCL reduces it in place on the
        // default stream, ordered with libtorch's kernels.
        let code = unsafe {
            (self.nccl.all_reduce)(
                buf,
                buf,
                t.numel(),
                NCCL_FLOAT32,
                NCCL_SUM,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        self.nccl.check(code, "ncclAllReduce")
    }

    fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<(), DistError> {
        let Some(buf) = self.nccl_buffer(t) else {
            return self.host.broadcast_tensor(t, root);
        };
        // SAFETY: as for the all-reduce.
        let code = unsafe {
            (self.nccl.broadcast)(
                buf,
                buf,
                t.numel(),
                NCCL_FLOAT32,
                root as c_int,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        self.nccl.check(code, "ncclBroadcast")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_choosing_nccl_is_a_clear_error_not_a_panic() {
        if tch::Cuda::device_count() > 0 {
            return; // a GPU machine: the device check covers NCCL there.
        }
        let e = NcclCollective::new(Box::new(crate::dist::SingleProcess), 0)
            .err()
            .expect("no GPU, no communicator")
            .to_string();
        // Either NCCL is missing (then we say how to get it) or it loaded and
        // the missing device is named; each says what to do instead.
        assert!(e.starts_with("nccl backend: "), "{e}");
        assert!(
            (e.contains("libnccl.so.2") && e.contains("unset RIDE_DIST_BACKEND"))
                || (e.contains("0 CUDA devices, so not cuda:0") && e.contains("--device cpu")),
            "{e}"
        );
    }
}
