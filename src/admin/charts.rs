//! The status page's charts: a route's last 15 minutes as small inline SVG, drawn on
//! the server from the `GET /routes/{name}/history` document ([`crate::admin::history`]).
//!
//! Pure functions from JSON to strings: no I/O, no clock (the document says what "now"
//! is), no script. Request rate, error ratio and p99 get a chart each, stable and canary
//! in the page's two colours; each slot is drawn as a step over the 15 seconds it
//! covers, so one slot is already a line. A slot without requests has no error ratio
//! and no p99, and the line breaks there rather than dropping to a zero that never
//! happened. Steps, rollbacks and resumes are vertical markers on the time axis.
//! Everything read from the document is escaped; a missing or mistyped field leaves a
//! gap, never a failure.

use std::fmt::Write as _;

use serde_json::Value;

use crate::admin::status_page::{error_percent_text, escape, p99_ms_text, rate_text};
use crate::rollout::{parse_rfc3339, UnixMillis};

/// Size of one chart, in CSS pixels.
pub const WIDTH: f64 = 360.0;
pub const HEIGHT: f64 = 106.0;
/// The plot area: room on the left for the scale, above for two rows of event labels,
/// below for the time axis.
const LEFT: f64 = 40.0;
const RIGHT: f64 = 354.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 86.0;
/// Baselines of the event label rows and of the time axis labels.
const LABEL_ROWS: [f64; 2] = [10.0, 21.0];
const AXIS_LABELS: f64 = 100.0;

const STABLE: &str = "#2563eb";
const CANARY: &str = "#d97706";
const MUTED: &str = "#6b7280";
const STEP: &str = "#4b5563";
const ROLLBACK: &str = "#dc2626";
const RESUME: &str = "#16a34a";

/// What a chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Rate,
    ErrorRatio,
    P99,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Rate, Metric::ErrorRatio, Metric::P99];

    fn key(self) -> &'static str {
        match self {
            Metric::Rate => "rate",
            Metric::ErrorRatio => "error_ratio",
            Metric::P99 => "p99",
        }
    }

    fn caption(self) -> &'static str {
        match self {
            Metric::Rate => "requests per second",
            Metric::ErrorRatio => "error rate",
            Metric::P99 => "p99 latency",
        }
    }

    fn value(self, point: &Point) -> Option<f64> {
        match self {
            Metric::Rate => point.rate,
            Metric::ErrorRatio => point.error_ratio,
            Metric::P99 => point.p99_seconds,
        }
    }

    /// The scale's top when every value is 0, so a flat line sits on the baseline.
    fn least_top(self) -> f64 {
        match self {
            Metric::Rate => 1.0,
            Metric::ErrorRatio => 0.01,
            Metric::P99 => 0.001,
        }
    }

    /// The scale's top as the page writes such a figure.
    fn label(self, top: f64) -> String {
        match self {
            Metric::Rate => format!("{}/s", rate_text(Some(top))),
            Metric::ErrorRatio => format!("{} %", error_percent_text(Some(top))),
            Metric::P99 => format!("{} ms", p99_ms_text(Some(top))),
        }
    }
}

/// One history slot of one variant.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Point {
    /// Start of the slot.
    pub t: UnixMillis,
    pub rate: Option<f64>,
    pub error_ratio: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// How an event is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MarkerKind {
    /// A step or share change: a dashed grey line.
    Step,
    Rollback,
    Resume,
}

/// One event on the time axis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Marker {
    pub at: UnixMillis,
    pub kind: MarkerKind,
    /// Short text beside the line ("rollback", "step 2 · 5 %").
    pub label: String,
    /// The tooltip.
    pub detail: String,
}

/// The history document of one route, read defensively.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct History {
    pub now: UnixMillis,
    pub slot_ms: i64,
    /// How far back the charts reach from `now`.
    pub span_ms: i64,
    pub stable: Vec<Point>,
    pub canary: Vec<Point>,
    pub markers: Vec<Marker>,
}

