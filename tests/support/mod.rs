//! Shared scenario helpers for integration tests: fake upstreams, a running cohort,
//! and small HTTP clients (hyper and raw TCP), all on 127.0.0.1 ephemeral ports.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a helper waits for something that should happen at once on loopback.
pub const PATIENCE: Duration = Duration::from_secs(5);

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
    /// Request body bytes read so far (the whole body once the response was sent).
    pub body_len: u64,
    /// The first [`SEEN_BODY_PREFIX`] bytes of the body.
    pub body: Bytes,
    /// Whether every body byte read matched [`pattern_byte`] at its offset.
    pub body_is_pattern: bool,
}

impl Seen {
    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ascii header"))
            .collect()
    }

    /// The only value of `name`; panics when it appears more than once.
    pub fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }
}

/// Request body bytes a fake upstream keeps per request (the rest is only counted).
pub const SEEN_BODY_PREFIX: usize = 64 * 1024;

/// What a fake upstream answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `<status> <name>` after the configured delay (the default).
    Name,
    /// `200` with `len` bytes of the test pattern, generated frame by frame as the
    /// connection accepts them (never held whole), with a `Content-Length`.
    Pattern { len: u64 },
    /// `200` headers (chunked, or with `Content-Length: promised`), `sent` pattern
    /// bytes, then the connection is cut.
    CutBody { sent: usize, promised: Option<u64> },
}

struct UpstreamState {
    name: &'static str,
    status: AtomicU16,
    delay_ms: AtomicU64,
    hits: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    reply: Mutex<Reply>,
    response_headers: Mutex<Vec<(HeaderName, HeaderValue)>>,
    /// TCP connections accepted, ever.
    accepted: AtomicUsize,
    /// TCP connections (and upgraded tunnels) still open.
    open: AtomicUsize,
    listening: AtomicBool,
    /// Response body bytes handed to hyper, over all requests.
    body_sent: AtomicU64,
    /// Request body bytes read, over all requests.
    body_read: AtomicU64,
    /// Pause reading a request body once, after this many of its bytes, for this long.
    read_pause: Mutex<Option<(u64, Duration)>>,
    stop: watch::Receiver<bool>,
}

/// A real HTTP server on 127.0.0.1 that answers with its name (see [`Reply`]) and
/// accepts protocol upgrades (`101`, then echoes bytes). Its `stop` closes the
/// listener and every open connection, as a process exit would.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    stop: watch::Sender<bool>,
}

