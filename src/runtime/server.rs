//! A running cohort instance: binds its listeners, starts the workers and the admin
//! listener, and shuts down gracefully. Tests run instances in-process through this.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::admin;
use crate::config::Loaded;
use crate::engine::listener;
use crate::engine::proxy::ProxyContext;
use crate::metrics::Metrics;
use crate::runtime::fleet;
use crate::runtime::guard::{self, Guards};
use crate::runtime::reload::{self, Control, ReloadError};
use crate::runtime::snapshot::{SharedSnapshot, Snapshot};
use crate::upstream::{Pool, Resolve, Resolver};

/// State shared by the workers, the admin listener and (later) reloads.
pub struct State {
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    /// True once listening with a valid config; false from the moment shutdown begins.
    pub ready: AtomicBool,
    /// Rollout and guard memory per rollout identity, across snapshots.
    pub guards: Guards,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {key} = {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot start worker threads: {0}")]
    Workers(io::Error),
    /// The admin token or the listener's TLS cannot be had from the files named.
    #[error("{0}")]
    Credentials(#[from] ReloadError),
    #[error("{}: {source}", file.display())]
    StateDir {
        file: std::path::PathBuf,
        source: crate::runtime::state_dir::StateDirError,
    },
}

/// A started instance. Drop it only after [`Running::shutdown`] or [`Running::wait`].
pub struct Running {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// The admin listener, file watcher and SIGHUP handler.
    control_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What an embedder (or a test) may set beyond the config when starting cohort.
#[derive(Clone, Default)]
pub struct StartOptions {
    resolver: Option<Arc<dyn Resolve>>,
}

impl StartOptions {
    pub fn new() -> StartOptions {
        StartOptions::default()
    }

    /// Resolve endpoint host names with `resolver` instead of the system's (see
    /// [`Resolve`] for when it is asked and what a failure does).
    pub fn resolver(mut self, resolver: impl Resolve) -> StartOptions {
        self.resolver = Some(Arc::new(resolver));
        self
    }
}

/// Binds the listeners and starts serving `config`. Must run inside a tokio runtime,
/// which then hosts the admin listener; the proxy runs on its own worker threads.
pub async fn start(config: Loaded) -> Result<Running, StartError> {
    start_with(config, StartOptions::default()).await
}

/// [`start`] with [`StartOptions`].
pub async fn start_with(config: Loaded, options: StartOptions) -> Result<Running, StartError> {
    let credentials = reload::credentials(&config)?;
    // Found now, not at the first rollback: a kill switch that cannot be remembered
    // would send users back to a failed canary after the next restart.
    if let Some(dir) = &config.state_dir {
        crate::runtime::state_dir::check(dir).map_err(|source| StartError::StateDir {
            file: config.source.clone(),
            source,
        })?;
    }
    let workers = listener::worker_count(config.listen.workers);
    // Outcome windows get a lane per worker, summed when read.
    let metrics = Arc::new(Metrics::with_lanes(workers));
    let proxy_socket =
        listener::bind(config.listen.address).map_err(|source| StartError::Bind {
            key: "listen.address",
            addr: config.listen.address,
            source,
        })?;
    let admin_socket = listener::bind(config.admin.address).map_err(|source| StartError::Bind {
        key: "admin.address",
        addr: config.admin.address,
        source,
    })?;
    let bound = |s: &std::net::TcpListener, key, addr| {
        s.local_addr()
            .map_err(|source| StartError::Bind { key, addr, source })
    };
    let proxy_addr = bound(&proxy_socket, "listen.address", config.listen.address)?;
    let admin_addr = bound(&admin_socket, "admin.address", config.admin.address)?;
    let admin_listener =
        tokio::net::TcpListener::from_std(admin_socket).map_err(|source| StartError::Bind {
            key: "admin.address",
            addr: config.admin.address,
            source,
        })?;

    let tls = credentials.server_tls.is_some();
    let config_path = config.source.clone();
    if credentials.admin_token.is_none() && !config.admin.address.ip().is_loopback() {
        tracing::warn!(
            admin = %config.admin.address,
            "the admin listener is off loopback without admin.token_file: changes through it are refused (403)"
        );
    }
    let guarded = config
        .routes
        .iter()
        .any(|r| r.guard.is_some() || r.rollout.is_some());
    if guarded && config.state_dir.is_none() {
        tracing::warn!("no state_dir is set: a rollback will not survive a restart");
    }
    let guards = Guards::with_lanes(workers);
    let snapshot = Snapshot::build(
        Arc::new(config),
        credentials,
        1,
        &metrics,
        &guards,
        guard::wall_now(),
    );
    let state = Arc::new(State {
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        metrics,
        ready: AtomicBool::new(false),
        guards,
    });

    // A replica that starts while its fleet is rolled back must not send a single
    // user to the failed canary: the fleet is asked before the first request is taken
    // (bounded, so a Prometheus that does not answer cannot keep the proxy down).
    let has_fleet_guard = state
        .snapshot
        .load()
        .config
        .routes
        .iter()
        .any(|r| r.fleet_source().is_some());
    if has_fleet_guard {
        let first = tokio::time::timeout(fleet::FIRST_READ_WITHIN, fleet::read_all(&state)).await;
        if first.is_err() {
            tracing::warn!("Prometheus did not answer the first fleet read in time: guards judge local counts until it does");
        }
        guard::evaluate_once(&state, guard::wall_now());
    }

    // One resolver for every worker, so a name's last good addresses are shared.
    let resolver = options.resolver.map(Resolver::new).unwrap_or_default();
    let (stop, stop_rx) = watch::channel(false);
    let mut handles = Vec::with_capacity(workers);
    for id in 0..workers {
        let spawned = proxy_socket.try_clone().and_then(|socket| {
            let ctx = ProxyContext {
                snapshot: state.snapshot.clone(),
                metrics: state.metrics.clone(),
                pool: Pool::with_resolver(resolver.clone()),
                h1_pool: Default::default(),
                scheme: if tls { "https" } else { "http" },
                limits: state.snapshot.load().config.listen.limits,
            };
            listener::spawn_worker(id, socket, ctx, tls, stop_rx.clone())
        });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                let _ = stop.send(true);
                return Err(StartError::Workers(e));
            }
        }
    }
    drop(proxy_socket);
    drop(stop_rx);
    // The file as it is now; later file events that leave it unchanged are no reloads.
    let initial_text = std::fs::read_to_string(&config_path).ok();
    let watchable = initial_text.is_some();
    let control = Arc::new(Control::new(state.clone(), config_path, initial_text));
    let mut control_tasks = vec![tokio::spawn(admin::serve(
        admin_listener,
        state.clone(),
        control.clone(),
    ))];
    control_tasks.push(tokio::spawn(guard::evaluate_forever(state.clone())));
    control_tasks.push(tokio::spawn(fleet::read_forever(state.clone())));
    if watchable {
        control_tasks.extend(crate::runtime::watch::spawn(control.clone()));
        control_tasks.extend(reload::on_sighup(control.clone()));
    }
    state.ready.store(true, Ordering::SeqCst);
    let scheme = if tls { "https" } else { "http" };
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, workers, scheme, "cohort is serving");
    Ok(Running {
        proxy_addr,
        admin_addr,
        state,
        stop,
        workers: handles,
        control_tasks,
    })
}