impl History {
    /// `None` when the document has no usable `now` (nothing can be placed in time).
    pub fn from_json(doc: &Value) -> Option<History> {
        let now = parse_rfc3339(doc.get("now")?.as_str()?).ok()?;
        let slot_seconds = doc
            .get("slot_seconds")
            .and_then(Value::as_u64)
            .filter(|s| (1..=3600).contains(s))
            .unwrap_or(crate::metrics::window::HISTORY_SLOT_SECONDS);
        let slots = doc
            .get("slots")
            .and_then(Value::as_u64)
            .filter(|s| (1..=1000).contains(s))
            .unwrap_or(crate::metrics::window::HISTORY_SLOTS);
        let slot_ms = i64::try_from(slot_seconds * 1000).unwrap_or(15_000);
        let points = |key: &str| -> Vec<Point> {
            let mut points: Vec<Point> = doc
                .get(key)
                .and_then(Value::as_array)
                .map(|items| items.iter().filter_map(Point::from_json).collect())
                .unwrap_or_default();
            points.sort_by_key(|p| p.t);
            points
        };
        Some(History {
            now,
            slot_ms,
            span_ms: slot_ms.saturating_mul(i64::try_from(slots).unwrap_or(60)),
            stable: points("stable"),
            canary: points("canary"),
            markers: doc
                .get("events")
                .and_then(Value::as_array)
                .map(|items| items.iter().filter_map(Marker::from_json).collect())
                .unwrap_or_default(),
        })
    }

    /// The x coordinate of wall time `t` (clamped into the plot).
    fn x(&self, t: UnixMillis) -> f64 {
        let from = self.now - self.span_ms;
        let share = (t - from) as f64 / self.span_ms.max(1) as f64;
        LEFT + (RIGHT - LEFT) * share.clamp(0.0, 1.0)
    }

    fn visible(&self, t: UnixMillis) -> bool {
        t >= self.now - self.span_ms && t <= self.now
    }
}

impl Point {
    fn from_json(point: &Value) -> Option<Point> {
        let t = parse_rfc3339(point.get("t")?.as_str()?).ok()?;
        let number = |key: &str| {
            point
                .get(key)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x >= 0.0)
        };
        Some(Point {
            t,
            rate: number("rate"),
            error_ratio: number("error_ratio"),
            p99_seconds: number("p99_seconds"),
        })
    }
}

impl Marker {
    fn from_json(event: &Value) -> Option<Marker> {
        let at_text = event.get("at")?.as_str()?;
        let at = parse_rfc3339(at_text).ok()?;
        let kind_text = event.get("kind").and_then(Value::as_str).unwrap_or("event");
        let step = event.get("step").and_then(Value::as_u64);
        let percent = event
            .get("percent")
            .and_then(Value::as_f64)
            .map(|p| crate::admin::status_page::trimmed(p, 2));
        let reason = event.get("reason").and_then(Value::as_str);
        // "step 2 · 5 %" (steps counted from 1, as the page's rollout line does).
        let step_text = match (step, &percent) {
            (Some(step), Some(p)) => format!("step {} · {p} %", step.saturating_add(1)),
            (Some(step), None) => format!("step {}", step.saturating_add(1)),
            (None, Some(p)) => format!("{p} %"),
            (None, None) => kind_text.to_owned(),
        };
        let (kind, label, detail) = match kind_text {
            "rollback" => (
                MarkerKind::Rollback,
                "rollback".to_owned(),
                match (reason, &percent) {
                    (Some(r), Some(_)) => format!("rollback ({r}) of {step_text}"),
                    (Some(r), None) => format!("rollback ({r})"),
                    (None, _) => "rollback".to_owned(),
                },
            ),
            "resume" => (MarkerKind::Resume, "resume".to_owned(), "resume".to_owned()),
            // Beside a step's line the new share is what matters, and short labels
            // leave room for their neighbours; the tooltip names the step.
            "step" => (
                MarkerKind::Step,
                percent
                    .as_ref()
                    .map_or_else(|| step_text.clone(), |p| format!("{p} %")),
                step_text,
            ),
            _ => (
                MarkerKind::Step,
                step_text.clone(),
                format!("canary share set to {step_text}"),
            ),
        };
        Some(Marker {
            at,
            kind,
            label,
            detail: format!("{detail} at {at_text}"),
        })
    }

