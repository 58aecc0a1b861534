//! The plain-text table `cohort status` prints: the status page's figures
//! ([`cohort::status_page`]), one row per (route, variant), columns aligned.
//!
//! Every row repeats its route's name, percentage and salt, so `grep` and `awk` see whole
//! facts. Cells are plain text: control characters from config are escaped so a route
//! name cannot move the terminal's cursor, and a missing figure is `-`.

use serde_json::Value;

use cohort::status_page::{error_percent_text, p99_ms_text, rate_text, share_text, Overview, NONE};

const HEADER: [&str; 8] = [
    "ROUTE",
    "CANARY %",
    "SALT",
    "VARIANT",
    "REQ/S",
    "ERR %",
    "P99",
    "ENDPOINTS",
];

/// Columns whose figures are right-aligned (numbers).
const NUMERIC: [bool; 8] = [false, true, false, false, true, true, true, false];

/// Spaces between columns.
const GAP: usize = 2;

/// Renders the `/routes` document as an aligned table, one line per variant, each line
/// ending in `\n`. The last column is not padded.
pub fn table(routes: &Value) -> String {
    let overview = Overview::from_json(routes);
    let mut rows: Vec<[String; 8]> = vec![HEADER.map(str::to_owned)];
    for route in &overview.routes {
        for (variant, _share, figures) in route.variants() {
            let p99 = p99_ms_text(figures.p99_seconds);
            let p99 = if p99 == NONE { p99 } else { format!("{p99}ms") };
            let endpoints = if figures.endpoints.is_empty() {
                NONE.to_owned()
            } else {
                figures.endpoints.join(",")
            };
            rows.push(
                [
                    route.name.clone(),
                    share_text(route.canary_share),
                    route.salt.clone(),
                    variant.to_owned(),
                    rate_text(figures.request_rate),
                    error_percent_text(figures.error_ratio),
                    p99,
                    endpoints,
                ]
                .map(|cell| plain(&cell)),
            );
        }
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            let last = i + 1 == row.len();
            if NUMERIC[i] {
                line.extend(std::iter::repeat(' ').take(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if !last {
                    line.extend(std::iter::repeat(' ').take(pad));
                }
            }
            if !last {
                line.extend(std::iter::repeat(' ').take(GAP));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    // Segments and baggage; rollouts and guards: the step in force and when the next
    // one comes.
    if let Some(routes) = routes.get("routes").and_then(Value::as_array) {
        for route in routes {
            let lines = [
                cohort::status_page::targeting_line(route),
                cohort::status_page::rollout_line(route),
                cohort::status_page::verdict_line(route),
            ];
            for line in lines.into_iter().flatten() {
                let name = route.get("name").and_then(Value::as_str).unwrap_or("");
                out.push_str(&plain(&format!("{name}: {line}")));
                out.push('\n');
            }
        }
    }
    out
}

/// A cell as terminal-safe text: the status page's "–" becomes ASCII `-`, an empty
/// string shows as `""`, and control characters (ESC, newlines, tabs) are escaped.
fn plain(cell: &str) -> String {
    if cell == NONE {
        return "-".to_owned();
    }
    if cell.is_empty() {
        return "\"\"".to_owned();
    }
    cell.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "generation": 3,
            "routes": [
                {
                    "name": "checkout",
                    "host": null,
                    "path_prefix": "/",
                    "canary_percent": 2.5,
                    "salt": "checkout-v2",
                    "sticky": ["header:x-user-id"],
                    "stable": {
                        "endpoints": ["http://127.0.0.1:9001", "http://127.0.0.1:9003"],
                        "requests": 720, "request_rate": 12.0,
                        "error_ratio": 0.0, "p99_seconds": 0.0045,
                    },
                    "canary": {
                        "endpoints": ["http://127.0.0.1:9002"],
                        "requests": 40, "request_rate": 0.6667,
                        "error_ratio": 0.025, "p99_seconds": 0.123,
                    },
                },
                {
                    "name": "search",
                    "host": "shop.example.com",
                    "path_prefix": "/search",
                    "canary_percent": 0.25,
                    "salt": "s",
                    "sticky": ["ip"],
                    "stable": {
                        "endpoints": ["http://search:80"],
                        "requests": 0, "request_rate": 0.0,
                        "error_ratio": null, "p99_seconds": null,
                    },
                    "canary": {
                        "endpoints": [],
                        "requests": 0, "request_rate": 0.0,
                        "error_ratio": null, "p99_seconds": null,
                    },
                },
            ],
        })
    }

    #[test]
    fn one_aligned_row_per_variant() {
        let expected = "\
ROUTE     CANARY %  SALT         VARIANT  REQ/S  ERR %    P99  ENDPOINTS
checkout       2.5  checkout-v2  stable      12      0  4.5ms  http://127.0.0.1:9001,http://127.0.0.1:9003
checkout       2.5  checkout-v2  canary    0.67    2.5  123ms  http://127.0.0.1:9002
search        0.25  s            stable       0      -      -  http://search:80
search        0.25  s            canary       0      -      -  -
";
        assert_eq!(table(&doc()), expected);
    }

    #[test]
    fn columns_line_up_whatever_the_widths() {
        let text = table(&doc());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            5,
            "header plus one line per variant of two routes"
        );
        // Every column after the first starts at the same offset on every line.
        for column in ["SALT", "VARIANT", "ENDPOINTS"] {
            let at = lines[0].find(column).expect("header column");
            for line in &lines[1..] {
                assert_eq!(&line[at - GAP..at], "  ", "{column} in {line:?}");
                assert_ne!(&line[at..at + 1], " ", "{column} in {line:?}");
            }
        }
        assert!(
            text.lines().all(|l| l == l.trim_end()),
            "no trailing spaces"
        );
    }

    #[test]
    fn control_characters_from_config_cannot_reach_the_terminal() {
        let mut d = doc();
        d["routes"][0]["name"] = json!("evil\u{1b}[2J\nname");
        d["routes"][0]["salt"] = json!("");
        let text = table(&d);
        assert!(!text.contains('\u{1b}'));
        assert_eq!(text.lines().count(), 5, "no line break from a name");
        assert!(text.contains("evil\\u{1b}[2J\\nname"), "{text}");
        assert!(
            text.contains("  \"\"  "),
            "an empty salt is visible: {text}"
        );
    }

    #[test]
    fn segments_and_the_guards_verdict_follow_the_table() {
        let mut d = doc();
        d["routes"][0]["segments"] = json!([
            {"match": "header:x-team", "variant": "canary", "values_count": 2, "values_file": null},
        ]);
        d["routes"][0]["verdict"] = json!({
            "method": "sequential", "verdict": "fail", "reason": "sequential_errors",
            "evidence": {"errors": 1.2},
        });
        let text = table(&d);
        let extra: Vec<&str> = text.lines().skip(5).collect();
        assert_eq!(extra.len(), 2, "{text}");
        assert_eq!(
            extra[0],
            "checkout: segments: header:x-team → canary (2 values)"
        );
        assert!(
            extra[1].starts_with("checkout: verdict: fail (sequential), reason sequential_errors"),
            "{text}"
        );
    }

    #[test]
    fn no_routes_is_just_the_header() {
        assert_eq!(
            table(&json!({ "generation": 1, "routes": [] })),
            "ROUTE  CANARY %  SALT  VARIANT  REQ/S  ERR %  P99  ENDPOINTS\n"
        );
    }
}
