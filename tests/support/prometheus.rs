//! A real Prometheus server (Debian package `prometheus`) for tests: one process on a
//! loopback port with its data in a temp dir, scraping the given cohort admin
//! listeners every second; killed on drop (or by [`Prometheus::stop`]).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A Prometheus server on a loopback port with its data in a temp dir; killed on drop.
pub struct Prometheus {
    child: Child,
    pub base: String,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (cohort admin listeners) every second and,
    /// with `rules` (the text of a rule file), evaluating them every second.
    pub async fn start(targets: &[SocketAddr], rules: Option<&str>) -> Prometheus {
        Prometheus::start_on(free_port(), targets, rules).await
    }

    /// [`Prometheus::start`] on `port` (from [`free_port`]), for clients configured
    /// with its address before it runs.
    pub async fn start_on(port: u16, targets: &[SocketAddr], rules: Option<&str>) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let rule_files = match rules {
            Some(text) => {
                std::fs::write(dir.path().join("rules.yml"), text).expect("write rules");
                "rule_files:\n  - rules.yml\n"
            }
            None => "",
        };
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             {rule_files}\
             scrape_configs:\n  - job_name: cohort\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        promtool_check_config(dir.path());

        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .current_dir(dir.path())
            .arg("--config.file=prometheus.yml")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run prometheus ({e}): install the Debian package `prometheus` \
                     (scripts/test does)"
                )
            });
        let mut prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            if prometheus.ready().await {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the server (what a Prometheus outage looks like to its clients).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn ready(&self) -> bool {
        let url: http::Uri = match format!("{}/-/ready", self.base).parse() {
            Ok(url) => url,
            Err(_) => return false,
        };
        let request = http::Request::get(url)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        matches!(super::client().request(request).await, Ok(r) if r.status() == 200)
    }

    /// `GET /api/v1/...`: the `data` of a successful answer; fails the test otherwise.
    pub async fn api(&self, path: &str) -> Value {
        let answer = super::get(&format!("{}/api/v1/{path}", self.base), &[]).await;
        let body: Value = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", answer.text()));
        assert_eq!(
            (answer.status, body["status"].as_str()),
            (200, Some("success")),
            "{path}: {body}"
        );
        body["data"].clone()
    }

    /// An instant query's result vector.
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("query?query={}", encode(promql))).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The alerts Prometheus holds now (pending and firing).
    pub async fn alerts(&self) -> Vec<Value> {
        self.api("alerts").await["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A free loopback port: Prometheus does not report the port it bound for `:0`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `promtool check config` on `prometheus.yml` in `dir`.
fn promtool_check_config(dir: &std::path::Path) {
    let out = Command::new("promtool")
        .current_dir(dir)
        .args(["check", "config", "prometheus.yml"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install the Debian package `prometheus` (scripts/test does)")
        });
    assert!(
        out.status.success(),
        "promtool check config failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