    fn colour(&self) -> &'static str {
        match self.kind {
            MarkerKind::Step => STEP,
            MarkerKind::Rollback => ROLLBACK,
            MarkerKind::Resume => RESUME,
        }
    }

    fn class(&self) -> &'static str {
        match self.kind {
            MarkerKind::Step => "step",
            MarkerKind::Rollback => "rollback",
            MarkerKind::Resume => "resume",
        }
    }
}

/// The smallest of 1, 2, 2.5 and 5 times a power of ten that is at least `max`: a scale
/// whose top reads as a round figure.
fn nice_top(max: f64) -> f64 {
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|f| f * magnitude)
        .find(|top| *top >= max * (1.0 - 1e-9))
        .unwrap_or(max)
}

/// One variant's line as staircase polylines, one per run of slots with a value: each
/// slot is a level over the time it covers (up to now for the slot still filling).
fn series(history: &History, points: &[Point], metric: Metric, top: f64) -> Vec<String> {
    let y = |v: f64| BOTTOM - (BOTTOM - TOP) * (v / top).clamp(0.0, 1.0);
    let mut runs = Vec::new();
    let mut run = String::new();
    let mut run_end: Option<UnixMillis> = None;
    for point in points {
        let end = (point.t + history.slot_ms).min(history.now);
        let shown = end > history.now - history.span_ms && point.t < history.now;
        let value = metric.value(point).filter(|_| shown);
        // A missing slot (before the instance started) breaks the line as a gap does.
        let joins = run_end == Some(point.t);
        if !joins || value.is_none() {
            if !run.is_empty() {
                runs.push(std::mem::take(&mut run));
            }
            run_end = None;
        }
        let Some(value) = value else {
            continue;
        };
        let level = y(value);
        let _ = write!(
            run,
            "{}{:.1},{level:.1} {:.1},{level:.1}",
            if run.is_empty() { "" } else { " " },
            history.x(point.t),
            history.x(end)
        );
        run_end = Some(point.t + history.slot_ms);
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// Rough width of a label at the charts' 9 px font, to keep labels from overlapping.
fn label_width(text: &str) -> f64 {
    text.chars().count() as f64 * 5.0 + 2.0
}

/// One chart: both variants' lines over the last 15 minutes, with the events marked.
pub(crate) fn chart(history: &History, metric: Metric) -> String {
    let visible = |points: &[Point]| -> Vec<f64> {
        points
            .iter()
            .filter(|p| p.t + history.slot_ms > history.now - history.span_ms)
            .filter_map(|p| metric.value(p))
            .collect()
    };
    let values: Vec<f64> = [&history.stable, &history.canary]
        .iter()
        .flat_map(|points| visible(points))
        .collect();
    let max = values.iter().copied().fold(0.0, f64::max);
    let top = if max > 0.0 {
        nice_top(max)
    } else {
        metric.least_top()
    };
    let mut svg = String::with_capacity(2048);
    let _ = write!(
        svg,
        "<svg class=\"chart\" data-metric=\"{key}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{caption} over the last 15 \
         minutes, stable and canary\" font-family=\"system-ui, sans-serif\" font-size=\"9\">",
        key = metric.key(),
        caption = metric.caption(),
    );
    // Frame: the scale's top and zero, faint lines 10 and 5 minutes ago, the time axis.
    let _ = write!(
        svg,
        "<g class=\"axes\" fill=\"{MUTED}\"><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{RIGHT}\" y2=\"{TOP}\" stroke=\"#eef0f3\"/>\
         <line x1=\"{LEFT}\" y1=\"{BOTTOM}\" x2=\"{RIGHT}\" y2=\"{BOTTOM}\" stroke=\"#c7cbd1\"/>"
    );
    for part in [1.0, 2.0] {
        let x = LEFT + (RIGHT - LEFT) * part / 3.0;
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{BOTTOM}\" stroke=\"#eef0f3\"/>"
        );
    }
    let _ = write!(
        svg,
        "<text class=\"top\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">0</text>\
         <text x=\"{LEFT}\" y=\"{AXIS_LABELS}\">15 min ago</text>\
         <text x=\"{RIGHT}\" y=\"{AXIS_LABELS}\" text-anchor=\"end\">now</text></g>",
        LEFT - 4.0,
        TOP + 3.0,
        escape(&metric.label(top)),
        LEFT - 4.0,
        BOTTOM + 3.0,
    );
    if values.is_empty() {
        let text = if history.stable.is_empty() && history.canary.is_empty() {
            "no data yet"
        } else {
            "no traffic in the last 15 min"
        };
        let _ = write!(
            svg,
            "<text class=\"empty\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{MUTED}\">{text}</text>",
            (LEFT + RIGHT) / 2.0,
            (TOP + BOTTOM) / 2.0 + 3.0
        );
    }
    // Markers under the lines, so the data stays readable where they cross. Rollbacks
    // and resumes are placed first, so theirs are the labels that find room, and drawn
    // last, so a step at the same moment (a resume restarts the ramp) does not hide them.
    let mut shown: Vec<&Marker> = history
        .markers
        .iter()
        .filter(|m| history.visible(m.at))
        .collect();
    shown.sort_by_key(|m| (m.kind == MarkerKind::Step, m.at));
    let mut rows: [Vec<(f64, f64)>; LABEL_ROWS.len()] = Default::default();
    let (mut steps, mut others) = (String::new(), String::new());
    for marker in shown {
        let x = history.x(marker.at);
        let colour = marker.colour();
        let (out, dash) = if marker.kind == MarkerKind::Step {
            (&mut steps, " stroke-dasharray=\"3 2\"")
        } else {
            (&mut others, "")
        };
        // The label goes right of its line, or left of it near the right edge, in the
        // first row where it overlaps no other label; with no room it is left out (the
        // line's tooltip still says it). The line starts at its own label's row, so it
        // never runs through a label above.
        let width = label_width(&marker.label);
        let (start, anchor, text_x) = if x + 3.0 + width <= RIGHT {
            (x + 3.0, "start", x + 3.0)
        } else {
            (x - 3.0 - width, "end", x - 3.0)
        };
        let end = start + width;
        let row = rows.iter().position(|taken| {
            taken
                .iter()
                .all(|&(from, to)| end + 3.0 <= from || start >= to + 3.0)
        });
        let line_top = row.map_or(TOP, |row| LABEL_ROWS[row] - 8.0);
        let _ = write!(
            out,
            "<g class=\"event {}\"><title>{}</title><line x1=\"{x:.1}\" y1=\"{line_top:.1}\" \
             x2=\"{x:.1}\" y2=\"{BOTTOM}\" stroke=\"{colour}\" stroke-width=\"1.5\"{dash}/>",
            marker.class(),
            escape(&marker.detail),
        );
        if let Some(row) = row {
            rows[row].push((start, end));
            let _ = write!(
                out,
                "<text x=\"{text_x:.1}\" y=\"{}\" text-anchor=\"{anchor}\" fill=\"{colour}\">{}</text>",
                LABEL_ROWS[row],
                escape(&marker.label)
            );
        }
        out.push_str("</g>");
    }
    svg.push_str(&steps);
    svg.push_str(&others);
    for (variant, colour, points) in [
        ("stable", STABLE, &history.stable),
        ("canary", CANARY, &history.canary),
    ] {
        let runs = series(history, points, metric, top);
        for run in &runs {
            let _ = write!(
                svg,
                "<polyline class=\"series {variant}\" points=\"{run}\" fill=\"none\" \
                 stroke=\"{colour}\" stroke-width=\"1.6\" stroke-linejoin=\"round\"/>"
            );
        }
        // A dot on the latest value: the line of a young instance is only a few pixels
        // long, easily hidden under a marker.
        let last = runs.last().and_then(|run| run.rsplit(' ').next());
        if let Some((x, y)) = last.and_then(|point| point.split_once(',')) {
            let _ = write!(
                svg,
                "<circle class=\"latest {variant}\" cx=\"{x}\" cy=\"{y}\" r=\"2.2\" fill=\"{colour}\"/>"
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

pub(crate) fn charts_block(history: &History) -> String {
    let mut html = String::with_capacity(8192);
    html.push_str(
        "<div class=\"charts\"><div class=\"chart-key\"><span class=\"key s\"></span>stable\
         <span class=\"key c\"></span>canary<span class=\"key step\"></span>step\
         <span class=\"key rb\"></span>rollback<span class=\"key rs\"></span>resume\
         <span class=\"span\">last 15 min · 15 s slots</span></div>\
         <div class=\"chart-row\">",
    );
    for metric in Metric::ALL {
        let _ = write!(
            html,
            "<figure><figcaption>{}</figcaption>{}</figure>",
            metric.caption(),
            chart(history, metric)
        );
    }
    html.push_str("</div></div>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The charts block of one route card: a legend and the three charts, or `None`
    /// when the document holds no usable history (as the status page builds it).
    fn charts_html(doc: &Value) -> Option<String> {
        History::from_json(doc).map(|history| charts_block(&history))
    }
    use serde_json::json;

    const NOW: &str = "2026-12-02T10:15:00Z";

    /// A point `slot` slots before the current one (0 = the slot still filling).
    fn point(slot: i64, rate: f64, error_ratio: Value, p99: Value) -> Value {
        let now = parse_rfc3339(NOW).expect("time");
        let t = now - 10_000 - slot * 15_000;
        json!({
            "t": crate::rollout::format_rfc3339(t),
            "requests": (rate * 15.0) as u64,
            "rate": rate,
            "error_ratio": error_ratio,
            "p99_seconds": p99,
        })
    }

    fn doc(stable: Vec<Value>, canary: Vec<Value>, events: Value) -> Value {
        json!({ "route": "web", "slot_seconds": 15, "slots": 60, "now": NOW,
                "stable": stable, "canary": canary, "events": events })
    }

    fn chart_of(doc: &Value, metric: Metric) -> String {
        chart(&History::from_json(doc).expect("a history"), metric)
    }

    /// The `points` attribute of every polyline of `variant`.
    fn lines(svg: &str, variant: &str) -> Vec<String> {
        let marker = format!("<polyline class=\"series {variant}\" points=\"");
        svg.match_indices(&marker)
            .map(|(i, _)| {
                let rest = &svg[i + marker.len()..];
                rest[..rest.find('"').expect("end of points")].to_owned()
            })
            .collect()
    }

    #[test]
    fn each_variant_is_a_line_of_fifteen_second_steps() {
        let history = doc(
            vec![
                point(2, 10.0, json!(0.0), json!(0.004)),
                point(1, 20.0, json!(0.0), json!(0.004)),
                point(0, 10.0, json!(0.0), json!(0.004)),
            ],
            vec![point(1, 5.0, json!(0.5), json!(0.05))],
            json!([]),
        );
        let svg = chart_of(&history, Metric::Rate);
        // The scale's top is 20/s: the 20 req/s slot touches it, the 10 req/s ones sit
        // half way. Slots are 15 s of 900 s: 5.2 px each, the last one cut at now.
        assert!(svg.contains(">20/s</text>"), "{svg}");
        assert_eq!(
            lines(&svg, "stable"),
            vec!["340.0,56.0 345.3,56.0 345.3,26.0 350.5,26.0 350.5,56.0 354.0,56.0"]
        );
        assert_eq!(lines(&svg, "canary"), vec!["345.3,71.0 350.5,71.0"]);
        assert!(svg.contains(&format!("stroke=\"{STABLE}\"")));
        assert!(svg.contains(&format!("stroke=\"{CANARY}\"")));
        assert!(svg.contains(">15 min ago</text>") && svg.contains(">now</text>"));
        assert!(svg.starts_with("<svg class=\"chart\" data-metric=\"rate\" width=\"360\""));
        assert!(svg.ends_with("</svg>"));
        // The error ratio chart scales to the canary's 50 %, the p99 chart to 50 ms.
        let errors = chart_of(&history, Metric::ErrorRatio);
        assert!(errors.contains(">50 %</text>"), "{errors}");
        assert_eq!(lines(&errors, "canary"), vec!["345.3,26.0 350.5,26.0"]);
        let p99 = chart_of(&history, Metric::P99);
        assert!(p99.contains(">50 ms</text>"), "{p99}");
    }

    #[test]
    fn slots_without_traffic_are_gaps_not_zeros() {
        let history = doc(
            vec![
                point(3, 2.0, json!(0.1), json!(0.01)),
                point(2, 0.0, Value::Null, Value::Null),
                point(1, 2.0, json!(0.1), json!(0.01)),
                point(0, 2.0, json!(0.1), json!(0.01)),
            ],
            vec![],
            json!([]),
        );
        // Error ratio and p99: two lines with a hole where no request was.
        for metric in [Metric::ErrorRatio, Metric::P99] {
            let svg = chart_of(&history, metric);
            let runs = lines(&svg, "stable");
            assert_eq!(runs.len(), 2, "{metric:?}: {svg}");
            assert_eq!(runs[0].split(' ').count(), 2);
            assert_eq!(runs[1].split(' ').count(), 4);
        }
        // The rate was truly zero there: one unbroken line down to the baseline.
        let rate = lines(&chart_of(&history, Metric::Rate), "stable");
        assert_eq!(rate.len(), 1);
        assert!(rate[0].contains(",86.0"), "{rate:?}");
        // A slot missing from the document (before the instance started) is a gap too.
        let history = doc(
            vec![
                point(5, 2.0, json!(0.1), json!(0.01)),
                point(1, 2.0, json!(0.1), json!(0.01)),
            ],
            vec![],
            json!([]),
        );
        assert_eq!(lines(&chart_of(&history, Metric::Rate), "stable").len(), 2);
    }

    #[test]
    fn steps_rollbacks_and_resumes_are_marked_on_the_time_axis() {
        let events = json!([
            {"at": "2026-12-02T09:50:00Z", "kind": "step", "step": 0, "percent": 1, "reason": null},
            {"at": "2026-12-02T10:05:00Z", "kind": "step", "step": 1, "percent": 5, "reason": null},
            {"at": "2026-12-02T10:10:00Z", "kind": "rollback", "step": 1, "percent": 5,
             "reason": "error_ratio"},
            {"at": "2026-12-02T10:10:30Z", "kind": "resume", "step": null, "percent": null,
             "reason": null},
            {"at": "2026-12-02T10:12:00Z", "kind": "percent", "step": null, "percent": 2.5,
             "reason": null},
        ]);
        let history = doc(
            vec![point(0, 1.0, json!(0.0), json!(0.002))],
            vec![],
            events,
        );
        for metric in Metric::ALL {
            let svg = chart_of(&history, metric);
            // The step 25 minutes ago is off the chart; the others are on it, where
            // their time falls: 10 and 5 minutes ago, 2.5 and 3 minutes before now.
            assert_eq!(svg.matches("<g class=\"event ").count(), 4, "{svg}");
            assert!(svg.contains("<g class=\"event step\"><title>step 2 · 5 % at 2026-12-02T10:05:00Z</title><line x1=\"144.7\""), "{svg}");
            assert!(svg.contains("<g class=\"event rollback\"><title>rollback (error_ratio) of step 2 · 5 % at 2026-12-02T10:10:00Z</title><line x1=\"249.3\""), "{svg}");
            assert!(svg.contains(&format!("stroke=\"{ROLLBACK}\"")));
            assert!(svg.contains("<g class=\"event resume\"><title>resume at 2026-12-02T10:10:30Z</title><line x1=\"259.8\""), "{svg}");
            assert!(
                svg.contains("<title>canary share set to 2.5 % at 2026-12-02T10:12:00Z</title>")
            );
            // Labels: the resume is too close to the rollback for one row, so it takes
            // the second; the share change 90 s later finds no room and keeps its
            // tooltip only.
            assert!(svg.contains(">5 %</text>"), "{svg}");
            assert!(
                svg.contains(&format!(
                    "y=\"10\" text-anchor=\"start\" fill=\"{ROLLBACK}\">rollback</text>"
                )),
                "{svg}"
            );
            assert!(
                svg.contains(&format!(
                    "y=\"21\" text-anchor=\"start\" fill=\"{RESUME}\">resume</text>"
                )),
                "{svg}"
            );
            assert!(!svg.contains(">2.5 %</text>"), "{svg}");
            // Steps are drawn first: a resume's line stays visible over the step its
            // ramp restarts at.
            let last_step = svg.rfind("<g class=\"event step\">").expect("a step");
            assert!(svg.find("<g class=\"event rollback\">") > Some(last_step));
        }
    }

    #[test]
    fn an_empty_history_draws_the_frame_and_says_why_it_is_empty() {
        let svg = chart_of(&doc(vec![], vec![], json!([])), Metric::Rate);
        assert!(svg.contains(">no data yet</text>"), "{svg}");
        assert!(!svg.contains("<polyline"));
        assert!(svg.contains(">15 min ago</text>") && svg.contains(">1/s</text>"));
        // An idle route: zero rates are drawn, but no ratio or p99 exists.
        let idle = doc(
            vec![point(1, 0.0, Value::Null, Value::Null)],
            vec![point(1, 0.0, Value::Null, Value::Null)],
            json!([]),
        );
        assert_eq!(lines(&chart_of(&idle, Metric::Rate), "canary").len(), 1);
        let p99 = chart_of(&idle, Metric::P99);
        assert!(
            p99.contains(">no traffic in the last 15 min</text>"),
            "{p99}"
        );
        assert!(!p99.contains("<polyline"));
        // Without a usable `now`, there are no charts at all (the page stays as it was).
        assert_eq!(charts_html(&json!({"stable": []})), None);
        assert_eq!(charts_html(&Value::Null), None);
        let block = charts_html(&doc(vec![], vec![], json!([]))).expect("charts");
        assert_eq!(block.matches("<svg").count(), 3);
        assert!(block.contains("<figcaption>requests per second</figcaption>"));
        assert!(block.contains("<figcaption>error rate</figcaption>"));
        assert!(block.contains("<figcaption>p99 latency</figcaption>"));
    }

    #[test]
    fn text_from_the_document_is_escaped_and_odd_values_are_skipped() {
        let events = json!([
            {"at": "2026-12-02T10:14:00Z", "kind": "rollback", "reason": "<script>x</script>"},
            {"at": "2026-12-02T10:13:00Z", "kind": "<b>odd</b>"},
            {"at": "not a time", "kind": "rollback"},
        ]);
        let history = doc(
            vec![
                point(0, f64::NAN, json!("ten"), json!(-1.0)),
                json!({"t": "yesterday", "rate": 1.0}),
            ],
            vec![],
            events,
        );
        let svg = chart_of(&history, Metric::Rate);
        assert!(!svg.contains("<script>") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(svg.contains("&lt;b&gt;odd&lt;/b&gt;"));
        assert_eq!(svg.matches("<g class=\"event ").count(), 2);
        assert!(!svg.contains("<polyline"), "no usable value: {svg}");
    }

    #[test]
    fn scales_end_on_round_figures() {
        for (max, top) in [
            (0.7, 1.0),
            (1.0, 1.0),
            (1.2, 2.0),
            (2.1, 2.5),
            (31.0, 50.0),
            (0.013, 0.02),
            (0.021, 0.025),
            (0.0042, 0.005),
            (120.0, 200.0),
        ] {
            assert!(
                (nice_top(max) - top).abs() < 1e-12,
                "{max}: {}",
                nice_top(max)
            );
        }
    }
}
