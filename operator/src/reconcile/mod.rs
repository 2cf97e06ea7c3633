//! The reconcile loop, as observe → decide → act: `observe` maps pods,
//! nodes and reports to pure inputs, `lifecycle::decide` decides in named
//! steps, `controller` does the I/O around them (watch caches and
//! expectations, the conditional status write, then the actions); `pods`
//! renders what a training owns.

pub mod controller;
pub mod expectations;
pub mod global_batch;
pub mod lifecycle;
pub mod nodes;
pub mod observe;
pub mod pod_index;
pub mod pods;
pub mod progress;
pub mod queue;
pub mod report;
