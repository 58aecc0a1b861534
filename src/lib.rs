//! cohort: a sidecar reverse proxy for staged rollouts.
//!
//! The pure core ([`cohort`], [`config`], [`router`], [`window`]) decides; the shell
//! ([`server`], [`listener`], [`proxy`], [`h1`], [`upstream`], [`admin`], [`metrics`])
//! does I/O; both HTTP engines ([`proxy`] is hyper's, [`h1`] cohort's own) take every
//! request decision from one policy module, `request`.

/// `println!` for command output that may go into a pipe closed early (`cohort status
/// | head -1`): a closed stdout ends the command quietly instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = writeln!(stdout, $($arg)*).and_then(|()| stdout.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

pub mod admin;
pub mod charts;
pub mod client;
pub mod cohort;
pub mod config;
pub mod demo;
pub mod drain;
pub mod guard;
pub mod h1;
pub mod history;
pub mod listener;
pub mod log_filter;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod request;
pub mod request_id;
pub mod request_log;
pub mod rollout;
pub mod router;
pub mod server;
pub mod signals;
pub mod snapshot;
pub mod state_dir;
pub mod status_page;
pub mod status_table;
pub mod tls;
pub mod upstream;
pub mod watch;
pub mod window;
pub mod writeback;

pub use server::{start, Running, StartError};
