//! Multi-process training: rank discovery, the rendezvous store, the
//! [`Collective`] abstraction with its backends, and data-parallel helpers.

pub mod ddp;
pub mod env;
pub mod nccl;
pub mod overlap;
pub mod preflight;
pub mod store;
pub mod tcp;

pub use env::WorldInfo;

use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// Errors of rendezvous and collectives.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A rank-discovery variable is invalid.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A peer could not be reached within the rendezvous timeout.
    #[error("could not reach {what} at {addr} within {waited:?} (last error: {last}); check MASTER_ADDR/MASTER_PORT, that rank 0 is running and that the port is open, or raise RIDE_RENDEZVOUS_TIMEOUT")]
    Unreachable {
        /// What was being reached.
        what: String,
        /// Its address.
        addr: String,
        /// How long we tried.
        waited: Duration,
        /// The last connection error.
        last: String,
    },
    /// Waiting for a peer or key took too long.
    #[error("timed out after {waited:?} waiting for {what}; a rank may have failed to start (see its log)")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// Talking to the store failed.
    #[error("rendezvous store at {addr}: {message}")]
    Store {
        /// Store address.
        addr: String,
        /// The I/O error.
        message: String,
    },
    /// A peer failed during a collective.
    #[error("rank {rank}: connection to rank {peer} failed during a collective ({message}); rank {peer} probably exited, see its log")]
    Peer {
        /// This rank.
        rank: usize,
        /// The peer.
        peer: usize,
        /// The I/O error.
        message: String,
    },
    /// Local I/O.
    #[error("rendezvous I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A tensor could not be moved for a collective.
    #[error("tensor for a collective: {0}")]
    Tensor(#[from] tch::TchError),
    /// A collective backend cannot be used here (library or device missing)
    /// or reported an error.
    #[error("{backend} backend: {message}")]
    Backend {
        /// The backend (`nccl`).
        backend: &'static str,
        /// What is wrong, and what to do.
        message: String,
    },
    /// The preflight check before the first collective failed: rank 0's
    /// address does not resolve.
    #[error("preflight: MASTER_ADDR {host} (port {port}) does not resolve after {waited:?}: {last}; on Kubernetes the headless Service of the training and rank 0's pod must exist (the name is <pod>.<service>), elsewhere check the name or use an IP address ({var} sets the wait)", var = ride_contract::ENV_PREFLIGHT_TIMEOUT)]
    Preflight {
        /// The name that does not resolve.
        host: String,
        /// The store port.
        port: u16,
        /// How long it was tried.
        waited: Duration,
        /// The resolver's last answer.
        last: String,
    },
    /// Data-parallel gradient averaging failed or ranks disagree on it.
    #[error("data-parallel gradient averaging: {0}")]
    Averaging(String),
}

/// Collective operations across the ranks of a job. Every rank must call the
/// same operations in the same order.
pub trait Collective: Send + Sync {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Backend name, for logs.
    fn backend(&self) -> &'static str;
    /// Element-wise sum across ranks, in place; all ranks end with identical bits.
    fn all_reduce_sum_f32(&self, data: &mut [f32]) -> Result<(), DistError>;
    /// Replace `data` on every rank with `root`'s.
    fn broadcast_bytes(&self, data: &mut Vec<u8>, root: usize) -> Result<(), DistError>;
    /// Every rank's `data`, indexed by rank.
    fn all_gather_bytes(&self, data: &[u8]) -> Result<Vec<Vec<u8>>, DistError>;
    /// Return once every rank has entered.
    fn barrier(&self) -> Result<(), DistError>;

    /// Sum a float tensor across ranks, in place. The default moves it through
    /// host memory; device backends override this.
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<(), DistError> {
        if self.world_size() <= 1 {
            return Ok(());
        }
        with_host_f32(t, |v| self.all_reduce_sum_f32(v))
    }

    /// Copy `root`'s tensor into `t` on every rank, in place.
    fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<(), DistError> {
        if self.world_size() <= 1 {
            return Ok(());
        }
        with_host_f32(t, |v| {
            let mut bytes = bytemuck::cast_slice::<f32, u8>(v).to_vec();
            self.broadcast_bytes(&mut bytes, root)?;
            v.copy_from_slice(bytemuck::cast_slice(&bytes));
            Ok(())
        })
    }
}

