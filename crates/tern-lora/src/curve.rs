//! The loss curve of a run as SVG: training and validation loss against the
//! optimizer step.

use crate::fit::MetricLine;

/// The SVG text of the curve of `lines` under `title`.
pub(crate) fn loss_svg(lines: &[MetricLine], title: &str) -> Result<String, String> {
    use plotters::prelude::*;
    let train: Vec<(f64, f64)> = lines
        .iter()
        .filter(|m| m.kind == "train")
        .map(|m| (m.step as f64, m.loss))
        .collect();
    let eval: Vec<(f64, f64)> = lines
        .iter()
        .filter(|m| m.kind == "eval")
        .map(|m| (m.step as f64, m.loss))
        .collect();
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(_, y) in train.iter().chain(&eval) {
        lo = lo.min(y);
        hi = hi.max(y);
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let x_max = train.last().map_or(1.0, |p| p.0).max(1.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(0f64..x_max, (lo - pad)..(hi + pad))?;
            chart
                .configure_mesh()
                .x_desc("optimizer step")
                .y_desc("loss (nats / token)")
                .draw()?;
            chart
                .draw_series(LineSeries::new(train.iter().copied(), &BLUE))?
                .label("train")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
            if !eval.is_empty() {
                chart
                    .draw_series(LineSeries::new(eval.iter().copied(), &RED))?
                    .label("validation")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
                chart.draw_series(eval.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
            }
            chart
                .configure_series_labels()
                .border_style(BLACK)
                .background_style(WHITE.mix(0.8))
                .draw()?;
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}
