//! Per-class statistics from training-class counts.

/// LDAM margins: `m_j ∝ n_j^(-1/4)`, scaled so the largest is `max_m`.
pub fn ldam_margins(counts: &[usize], max_m: f64) -> Vec<f64> {
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n| 1.0 / (n.max(1) as f64).sqrt().sqrt())
        .collect();
    let max = raw.iter().cloned().fold(f64::MIN, f64::max);
    raw.iter().map(|m| m * max_m / max).collect()
}

/// Deferred re-weighting by the effective number of samples:
/// `w_j = (1−β)/(1−β^{n_j})`, normalised to sum to the number of classes.
pub fn drw_weights(counts: &[usize], beta: f64) -> Vec<f64> {
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n| (1.0 - beta) / (1.0 - beta.powf(n.max(1) as f64)))
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|w| w / sum * counts.len() as f64).collect()
}

/// RIDE's class-dependent diversity temperature factors:
/// `v_j = C·p_j·rf + 1 − rf` with `p_j = n_j/Σn`, divided by `max v`.
pub fn diversity_temperature_weights(counts: &[usize], reweight_factor: f64) -> Vec<f64> {
    let total: usize = counts.iter().sum();
    let c = counts.len() as f64;
    let raw: Vec<f64> = counts
        .iter()
        .map(|&n| c * (n as f64 / total.max(1) as f64) * reweight_factor + 1.0 - reweight_factor)
        .collect();
    let max = raw.iter().cloned().fold(f64::MIN, f64::max);
    raw.iter().map(|v| v / max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn margins_by_hand() {
        // 100^-1/4 = 0.316228; rarest (n=1) gets max_m.
        close(&ldam_margins(&[100, 1], 0.5), &[0.5 * 0.316228, 0.5]);
    }

    #[test]
    fn drw_by_hand() {
        // n=[1,2]: raw [1, 1e-4/(1-0.9999^2) = 0.500025], sum 1.500025, x2/sum.
        close(
            &drw_weights(&[1, 2], 0.9999),
            &[2.0 / 1.500025, 2.0 * 0.500025 / 1.500025],
        );
        // beta = 0 gives all ones.
        close(&drw_weights(&[5, 9, 1], 0.0), &[1.0, 1.0, 1.0]);
    }

    #[test]
    fn diversity_weights_by_hand() {
        // n=[3,1], rf .5: [2*.75*.5+.5, 2*.25*.5+.5] = [1.25, .75] / 1.25
        close(&diversity_temperature_weights(&[3, 1], 0.5), &[1.0, 0.6]);
    }
}
