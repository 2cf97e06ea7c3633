//! Data parallelism on top of a [`Collective`]: identical start parameters,
//! gradient averaging in large flat buckets, and small values (loss, stop
//! requests) carried along with the gradients at no extra round trip.

use super::{Collective, DistError};
use tch::{Kind, Tensor};

/// Default bucket size, as torch DDP's `bucket_cap_mb`.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Group tensors (by index) into consecutive buckets of at most `cap_bytes`
/// float32 bytes each; a tensor larger than the cap gets a bucket of its own.
pub fn plan_buckets(numels: &[usize], cap_bytes: usize) -> Vec<Vec<usize>> {
    let cap = (cap_bytes / 4).max(1);
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut current = 0usize;
    for (i, &n) in numels.iter().enumerate() {
        match buckets.last_mut() {
            Some(b) if current + n <= cap => {
                b.push(i);
                current += n;
            }
            _ => {
                buckets.push(vec![i]);
                current = n;
            }
        }
    }
    buckets
}

/// Copy every tensor of rank 0 into the same tensor on all ranks.
pub fn broadcast_from_rank0(c: &dyn Collective, tensors: &[Tensor]) -> Result<(), DistError> {
    if c.world_size() <= 1 {
        return Ok(());
    }
    let numels: Vec<usize> = tensors.iter().map(|t| t.numel()).collect();
    tch::no_grad(|| {
        for bucket in plan_buckets(&numels, BUCKET_BYTES) {
            let flat = Tensor::cat(
                &bucket
                    .iter()
                    .map(|&i| tensors[i].to_kind(Kind::Float).flatten(0, -1))
                    .collect::<Vec<_>>(),
                0,
            );
            c.broadcast_tensor(&flat, 0)?;
            scatter_back(&flat, &bucket, tensors, |t| t.shallow_clone());
        }
        Ok(())
    })
}

fn scatter_back(
    flat: &Tensor,
    bucket: &[usize],
    tensors: &[Tensor],
    target: impl Fn(&Tensor) -> Tensor,
) {
    let mut offset = 0i64;
    for &i in bucket {
        let mut t = target(&tensors[i]);
        let n = tensors[i].numel() as i64;
        if t.defined() {
            let part = flat.narrow(0, offset, n).view(tensors[i].size().as_slice());
            t.copy_(&part.to_kind(t.kind()));
        }
        offset += n;
    }
}

/// Averages gradients across ranks after backward.
pub struct GradAverager {
    buckets: Vec<Vec<usize>>,
}

impl GradAverager {
    /// Plan buckets for `params` (in a fixed order, the same on every rank).
    pub fn new(params: &[Tensor], cap_bytes: usize) -> Self {
        let numels: Vec<usize> = params.iter().map(|t| t.numel()).collect();
        Self {
            buckets: plan_buckets(&numels, cap_bytes),
        }
    }

    /// Replace each parameter's gradient with its mean over ranks, and sum
    /// `extras` (a 1-d float tensor on the gradients' device) across ranks in
    /// place, riding in the first bucket: nothing is read back to the host
    /// beyond what the collective itself needs. A parameter without a
    /// gradient contributes zeros.
    pub fn average(
        &self,
        c: &dyn Collective,
        params: &[Tensor],
        extras: Option<&Tensor>,
    ) -> Result<(), DistError> {
        let world = c.world_size();
        if world <= 1 {
            return Ok(());
        }
        for (b, bucket) in self.buckets.iter().enumerate() {
            reduce_bucket(c, params, bucket, extras.filter(|_| b == 0))?;
        }
        Ok(())
    }
}

/// Replace the gradients of `bucket`'s parameters with their mean over
/// ranks in one all-reduce of a flat copy, summing `extras` along with
/// them. A parameter without a gradient contributes zeros.
pub(crate) fn reduce_bucket(
    c: &dyn Collective,
    params: &[Tensor],
    bucket: &[usize],
    extras: Option<&Tensor>,
) -> Result<(), DistError> {
    let world = c.world_size();
    tch::no_grad(|| {
        let mut parts: Vec<Tensor> = bucket
            .iter()
            .map(|&i| {
                let g = params[i].grad();
                if g.defined() {
                    g.to_kind(Kind::Float).flatten(0, -1)
                } else {
                    params[i].zeros_like().to_kind(Kind::Float).flatten(0, -1)
                }
            })
            .collect();
        if let Some(e) = extras {
            parts.push(e.to_kind(Kind::Float).flatten(0, -1));
        }
        let flat = Tensor::cat(&parts, 0);
        c.all_reduce_sum_tensor(&flat)?;
        if let Some(e) = extras {
            let (total, n) = (flat.numel() as i64, e.numel() as i64);
            e.shallow_clone()
                .copy_(&flat.narrow(0, total - n, n).view(e.size().as_slice()));
        }
        let mean = flat / world as f64;
        scatter_back(&mean, bucket, params, |p| p.grad());
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_cap_and_keep_order() {
        let b = plan_buckets(&[10, 10, 30, 5, 100, 1], 4 * 25);
        assert_eq!(b, vec![vec![0, 1], vec![2], vec![3], vec![4], vec![5]]);
        let all: Vec<usize> = b.into_iter().flatten().collect();
        assert_eq!(all, (0..6).collect::<Vec<_>>());
        assert_eq!(plan_buckets(&[], 100), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn gradients_are_averaged_and_extras_summed_over_a_real_ring() {
        let out = crate::dist::tcp::tests::on_ranks(3, |c| {
            let r = c.rank() as f64;
            // Different start values per rank; broadcast makes them rank 0's.
            let a =
                Tensor::full([2, 3], r, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
            let b = Tensor::full([5], 10.0 + r, (Kind::Float, tch::Device::Cpu))
                .set_requires_grad(true);
            let params = vec![a, b];
            broadcast_from_rank0(&c, &params).unwrap();
            let values: Vec<f64> = params
                .iter()
                .map(|p| p.sum(Kind::Float).double_value(&[]))
                .collect();
            // Gradient of sum((r+1) * p) is r+1 everywhere.
            let loss = params
                .iter()
                .map(|p| (p * (r + 1.0)).sum(Kind::Float))
                .fold(Tensor::from(0.0f32), |x, y| x + y);
            loss.backward();
            let avg = GradAverager::new(&params, 8 * 4);
            let extras = Tensor::from_slice(&[r as f32, 1.0]);
            avg.average(&c, &params, Some(&extras)).unwrap();
            let extras: Vec<f32> = Vec::try_from(&extras).unwrap();
            let grads: Vec<f64> = params
                .iter()
                .map(|p| p.grad().mean(Kind::Float).double_value(&[]))
                .collect();
            (values, grads, extras)
        });
        for (values, grads, extras) in out {
            assert_eq!(values, vec![0.0, 50.0]);
            assert_eq!(grads, vec![2.0, 2.0]); // mean of 1, 2, 3
            assert_eq!(extras, vec![3.0, 3.0]);
        }
    }
}
