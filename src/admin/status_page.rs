//! The HTML status page at `/` on the admin listener, and the figures it shares with the
//! `cohort status` table (the binary's `cli::status_table`): both read the `/routes`
//! document.
//!
//! The page is one self-contained HTML document (inline CSS, no script, no external
//! asset) that reloads itself every 5 s. Under each route's figures, small inline SVG
//! charts show its last 15 minutes ([`crate::admin::charts`]) when the route's object carries
//! the `GET /routes/{name}/history` document as `"history"` (the admin listener adds
//! it); without it, the page is the same minus the charts. Every string that comes from config (route
//! names, hosts, salts, sticky sources, endpoints) is HTML-escaped. The document is read
//! defensively: a missing or mistyped field shows as "–" instead of failing, so the page
//! also renders a `/routes` document from an older or newer cohort.

use std::fmt::Write as _;

use serde_json::Value;

use crate::cohort::BasisPoints;

/// Seconds between the page's own reloads (`<meta http-equiv="refresh">`).
pub(crate) const REFRESH_SECONDS: u32 = 5;

/// Shown where a figure does not exist (no traffic in the window, or a missing field).
pub const NONE: &str = "–";

/// An error ratio above this is highlighted (1 %).
pub(crate) const ERROR_RATIO_ALERT: f64 = 0.01;

// ---------------------------------------------------------------------------------------
// The figures, read from the `/routes` document
// ---------------------------------------------------------------------------------------

/// The whole `/routes` document.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    pub generation: Option<u64>,
    pub routes: Vec<RouteView>,
}

/// One route of the `/routes` document.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteView {
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: String,
    /// The canary share; `None` if the document's number is not a valid percentage.
    pub canary_share: Option<BasisPoints>,
    pub salt: String,
    pub sticky: Vec<String>,
    pub stable: VariantView,
    pub canary: VariantView,
    /// One line on the rollout or guard in force, when the route has one.
    pub rollout: Option<String>,
    /// One line on the route's segments and baggage, when it has any.
    pub targeting: Option<String>,
    /// One line on the guard's verdict and evidence, for guarded routes.
    pub verdict: Option<String>,
    /// That verdict is `fail`.
    pub verdict_fails: bool,
    /// The route is rolled back (the line above says why).
    pub rolled_back: bool,
    /// The last 15 minutes, when the document carries them.
    pub(crate) history: Option<crate::admin::charts::History>,
}

/// "verdict: pass (sequential) · evidence errors 0.12, latency 0.03 of the threshold
/// (1 fails)": the guard's answer and how close each signal is to failing; `None` for
/// routes without a guard (the document carries no `"verdict"`).
pub fn verdict_line(route: &Value) -> Option<String> {
    let verdict = route.get("verdict").filter(|v| v.is_object())?;
    let answer = verdict.get("verdict").and_then(Value::as_str)?;
    let method = verdict
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("threshold");
    let mut line = format!("verdict: {answer} ({method})");
    if let Some(reason) = verdict.get("reason").and_then(Value::as_str) {
        line.push_str(&format!(", reason {reason}"));
    }
    let evidence = verdict.get("evidence");
    let signals: Vec<String> = ["errors", "latency"]
        .iter()
        .filter_map(|signal| {
            let value = evidence?.get(*signal)?.as_f64()?;
            Some(format!("{signal} {}", trimmed(value, 2)))
        })
        .collect();
    if signals.is_empty() {
        line.push_str(" · no evidence yet");
    } else {
        let two_signals = evidence.is_some_and(|e| e.get("latency").is_some_and(Value::is_number));
        let against = if method == "sequential" && two_signals {
            "ln E / ln(2/alpha)"
        } else if method == "sequential" {
            "ln E / ln(1/alpha)"
        } else {
            "observed / limit"
        };
        line.push_str(&format!(
            " · evidence {} ({against}; 1 fails)",
            signals.join(", ")
        ));
    }
    if let Some(source) = verdict
        .get("source")
        .filter(|s| s.get("kind").and_then(Value::as_str) == Some("prometheus"))
    {
        let replicas = source.get("replicas").and_then(Value::as_u64);
        match (source.get("judged").and_then(Value::as_str), replicas) {
            (Some("fleet"), Some(n)) => line.push_str(&format!(" · fleet of {n} replicas")),
            _ => match source.get("error").and_then(Value::as_str) {
                Some(error) => {
                    line.push_str(&format!(" · local counts: Prometheus failing ({error})"))
                }
                None => line.push_str(" · local counts until Prometheus answers"),
            },
        }
    }
    Some(line)
}