/// Run `f` on a contiguous f32 host copy of `t` (or on `t`'s own memory when it
/// already is one) and write the result back into `t`.
fn with_host_f32(
    t: &Tensor,
    f: impl FnOnce(&mut [f32]) -> Result<(), DistError>,
) -> Result<(), DistError> {
    let host = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?;
    let n = host.numel();
    // SAFETY: `host` is a contiguous CPU float tensor of `n` elements that we
    // hold for the duration of the call; nothing else reads or writes it meanwhile.
    let slice = unsafe { std::slice::from_raw_parts_mut(host.data_ptr() as *mut f32, n) };
    f(slice)?;
    if host.data_ptr() != t.data_ptr() || t.device() != Device::Cpu {
        tch::no_grad(|| t.shallow_clone().f_copy_(&host))?;
    }
    Ok(())
}

/// The world of one process: every collective is a no-op.
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "none"
    }
    fn all_reduce_sum_f32(&self, _: &mut [f32]) -> Result<(), DistError> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>, _: usize) -> Result<(), DistError> {
        Ok(())
    }
    fn all_gather_bytes(&self, data: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        Ok(vec![data.to_vec()])
    }
    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
}

fn env_seconds(name: &str, default: u64) -> Result<Duration, DistError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| DistError::Env {
                var: name.into(),
                message: format!("'{v}' is not a positive number of seconds"),
            }),
        _ => Ok(Duration::from_secs(default)),
    }
}

/// Environment variable choosing the collective backend: `tcp` (the
/// default) or `nccl` (GPU tensors through NCCL; not yet verified on a GPU,
/// so it is opt-in).
pub const ENV_DIST_BACKEND: &str = "RIDE_DIST_BACKEND";

/// Join the job described by `world` with the backend [`ENV_DIST_BACKEND`]
/// names, for a process training on `device`.
pub fn init_for(world: &WorldInfo, device: Device) -> Result<Box<dyn Collective>, DistError> {
    match std::env::var(ENV_DIST_BACKEND).unwrap_or_default().as_str() {
        "" | "tcp" => init(world),
        "nccl" => {
            let Device::Cuda(index) = device else {
                return Err(DistError::Env {
                    var: ENV_DIST_BACKEND.into(),
                    message: format!(
                        "nccl needs --device cuda, not {device:?}; unset it for the TCP backend"
                    ),
                });
            };
            Ok(Box::new(nccl::NcclCollective::new(init(world)?, index)?))
        }
        other => Err(DistError::Env {
            var: ENV_DIST_BACKEND.into(),
            message: format!("'{other}' is not tcp or nccl"),
        }),
    }
}

/// Join the job described by `world`: rank 0 starts the rendezvous store on
/// `MASTER_PORT`, every rank connects to it (retrying until
/// `RIDE_RENDEZVOUS_TIMEOUT`, default 300 s) and the TCP ring is built.
/// Collectives fail when a peer is silent for `RIDE_COLLECTIVE_TIMEOUT` (default 1800 s).
pub fn init(world: &WorldInfo) -> Result<Box<dyn Collective>, DistError> {
    if world.world_size <= 1 {
        return Ok(Box::new(SingleProcess));
    }
    let rendezvous = env_seconds("RIDE_RENDEZVOUS_TIMEOUT", 300)?;
    let op_timeout = env_seconds("RIDE_COLLECTIVE_TIMEOUT", 1800)?;
    // Rank 0's server keeps running on background threads for the process's life.
    let _server = if world.rank == 0 {
        let listener =
            std::net::TcpListener::bind(("0.0.0.0", world.master_port)).map_err(|e| {
                DistError::Env {
                    var: "MASTER_PORT".into(),
                    message: format!("rank 0 cannot listen on port {}: {e}", world.master_port),
                }
            })?;
        Some(store::StoreServer::start(listener)?)
    } else {
        None
    };
    if world.rank != 0 {
        let dns = env_seconds(ride_contract::ENV_PREFLIGHT_TIMEOUT, 120)?;
        preflight::resolve(&world.master_addr, world.master_port, dns.min(rendezvous))?;
    }
    let client = store::StoreClient::connect(&world.master_addr, world.master_port, rendezvous)?;
    // Peers reach rank 0 by MASTER_ADDR; the others by the interface that reaches rank 0.
    let advertise = if world.rank == 0 {
        world.master_addr.clone()
    } else {
        client.local_ip()?.to_string()
    };
    let joined = client.add("joined", 1)?;
    if joined as usize > world.world_size {
        return Err(DistError::Env {
            var: "WORLD_SIZE".into(),
            message: format!(
                "{joined} processes joined a world of {}; two ranks share a RANK or a stale process is still running",
                world.world_size
            ),
        });
    }
    let ring = tcp::TcpCollective::connect(
        &client,
        world.rank,
        world.world_size,
        &advertise,
        rendezvous,
        op_timeout,
    )?;
    ring.barrier()?;
    Ok(Box::new(ring))
}
