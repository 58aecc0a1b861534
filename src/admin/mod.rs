//! The admin listener (loopback by default): metrics, health, and a read-only view of
//! the routes and assignments.

pub(crate) mod charts;
pub(crate) mod history;
pub mod status_page;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::runtime::guard::Evidence;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::cohort::{BasisPoints, Variant};
use crate::router::Described;
use crate::runtime::reload::{ChangeError, Control, Trigger};
use crate::runtime::server::State;
use crate::runtime::snapshot::Snapshot;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// Serves the admin API until the task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<State>, control: Arc<Control>) {
    let upkeep_state = state.clone();
    // The exporter buffers every histogram sample until it is drained into buckets:
    // at tens of thousands of requests a second, draining every 5 s held megabytes.
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::metrics::UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep_state.metrics.run_upkeep();
        }
    });
    let _abort_upkeep = AbortOnDrop(upkeep);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        let control = control.clone();
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            let control = control.clone();
            async move { Ok::<_, Infallible>(route(&state, &control, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn route(state: &State, control: &Control, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(rest) = req.uri().path().strip_prefix("/routes/") {
        let rest = rest.to_owned();
        return change(state, control, &rest, req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    let snap = state.snapshot.load_full();
    match req.uri().path() {
        "/" => with_type(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::admin::status_page::render(&page_json(state, &snap)),
        ),
        "/metrics" => with_type(StatusCode::OK, PROMETHEUS_TEXT, state.metrics.render()),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/config" => match serde_json::to_value(&snap.config.config) {
            Ok(config) => json_response(StatusCode::OK, &config),
            Err(e) => text_owned(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        "/routes" => json_response(StatusCode::OK, &routes_json(&snap)),
        "/assign" => assign(&snap, req.uri().query().unwrap_or("")),
        _ => text(StatusCode::NOT_FOUND, "unknown admin path\n"),
    }
}

/// Each route's split, salt and endpoints, with per-variant figures over the last minute.
pub fn routes_json(snap: &Snapshot) -> Value {
    let routes: Vec<Value> = (0..snap.routes.len())
        .map(|i| route_json(snap, i))
        .collect();
    json!({ "generation": snap.generation, "routes": routes })
}

/// `/routes` with each route's `GET /routes/{name}/history` as `"history"` and, for
/// guarded routes, its `GET /routes/{name}/verdict` as `"verdict"`: what the status
/// page draws.
pub fn page_json(state: &State, snap: &Snapshot) -> Value {
    let mut doc = routes_json(snap);
    if let Some(routes) = doc.get_mut("routes").and_then(Value::as_array_mut) {
        for (index, route) in routes.iter_mut().enumerate() {
            route["history"] = history_json(state, snap, index);
        }
    }
    doc
}

/// `GET /routes/{name}/history`: the route's last 15 minutes per variant in 15-second
/// slots, and its steps, rollbacks and resumes (see [`crate::admin::history`]).
pub fn history_json(state: &State, snap: &Snapshot, index: usize) -> Value {
    let (route, route_state) = snap.route(index);
    let clock = state.metrics.clock();
    let now = clock.now();
    let wall_now = crate::runtime::guard::wall_now();
    let metrics = |v: Variant| route_state.metrics.variant(v).history(now);
    crate::admin::history::history_json(
        &route.name,
        &metrics(Variant::Stable),
        &metrics(Variant::Canary),
        &route_state.memory().events(),
        now,
        wall_now,
        &|second| clock.wall_at(second, wall_now),
    )
}

/// One route of `/routes`, also the answer to a change of that route.
fn route_json(snap: &Snapshot, index: usize) -> Value {
    let (route, state) = snap.route(index);
    let variant = |v: Variant| {
        let upstream = match v {
            Variant::Stable => &route.stable,
            Variant::Canary => &route.canary,
        };
        let stats = state.metrics.variant(v).window_stats();
        json!({
            "endpoints": upstream.endpoints,
            "requests": stats.requests,
            "request_rate": stats.rate,
            "error_ratio": stats.error_ratio,
            "p99_seconds": stats.p99_seconds,
        })
    };
    let share = state.share();
    let rollout = route.rollout.as_ref().map(|r| {
        let now = crate::runtime::guard::wall_now();
        let resumed_at = state.memory().resumed_at();
        let position = r.position_from(r.origin(resumed_at), now);
        json!({
            "state": state.rollout_state().as_str(),
            "step": state.step(),
            "steps": r.steps,
            "start": r.start_text,
            "step_every": humantime::format_duration(r.step_every).to_string(),
            "scheduled_step": position.step,
            "resumed_at": resumed_at.map(crate::rollout::format_rfc3339),
            "next_step_at": position.next_at.map(crate::rollout::format_rfc3339),
        })
    });
    let rolled_back = state.memory().rolled_back().map(|r| {
        let mut record = json!({
            "reason": r.reason.as_str(),
            "at": crate::rollout::format_rfc3339(r.at),
            "remembered": r.saved.is_remembered(),
        });
        if let crate::runtime::guard::Saved::Failed(reason) = &r.saved {
            record["not_remembered_because"] = json!(reason);
        }
        record
    });
    let guard = route.guard.as_ref().map(|g| {
        json!({
            "action": match g.action {
                crate::rollout::GuardAction::Rollback => "rollback",
                crate::rollout::GuardAction::Hold => "hold",
            },
            "window": humantime::format_duration(g.window).to_string(),
            "state": state.rollout_state().as_str(),
            "rolled_back": rolled_back,
        })
    });
    json!({
        "name": route.name,
        "host": route.host,
        "path_prefix": route.path_prefix,
        "canary_percent": share,
        "salt": route.salt,
        "sticky": route.sticky,
        "stable": variant(Variant::Stable),
        "canary": variant(Variant::Canary),
        "configured_percent": route.canary_bp,
        "rolled_back": rolled_back,
        "rollout": rollout,
        "guard": guard,
        "segments": route.segments.iter().map(|segment| json!({
            "match": segment.on.to_string(),
            "variant": segment.variant.as_str(),
            "values_count": segment.values_count(),
            "values_file": segment.values_file,
        })).collect::<Vec<_>>(),
        "verdict": route.guard.as_ref().map(|guard| {
            verdict_json(&route.name, guard, &state.memory().judged(guard))
        }),
        "propagate": route.propagate,
        "follow": route.follow,
        "hash": route.hash.as_str(),
    })
}

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// `GET /routes/{name}/verdict` (DESIGN §12): the guard's judgement, 200 unless it is
/// `fail` (a rolled-back route answers `fail` until resumed), then 503 with the same
/// body, so a Flagger `rollout` webhook fails on it; 404 for an unknown route or one
/// without a guard. POST is answered the same (Flagger's webhooks POST).
fn verdict(state: &State, name: &str, method: &Method) -> Response<Full<Bytes>> {
    // Flagger's webhooks POST their own payload: the verdict only reads, so POST is
    // answered like GET (the body is ignored, and no token is needed for reading).
    if method != Method::GET && method != Method::HEAD && method != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET /routes/{name}/verdict\n",
        );
    }
    let snap = state.snapshot.load_full();
    let Some(index) = snap.route_index(name) else {
        return text_owned(StatusCode::NOT_FOUND, format!("no route named {name:?}\n"));
    };
    let (route, route_state) = snap.route(index);
    let Some(guard) = &route.guard else {
        return text_owned(
            StatusCode::NOT_FOUND,
            format!("route {name:?} has no guard, so no verdict\n"),
        );
    };
    let judged = route_state.memory().judged(guard);
    let body = verdict_json(&route.name, guard, &judged);
    let status = match judged.verdict {
        crate::rollout::Verdict::Fail(_) => StatusCode::SERVICE_UNAVAILABLE,
        crate::rollout::Verdict::Pass | crate::rollout::Verdict::TooFewRequests => StatusCode::OK,
    };
    json_response(status, &body)
}

/// The body of `GET /routes/{name}/verdict`. `source` says whose counts were judged:
/// `{"kind": "local"}`, or for a fleet guard `{"kind": "prometheus", "url", "judged":
/// "fleet", "replicas"}`, `"judged": "local"` with the `error` while Prometheus fails.
pub(crate) fn verdict_json(
    route: &str,
    guard: &crate::rollout::Guard,
    judged: &crate::runtime::guard::Judged,
) -> Value {
    let figures = |f: &crate::rollout::Figures| {
        json!({
            "requests": f.requests,
            "errors": f.errors,
            "error_ratio": f.error_ratio,
            "p99_seconds": f.p99_seconds,
        })
    };
    let mut evidence = json!({
        "errors": judged.errors,
        "latency": judged.latency,
        "fails_at": 1.0,
    });
    if let crate::rollout::Method::Sequential(settings) = guard.method {
        evidence["alpha"] = json!(settings.alpha);
        evidence["min_effect"] = json!(settings.min_effect);
        evidence["latency_over_seconds"] = json!(settings.latency_over.map(|d| d.as_secs_f64()));
        if let Some((canary, stable)) = judged.since {
            let tally = |t: crate::rollout::sequential::Tally| json!({"requests": t.requests, "errors": t.errors, "slow": t.slow});
            evidence["since_start"] = json!({"canary": tally(canary), "stable": tally(stable)});
        }
    }
    let url = guard.source.prometheus();
    let source = match &judged.evidence {
        Evidence::Local if url.is_none() => json!({"kind": "local"}),
        // A fleet guard before its first evaluation.
        Evidence::Local => json!({"kind": "prometheus", "url": url, "judged": "local"}),
        Evidence::Fleet { replicas } => {
            json!({"kind": "prometheus", "url": url, "judged": "fleet", "replicas": replicas})
        }
        Evidence::Fallback { error } => {
            json!({"kind": "prometheus", "url": url, "judged": "local", "error": error})
        }
    };
    json!({
        "route": route,
        "method": judged.method,
        "source": source,
        "verdict": judged.verdict.label(),
        "reason": match judged.verdict {
            crate::rollout::Verdict::Fail(reason) => Some(reason.as_str()),
            _ => None,
        },
        "canary": figures(&judged.canary),
        "stable": figures(&judged.stable),
        "evidence": evidence,
    })
}

/// `PUT /routes/{name}/canary`, `POST /routes/{name}/rollback` and
/// `POST /routes/{name}/resume`; and `GET /routes/{name}/history`, which reads.
async fn change(
    state: &State,
    control: &Control,
    rest: &str,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (name, action) = match rest.split_once('/') {
        Some((name, action)) if !name.is_empty() => (percent_decode(name), action),
        _ => return text(StatusCode::NOT_FOUND, "unknown admin path\n"),
    };
    if action == "history" {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET /routes/{name}/history\n",
            );
        }
        let snap = state.snapshot.load_full();
        return match snap.route_index(&name) {
            Some(index) => json_response(StatusCode::OK, &history_json(state, &snap, index)),
            None => text_owned(StatusCode::NOT_FOUND, format!("no route named {name:?}\n")),
        };
    }
    if action == "verdict" {
        return verdict(state, &name, req.method());
    }
    let expected_method = match action {
        "canary" => Method::PUT,
        "rollback" | "resume" => Method::POST,
        _ => return text(StatusCode::NOT_FOUND, "unknown admin path\n"),
    };
    if req.method() != expected_method {
        return text_owned(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("use {expected_method} /routes/{{name}}/{action}\n"),
        );
    }
    if let Err(refusal) = authorize(state, control, req.headers()).await {
        return refusal.response();
    }
    let result = match action {
        "canary" => match read_percent(req).await {
            Ok(bp) => control.set_canary(&name, bp).await.map(|_| ()),
            Err(reason) => return text_owned(StatusCode::BAD_REQUEST, format!("{reason}\n")),
        },
        "rollback" => control.rollback(&name).await,
        _ => control.resume(&name).await,
    };
    match result {
        Ok(()) => {
            let snap = state.snapshot.load_full();
            match snap.config.routes.iter().position(|r| r.name == name) {
                Some(index) => json_response(StatusCode::OK, &route_json(&snap, index)),
                None => text(StatusCode::INTERNAL_SERVER_ERROR, "route vanished\n"),
            }
        }
        Err(e) => {
            let status = match &e {
                ChangeError::UnknownRoute(_) => StatusCode::NOT_FOUND,
                ChangeError::Invalid(_) => StatusCode::BAD_REQUEST,
                ChangeError::ReadOnly { .. } | ChangeError::Conflict(_) => StatusCode::CONFLICT,
                ChangeError::Write(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            tracing::warn!(route = %name, error = %e, "admin change refused");
            text_owned(status, format!("{e}\n"))
        }
    }
}

/// Why a change was refused before it was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A token is configured and the request's is missing or wrong.
    Unauthorized,
    /// No token is configured and the admin listener is off loopback.
    Forbidden,
}

impl Refusal {
    fn response(self) -> Response<Full<Bytes>> {
        match self {
            Refusal::Unauthorized => {
                let mut resp = text(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong token: send Authorization: Bearer <token>\n",
                );
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                resp
            }
            Refusal::Forbidden => text(
                StatusCode::FORBIDDEN,
                "set admin.token_file to allow changes from the network\n",
            ),
        }
    }
}

/// Token rules of DESIGN §4: with a token, `Authorization: Bearer <token>` compared in
/// constant time; without one, changes only through a loopback admin listener.
async fn authorize(
    state: &State,
    control: &Control,
    headers: &http::HeaderMap,
) -> Result<(), Refusal> {
    match current_token(control).await {
        Some(token) => {
            let presented = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or("");
            if bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
                Ok(())
            } else {
                Err(Refusal::Unauthorized)
            }
        }
        None if state
            .snapshot
            .load()
            .config
            .admin
            .address
            .ip()
            .is_loopback() =>
        {
            Ok(())
        }
        None => Err(Refusal::Forbidden),
    }
}

/// The token mutating calls need: the snapshot's. The token file is read on each such
/// call, and when it differs from the token in force the files are reloaded first (as
/// the file watcher would a moment later), so a rotated secret (a Kubernetes Secret's
/// symlink swap) applies at once; a file that has become empty or unreadable is a
/// rejected reload, and the token in force stays.
async fn current_token(control: &Control) -> Option<Arc<String>> {
    let snapshot = control.snapshot();
    let file = snapshot.config.admin.token_file.as_deref()?;
    let in_force = snapshot.credentials.admin_token.as_deref();
    if crate::runtime::reload::read_token_file(file).ok().as_ref() != in_force {
        // Logged and counted inside when rejected; the token in force stays.
        let _ = control.reload(Trigger::File).await;
    }
    control.snapshot().credentials.admin_token.clone()
}

/// Reads `{"percent": N}` from the body.
async fn read_percent(req: Request<Incoming>) -> Result<BasisPoints, String> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("cannot read the body: {e}"))?
        .to_bytes();
    parse_percent_body(&body)
}

