//! Evaluation metrics: top-1/top-5 overall, the many/medium/few split by
//! training-class size, per-class and per-expert accuracy; table and JSON.

use crate::data::longtail::Split;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use tch::{Kind, Tensor};

/// Running counts accumulated batch by batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalAccumulator {
    class_total: Vec<u64>,
    class_top1: Vec<u64>,
    top5: u64,
    expert_top1: Vec<u64>,
    loss_sum: f64,
    samples: u64,
}

/// Final evaluation results.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    /// Samples evaluated.
    pub samples: u64,
    /// Top-1 accuracy over all samples, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent.
    pub top5: f64,
    /// Mean cross-entropy of the ensemble output.
    pub loss: f64,
    /// Top-1 of classes with ≥100 training images (percent; NaN-free: absent splits are `None`).
    pub many: Option<f64>,
    /// Top-1 of classes with 21–99 training images.
    pub medium: Option<f64>,
    /// Top-1 of classes with ≤20 training images.
    pub few: Option<f64>,
    /// Top-1 of each expert alone.
    pub per_expert_top1: Vec<f64>,
    /// Per-class top-1 (percent; `None` for classes with no test samples).
    pub per_class_top1: Vec<Option<f64>>,
    /// Training images per class, for the long-tail split and plots.
    pub train_class_counts: Vec<usize>,
}

impl EvalAccumulator {
    /// Empty counts for `num_classes` classes and `num_experts` experts.
    pub fn new(num_classes: usize, num_experts: usize) -> Self {
        Self {
            class_total: vec![0; num_classes],
            class_top1: vec![0; num_classes],
            top5: 0,
            expert_top1: vec![0; num_experts],
            loss_sum: 0.0,
            samples: 0,
        }
    }

    /// Add a batch: ensemble logits `[B,C]`, per-expert logits `[B,E,C]`, labels `[B]`.
    pub fn add(&mut self, logits: &Tensor, per_expert: &Tensor, labels: &Tensor) {
        let logits = logits.to_kind(Kind::Float).to_device(tch::Device::Cpu);
        let labels = labels.to_device(tch::Device::Cpu);
        let n = labels.size()[0] as usize;
        let classes = logits.size()[1];
        let k = classes.min(5);
        let (_, top) = logits.topk(k, 1, true, true);
        let top: Vec<i64> = Vec::try_from(top.view([-1])).unwrap_or_default();
        let lab: Vec<i64> = Vec::try_from(&labels).unwrap_or_default();
        for i in 0..n {
            let y = lab[i];
            let row = &top[i * k as usize..(i + 1) * k as usize];
            self.class_total[y as usize] += 1;
            if row[0] == y {
                self.class_top1[y as usize] += 1;
            }
            if row.contains(&y) {
                self.top5 += 1;
            }
        }
        let pe = per_expert
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .argmax(2, false);
        for e in 0..self.expert_top1.len() {
            let correct = pe
                .select(1, e as i64)
                .eq_tensor(&labels)
                .sum(Kind::Int64)
                .int64_value(&[]);
            self.expert_top1[e] += correct as u64;
        }
        let loss = logits.cross_entropy_for_logits(&labels).double_value(&[]);
        self.loss_sum += loss * n as f64;
        self.samples += n as u64;
    }

    /// Merge counts from another accumulator (e.g. another rank).
    pub fn merge(&mut self, other: &EvalAccumulator) {
        for (a, b) in self.class_total.iter_mut().zip(&other.class_total) {
            *a += b;
        }
        for (a, b) in self.class_top1.iter_mut().zip(&other.class_top1) {
            *a += b;
        }
        for (a, b) in self.expert_top1.iter_mut().zip(&other.expert_top1) {
            *a += b;
        }
        self.top5 += other.top5;
        self.loss_sum += other.loss_sum;
        self.samples += other.samples;
    }