/// "segments: header:x-team=… → canary (2 values) · ip → stable (340 values from
/// offices.txt) · follows baggage cohort.checkout-v2 · hash nginx"; `None` for a route
/// placed by its percentage alone.
pub fn targeting_line(route: &Value) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let segments = route.get("segments").and_then(Value::as_array);
    let rules: Vec<String> = segments
        .into_iter()
        .flatten()
        .map(|segment| {
            let text = |key: &str| segment.get(key).and_then(Value::as_str).unwrap_or("");
            let count = segment
                .get("values_count")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let noun = if count == 1 { "value" } else { "values" };
            let file = segment
                .get("values_file")
                .and_then(Value::as_str)
                .map(|path| {
                    let name = std::path::Path::new(path)
                        .file_name()
                        .map_or(path.into(), |n| n.to_string_lossy());
                    format!(" from {name}")
                })
                .unwrap_or_default();
            format!(
                "{} → {} ({count} {noun}{file})",
                text("match"),
                text("variant")
            )
        })
        .collect();
    if !rules.is_empty() {
        parts.push(format!("segments: {}", rules.join(" · ")));
    }
    if let Some(name) = route.get("follow").and_then(Value::as_str) {
        parts.push(format!("follows baggage cohort.{name}"));
    }
    if let Some(name) = route.get("propagate").and_then(Value::as_str) {
        parts.push(format!("propagates baggage cohort.{name}"));
    }
    if route.get("hash").and_then(Value::as_str) == Some("nginx") {
        parts.push("NGINX split_clients hash".to_owned());
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// "rollout ramping · step 2 of 5 (5 %) · next step at 2026-12-01T09:20:00Z", or the
/// guard's state for a guard without a rollout; `None` for plain routes.
pub fn rollout_line(route: &Value) -> Option<String> {
    let rollout = route.get("rollout").filter(|r| r.is_object());
    let guard = route.get("guard").filter(|g| g.is_object());
    let rolled_back = route
        .get("rolled_back")
        .or_else(|| guard.and_then(|g| g.get("rolled_back")))
        .filter(|r| r.is_object());
    let reason = rolled_back
        .and_then(|r| r.get("reason"))
        .and_then(Value::as_str);
    let Some(rollout) = rollout else {
        let Some(guard) = guard else {
            // Any route can be rolled back by hand.
            return reason.map(|reason| {
                let mut line = format!("rolled back ({reason})");
                if let Some(at) = rolled_back
                    .and_then(|r| r.get("at"))
                    .and_then(Value::as_str)
                {
                    let _ = write!(line, " at {at}");
                }
                line + " · resume to serve the canary again"
            });
        };
        let state = guard.get("state").and_then(Value::as_str)?;
        return Some(match reason {
            Some(reason) => {
                format!("guard: rolled back ({reason}) · resume to serve the canary again")
            }
            None if state == "rolled_back" => "guard: rolled back".to_owned(),
            None => "guard: watching".to_owned(),
        });
    };
    let state = rollout.get("state").and_then(Value::as_str).unwrap_or(NONE);
    let steps: Vec<String> = rollout
        .get("steps")
        .and_then(Value::as_array)
        .map(|s| s.iter().map(|v| v.to_string()).collect())
        .unwrap_or_default();
    let mut line = format!("rollout {state}");
    if let Some(reason) = reason.filter(|_| state == "rolled_back") {
        let _ = write!(line, " ({reason})");
    }
    match rollout.get("step").and_then(Value::as_u64) {
        Some(step) => {
            let share = steps.get(step as usize).map_or(NONE, String::as_str);
            let number = step.saturating_add(1);
            let _ = write!(line, " · step {number} of {} ({share} %)", steps.len());
        }
        None => {
            let _ = write!(line, " · starts {}", string(rollout, "start"));
        }
    }
    if state != "rolled_back" {
        if let Some(next) = rollout.get("next_step_at").and_then(Value::as_str) {
            if rollout.get("step").and_then(Value::as_u64).is_some() {
                let _ = write!(line, " · next step at {next}");
            }
        }
    }
    if !steps.is_empty() {
        let _ = write!(
            line,
            " · steps {} every {}",
            steps.join("/"),
            string(rollout, "step_every")
        );
    }
    Some(line)
}

/// One variant's endpoints and its figures over the last minute.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VariantView {
    pub endpoints: Vec<String>,
    pub requests: Option<u64>,
    /// Requests per second.
    pub request_rate: Option<f64>,
    /// errors / requests; `None` without traffic.
    pub error_ratio: Option<f64>,
    /// `None` without traffic.
    pub p99_seconds: Option<f64>,
}

impl RouteView {
    /// The stable share: everything the canary does not get.
    pub(crate) fn stable_share(&self) -> Option<BasisPoints> {
        let canary = self.canary_share?;
        BasisPoints::from_raw(BasisPoints::FULL.get() - canary.get())
    }

