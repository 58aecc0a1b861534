//! Running the real `cohort` binary: a child that is always killed when the test ends,
//! its output collected line by line, waits with deadlines, and signals sent with `kill`.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `cohort` binary Cargo built for this test run.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cohort")
}

/// Runs `cohort ARGS` to completion (bounded by `limit`) and returns its output.
pub fn run_to_end(args: &[&str], limit: Duration) -> Output {
    run_in(None, args, limit)
}

/// [`run_to_end`] in working directory `dir`.
pub fn run_in(dir: Option<&Path>, args: &[&str], limit: Duration) -> Output {
    let mut child = Cohort::spawn_in(dir, args, &[]);
    let status = child.wait_exit(limit);
    let (stdout, stderr) = child.take_output();
    Output {
        status,
        stdout: stdout.into_bytes(),
        stderr: stderr.into_bytes(),
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// A running `cohort` process. Dropping it kills the process (if still running).
pub struct Cohort {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Cohort {
    pub fn spawn(args: &[&str]) -> Cohort {
        Cohort::spawn_with(args, &[])
    }

    /// Spawns with extra environment variables (`RUST_LOG` is cleared unless given).
    pub fn spawn_with(args: &[&str], env: &[(&str, &str)]) -> Cohort {
        Cohort::spawn_in(None, args, env)
    }

    /// Spawns in working directory `dir` (the test's own when `None`).
    pub fn spawn_in(dir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Cohort {
        let mut cmd = Command::new(bin());
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd.args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout piped"), stdout.clone()),
            collect(child.stderr.take().expect("stderr piped"), stderr.clone()),
        ];
        Cohort {
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout lock").clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Sends `SIGNAL` (e.g. "TERM") with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits for the exit; panics (after killing the process) past `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "cohort did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Like [`Cohort::wait_exit`], without blocking the async runtime.
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "cohort did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `stderr` contains `needle`; panics with the output past `limit`.
    pub async fn wait_stderr(&mut self, needle: &str, limit: Duration) -> String {
        self.wait_output(Stream::Stderr, needle, limit).await
    }

    /// Waits until `stdout` contains `needle`; panics with the output past `limit`.
    pub async fn wait_stdout(&mut self, needle: &str, limit: Duration) -> String {
        self.wait_output(Stream::Stdout, needle, limit).await
    }

    async fn wait_output(&mut self, stream: Stream, needle: &str, limit: Duration) -> String {
        let read = |me: &Cohort| match stream {
            Stream::Stdout => me.stdout(),
            Stream::Stderr => me.stderr(),
        };
        let deadline = Instant::now() + limit;
        loop {
            let text = read(self);
            if text.contains(needle) {
                return text;
            }
            if let Some(status) = self.try_exit() {
                // The readers may still be copying the last bytes.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let text = read(self);
                if text.contains(needle) {
                    return text;
                }
                panic!(
                    "cohort exited ({status}) before writing {needle:?} to {stream:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "cohort wrote no {needle:?} to {stream:?} within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the "cohort is serving" log line and returns (proxy, admin) addresses.
    /// Works with both log formats.
    pub async fn wait_serving(&mut self, limit: Duration) -> (SocketAddr, SocketAddr) {
        let text = self.wait_stderr("cohort is serving", limit).await;
        let line = strip_ansi(
            text.lines()
                .find(|l| l.contains("cohort is serving"))
                .expect("the line is there"),
        );
        (field_addr(&line, "proxy"), field_addr(&line, "admin"))
    }

    /// Waits for the exit, then joins the readers and returns (stdout, stderr) in full.
    pub fn take_output(&mut self) -> (String, String) {
        assert!(
            self.status.is_some(),
            "take_output before the process exited"
        );
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (self.stdout(), self.stderr())
    }
}

impl Drop for Cohort {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(pipe: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => into.lock().expect("output lock").push_str(&line),
            }
        }
    })
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `proxy=127.0.0.1:8080` (text log) or `"proxy":"127.0.0.1:8080"` (JSON log).
fn field_addr(line: &str, field: &str) -> SocketAddr {
    let text_form = format!("{field}=");
    let json_form = format!("\"{field}\":\"");
    let start = line
        .find(&json_form)
        .map(|i| i + json_form.len())
        .or_else(|| line.find(&text_form).map(|i| i + text_form.len()))
        .unwrap_or_else(|| panic!("no {field} address in {line:?}"));
    let value: String = line[start..]
        .chars()
        .take_while(|c| !matches!(c, '"' | ' ' | ','))
        .collect();
    value
        .parse()
        .unwrap_or_else(|e| panic!("{field} address {value:?} in {line:?}: {e}"))
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.to_str().expect("utf-8 temp path").to_owned()
}
