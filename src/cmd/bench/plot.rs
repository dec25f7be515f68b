//! The frontier as a picture: throughput against p99 latency, one point per
//! batch size, under the raw consume rate (the broker's ceiling).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::register_font;

use super::{BenchReport, ms};

const FONT: &str = "sans-serif";

/// The embedded DejaVu Sans: no system fonts or fontconfig needed.
fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| unreachable!("DejaVu Sans is a valid font"));
    });
}

/// Draws `report`'s frontier into a PNG at `path`.
pub fn frontier(report: &BenchReport, path: &Path) -> Result<(), String> {
    fonts();
    draw(report, path).map_err(|e| e.to_string())
}

/// 1500 → "1.5k", 2000000 → "2M", 12.5 → "12.5".
fn compact(v: f64) -> String {
    let (value, unit) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let text = format!("{value:.1}");
    format!("{}{unit}", text.trim_end_matches(".0"))
}

fn draw(report: &BenchReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let points: Vec<(f64, f64, usize)> = report
        .points
        .iter()
        .map(|p| (ms(p.end_to_end.p99).max(0.1), p.throughput, p.batch_events))
        .collect();
    let (lo, hi) = points
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let (x_lo, x_hi) = if points.is_empty() {
        (1.0, 1000.0)
    } else {
        (lo / 1.5, hi * 1.5)
    };
    // Log scales on both axes: the broker's ceiling may be orders of
    // magnitude above the pipeline, and latencies span milliseconds to seconds.
    let (y_lo, y_hi) = points
        .iter()
        .map(|p| p.1)
        .fold((report.raw_consume, report.raw_consume), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
    // Headroom above the ceiling for the legend.
    let (y_lo, y_hi) = ((y_lo / 2.0).max(1.0), (y_hi * 8.0).max(10.0));

    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("weir bench: job `{}` on {}", report.job, report.broker),
            (FONT, 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&|v| compact(*v))
        .y_label_formatter(&|v| compact(*v))
        .x_desc("p99 latency, produced → committed (ms, log scale)")
        .y_desc("throughput draining a backlog (events/s, log scale)")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;

    let raw = report.raw_consume;
    chart
        .draw_series(LineSeries::new(
            [(x_lo, raw), (x_hi, raw)],
            RED.stroke_width(2),
        ))?
        .label(format!("raw consume of the same broker: {raw:.0} events/s"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.1)),
            BLUE.stroke_width(2),
        ))?
        .label("weir, one point per batch size (events)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart.draw_series(
        points
            .iter()
            .map(|p| Circle::new((p.0, p.1), 5, BLUE.filled())),
    )?;
    chart.draw_series(points.iter().map(|p| {
        Text::new(
            p.2.to_string(),
            (p.0, p.1),
            (FONT, 15).into_font().color(&BLACK),
        )
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
