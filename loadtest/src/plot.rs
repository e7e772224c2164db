//! The picture: latency percentiles (log scale) against the offered rate, one point per run, with the SLO
//! line in step mode. SVG through plotters' SVG backend (text is SVG `<text>`, so no font files or C
//! libraries are needed).

use crate::report::{Report, RunReport};
use anyhow::Context;
use plotters::prelude::*;
use std::path::Path;

/// The runs to plot with their x (offered rate; closed loop: achieved rate), in order of x, so each
/// series' line joins its points left to right (step mode runs rates in search order: climbing, then
/// bisecting back). Runs without a success have no latency to plot.
fn by_rate(report: &Report) -> Vec<(f64, &RunReport)> {
    let mut runs: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.ok > 0)
        .map(|r| (r.offered_rps.unwrap_or(r.achieved_rps), r))
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs
}

/// Writes the plot of `report` to `path` (SVG).
pub fn write_svg(report: &Report, path: &Path) -> anyhow::Result<()> {
    let runs = by_rate(report);

    type Pick = fn(&RunReport) -> Option<f64>;
    let mut series: Vec<(&str, RGBColor, Pick)> = vec![
        ("p50", RGBColor(31, 119, 180), |r| Some(r.latency_ms.p50)),
        ("p90", RGBColor(44, 160, 44), |r| Some(r.latency_ms.p90)),
        ("p99", RGBColor(214, 39, 40), |r| Some(r.latency_ms.p99)),
        ("p99.9", RGBColor(148, 103, 189), |r| Some(r.latency_ms.p999)),
    ];
    if report.runs.iter().any(|r| r.streaming.is_some()) {
        series.push(("TTFT p99", RGBColor(255, 127, 14), |r| r.streaming.as_ref().map(|s| s.ttft_ms.p99)));
        series.push(("inter-token p99", RGBColor(140, 86, 75), |r| {
            r.streaming.as_ref().map(|s| s.inter_token_ms.p99)
        }));
    }
    let slo = report.step.as_ref().map(|s| s.slo_p99_ms);

    let ys: Vec<f64> = runs
        .iter()
        .flat_map(|(_, r)| series.iter().filter_map(move |(_, _, f)| f(r)))
        .chain(slo)
        .filter(|y| *y > 0.0)
        .collect();
    let y_lo = ys.iter().copied().fold(f64::INFINITY, f64::min).min(1.0) / 2.0;
    let y_hi = ys.iter().copied().fold(0.0, f64::max).max(1.0) * 2.0;
    let x_hi = runs.iter().map(|(x, _)| *x).fold(1.0, f64::max) * 1.1;

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).context("plot")?;
    let title = format!("{}: {} latency vs offered rate", report.scenario, report.target);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_hi, (y_lo..y_hi).log_scale())
        .context("plot axes")?;
    chart
        .configure_mesh()
        .x_desc("offered rate (requests/s)")
        .y_desc("latency (ms, from intended send time)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| if *v >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") })
        .draw()
        .context("plot mesh")?;
    for (name, color, pick) in &series {
        let pts: Vec<(f64, f64)> =
            runs.iter().filter_map(|(x, r)| pick(r).map(|y| (*x, y.max(y_lo)))).collect();
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)).point_size(4))
            .context("plot series")?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    if let Some(s) = slo {
        chart
            .draw_series(LineSeries::new(vec![(0.0, s), (x_hi, s)], BLACK.stroke_width(1)))
            .context("plot SLO")?
            .label(format!("SLO p99 {s} ms"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .context("plot legend")?;
    root.present().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Outcome, Recorder, Status};
    use std::time::Duration;

    /// An open-loop run at `rate` whose `ok` requests each took `ms`.
    fn run(rate: f64, ok: u64, ms: u64) -> RunReport {
        let mut rec = Recorder::default();
        let took = Duration::from_millis(ms);
        for _ in 0..ok {
            rec.record(&Outcome::new(Status::Ok, took, took));
        }
        let second = Duration::from_secs(1);
        RunReport::new(Some(rate), None, second, second, 10, 10, 0, Duration::ZERO, &rec)
    }

    /// Step mode's order: climbing 100, 200, 400 (fails), then bisecting 300, 250; one run without a
    /// success.
    fn step_report() -> Report {
        Report {
            scenario: "plot".into(),
            target: "http-rank".into(),
            model: "m".into(),
            mode: "open".into(),
            arrival: "fixed".into(),
            seed: 1,
            started_unix_ms: 0,
            runs: vec![
                run(100.0, 10, 5),
                run(200.0, 10, 6),
                run(400.0, 10, 80),
                run(300.0, 10, 9),
                run(250.0, 10, 7),
                run(500.0, 0, 0),
            ],
            step: None,
            files: Vec::new(),
        }
    }

    #[test]
    fn runs_are_plotted_in_order_of_offered_rate() {
        let report = step_report();
        let xs: Vec<f64> = by_rate(&report).iter().map(|(x, _)| *x).collect();
        assert_eq!(xs, [100.0, 200.0, 250.0, 300.0, 400.0]);
    }

    #[test]
    fn every_drawn_line_goes_left_to_right() {
        let path = std::env::temp_dir().join(format!("slate-loadtest-plot-{}.svg", std::process::id()));
        write_svg(&step_report(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        // One polyline per percentile series, each through all five runs (legend marks are 2-point ones).
        let lines: Vec<Vec<f64>> = svg
            .split("<polyline")
            .skip(1)
            .map(|el| {
                let points = el.split("points=\"").nth(1).and_then(|p| p.split('"').next()).expect("points");
                points.split_whitespace().map(|xy| xy.split(',').next().unwrap().parse().unwrap()).collect()
            })
            .collect();
        let series: Vec<&Vec<f64>> = lines.iter().filter(|xs| xs.len() == 5).collect();
        assert_eq!(series.len(), 4, "p50, p90, p99, p99.9: {lines:?}");
        for xs in series {
            assert!(xs.windows(2).all(|w| w[0] < w[1]), "a line goes back: {xs:?}");
        }
    }
}
