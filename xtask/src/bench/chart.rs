//! The PNG chart: throughput (1 and 4 streams) and RTT per measured system, side by side.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::report::{Report, Status};

const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<()> {
    let bytes = std::fs::read(FONT_PATH).with_context(|| {
        format!("reading {FONT_PATH} (Debian fonts-dejavu-core; `cargo xtask setup`)")
    })?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT_PATH} is not a usable font"))
}

pub fn draw(report: &Report, out: &Path) -> Result<()> {
    register_font()?;
    let measured: Vec<_> = report
        .systems
        .iter()
        .filter(|s| matches!(s.status, Status::Measured))
        .collect();
    let mut throughput = Vec::new();
    let mut rtt = Vec::new();
    for s in &measured {
        if let Some(t) = &s.tcp_1_stream {
            throughput.push((format!("{} · 1 stream", s.name), t.gbps.median, BLUE));
        }
        if let Some(t) = &s.tcp_4_streams {
            throughput.push((format!("{} · 4 streams", s.name), t.gbps.median, GREEN));
        }
        if let Some(r) = &s.rtt {
            rtt.push((format!("{} · p50", s.name), r.p50_ms, RED));
            rtt.push((format!("{} · p99", s.name), r.p99_ms, RGBColor(255, 150, 0)));
        }
    }

    let root = BitMapBackend::new(
        out,
        (1500, 80 + 34 * throughput.len().max(rtt.len()) as u32),
    )
    .into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(
            &format!(
                "mesh bench {} ({} mode, {} x {} s) — one machine, one run",
                report.date, report.mode, report.repeats, report.seconds_per_run
            ),
            ("sans-serif", 22),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(760);
    hbar_chart(
        &left,
        "TCP throughput, Gbit/s (higher is better)",
        &throughput,
    )?;
    hbar_chart(&right, "ping RTT, ms (lower is better)", &rtt)?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", out.display()))?;
    Ok(())
}

/// Horizontal bars, one row per `(label, value, colour)`, first row on top, value at the bar's
/// end. Horizontal so that the system names read without rotation.
fn hbar_chart(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    title: &str,
    rows: &[(String, f64, RGBColor)],
) -> Result<()> {
    let n = rows.len().max(1);
    let max = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(250)
        .build_cartesian_2d(0.0..max * 1.18, (0..n - 1).into_segmented())
        .map_err(|e| anyhow!("{e}"))?;
    // Row i is drawn in segment n-1-i so the first row is at the top.
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) if *i < n => {
            rows.get(n - 1 - i).map(|r| r.0.clone()).unwrap_or_default()
        }
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&label)
        .y_label_style(("sans-serif", 14))
        .x_label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, v, color))| {
            let seg = n - 1 - i;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(seg)),
                    (*v, SegmentValue::Exact(seg + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(4, 4, 0, 0);
            bar
        }))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, v, _))| {
            let precision = if max < 1.0 { 3 } else { 2 };
            Text::new(
                format!(" {v:.precision$}"),
                (*v, SegmentValue::CenterOf(n - 1 - i)),
                TextStyle::from(("sans-serif", 13).into_font())
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
