//! Fake upstreams: [`FakeUpstream`] (a real HTTP server that answers with its name,
//! counts and records what it saw), [`RawUpstream`] (bytes verbatim), and addresses that
//! refuse ([`refused_addr`]) or hang ([`Blackhole`]) a connect.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::pattern::{PatternBody, PatternCheck};
use super::sys::PATIENCE;

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
    /// `200` with `Content-Length: len`, then the body one byte every `every`: slow,
    /// but never idle for longer than `every`.
    Drip { len: u64, every: Duration },
    /// `200` with `Content-Length: promised`, `sent` pattern bytes, then nothing, the
    /// stream left open until the peer resets it or the connection closes. (Over
    /// HTTP/2, where a reset drops the body; an HTTP/1.1 stall is
    /// `RawUpstream::start_then` with [`AfterReply::Hold`].)
    StallBody { sent: usize, promised: u64 },
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
    body_sent: Arc<AtomicU64>,
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
            body_sent: Arc::new(AtomicU64::new(0)),
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
            let body = PatternBody::new(len, true).with_counter(state.body_sent.clone());
            let mut resp = Response::new(boxed(body));
            resp.headers_mut().insert(CONTENT_LENGTH, len.into());
            resp
        }
        Reply::CutBody { sent, promised } => {
            let mut resp = Response::new(boxed(BrokenBody {
                head: Some(PatternBody::new(sent as u64, false)),
                then: Then::Cut(Box::pin(tokio::time::sleep(Duration::from_millis(50)))),
            }));
            if let Some(len) = promised {
                resp.headers_mut().insert(CONTENT_LENGTH, len.into());
            }
            resp
        }
        Reply::StallBody { sent, promised } => {
            let mut resp = Response::new(boxed(BrokenBody {
                head: Some(PatternBody::new(sent as u64, false)),
                then: Then::Stall,
            }));
            resp.headers_mut().insert(CONTENT_LENGTH, promised.into());
            resp
        }
        Reply::Drip { len, every } => {
            let mut resp = Response::new(boxed(Drip {
                left: len,
                every,
                next: Box::pin(tokio::time::sleep(every)),
            }));
            resp.headers_mut().insert(CONTENT_LENGTH, len.into());
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

/// A body that sends some pattern bytes and then goes wrong its way ([`Then`]).
struct BrokenBody {
    head: Option<PatternBody>,
    then: Then,
}

enum Then {
    /// Wait until hyper has flushed the bytes (and the response head), then fail, so
    /// hyper cuts the connection mid-body.
    Cut(Pin<Box<tokio::time::Sleep>>),
    /// Never go on (nor wake anyone).
    Stall,
}

impl Body for BrokenBody {
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
        match &mut self.then {
            Then::Stall => Poll::Pending,
            Then::Cut(flush) => {
                std::task::ready!(flush.as_mut().poll(cx));
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "the fake upstream cuts this body",
                ))))
            }
        }
    }
}

/// A body of `left` bytes (`.`), one every `every`.
struct Drip {
    left: u64,
    every: Duration,
    next: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Drip {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        std::task::ready!(self.next.as_mut().poll(cx));
        let every = self.every;
        self.next
            .as_mut()
            .reset(tokio::time::Instant::now() + every);
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b".")))))
    }
}

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

/// What a [`RawUpstream`] does once it has written its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReply {
    /// Closes the connection (FIN).
    Close,
    /// Resets it (RST: `SO_LINGER` 0, then close), as a crashed process's kernel does.
    Reset,
    /// Writes nothing more and keeps it open until the peer closes it: a stalled
    /// upstream (before its headers when the reply is empty, mid-body when it promised
    /// more than it wrote).
    Hold,
}

/// A TCP server that is not HTTP-aware: for every connection it reads the request head,
/// writes `reply` verbatim (possibly nothing, or garbage) and closes (or what
/// [`AfterReply`] says).
pub struct RawUpstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// Decrements a connection count when the connection it tracks ends.
struct CountGuard(Arc<AtomicUsize>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RawUpstream {
    pub async fn start(reply: &'static [u8]) -> RawUpstream {
        RawUpstream::start_then(reply, AfterReply::Close).await
    }

    /// Writes `reply` to each connection, then does `after`.
    pub async fn start_then(reply: &'static [u8], after: AfterReply) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (counter, open_counter) = (accepted.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                open_counter.fetch_add(1, Ordering::SeqCst);
                let guard = CountGuard(open_counter.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = stream.write_all(reply).await;
                    match after {
                        AfterReply::Close => {
                            let _ = stream.shutdown().await;
                        }
                        AfterReply::Reset => {
                            // Let the reply be read first: a reset can discard what
                            // the peer has not read yet.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            let _ =
                                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                        }
                        // Until the peer closes (or the server is dropped); whatever
                        // else it sends is ignored.
                        AfterReply::Hold => while let Ok(1..) = stream.read(&mut chunk).await {},
                    }
                });
            }
        });
        RawUpstream {
            addr,
            accepted,
            open,
            task,
        }
    }

    /// Connections still open (a [`AfterReply::Hold`] server's count falls as its
    /// peer closes them).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
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