    /// `(variant name, its share, its figures)`, stable first.
    pub fn variants(&self) -> [(&'static str, Option<BasisPoints>, &VariantView); 2] {
        [
            ("stable", self.stable_share(), &self.stable),
            ("canary", self.canary_share, &self.canary),
        ]
    }
}

impl Overview {
    pub fn from_json(doc: &Value) -> Overview {
        Overview {
            generation: doc.get("generation").and_then(Value::as_u64),
            routes: doc
                .get("routes")
                .and_then(Value::as_array)
                .map(|routes| routes.iter().map(RouteView::from_json).collect())
                .unwrap_or_default(),
        }
    }
}

impl RouteView {
    fn from_json(route: &Value) -> RouteView {
        RouteView {
            name: string(route, "name"),
            host: route.get("host").and_then(Value::as_str).map(str::to_owned),
            path_prefix: string(route, "path_prefix"),
            canary_share: route
                .get("canary_percent")
                .and_then(Value::as_f64)
                .and_then(|p| BasisPoints::from_percent(p).ok()),
            salt: string(route, "salt"),
            sticky: strings(route.get("sticky")),
            stable: VariantView::from_json(route.get("stable")),
            canary: VariantView::from_json(route.get("canary")),
            rollout: rollout_line(route),
            targeting: targeting_line(route),
            verdict: verdict_line(route),
            verdict_fails: route
                .get("verdict")
                .and_then(|v| v.get("verdict"))
                .and_then(Value::as_str)
                == Some("fail"),
            rolled_back: route.get("rolled_back").is_some_and(Value::is_object)
                || ["rollout", "guard"].iter().any(|k| {
                    route
                        .get(*k)
                        .and_then(|v| v.get("state"))
                        .and_then(Value::as_str)
                        == Some("rolled_back")
                }),
            history: route
                .get("history")
                .and_then(crate::admin::charts::History::from_json),
        }
    }
}

impl VariantView {
    fn from_json(variant: Option<&Value>) -> VariantView {
        let Some(variant) = variant else {
            return VariantView::default();
        };
        let number = |key: &str| {
            variant
                .get(key)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite())
        };
        VariantView {
            endpoints: strings(variant.get("endpoints")),
            requests: variant.get("requests").and_then(Value::as_u64),
            request_rate: number("request_rate"),
            error_ratio: number("error_ratio"),
            p99_seconds: number("p99_seconds"),
        }
    }

    /// Whether the error ratio is above [`ERROR_RATIO_ALERT`].
    pub(crate) fn alarming(&self) -> bool {
        self.error_ratio.is_some_and(|r| r > ERROR_RATIO_ALERT)
    }
}

fn string(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Number formats shared with the table
// ---------------------------------------------------------------------------------------

/// `x` with at most `decimals` decimals, trailing zeros removed: `2.50` → `2.5`, `3.00` → `3`.
pub(crate) fn trimmed(x: f64, decimals: usize) -> String {
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// About three significant digits, and never a rounded-away nonzero value.
fn figure(x: f64) -> String {
    if x == 0.0 {
        "0".to_owned()
    } else if x < 0.01 {
        "<0.01".to_owned()
    } else if x < 10.0 {
        trimmed(x, 2)
    } else if x < 100.0 {
        trimmed(x, 1)
    } else {
        trimmed(x, 0)
    }
}

/// Requests per second: `12.3`, `0.05`; [`NONE`] when unknown.
pub fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| NONE.to_owned(), figure)
}

/// An error ratio as a percentage without the sign: `0.025` → `2.5`; [`NONE`] without traffic.
pub fn error_percent_text(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| NONE.to_owned(), |r| figure(r * 100.0))
}

/// A p99 in milliseconds without the unit: `0.0045` → `4.5`; [`NONE`] without traffic.
pub fn p99_ms_text(seconds: Option<f64>) -> String {
    seconds.map_or_else(
        || NONE.to_owned(),
        |s| {
            let ms = s * 1000.0;
            if ms > 0.0 && ms < 1.0 {
                trimmed(ms, 3)
            } else {
                figure(ms)
            }
        },
    )
}

/// A share in its shortest exact form (`2.5`, `0.25`, `100`); [`NONE`] when unknown.
pub fn share_text(share: Option<BasisPoints>) -> String {
    share.map_or_else(|| NONE.to_owned(), |bp| bp.to_string())
}

