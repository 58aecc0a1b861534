//! Live control: file watch, SIGHUP and admin API changes → read → validate → swap.
//!
//! Every change goes through [`Control`], one at a time. A new config is parsed and
//! fully validated before the one `ArcSwap` store; an invalid one is logged, counted
//! and dropped while the old one keeps serving. In-flight requests finish on the
//! snapshot they loaded.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{Mutex, Notify};

use crate::cohort::BasisPoints;
use crate::config::{self, Config, ConfigError, Loaded};
use crate::runtime::guard::ResumeError;
use crate::runtime::server::State;
use crate::runtime::snapshot::{Credentials, Snapshot};
use crate::runtime::writeback::{self, EditError, WriteError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    File,
    Signal,
    Api,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file",
            Trigger::Signal => "signal",
            Trigger::Api => "api",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A new generation is serving.
    Applied { generation: u64 },
    /// The config equals the running one; the generation stays.
    Unchanged { generation: u64 },
    /// A file event without a content change (an editor's swap file, say): not a reload.
    Skipped,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    #[error("{file}: admin.token_file: {reason}")]
    Token {
        file: PathBuf,
        reason: TokenFileError,
    },
    #[error("{}: listen.tls: {source}", file.display())]
    Tls {
        file: PathBuf,
        source: crate::tls::ServerConfigError,
    },
}

/// Why an admin API change was refused; each variant maps to one status code
/// (`crate::admin`), each cause keeps what it is about.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChangeError {
    #[error("no route named {0:?}")]
    UnknownRoute(String),
    /// The change can never be valid for the route as configured (400).
    #[error(transparent)]
    Invalid(#[from] InvalidChange),
    /// The config file cannot be written: a ConfigMap mount, a file without write
    /// permission (409). Its text is [`WriteError::ReadOnly`]'s.
    #[error(
        "{} is read-only ({cause}); change the file where it comes from (e.g. the ConfigMap)",
        file.display()
    )]
    ReadOnly { file: PathBuf, cause: String },
    /// The route's state or the file on disk stands in the way (409).
    #[error(transparent)]
    Conflict(#[from] ConflictCause),
    /// Reading or writing a file failed (500).
    #[error(transparent)]
    Write(#[from] WriteCause),
}

/// Why a change can never be valid for a route as configured.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InvalidChange {
    #[error("route {route:?} has no canary endpoints, so its canary share can only be 0; add canary.endpoints to the config first")]
    NoCanaryEndpoints { route: String },
}

/// What a change conflicts with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConflictCause {
    #[error("route is under a rollout: its share follows [routes.rollout]; change the steps, or roll back")]
    UnderRollout,
    /// The file has no such route, or is not TOML: it is not what is running.
    #[error("{}: {cause}; the file differs from the running config", file.display())]
    FileDiffers {
        file: PathBuf,
        #[source]
        cause: EditError,
    },
    /// The edited file would not be a valid config.
    #[error("the change does not validate against the file on disk; fix the file first:\n{0}")]
    FileInvalid(#[source] ConfigError),
    /// The edited config's `admin.token_file` cannot be read; nothing was written.
    #[error(transparent)]
    TokenUnreadable(ReloadError),
    /// A resume of a route that is not rolled back. Its text is
    /// [`ResumeError::NothingToResume`]'s.
    #[error("nothing to resume: the route is not rolled back")]
    NothingToResume,
}

/// Which file operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteCause {
    /// Reading the config file before editing it.
    #[error("cannot read {}: {source}", file.display())]
    Read { file: PathBuf, source: io::Error },
    /// Writing the edited config file ([`WriteError::Io`]'s text).
    #[error("cannot write {}: {source}", file.display())]
    Write { file: PathBuf, source: io::Error },
    /// The file was written but its config could not be applied.
    #[error(transparent)]
    Apply(ReloadError),
    /// Recording a resume in `state_dir` ([`ResumeError::Io`]'s text).
    #[error("cannot record the resume in {}: {cause}", file.display())]
    Resume { file: PathBuf, cause: String },
}

