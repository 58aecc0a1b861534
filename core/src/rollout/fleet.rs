//! Fleet-wide evidence (DESIGN §12, `source = { prometheus = URL }`): the PromQL a
//! guard asks Prometheus, and what it makes of the answers. Pure: the shell sends the
//! queries and hands the answers' bytes in.
//!
//! Every replica exports what its own guard judges as the histogram
//! `cohort_guard_duration_seconds{route,variant,outcome}` (forced requests excluded,
//! `outcome` = `error` for a 5xx or a cut response, else `ok`), and its rollout identity
//! as `cohort_rollout_info{route,salt,start} 1`. The queries sum the histogram over the
//! replicas whose info carries this rollout's identity, so a replica still on an older
//! salt or `start` (mid-reload) never lends its counts to a new rollout. Matching uses
//! `ignoring(...)` rather than `on(instance)` so whatever target labels the scrape adds
//! (instance, pod, namespace) tie a replica's series together.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

use crate::cohort::Variant;
use crate::histogram::{bound_index, Counts, DURATION_BUCKETS, HISTOGRAM_LEN};
use crate::rollout::sequential::Tally;

/// The histogram of the requests a guard judges, by route, variant and outcome.
pub const GUARD_DURATION: &str = "cohort_guard_duration_seconds";
/// `1` for the rollout identity a replica runs, per route.
pub const ROLLOUT_INFO: &str = "cohort_rollout_info";
/// The one-hot rollout state of DESIGN §7.
pub const ROLLOUT_STATE: &str = "cohort_rollout_state";

/// A rollout's identity as the metrics label it: route name, salt, and the rollout's
/// `start` as written (empty for a guard without a rollout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity<'a> {
    pub route: &'a str,
    pub salt: &'a str,
    pub start: &'a str,
}

/// `text` as a PromQL string literal.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Identity<'_> {
    /// The replicas running this identity now (an old identity's info is set to 0, not
    /// removed, so `== 1` is what says "now").
    fn replicas(&self) -> String {
        format!(
            "({ROLLOUT_INFO}{{route={},salt={},start={}}} == 1)",
            quoted(self.route),
            quoted(self.salt),
            quoted(self.start)
        )
    }

    fn route_selector(&self) -> String {
        format!("{{route={}}}", quoted(self.route))
    }

    /// The fleet's per-variant counts over the last `window`, summed over the replicas
    /// of this identity: one series per (variant, outcome, le).
    pub fn window_query(&self, window: Duration) -> String {
        format!(
            "sum by (variant, outcome, le) (increase({GUARD_DURATION}_bucket{}[{}s]) \
             and ignoring(variant, outcome, le, salt, start) {})",
            self.route_selector(),
            window.as_secs().max(1),
            self.replicas()
        )
    }

    /// The raw cumulative counters of every replica of this identity, one series per
    /// (replica, variant, outcome, le): a [`Differencer`] turns successive answers into
    /// increments, resets and replicas coming and going included. Only the buckets a
    /// sequential judge reads are asked for: `+Inf` (requests) and, with `slow_over`
    /// (a bucket index), that bucket's bound, written both ways Prometheus may store it
    /// (`1` as exposed, `1.0` as Prometheus 3 normalises it), so a large fleet's answer
    /// stays small.
    pub fn counters_query(&self, slow_over: Option<usize>) -> String {
        let mut le = String::from("\\\\+Inf");
        if let Some(bound) = slow_over.and_then(|i| DURATION_BUCKETS.get(i)) {
            let (exposed, normalised) = (format!("{bound}"), format!("{bound:?}"));
            for form in [
                Some(&exposed),
                (normalised != exposed).then_some(&normalised),
            ]
            .into_iter()
            .flatten()
            {
                let _ = write!(le, "|{}", form.replace('.', "\\\\."));
            }
        }
        format!(
            "{GUARD_DURATION}_bucket{{route={},le=~\"{le}\"}} and ignoring(variant, outcome, le, salt, start) {}",
            quoted(self.route),
            self.replicas()
        )
    }

    /// How many replicas run this identity, and how many of them are rolled back: the
    /// series `{peers="replicas"}` and `{peers="rolled_back"}` (absent when 0). With
    /// `since_resume` (seconds since this replica's last resume), a replica counts as
    /// rolled back only if it was not rolled back all along since then: a resume here
    /// is a person's decision, not undone by the rollbacks it was meant to override.
    pub fn peers_query(&self, since_resume: Option<u64>) -> String {
        let state = format!(
            "{ROLLOUT_STATE}{{route={},state=\"rolled_back\"}}",
            quoted(self.route)
        );
        let rolled_back = match since_resume {
            None => format!("({state} == 1)"),
            Some(seconds) => format!(
                "({state} == 1 unless min_over_time({state}[{}s]) == 1)",
                seconds.max(1)
            ),
        };
        format!(
            "label_replace(count({replicas}), \"peers\", \"replicas\", \"\", \"\") \
             or label_replace(count({rolled_back} and ignoring(state, salt, start) {replicas}), \
             \"peers\", \"rolled_back\", \"\", \"\")",
            replicas = self.replicas(),
        )
    }
}