/// `{"percent": 25}` → 2500 bp, with the reason when it is anything else.
pub fn parse_percent_body(body: &[u8]) -> Result<BasisPoints, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body must be JSON like {{\"percent\": 25}}: {e}"))?;
    let object = value
        .as_object()
        .ok_or("the body must be a JSON object like {\"percent\": 25}")?;
    if let Some(unknown) = object.keys().find(|k| *k != "percent") {
        return Err(format!(
            "unknown field {unknown:?}; only \"percent\" is accepted"
        ));
    }
    let percent = object
        .get("percent")
        .ok_or("missing field \"percent\"")?
        .as_f64()
        .ok_or("\"percent\" must be a number from 0 to 100")?;
    BasisPoints::from_percent(percent).map_err(|e| format!("percent: {e}"))
}

/// `/assign?route=NAME&key=KEY`, plus what segments and overrides read: `header=NAME:VALUE`
/// and `cookie=NAME=VALUE` (each repeatable) and `ip=ADDRESS`.
fn assign(snap: &Snapshot, query: &str) -> Response<Full<Bytes>> {
    let (mut route_name, mut key) = (None, None);
    let mut request = Described::default();
    for (name, value) in query_pairs(query) {
        let described = match name.as_str() {
            "route" => {
                route_name.get_or_insert(value);
                Ok(())
            }
            "key" => {
                key.get_or_insert(value);
                Ok(())
            }
            "header" => request.header(&value),
            "cookie" => request.cookie(&value),
            "ip" => request.ip(&value),
            _ => Ok(()),
        };
        if let Err(reason) = described {
            return text_owned(StatusCode::BAD_REQUEST, format!("{reason}\n"));
        }
    }
    let (Some(route_name), Some(key)) = (route_name, key) else {
        return text(
            StatusCode::BAD_REQUEST,
            "both query parameters are required: /assign?route=NAME&key=KEY\n",
        );
    };
    let Some(index) = snap.route_index(&route_name) else {
        return text_owned(
            StatusCode::NOT_FOUND,
            format!("no route named {route_name:?}\n"),
        );
    };
    let (route, state) = snap.route(index);
    let decision = request.decide(route, state.share(), key.as_bytes());
    json_response(
        StatusCode::OK,
        &json!({
            "route": route.name,
            "key": key,
            "bucket": decision.bucket,
            "variant": decision.variant.as_str(),
            "decided_by": decision.decided_by(),
        }),
    )
}

