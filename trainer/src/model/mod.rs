//! RIDE's backbones (Swin with branching experts, the authors' CIFAR
//! ResNet-32) and the router that decides per image how many experts to run.

pub mod checkpointing;
pub mod layers;
pub mod network;
pub mod resnet_cifar;
pub mod ride_swin;
pub mod router;
pub mod windows;

pub use checkpointing::TrainForward;
pub use network::Network;
pub use ride_swin::{ModelOutput, RideSwin, SwinSpec};
