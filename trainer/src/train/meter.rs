//! The training loss kept on the device between the points where it is
//! read: reading a CUDA scalar waits for every queued kernel, so the loop
//! reads the loss (and gradient norm) every `PRINT_FREQ` iterations and at
//! the end of an epoch, never per step.

use tch::Tensor;

/// Running sums of loss values as device scalars.
#[derive(Default)]
pub(super) struct LossMeter {
    /// This rank's micro-batch losses of the optimiser step in progress.
    pending: Option<Tensor>,
    pending_n: u64,
    /// Committed losses since the last [`LossMeter::read_window`].
    window: Option<Tensor>,
    window_n: u64,
    /// Committed losses of the epoch.
    epoch: Option<Tensor>,
    epoch_n: u64,
    /// The last gradient norm an optimiser step produced.
    grad_norm: Option<Tensor>,
}

/// Add `value` to an optional running sum without touching the host.
fn accumulate(sum: &mut Option<Tensor>, value: &Tensor) {
    let value = value.detach().to_kind(tch::Kind::Float);
    *sum = Some(match sum.take() {
        Some(s) => s + value,
        None => value,
    });
}

impl LossMeter {
    /// Record one micro-batch's loss (a 0-d tensor) on this rank.
    pub fn add_micro_batch(&mut self, loss: &Tensor) {
        accumulate(&mut self.pending, loss);
        self.pending_n += 1;
    }

    /// The pending losses as a 1-element tensor, to be summed across ranks
    /// with the gradients, and how many micro-batches they cover.
    pub fn take_pending(&mut self) -> Option<(Tensor, u64)> {
        let sum = self.pending.take()?;
        let n = std::mem::take(&mut self.pending_n);
        Some((sum.reshape([1]), n))
    }

    /// Commit a loss sum over `n` values (micro-batches × ranks) at an
    /// optimiser step.
    pub fn commit(&mut self, sum: &Tensor, n: u64) {
        let sum = sum.sum(tch::Kind::Float);
        accumulate(&mut self.window, &sum);
        accumulate(&mut self.epoch, &sum);
        self.window_n += n;
        self.epoch_n += n;
    }

    /// Remember the gradient norm of the latest optimiser step.
    pub fn set_grad_norm(&mut self, norm: Tensor) {
        self.grad_norm = Some(norm);
    }

    /// Mean committed loss since the last call (host sync); `None` when
    /// nothing was committed since.
    pub fn read_window(&mut self) -> Option<f64> {
        let n = std::mem::take(&mut self.window_n);
        self.window.take().map(|s| s.double_value(&[]) / n as f64)
    }

    /// The latest gradient norm (host sync); NaN when no step clipped yet.
    pub fn read_grad_norm(&self) -> f64 {
        self.grad_norm
            .as_ref()
            .map_or(f64::NAN, |t| t.double_value(&[]))
    }

    /// Mean committed loss of the epoch (host sync), and reset for the
    /// next; losses of a trailing unfinished optimiser step are dropped
    /// with its gradients.
    pub fn finish_epoch(&mut self) -> Option<f64> {
        self.pending = None;
        self.pending_n = 0;
        let n = std::mem::take(&mut self.epoch_n);
        self.epoch.take().map(|s| s.double_value(&[]) / n as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(v: f32) -> Tensor {
        Tensor::from(v)
    }

    #[test]
    fn windows_and_epochs_average_what_was_committed() {
        let mut m = LossMeter::default();
        assert_eq!(m.read_window(), None);
        assert!(m.read_grad_norm().is_nan());
        // Two micro-batches make one optimiser step; committed as is (one rank).
        m.add_micro_batch(&scalar(1.0));
        m.add_micro_batch(&scalar(3.0));
        let (sum, n) = m.take_pending().unwrap();
        assert_eq!(sum.size(), vec![1]);
        m.commit(&sum, n);
        assert_eq!(m.read_window(), Some(2.0));
        assert_eq!(m.read_window(), None);
        // A step summed over two ranks: 4 values.
        m.commit(&Tensor::from_slice(&[10f32]), 4);
        m.set_grad_norm(scalar(0.5));
        assert_eq!(m.read_grad_norm(), 0.5);
        // A trailing micro-batch without its optimiser step is not counted.
        m.add_micro_batch(&scalar(100.0));
        assert_eq!(m.finish_epoch(), Some(14.0 / 6.0));
        assert!(m.take_pending().is_none());
        assert_eq!(m.finish_epoch(), None);
    }
}
