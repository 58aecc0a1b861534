//! The `cohort` command's work, beside `main.rs` (which parses the arguments and
//! dispatches): serving, the offline commands, the admin client, the demo, logging.
//! The library knows nothing of it.

/// `println!` for command output that may go into a pipe closed early (`cohort status
/// | head -1`): a closed stdout ends the command quietly instead of panicking.
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

pub mod admin_client;
pub mod demo;
pub mod http_client;
pub mod log_filter;
pub mod logging;
pub mod offline;
pub mod serve;
pub mod signals;
pub mod status_table;

use std::process::ExitCode;

/// Runs `work` to completion on a runtime of the main thread.
pub fn in_runtime(work: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    // The control plane (admin listener, signals, demo) needs little: the main thread
    // (no extra thread, stack or allocator arena). The proxy has its own worker threads.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// The config at `path`, or `None` after printing why it does not load.
pub fn load_or_report(path: &std::path::Path) -> Option<cohort::config::Loaded> {
    match cohort::config::load(path) {
        Ok(config) => Some(config),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}
