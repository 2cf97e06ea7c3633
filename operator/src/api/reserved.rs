//! What the operator reserves in every worker pod: its trainer container's
//! name, its volumes and mount paths, the environment of the process
//! contract and the checkpoint credentials. The spec's validation refuses
//! templates that touch them and `pods` builds them; both read them here.

use ride_contract::{
    Scheme, ENV_LOCAL_RANK, ENV_LOCAL_WORLD_SIZE, ENV_MASTER_ADDR, ENV_MASTER_PORT, ENV_RANK,
    ENV_RESTART_ATTEMPT, ENV_TERMINATION_LOG, ENV_WORLD_SIZE,
};

/// The worker pods' trainer container.
pub const TRAINER_CONTAINER: &str = "trainer";

/// Volumes and mount paths the operator gives every worker.
pub const RESERVED_VOLUMES: [&str; 3] = ["dshm", "tmp", "dataset"];
/// Mount paths the operator uses.
pub const RESERVED_MOUNT_PATHS: [&str; 2] = ["/dev/shm", "/tmp"];

/// Environment variables the operator sets on the trainer: a template may
/// not set them (the process contract and credentials depend on them).
pub fn reserved_env(name: &str) -> bool {
    const OURS: [&str; 11] = [
        ride_contract::ENV_STALL_TIMEOUT,
        ENV_RANK,
        ENV_WORLD_SIZE,
        ENV_LOCAL_RANK,
        ENV_LOCAL_WORLD_SIZE,
        ENV_MASTER_ADDR,
        ENV_MASTER_PORT,
        ENV_RESTART_ATTEMPT,
        ENV_TERMINATION_LOG,
        "HOME",
        "XDG_CACHE_HOME",
    ];
    let credential = Scheme::ALL
        .iter()
        .any(|s| s.credential_vars().iter().any(|v| v.name == name));
    OURS.contains(&name)
        || credential
        || name.starts_with("AWS_")
        || name.starts_with("AZURE_STORAGE_")
}