/// Decrements a counter when the connection it tracks ends.
struct OpenGuard(Arc<UpstreamState>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
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
        let (stop, stop_rx) = watch::channel(false);
        let state = Arc::new(UpstreamState {
            name,
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            hits: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            reply: Mutex::new(Reply::Name),
            response_headers: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            listening: AtomicBool::new(true),
            body_sent: AtomicU64::new(0),
            body_read: AtomicU64::new(0),
            read_pause: Mutex::new(None),
            stop: stop_rx.clone(),
        });
        let accept_state = state.clone();
        let mut accept_stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ = accept_stop.wait_for(|s| *s) => break,
                };
                accept_state.accepted.fetch_add(1, Ordering::SeqCst);
                accept_state.open.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard(accept_state.clone());
                let state = accept_state.clone();
                let mut conn_stop = stop_rx.clone();
                tokio::spawn(async move {
                    let _guard = guard;
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
            drop(listener);
            accept_state.listening.store(false, Ordering::SeqCst);
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

    /// TCP connections this upstream has accepted so far.
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
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

    /// What later responses carry.
    pub fn set_reply(&self, reply: Reply) {
        *self.state.reply.lock().expect("reply lock") = reply;
    }

    /// Extra headers on every later response (appended, so names may repeat).
    pub fn set_response_headers(&self, headers: &[(&str, &str)]) {
        *self.state.response_headers.lock().expect("headers lock") = headers
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                    HeaderValue::from_str(v).expect("header value"),
                )
            })
            .collect();
    }

    /// The next request body read stops once, after `after` bytes, for `pause`.
    pub fn pause_reading(&self, after: u64, pause: Duration) {
        *self.state.read_pause.lock().expect("pause lock") = Some((after, pause));
    }

    /// Response body bytes produced so far (all requests).
    pub fn body_bytes_sent(&self) -> u64 {
        self.state.body_sent.load(Ordering::SeqCst)
    }

    /// Request body bytes consumed so far (all requests).
    pub fn body_bytes_read(&self) -> u64 {
        self.state.body_read.load(Ordering::SeqCst)
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

    /// [`FakeUpstream::stop`], then waits until the listener and every connection are
    /// really closed, so whatever the test does next meets a dead upstream.
    pub async fn stop_and_wait(&self) {
        self.stop();
        let deadline = Instant::now() + PATIENCE;
        while self.state.listening.load(Ordering::SeqCst)
            || self.state.open.load(Ordering::SeqCst) > 0
        {
            assert!(
                Instant::now() < deadline,
                "upstream {} did not stop",
                self.name()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

type UpstreamBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn boxed<B>(body: B) -> UpstreamBody
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    body.map_err(Into::into).boxed()
}

async fn answer(state: &Arc<UpstreamState>, mut req: Request<Incoming>) -> Response<UpstreamBody> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let index = {
        let mut seen = state.seen.lock().expect("seen lock");
        seen.push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            version: req.version(),
            headers: req.headers().clone(),
            body_len: 0,
            body: Bytes::new(),
            body_is_pattern: true,
        });
        seen.len() - 1
    };
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let extra_headers = state.response_headers.lock().expect("headers lock").clone();

    if req.headers().contains_key(UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(echo_upgraded(state.clone(), upgrade));
        let mut resp = Response::new(boxed(Empty::<Bytes>::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = resp.headers_mut();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert("x-upstream", HeaderValue::from_static(state.name));
        for (k, v) in extra_headers {
            headers.append(k, v);
        }
        return resp;
    }

    // Read the body frame by frame, keeping only a prefix, so keep-alive works and
    // large uploads are consumed without being held.
    let mut body = req.into_body();
    let mut check = PatternCheck::default();
    let mut prefix: Vec<u8> = Vec::new();
    let mut pause = state.read_pause.lock().expect("pause lock").take();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        check.feed(&data);
        if prefix.len() < SEEN_BODY_PREFIX {
            let take = data.len().min(SEEN_BODY_PREFIX - prefix.len());
            prefix.extend_from_slice(&data[..take]);
        }
        state
            .body_read
            .fetch_add(data.len() as u64, Ordering::SeqCst);
        if let Some((after, how_long)) = pause {
            if check.offset >= after {
                pause = None;
                tokio::time::sleep(how_long).await;
            }
        }
    }
    {
        let mut seen = state.seen.lock().expect("seen lock");
        let entry = &mut seen[index];
        entry.body_len = check.offset;
        entry.body = Bytes::from(prefix);
        entry.body_is_pattern = check.ok;
    }

    let status =
        StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    let reply = *state.reply.lock().expect("reply lock");
    let mut resp = match reply {
        Reply::Name => Response::new(boxed(Full::new(Bytes::from(state.name)))),
        Reply::Pattern { len } => {
            let body = PatternBody::new(len, true).counting(state.clone());
            let mut resp = Response::new(boxed(body));
            resp.headers_mut().insert(CONTENT_LENGTH, len.into());
            resp
        }
        Reply::CutBody { sent, promised } => {
            let mut resp = Response::new(boxed(CutBody {
                head: Some(PatternBody::new(sent as u64, false)),
                flush: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
            }));
            if let Some(len) = promised {
                resp.headers_mut().insert(CONTENT_LENGTH, len.into());
            }
            resp
        }
    };
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert("x-upstream", HeaderValue::from_static(state.name));
    for (k, v) in extra_headers {
        headers.append(k, v);
    }
    resp
}

/// After a `101`, sends nothing of its own and echoes every byte back.
async fn echo_upgraded(state: Arc<UpstreamState>, upgrade: hyper::upgrade::OnUpgrade) {
    let Ok(upgraded) = upgrade.await else { return };
    state.open.fetch_add(1, Ordering::SeqCst);
    let _guard = OpenGuard(state.clone());
    let mut stop = state.stop.clone();
    let mut io = TokioIo::new(upgraded);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = io.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        if io.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A body that sends some pattern bytes, waits until hyper has flushed them (and the
/// response head), then fails, so hyper cuts the connection mid-body.
struct CutBody {
    head: Option<PatternBody>,
    flush: Pin<Box<tokio::time::Sleep>>,
}

impl Body for CutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(head) = &mut self.head {
            match Pin::new(head).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Some(Ok(frame))),
                _ => self.head = None,
            }
        }
        std::task::ready!(self.flush.as_mut().poll(cx));
        Poll::Ready(Some(Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the fake upstream cuts this body",
        ))))
    }
}

