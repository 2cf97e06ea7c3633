//! `ride-trainer`: RIDE (routing diverse distribution-aware experts) on a
//! Swin Transformer backbone, trained with libtorch through `tch`.

pub mod data;
pub mod model;
pub mod config;
pub mod eval;
pub mod loss;
pub mod optim;
pub mod checkpoint;
pub mod metrics;
pub mod plot;
pub mod weights;
pub mod train;
pub mod predict;
