//! Benchmark output: a markdown table per scenario, the JSON report, and an SVG latency plot.

use std::path::Path;

use plotters::prelude::*;

use super::load::ScenarioReport;

pub fn markdown(reports: &[ScenarioReport]) -> String {
    let mut out = String::new();
    for report in reports {
        out.push_str(&format!(
            "\n### {:?} ({:?}, {} connections, {:.0} s, {} preloaded)\n\n",
            report.scenario, report.transport, report.connections, report.seconds, report.preloaded
        ));
        out.push_str(
            "| op | ops | ops/s | p50 ms | p95 ms | p99 ms | max ms | errors |\n|---|---|---|---|---|---|---|---|\n",
        );
        for op in std::iter::once(&report.total).chain(&report.ops) {
            out.push_str(&format!(
                "| {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
                op.op, op.ops, op.throughput, op.p50_ms, op.p95_ms, op.p99_ms, op.max_ms, op.errors
            ));
        }
        let rss = report.server_peak_rss_mb.map(|mb| format!("{mb:.0} MB")).unwrap_or_else(|| "n/a".into());
        let ready = report.ready_seconds.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "n/a".into());
        let start_rss = report.server_start_rss_mb.map(|mb| format!("{mb:.0} MB")).unwrap_or_else(|| "n/a".into());
        out.push_str(&format!("\nserver RSS before the load: {start_rss}, peak: {rss}; ready after start: {ready}\n"));
        if let Some(cpu) = report.server_cpu_ms_per_op {
            out.push_str(&format!("server CPU per operation: {cpu:.3} ms\n"));
        }
        if let Some(import) = report.import_seconds {
            let index = report.index_seconds.map(|s| format!("{s:.0} s")).unwrap_or_else(|| "n/a".into());
            out.push_str(&format!("preload import: {import:.0} s; HNSW to 95% after the server was ready: {index}\n"));
        }
        if let (Some(recall), Some(indexed)) = (report.recall_at_10, report.indexed_fraction) {
            out.push_str(&format!(
                "vector-stage recall@10 vs exact search: {recall:.4} (HNSW covered {:.0}% of points)\n",
                indexed * 100.0
            ));
        }
        for sample in &report.error_samples {
            out.push_str(&format!("- error: {sample}\n"));
        }
    }
    out
}

/// Where percentile `p` (50, 90, 99, 99.9, ...) sits on a "nines" axis: -log10(1 - p/100), so 90 -> 1,
/// 99 -> 2, 99.9 -> 3 and the tail gets as much room as the middle.
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).max(1e-9).log10()
}

/// The percentile at a point of the nines axis, as a label ("50", "99.9").
fn percentile_label(x: f64) -> String {
    let percentile = 100.0 * (1.0 - 10f64.powf(-x));
    let text = format!("{percentile:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Latency by percentile, one line per scenario and operation: a log latency axis against a log "nines"
/// percentile axis (ticks at 50, 90, 99 and 99.9), so the tail is as readable as the median.
pub fn plot(reports: &[ScenarioReport], path: &Path) -> anyhow::Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = reports
        .iter()
        .flat_map(|r| r.ops.iter().map(move |op| (format!("{:?}: {}", r.scenario, op.op), op.curve.clone())))
        .collect();
    let max_ms = series.iter().flat_map(|(_, c)| c.iter().map(|p| p.1)).fold(1.0_f64, f64::max) * 1.5;
    let min_ms = (series.iter().flat_map(|(_, c)| c.iter().map(|p| p.1)).fold(max_ms, f64::min) / 3.0).max(0.05);
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("context-store latency by percentile", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(nines(45.0)..nines(99.95), (min_ms..max_ms).log_scale())?;
    // The percentile axis is labelled at its nines, drawn here: plotters places ticks at round values of x.
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_desc("percentile (log nines)")
        .y_desc("latency (ms)")
        .draw()?;
    for percentile in [50.0, 90.0, 99.0, 99.9] {
        let x = nines(percentile);
        chart.draw_series(std::iter::once(PathElement::new(vec![(x, min_ms), (x, max_ms)], BLACK.mix(0.2))))?;
        let label = format!("p{}", percentile_label(x));
        chart.draw_series(std::iter::once(Text::new(label, (x, max_ms / 1.15), ("sans-serif", 14).into_font())))?;
    }
    for (index, (name, curve)) in series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let points: Vec<(f64, f64)> = curve.iter().map(|(p, ms)| (nines(*p), ms.max(min_ms))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|point| Circle::new(point, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nines_axis_puts_each_nine_one_step_further() {
        for (percentile, x) in [(90.0, 1.0), (99.0, 2.0), (99.9, 3.0)] {
            assert!((nines(percentile) - x).abs() < 1e-9, "{percentile}");
        }
        let labels: Vec<String> = [50.0, 90.0, 99.0, 99.9].iter().map(|p| percentile_label(nines(*p))).collect();
        assert_eq!(labels, ["50", "90", "99", "99.9"]);
    }
}