// ---------------------------------------------------------------------------------------
// HTML
// ---------------------------------------------------------------------------------------

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
:root{--stable:#2563eb;--stable-bg:#dbeafe;--canary:#d97706;--canary-bg:#fef3c7;\
--bad:#b91c1c;--bad-bg:#fee2e2;--ink:#111827;--muted:#6b7280;--line:#e5e7eb}
*{box-sizing:border-box}
body{margin:0;padding:24px 32px;background:#f3f4f6;color:var(--ink);\
font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif}
header{display:flex;align-items:baseline;gap:24px;max-width:1200px;margin:0 auto 16px}
h1{font-size:22px;margin:0}
header .gen{font-size:15px}
header .note{margin-left:auto;color:var(--muted);font-size:13px}
.route{max-width:1200px;margin:0 auto 18px;background:#fff;border:1px solid var(--line);\
border-radius:10px;padding:16px 20px;box-shadow:0 1px 2px rgba(0,0,0,.05)}
.top{display:flex;align-items:baseline;gap:16px;flex-wrap:wrap}
h2{font-size:20px;margin:0;word-break:break-all}
.match{color:var(--muted)}
.meta{display:flex;gap:6px 22px;flex-wrap:wrap;margin:8px 0 12px;color:var(--muted);font-size:13px}
.meta b{font-weight:600;color:var(--ink)}
.rollout{margin:-4px 0 12px;font-size:13px;color:var(--ink)}
.targeting{margin:-4px 0 8px;font-size:13px;color:var(--muted)}
.rollout.bad{color:#b91c1c;font-weight:600}
.verdict{margin:-4px 0 8px;font-size:13px;color:var(--ink)}
.verdict.bad{color:#b91c1c;font-weight:600}
code{font:13px/1.3 ui-monospace,'DejaVu Sans Mono',Menlo,monospace;color:var(--ink);\
background:#f3f4f6;border-radius:4px;padding:1px 5px;word-break:break-all}
.legend{display:flex;justify-content:space-between;font-size:14px;margin-bottom:4px}
.legend .pct{font-size:20px;font-weight:700;font-variant-numeric:tabular-nums}
.legend .s{color:var(--stable)}
.legend .c{color:var(--canary);text-align:right}
.bar{display:flex;height:14px;border-radius:7px;overflow:hidden;background:var(--line)}
.bar .s{background:var(--stable)}
.bar .c{background:var(--canary);min-width:4px;border-left:2px solid #fff}
.bar .c.zero{min-width:0;border-left:0}
.alert{background:var(--bad-bg);color:var(--bad);border-radius:999px;padding:1px 12px;\
font-size:13px;font-weight:600}
table{width:100%;border-collapse:collapse;margin-top:14px;table-layout:fixed}
col.variant{width:12%}col.rate{width:10%}col.err{width:12%}col.p99{width:11%}col.requests{width:14%}
th,td{text-align:left;padding:7px 10px;border-bottom:1px solid var(--line);vertical-align:top}
thead th{font-size:12px;font-weight:600;text-transform:uppercase;letter-spacing:.04em;\
color:var(--muted);border-bottom:2px solid var(--line)}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.num{font-size:17px;font-weight:600}
td .unit{font-size:12px;font-weight:400;color:var(--muted);margin-left:2px}
tbody tr:last-child td,tbody tr:last-child th{border-bottom:0}
tbody th{white-space:nowrap;font-weight:600}
tr.stable th{border-left:5px solid var(--stable)}
tr.canary th{border-left:5px solid var(--canary)}
.tag{display:inline-block;border-radius:999px;padding:1px 10px;font-size:13px}
tr.stable .tag{background:var(--stable-bg);color:var(--stable)}
tr.canary .tag{background:var(--canary-bg);color:#92400e}
td.bad{color:var(--bad)}
td.bad .err{background:var(--bad-bg);border-radius:4px;padding:0 6px}
td.none{color:var(--muted);font-weight:400}
.eps code{display:inline-block;margin:0 4px 3px 0}
.empty{color:var(--muted)}
.charts{margin-top:14px;border-top:1px solid var(--line);padding-top:10px}
.chart-key{display:flex;align-items:center;flex-wrap:wrap;gap:4px 6px;font-size:12px;color:var(--muted)}
.chart-key .key{display:inline-block;width:16px;height:3px;border-radius:2px;margin-left:10px}
.chart-key .key:first-child{margin-left:0}
.chart-key .key.s{background:var(--stable)}.chart-key .key.c{background:var(--canary)}
.chart-key .key.step{height:10px;width:0;border-left:2px dashed #4b5563}
.chart-key .key.rb{height:10px;width:2px;background:#dc2626}
.chart-key .key.rs{height:10px;width:2px;background:#16a34a}
.chart-key .span{margin-left:auto}
.chart-row{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:4px 18px;margin-top:4px}
.chart-row figure{margin:0}
.chart-row figcaption{font-size:12px;font-weight:600;color:var(--ink);margin:4px 0 0 40px}
.chart-row svg{display:block;width:100%;max-width:420px;height:auto}
";

/// Renders the status page from the `/routes` JSON document.
pub fn render(routes: &Value) -> String {
    let overview = Overview::from_json(routes);
    let mut html = String::with_capacity(4096 + overview.routes.len() * 3072);
    html.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(
        html,
        "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">"
    );
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    html.push_str("<title>cohort status</title>\n<style>\n");
    html.push_str(STYLE);
    html.push_str("</style>\n</head>\n<body>\n<header><h1>cohort</h1>");
    let generation = overview
        .generation
        .map_or_else(|| NONE.to_owned(), |g| g.to_string());
    let _ = write!(
        html,
        "<span class=\"gen\">config generation <b id=\"generation\">{generation}</b></span>"
    );
    let count = overview.routes.len();
    let _ = writeln!(
        html,
        "<span class=\"note\">{count} route{} · figures over the last minute · refreshes every {REFRESH_SECONDS} s</span></header>",
        if count == 1 { "" } else { "s" }
    );
    if overview.routes.is_empty() {
        html.push_str("<section class=\"route empty\">No routes configured.</section>\n");
    }
    for route in &overview.routes {
        route_card(&mut html, route);
    }
    html.push_str("</body>\n</html>\n");
    html
}

fn route_card(html: &mut String, route: &RouteView) {
    let name = escape(&route.name);
    let host = route
        .host
        .as_deref()
        .map_or_else(|| "any host".to_owned(), escape);
    let _ = write!(
        html,
        "<section class=\"route\" data-route=\"{name}\">\n<div class=\"top\"><h2>{name}</h2>\
         <span class=\"match\">{host} · path <code>{}</code></span>",
        escape(&route.path_prefix)
    );
    // The one thing to notice first: which variants fail more than 1 % of requests.
    let alarming: Vec<&str> = route
        .variants()
        .iter()
        .filter(|(_, _, figures)| figures.alarming())
        .map(|(variant, _, _)| *variant)
        .collect();
    if !alarming.is_empty() {
        let _ = write!(
            html,
            "<span class=\"alert\">error rate above 1 %: {}</span>",
            alarming.join(", ")
        );
    }
    html.push_str("</div>\n");
    let sticky = if route.sticky.is_empty() {
        NONE.to_owned()
    } else {
        route
            .sticky
            .iter()
            .map(|s| format!("<code>{}</code>", escape(s)))
            .collect::<Vec<_>>()
            .join(" → ")
    };
    let _ = writeln!(
        html,
        "<div class=\"meta\"><span>salt <code class=\"salt\">{}</code></span>\
         <span>sticky {sticky}</span></div>",
        escape(&route.salt)
    );
    if let Some(line) = &route.targeting {
        let _ = writeln!(html, "<div class=\"targeting\">{}</div>", escape(line));
    }
    if let Some(line) = &route.verdict {
        let class = if route.verdict_fails {
            "verdict bad"
        } else {
            "verdict"
        };
        let _ = writeln!(html, "<div class=\"{class}\">{}</div>", escape(line));
    }
    if let Some(line) = &route.rollout {
        let class = if route.rolled_back {
            "rollout bad"
        } else {
            "rollout"
        };
        let _ = writeln!(html, "<div class=\"{class}\">{}</div>", escape(line));
    }

    // The split: big numbers over a two-colour bar.
    let stable = share_text(route.stable_share());
    let canary = share_text(route.canary_share);
    let _ = writeln!(
        html,
        "<div class=\"legend\"><span class=\"s\">stable <span class=\"pct\">{stable}&nbsp;%</span></span>\
         <span class=\"c\">canary <span class=\"pct\">{canary}&nbsp;%</span></span></div>"
    );
    match (route.stable_share(), route.canary_share) {
        (Some(s), Some(c)) => {
            let zero = if c.get() == 0 { " zero" } else { "" };
            let _ = writeln!(
                html,
                "<div class=\"bar\" title=\"stable {s} %, canary {c} %\">\
                 <div class=\"s\" style=\"flex:0 1 {s}%\"></div>\
                 <div class=\"c{zero}\" style=\"flex:0 0 {c}%\"></div></div>"
            );
        }
        _ => html.push_str("<div class=\"bar\"></div>\n"),
    }

    html.push_str(
        "<table>\n<colgroup><col class=\"variant\"><col class=\"rate\"><col class=\"err\">\
         <col class=\"p99\"><col class=\"requests\"><col></colgroup>\n<thead><tr><th>variant</th><th class=\"num\">req/s</th>\
         <th class=\"num\">error rate</th><th class=\"num\">p99</th>\
         <th class=\"num\">requests (1 min)</th><th>endpoints</th></tr></thead>\n<tbody>\n",
    );
    for (variant, _share, figures) in route.variants() {
        variant_row(html, variant, figures);
    }
    html.push_str("</tbody>\n</table>\n");
    if let Some(history) = &route.history {
        html.push_str(&crate::admin::charts::charts_block(history));
    }
    html.push_str("</section>\n");
}

fn variant_row(html: &mut String, variant: &str, v: &VariantView) {
    let _ = write!(
        html,
        "<tr class=\"{variant}\"><th><span class=\"tag\">{variant}</span></th>"
    );
    number_cell(html, "rate", &rate_text(v.request_rate), "", false);
    number_cell(
        html,
        "err",
        &error_percent_text(v.error_ratio),
        "%",
        v.alarming(),
    );
    number_cell(html, "p99", &p99_ms_text(v.p99_seconds), "ms", false);
    let requests = v
        .requests
        .map_or_else(|| NONE.to_owned(), |n| n.to_string());
    number_cell(html, "requests", &requests, "", false);
    html.push_str("<td class=\"eps\">");
    if v.endpoints.is_empty() {
        html.push_str("<span class=\"empty\">none</span>");
    }
    for endpoint in &v.endpoints {
        let _ = write!(html, "<code>{}</code>", escape(endpoint));
    }
    html.push_str("</td></tr>\n");
}

/// A right-aligned figure; the unit is left out when the figure is [`NONE`].
fn number_cell(html: &mut String, class: &str, value: &str, unit: &str, bad: bool) {
    let none = value == NONE;
    let state = if none {
        " none"
    } else if bad {
        " bad"
    } else {
        ""
    };
    let _ = write!(html, "<td class=\"num {class}{state}\">");
    if bad {
        html.push_str("<span class=\"err\">");
    }
    html.push_str(&escape(value));
    if !none && !unit.is_empty() {
        let _ = write!(html, "<span class=\"unit\">{unit}</span>");
    }
    if bad {
        html.push_str("</span>");
    }
    html.push_str("</td>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn variant(requests: u64, rate: f64, error_ratio: Value, p99: Value) -> Value {
        json!({
            "endpoints": ["http://127.0.0.1:9001"],
            "requests": requests,
            "request_rate": rate,
            "error_ratio": error_ratio,
            "p99_seconds": p99,
        })
    }

    fn route(name: &str, percent: f64, salt: &str) -> Value {
        json!({
            "name": name,
            "host": null,
            "path_prefix": "/",
            "canary_percent": percent,
            "salt": salt,
            "sticky": ["header:x-user-id", "ip"],
            "stable": variant(120, 2.0, json!(0.0), json!(0.0045)),
            "canary": variant(40, 0.6667, json!(0.025), json!(0.0123)),
        })
    }

    fn doc(routes: Vec<Value>) -> Value {
        json!({ "generation": 7, "routes": routes })
    }

    /// The `<tr>` of one variant in the card of one route.
    fn row<'a>(html: &'a str, route: &str, variant: &str) -> &'a str {
        let card_start = html
            .find(&format!("data-route=\"{route}\""))
            .expect("route card");
        let card = &html[card_start..];
        let card = &card[..card.find("</section>").expect("card end")];
        let start = card
            .find(&format!("<tr class=\"{variant}\">"))
            .expect("variant row");
        let row = &card[start..];
        &row[..row.find("</tr>").expect("row end")]
    }

    #[test]
    fn the_page_refreshes_itself_and_needs_nothing_else() {
        let html = render(&doc(vec![route("checkout", 10.0, "s")]));
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(!html.contains("<script"), "no JavaScript");
        assert!(!html.contains("src="), "no external asset");
        assert!(!html.contains("href="), "no external asset");
        assert!(html.contains("<b id=\"generation\">7</b>"));
        assert!(html.ends_with("</html>\n"));
    }

    #[test]
    fn the_card_names_segments_and_baggage_when_a_route_has_them() {
        let plain = route("checkout", 10.0, "s");
        assert_eq!(targeting_line(&plain), None);
        let mut targeted = plain.clone();
        targeted["segments"] = json!([
            {"match": "header:x-team", "variant": "canary", "values_count": 2, "values_file": null},
            {"match": "ip", "variant": "stable", "values_count": 1, "values_file": "/etc/cohort/offices.txt"},
        ]);
        targeted["follow"] = json!("rel");
        targeted["hash"] = json!("nginx");
        let line = targeting_line(&targeted).expect("a line");
        assert_eq!(
            line,
            "segments: header:x-team → canary (2 values) · ip → stable (1 value from offices.txt) \
             · follows baggage cohort.rel · NGINX split_clients hash"
        );
        targeted["segments"][0]["match"] = json!("header:<b>");
        let html = render(&doc(vec![targeted]));
        assert!(html.contains("<div class=\"targeting\">segments: header:&lt;b&gt; → canary"));
    }

    #[test]
    fn config_strings_are_escaped() {
        let mut r = route("a<b>&\"c\"", 10.0, "<script>alert('x')</script>");
        r["host"] = json!("evil\"><i>.example");
        r["path_prefix"] = json!("/<p>");
        r["sticky"] = json!(["header:<x>"]);
        r["canary"]["endpoints"] = json!(["http://h/<img src=x>"]);
        let html = render(&doc(vec![r]));
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<i>"));
        assert!(!html.contains("<p>"));
        assert!(!html.contains("<x>"));
        assert!(html.contains("<h2>a&lt;b&gt;&amp;&quot;c&quot;</h2>"));
        assert!(html.contains("data-route=\"a&lt;b&gt;&amp;&quot;c&quot;\""));
        assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(html.contains("evil&quot;&gt;&lt;i&gt;.example"));
        assert!(html.contains("<code>http://h/&lt;img src=x&gt;</code>"));
        assert_eq!(escape("plain-text_1.2"), "plain-text_1.2");
    }

    #[test]
    fn null_figures_show_a_dash() {
        let mut r = route("idle", 10.0, "s");
        r["canary"] = variant(0, 0.0, Value::Null, Value::Null);
        let html = render(&doc(vec![r]));
        let canary = row(&html, "idle", "canary");
        assert!(
            canary.contains("<td class=\"num err none\">–</td>"),
            "{canary}"
        );
        assert!(
            canary.contains("<td class=\"num p99 none\">–</td>"),
            "{canary}"
        );
        assert!(canary.contains("<td class=\"num rate\">0</td>"), "{canary}");
        assert!(!canary.contains("ms<"), "no unit next to a dash: {canary}");
        // The stable variant still shows its figures.
        let stable = row(&html, "idle", "stable");
        assert!(
            stable.contains(">4.5<span class=\"unit\">ms</span>"),
            "{stable}"
        );
    }

    #[test]
    fn fractional_percentages_are_shown_exactly() {
        for (percent, canary, stable) in [
            (2.5, "2.5", "97.5"),
            (0.25, "0.25", "99.75"),
            (0.01, "0.01", "99.99"),
            (10.0, "10", "90"),
            (0.0, "0", "100"),
            (100.0, "100", "0"),
        ] {
            let html = render(&doc(vec![route("r", percent, "s")]));
            assert!(
                html.contains(&format!(
                    "canary <span class=\"pct\">{canary}&nbsp;%</span>"
                )),
                "{percent}: {html}"
            );
            assert!(
                html.contains(&format!(
                    "stable <span class=\"pct\">{stable}&nbsp;%</span>"
                )),
                "{percent}: {html}"
            );
            assert!(html.contains(&format!("flex:0 0 {canary}%")), "{percent}");
            assert!(html.contains(&format!("flex:0 1 {stable}%")), "{percent}");
        }
    }

    #[test]
    fn error_rates_above_one_percent_are_highlighted() {
        let mut r = route("r", 10.0, "s");
        r["stable"]["error_ratio"] = json!(0.01); // exactly 1 %: not above
        r["canary"]["error_ratio"] = json!(0.025);
        let html = render(&doc(vec![r]));
        let canary = row(&html, "r", "canary");
        assert!(
            canary.contains(
                "<td class=\"num err bad\"><span class=\"err\">2.5<span class=\"unit\">%</span></span></td>"
            ),
            "{canary}"
        );
        let stable = row(&html, "r", "stable");
        assert!(
            stable.contains("<td class=\"num err\">1<span class=\"unit\">%</span></td>"),
            "{stable}"
        );
        // The card's header names the failing variants, so a glance finds them.
        assert!(html.contains("<span class=\"alert\">error rate above 1 %: canary</span>"));
        let mut r = route("r", 10.0, "s");
        r["stable"]["error_ratio"] = json!(0.5);
        r["canary"]["error_ratio"] = json!(0.02);
        let html = render(&doc(vec![r]));
        assert!(html.contains("error rate above 1 %: stable, canary</span>"));
        let mut r = route("r", 10.0, "s");
        r["stable"]["error_ratio"] = json!(0.0);
        r["canary"]["error_ratio"] = json!(0.01);
        let html = render(&doc(vec![r]));
        assert!(!html.contains("class=\"alert\""), "0 % and 1 %: {html}");
    }

    #[test]
    fn two_routes_get_a_card_each_in_order() {
        let mut second = route("search", 2.5, "search-v3");
        second["host"] = json!("shop.example.com");
        second["path_prefix"] = json!("/search");
        let html = render(&doc(vec![route("checkout", 10.0, "checkout-v2"), second]));
        assert_eq!(html.matches("<section class=\"route\"").count(), 2);
        let first = html.find("<h2>checkout</h2>").expect("first card");
        let second = html.find("<h2>search</h2>").expect("second card");
        assert!(first < second, "file order is kept");
        assert!(html.contains("2 routes"));
        assert!(html.contains("shop.example.com · path <code>/search</code>"));
        assert!(html.contains("any host · path <code>/</code>"));
        assert!(html.contains("<code class=\"salt\">search-v3</code>"));
        assert!(html.contains("<code>header:x-user-id</code> → <code>ip</code>"));
        let canary = row(&html, "search", "canary");
        assert!(canary.contains(">0.67<"), "{canary}");
        assert!(
            canary.contains(">12.3<span class=\"unit\">ms</span>"),
            "{canary}"
        );
        assert!(
            canary.contains("<td class=\"num requests\">40</td>"),
            "{canary}"
        );
        assert!(
            canary.contains("<code>http://127.0.0.1:9001</code>"),
            "{canary}"
        );
    }

    #[test]
    fn no_routes_and_odd_documents_still_render() {
        let html = render(&json!({ "generation": 1, "routes": [] }));
        assert!(html.contains("No routes configured."));
        assert!(html.contains("0 routes"));
        // A document missing almost everything renders with dashes instead of failing.
        let html = render(&json!({ "routes": [{ "name": "x", "canary_percent": "ten" }] }));
        assert!(html.contains("<b id=\"generation\">–</b>"));
        assert!(html.contains("canary <span class=\"pct\">–&nbsp;%</span>"));
        assert!(html.contains("<span class=\"empty\">none</span>"));
        let html = render(&Value::Null);
        assert!(html.contains("No routes configured."));
    }

    #[test]
    fn rollouts_show_the_step_in_force_and_the_next_one() {
        let mut ramping = route("shop", 5.0, "s");
        ramping["rollout"] = serde_json::json!({
            "state": "ramping", "step": 1, "steps": [1, 5, 25], "start": "2026-12-01T09:00:00Z",
            "step_every": "10m", "next_step_at": "2026-12-01T09:20:00Z"
        });
        let mut failed = route("pay", 0.0, "t");
        failed["rollout"] = serde_json::json!({
            "state": "rolled_back", "step": 2, "steps": [1, 5, 25], "start": "2026-12-01T09:00:00Z",
            "step_every": "10m", "next_step_at": null
        });
        failed["guard"] =
            serde_json::json!({"state": "rolled_back", "rolled_back": {"reason": "p99"}});
        let html = render(&doc(vec![ramping, failed]));
        assert!(html.contains("<div class=\"rollout\">rollout ramping · step 2 of 3 (5 %) · next step at 2026-12-01T09:20:00Z · steps 1/5/25 every 10m</div>"), "{html}");
        assert!(
            html.contains(
                "<div class=\"rollout bad\">rollout rolled_back (p99) · step 3 of 3 (25 %)"
            ),
            "{html}"
        );
    }

    #[test]
    fn a_plain_route_rolled_back_by_hand_says_so() {
        let mut plain = route("web", 0.0, "w");
        plain["rolled_back"] = serde_json::json!({
            "reason": "manual", "at": "2026-12-02T10:00:00Z", "remembered": true
        });
        let html = render(&doc(vec![plain, route("other", 10.0, "o")]));
        assert!(
            html.contains("<div class=\"rollout bad\">rolled back (manual) at 2026-12-02T10:00:00Z · resume to serve the canary again</div>"),
            "{html}"
        );
        assert_eq!(html.matches("class=\"rollout").count(), 1, "{html}");
    }

    #[test]
    fn guarded_routes_show_the_verdict_and_its_evidence() {
        let mut passing = route("shop", 10.0, "s");
        passing["verdict"] = serde_json::json!({
            "verdict": "pass", "method": "threshold", "reason": null,
            "evidence": {"errors": 0.4, "latency": null, "fails_at": 1.0}
        });
        let mut waiting = route("cart", 10.0, "c");
        waiting["verdict"] = serde_json::json!({
            "verdict": "inconclusive", "method": "sequential", "reason": null,
            "evidence": {"errors": null, "latency": null}
        });
        let mut fleet = route("pay", 10.0, "f");
        fleet["verdict"] = serde_json::json!({
            "verdict": "pass", "method": "threshold", "reason": null,
            "source": {"kind": "prometheus", "url": "http://p:9090", "judged": "fleet", "replicas": 12},
            "evidence": {"errors": 0.1, "latency": null, "fails_at": 1.0}
        });
        let mut fallback = route("ship", 10.0, "g");
        fallback["verdict"] = serde_json::json!({
            "verdict": "inconclusive", "method": "threshold", "reason": null,
            "source": {"kind": "prometheus", "url": "http://p:9090", "judged": "local", "error": "cannot connect to p:9090"},
            "evidence": {"errors": null, "latency": null}
        });
        assert_eq!(
            verdict_line(&fleet).as_deref(),
            Some("verdict: pass (threshold) · evidence errors 0.1 (observed / limit; 1 fails) · fleet of 12 replicas")
        );
        assert_eq!(
            verdict_line(&fallback).as_deref(),
            Some("verdict: inconclusive (threshold) · no evidence yet · local counts: Prometheus failing (cannot connect to p:9090)")
        );
        let html = render(&doc(vec![passing, waiting, route("plain", 0.0, "p")]));
        assert!(
            html.contains("<div class=\"verdict\">verdict: pass (threshold) · evidence errors 0.4 (observed / limit; 1 fails)</div>"),
            "{html}"
        );
        assert!(
            html.contains(
                "<div class=\"verdict\">verdict: inconclusive (sequential) · no evidence yet</div>"
            ),
            "{html}"
        );
        assert_eq!(
            html.matches("class=\"verdict").count(),
            2,
            "none for the plain route"
        );
    }

    /// The page is rendered from the figures themselves, `cohort status` and the tests
    /// from `/routes` as JSON: every p99 the histogram interpolation can give must come
    /// back from JSON as the same number, or a value on a rounding edge (0.9625 ms) is
    /// shown as 0.962 in one and 0.963 in the other.
    #[test]
    fn figures_survive_json_exactly() {
        let mut checked = 0;
        for total in 1..=200u64 {
            for (i, upper) in crate::metrics::DURATION_BUCKETS.iter().enumerate() {
                let lower = if i == 0 {
                    0.0
                } else {
                    crate::metrics::DURATION_BUCKETS[i - 1]
                };
                for below in 0..total {
                    let p99 = lower + (upper - lower) * (below as f64 + 0.5) / total as f64;
                    let text =
                        serde_json::to_string(&serde_json::json!({ "p99": p99 })).expect("json");
                    let back: Value = serde_json::from_str(&text).expect("json");
                    assert_eq!(back["p99"].as_f64(), Some(p99), "{text}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 100_000);
    }

    #[test]
    fn figures_are_formatted_compactly() {
        assert_eq!(rate_text(Some(0.0)), "0");
        assert_eq!(rate_text(Some(0.004)), "<0.01");
        assert_eq!(rate_text(Some(0.0167)), "0.02");
        assert_eq!(rate_text(Some(2.5)), "2.5");
        assert_eq!(rate_text(Some(12.34)), "12.3");
        assert_eq!(rate_text(Some(1234.6)), "1235");
        assert_eq!(rate_text(None), NONE);
        assert_eq!(error_percent_text(Some(0.025)), "2.5");
        assert_eq!(error_percent_text(Some(0.0025)), "0.25");
        assert_eq!(error_percent_text(Some(1.0 / 3.0)), "33.3");
        assert_eq!(error_percent_text(Some(1.0)), "100");
        assert_eq!(error_percent_text(Some(0.00001)), "<0.01");
        assert_eq!(error_percent_text(None), NONE);
        assert_eq!(p99_ms_text(Some(0.0045)), "4.5");
        assert_eq!(p99_ms_text(Some(0.000495)), "0.495");
        assert_eq!(p99_ms_text(Some(0.25)), "250");
        assert_eq!(p99_ms_text(Some(10.0)), "10000");
        assert_eq!(p99_ms_text(None), NONE);
    }
}
