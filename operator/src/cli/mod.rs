//! What the `ride` CLI does with a manifest without a cluster: check it as
//! the API server would (`ride check`), run it locally (`ride run-local`),
//! turn it into a Slurm batch script (`ride sbatch`).

pub mod local;
pub mod manifest;
pub mod slurm;
