//! The sweep's plot: notification latency against offered load, as a PNG drawn with
//! `plotters`.
//!
//! Text is drawn with the DejaVu Sans font embedded in the binary (`fonts/`, Bitstream Vera
//! license), through plotters' `ab_glyph` renderer: no system font library is needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::SweepReport;
use crate::{Error, Result};

/// Width and height of the plot in pixels.
const PLOT_SIZE: (u32, u32) = (1000, 600);

const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded file is a valid TrueType font; if it were not, text would be missing
        // and drawing would fail with a clear error below.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// The smallest positive latency drawn, ms (a log axis cannot show 0).
const FLOOR_MS: f64 = 0.001;

/// Draws notification latency (p50 and p99 as lines, max as faint points) against offered
/// load, both on log axes, into the PNG file `path`. Steps where no notification arrived are
/// left out.
///
/// ```no_run
/// # fn demo(sweep: &chat_loadgen::SweepReport) -> chat_loadgen::Result<()> {
/// chat_loadgen::plot::draw(sweep, std::path::Path::new("latency.png"))?;
/// # Ok(()) }
/// ```
pub fn draw(sweep: &SweepReport, path: &Path) -> Result<()> {
    draw_inner(sweep, path).map_err(|what| Error::Plot {
        path: path.display().to_string(),
        what,
    })
}

fn draw_inner(sweep: &SweepReport, path: &Path) -> Result<(), String> {
    register_font();
    let points: Vec<(f64, f64, f64, f64, f64)> = sweep
        .steps
        .iter()
        .filter(|s| s.notifications.latency.count > 0 && s.offered_rate() > 0.0)
        .map(|s| {
            let l = &s.notifications.latency;
            (
                s.offered_rate(),
                l.p50_ms.max(FLOOR_MS),
                l.p99_ms.max(FLOOR_MS),
                l.max_ms.max(FLOOR_MS),
                s.send.sends_per_sec,
            )
        })
        .collect();
    if points.is_empty() {
        return Err("no step received any notification: nothing to draw".into());
    }
    let x_min = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max);
    let y_min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = points.iter().map(|p| p.3.max(p.2)).fold(0.0, f64::max);
    let x_range = (x_min / 1.3)..(x_max * 1.3);
    let y_range = (y_min / 2.0)..(y_max * 2.0);
    // Ticks at the rates measured, and at 1, 2, 5 x 10^n ms.
    let mut x_ticks: Vec<f64> = points.iter().map(|p| p.0).collect();
    x_ticks.dedup();

    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (head, body) = root.split_vertically(64);
    head.draw(&Text::new(
        format!("Notification latency vs offered load: {}", sweep.title_target()),
        (20, 12),
        (FAMILY, 22).into_font().color(&BLACK),
    ))
    .map_err(|x| e(&x))?;
    let loads: Vec<f64> = sweep.steps.iter().filter_map(|s| s.load_average).collect();
    let load = if loads.is_empty() {
        String::new()
    } else {
        let (lo, hi) = loads
            .iter()
            .fold((f64::INFINITY, 0_f64), |(lo, hi), &l| (lo.min(l), hi.max(l)));
        format!("; load avg {lo:.1}-{hi:.1}")
    };
    head.draw(&Text::new(
        format!(
            "{}; {} users, {} WebSockets, {} senders (open loop), {} s per rate{load}; latency = POST start to frame at recipient",
            sweep.date, sweep.users, sweep.connections, sweep.senders, sweep.step_secs
        ),
        (20, 40),
        (FAMILY, 14).into_font().color(&RGBColor(80, 80, 80)),
    ))
    .map_err(|x| e(&x))?;

    let mut chart = ChartBuilder::on(&body)
        .margin_left(20)
        .margin_right(30)
        .margin_bottom(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            x_range.log_scale().with_key_points(x_ticks),
            y_range
                .clone()
                .log_scale()
                .with_key_points(one_two_five(&y_range)),
        )
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("offered load (messages/s, log scale)")
        .y_desc("notification latency (ms, log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| short_ms(*y))
        .axis_desc_style((FAMILY, 16))
        .label_style((FAMILY, 13))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(|x| e(&x))?;

    let p50 = RGBColor(31, 119, 180);
    let p99 = RGBColor(214, 39, 40);
    let max = RGBColor(120, 120, 120);
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.1)),
            p50.stroke_width(2),
        ))
        .map_err(|x| e(&x))?
        .label("p50")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], p50.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|p| Circle::new((p.0, p.1), 4, p50.filled())))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.2)),
            p99.stroke_width(2),
        ))
        .map_err(|x| e(&x))?
        .label("p99")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], p99.stroke_width(2)));
    chart
        .draw_series(points.iter().map(|p| Circle::new((p.0, p.2), 4, p99.filled())))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(
            points
                .iter()
                .map(|p| Cross::new((p.0, p.3), 5, max.mix(0.6).stroke_width(2))),
        )
        .map_err(|x| e(&x))?
        .label("max")
        .legend(move |(x, y)| Cross::new((x + 12, y), 5, max.mix(0.6).stroke_width(2)));
    // Where the server did not keep up, say what it achieved next to the p99 point.
    chart
        .draw_series(points.iter().filter(|p| p.4 < 0.95 * p.0).map(|p| {
            Text::new(
                format!("{:.0}/s achieved", p.4),
                (p.0, p.2),
                (FAMILY, 12).into_font().color(&p99),
            )
        }))
        .map_err(|x| e(&x))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// 1, 2, 5 x 10^n within `range` (positive).
