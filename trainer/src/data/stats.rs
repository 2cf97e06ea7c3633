//! Class statistics from labels alone (no image is decoded): counts, the
//! many/medium/few split and the imbalance, as a table and a plot.

use super::longtail::Split;
use super::Dataset;
use serde::Serialize;

/// Statistics of a training split.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DataStats {
    /// Images.
    pub images: usize,
    /// Classes.
    pub classes: usize,
    /// Images per class.
    pub class_counts: Vec<usize>,
    /// Largest class.
    pub max: usize,
    /// Smallest non-empty class.
    pub min: usize,
    /// Median class size.
    pub median: usize,
    /// max / min.
    pub imbalance: f64,
    /// Classes per split (many, medium, few).
    pub split_classes: [usize; 3],
    /// Images per split (many, medium, few).
    pub split_images: [usize; 3],
}

impl DataStats {
    /// Compute from a dataset's labels.
    pub fn of(ds: &dyn Dataset) -> Self {
        Self::from_counts(ds.class_counts())
    }

    /// Compute from per-class counts.
    pub fn from_counts(class_counts: Vec<usize>) -> Self {
        let mut sorted = class_counts.clone();
        sorted.sort_unstable();
        let max = sorted.last().copied().unwrap_or(0);
        let min = sorted.iter().copied().find(|&n| n > 0).unwrap_or(0);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
        let (mut split_classes, mut split_images) = ([0; 3], [0; 3]);
        for &n in &class_counts {
            let s = Split::ALL
                .iter()
                .position(|&s| s == Split::of(n))
                .unwrap_or(2);
            split_classes[s] += 1;
            split_images[s] += n;
        }
        Self {
            images: class_counts.iter().sum(),
            classes: class_counts.len(),
            max,
            min,
            median,
            imbalance: if min > 0 {
                max as f64 / min as f64
            } else {
                f64::INFINITY
            },
            split_classes,
            split_images,
            class_counts,
        }
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "images {}  classes {}  per class: max {} median {} min {}  imbalance {:.1}\n",
            self.images, self.classes, self.max, self.median, self.min, self.imbalance
        );
        s.push_str("+----------------------+---------+---------+\n");
        s.push_str("| split                | classes |  images |\n");
        s.push_str("+----------------------+---------+---------+\n");
        for (i, (name, rule)) in [("many", "≥100"), ("medium", "21–99"), ("few", "≤20")]
            .iter()
            .enumerate()
        {
            s.push_str(&format!(
                "| {:<20} | {:>7} | {:>7} |\n",
                format!("{name} ({rule})"),
                self.split_classes[i],
                self.split_images[i]
            ));
        }
        s.push_str("+----------------------+---------+---------+");
        s
    }

    /// Class sizes, largest first, as an SVG bar plot coloured by split.
    pub fn plot_svg(&self, path: &std::path::Path, title: &str) -> anyhow::Result<()> {
        use plotters::prelude::*;
        let mut sorted = self.class_counts.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let root = SVGBackend::new(path, (800, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let top = (self.max.max(1) as f64) * 1.5;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..sorted.len().max(1) as f64, (0.8f64..top).log_scale())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("classes, largest first")
            .y_desc("training images (log scale)")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (split, color) in [
            (Split::Many, BLUE),
            (Split::Medium, GREEN),
            (Split::Few, RED),
        ] {
            let bars: Vec<(usize, usize)> = sorted
                .iter()
                .copied()
                .enumerate()
                .filter(|&(_, n)| Split::of(n) == split)
                .collect();
            chart
                .draw_series(bars.iter().map(|&(i, n)| {
                    Rectangle::new(
                        [(i as f64, 0.8), (i as f64 + 0.9, (n as f64).max(0.8))],
                        color.filled(),
                    )
                }))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(split.name())
                .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 8, y + 4)], color.filled()));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_summary() {
        let s = DataStats::from_counts(vec![500, 120, 99, 21, 20, 5]);
        assert_eq!(s.split_classes, [2, 2, 2]);
        assert_eq!(s.split_images, [620, 120, 25]);
        assert_eq!((s.max, s.min, s.median, s.images), (500, 5, 99, 765));
        assert_eq!(s.imbalance, 100.0);
        assert!(
            s.table()
                .contains("| few (≤20)            |       2 |      25 |"),
            "{}",
            s.table()
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sizes.svg");
        s.plot_svg(&p, "t").unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.matches("<rect").count() >= 6, "a bar per class");
    }
}
