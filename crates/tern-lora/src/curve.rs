//! The loss curve of a run as SVG: training loss (raw, faint, and smoothed)
//! and validation loss at the steps it was measured, against the optimizer
//! step.

use crate::fit::MetricLine;

/// Exponential moving average of `ys` with a span of `window` points
/// (`alpha = 2 / (window + 1)`), bias-corrected so that the first values are
/// not pulled towards 0.
fn smooth(ys: &[f64], window: usize) -> Vec<f64> {
    let alpha = 2.0 / (window.max(1) as f64 + 1.0);
    let (mut avg, mut weight) = (0.0, 0.0);
    ys.iter()
        .map(|&y| {
            avg = (1.0 - alpha) * avg + alpha * y;
            weight = (1.0 - alpha) * weight + alpha;
            avg / weight
        })
        .collect()
}

/// The smoothing span for `n` training points: about a twentieth of the run.
fn window(n: usize) -> usize {
    (n / 20).clamp(1, 100)
}

/// The SVG text of the curve of `lines` under `title`.
pub(crate) fn loss_svg(lines: &[MetricLine], title: &str) -> Result<String, String> {
    use plotters::prelude::*;
    let points = |kind: &str| -> Vec<(i64, f64)> {
        lines
            .iter()
            .filter(|m| m.kind == kind && m.loss.is_finite())
            .map(|m| (m.step as i64, m.loss))
            .collect()
    };
    let (train, eval) = (points("train"), points("eval"));
    let ys: Vec<f64> = train.iter().map(|p| p.1).collect();
    let smoothed: Vec<(i64, f64)> = train
        .iter()
        .zip(smooth(&ys, window(ys.len())))
        .map(|(p, y)| (p.0, y))
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
    // Steps on an integer axis, padded so no marker sits on an edge.
    let x_max = train
        .iter()
        .chain(&eval)
        .map(|p| p.0)
        .max()
        .unwrap_or(1)
        .max(1);
    let x_pad = (x_max / 50).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(16)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(-x_pad..x_max + x_pad, (lo - pad)..(hi + pad))?;
            chart
                .configure_mesh()
                .x_desc("optimizer step")
                .y_desc("loss (nats / token)")
                .x_label_formatter(&|&x| match x {
                    0.. if x <= x_max => x.to_string(),
                    _ => String::new(),
                })
                .y_label_formatter(&|y| format!("{y:.3}"))
                .draw()?;
            let faint = BLUE.mix(0.25);
            chart
                .draw_series(LineSeries::new(train.iter().copied(), faint))?
                .label("train (per step)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], faint));
            let strong = BLUE.stroke_width(2);
            chart
                .draw_series(LineSeries::new(smoothed.iter().copied(), strong))?
                .label("train (smoothed)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], strong));
            if !eval.is_empty() {
                chart
                    .draw_series(eval.iter().map(|&p| Circle::new(p, 4, RED.filled())))?
                    .label("validation")
                    .legend(|(x, y)| Circle::new((x + 8, y), 4, RED.filled()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &str, step: u64, loss: f64) -> MetricLine {
        MetricLine {
            kind: kind.into(),
            step,
            epoch: 0,
            loss,
            lr: 0.0,
            grad_norm: 0.0,
            tokens: 0,
            tokens_per_s: 0.0,
            perplexity: None,
        }
    }

    #[test]
    fn smoothing_keeps_constants_and_follows_a_step() {
        assert_eq!(smooth(&[2.5; 7], 3), vec![2.5; 7]);
        let ys: Vec<f64> = (0..40).map(|i| if i < 20 { 1.0 } else { 0.0 }).collect();
        let s = smooth(&ys, 5);
        assert!(s[..20].iter().all(|&v| v == 1.0));
        // after the step: strictly falling towards 0, never past it
        assert!(s[20..].windows(2).all(|w| w[1] < w[0] && w[1] > 0.0));
        assert!(s[39] < 1e-3);
        assert_eq!(window(10), 1);
        assert_eq!(window(1000), 50);
    }

    #[test]
    fn validation_is_drawn_only_where_measured_and_ticks_are_integers() {
        let mut lines: Vec<MetricLine> = (1..=7)
            .map(|s| line("train", s, 3.0 - s as f64 * 0.1))
            .collect();
        lines.push(line("eval", 0, 3.2));
        lines.push(line("eval", 7, 2.4));
        let svg = loss_svg(&lines, "t").unwrap();
        // two validation markers, no validation line
        assert_eq!(svg.matches("<circle").count(), 2 + 1, "{svg}"); // + the legend's
                                                                    // the x axis of a 7-step run labels whole steps only
        let labels: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split('>').nth(1)?.split('<').next())
            .collect();
        let steps: Vec<i64> = labels
            .iter()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        assert_eq!(steps, (0..=7).collect::<Vec<_>>(), "{labels:?}");
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "{labels:?}");
    }
}
