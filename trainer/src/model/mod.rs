//! The Swin Transformer backbone with RIDE's branching experts, and the
//! router that decides per image how many experts to run.

pub mod checkpointing;
pub mod layers;
pub mod ride_swin;
pub mod router;
pub mod windows;

pub use checkpointing::TrainForward;
pub use ride_swin::{ModelOutput, RideSwin, SwinSpec};