    /// Final report; `train_counts` decides each class's split.
    pub fn report(&self, train_counts: &[usize]) -> EvalReport {
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        // As the reference: the mean of per-class accuracies within the split.
        let split_acc = |split: Split| {
            let accs: Vec<f64> = train_counts
                .iter()
                .enumerate()
                .filter(|&(i, &n)| Split::of(n) == split && self.class_total[i] > 0)
                .map(|(i, _)| pct(self.class_top1[i], self.class_total[i]))
                .collect();
            (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64)
        };
        EvalReport {
            samples: self.samples,
            top1: pct(self.class_top1.iter().sum(), self.samples),
            top5: pct(self.top5, self.samples),
            loss: if self.samples == 0 {
                0.0
            } else {
                self.loss_sum / self.samples as f64
            },
            many: split_acc(Split::Many),
            medium: split_acc(Split::Medium),
            few: split_acc(Split::Few),
            per_expert_top1: self
                .expert_top1
                .iter()
                .map(|&c| pct(c, self.samples))
                .collect(),
            per_class_top1: self
                .class_total
                .iter()
                .zip(&self.class_top1)
                .map(|(&t, &c)| (t > 0).then(|| pct(c, t)))
                .collect(),
            train_class_counts: train_counts.to_vec(),
        }
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |x| format!("{x:.2}"))
}

impl EvalReport {
    /// A fixed-width table for the terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let classes_in = |split: Split| {
            self.train_class_counts
                .iter()
                .filter(|&&n| Split::of(n) == split)
                .count()
        };
        let _ = writeln!(s, "+----------------+---------+");
        let _ = writeln!(s, "| metric         |     %   |");
        let _ = writeln!(s, "+----------------+---------+");
        let _ = writeln!(s, "| top-1 overall  | {:>7.2} |", self.top1);
        let _ = writeln!(s, "| top-5 overall  | {:>7.2} |", self.top5);
        for (name, v, split) in [
            ("many", self.many, Split::Many),
            ("medium", self.medium, Split::Medium),
            ("few", self.few, Split::Few),
        ] {
            let label = format!("{name} ({})", classes_in(split));
            let _ = writeln!(s, "| {label:<14} | {:>7} |", fmt_opt(v));
        }
        for (e, a) in self.per_expert_top1.iter().enumerate() {
            let _ = writeln!(s, "| expert {e:<7} | {a:>7.2} |");
        }
        let _ = writeln!(s, "+----------------+---------+");
        let _ = write!(s, "{} samples, loss {:.4}", self.samples, self.loss);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_accuracy_by_hand() {
        // 3 classes: class 0 many (150 train), class 1 medium (50), class 2 few (5).
        let mut acc = EvalAccumulator::new(3, 2);
        let logits = Tensor::from_slice(&[
            5f32, 0., 0., // pred 0, label 0: correct
            0., 5., 0., // pred 1, label 1: correct
            5., 0., 1., // pred 0, label 2: wrong (top-2 contains 2)
            0., 0., 5., // pred 2, label 1: wrong
        ])
        .view([4, 3]);
        let labels = Tensor::from_slice(&[0i64, 1, 2, 1]);
        // Expert 0 equals the ensemble; expert 1 always predicts class 0.
        let e1 = Tensor::from_slice(&[1f32, 0., 0.])
            .view([1, 3])
            .repeat([4, 1]);
        let per = Tensor::stack(&[logits.shallow_clone(), e1], 1);
        acc.add(&logits, &per, &labels);
        let r = acc.report(&[150, 50, 5]);
        assert_eq!(r.top1, 50.0);
        assert_eq!(r.top5, 100.0); // k = min(5, classes) = 3 covers everything
        assert_eq!(r.many, Some(100.0));
        assert_eq!(r.medium, Some(50.0));
        assert_eq!(r.few, Some(0.0));
        assert_eq!(r.per_expert_top1, vec![50.0, 25.0]);
        assert_eq!(r.per_class_top1, vec![Some(100.0), Some(50.0), Some(0.0)]);
        assert!(r.table().contains("top-1 overall  |   50.00"));
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = EvalAccumulator::new(2, 1);
        let logits = Tensor::from_slice(&[1f32, 0.]).view([1, 2]);
        a.add(&logits, &logits.unsqueeze(1), &Tensor::from_slice(&[0i64]));
        let mut b = EvalAccumulator::new(2, 1);
        b.add(&logits, &logits.unsqueeze(1), &Tensor::from_slice(&[1i64]));
        a.merge(&b);
        let r = a.report(&[200, 10]);
        assert_eq!(
            (r.samples, r.top1, r.many, r.few),
            (2, 50.0, Some(100.0), Some(0.0))
        );
    }
}