/// The one place changes are applied.
pub(crate) struct Control {
    state: Arc<State>,
    path: PathBuf,
    /// Serializes changes and remembers what the last one read, so file events that
    /// change nothing are not reloads.
    last_read: Mutex<LastRead>,
    /// Told after each new snapshot, so the file watcher follows the files it names.
    applied: Notify,
}

/// The config text last read or written, and a fingerprint of each file it named.
struct LastRead {
    text: Option<String>,
    files: Vec<(PathBuf, Option<u64>)>,
}

impl LastRead {
    fn new(text: Option<String>, config: Option<&Config>) -> LastRead {
        let files = config.map_or_else(Vec::new, |c| {
            c.named_files()
                .into_iter()
                .map(|f| (f.to_path_buf(), fingerprint(f)))
                .collect()
        });
        LastRead { text, files }
    }

    /// The config file reads `text` again and no file it names changed.
    fn unchanged(&self, text: &str) -> bool {
        self.text.as_deref() == Some(text)
            && self
                .files
                .iter()
                .all(|(file, seen)| fingerprint(file) == *seen)
    }
}

/// A fingerprint of a file's bytes; `None` when it cannot be read.
fn fingerprint(file: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let bytes = std::fs::read(file).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(hasher.finish())
}

impl Control {
    pub(crate) fn new(state: Arc<State>, path: PathBuf, initial_text: Option<String>) -> Control {
        let last_read = LastRead::new(initial_text, Some(&state.snapshot.load().config));
        Control {
            state,
            path,
            last_read: Mutex::new(last_read),
            applied: Notify::new(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot in force.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        self.state.snapshot.load_full()
    }

    /// Returns after the next new snapshot (at once if one came since the last call).
    pub(crate) async fn applied(&self) {
        self.applied.notified().await;
    }

    /// Re-reads the config file and applies it if it is valid.
    pub(crate) async fn reload(&self, trigger: Trigger) -> Result<Outcome, ReloadError> {
        let mut last_read = self.last_read.lock().await;
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                let error = ConfigError::file(&self.path, format!("cannot read the file: {e}"));
                return Err(self.rejected(trigger, error.into()));
            }
        };
        if trigger == Trigger::File && last_read.unchanged(&text) {
            return Ok(Outcome::Skipped);
        }
        let parsed = cohort_core::config::parse(&text, &self.path);
        // Remembered even when invalid, so one broken save is reported once, not on
        // every unrelated event in the directory.
        *last_read = LastRead::new(Some(text), parsed.as_ref().ok());
        let config = match parsed.and_then(config::read_files) {
            Ok(config) => config,
            Err(e) => return Err(self.rejected(trigger, e.into())),
        };
        self.apply(config, trigger)
            .map_err(|e| self.rejected(trigger, e))
    }

    fn rejected(&self, trigger: Trigger, error: ReloadError) -> ReloadError {
        self.state.metrics.reload(false);
        tracing::error!(
            trigger = trigger.as_str(),
            "config rejected; the previous config keeps serving:\n{error}"
        );
        error
    }

    /// Validated config → credentials → swap. Start-only settings keep their running
    /// values.
    fn apply(&self, mut config: Loaded, trigger: Trigger) -> Result<Outcome, ReloadError> {
        let current = self.state.snapshot.load_full();
        keep_start_only_settings(&current.config, &mut config);
        let credentials = credentials(&config)?;
        self.state.metrics.reload(true);
        if *current.config == config && current.credentials.admin_token == credentials.admin_token {
            tracing::info!(
                trigger = trigger.as_str(),
                generation = current.generation,
                "config unchanged"
            );
            return Ok(Outcome::Unchanged {
                generation: current.generation,
            });
        }
        let generation = current.generation + 1;
        let snapshot = Snapshot::build(
            Arc::new(config),
            credentials,
            generation,
            &self.state.metrics,
            &self.state.guards,
            crate::runtime::guard::wall_now(),
        );
        self.state.snapshot.store(Arc::new(snapshot));
        self.applied.notify_one();
        tracing::info!(trigger = trigger.as_str(), generation, "config applied");
        Ok(Outcome::Applied { generation })
    }

