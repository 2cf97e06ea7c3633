//! Gradient averaging overlapped with the backward pass, as torch DDP does
//! it: a hook on every parameter reports when backward has finished its
//! gradient, and a worker thread all-reduces each bucket as soon as all of
//! its gradients are in, while backward goes on with earlier layers.
//!
//! Buckets follow the order in which gradients become ready (the reverse
//! of the forward pass, roughly). That order is recorded on the first
//! optimiser step, whose averaging runs after backward, and rank 0's is
//! broadcast so every rank launches the same buckets in the same order.
//! Buckets are reduced strictly in that order, so the collective sees the
//! same sequence on every rank even if hooks fire in a different order.

use super::ddp::{plan_buckets, reduce_bucket};
use super::{Collective, DistError};
use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use tch::Tensor;

/// Set to `0` to average gradients after backward instead (for
/// measurement, or if a model's hooks misbehave).
pub const ENV_DDP_OVERLAP: &str = "RIDE_DDP_OVERLAP";

/// Gradient bucket size in MB (torch DDP's `bucket_cap_mb`).
pub const ENV_DDP_BUCKET_MB: &str = "RIDE_DDP_BUCKET_MB";

extern "C" {
    fn ride_set_grad_ready_hook(
        t: *mut torch_sys::C_tensor,
        ready: extern "C" fn(*mut c_void, usize),
        ctx: *mut c_void,
        index: usize,
        err: *mut c_char,
        len: usize,
    ) -> c_int;
    fn ride_clear_grad_ready_hook(t: *mut torch_sys::C_tensor);
}

/// Which gradients of the current backward pass are complete.
#[derive(Default)]
struct ReadyState {
    /// Hooks count only while armed (at an optimiser-step boundary).
    armed: bool,
    /// Backward has returned: every bucket may go.
    finished: bool,
    ready: Vec<bool>,
    /// Parameter indices in the order their gradients became ready.
    order: Vec<usize>,
    /// The bucket of each parameter, once buckets are planned.
    bucket_of: Vec<usize>,
    /// Gradients each bucket still waits for.
    missing: Vec<usize>,
}

/// Shared between the hooks (called from autograd's threads), the worker
/// and the training thread.
struct Readiness {
    state: Mutex<ReadyState>,
    changed: Condvar,
    /// Buckets reduced in the current pass.
    reduced: AtomicUsize,
}

