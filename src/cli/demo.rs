//! `cohort demo`: two built-in upstreams and the proxy on loopback, a little traffic,
//! and the live split printed, so a newcomer sees cohort work with nothing installed;
//! and `cohort demo-upstream`, one such upstream on its own, for docker-compose.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use cohort::config;

use super::http_client::Connection;
use super::signals::StopSignals;

const SALT: &str = "demo-v1";
const CANARY_PERCENT: u32 = 20;
const USERS: usize = 1000;

/// Runs the demo until Ctrl-C, or for `duration`.
pub async fn run(duration: Option<Duration>) -> ExitCode {
    match demo(duration).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn demo(duration: Option<Duration>) -> anyhow::Result<()> {
    // One listener for the whole demo: a signal is remembered from here on, also when it
    // arrives between two requests of the traffic loop.
    let mut stop = StopSignals::new();
    // A duration too long to add to the clock is as good as none.
    let deadline = duration.and_then(|d| Instant::now().checked_add(d));
    let stable = start_upstream("stable").await?;
    let canary = start_upstream("canary").await?;
    let preferred = (free_or_ephemeral(8080), free_or_ephemeral(9901));
    let running = match start_proxy(preferred, stable, canary).await {
        // Another program (another demo, say) took a preferred port between the check and
        // the bind: any free ports will do.
        Err(e) if port_taken(&e) => start_proxy((EPHEMERAL, EPHEMERAL), stable, canary).await?,
        started => started?,
    };
    let proxy = running.proxy_addr();
    let admin = running.admin_addr();

    out!("cohort demo");
    out!("  stable upstream  http://{stable}   canary upstream  http://{canary}");
    out!("  proxy            http://{proxy}/   route \"demo\", canary_percent = {CANARY_PERCENT}, salt = \"{SALT}\"");
    out!();

    let mut client = DemoClient::connect(proxy).await?;
    let mut split: BTreeMap<String, usize> = BTreeMap::new();
    for user in 0..USERS {
        let variant = client.get(&format!("user-{user}"), None).await?;
        *split.entry(variant).or_default() += 1;
    }
    let canary_count = split.get("canary").copied().unwrap_or(0);
    out!(
        "sent {USERS} requests, one per x-user-id: stable {}, canary {} ({:.1} % canary; the setting is {CANARY_PERCENT} %)",
        split.get("stable").copied().unwrap_or(0),
        canary_count,
        canary_count as f64 * 100.0 / USERS as f64
    );
    let alice: Vec<String> = {
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(client.get("alice", None).await?);
        }
        seen
    };
    out!("sticky: user \"alice\" five times -> {}", alice.join(", "));
    let forced = client.get("alice", Some("canary")).await?;
    out!("override: alice with x-cohort-variant: canary from 127.0.0.1 -> {forced}");
    out!();
    out!("try it:");
    out!("  curl -si -H 'x-user-id: alice' http://{proxy}/");
    out!("  curl -s 'http://{admin}/assign?route=demo&key=alice'");
    out!("  curl -s http://{admin}/routes");
    out!("  curl -s http://{admin}/metrics | grep cohort_requests_total");
    out!("  status page: http://{admin}/   metrics: http://{admin}/metrics");
    out!();
    match duration {
        Some(d) => out!(
            "live traffic for {}; the split so far:",
            humantime::format_duration(d)
        ),
        None => out!("live traffic until Ctrl-C; the split so far:"),
    }

    let mut user = USERS;
    let mut last_print = Instant::now();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let key = format!("user-{user}");
        let variant = tokio::select! {
            v = client.get(&key, None) => v?,
            _ = stop.next() => break,
        };
        *split.entry(variant).or_default() += 1;
        user += 1;
        if last_print.elapsed() >= Duration::from_secs(1) {
            print_split(&split);
            last_print = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.next() => break,
        }
    }
    print_split(&split);
    running.shutdown().await;
    Ok(())
}

fn print_split(split: &BTreeMap<String, usize>) {
    let stable = split.get("stable").copied().unwrap_or(0);
    let canary = split.get("canary").copied().unwrap_or(0);
    let total = (stable + canary).max(1);
    out!(
        "  stable {stable:>6}  canary {canary:>6}  ({:.1} % canary)",
        canary as f64 * 100.0 / total as f64
    );
}

/// Any free port on loopback.
const EPHEMERAL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// `127.0.0.1:port` if that port is free now, else an ephemeral port.
fn free_or_ephemeral(port: u16) -> SocketAddr {
    let preferred = SocketAddr::from(([127, 0, 0, 1], port));
    match std::net::TcpListener::bind(preferred) {
        Ok(_) => preferred,
        Err(_) => EPHEMERAL,
    }
}