    /// Sets a route's canary share: edit the file text, validate, write it back
    /// atomically, apply. Nothing changes unless every step succeeds.
    pub(crate) async fn set_canary(
        &self,
        route: &str,
        bp: BasisPoints,
    ) -> Result<Outcome, ChangeError> {
        let mut last_read = self.last_read.lock().await;
        match self.state.snapshot.load().route_by_name(route) {
            None => return Err(ChangeError::UnknownRoute(route.to_owned())),
            Some(r) if r.rollout.is_some() => return Err(ConflictCause::UnderRollout.into()),
            // Said before any file check: no file edit could make it valid.
            Some(r) if bp > BasisPoints::ZERO && r.canary.endpoints.is_empty() => {
                let route = route.to_owned();
                return Err(InvalidChange::NoCanaryEndpoints { route }.into());
            }
            Some(_) => {}
        }
        let file = || self.path.clone();
        let text = std::fs::read_to_string(&self.path).map_err(|source| WriteCause::Read {
            file: file(),
            source,
        })?;
        let edited = writeback::set_canary_percent(&text, route, bp).map_err(|cause| {
            ConflictCause::FileDiffers {
                file: file(),
                cause,
            }
        })?;
        let config = config::parse(&edited, &self.path).map_err(ConflictCause::FileInvalid)?;
        // The token must be readable before anything is written.
        read_token(&config).map_err(ConflictCause::TokenUnreadable)?;
        writeback::write_atomically(&self.path, &edited).map_err(|e| match e {
            WriteError::ReadOnly { path, reason } => ChangeError::ReadOnly {
                file: path,
                cause: reason,
            },
            WriteError::Io { path, source } => WriteCause::Write { file: path, source }.into(),
        })?;
        // A share edit names no other file: the fingerprints stay.
        last_read.text = Some(edited);
        Ok(self
            .apply(config, Trigger::Api)
            .map_err(WriteCause::Apply)?)
    }
}

impl Control {
    /// The snapshot in force and the index of its route `name`, or 404's error.
    fn running_route(&self, name: &str) -> Result<(Arc<Snapshot>, usize), ChangeError> {
        let snap = self.state.snapshot.load_full();
        let index = snap
            .route_index(name)
            .ok_or_else(|| ChangeError::UnknownRoute(name.to_owned()))?;
        Ok((snap, index))
    }

    /// `POST /routes/{name}/rollback`, on any route: the canary's share is 0 at once,
    /// in memory, remembered in `state_dir` when set; the config file is not touched,
    /// so the kill switch works on a read-only ConfigMap and whatever else the file
    /// holds. Only a resume clears it. Not a reload: the generation stays.
    pub(crate) async fn rollback(&self, route: &str) -> Result<(), ChangeError> {
        // Serialized with reloads (which read and parse, never wait on the network),
        // so a snapshot being built cannot miss the rollback.
        let _serial = self.last_read.lock().await;
        let (snap, index) = self.running_route(route)?;
        let (config_route, route_state) = snap.route(index);
        crate::runtime::guard::manual_rollback(
            config_route,
            route_state,
            crate::runtime::guard::wall_now(),
            self.state.metrics.clock().now(),
        );
        Ok(())
    }

