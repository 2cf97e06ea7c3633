//! The API: the `RideTraining` resource (`ride.dev/v1alpha1`) and its CRD,
//! the spec's validation, what the operator reserves in a worker pod, the
//! administrator's pod policy, the spec hash and status times.

pub mod crd;
pub mod pod_policy;
pub mod reserved;
pub mod spec_hash;
pub mod timestamps;