impl Running {
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Starts a graceful shutdown: `/readyz` answers 503 at once, the listener stops
    /// accepting, and in-flight requests get up to `listen.drain_timeout`.
    pub fn begin_shutdown(&self) {
        self.state.ready.store(false, Ordering::SeqCst);
        let _ = self.stop.send(true);
    }

    /// Waits until every worker has drained, then stops the admin listener.
    pub async fn wait(self) {
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
        for task in self.control_tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// [`Running::begin_shutdown`] then [`Running::wait`].
    pub async fn shutdown(self) {
        self.begin_shutdown();
        self.wait().await;
    }

    /// The stop on SIGTERM (DESIGN §6): `/readyz` answers 503 at once; for
    /// `listen.shutdown_delay` everything keeps serving, new connections and
    /// keep-alive ones alike, while the orchestrator takes this instance out of its
    /// endpoints (on Kubernetes the removal starts with the signal and takes seconds to
    /// reach every kube-proxy and load balancer, so a proxy that stopped accepting at
    /// once would refuse the requests still sent its way);
    /// then [`Running::shutdown`]. The delay is read from the config in force now, so
    /// a reload changes it. Dropping the future (a second signal) stops waiting.
    pub async fn stop_gracefully(self) {
        self.state.ready.store(false, Ordering::SeqCst);
        let delay = self.state.snapshot.load().config.listen.shutdown_delay;
        if !delay.is_zero() {
            tracing::info!(
                shutdown_delay = %humantime::format_duration(delay),
                "shutdown delay: /readyz answers 503, still accepting and serving"
            );
            tokio::time::sleep(delay).await;
            tracing::info!("shutdown delay over: no longer accepting connections");
        }
        let drain = self.state.snapshot.load().config.listen.drain_timeout;
        tracing::info!(
            drain_timeout = %humantime::format_duration(drain),
            "draining in-flight requests"
        );
        self.shutdown().await;
    }
}
