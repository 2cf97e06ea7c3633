//! Rank discovery from the environment: torchrun's names first, then Slurm's.

use super::DistError;
use ride_contract::{
    ENV_LOCAL_RANK, ENV_LOCAL_WORLD_SIZE, ENV_MASTER_ADDR, ENV_MASTER_PORT, ENV_RANK,
    ENV_WORLD_SIZE,
};

/// Where this process sits in the job and where rank 0's store listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorldInfo {
    /// Global rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Rank on this node (selects the GPU).
    pub local_rank: usize,
    /// Ranks on this node.
    pub local_world_size: usize,
    /// Host of rank 0's rendezvous store.
    pub master_addr: String,
    /// Port of rank 0's rendezvous store.
    pub master_port: u16,
}

/// Port torchrun uses when `MASTER_PORT` is not set.
pub const DEFAULT_MASTER_PORT: u16 = ride_contract::MASTER_PORT;

impl WorldInfo {
    /// A single process, no peers.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: DEFAULT_MASTER_PORT,
        }
    }

    /// Read the process's place from environment variables via `get`
    /// (torchrun names, else Slurm's); a single process when neither is set.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, DistError> {
        let num = |name: &str| -> Result<Option<usize>, DistError> {
            match get(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| DistError::Env {
                    var: name.into(),
                    message: format!("'{v}' is not a non-negative integer"),
                }),
            }
        };
        let (rank, world_size, local_rank, local_world_size) =
            match (num(ENV_RANK)?, num(ENV_WORLD_SIZE)?) {
                (Some(r), Some(w)) => (
                    r,
                    w,
                    num(ENV_LOCAL_RANK)?.unwrap_or(0),
                    num(ENV_LOCAL_WORLD_SIZE)?.unwrap_or(1),
                ),
                (Some(_), None) | (None, Some(_)) => {
                    return Err(DistError::Env {
                        var: "RANK/WORLD_SIZE".into(),
                        message: "set both or neither".into(),
                    })
                }
                (None, None) => match (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
                    (Some(r), Some(w)) => (
                        r,
                        w,
                        num("SLURM_LOCALID")?.unwrap_or(0),
                        slurm_tasks_on_node(&get).unwrap_or(1),
                    ),
                    _ => return Ok(Self::single()),
                },
            };
        if world_size == 0 || rank >= world_size {
            return Err(DistError::Env {
                var: ENV_RANK.into(),
                message: format!("rank {rank} is outside world size {world_size}"),
            });
        }
        if local_rank >= local_world_size.max(1) {
            return Err(DistError::Env {
                var: ENV_LOCAL_RANK.into(),
                message: format!(
                    "local rank {local_rank} is outside local world size {local_world_size}"
                ),
            });
        }
        let master_addr = match get(ENV_MASTER_ADDR).filter(|s| !s.trim().is_empty()) {
            Some(a) => a.trim().to_string(),
            None => match get("SLURM_JOB_NODELIST").or_else(|| get("SLURM_NODELIST")) {
                Some(list) => first_host(&list).ok_or_else(|| DistError::Env {
                    var: "SLURM_JOB_NODELIST".into(),
                    message: format!("cannot read a host name from '{list}'"),
                })?,
                None if world_size == 1 => "127.0.0.1".into(),
                None => {
                    return Err(DistError::Env {
                        var: ENV_MASTER_ADDR.into(),
                        message: "not set (needed to find rank 0 when WORLD_SIZE > 1)".into(),
                    })
                }
            },
        };
        let master_port = match get(ENV_MASTER_PORT).filter(|s| !s.trim().is_empty()) {
            Some(p) => p.trim().parse().map_err(|_| DistError::Env {
                var: ENV_MASTER_PORT.into(),
                message: format!("'{p}' is not a port number"),
            })?,
            None => DEFAULT_MASTER_PORT,
        };
        Ok(Self {
            rank,
            world_size,
            local_rank,
            local_world_size: local_world_size.max(1),
            master_addr,
            master_port,
        })
    }

    /// [`WorldInfo::from_vars`] over the process environment.
    pub fn from_env() -> Result<Self, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }
}

/// `SLURM_NTASKS_PER_NODE`, else the first count of `SLURM_TASKS_PER_NODE` ("4(x2),3").
fn slurm_tasks_on_node(get: &impl Fn(&str) -> Option<String>) -> Option<usize> {
    if let Some(n) = get("SLURM_NTASKS_PER_NODE").and_then(|v| v.trim().parse().ok()) {
        return Some(n);
    }
    let v = get("SLURM_TASKS_PER_NODE")?;
    let first = v.split(',').next()?;
    first.split('(').next()?.trim().parse().ok()
}

/// The first host of a Slurm node list: `gpu[03-05,9],cpu1` gives `gpu03`.
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    // Split at the first top-level comma (commas inside brackets separate ranges).
    let mut depth = 0;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let first = &list[..end];
    let host = match first.split_once('[') {
        None => first.to_string(),
        Some((prefix, rest)) => {
            let ranges = rest.strip_suffix(']')?;
            let first_range = ranges.split(',').next()?;
            let start = first_range.split('-').next()?;
            format!("{prefix}{start}")
        }
    };
    (!host.is_empty()).then_some(host)
}

