//! `ride-trainer`: RIDE (routing diverse distribution-aware experts) on a
//! Swin Transformer backbone, trained with libtorch through `tch`.

pub mod amp;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod eval;
pub mod export;
pub mod launch;
pub mod logging;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod predict;
pub mod pth;
pub mod train;
pub mod watchdog;
pub mod weights;
