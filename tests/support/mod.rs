//! Shared scenario helpers for integration tests: fake upstreams, a running cohort,
//! and a small HTTP client, all on 127.0.0.1 ephemeral ports.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------
// Fake upstreams
// ---------------------------------------------------------------------------------------

/// What a fake upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
}

struct UpstreamState {
    name: &'static str,
    status: AtomicU16,
    delay_ms: AtomicU64,
    hits: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// A real HTTP server on 127.0.0.1 that answers with its name. Its `stop` closes the
/// listener and every open connection, as a process exit would.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    stop: watch::Sender<bool>,
}

impl FakeUpstream {
    /// Starts an upstream answering `200 <name>` to every request.
    pub async fn start(name: &'static str) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        FakeUpstream::serve(name, listener)
    }

    /// Starts again on the same address after `stop` (for recovery scenarios).
    pub async fn restart_on(name: &'static str, addr: SocketAddr) -> FakeUpstream {
        let listener = TcpListener::bind(addr).await.expect("rebind upstream");
        FakeUpstream::serve(name, listener)
    }

    fn serve(name: &'static str, listener: TcpListener) -> FakeUpstream {
        let addr = listener.local_addr().expect("upstream addr");
        let state = Arc::new(UpstreamState {
            name,
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            hits: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let (stop, stop_rx) = watch::channel(false);
        let accept_state = state.clone();
        let mut accept_stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ = accept_stop.wait_for(|s| *s) => return,
                };
                let state = accept_state.clone();
                let mut conn_stop = stop_rx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        // Dropping the connection closes its socket.
                        _ = conn_stop.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        FakeUpstream { addr, state, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn name(&self) -> &'static str {
        self.state.name
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Every later response gets this status.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Every later response waits this long before its headers.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen lock").clone()
    }

    pub fn last_seen(&self) -> Seen {
        self.seen().pop().expect("the upstream saw no request")
    }

    /// Closes the listener and every open connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(state: &UpstreamState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    state.seen.lock().expect("seen lock").push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    // Drain the request body so keep-alive works.
    let _ = req.into_body().collect().await;
    let status =
        StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    let mut resp = Response::new(Full::new(Bytes::from(state.name)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("x-upstream", http::HeaderValue::from_static(state.name));
    resp
}

// ---------------------------------------------------------------------------------------
// A running cohort
// ---------------------------------------------------------------------------------------

/// A cohort instance in this process, listening on ephemeral loopback ports.
pub struct TestCohort {
    pub running: Option<cohort::Running>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

impl TestCohort {
    /// Starts cohort with `routes` (TOML `[[routes]]` blocks) and optional extra
    /// `[listen]` lines; listener and admin use ephemeral ports, one worker.
    pub async fn start(routes: &str) -> TestCohort {
        TestCohort::start_with(routes, "").await
    }

    pub async fn start_with(routes: &str, listen_extra: &str) -> TestCohort {
        let text = format!(
            "[listen]\naddress = \"127.0.0.1:0\"\nworkers = 1\n{listen_extra}\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n{routes}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("cohort.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let config = cohort::config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let running = cohort::start(config).await.expect("start cohort");
        TestCohort {
            proxy: running.proxy_addr(),
            admin: running.admin_addr(),
            running: Some(running),
            dir,
            config_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let resp = get(&self.admin_url("/metrics"), &[]).await;
        assert_eq!(resp.status, 200);
        resp.text()
    }

    /// The value of one series, e.g. `counter(r#"cohort_requests_total{route="a",variant="stable",status="200"}"#)`.
    /// Labels may be given in any order; absent series read as 0.
    pub async fn series(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        series_value(&self.metrics().await, name, labels)
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// Finds the value of `name{labels...}` in Prometheus text (0 if absent).
pub fn series_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let parsed: HashMap<&str, &str> = series_labels
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if parsed.len() == labels.len() && labels.iter().all(|(k, v)| parsed.get(k) == Some(v)) {
            return value.parse().unwrap_or(f64::NAN);
        }
    }
    0.0
}

// ---------------------------------------------------------------------------------------
// A real HTTP client
// ---------------------------------------------------------------------------------------

pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn variant(&self) -> Option<&str> {
        self.header("x-cohort-variant")
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 keep-alive client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// One GET with extra headers, on a fresh HTTP/1.1 client.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    send(&client(), "GET", url, headers, Bytes::new()).await
}

pub async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(body)).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e:?}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

/// A `[[routes]]` block with a stable and a canary upstream.
pub fn route(name: &str, stable: &FakeUpstream, canary: &FakeUpstream, extra: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nsalt = \"{name}-salt\"\nstable = {{ endpoints = [\"{}\"] }}\ncanary = {{ endpoints = [\"{}\"] }}\n{extra}\n",
        stable.url(),
        canary.url()
    )
}