// ---------------------------------------------------------------------------------------
// The test pattern: large bodies generated and checked without holding them
// ---------------------------------------------------------------------------------------

/// The pattern repeats every `PATTERN_PERIOD` bytes, a prime, so a lost, repeated or
/// reordered chunk of any power-of-two size shows up as a mismatch.
pub const PATTERN_PERIOD: usize = 65_521;

/// Frames a [`PatternBody`] yields, at most.
pub const PATTERN_FRAME: usize = 16 * 1024;

/// The byte at `offset` of every pattern body.
pub fn pattern_byte(offset: u64) -> u8 {
    let i = offset % PATTERN_PERIOD as u64;
    (i.wrapping_mul(31).wrapping_add(i >> 8) % 251) as u8
}

/// Two periods back to back, so any frame is one zero-copy slice of it.
fn pattern_twice() -> &'static Bytes {
    static TWICE: OnceLock<Bytes> = OnceLock::new();
    TWICE.get_or_init(|| {
        Bytes::from(
            (0..2 * PATTERN_PERIOD as u64)
                .map(pattern_byte)
                .collect::<Vec<u8>>(),
        )
    })
}

/// `len` bytes of the pattern, produced one frame at a time as the reader polls: memory
/// use stays one frame, however long the body.
pub struct PatternBody {
    offset: u64,
    remaining: u64,
    exact: bool,
    produced: Option<Arc<AtomicU64>>,
    upstream: Option<Arc<UpstreamState>>,
}

impl PatternBody {
    /// With `exact`, the size is announced (`Content-Length`); without, it is chunked.
    pub fn new(len: u64, exact: bool) -> PatternBody {
        PatternBody {
            offset: 0,
            remaining: len,
            exact,
            produced: None,
            upstream: None,
        }
    }

    /// Adds every produced byte to `counter`.
    pub fn with_counter(mut self, counter: Arc<AtomicU64>) -> PatternBody {
        self.produced = Some(counter);
        self
    }

