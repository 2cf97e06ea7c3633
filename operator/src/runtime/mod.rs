//! What runs around the reconcile loop in `ride-operator`: leader election,
//! the metrics (and their TLS endpoint), the per-training gauges.

pub mod leader;
pub mod metrics;
pub mod secure_metrics;
pub mod training_gauges;