fn one_two_five(range: &std::ops::Range<f64>) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10_f64.powf(range.start.max(FLOOR_MS).log10().floor());
    while decade <= range.end {
        for m in [1.0, 2.0, 5.0] {
            let tick = m * decade;
            if range.contains(&tick) {
                ticks.push(tick);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// A latency tick label: `0.5`, `2`, `100`.
fn short_ms(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}").trim_end_matches(".0").to_owned()
    } else {
        let text = format!("{ms:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SweepStep;

    fn step(rate: f64, p50: f64, p99: f64, max: f64, achieved: f64) -> SweepStep {
        let mut step = SweepStep::default();
        step.send.offered_rate = Some(rate);
        step.send.sends_per_sec = achieved;
        let l = &mut step.notifications.latency;
        (l.count, l.p50_ms, l.p99_ms, l.max_ms) = (100, p50, p99, max);
        step
    }

    #[test]
    fn draws_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.png");
        let sweep = SweepReport {
            url: "http://127.0.0.1:8090".into(),
            label: Some("chat-server, SQLite".into()),
            date: "2026-11-28 14:30 UTC".into(),
            steps: vec![
                step(250.0, 0.4, 1.2, 3.0, 250.0),
                step(1000.0, 0.5, 2.0, 9.0, 999.0),
                step(8000.0, 3.0, 80.0, 300.0, 5000.0),
            ],
            ..Default::default()
        };
        draw(&sweep, &path).expect("drawn");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
    }

    #[test]
    fn nothing_to_draw_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut empty = step(100.0, 0.0, 0.0, 0.0, 0.0);
        empty.notifications.latency.count = 0;
        let sweep = SweepReport {
            steps: vec![empty],
            ..Default::default()
        };
        let error = draw(&sweep, &dir.path().join("x.png")).unwrap_err();
        assert!(error.to_string().contains("nothing to draw"), "{error}");
    }

    #[test]
    fn latency_ticks() {
        assert_eq!(one_two_five(&(0.3..30.0)), vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0]);
        assert_eq!(one_two_five(&(1.5..1.9)), Vec::<f64>::new());
    }

    #[test]
    fn tick_labels() {
        assert_eq!(short_ms(0.5), "0.5");
        assert_eq!(short_ms(0.05), "0.05");
        assert_eq!(short_ms(2.0), "2");
        assert_eq!(short_ms(2.5), "2.5");
        assert_eq!(short_ms(100.0), "100");
    }
}
