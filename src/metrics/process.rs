//! The process metrics a production scrape expects, named and typed as Prometheus' own
//! process collector (client_golang) exports them, so existing dashboards and alerts
//! (`rate(process_cpu_seconds_total[5m])`, `process_open_fds / process_max_fds`) work
//! unchanged.
//!
//! They are read from `/proc/self` when `/metrics` is rendered, never on the request
//! path, and written as Prometheus text beside the recorder's: the recorder's counters
//! are whole numbers, and CPU seconds are not. On systems without `/proc` (anything but
//! Linux) they are left out, as the Go collector leaves them out there; a file that
//! cannot be read leaves out only what it would have given.
// The parsers are tested on every system, but used on Linux only.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::fmt::Write as _;

/// Kernel clock ticks per second in `/proc/<pid>/stat`: `USER_HZ`, which the kernel
/// fixes at 100 in its user-space ABI on every architecture cohort builds for (the Go
/// collector's procfs library assumes the same, rather than calling `sysconf`, which
/// would need `unsafe` here).
const USER_HZ: f64 = 100.0;

/// What one look at `/proc/self` found; `None` where it could not be read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// The process collector of one instance. The start time is read once: it never
/// changes, and reading it needs the boot time as well.
pub struct Collector {
    start_time_seconds: Option<f64>,
}

impl Collector {
    pub fn new() -> Collector {
        Collector {
            start_time_seconds: read_start_time(),
        }
    }

    /// Appends the process families, each with HELP and TYPE, to a text exposition.
    pub fn render(&self, out: &mut String) {
        write_families(out, &read_sample(), self.start_time_seconds);
    }
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}

/// Writes the families in Prometheus text format, HELP texts as client_golang has them.
pub fn write_families(out: &mut String, sample: &Sample, start_time: Option<f64>) {
    let mut family = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(value) = value {
            // Writing into a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
            );
        }
    };
    let float = |v: Option<f64>| v.map(|v| v.to_string());
    let int = |v: Option<u64>| v.map(|v| v.to_string());
    family(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        float(sample.cpu_seconds),
    );
    family(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        int(sample.open_fds),
    );
    family(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        int(sample.max_fds),
    );
    family(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        int(sample.virtual_bytes),
    );
    family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        int(sample.resident_bytes),
    );
    family(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        float(start_time),
    );
}

#[cfg(target_os = "linux")]
fn read_sample() -> Sample {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let stat = read("/proc/self/stat").and_then(|s| parse_stat(&s));
    let status = read("/proc/self/status");
    Sample {
        cpu_seconds: stat.map(|s| (s.utime_ticks + s.stime_ticks) as f64 / USER_HZ),
        virtual_bytes: stat.map(|s| s.vsize_bytes),
        // The stat file counts resident pages, whose size would need `sysconf`; the
        // status file says kibibytes.
        resident_bytes: status
            .as_deref()
            .and_then(|s| status_kib(s, "VmRSS"))
            .map(|kib| kib * 1024),
        // Counting the entries opens the directory, so the count includes that one
        // descriptor, as the Go collector's does.
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64),
        max_fds: read("/proc/self/limits").and_then(|s| max_open_files(&s)),
    }
}

#[cfg(not(target_os = "linux"))]
fn read_sample() -> Sample {
    Sample::default()
}

/// Seconds since the Unix epoch at which this process started: the boot time plus the
/// process's start in ticks after boot.
#[cfg(target_os = "linux")]
fn read_start_time() -> Option<f64> {
    let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    Some(boot as f64 + stat.start_ticks as f64 / USER_HZ)
}

#[cfg(not(target_os = "linux"))]
fn read_start_time() -> Option<f64> {
    None
}

/// The fields of `/proc/<pid>/stat` the collector uses.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    start_ticks: u64,
    vsize_bytes: u64,
}

/// Parses `/proc/<pid>/stat` (proc(5)). The second field is the command name in
/// parentheses, which may itself hold spaces and parentheses, so the numbered fields
/// are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // `rest` starts at field 3 (state); field N is at index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
    })
}

/// A `Key:   1234 kB` line of `/proc/<pid>/status`, in KiB.
fn status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`; `None` when unlimited.
fn max_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The `btime` line of `/proc/stat`: the boot time in seconds since the Unix epoch.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a `)` of its own, as a process may set it.
        let text = "4242 (co) hort) S 1 4242 4242 0 -1 4194560 1969 0 0 0 \
                    250 75 0 0 20 0 3 0 123456 98304000 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17543 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime_ticks: 250,
                stime_ticks: 75,
                start_ticks: 123456,
                vsize_bytes: 98304000,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }

    #[test]
    fn status_limits_and_boot_time_lines_are_read() {
        let status =
            "Name:\tcohort\nVmPeak:\t  200000 kB\nVmSize:\t  96000 kB\nVmRSS:\t    5120 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(5120));
        assert_eq!(status_kib(status, "VmSwap"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            8192                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(8192));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nintr 5\nbtime 1764662400\nprocesses 9\n"),
            Some(1_764_662_400)
        );
        assert_eq!(boot_time("cpu  1 2 3\n"), None);
    }

    #[test]
    fn families_are_written_with_help_and_type_and_missing_ones_left_out() {
        let mut out = String::new();
        let sample = Sample {
            cpu_seconds: Some(3.25),
            resident_bytes: Some(5_242_880),
            virtual_bytes: None,
            open_fds: Some(12),
            max_fds: Some(1024),
        };
        write_families(&mut out, &sample, Some(1_764_662_400.5));
        assert!(out.contains(
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
             # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3.25\n\n"
        ));
        assert!(out.contains("# TYPE process_open_fds gauge\nprocess_open_fds 12\n"));
        assert!(out.contains("process_max_fds 1024\n"));
        assert!(out.contains("process_resident_memory_bytes 5242880\n"));
        assert!(out.contains("process_start_time_seconds 1764662400.5\n"));
        assert!(!out.contains("process_virtual_memory_bytes"), "{out}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausibly() {
        let sample = read_sample();
        assert!(
            sample.resident_bytes.is_some_and(|b| b > 1 << 20),
            "{sample:?}"
        );
        assert!(sample.virtual_bytes >= sample.resident_bytes, "{sample:?}");
        assert!(sample.open_fds.is_some_and(|n| n >= 3), "{sample:?}");
        assert!(sample.cpu_seconds.is_some_and(|s| s >= 0.0), "{sample:?}");
        let start = read_start_time().expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 24.0 * 3600.0,
            "{start} vs {now}"
        );
    }
}