/// A query as an `application/x-www-form-urlencoded` body for `POST /api/v1/query`
/// (evaluated at Prometheus' now).
pub fn form_body(query: &str) -> String {
    let mut body = String::from("query=");
    for byte in query.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                body.push(char::from(byte))
            }
            b' ' => body.push('+'),
            other => {
                let _ = write!(body, "%{other:02X}");
            }
        }
    }
    body
}

/// Why an answer from Prometheus could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnswerError {
    #[error("Prometheus answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("Prometheus' answer is not what its HTTP API returns: {0}")]
    Malformed(String),
    #[error(
        "Prometheus knows no replica of this rollout (is it scraping cohort's admin listener?)"
    )]
    NoReplicas,
}

/// One sample of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerData {
    result_type: String,
    result: Vec<RawSample>,
}

#[derive(Deserialize)]
struct RawSample {
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// The instant vector of an answer to `/api/v1/query` with HTTP status `status`.
pub fn parse_vector(status: u16, body: &[u8]) -> Result<Vec<Sample>, AnswerError> {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(e) if (200..300).contains(&status) => {
            return Err(AnswerError::Malformed(e.to_string()))
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            return Err(AnswerError::Refused {
                status,
                message: text.chars().take(200).collect(),
            });
        }
    };
    if answer.status != "success" || !(200..300).contains(&status) {
        return Err(AnswerError::Refused {
            status,
            message: answer.error.unwrap_or_else(|| answer.status.clone()),
        });
    }
    let data = answer
        .data
        .ok_or_else(|| AnswerError::Malformed("no data".into()))?;
    if data.result_type != "vector" {
        return Err(AnswerError::Malformed(format!(
            "resultType {:?}, expected \"vector\"",
            data.result_type
        )));
    }
    data.result
        .into_iter()
        .map(|raw| {
            let value = parse_value(&raw.value.1)?;
            Ok(Sample {
                labels: raw.metric,
                value,
            })
        })
        .collect()
}

fn parse_value(text: &str) -> Result<f64, AnswerError> {
    match text {
        "NaN" => Ok(0.0),
        "+Inf" | "Inf" | "-Inf" => Err(AnswerError::Malformed(format!("value {text}"))),
        _ => text
            .parse()
            .map_err(|_| AnswerError::Malformed(format!("value {text:?} is not a number"))),
    }
}

/// What the peers query says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peers {
    pub replicas: u64,
    pub rolled_back: u64,
}

/// Reads the answer to [`Identity::peers_query`]. No replica at all is an error: the
/// replica asking is one, so Prometheus is not scraping the fleet (or not yet).
pub fn peers(samples: &[Sample]) -> Result<Peers, AnswerError> {
    let mut peers = Peers::default();
    for sample in samples {
        let count = count_of(sample.value);
        match sample.labels.get("peers").map(String::as_str) {
            Some("replicas") => peers.replicas = count,
            Some("rolled_back") => peers.rolled_back = count,
            _ => {}
        }
    }
    if peers.replicas == 0 {
        return Err(AnswerError::NoReplicas);
    }
    Ok(peers)
}

/// A sampled count as a whole number: `increase()` extrapolates to the window's edges,
/// so fleet counts come back fractional.
fn count_of(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        // At most 2^50 (10^15) per series, so sums over any answer stay far from
        // overflowing; no real counter gets near it.
        value.round().min(MAX_COUNT) as u64
    } else {
        0
    }
}

/// The largest count one sample is read as.
const MAX_COUNT: f64 = (1u64 << 50) as f64;

