//! `camnode detect --plot`: the detector's score against its threshold over
//! time, with events shaded, as a self-contained SVG.
//!
//! This is the picture for someone tuning a camera: how far the still scene
//! stays below the threshold, how far people rise above it, where light jumps
//! were relearnt. The score axis is logarithmic because the interesting
//! range spans a far-away person (0.05 %) to a crowd (tens of percent).
//! Long runs are reduced to one column per pixel, keeping each column's
//! highest score so that no spike disappears.

use std::fmt::Write;

use super::{MotionReport, MotionState};

/// Plot area and margins, in SVG pixels.
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 280.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 52.0;
const BOTTOM: f64 = 44.0;
/// Score axis range in percent (decades).
const LOG_MIN: f64 = -3.0;
const LOG_MAX: f64 = 2.0;

/// What the plot needs of each frame.
#[derive(Clone, Copy, Debug)]
struct Point {
    score: f32,
    threshold: f32,
    active: bool,
    moving: bool,
    light_jump: bool,
}

/// Per-frame scores collected while the detector runs.
#[derive(Debug, Default)]
pub struct Trace {
    points: Vec<Point>,
}

impl Trace {
    pub fn push(&mut self, report: &MotionReport) {
        self.points.push(Point {
            score: report.score,
            threshold: report.threshold,
            active: report.active,
            moving: report.state == MotionState::Moving,
            light_jump: report.light_jump,
        });
    }

    /// The whole plot as an SVG document titled `title`.
    pub fn to_svg(&self, title: &str) -> String {
        let n = self.points.len().max(1);
        let x = |frame: f64| LEFT + frame / n as f64 * WIDTH;
        let y = |percent: f32| {
            let log = (percent as f64).max(10f64.powf(LOG_MIN)).log10().clamp(LOG_MIN, LOG_MAX);
            TOP + (LOG_MAX - log) / (LOG_MAX - LOG_MIN) * HEIGHT
        };
        let mut svg = String::new();
        let (total_w, total_h) = (LEFT + WIDTH + RIGHT, TOP + HEIGHT + BOTTOM);
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" viewBox="0 0 {total_w} {total_h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(svg, r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#, escape(title));

        // Events: shaded spans.
        for (start, end) in runs(&self.points, |p| p.moving) {
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{HEIGHT}" fill="#f4c7c3"/>"##,
                x(start as f64),
                (x(end as f64) - x(start as f64)).max(1.0)
            );
        }
        // Frames that showed motion on their own: a strip under the plot.
        for (start, end) in runs(&self.points, |p| p.active) {
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="6" fill="#34a853"/>"##,
                x(start as f64),
                TOP + HEIGHT + 2.0,
                (x(end as f64) - x(start as f64)).max(1.0)
            );
        }
        for (frame, _) in self.points.iter().enumerate().filter(|(_, p)| p.light_jump) {
            let _ = writeln!(
                svg,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{TOP}" y2="{1}" stroke="#888" stroke-dasharray="3,3"/>"##,
                x(frame as f64),
                TOP + HEIGHT
            );
        }

        // Axes and grid: decades of the score, about ten frame ticks.
        for decade in LOG_MIN as i32..=LOG_MAX as i32 {
            let percent = 10f32.powi(decade);
            let yy = y(percent);
            let label = if decade < 0 { format!("{percent:.*}%", (-decade) as usize) } else { format!("{percent:.0}%") };
            let _ = writeln!(svg, r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/>"##, LEFT + WIDTH);
            let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#, LEFT - 6.0, yy + 4.0);
        }
        let step = nice_step(n as f64 / 10.0);
        let mut tick = 0.0;
        while tick <= n as f64 {
            let xx = x(tick);
            let _ = writeln!(svg, r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{tick}</text>"#, TOP + HEIGHT + 24.0);
            tick += step;
        }
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">frame</text>"#, LEFT + WIDTH / 2.0, TOP + HEIGHT + 40.0);
        let _ = writeln!(svg, r##"<rect x="{LEFT}" y="{TOP}" width="{WIDTH}" height="{HEIGHT}" fill="none" stroke="#444"/>"##);

        // Score and threshold, one column per pixel at most.
        let columns = n.min(WIDTH as usize);
        let mut score = String::new();
        let mut threshold = String::new();
        for c in 0..columns {
            let frames = &self.points[c * n / columns..((c + 1) * n / columns).max(c * n / columns + 1).min(self.points.len())];
            let Some(last) = frames.last() else { continue };
            let top = frames.iter().map(|p| p.score).fold(0.0, f32::max);
            let xx = x((c * n / columns) as f64);
            let _ = write!(score, "{xx:.1},{:.1} ", y(top));
            let _ = write!(threshold, "{xx:.1},{:.1} ", y(last.threshold));
        }
        let _ =
            writeln!(svg, r##"<polyline points="{threshold}" fill="none" stroke="#e37400" stroke-width="1.5" stroke-dasharray="6,3"/>"##);
        let _ = writeln!(svg, r##"<polyline points="{score}" fill="none" stroke="#1a73e8" stroke-width="1.2"/>"##);

        // Legend.
        let legend = [
            ("#1a73e8", "score: largest moving object, % of the watched area"),
            ("#e37400", "threshold"),
            ("#34a853", "motion in this frame"),
            ("#f4c7c3", "event"),
            ("#888", "light jump"),
        ];
        let mut lx = LEFT;
        for (colour, text) in legend {
            let _ = writeln!(svg, r#"<rect x="{lx:.1}" y="28" width="12" height="12" fill="{colour}"/>"#);
            let _ = writeln!(svg, r#"<text x="{:.1}" y="38">{text}</text>"#, lx + 16.0);
            lx += 24.0 + 6.5 * text.len() as f64;
        }
        svg.push_str("</svg>\n");
        svg
    }
}

/// Half-open frame ranges where `on` holds.
fn runs(points: &[Point], on: impl Fn(&Point) -> bool) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, p) in points.iter().enumerate() {
        match (on(p), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, points.len()));
    }
    out
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.max(1.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|&s| s >= raw).unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_scores_are_drawn() {
        let mut trace = Trace::default();
        for i in 0..100 {
            let moving = (40..60).contains(&i);
            let report = MotionReport {
                score: if moving { 2.0 } else { 0.0 },
                threshold: 0.05,
                active: moving,
                state: if moving { MotionState::Moving } else { MotionState::Still },
                light_jump: i == 80,
                ..Default::default()
            };
            trace.push(&report);
        }
        let svg = trace.to_svg("walk <1>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("walk &lt;1&gt;"));
        // One event span, starting at frame 40 of 100 on a 960-pixel axis.
        assert_eq!(svg.matches(r##"fill="#f4c7c3"/>"##).count(), 2, "the span and its legend swatch");
        assert!(svg.contains(&format!(r#"<rect x="{:.1}" y="{TOP}""#, LEFT + 0.4 * WIDTH)));
        assert_eq!(svg.matches("stroke-dasharray=\"3,3\"").count(), 1, "one light jump");
        assert_eq!(runs(&trace.points, |p| p.active), [(40, 60)]);
        assert_eq!(nice_step(37.0), 50.0);
    }
}