    /// `POST /routes/{name}/resume`: clears a rollback and empties the guard window; a
    /// rollout's ramp restarts at its first step from now.
    pub(crate) async fn resume(&self, route: &str) -> Result<(), ChangeError> {
        let _serial = self.last_read.lock().await;
        let (snap, index) = self.running_route(route)?;
        let (config_route, route_state) = snap.route(index);
        let now = crate::runtime::guard::wall_now();
        route_state
            .memory()
            .resume(config_route, now)
            .map_err(|e| match e {
                ResumeError::NothingToResume => ChangeError::from(ConflictCause::NothingToResume),
                ResumeError::Io { path, reason } => WriteCause::Resume {
                    file: path,
                    cause: reason,
                }
                .into(),
            })?;
        match &config_route.rollout {
            Some(rollout) => tracing::warn!(
                route,
                first_step = %rollout.share_of(Some(0)),
                "rollback cleared by hand: the rollout restarts at its first step"
            ),
            None => tracing::warn!(
                route,
                canary_percent = %config_route.canary_bp,
                "rollback cleared by hand: the canary gets its configured share again"
            ),
        }
        route_state.refresh(config_route, now);
        Ok(())
    }
}

/// Settings read at start only: a reload that changes them warns, and keeps them.
fn keep_start_only_settings(running: &Loaded, new: &mut Loaded) {
    let (running_tls, running) = (&running.tls, &running.config);
    let (new_tls, new) = (&mut new.tls, &mut new.config);
    let warn = |key: &str| {
        tracing::warn!(
            key,
            "this setting is read at start only; restart cohort to apply it"
        );
    };
    if new.listen.address != running.listen.address {
        warn("listen.address");
        new.listen.address = running.listen.address;
    }
    if new.listen.workers != running.listen.workers {
        warn("listen.workers");
        new.listen.workers = running.listen.workers;
    }
    // The listener's limits are built into each worker's connection settings at start
    // (hyper's builders, the connection cap).
    let (old, limits) = (&running.listen.limits, &mut new.listen.limits);
    if limits.max_connections != old.max_connections {
        warn("listen.max_connections");
    }
    if limits.header_timeout != old.header_timeout {
        warn("listen.header_timeout");
    }
    if limits.idle_timeout != old.idle_timeout {
        warn("listen.idle_timeout");
    }
    if limits.max_header_bytes != old.max_header_bytes {
        warn("listen.max_header_bytes");
    }
    if limits.max_headers != old.max_headers {
        warn("listen.max_headers");
    }
    if limits.h2_max_concurrent_streams != old.h2_max_concurrent_streams {
        warn("listen.h2_max_concurrent_streams");
    }
    *limits = *old;
    if new.admin.address != running.admin.address {
        warn("admin.address");
        new.admin.address = running.admin.address;
    }
    // Whether the listener speaks TLS at all is fixed at start; its certificates are not.
    if new.listen.tls.is_some() != running.listen.tls.is_some() {
        warn("listen.tls");
        new.listen.tls.clone_from(&running.listen.tls);
        new_tls.listener.clone_from(&running_tls.listener);
    }
    if new.state_dir != running.state_dir {
        warn("state_dir");
        new.state_dir.clone_from(&running.state_dir);
    }
}

/// The admin token: the file's content with surrounding whitespace trimmed.
pub fn read_token(config: &Config) -> Result<Option<String>, ReloadError> {
    let Some(file) = &config.admin.token_file else {
        return Ok(None);
    };
    let error = |reason| ReloadError::Token {
        file: config.source.clone(),
        reason,
    };
    read_token_file(file).map(Some).map_err(error)
}

/// What the listener and the admin API take from the files `config` names: its TLS
/// server config (certificates read when it was loaded) and the admin token.
pub fn credentials(config: &Loaded) -> Result<Credentials, ReloadError> {
    let admin_token = read_token(config)?.map(Arc::new);
    let server_tls = crate::tls::server_config(config).map_err(|source| ReloadError::Tls {
        file: config.source.clone(),
        source,
    })?;
    Ok(Credentials {
        server_tls,
        admin_token,
    })
}

/// Why a token file gives no token; the text names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
}

/// A token file's content with surrounding whitespace trimmed; unreadable or empty
/// files are errors that name the file.
pub fn read_token_file(file: &Path) -> Result<String, TokenFileError> {
    let text = std::fs::read_to_string(file).map_err(|source| TokenFileError::Unreadable {
        path: file.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty {
            path: file.to_path_buf(),
        });
    }
    Ok(token.to_owned())
}