impl Readiness {
    fn lock(&self) -> MutexGuard<'_, ReadyState> {
        // A panic elsewhere cannot leave the counters half-updated in a way
        // that matters more than stopping the run would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark(&self, index: usize) {
        let mut s = self.lock();
        if !s.armed || s.ready.get(index).copied().unwrap_or(true) {
            return;
        }
        s.ready[index] = true;
        s.order.push(index);
        if let Some(&b) = s.bucket_of.get(index) {
            s.missing[b] -= 1;
            if s.missing[b] == 0 {
                self.changed.notify_all();
            }
        }
    }

    fn arm(&self, n: usize, buckets: Option<&[Vec<usize>]>) {
        let mut s = self.lock();
        s.armed = true;
        s.finished = false;
        s.ready = vec![false; n];
        s.order.clear();
        s.bucket_of.clear();
        s.missing.clear();
        if let Some(buckets) = buckets {
            s.bucket_of = vec![0; n];
            for (b, bucket) in buckets.iter().enumerate() {
                for &i in bucket {
                    s.bucket_of[i] = b;
                }
                s.missing.push(bucket.len());
            }
        }
        self.reduced.store(0, Ordering::SeqCst);
    }

    /// Backward has returned; returns the readiness order it produced.
    fn finish(&self) -> Vec<usize> {
        let mut s = self.lock();
        s.armed = false;
        s.finished = true;
        self.changed.notify_all();
        std::mem::take(&mut s.order)
    }

    fn wait_for_bucket(&self, b: usize) {
        let mut s = self.lock();
        while !s.finished && s.missing.get(b).is_some_and(|&m| m > 0) {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Called by libtorch after backward accumulated into parameter `index`'s
/// gradient.
extern "C" fn grad_ready(ctx: *mut c_void, index: usize) {
    // SAFETY: `ctx` is the `Readiness` an `OverlappedAverager` leaked with
    // `Arc::into_raw` for its hooks; it is released only after every hook
    // has been removed.
    let readiness = unsafe { &*(ctx as *const Readiness) };
    readiness.mark(index);
}

/// Averages gradients across ranks during backward. Dropping it removes
/// its hooks from the parameters.
pub struct OverlappedAverager {
    params: Vec<Tensor>,
    cap_bytes: usize,
    /// Log the bucket plan once it is known.
    announce: bool,
    readiness: Arc<Readiness>,
    /// The hooks' reference to `readiness`.
    hook_ctx: *const Readiness,
    buckets: OnceLock<Vec<Vec<usize>>>,
}

/// Why overlapped averaging could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("could not hook parameter {index} for overlapped all-reduce: {message}")]
pub struct HookError {
    /// The parameter's index.
    pub index: usize,
    /// libtorch's message.
    pub message: String,
}

impl OverlappedAverager {
    /// Hook every parameter of `params` (leaves that require grad, in the
    /// same order on every rank); buckets hold at most `cap_bytes` of fp32.
    pub fn new(params: &[Tensor], cap_bytes: usize) -> Result<Self, HookError> {
        let readiness = Arc::new(Readiness {
            state: Mutex::new(ReadyState::default()),
            changed: Condvar::new(),
            reduced: AtomicUsize::new(0),
        });
        let hook_ctx = Arc::into_raw(readiness.clone());
        let me = Self {
            params: params.iter().map(Tensor::shallow_clone).collect(),
            cap_bytes,
            announce: false,
            readiness,
            hook_ctx,
            buckets: OnceLock::new(),
        };
        for (index, p) in me.params.iter().enumerate() {
            let mut buf = vec![0u8; 512];
            // SAFETY: `p` is a live tensor; the hook holds `hook_ctx`,
            // which stays valid until `drop` removed the hooks.
            let rc = unsafe {
                ride_set_grad_ready_hook(
                    p.as_ptr() as *mut _,
                    grad_ready,
                    me.hook_ctx as *mut c_void,
                    index,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if rc != 0 {
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                return Err(HookError {
                    index,
                    message: String::from_utf8_lossy(&buf[..end]).into_owned(),
                });
            }
        }
        Ok(me)
    }

    /// Log the bucket plan when the first optimiser step has fixed it.
    pub fn announce(mut self, yes: bool) -> Self {
        self.announce = yes;
        self
    }

    /// Run `backward` while averaging the parameters' gradients across the
    /// ranks of `c` and summing `extras` (a 1-d float tensor on the
    /// gradients' device) into place. On return the gradients are the mean
    /// over ranks, as after [`super::ddp::GradAverager::average`].
    pub fn average_during<T, E>(
        &self,
        c: &dyn Collective,
        extras: Option<&Tensor>,
        backward: impl FnOnce() -> Result<T, E>,
    ) -> Result<Result<T, E>, DistError> {
        if c.world_size() <= 1 {
            return Ok(backward());
        }
        let Some(buckets) = self.buckets.get() else {
            return self.first_pass(c, extras, backward);
        };
        self.readiness.arm(self.params.len(), Some(buckets));
        std::thread::scope(|scope| {
            let params: Vec<Tensor> = self.params.iter().map(Tensor::shallow_clone).collect();
            let extras = extras.map(Tensor::shallow_clone);
            let readiness = &self.readiness;
            let worker = scope.spawn(move || -> Result<(), DistError> {
                for (b, bucket) in buckets.iter().enumerate() {
                    readiness.wait_for_bucket(b);
                    reduce_bucket(c, &params, bucket, extras.as_ref().filter(|_| b == 0))?;
                    readiness.reduced.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            });
            let out = backward();
            self.readiness.finish();
            let reduced = worker.join().unwrap_or_else(|_| {
                Err(DistError::Averaging(
                    "the all-reduce worker thread panicked".into(),
                ))
            });
            reduced.map(|()| out)
        })
    }

    /// The first optimiser step: record the order gradients become ready,
    /// plan buckets from rank 0's order, then average after backward.
    fn first_pass<T, E>(
        &self,
        c: &dyn Collective,
        extras: Option<&Tensor>,
        backward: impl FnOnce() -> Result<T, E>,
    ) -> Result<Result<T, E>, DistError> {
        self.readiness.arm(self.params.len(), None);
        let out = backward();
        let order = self.readiness.finish();
        if out.is_err() {
            return Ok(out);
        }
        let mut bytes = encode_order(&order, self.params.len());
        c.broadcast_bytes(&mut bytes, 0)?;
        let order = decode_order(&bytes, self.params.len())?;
        let numels: Vec<usize> = order.iter().map(|&i| self.params[i].numel()).collect();
        let buckets: Vec<Vec<usize>> = plan_buckets(&numels, self.cap_bytes)
            .into_iter()
            .map(|b| b.into_iter().map(|k| order[k]).collect())
            .collect();
        for (b, bucket) in buckets.iter().enumerate() {
            reduce_bucket(c, &self.params, bucket, extras.filter(|_| b == 0))?;
        }
        if self.announce {
            tracing::info!(
                "gradient all-reduce overlapped with backward: {} buckets of at most {:.1} MB, in the order gradients become ready",
                buckets.len(),
                self.cap_bytes as f64 / 1048576.0
            );
        }
        let _ = self.buckets.set(buckets);
        Ok(out)
    }

    /// Buckets reduced so far in the current (or last) backward pass.
    pub fn buckets_reduced(&self) -> usize {
        self.readiness.reduced.load(Ordering::SeqCst)
    }

    /// The bucket plan, once the first optimiser step has fixed it.
    pub fn buckets(&self) -> Option<&[Vec<usize>]> {
        self.buckets.get().map(Vec::as_slice)
    }
}

impl Drop for OverlappedAverager {
    fn drop(&mut self) {
        for p in &self.params {
            // SAFETY: `p` is a live tensor handle.
            unsafe { ride_clear_grad_ready_hook(p.as_ptr() as *mut _) };
        }
        // SAFETY: the hooks' reference, made by `Arc::into_raw` in `new`;
        // no hook can run any more.
        unsafe { drop(Arc::from_raw(self.hook_ctx)) };
    }
}

/// Every parameter index once: the readiness order, then the parameters
/// backward never reached, in index order.
fn encode_order(order: &[usize], n: usize) -> Vec<u8> {
    let mut seen = vec![false; n];
    let mut full: Vec<usize> = Vec::with_capacity(n);
    for &i in order {
        if i < n && !seen[i] {
            seen[i] = true;
            full.push(i);
        }
    }
    full.extend((0..n).filter(|&i| !seen[i]));
    full.iter()
        .flat_map(|&i| (i as u32).to_le_bytes())
        .collect()
}

fn decode_order(bytes: &[u8], n: usize) -> Result<Vec<usize>, DistError> {
    let order: Vec<usize> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let mut seen = vec![false; n];
    let valid = order.len() == n
        && order
            .iter()
            .all(|&i| i < n && !std::mem::replace(&mut seen[i], true));
    if !valid {
        return Err(DistError::Averaging(format!(
            "rank 0's gradient order does not cover this rank's {n} parameters; do all ranks build the same model?"
        )));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::tcp::tests::on_ranks;
    use std::time::{Duration, Instant};
    use tch::{Device, Kind};

    #[test]
    fn orders_cover_every_parameter_once() {
        let bytes = encode_order(&[2, 0, 2], 4);
        assert_eq!(decode_order(&bytes, 4).unwrap(), vec![2, 0, 1, 3]);
        assert!(decode_order(&bytes, 5).is_err());
        let dup: Vec<u8> = [1u32, 1].iter().flat_map(|i| i.to_le_bytes()).collect();
        assert!(decode_order(&dup, 2).is_err());
    }

    /// Three parameters whose gradients are `(rank + 1) * k` for k = 1, 2, 3,
    /// produced by two separate backward calls: `b` first, then `a` and `c`.
    /// Between the calls each rank waits until the worker has reduced `b`'s
    /// bucket, which only an overlapped all-reduce can do.
    #[test]
    fn buckets_are_reduced_while_backward_runs_and_gradients_are_the_mean() {
        let out = on_ranks(3, |c| {
            let r = c.rank() as f64 + 1.0;
            let leaf =
                |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            let params = vec![leaf(3), leaf(2), leaf(4)];
            // One parameter per bucket.
            let avg = OverlappedAverager::new(&params, 4).unwrap();
            let mut seen = Vec::new();
            for _pass in 0..2 {
                for p in &params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
                let extras = Tensor::from_slice(&[r as f32]);
                let overlapped = avg.buckets().is_some();
                let during = avg
                    .average_during(&c, Some(&extras), || -> Result<usize, String> {
                        (&params[1] * 2.0 * r).sum(Kind::Float).backward();
                        let mut reduced_before_rest = 0;
                        if overlapped {
                            let deadline = Instant::now() + Duration::from_secs(30);
                            while avg.buckets_reduced() == 0 && Instant::now() < deadline {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            reduced_before_rest = avg.buckets_reduced();
                        }
                        ((&params[0] * r).sum(Kind::Float)
                            + (&params[2] * 3.0 * r).sum(Kind::Float))
                        .backward();
                        Ok(reduced_before_rest)
                    })
                    .unwrap()
                    .unwrap();
                let grads: Vec<f64> = params
                    .iter()
                    .map(|p| p.grad().mean(Kind::Float).double_value(&[]))
                    .collect();
                let extras: Vec<f32> = Vec::try_from(&extras).unwrap();
                seen.push((during, grads, extras));
            }
            (seen, avg.buckets().map(<[_]>::to_vec))
        });
        for (passes, buckets) in out {
            // Readiness order: b, then a and c (in autograd's order), each alone.
            let buckets = buckets.unwrap();
            assert_eq!(buckets.len(), 3);
            assert_eq!(buckets[0], vec![1]);
            for (pass, (reduced_before_rest, grads, extras)) in passes.into_iter().enumerate() {
                // Mean of (r+1)*k over ranks 0..3 is 2k.
                assert_eq!(grads, vec![2.0, 4.0, 6.0], "pass {pass}");
                assert_eq!(extras, vec![6.0], "pass {pass}");
                if pass == 1 {
                    assert_eq!(
                        reduced_before_rest, 1,
                        "b's bucket went before backward ended"
                    );
                }
            }
        }
    }
}
