//! The cohort under test: [`TestCohort`], a cohort in this process on ephemeral loopback
//! ports, with its admin API and metrics at hand; and the variant it gives a key.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::config::Config;
use super::http::get;
use super::prom::series_value;
use super::sys::PATIENCE;

/// A cohort instance in this process, listening on ephemeral loopback ports.
pub struct TestCohort {
    pub running: Option<::cohort::Running>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

impl TestCohort {
    /// Starts cohort from `config` (or a [`Route`](super::config::Route), alone in a
    /// config), written to `cohort.toml` in a fresh temporary directory that lives as
    /// long as the instance.
    pub async fn start(config: impl Into<Config>) -> TestCohort {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = config.into().write(dir.path());
        TestCohort::start_from(&config_path, dir).await
    }

    /// Starts cohort from a config file the test wrote itself; `dir` lives as long as
    /// the instance (put what must outlive it, such as a `state_dir`, elsewhere).
    pub async fn start_from(config_path: &std::path::Path, dir: tempfile::TempDir) -> TestCohort {
        TestCohort::start_from_with(config_path, dir, ::cohort::StartOptions::new()).await
    }

    /// [`TestCohort::start`] with start options (a resolver of the test's own, say).
    pub async fn start_with(
        config: impl Into<Config>,
        options: ::cohort::StartOptions,
    ) -> TestCohort {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = config.into().write(dir.path());
        TestCohort::start_from_with(&config_path, dir, options).await
    }

    async fn start_from_with(
        config_path: &std::path::Path,
        dir: tempfile::TempDir,
        options: ::cohort::StartOptions,
    ) -> TestCohort {
        let config = ::cohort::config::load(config_path).unwrap_or_else(|e| panic!("{e}"));
        let running = ::cohort::start_with(config, options)
            .await
            .expect("start cohort");
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

    /// Stops this instance and starts a new one from the same config file as it is now
    /// (copied first: the instance's directory goes with it), as a process restart
    /// would; whatever lives outside that directory, such as a `state_dir`, stays.
    pub async fn restart(self) -> TestCohort {
        let kept = tempfile::tempdir().expect("tempdir");
        let kept_path = kept.path().join("cohort.toml");
        std::fs::copy(&self.config_path, &kept_path).expect("copy config");
        self.shutdown().await;
        TestCohort::start_from(&kept_path, kept).await
    }
}

/// The variant `::cohort::cohort::assign` gives `key` under `salt` at `percent`.
pub fn expected_variant(salt: &str, key: &str, percent: f64) -> &'static str {
    let bp = ::cohort::cohort::BasisPoints::from_percent(percent).expect("percent");
    ::cohort::cohort::assign(salt, key.as_bytes(), bp)
        .1
        .as_str()
}

/// The first key of the form `{prefix}-{n}` that `salt` at `percent` puts in `variant`.
pub fn key_in(variant: &str, salt: &str, percent: f64, prefix: &str) -> String {
    (0..10_000)
        .map(|n| format!("{prefix}-{n}"))
        .find(|key| expected_variant(salt, key, percent) == variant)
        .expect("some key lands in the variant")
}