/// Reloads on every SIGHUP.
pub(crate) fn on_sighup(control: Arc<Control>) -> Option<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP");
                return None;
            }
        };
        Some(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let _ = control.reload(Trigger::Signal).await;
            }
        }))
    }
    #[cfg(not(unix))]
    {
        let _ = control;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> PathBuf {
        PathBuf::from("/etc/cohort/cohort.toml")
    }

    fn io_error() -> io::Error {
        io::Error::other("disk full")
    }

    /// The texts the admin API answers with (and tests/admin.rs, cli.rs, kill_switch.rs,
    /// reload.rs read) are what they were as strings, and those borrowed from the errors
    /// they wrap are those errors' own.
    #[test]
    fn change_errors_say_what_they_said_as_strings() {
        let p = path();
        let shown = p.display();
        let config_error = || ConfigError::file(&p, "bad");
        let token_error = || ReloadError::Token {
            file: p.clone(),
            reason: TokenFileError::Unreadable {
                path: PathBuf::from("/t"),
                source: io::Error::other("gone"),
            },
        };
        let cases: Vec<(ChangeError, String)> = vec![
            (
                ChangeError::UnknownRoute("web".to_owned()),
                "no route named \"web\"".to_owned(),
            ),
            (
                InvalidChange::NoCanaryEndpoints { route: "web".to_owned() }.into(),
                "route \"web\" has no canary endpoints, so its canary share can only be 0; add canary.endpoints to the config first".to_owned(),
            ),
            (
                ChangeError::ReadOnly { file: p.clone(), cause: "the file has no write permission".to_owned() },
                WriteError::ReadOnly { path: p.clone(), reason: "the file has no write permission".to_owned() }.to_string(),
            ),
            (
                ConflictCause::UnderRollout.into(),
                "route is under a rollout: its share follows [routes.rollout]; change the steps, or roll back".to_owned(),
            ),
            (
                ConflictCause::FileDiffers { file: p.clone(), cause: EditError::NoSuchRoute("web".to_owned()) }.into(),
                format!("{shown}: {}; the file differs from the running config", EditError::NoSuchRoute("web".to_owned())),
            ),
            (
                ConflictCause::FileInvalid(config_error()).into(),
                format!("the change does not validate against the file on disk; fix the file first:\n{}", config_error()),
            ),
            (
                ConflictCause::TokenUnreadable(token_error()).into(),
                token_error().to_string(),
            ),
            (
                ConflictCause::NothingToResume.into(),
                ResumeError::NothingToResume.to_string(),
            ),
            (
                WriteCause::Read { file: p.clone(), source: io_error() }.into(),
                format!("cannot read {shown}: disk full"),
            ),
            (
                WriteCause::Write { file: p.clone(), source: io_error() }.into(),
                WriteError::Io { path: p.clone(), source: io_error() }.to_string(),
            ),
            (
                WriteCause::Apply(token_error()).into(),
                token_error().to_string(),
            ),
            (
                WriteCause::Resume { file: p.clone(), cause: "disk full".to_owned() }.into(),
                ResumeError::Io { path: p.clone(), reason: "disk full".to_owned() }.to_string(),
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text, "{error:?}");
        }
    }

    /// A cause that is an error of its own stays reachable as the source.
    #[test]
    fn causes_are_kept() {
        use std::error::Error as _;
        let error = ChangeError::from(WriteCause::Write {
            file: path(),
            source: io_error(),
        });
        let source = error.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(source.map(io::Error::kind), Some(io::ErrorKind::Other));
        let error = ChangeError::from(ConflictCause::FileDiffers {
            file: path(),
            cause: EditError::NotToml("x".to_owned()),
        });
        assert!(error.source().is_some_and(|s| s.is::<EditError>()));
    }
}
