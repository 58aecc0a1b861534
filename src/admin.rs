//! The admin listener (loopback by default): metrics, health, and a read-only view of
//! the routes and assignments.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::cohort::{self, Variant};
use crate::server::State;
use crate::snapshot::{canary_share, Snapshot};

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";

/// Serves the admin API until the task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let upkeep_state = state.clone();
    // The exporter's histogram buffers need draining now and then even if nobody scrapes.
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
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
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(&state, req)) }
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

fn route(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    let snap = state.snapshot.load_full();
    match path {
        "/metrics" => with_type(StatusCode::OK, PROMETHEUS_TEXT, state.metrics.render()),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/config" => match serde_json::to_value(&*snap.config) {
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
    let routes: Vec<Value> = snap
        .config
        .routes
        .iter()
        .zip(&snap.routes)
        .map(|(route, state)| {
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
            let share = canary_share(route);
            json!({
                "name": route.name,
                "host": route.host,
                "path_prefix": route.path_prefix,
                "canary_percent": share.percent(),
                "salt": route.salt,
                "sticky": route.sticky,
                "stable": variant(Variant::Stable),
                "canary": variant(Variant::Canary),
            })
        })
        .collect();
    json!({ "generation": snap.generation, "routes": routes })
}

fn assign(snap: &Snapshot, query: &str) -> Response<Full<Bytes>> {
    let (mut route_name, mut key) = (None, None);
    for (name, value) in query_pairs(query) {
        match name.as_str() {
            "route" if route_name.is_none() => route_name = Some(value),
            "key" if key.is_none() => key = Some(value),
            _ => {}
        }
    }
    let (Some(route_name), Some(key)) = (route_name, key) else {
        return text(
            StatusCode::BAD_REQUEST,
            "both query parameters are required: /assign?route=NAME&key=KEY\n",
        );
    };
    let Some(route) = snap.route_by_name(&route_name) else {
        return text_owned(
            StatusCode::NOT_FOUND,
            format!("no route named {route_name:?}\n"),
        );
    };
    let (bucket, variant) = cohort::assign(&route.salt, key.as_bytes(), canary_share(route));
    json_response(
        StatusCode::OK,
        &json!({ "route": route.name, "key": key, "bucket": bucket, "variant": variant.as_str() }),
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
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    }
}