    fn counting(mut self, upstream: Arc<UpstreamState>) -> PatternBody {
        self.upstream = Some(upstream);
        self
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(PATTERN_FRAME as u64) as usize;
        let start = (self.offset % PATTERN_PERIOD as u64) as usize;
        let frame = pattern_twice().slice(start..start + n);
        self.offset += n as u64;
        self.remaining -= n as u64;
        if let Some(counter) = &self.produced {
            counter.fetch_add(n as u64, Ordering::SeqCst);
        }
        if let Some(upstream) = &self.upstream {
            upstream.body_sent.fetch_add(n as u64, Ordering::SeqCst);
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// Checks bytes against the pattern as they arrive, keeping nothing but the offset.
#[derive(Debug, Clone)]
pub struct PatternCheck {
    pub offset: u64,
    pub ok: bool,
}

impl Default for PatternCheck {
    fn default() -> Self {
        PatternCheck {
            offset: 0,
            ok: true,
        }
    }
}

impl PatternCheck {
    pub fn feed(&mut self, mut data: &[u8]) {
        let twice = pattern_twice();
        while !data.is_empty() {
            let start = (self.offset % PATTERN_PERIOD as u64) as usize;
            let n = data.len().min(PATTERN_PERIOD);
            // Slice comparison is a memcmp: fast even in a debug build.
            if data[..n] != twice[start..start + n] {
                self.ok = false;
            }
            self.offset += n as u64;
            data = &data[n..];
        }
    }
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// The resident set of process `pid` in bytes (`VmRSS` in `/proc/PID/status`).
pub fn rss_of(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {path}"));
    kib * 1024
}

// ---------------------------------------------------------------------------------------
// Upstreams that fail in specific ways
// ---------------------------------------------------------------------------------------

/// A loopback address nothing listens on: connecting is refused at once.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
    // Dropped here: the port is closed, and the kernel answers SYNs with RST.
}

/// A loopback listener whose accept queue is full and never drained: a connect to it
/// neither succeeds nor fails, it hangs (the kernel drops the SYN), as a blackholed
/// host does. Used to provoke connect timeouts without leaving loopback.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _queued: Vec<std::net::TcpStream>,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        listener.bind(&any.into()).expect("bind");
        // Backlog 0: the kernel queues at most one connection, and we never accept.
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet addr");
        let mut queued = Vec::new();
        loop {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(stream) => queued.push(stream),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => panic!("filling the blackhole's queue failed: {e}"),
            }
            assert!(queued.len() < 64, "the accept queue never filled");
        }
        Blackhole {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
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
        TestCohort::start_from(&config_path, dir).await
    }

    /// Starts cohort from a config file the test wrote itself; `dir` lives as long as
    /// the instance (put what must outlive it, such as a `state_dir`, elsewhere).
    pub async fn start_from(config_path: &std::path::Path, dir: tempfile::TempDir) -> TestCohort {
        let config = cohort::config::load(config_path).unwrap_or_else(|e| panic!("{e}"));
        let running = cohort::start(config).await.expect("start cohort");
        TestCohort {
            proxy: running.proxy_addr(),
            admin: running.admin_addr(),
            running: Some(running),
            dir,
            config_path: config_path.to_path_buf(),
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

    /// The value of one series once it equals `want`, or its last value after
    /// [`PATIENCE`]. Metrics are recorded when a response body ends on cohort's side,
    /// which may be a moment after the client has read it.
    pub async fn series_eventually(&self, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.series(name, labels).await;
            if value == want || Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until one series reaches at least `min` (a counter, say); panics with `what`
    /// if it has not after `bound`.
    pub async fn wait_series_at_least(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        min: f64,
        bound: Duration,
        what: &str,
    ) {
        let start = Instant::now();
        while self.series(name, labels).await < min {
            assert!(start.elapsed() < bound, "{what} (within {bound:?})");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// Runs `promtool check metrics` on a Prometheus text page and fails the test with
/// promtool's reasons if it rejects it. A missing promtool is a failure, never a skip.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed; install the Debian package `prometheus` \
             (apt-get update && apt-get install -y prometheus) to run this test"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics rejected /metrics ({}):\nstdout: {}\nstderr: {}\n--- page ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
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

/// The variant `cohort::cohort::assign` gives `key` under `salt` at `percent`.
pub fn expected_variant(salt: &str, key: &str, percent: f64) -> &'static str {
    let bp = cohort::cohort::BasisPoints::from_percent(percent).expect("percent");
    cohort::cohort::assign(salt, key.as_bytes(), bp).1.as_str()
}

/// The first key of the form `{prefix}-{n}` that `salt` at `percent` puts in `variant`.
pub fn key_in(variant: &str, salt: &str, percent: f64, prefix: &str) -> String {
    (0..10_000)
        .map(|n| format!("{prefix}-{n}"))
        .find(|key| expected_variant(salt, key, percent) == variant)
        .expect("some key lands in the variant")
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

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: bytes on a TcpStream, so nothing normalises what is sent or seen
// ---------------------------------------------------------------------------------------

/// A response as read off the wire: header names in the case they were sent.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Every value of `name` (any case), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw connection to a server, with whatever was read past the last response.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads until `buf` holds at least `n` bytes; false on EOF first.
    async fn fill(&mut self, n: usize) -> bool {
        let mut chunk = [0u8; 8192];
        while self.buf.len() < n {
            let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("the server sent nothing for too long")
                .expect("read");
            if read == 0 {
                return false;
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
        true
    }

    /// Reads up to the end of a line (CRLF), returned without it.
    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
                return String::from_utf8(line).expect("ascii line");
            }
            let want = self.buf.len() + 1;
            assert!(self.fill(want).await, "EOF inside a line");
        }
    }

    /// Reads one response head.
    pub async fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return (status, headers);
            }
            let (k, v) = line.split_once(':').expect("header line");
            headers.push((k.to_owned(), v.trim().to_owned()));
        }
    }

    /// Reads one whole response (body by `Content-Length`, chunked, or to EOF).
    pub async fn read_response(&mut self, head_request: bool) -> RawResponse {
        let (status, headers) = self.read_head().await;
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 101 || status == 204 || status == 304 {
            return response;
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let size_line = self.line().await;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or(""), 16)
                    .expect("chunk size");
                if size == 0 {
                    while !self.line().await.is_empty() {}
                    break;
                }
                assert!(self.fill(size + 2).await, "EOF inside a chunk");
                response.body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
            }
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            assert!(self.fill(len).await, "EOF inside the body");
            response.body.extend(self.buf.drain(..len));
        } else {
            while self.fill(self.buf.len() + 1).await {}
            response.body = std::mem::take(&mut self.buf);
        }
        response
    }

