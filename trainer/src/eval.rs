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
    /// Images on which experts `i < j` predict different classes, pairs in
    /// order (0,1), (0,2), …, (1,2), ….
    #[serde(default)]
    pair_disagree: Vec<u64>,
    #[serde(default)]
    routing: Option<RoutingCounts>,
}

/// What one image costs, in multiply-accumulates, by the number of experts
/// it runs (the model's `flops()` applied per part).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoutingCost {
    /// Stem and shared stages: run once per image.
    pub shared: i64,
    /// One expert's branched stages, norm and head.
    pub per_expert: i64,
    /// One routing step (the router runs before each extra expert and once
    /// more to stop).
    pub router_step: i64,
}

impl RoutingCost {
    /// Multiply-accumulates of an image that used `k` of `experts` experts.
    pub fn macs(&self, k: usize, experts: usize) -> i64 {
        self.shared + k as i64 * self.per_expert + k.min(experts - 1) as i64 * self.router_step
    }
}

/// Routing counts at every swept threshold.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RoutingCounts {
    /// The configured threshold (its counts are the report's headline).
    threshold: f64,
    thresholds: Vec<f64>,
    /// `[threshold][class]` top-1 hits of the routed prediction.
    class_top1: Vec<Vec<u64>>,
    /// `[threshold][k-1]` images that used `k` experts.
    used: Vec<Vec<u64>>,
    cost: RoutingCost,
}

/// The thresholds every routed evaluation sweeps (plus the configured one).
pub const SWEPT_THRESHOLDS: [f64; 13] = [
    0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0,
];

/// Routing results: experts used and compute at the configured threshold,
/// and the accuracy–compute curve over thresholds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoutingReport {
    /// Go on to the next expert while sigmoid(router logit) exceeds this.
    pub threshold: f64,
    /// Mean experts run per image.
    pub mean_experts: f64,
    /// Percent of images that ran 1, 2, … experts.
    pub experts_share: Vec<f64>,
    /// Mean GFLOPs (10⁹ multiply-accumulates, as Swin's `flops()`) per image.
    pub gflops: f64,
    /// GFLOPs per image with every expert.
    pub gflops_all_experts: f64,
    /// One point per swept threshold, in increasing threshold.
    pub sweep: Vec<SweepPoint>,
}

