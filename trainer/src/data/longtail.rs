//! Long-tail bookkeeping: class-size profiles and the many/medium/few split.

/// Per-class sample counts of the exponential long-tail profile used by
/// CIFAR-LT: class `i` of `c` keeps `floor(n_max * (1/imbalance)^(i/(c-1)))`.
pub fn exponential_profile(num_classes: usize, n_max: usize, imbalance: f64) -> Vec<usize> {
    if num_classes == 1 {
        return vec![n_max];
    }
    (0..num_classes)
        .map(|i| {
            let frac = i as f64 / (num_classes - 1) as f64;
            let n = (n_max as f64 * (1.0 / imbalance).powf(frac)).floor() as usize;
            n.max(1)
        })
        .collect()
}

/// Which part of the tail a class belongs to, by its training-set size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// At least 100 training images.
    Many,
    /// 21 to 99 training images.
    Medium,
    /// At most 20 training images.
    Few,
}

impl Split {
    /// All splits in display order.
    pub const ALL: [Split; 3] = [Split::Many, Split::Medium, Split::Few];

    /// The split of a class with `count` training images (ImageNet-LT convention).
    pub fn of(count: usize) -> Split {
        if count >= 100 {
            Split::Many
        } else if count > 20 {
            Split::Medium
        } else {
            Split::Few
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Split::Many => "many",
            Split::Medium => "medium",
            Split::Few => "few",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_matches_cifar_lt_formula_by_hand() {
        // 10 classes, 5000 max, factor 100: class 9 gets 5000/100 = 50,
        // class 1 gets floor(5000 * 0.01^(1/9)) = floor(5000 * 0.59948) = 2997.
        let p = exponential_profile(10, 5000, 100.0);
        assert_eq!(p[0], 5000);
        assert_eq!(p[1], 2997);
        assert_eq!(p[9], 50);
        assert!(p.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn split_thresholds() {
        assert_eq!(Split::of(100), Split::Many);
        assert_eq!(Split::of(99), Split::Medium);
        assert_eq!(Split::of(21), Split::Medium);
        assert_eq!(Split::of(20), Split::Few);
        assert_eq!(Split::of(0), Split::Few);
    }
}
