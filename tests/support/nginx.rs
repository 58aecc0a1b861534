//! Debian's NGINX as a reverse proxy on 127.0.0.1, for tests that put cohort beside it:
//! [`Nginx::start`] writes a config into a throwaway prefix directory (pid, logs and
//! every temp path inside it, so nothing touches /var), starts one process
//! (`master_process off`: no orphaned worker if the test dies) and waits until every
//! listener answers a connect. Dropping it kills the process by its PID.
//!
//! A missing `nginx` fails the test with a message naming `scripts/test`, which
//! installs it; it never skips.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sys::PATIENCE;

/// A running NGINX.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

/// The `nginx` binary: on `PATH`, else where Debian puts it (`/usr/sbin` is not on
/// every user's `PATH`).
fn binary() -> &'static str {
    const DEBIAN: &str = "/usr/sbin/nginx";
    let on_path = Command::new("nginx")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if on_path || !Path::new(DEBIAN).exists() {
        "nginx"
    } else {
        DEBIAN
    }
}

/// `nginx -v`'s version (`1.22.1`), or a panic naming `scripts/test`.
pub fn nginx_version() -> String {
    let out = Command::new(binary())
        .arg("-v")
        .output()
        .unwrap_or_else(|e| {
            panic!("nginx is not installed ({e}): run scripts/test as root, which installs it")
        });
    // nginx prints `nginx version: nginx/1.22.1` on stderr.
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.trim()
        .rsplit('/')
        .next()
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("cannot read nginx's version from {text:?}"))
}

/// `n` distinct loopback ports nothing listens on right now, for NGINX to bind (it
/// binds its own sockets; a port taken meanwhile makes [`Nginx::start`] try again). All
/// are held until all are chosen: a port let go at once may be handed out again.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

impl Nginx {
    /// Starts NGINX with `http` (the inside of its `http { }` block: upstreams and
    /// servers), listening on `ports` (which `http` names), and waits until each accepts.
    /// `http` is built by `make(ports)` so a port taken meanwhile can be replaced.
    pub fn start(listeners: usize, make: impl Fn(&[u16]) -> String) -> Nginx {
        nginx_version();
        let mut last_error = String::new();
        for _ in 0..3 {
            let ports = free_ports(listeners);
            match Nginx::try_start(&make(&ports), &ports) {
                Ok(nginx) => return nginx,
                Err(e) => last_error = e,
            }
        }
        panic!("nginx did not start: {last_error}");
    }

    fn try_start(http: &str, ports: &[u16]) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = dir.path();
        let conf = prefix.join("nginx.conf");
        let p = |name: &str| prefix.join(name).display().to_string();
        // Debian builds absolute temp paths under /var/lib/nginx: each one is set here.
        let text = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\n\
             error_log {log} info;\nevents {{ worker_connections 4096; }}\n\
             http {{\n    access_log off;\n    default_type text/plain;\n\
             client_body_temp_path {body};\n    proxy_temp_path {proxy};\n\
             fastcgi_temp_path {fcgi};\n    uwsgi_temp_path {uwsgi};\n    scgi_temp_path {scgi};\n\
             {http}\n}}\n",
            pid = p("nginx.pid"),
            log = p("error.log"),
            body = p("body"),
            proxy = p("proxy"),
            fcgi = p("fastcgi"),
            uwsgi = p("uwsgi"),
            scgi = p("scgi"),
        );
        std::fs::write(&conf, text).expect("write nginx.conf");
        let check = Command::new(binary())
            .args(["-t", "-q", "-p"])
            .arg(prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .output()
            .map_err(|e| format!("nginx -t: {e}"))?;
        if !check.status.success() {
            panic!(
                "nginx config is invalid: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let child = Command::new(binary())
            .arg("-p")
            .arg(prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn nginx: {e}"))?;
        let mut nginx = Nginx { child, dir };
        let deadline = Instant::now() + PATIENCE;
        for &port in ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
                if let Ok(Some(status)) = nginx.child.try_wait() {
                    return Err(format!("exited ({status}): {}", nginx.error_log()));
                }
                if Instant::now() > deadline {
                    return Err(format!("port {port} never answered: {}", nginx.error_log()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // A port another process took meanwhile answers the connects above while this
        // NGINX retries its bind (and then exits): its log says so at once.
        std::thread::sleep(Duration::from_millis(50));
        let log = nginx.error_log();
        if log.contains("bind()") {
            return Err(format!("a port was taken: {log}"));
        }
        if let Ok(Some(status)) = nginx.child.try_wait() {
            return Err(format!("exited ({status}): {log}"));
        }
        Ok(nginx)
    }

    /// The prefix directory (config, logs, temp files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What NGINX logged so far (`error_log` at `info`: why it refused a request).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