/// Whether starting failed because a listen address was in use.
fn port_taken(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<cohort::StartError>(),
        Some(cohort::StartError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse
    )
}

/// Starts the proxy with the demo's route on (proxy, admin) addresses.
async fn start_proxy(
    (proxy, admin): (SocketAddr, SocketAddr),
    stable: SocketAddr,
    canary: SocketAddr,
) -> anyhow::Result<cohort::Running> {
    let text = format!(
        r#"
[listen]
address = "{proxy}"
workers = 1
drain_timeout = "2s"

[admin]
address = "{admin}"

[[routes]]
name = "demo"
path_prefix = "/"
sticky = ["header:x-user-id", "cookie:session"]
salt = "{SALT}"
canary_percent = {CANARY_PERCENT}
stable = {{ endpoints = ["http://{stable}"] }}
canary = {{ endpoints = ["http://{canary}"] }}
override = {{ trusted = ["127.0.0.0/8", "::1/128"] }}
"#
    );
    let config = config::parse(&text, Path::new("<built-in demo config>"))?;
    Ok(cohort::start(config).await?)
}

/// What a built-in upstream answers: its name in the body and in `x-upstream`, with
/// `status`, after `delay`. The demo's two upstreams and `cohort demo-upstream` share it.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    pub status: http::StatusCode,
    pub delay: Duration,
}

/// A built-in upstream that answers every request with its own name.
async fn start_upstream(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let spec = UpstreamSpec {
        name: name.to_owned(),
        status: http::StatusCode::OK,
        delay: Duration::ZERO,
    };
    tokio::spawn(serve_upstream(listener, spec));
    Ok(addr)
}

/// Accepts connections on `listener` and answers every request as `spec` says, until
/// the task is dropped. HTTP/1.1 and h2c (prior knowledge) both work, like the
/// upstreams a real service would put behind cohort.
pub async fn serve_upstream(listener: TcpListener, spec: UpstreamSpec) {
    let spec = std::sync::Arc::new(spec);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: a pause, not the end of the server.
            Err(e) => {
                tracing::warn!(error = %e, "demo upstream: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let spec = spec.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let spec = spec.clone();
            async move { Ok::<_, Infallible>(upstream_answer(&spec, req.uri().path()).await) }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn upstream_answer(spec: &UpstreamSpec, path: &str) -> Response<Full<Bytes>> {
    if !spec.delay.is_zero() {
        tokio::time::sleep(spec.delay).await;
    }
    let body = format!("hello from {} (path {path})\n", spec.name);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = spec.status;
    // run_upstream refuses a name that is not a valid header value, and the demo's names
    // are constants: this never skips the header in practice, and cannot panic.
    if let Ok(value) = http::HeaderValue::from_str(&spec.name) {
        response.headers_mut().insert("x-upstream", value);
    }
    response
}

/// `cohort demo-upstream`: one built-in upstream on `listen`, until SIGTERM or Ctrl-C.
/// docker-compose runs the cohort image three times with it (cohort, stable, canary).
pub async fn run_upstream(listen: SocketAddr, spec: UpstreamSpec) -> ExitCode {
    // Listening for signals before binding: a SIGTERM right after the start line is
    // not lost.
    let mut stop = StopSignals::new();
    if http::HeaderValue::from_str(&spec.name).is_err() {
        eprintln!(
            "demo-upstream: --name {:?} cannot be sent as a header value",
            spec.name
        );
        return ExitCode::from(2);
    }
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("demo-upstream: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(e) => {
            eprintln!("demo-upstream: cannot read the bound address: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        name = %spec.name,
        %address,
        status = spec.status.as_u16(),
        delay = %humantime::format_duration(spec.delay),
        "demo upstream is serving"
    );
    let name = spec.name.clone();
    tokio::select! {
        () = serve_upstream(listener, spec) => {}
        () = stop.next() => {}
    }
    tracing::info!(name = %name, "demo upstream stopped");
    ExitCode::SUCCESS
}

/// The demo's client: one keep-alive connection to the proxy.
struct DemoClient(Connection);

impl DemoClient {
    async fn connect(addr: SocketAddr) -> anyhow::Result<DemoClient> {
        Ok(DemoClient(Connection::open(&addr.to_string()).await?))
    }

    /// Sends one GET as `user` and returns the variant the proxy reported.
    async fn get(&mut self, user: &str, force: Option<&str>) -> anyhow::Result<String> {
        let mut headers = vec![("x-user-id", user)];
        if let Some(variant) = force {
            headers.push(("x-cohort-variant", variant));
        }
        let answer = self
            .0
            .send(Method::GET, "/", &headers, Bytes::new())
            .await?;
        Ok(answer
            .headers
            .get("x-cohort-variant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned())
    }
}
