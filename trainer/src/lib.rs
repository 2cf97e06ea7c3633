//! `ride-trainer`: RIDE (routing diverse distribution-aware experts) on a
//! Swin Transformer backbone, trained with libtorch through `tch`.

pub mod data;
pub mod model;