/// The GPU this rank trains on when `requested` is CUDA: one rank per GPU,
/// by local rank. When the launcher already bound one GPU to each rank
/// (Slurm's `--gpus-per-task=1`, a container with one device) the rank sees
/// only that one, as `cuda:0`. Fewer visible GPUs than local ranks would
/// put two ranks on one GPU: an error that says so.
pub fn rank_device(
    requested: tch::Device,
    world: &WorldInfo,
    visible_gpus: usize,
) -> Result<tch::Device, DistError> {
    let tch::Device::Cuda(_) = requested else {
        return Ok(requested);
    };
    if world.local_world_size <= 1 {
        return Ok(requested);
    }
    if visible_gpus == 1 {
        return Ok(tch::Device::Cuda(0));
    }
    if visible_gpus >= world.local_world_size {
        return Ok(tch::Device::Cuda(world.local_rank));
    }
    Err(DistError::Env {
        var: ENV_LOCAL_WORLD_SIZE.into(),
        message: format!(
            "{} on this machine but {} visible: start one rank per GPU (--nproc-per-node, gpusPerWorker, --gpus-per-task) or make every GPU visible",
            count(world.local_world_size, "rank"),
            count(visible_gpus, "GPU")
        ),
    })
}

/// `n thing`, or `n things` for any n but one ("1 GPU", "2 GPUs").
pub fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<WorldInfo, DistError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WorldInfo::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn no_variables_means_a_single_process() {
        assert_eq!(world(&[]).unwrap(), WorldInfo::single());
    }

    #[test]
    fn torchrun_names_win_over_slurm() {
        let w = world(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "ride-0.ride"),
            ("MASTER_PORT", "23456"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "8"),
        ])
        .unwrap();
        assert_eq!(
            (w.rank, w.world_size, w.local_rank, w.local_world_size),
            (3, 4, 1, 2)
        );
        assert_eq!(
            (w.master_addr.as_str(), w.master_port),
            ("ride-0.ride", 23456)
        );
    }

    #[test]
    fn slurm_fallback_takes_the_first_node_as_master() {
        let w = world(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_TASKS_PER_NODE", "4(x2)"),
            ("SLURM_JOB_NODELIST", "gpu[07-08,11],login1"),
        ])
        .unwrap();
        assert_eq!(
            (w.rank, w.world_size, w.local_rank, w.local_world_size),
            (5, 8, 1, 4)
        );
        assert_eq!(w.master_addr, "gpu07");
        assert_eq!(w.master_port, DEFAULT_MASTER_PORT);
    }

    #[test]
    fn node_lists_of_every_shape() {
        assert_eq!(first_host("node1").as_deref(), Some("node1"));
        assert_eq!(first_host("node1,node2").as_deref(), Some("node1"));
        assert_eq!(first_host("a[1-3]").as_deref(), Some("a1"));
        assert_eq!(first_host("a[009,011-012],b2").as_deref(), Some("a009"));
        assert_eq!(first_host(""), None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = world(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("RANK"), "{e}");
        let e = world(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]).unwrap_err();
        assert!(e.to_string().contains("outside world size 2"), "{e}");
        let e = world(&[("RANK", "1"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR"), "{e}");
        let e = world(&[("RANK", "0")]).unwrap_err();
        assert!(e.to_string().contains("RANK/WORLD_SIZE"), "{e}");
        let e = world(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "99999"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("MASTER_PORT"), "{e}");
    }

    #[test]
    fn ranks_get_one_gpu_each_by_local_rank_or_the_one_they_were_bound_to() {
        use tch::Device;
        let world = |local_rank, local_world_size| WorldInfo {
            local_rank,
            local_world_size,
            ..WorldInfo::single()
        };
        let cuda = Device::Cuda(0);
        // CPU and single-rank choices stand.
        assert_eq!(
            rank_device(Device::Cpu, &world(3, 8), 8).unwrap(),
            Device::Cpu
        );
        assert_eq!(
            rank_device(Device::Cuda(2), &world(0, 1), 8).unwrap(),
            Device::Cuda(2)
        );
        // launch --nproc-per-node 8 on an 8-GPU machine: cuda:LOCAL_RANK.
        assert_eq!(rank_device(cuda, &world(3, 8), 8).unwrap(), Device::Cuda(3));
        // Slurm --gpus-per-task=1: each task sees its own GPU as cuda:0.
        assert_eq!(rank_device(cuda, &world(5, 8), 1).unwrap(), Device::Cuda(0));
        // Too few GPUs for the ranks: an error naming the numbers.
        let e = rank_device(cuda, &world(1, 4), 2).unwrap_err().to_string();
        assert!(e.contains("4 ranks") && e.contains("2 GPUs"), "{e}");
        assert_eq!(count(1, "GPU"), "1 GPU");
        assert_eq!(count(0, "GPU"), "0 GPUs");
    }
}
