//! Per-class accuracy against training-class size, as an SVG scatter plot;
//! with a router, accuracy against compute over routing thresholds.

use crate::data::longtail::Split;
use crate::eval::{EvalReport, RoutingReport};
use plotters::prelude::*;
use std::path::Path;

/// Write the plot of `report` to `path` (SVG).
pub fn per_class_accuracy_svg(report: &EvalReport, path: &Path, title: &str) -> anyhow::Result<()> {
    let points: Vec<(f64, f64, Split)> = report
        .train_class_counts
        .iter()
        .zip(&report.per_class_top1)
        .filter_map(|(&n, acc)| acc.map(|a| ((n.max(1)) as f64, a, Split::of(n))))
        .collect();
    let max_n = points.iter().map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((1f64..max_n).log_scale(), 0f64..100f64)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("training images in class (log scale)")
        .y_desc("top-1 accuracy (%)")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (split, color) in [
        (Split::Many, BLUE),
        (Split::Medium, GREEN),
        (Split::Few, RED),
    ] {
        let series: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.2 == split)
            .map(|p| (p.0, p.1))
            .collect();
        chart
            .draw_series(
                series
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(split.name())
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
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

/// Accuracy (overall and per split) against mean GFLOPs per image, one
/// point per routing threshold, the configured one ringed (SVG).
pub fn routing_curve_svg(routing: &RoutingReport, path: &Path, title: &str) -> anyhow::Result<()> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| anyhow::anyhow!("{e}");
    let lo = routing
        .sweep
        .iter()
        .map(|p| p.gflops)
        .fold(f64::INFINITY, f64::min);
    let hi = routing.sweep.iter().map(|p| p.gflops).fold(0.0, f64::max);
    let pad = ((hi - lo) * 0.08).max(hi * 0.01).max(1e-6);
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((lo - pad)..(hi + pad), 0f64..100f64)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("GFLOPs per image (mean over the test set)")
        .y_desc("top-1 accuracy (%)")
        .draw()
        .map_err(e)?;
    type Pick = fn(&crate::eval::SweepPoint) -> Option<f64>;
    let curves: [(&str, RGBColor, Pick); 4] = [
        ("overall", BLACK, |p| Some(p.top1)),
        ("many", BLUE, |p| p.many),
        ("medium", GREEN, |p| p.medium),
        ("few", RED, |p| p.few),
    ];
    for (name, color, pick) in curves {
        let pts: Vec<(f64, f64)> = routing
            .sweep
            .iter()
            .filter_map(|p| pick(p).map(|a| (p.gflops, a)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )
            .map_err(e)?;
    }
    if let Some(p) = routing
        .sweep
        .iter()
        .find(|p| p.threshold == routing.threshold)
    {
        chart
            .draw_series(std::iter::once(Circle::new(
                (p.gflops, p.top1),
                8,
                BLACK.stroke_width(2),
            )))
            .map_err(e)?
            .label(format!("threshold {:.2}", routing.threshold))
            .legend(|(x, y)| Circle::new((x + 10, y), 6, BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_point_per_class() {
        let r = EvalReport {
            samples: 30,
            top1: 50.0,
            top5: 90.0,
            loss: 1.0,
            many: Some(80.0),
            medium: Some(50.0),
            few: Some(20.0),
            per_expert_top1: vec![50.0],
            expert_disagreement: vec![],
            per_class_top1: vec![Some(80.0), Some(50.0), Some(20.0)],
            train_class_counts: vec![300, 50, 5],
            routing: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("plot.svg");
        per_class_accuracy_svg(&r, &p, "test").unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"));
        assert_eq!(
            svg.matches("<circle").count(),
            3 + 3,
            "3 points and 3 legend markers"
        );
    }

    #[test]
    fn routing_curve_has_a_point_per_threshold_and_split() {
        use crate::eval::SweepPoint;
        let point = |threshold: f64, gflops: f64, top1: f64| SweepPoint {
            threshold,
            top1,
            many: Some(top1 + 10.0),
            medium: Some(top1),
            few: None,
            mean_experts: 1.0 + 2.0 * (1.0 - threshold),
            gflops,
        };
        let routing = RoutingReport {
            threshold: 0.5,
            mean_experts: 2.0,
            experts_share: vec![50.0, 0.0, 50.0],
            gflops: 2.0,
            gflops_all_experts: 3.0,
            sweep: vec![
                point(0.0, 3.0, 60.0),
                point(0.5, 2.0, 59.0),
                point(1.0, 1.0, 50.0),
            ],
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("curve.svg");
        routing_curve_svg(&routing, &p, "test").unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        // overall, many, medium: 3 points each (few has none), the ringed
        // threshold and its legend marker.
        assert_eq!(svg.matches("<circle").count(), 3 * 3 + 2, "{svg}");
        let thick_lines = svg
            .split("<polyline")
            .skip(1)
            .filter(|l| {
                l.split('>')
                    .next()
                    .unwrap_or("")
                    .contains("stroke-width=\"2\"")
            })
            .count();
        assert_eq!(
            thick_lines,
            3 + 3,
            "3 curves and 3 legend lines (the grid is thin)"
        );
    }
}
