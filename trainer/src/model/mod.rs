//! The Swin Transformer backbone with RIDE's branching experts.

pub mod checkpointing;
pub mod layers;
pub mod ride_swin;
pub mod windows;

pub use checkpointing::TrainForward;
pub use ride_swin::{ModelOutput, RideSwin, SwinSpec};
