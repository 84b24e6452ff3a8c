//! `--plot`: one picture (SVG or PNG) with, per policy, cluster utilization
//! and queue length over time and the distribution of waits, so the
//! difference shows at a glance.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use cohort_scheduler::sim::Report;
use plotters::coord::Shift;
use plotters::prelude::*;

const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];
const SIZE: (u32, u32) = (1100, 1200);

/// The picture formats `--plot` writes, told by the file's extension.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    /// Checked before a replay starts, so a bad name does not cost a replay.
    pub fn of(path: &Path) -> Result<Format> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => bail!("--plot draws SVG or PNG: name the file *.svg or *.png (got {})", path.display()),
        }
    }
}

/// Draws the reports into `path`; its extension picks the format.
pub fn draw(path: &Path, title: &str, reports: &[Report]) -> Result<()> {
    // A PNG needs glyphs, and text layout needs metrics even in an SVG: both
    // come from a font embedded in the binary, so no system font is needed.
    plotters::style::register_font("sans-serif", FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT)
        .map_err(|_| anyhow!("the embedded plot font cannot be read"))?;
    let drawn = match Format::of(path)? {
        Format::Svg => draw_on(SVGBackend::new(path, SIZE).into_drawing_area(), title, reports),
        Format::Png => draw_on(BitMapBackend::new(path, SIZE).into_drawing_area(), title, reports),
    };
    drawn.with_context(|| format!("cannot draw the plot into {}", path.display()))
}

fn draw_on<DB>(root: DrawingArea<DB, Shift>, title: &str, reports: &[Report]) -> Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(&format!("cohort simulate: {title}"), ("sans-serif", 22))?;
    let panels = root.split_evenly((3, 1));
    // A day-long log reads better in hours, a three-month one in days.
    let span_s = reports.iter().filter_map(|r| r.series.last()).map(|s| s.t_s).fold(1.0f64, f64::max);
    let (unit, unit_s) = if span_s < 2.0 * 86400.0 { ("hours", 3600.0) } else { ("days", 86400.0) };
    let x_max = span_s / unit_s;

    let mut util = ChartBuilder::on(&panels[0])
        .caption("cpu utilization over time", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..100.0)?;
    util.configure_mesh()
        .x_desc(unit)
        .y_desc("% of cores held")
        .x_label_formatter(&compact)
        .y_label_formatter(&compact)
        .draw()?;
    for (i, r) in reports.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        util.draw_series(LineSeries::new(
            steps(r.series.iter().map(|s| (s.t_s / unit_s, s.cpu * 100.0))),
            c.stroke_width(1),
        ))?
        .label(format!("{} ({:.1}% mean)", r.policy, r.utilization_cpu * 100.0))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    util.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    let y_max = reports.iter().flat_map(|r| r.series.iter().map(|s| s.pending)).max().unwrap_or(1).max(1) as f64;
    let mut queue = ChartBuilder::on(&panels[1])
        .caption("jobs waiting over time", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max * 1.05)?;
    queue
        .configure_mesh()
        .x_desc(unit)
        .y_desc("pending gangs")
        .x_label_formatter(&compact)
        .y_label_formatter(&compact)
        .draw()?;
    for (i, r) in reports.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        queue
            .draw_series(LineSeries::new(
                steps(r.series.iter().map(|s| (s.t_s / unit_s, s.pending as f64))),
                c.stroke_width(1),
            ))?
            .label(r.policy.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    queue.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;

    // Waits as a CDF on a log axis: the share of jobs that waited at most x.
    let w_max = reports.iter().flat_map(|r| r.waits.iter().copied()).fold(1.0f64, f64::max);
    let mut cdf = ChartBuilder::on(&panels[2])
        .caption("wait-time distribution (share of jobs that waited at most x)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d((1.0..w_max * 1.5).log_scale(), 0.0..100.0)?;
    cdf.configure_mesh()
        .x_desc("wait (seconds, log scale)")
        .y_desc("% of jobs")
        .x_label_formatter(&compact)
        .y_label_formatter(&compact)
        .draw()?;
    for (i, r) in reports.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let mut waits = r.waits.clone();
        waits.sort_by(f64::total_cmp);
        let n = waits.len().max(1) as f64;
        let step = (waits.len() / 2000).max(1);
        let points = waits.iter().enumerate().step_by(step).map(|(k, w)| (w.max(1.0), (k + 1) as f64 / n * 100.0));
        cdf.draw_series(LineSeries::new(steps(points), c.stroke_width(2)))?
            .label(format!("{} (mean {:.0} s)", r.policy, r.wait_s.mean))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    cdf.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The samples are states that hold until the next one: draw them as
/// steps, not as slopes between samples.
fn steps(points: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (x, y) in points {
        if let Some(&(_, held)) = out.last() {
            out.push((x, held));
        }
        out.push((x, y));
    }
    out
}

/// Axis labels with the decimals the axis needs (0.25 days) and none it
/// does not (90 days, 100 %).
fn compact(v: &f64) -> String {
    let label = format!("{v:.2}");
    label.trim_end_matches('0').trim_end_matches('.').to_string()
}
