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
        out.push_str(&format!("\nserver peak RSS: {rss}; ready after start: {ready}\n"));
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

/// Latency percentile curves (log scale), one line per scenario and operation.
pub fn plot(reports: &[ScenarioReport], path: &Path) -> anyhow::Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = reports
        .iter()
        .flat_map(|r| r.ops.iter().map(move |op| (format!("{:?}: {}", r.scenario, op.op), op.curve.clone())))
        .collect();
    let max_ms = series.iter().flat_map(|(_, c)| c.iter().map(|p| p.1)).fold(1.0_f64, f64::max) * 1.5;
    let root = SVGBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("context-store latency by percentile", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(50.0..100.0_f64, (0.05..max_ms).log_scale())?;
    chart.configure_mesh().x_desc("percentile").y_desc("latency (ms)").draw()?;
    for (index, (name, curve)) in series.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(curve.iter().map(|(p, ms)| (*p, ms.max(0.05))), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