    /// Whatever arrives before `n` bytes are in or the peer closes.
    pub async fn read_exact_bytes(&mut self, n: usize) -> Vec<u8> {
        assert!(self.fill(n).await, "EOF before {n} bytes");
        self.buf.drain(..n).collect()
    }
}

/// Sends `request` (a complete HTTP/1.1 message) on a new connection and reads the answer.
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.write(request.as_bytes()).await;
    conn.read_response(request.starts_with("HEAD ")).await
}

/// Polls `cond` every millisecond until it holds; panics with `what` after [`PATIENCE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A TCP server that is not HTTP-aware: for every connection it reads the request head,
/// writes `reply` verbatim (possibly nothing, or garbage) and closes.
pub struct RawUpstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(reply: &'static [u8]) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = stream.write_all(reply).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        RawUpstream {
            addr,
            accepted,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// More of the raw client: interim responses and the end of a connection
// ---------------------------------------------------------------------------------------

impl RawConn {
    /// Reads one final response, skipping the interim `1xx` heads before it (never a
    /// `101`, which is final for its request); returns their statuses too.
    pub async fn read_final_response(&mut self, head_request: bool) -> (Vec<u16>, RawResponse) {
        let mut interim = Vec::new();
        loop {
            let end = loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let want = self.buf.len() + 1;
                assert!(self.fill(want).await, "EOF inside a response head");
            };
            let status = std::str::from_utf8(&self.buf[..end])
                .ok()
                .and_then(|head| head.split(' ').nth(1))
                .and_then(|s| s.parse::<u16>().ok());
            match status {
                Some(status) if (100..200).contains(&status) && status != 101 => {
                    interim.push(status);
                    self.buf.drain(..end);
                }
                _ => return (interim, self.read_response(head_request).await),
            }
        }
    }

    /// Everything the server sends until it closes the connection, starting with what
    /// was already read past the last response. A reset counts as a close; a
    /// connection still open after [`PATIENCE`] fails the test.
    pub async fn read_until_close(&mut self) -> Vec<u8> {
        let mut chunk = [0u8; 8192];
        loop {
            let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("the server kept the connection open");
            match read {
                Ok(0) | Err(_) => return std::mem::take(&mut self.buf),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Waits up to `limit` on a connection that should be quiet: true if the server
    /// closed it meanwhile (a reset counts), false if it stayed open. Any byte fails the
    /// test.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(limit, self.stream.read(&mut byte)).await {
            Err(_) => false,
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) => panic!("unexpected byte {:?} on a quiet connection", byte[0]),
        }
    }
}