/// Accuracy and compute at one threshold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SweepPoint {
    /// The threshold.
    pub threshold: f64,
    /// Top-1 overall, percent.
    pub top1: f64,
    /// Many-shot top-1.
    pub many: Option<f64>,
    /// Medium-shot top-1.
    pub medium: Option<f64>,
    /// Few-shot top-1.
    pub few: Option<f64>,
    /// Mean experts per image.
    pub mean_experts: f64,
    /// Mean GFLOPs per image.
    pub gflops: f64,
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
    /// Percent of images on which two experts' top-1 classes differ, for
    /// each pair `i < j` in order (0,1), (0,2), …, (1,2), …; empty with one expert.
    #[serde(default)]
    pub expert_disagreement: Vec<f64>,
    /// Per-class top-1 (percent; `None` for classes with no test samples).
    pub per_class_top1: Vec<Option<f64>>,
    /// Training images per class, for the long-tail split and plots.
    pub train_class_counts: Vec<usize>,
    /// With a router: experts used, compute and the threshold sweep (the
    /// accuracies above are then those of the routed predictions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingReport>,
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
            pair_disagree: vec![0; num_experts * num_experts.saturating_sub(1) / 2],
            routing: None,
        }
    }

    /// Also count routing: at `threshold` (the headline) and at every
    /// threshold of [`SWEPT_THRESHOLDS`].
    pub fn with_routing(mut self, threshold: f64, cost: RoutingCost) -> Self {
        let mut thresholds = SWEPT_THRESHOLDS.to_vec();
        if !thresholds.contains(&threshold) {
            thresholds.push(threshold);
            thresholds.sort_by(f64::total_cmp);
        }
        let (c, e) = (self.class_total.len(), self.expert_top1.len());
        self.routing = Some(RoutingCounts {
            threshold,
            class_top1: vec![vec![0; c]; thresholds.len()],
            used: vec![vec![0; e]; thresholds.len()],
            thresholds,
            cost,
        });
        self
    }

    /// Add a batch's routing at every threshold: the experts' outputs
    /// (`[B, C]` each), the router's step logits `[B, E-1]`, labels `[B]`.
    pub fn add_routing(&mut self, experts: &[Tensor], help: &Tensor, labels: &Tensor) {
        use crate::model::router::{cumulative_sums, experts_used};
        let Some(r) = &mut self.routing else { return };
        let host = |t: &Tensor| -> Vec<i64> {
            Vec::try_from(&t.to_device(tch::Device::Cpu)).unwrap_or_default()
        };
        let labels = host(labels);
        // The prediction with k experts, for every k, once; each threshold
        // then only picks k per image.
        let e = experts.len();
        let by_count = host(&cumulative_sums(experts).argmax(2, false).view([-1]));
        for (t, &threshold) in r.thresholds.iter().enumerate() {
            let used = host(&experts_used(help, threshold));
            for (i, (&y, &k)) in labels.iter().zip(&used).enumerate() {
                if by_count[i * e + (k - 1) as usize] == y {
                    r.class_top1[t][y as usize] += 1;
                }
                r.used[t][(k - 1) as usize] += 1;
            }
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
        let experts = self.expert_top1.len() as i64;
        let mut pair = 0;
        for i in 0..experts {
            for j in i + 1..experts {
                let differ = pe
                    .select(1, i)
                    .ne_tensor(&pe.select(1, j))
                    .sum(Kind::Int64)
                    .int64_value(&[]);
                self.pair_disagree[pair] += differ as u64;
                pair += 1;
            }
        }
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
        add_counts(&mut self.pair_disagree, &other.pair_disagree);
        self.top5 += other.top5;
        self.loss_sum += other.loss_sum;
        self.samples += other.samples;
        if let (Some(a), Some(b)) = (&mut self.routing, &other.routing) {
            for (x, y) in a.class_top1.iter_mut().zip(&b.class_top1) {
                add_counts(x, y);
            }
            for (x, y) in a.used.iter_mut().zip(&b.used) {
                add_counts(x, y);
            }
        }
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
        let split_acc =
            |split: Split| split_accuracy(train_counts, &self.class_total, &self.class_top1, split);
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
            expert_disagreement: self
                .pair_disagree
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
            routing: self
                .routing
                .as_ref()
                .map(|r| self.routing_report(r, train_counts)),
        }
    }

    fn routing_report(&self, r: &RoutingCounts, train_counts: &[usize]) -> RoutingReport {
        let experts = self.expert_top1.len();
        let images = self.samples.max(1) as f64;
        let mean_experts = |used: &[u64]| {
            used.iter()
                .enumerate()
                .map(|(k, &n)| (k + 1) as f64 * n as f64)
                .sum::<f64>()
                / images
        };
        let gflops = |used: &[u64]| {
            used.iter()
                .enumerate()
                .map(|(k, &n)| r.cost.macs(k + 1, experts) as f64 * n as f64)
                .sum::<f64>()
                / images
                / 1e9
        };
        let sweep: Vec<SweepPoint> = r
            .thresholds
            .iter()
            .enumerate()
            .map(|(t, &threshold)| {
                let hits = &r.class_top1[t];
                let split = |s| split_accuracy(train_counts, &self.class_total, hits, s);
                SweepPoint {
                    threshold,
                    top1: 100.0 * hits.iter().sum::<u64>() as f64 / images,
                    many: split(Split::Many),
                    medium: split(Split::Medium),
                    few: split(Split::Few),
                    mean_experts: mean_experts(&r.used[t]),
                    gflops: gflops(&r.used[t]),
                }
            })
            .collect();
        let at = r
            .thresholds
            .iter()
            .position(|&t| t == r.threshold)
            .unwrap_or(0);
        RoutingReport {
            threshold: r.threshold,
            mean_experts: sweep[at].mean_experts,
            experts_share: r.used[at]
                .iter()
                .map(|&n| 100.0 * n as f64 / images)
                .collect(),
            gflops: sweep[at].gflops,
            gflops_all_experts: r.cost.macs(experts, experts) as f64 / 1e9,
            sweep,
        }
    }
}