/// `a=1&b=x%20y` → [("a","1"), ("b","x y")], percent- and `+`-decoded.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                out.push(hex_value(bytes[i + 1]) << 4 | hex_value(bytes[i + 2]));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of one ASCII hex digit (callers check `is_ascii_hexdigit` first).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit
            .to_ascii_uppercase()
            .wrapping_sub(b'A')
            .wrapping_add(10),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut body = value.to_string();
    body.push('\n');
    with_type(status, JSON, body)
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn text_owned(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_bodies_are_checked() {
        assert_eq!(
            parse_percent_body(br#"{"percent": 25}"#),
            Ok(BasisPoints::from_raw(2500).unwrap())
        );
        assert_eq!(
            parse_percent_body(br#"{"percent": 2.5}"#),
            Ok(BasisPoints::from_raw(250).unwrap())
        );
        for (body, reason) in [
            (&br#"{"percent": 100.5}"#[..], "percent: 100.5 is above 100"),
            (br#"{"percent": 0.001}"#, "finer than the 0.01 step"),
            (br#"{"percent": "10"}"#, "must be a number"),
            (br#"{"pct": 10}"#, "unknown field \"pct\""),
            (br#"{}"#, "missing field \"percent\""),
            (br#"[10]"#, "must be a JSON object"),
            (b"percent=10", "must be JSON"),
        ] {
            let err = parse_percent_body(body).unwrap_err();
            assert!(err.contains(reason), "{err:?} lacks {reason:?}");
        }
    }

    #[test]
    fn query_pairs_are_decoded() {
        assert_eq!(
            query_pairs("route=default&key=user%2D42+x&empty="),
            vec![
                ("route".into(), "default".into()),
                ("key".into(), "user-42 x".into()),
                ("empty".into(), String::new()),
            ]
        );
        assert_eq!(query_pairs("key=100%"), vec![("key".into(), "100%".into())]);
        assert_eq!(query_pairs("key=%zz"), vec![("key".into(), "%zz".into())]);
        assert_eq!(query_pairs("key=%+1"), vec![("key".into(), "% 1".into())]);
        assert_eq!(query_pairs("k=%4a%4A"), vec![("k".into(), "JJ".into())]);
    }
}