/// The bucket a `le` label names: the index into the histogram's cumulative bounds
/// (`HISTOGRAM_LEN - 1` for `+Inf`), if it is one of cohort's.
fn bucket_of(le: &str) -> Option<usize> {
    if le == "+Inf" {
        return Some(HISTOGRAM_LEN - 1);
    }
    bound_index(le.parse().ok()?)
}

/// Which variant (its index) and outcome a sample belongs to, and its bucket.
fn place(sample: &Sample) -> Option<(usize, bool, usize)> {
    let variant = Variant::from_name(sample.labels.get("variant")?.as_bytes())?;
    let error = sample.labels.get("outcome")? == "error";
    let bucket = bucket_of(sample.labels.get("le")?)?;
    Some((variant.index(), error, bucket))
}

/// Cumulative bucket counts (`le`) per variant and outcome, made into [`Counts`].
#[derive(Debug, Clone, Copy, Default)]
struct Cumulative {
    /// [variant][outcome: ok, error][bucket]
    le: [[[u64; HISTOGRAM_LEN]; 2]; 2],
}

impl Cumulative {
    fn add(&mut self, variant: usize, error: bool, bucket: usize, count: u64) {
        let le = &mut self.le[variant][usize::from(error)][bucket];
        *le = le.saturating_add(count);
    }

    /// Stable's and canary's counts. The cumulative buckets of a fleet sum can be out of
    /// order by rounding; they are made monotone before being split into buckets.
    fn counts(&self) -> (Counts, Counts) {
        let variant = |v: usize| {
            let mut counts = Counts::default();
            for outcome in 0..2 {
                let mut below = 0u64;
                for (bucket, &le) in self.le[v][outcome].iter().enumerate() {
                    let le = le.max(below);
                    counts.histogram[bucket] = counts.histogram[bucket].saturating_add(le - below);
                    below = le;
                }
                counts.requests = counts.requests.saturating_add(below);
                if outcome == 1 {
                    counts.errors = counts.errors.saturating_add(below);
                }
            }
            counts
        };
        (variant(0), variant(1))
    }
}

/// The fleet's (stable, canary) counts from the answer to [`Identity::window_query`].
pub fn window_counts(samples: &[Sample]) -> (Counts, Counts) {
    let mut cumulative = Cumulative::default();
    for sample in samples {
        if let Some((variant, error, bucket)) = place(sample) {
            cumulative.add(variant, error, bucket, count_of(sample.value));
        }
    }
    cumulative.counts()
}

/// Turns successive answers to [`Identity::counters_query`] into the fleet's
/// increments, the way `increase()` treats one series: a value below the last one is
/// a counter reset (the replica restarted) and counts from 0; a series first seen
/// after the first answer is a replica that joined and counts from 0; the first
/// answer only sets the baseline.
#[derive(Debug, Clone, Default)]
pub struct Differencer {
    last: HashMap<String, f64>,
    started: bool,
}

impl Differencer {
    pub fn new() -> Differencer {
        Differencer::default()
    }

    /// The increments since the last answer: stable's and canary's counts, with
    /// `slow_over` (a bucket index, from `latency_over`) counting the slow requests.
    pub fn advance(&mut self, samples: &[Sample], slow_over: Option<usize>) -> (Tally, Tally) {
        let mut next = HashMap::with_capacity(samples.len());
        let mut cumulative = Cumulative::default();
        for sample in samples {
            let Some((variant, error, bucket)) = place(sample) else {
                continue;
            };
            let key = series_key(&sample.labels);
            let value = sample.value.max(0.0);
            let delta = match self.last.get(&key) {
                Some(&last) if value >= last => value - last,
                Some(_) => value,
                None if self.started => value,
                None => 0.0,
            };
            next.insert(key, value);
            cumulative.add(variant, error, bucket, count_of(delta));
        }
        self.last = next;
        self.started = true;
        let (stable, canary) = cumulative.counts();
        (
            Tally::from_counts(&stable, slow_over),
            Tally::from_counts(&canary, slow_over),
        )
    }
}

/// One series' identity: its labels in order.
fn series_key(labels: &BTreeMap<String, String>) -> String {
    let mut key = String::new();
    for (name, value) in labels {
        key.push_str(name);
        key.push('\u{0}');
        key.push_str(value);
        key.push('\u{0}');
    }
    key
}

#[cfg(test)]
mod tests;