fn add_counts(a: &mut [u64], b: &[u64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// As the reference: the mean of per-class accuracies within the split;
/// `None` when no class of the split has test images.
fn split_accuracy(
    train_counts: &[usize],
    total: &[u64],
    hits: &[u64],
    split: Split,
) -> Option<f64> {
    let accs: Vec<f64> = train_counts
        .iter()
        .enumerate()
        .filter(|&(i, &n)| Split::of(n) == split && total[i] > 0)
        .map(|(i, _)| 100.0 * hits[i] as f64 / total[i] as f64)
        .collect();
    (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64)
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
        if !self.expert_disagreement.is_empty() {
            let mean = self.expert_disagreement.iter().sum::<f64>()
                / self.expert_disagreement.len() as f64;
            let _ = writeln!(s, "| disagreement   | {mean:>7.2} |");
        }
        let _ = writeln!(s, "+----------------+---------+");
        let _ = write!(s, "{} samples, loss {:.4}", self.samples, self.loss);
        if let Some(r) = &self.routing {
            let _ = write!(s, "\n{}", r.table());
        }
        s
    }
}

impl RoutingReport {
    /// Experts used and compute at the configured threshold, then the
    /// accuracy–compute curve.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let shares: Vec<String> = self
            .experts_share
            .iter()
            .enumerate()
            .map(|(k, p)| format!("{}: {p:.1}%", k + 1))
            .collect();
        let _ = writeln!(
            s,
            "routing at threshold {:.2}: {:.2} experts per image ({}), {:.4} GFLOPs per image ({:.4} with every expert)",
            self.threshold,
            self.mean_experts,
            shares.join(", "),
            self.gflops,
            self.gflops_all_experts
        );
        let _ = writeln!(
            s,
            "| threshold |  top-1 |   many | medium |    few | experts | GFLOPs |"
        );
        let _ = writeln!(
            s,
            "|-----------|--------|--------|--------|--------|---------|--------|"
        );
        for p in &self.sweep {
            let _ = writeln!(
                s,
                "| {:>9.2} | {:>6.2} | {:>6} | {:>6} | {:>6} | {:>7.2} | {:>6.4} |",
                p.threshold,
                p.top1,
                fmt_opt(p.many),
                fmt_opt(p.medium),
                fmt_opt(p.few),
                p.mean_experts,
                p.gflops
            );
        }
        s.pop();
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
        // Expert 0 predicts 0, 1, 0, 2; expert 1 always 0: they differ twice.
        assert_eq!(r.expert_disagreement, vec![50.0]);
        assert!(
            r.table().contains("| disagreement   |   50.00 |"),
            "{}",
            r.table()
        );
        assert_eq!(r.per_class_top1, vec![Some(100.0), Some(50.0), Some(0.0)]);
        assert!(r.table().contains("top-1 overall  |   50.00"));
    }

    #[test]
    fn routing_counts_experts_compute_and_the_sweep() {
        // 2 experts, 2 classes; class 0 many-shot, class 1 few-shot.
        let cost = RoutingCost {
            shared: 1_000_000_000,
            per_expert: 500_000_000,
            router_step: 0,
        };
        let mut acc = EvalAccumulator::new(2, 2).with_routing(0.5, cost);
        // Expert 0 is right on image 0 only; experts 0+1 are right on both.
        let e0 = Tensor::from_slice(&[2f32, 0., 1., 0.]).view([2, 2]);
        let e1 = Tensor::from_slice(&[0f32, 0., 0., 3.]).view([2, 2]);
        let labels = Tensor::from_slice(&[0i64, 1]);
        // Image 0 stops (sigmoid(-2) < 0.5), image 1 goes on (sigmoid(2) > 0.5).
        let help = Tensor::from_slice(&[-2f32, 2.]).view([2, 1]);
        let routed =
            crate::model::router::route_all(&[e0.shallow_clone(), e1.shallow_clone()], &help, 0.5);
        let stacked = Tensor::stack(&[e0.shallow_clone(), e1.shallow_clone()], 1);
        acc.add(&routed.outputs, &stacked, &labels);
        acc.add_routing(&[e0, e1], &help, &labels);
        let r = acc.report(&[200, 5]);
        assert_eq!(r.top1, 100.0);
        let routing = r.routing.clone().unwrap();
        assert_eq!(routing.mean_experts, 1.5);
        assert_eq!(routing.experts_share, vec![50.0, 50.0]);
        assert!((routing.gflops - 1.75).abs() < 1e-12);
        assert!((routing.gflops_all_experts - 2.0).abs() < 1e-12);
        let at = |t: f64| {
            routing
                .sweep
                .iter()
                .find(|p| p.threshold == t)
                .unwrap()
                .clone()
        };
        // Threshold 1: only expert 0 → image 1 wrong, few-shot 0%.
        assert_eq!(
            (at(1.0).top1, at(1.0).few, at(1.0).mean_experts),
            (50.0, Some(0.0), 1.0)
        );
        assert_eq!((at(0.0).top1, at(0.0).mean_experts), (100.0, 2.0));
        assert!(
            r.table()
                .contains("1.50 experts per image (1: 50.0%, 2: 50.0%)"),
            "{}",
            r.table()
        );
        // Merging doubles the counts and keeps the shares.
        let mut twice = acc.clone();
        twice.merge(&acc);
        assert_eq!(
            twice.report(&[200, 5]).routing.unwrap().experts_share,
            vec![50.0, 50.0]
        );
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
