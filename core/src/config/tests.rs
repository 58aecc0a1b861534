use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::*;
use crate::cohort::BasisPoints;

const FILE: &str = "config/cohort.toml";

fn parse_ok(text: &str) -> Config {
    match parse(text, Path::new(FILE)) {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn parse_err(text: &str) -> String {
    match parse(text, Path::new(FILE)) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &str = r#"
[[routes]]
name = "default"
salt = "s1"
stable = { endpoints = ["http://127.0.0.1:9001"] }
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.listen.address, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.admin.address, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.listen.workers, 0);
    assert_eq!(c.listen.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.listen.shutdown_delay, Duration::ZERO);
    assert_eq!(
        c.listen.variant_header.as_ref().map(HeaderName::as_str),
        Some("x-cohort-variant")
    );
    let r = &c.routes[0];
    assert_eq!(r.path_prefix, "/");
    assert_eq!(r.canary_bp, BasisPoints::ZERO);
    assert!(r.sticky.is_empty());
    assert!(r.canary.endpoints.is_empty());
    assert_eq!(r.timeouts, Timeouts::default());
    // Envoy's stream_idle_timeout default.
    assert_eq!(r.timeouts.idle, Duration::from_secs(300));
}

#[test]
fn full_route_is_compiled() {
    let c = parse_ok(
        r#"
[listen]
address = "127.0.0.1:0"
workers = 2
drain_timeout = "5s"
shutdown_delay = "5s"
variant_header = ""
access_log = true

[[routes]]
name = "shop"
host = "Shop.Example.com"
path_prefix = "/api"
sticky = ["header:X-User-Id", "cookie:session", "ip"]
salt = "checkout-v2"
canary_percent = 2.5
stable = { endpoints = ["http://stable:9001", "http://[::1]:9003"] }
canary = { endpoints = ["http://canary"] }
override = { trusted = ["10.0.0.0/8", "127.0.0.1"] }
timeouts = { connect = "250ms", request = "2s", idle = "90s" }
"#,
    );
    assert_eq!(c.listen.variant_header, None);
    assert_eq!(c.listen.drain_timeout, Duration::from_secs(5));
    assert_eq!(c.listen.shutdown_delay, Duration::from_secs(5));
    let r = &c.routes[0];
    assert_eq!(r.host.as_deref(), Some("shop.example.com"));
    assert_eq!(
        r.sticky,
        vec![
            StickySource::Header(HeaderName::from_static("x-user-id")),
            StickySource::Cookie("session".into()),
            StickySource::Ip
        ]
    );
    assert_eq!(r.canary_bp.get(), 250);
    assert_eq!(r.stable.endpoints[0].authority(), "stable:9001");
    assert_eq!(r.stable.endpoints[1].authority(), "[::1]:9003");
    assert_eq!(r.canary.endpoints[0].authority(), "canary:80");
    let o = r.override_.as_ref().unwrap();
    assert_eq!(o.header.as_str(), "x-cohort-variant");
    assert_eq!(o.cookie, "cohort_variant");
    assert!(o.trusts("10.1.2.3".parse().unwrap()));
    assert!(o.trusts("::ffff:10.1.2.3".parse().unwrap()));
    assert!(o.trusts("127.0.0.1".parse().unwrap()));
    assert!(!o.trusts("127.0.0.2".parse().unwrap()));
    assert_eq!(r.timeouts.connect, Duration::from_millis(250));
    assert_eq!(r.timeouts.request, Duration::from_secs(2));
    assert_eq!(r.timeouts.idle, Duration::from_secs(90));
}

#[test]
fn errors_name_file_key_and_reason() {
    let err = parse_err(&MINIMAL.replace("salt = \"s1\"", "salt = \"s1\"\ncanary_percent = 100.5"));
    assert_eq!(
        err,
        "config/cohort.toml: routes[0].canary_percent: 100.5 is above 100"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = parse_err(
        r#"
[[routes]]
name = "a"
sticky = ["header:x-user-id", "query:id"]
canary_percent = 0.001
stable = { endpoints = ["ftp://x"] }
canary = { endpoints = [] }

[[routes]]
name = "a"
salt = "s"
stable = { endpoints = ["http://127.0.0.1:1"] }
"#,
    );
    for expected in [
        "routes[0].sticky[1]: unknown sticky source \"query:id\"",
        "routes[0].salt: is required",
        "routes[0].canary_percent: 0.001 is finer than the 0.01 step",
        "routes[0].stable.endpoints[0]: \"ftp://x\" must be an absolute http:// URL",
        "routes[1].name: duplicate route name \"a\"",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(err.lines().all(|l| l.starts_with("config/cohort.toml: ")));
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let err = parse_err(&MINIMAL.replace("salt = \"s1\"", "salt = \"s1\"\ncanary_procent = 5"));
    assert!(
        err.starts_with(
            "config/cohort.toml: routes[0].canary_procent: unknown field `canary_procent`"
        ),
        "{err}"
    );
    let err = parse_err(&format!("[listen]\nadress = \"x\"\n{MINIMAL}"));
    assert!(
        err.contains("listen.adress: unknown field `adress`"),
        "{err}"
    );
}

#[test]
fn wrong_types_name_the_key() {
    let err =
        parse_err(&MINIMAL.replace("salt = \"s1\"", "salt = \"s1\"\ncanary_percent = \"ten\""));
    assert!(
        err.starts_with("config/cohort.toml: routes[0].canary_percent: "),
        "{err}"
    );
}

#[test]
fn toml_syntax_errors_carry_a_line() {
    let err = parse_err("[[routes]\nname = 1");
    assert!(err.starts_with("config/cohort.toml: "), "{err}");
    assert!(err.contains("(line 1)"), "{err}");
}

#[test]
fn canary_needs_endpoints_only_when_it_gets_traffic() {
    let err = parse_err(&MINIMAL.replace("salt = \"s1\"", "salt = \"s1\"\ncanary_percent = 5"));
    assert!(
        err.contains(
            "routes[0].canary.endpoints: needs at least one endpoint while canary_percent is 5"
        ),
        "{err}"
    );
}

#[test]
fn bad_values_are_rejected() {
    for (patch, expected) in [
        (
            "path_prefix = \"api\"",
            "routes[0].path_prefix: \"api\" must start with '/'",
        ),
        (
            "host = \"a.com:8080\"",
            "routes[0].host: \"a.com:8080\" must be a bare host",
        ),
        (
            "override = { trusted = [\"10.0.0.0/33\"] }",
            "routes[0].override.trusted[0]: \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            "timeouts = { connect = \"soon\" }",
            "routes[0].timeouts.connect: \"soon\" is not a duration",
        ),
        (
            "timeouts = { request = \"0s\" }",
            "routes[0].timeouts.request: must be greater than zero",
        ),
        (
            // Beyond what a deadline (the clock's now + timeout) can hold on Linux.
            "timeouts = { request = \"10000000000000000000s\" }",
            "routes[0].timeouts.request: must be at most 24h",
        ),
        (
            "timeouts = { connect = \"25h\" }",
            "routes[0].timeouts.connect: must be at most 24h",
        ),
        (
            // Never off: a quiet long-poll route sets a long one instead.
            "timeouts = { idle = \"0s\" }",
            "routes[0].timeouts.idle: must be greater than zero",
        ),
        (
            "timeouts = { idle = \"2d\" }",
            "routes[0].timeouts.idle: must be at most 24h",
        ),
        (
            "timeouts = { idle = \"forever\" }",
            "routes[0].timeouts.idle: \"forever\" is not a duration",
        ),
        (
            "sticky = [\"cookie:\"]",
            "routes[0].sticky[0]: \"\" is not a valid cookie name",
        ),
        (
            "sticky = [\"header:bad header\"]",
            "routes[0].sticky[0]: \"bad header\" is not a valid header name",
        ),
        ("name2 = 1", "routes[0].name2: unknown field `name2`"),
    ] {
        let err = parse_err(&MINIMAL.replace("salt = \"s1\"", &format!("salt = \"s1\"\n{patch}")));
        assert!(
            err.contains(expected),
            "for {patch}: missing {expected:?} in:\n{err}"
        );
    }
    let err = parse_err(&format!("[listen]\naddress = \"localhost\"\n{MINIMAL}"));
    assert!(
        err.contains("listen.address: \"localhost\" is not an IP address with port"),
        "{err}"
    );
    let err = parse_err(&format!(
        "[listen]\nworkers = 4611686018427387904\n{MINIMAL}"
    ));
    assert!(
        err.contains("listen.workers: must be at most 1024 (0 = one per CPU)"),
        "{err}"
    );
    parse_ok(&format!(
        "[listen]\nworkers = 1024\n{MINIMAL}\ntimeouts = {{ request = \"24h\" }}"
    ));
    for (delay, expected) in [
        ("\"1h 1s\"", "listen.shutdown_delay: must be at most 1h"),
        (
            "\"10000000000000000000s\"",
            "listen.shutdown_delay: must be at most 1h",
        ),
        (
            "\"soon\"",
            "listen.shutdown_delay: \"soon\" is not a duration such as",
        ),
        ("5", "listen.shutdown_delay: invalid type: integer"),
    ] {
        let err = parse_err(&format!("[listen]\nshutdown_delay = {delay}\n{MINIMAL}"));
        assert!(err.contains(expected), "for {delay}: {err}");
    }
    for (delay, expected) in [("0s", 0), ("1h", 3600), ("2s 500ms", 2)] {
        let c = parse_ok(&format!(
            "[listen]\nshutdown_delay = \"{delay}\"\n{MINIMAL}"
        ));
        assert_eq!(c.listen.shutdown_delay.as_secs(), expected, "{delay}");
    }
    let err = parse_err(&MINIMAL.replace("name = \"default\"", "name = \"a b\""));
    assert!(
        err.contains("routes[0].name: \"a b\" may contain only"),
        "{err}"
    );
    let err = parse_err("");
    assert!(
        err.contains("routes: at least one [[routes]] entry is required"),
        "{err}"
    );
}

#[test]
fn missing_stable_is_reported_once() {
    let err = parse_err("[[routes]]\nname = \"x\"\nsalt = \"s\"\n");
    assert_eq!(err, "config/cohort.toml: routes[0].stable: is required");
    let err = parse_err("[[routes]]\nname = \"x\"\nsalt = \"s\"\nstable = { endpoints = [] }\n");
    assert_eq!(
        err,
        "config/cohort.toml: routes[0].stable.endpoints: needs at least one endpoint"
    );
}

#[test]
fn integer_and_float_percentages_are_equivalent() {
    let a = parse_ok(&MINIMAL.replace(
        "salt = \"s1\"",
        "salt = \"s1\"\ncanary_percent = 10\ncanary = { endpoints = [\"http://c:1\"] }",
    ));
    let b = parse_ok(&MINIMAL.replace(
        "salt = \"s1\"",
        "salt = \"s1\"\ncanary_percent = 10.0\ncanary = { endpoints = [\"http://c:1\"] }",
    ));
    assert_eq!(a.routes[0].canary_bp, b.routes[0].canary_bp);
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let c = parse(
        &format!("state_dir = \"state\"\n[admin]\ntoken_file = \"secrets/token\"\n{MINIMAL}"),
        Path::new("/etc/cohort/cohort.toml"),
    )
    .unwrap();
    assert_eq!(c.state_dir, Some(PathBuf::from("/etc/cohort/state")));
    assert_eq!(
        c.admin.token_file,
        Some(PathBuf::from("/etc/cohort/secrets/token"))
    );
}

#[test]
fn effective_config_serializes_as_written() {
    let c = parse_ok(&MINIMAL.replace("salt = \"s1\"", "salt = \"s1\"\ncanary_percent = 2.5\nsticky = [\"header:x-user-id\", \"ip\"]\ncanary = { endpoints = [\"http://c:1\"] }"));
    let json = serde_json::to_value(&c).unwrap();
    let route = &json["routes"][0];
    assert_eq!(route["canary_percent"], serde_json::json!(2.5));
    assert_eq!(
        route["sticky"],
        serde_json::json!(["header:x-user-id", "ip"])
    );
    assert_eq!(
        route["stable"]["endpoints"],
        serde_json::json!(["http://127.0.0.1:9001"])
    );
    assert_eq!(route["timeouts"]["connect"], serde_json::json!("1s"));
}

const ROLLOUT_ROUTE: &str = r#"
[[routes]]
name = "checkout"
salt = "s1"
stable = { endpoints = ["http://127.0.0.1:9001"] }
canary = { endpoints = ["http://127.0.0.1:9002"] }
"#;

#[test]
fn rollout_and_guard_are_compiled() {
    let c = parse_ok(&format!(
        "state_dir = \"state\"\n{ROLLOUT_ROUTE}[routes.rollout]\nstart = \"2026-12-01T09:00:00Z\"\nsteps = [1, 5, 25, 50, 100]\nstep_every = \"10m\"\n[routes.guard]\nwindow = \"30s\"\nmin_requests = 50\nmax_error_ratio = 0.05\nmax_error_ratio_vs_stable = 0.02\nmax_p99 = \"500ms\"\naction = \"hold\"\non_rollback = \"http://127.0.0.1:9000/hooks/cohort\"\n"
    ));
    let r = &c.routes[0];
    let rollout = r.rollout.as_ref().unwrap();
    assert_eq!(
        rollout.steps.iter().map(|b| b.get()).collect::<Vec<_>>(),
        [100, 500, 2500, 5000, 10_000]
    );
    assert_eq!(rollout.step_every, Duration::from_secs(600));
    assert_eq!(rollout.start, 1_796_115_600_000);
    let guard = r.guard.as_ref().unwrap();
    assert_eq!(guard.action, crate::rollout::GuardAction::Hold);
    assert_eq!(guard.max_p99, Some(Duration::from_millis(500)));
    assert_eq!(
        r.rollout_identity(),
        "checkout\u{0}s1\u{0}2026-12-01T09:00:00Z"
    );
    // A TOML date-time works as well as a string.
    let c = parse_ok(&format!("{ROLLOUT_ROUTE}[routes.rollout]\nstart = 2026-12-01T09:00:00Z\nsteps = [1, 2.5]\nstep_every = \"1m\"\n"));
    assert_eq!(
        c.routes[0].rollout.as_ref().unwrap().start,
        1_796_115_600_000
    );
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(
        json["routes"][0]["rollout"]["steps"],
        serde_json::json!([1, 2.5]),
        "whole percentages are integers, as in /routes"
    );
}

#[test]
fn bad_rollouts_and_guards_are_rejected() {
    for (extra, expected) in [
        ("[routes.rollout]\nstart = \"soon\"\nsteps = [1]\nstep_every = \"1m\"", "routes[0].rollout.start: \"soon\" is not an RFC 3339 time"),
        ("[routes.rollout]\nstart = \"2026-12-01T09:00:00Z\"\nsteps = [5, 1]\nstep_every = \"1m\"", "routes[0].rollout.steps[1]: 1 is below the step before it"),
        ("[routes.rollout]\nstart = \"2026-12-01T09:00:00Z\"\nsteps = []\nstep_every = \"1m\"", "routes[0].rollout.steps: needs at least one step"),
        ("[routes.rollout]\nstart = \"2026-12-01T09:00:00Z\"\nsteps = [101]\nstep_every = \"1m\"", "routes[0].rollout.steps[0]: 101 is above 100"),
        ("[routes.rollout]\nstart = \"2026-12-01T09:00:00Z\"\nsteps = [1]\nstep_every = \"0s\"", "routes[0].rollout.step_every: must be greater than zero"),
        ("[routes.guard]\nmax_error_ratio = 0.05\naction = \"hold\"", "routes[0].guard.action: \"hold\" needs a [routes.rollout]"),
        ("[routes.guard]\nmin_requests = 5", "routes[0].guard: needs at least one of max_error_ratio"),
        ("[routes.guard]\nmax_error_ratio = 1.5", "routes[0].guard.max_error_ratio: 1.5 is not a ratio from 0 to 1"),
        ("[routes.guard]\nmax_error_ratio = 0.1\nwindow = \"2h\"", "routes[0].guard.window: must be at most 1h"),
        ("[routes.guard]\nmax_error_ratio = 0.1\naction = \"panic\"", "routes[0].guard.action: unknown action \"panic\""),
        ("[routes.guard]\nmax_error_ratio = 0.1\non_rollback = \"ftp://x\"", "routes[0].guard.on_rollback: \"ftp://x\" must be an http:// URL"),
        ("[routes.guard]\nmax_error_ratio = 0.1\nmax_error_rate = 0.1", "routes[0].guard.max_error_rate: unknown field"),
    ] {
        let err = parse_err(&format!("{ROLLOUT_ROUTE}{extra}\n"));
        assert!(err.contains(expected), "for {extra:?}: missing {expected:?} in:\n{err}");
    }
    // A rollout that reaches above 0 needs canary endpoints.
    let err = parse_err("[[routes]]\nname = \"x\"\nsalt = \"s\"\nstable = { endpoints = [\"http://a:1\"] }\n[routes.rollout]\nstart = \"2026-12-01T09:00:00Z\"\nsteps = [0, 5]\nstep_every = \"1m\"\n");
    assert!(
        err.contains(
            "routes[0].canary.endpoints: needs at least one endpoint while the rollout reaches 5"
        ),
        "{err}"
    );
}

#[test]
fn sequential_guards_are_compiled_and_checked() {
    use crate::rollout::{sequential, Method};
    let c = parse_ok(&format!(
        "{ROLLOUT_ROUTE}[routes.guard]\nmethod = \"sequential\"\nalpha = 0.05\nmin_effect = 0.02\nlatency_over = \"250ms\"\n"
    ));
    let guard = c.routes[0].guard.as_ref().unwrap();
    assert_eq!(
        guard.method,
        Method::Sequential(sequential::Settings {
            alpha: 0.05,
            min_effect: 0.02,
            latency_over: Some(Duration::from_millis(250)),
        })
    );
    let c = parse_ok(&format!(
        "{ROLLOUT_ROUTE}[routes.guard]\nmethod = \"sequential\"\n"
    ));
    assert_eq!(
        c.routes[0].guard.as_ref().unwrap().method,
        Method::Sequential(sequential::Settings {
            alpha: sequential::DEFAULT_ALPHA,
            min_effect: sequential::DEFAULT_MIN_EFFECT,
            latency_over: None,
        }),
        "no limits needed: the evidence is the judge"
    );
    assert_eq!(
        crate::rollout::describe_guard(c.routes[0].guard.as_ref().unwrap()),
        "action rollback, window 30s, min_requests 50, method sequential (alpha 0.01, min_effect 0.01)"
    );
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["routes"][0]["guard"]["method"], "sequential");
    assert_eq!(json["routes"][0]["guard"]["alpha"], 0.01);
    for (extra, expected) in [
        ("method = \"bayes\"", "routes[0].guard.method: unknown method \"bayes\""),
        ("method = \"sequential\"\nalpha = 0", "routes[0].guard.alpha: 0 must be above 0 and below 1"),
        ("method = \"sequential\"\nalpha = 1.0", "routes[0].guard.alpha: 1 must be above 0 and below 1"),
        ("method = \"sequential\"\nmin_effect = -0.1", "routes[0].guard.min_effect: -0.1 must be"),
        ("method = \"sequential\"\nlatency_over = \"300ms\"", "routes[0].guard.latency_over: \"300ms\" must be a bound of the duration histogram: one of 0.5ms"),
        ("method = \"sequential\"\nmax_error_ratio = 0.05", "routes[0].guard: method = \"sequential\" judges by evidence"),
        ("max_error_ratio = 0.05\nalpha = 0.01", "routes[0].guard.alpha: belongs to method = \"sequential\""),
    ] {
        let err = parse_err(&format!("{ROLLOUT_ROUTE}[routes.guard]\n{extra}\n"));
        assert!(err.contains(expected), "for {extra:?}: missing {expected:?} in:\n{err}");
    }
    // A failed sequential test is final, so a hold would never end.
    let err = parse_err(&format!("{ROLLOUT_ROUTE}[routes.rollout]\nstart = \"2026-12-01T09:00:00Z\"\nsteps = [1, 5]\nstep_every = \"1m\"\n[routes.guard]\nmethod = \"sequential\"\naction = \"hold\"\n"));
    assert!(
        err.contains("routes[0].guard.action: method = \"sequential\" fails for good"),
        "{err}"
    );
}

#[test]
fn a_prometheus_source_is_a_base_url() {
    use crate::rollout::Source;
    for (method, limits) in [
        ("threshold", "max_error_ratio = 0.05\n"),
        ("sequential", ""),
    ] {
        let c = parse_ok(&format!(
            "{ROLLOUT_ROUTE}[routes.guard]\nmethod = \"{method}\"\n{limits}source = {{ prometheus = \"http://prometheus.monitoring:9090/prom/\" }}\n"
        ));
        let guard = c.routes[0].guard.as_ref().unwrap();
        assert_eq!(
            guard.source,
            Source::Prometheus {
                url: "http://prometheus.monitoring:9090/prom".into()
            },
            "the trailing slash is dropped: the API path is appended"
        );
        assert_eq!(
            c.routes[0].fleet_source(),
            Some("http://prometheus.monitoring:9090/prom")
        );
        assert!(crate::rollout::describe_guard(guard)
            .ends_with("fleet counts from Prometheus at http://prometheus.monitoring:9090/prom"));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json["routes"][0]["guard"]["source"]["prometheus"],
            "http://prometheus.monitoring:9090/prom"
        );
    }
    let c = parse_ok(&format!(
        "{ROLLOUT_ROUTE}[routes.guard]\nmax_error_ratio = 0.05\n"
    ));
    assert_eq!(c.routes[0].guard.as_ref().unwrap().source, Source::Local);
    assert_eq!(c.routes[0].fleet_source(), None);
    for (source, expected) in [
        ("{ prometheus = \"prometheus:9090\" }", "routes[0].guard.source.prometheus: \"prometheus:9090\" must be Prometheus' http:// base URL"),
        ("{ prometheus = \"https://prometheus:9090\" }", "routes[0].guard.source.prometheus: \"https://prometheus:9090\" must be"),
        ("{ prometheus = \"http://prometheus:9090/?x=1\" }", "must be Prometheus' http:// base URL"),
        ("{ prometheus = \"\" }", "must be Prometheus' http:// base URL"),
        ("{ graphite = \"http://g:80\" }", "unknown field `graphite`"),
        ("\"http://prometheus:9090\"", "routes[0].guard.source"),
    ] {
        let err = parse_err(&format!(
            "{ROLLOUT_ROUTE}[routes.guard]\nmax_error_ratio = 0.05\nsource = {source}\n"
        ));
        assert!(err.contains(expected), "for {source:?}: missing {expected:?} in:\n{err}");
    }
}

#[test]
fn named_files_lists_every_file_once_resolved() {
    let c = parse(
        r#"
[listen]
tls = { cert = "tls/cert.pem", key = "tls/key.pem", client_ca = "tls/clients.pem" }
[admin]
token_file = "secrets/token"
[[routes]]
name = "a"
salt = "s"
host = "a.example"
tls = { cert = "tls/a.pem", key = "tls/key.pem" }
stable = { endpoints = ["https://10.0.0.1:443"], tls = { ca = "ca.pem", client_cert = "me.pem", client_key = "me.key" } }
canary = { endpoints = ["https://10.0.0.2:443"], tls = { ca = "ca.pem" } }
"#,
        Path::new("/etc/cohort/cohort.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = c
        .named_files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "/etc/cohort/tls/cert.pem",
            "/etc/cohort/tls/key.pem",
            "/etc/cohort/tls/clients.pem",
            "/etc/cohort/secrets/token",
            "/etc/cohort/tls/a.pem",
            "/etc/cohort/ca.pem",
            "/etc/cohort/me.pem",
            "/etc/cohort/me.key",
        ]
    );
    assert!(parse_ok(MINIMAL).named_files().is_empty());
}

#[test]
fn trusted_proxies_are_cidrs_or_addresses() {
    assert!(parse_ok(MINIMAL).listen.trusted_proxies.is_empty());
    let c = parse_ok(&format!(
        "[listen]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"fd00::/8\", \"10.1.2.3/16\"]\n{MINIMAL}"
    ));
    let nets: Vec<String> = c
        .listen
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    // A single address is a /32 (/128); host bits are dropped, as override.trusted does.
    assert_eq!(
        nets,
        ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8", "10.1.0.0/16"]
    );
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["listen"]["trusted_proxies"][1], "192.0.2.7/32");
    let err = parse_err(&format!(
        "[listen]\ntrusted_proxies = [\"10.0.0.0/8\", \"ingress\"]\n{MINIMAL}"
    ));
    assert!(
        err.contains(
            "config/cohort.toml: listen.trusted_proxies[1]: \"ingress\" is not a CIDR such as \"10.0.0.0/8\" or an IP address"
        ),
        "{err}"
    );
    let err = parse_err(&format!(
        "[listen]\ntrusted_proxies = \"10.0.0.0/8\"\n{MINIMAL}"
    ));
    assert!(err.contains("listen.trusted_proxies"), "{err}");
}

#[test]
fn limits_have_safe_defaults() {
    let c = parse_ok(MINIMAL);
    let l = c.listen.limits;
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.header_timeout, Duration::from_secs(30));
    assert_eq!(l.idle_timeout, Duration::from_secs(60));
    assert_eq!(l.max_header_bytes, 65536);
    assert_eq!(l.max_headers, 100);
    assert_eq!(l.h2_max_concurrent_streams, 100);
    assert_eq!(c.routes[0].max_body, 10 * 1024 * 1024);
}

#[test]
fn limits_are_read_with_units() {
    let c = parse_ok(&format!(
        "[listen]\nmax_connections = 5\nheader_timeout = \"300ms\"\nidle_timeout = \"2s\"\n\
         max_header_bytes = \"16KiB\"\nmax_headers = 20\nh2_max_concurrent_streams = 7\n\
         {MINIMAL}max_body = \"1MiB\"\n"
    ));
    let l = c.listen.limits;
    assert_eq!(l.max_connections, 5);
    assert_eq!(l.header_timeout, Duration::from_millis(300));
    assert_eq!(l.idle_timeout, Duration::from_secs(2));
    assert_eq!(l.max_header_bytes, 16384);
    assert_eq!(l.max_headers, 20);
    assert_eq!(l.h2_max_concurrent_streams, 7);
    assert_eq!(c.routes[0].max_body, 1 << 20);
    let c = parse_ok(&format!(
        "[listen]\nmax_header_bytes = 8192\n{MINIMAL}max_body = 100\n"
    ));
    assert_eq!(c.listen.limits.max_header_bytes, 8192);
    assert_eq!(c.routes[0].max_body, 100);
    for (text, bytes) in [
        ("10MiB", Some(10 << 20)),
        ("64 KB", Some(64_000)),
        ("7", Some(7)),
        ("1GB", Some(1_000_000_000)),
        ("1.5MiB", None),
        ("MiB", None),
        ("10 parsecs", None),
        ("99999999999999999999TiB", None),
    ] {
        assert_eq!(validate::parse_size(text), bytes, "{text}");
    }
}

#[test]
fn limits_must_be_non_zero_and_bounded() {
    for (listen, expected) in [
        (
            "max_connections = 0",
            "listen.max_connections: must be between 1 and 1000000",
        ),
        (
            "max_connections = -3",
            "listen.max_connections: must be between 1 and 1000000",
        ),
        (
            "max_headers = 0",
            "listen.max_headers: must be between 1 and 1000",
        ),
        (
            "max_headers = 1001",
            "listen.max_headers: must be between 1 and 1000",
        ),
        (
            "h2_max_concurrent_streams = 0",
            "listen.h2_max_concurrent_streams: must be between 1 and 10000",
        ),
        (
            "header_timeout = \"0s\"",
            "listen.header_timeout: must be greater than zero",
        ),
        (
            "idle_timeout = \"2h\"",
            "listen.idle_timeout: must be at most 1h",
        ),
        (
            "max_header_bytes = 100",
            "listen.max_header_bytes: must be between 8KiB (8192) and 1MiB (1048576)",
        ),
        (
            "max_header_bytes = \"2MiB\"",
            "listen.max_header_bytes: must be between 8KiB (8192) and 1MiB (1048576)",
        ),
        (
            "max_header_bytes = \"lots\"",
            "listen.max_header_bytes: \"lots\" is not a size greater than zero",
        ),
    ] {
        let err = parse_err(&format!("[listen]\n{listen}\n{MINIMAL}"));
        assert!(
            err.contains(expected),
            "{listen}: missing {expected:?} in:\n{err}"
        );
    }
    for (body, expected) in [
        ("0", "routes[0].max_body: 0 is not a size greater than zero"),
        ("\"2TiB\"", "routes[0].max_body: must be at most 1TiB"),
    ] {
        let err = parse_err(&format!("{MINIMAL}max_body = {body}\n"));
        assert!(
            err.contains(expected),
            "{body}: missing {expected:?} in:\n{err}"
        );
    }
}

const TARGETING: &str = r#"
[[routes]]
name = "web"
salt = "s"
stable = { endpoints = ["http://127.0.0.1:1"] }
propagate = "checkout-v2"
follow = "checkout-v2"
[[routes.segments]]
match = "header:x-team"
values = ["qa", "dev"]
variant = "canary"
[[routes.segments]]
match = "ip"
values = ["10.0.0.0/8"]
values_file = "offices.txt"
variant = "stable"
"#;

#[test]
fn segments_propagation_and_hash_are_compiled() {
    let config = parse_ok(TARGETING);
    let route = &config.routes[0];
    assert_eq!(route.segments.len(), 2);
    assert_eq!(route.segments[0].values_count(), 2);
    assert_eq!(
        route.segments[1].values_file.as_deref(),
        Some(Path::new("config/offices.txt"))
    );
    assert_eq!(route.propagate.as_deref(), Some("checkout-v2"));
    assert_eq!(route.hash, Hash::Xxh3);
    assert!(config
        .named_files()
        .contains(&Path::new("config/offices.txt")));
    let nginx = parse_ok(&MINIMAL.replace("[[routes]]", "[[routes]]\nhash = \"nginx\""));
    assert_eq!(
        nginx.routes[0].hash,
        Hash::Nginx {
            nginx_key: crate::split_clients::KeyTemplate::new("${key}".into())
        }
    );
}

#[test]
fn values_files_are_read_through_the_shell_and_join_the_inline_values() {
    let mut config = parse_ok(TARGETING);
    config
        .load_values_files(|path| {
            assert_eq!(path, Path::new("config/offices.txt"));
            Ok("# offices\n192.0.2.0/24\n".into())
        })
        .expect("good file");
    assert_eq!(config.routes[0].segments[1].values_count(), 2);
    let mut config = parse_ok(TARGETING);
    let err = config
        .load_values_files(|_| Ok("192.0.2.0/24\nnot-an-address\n".into()))
        .expect_err("bad line");
    assert_eq!(
        err.to_string(),
        "config/cohort.toml: routes[0].segments[1].values_file: config/offices.txt: line 2: \"not-an-address\" is not a CIDR or IP address"
    );
    let mut config = parse_ok(TARGETING);
    let err = config
        .load_values_files(|_| Err("cannot read: No such file or directory".into()))
        .expect_err("missing file");
    assert!(
        err.to_string().contains("values_file: cannot read"),
        "{err}"
    );
}

#[test]
fn bad_targeting_is_rejected_with_its_key() {
    let cases = [
        (
            "match = \"header:x-team\"",
            "match = \"query:x\"",
            "routes[0].segments[0].match: \"query:x\" is not a segment match",
        ),
        (
            "variant = \"canary\"",
            "variant = \"blue\"",
            "routes[0].segments[0].variant: \"blue\" is neither",
        ),
        (
            "values = [\"qa\", \"dev\"]",
            "values = []",
            "routes[0].segments[0]: needs values or a values_file",
        ),
        (
            "values = [\"10.0.0.0/8\"]",
            "values = [\"10.0.0.0/33\"]",
            "routes[0].segments[1]: values[0]: \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            "propagate = \"checkout-v2\"",
            "propagate = \"a b\"",
            "routes[0].propagate: \"a b\" must be a token",
        ),
        (
            "follow = \"checkout-v2\"",
            "follow = \"\"",
            "routes[0].follow: \"\" must be a token",
        ),
        (
            "propagate = \"checkout-v2\"",
            "hash = \"md5\"",
            "routes[0].hash: \"md5\" is neither",
        ),
        (
            "propagate = \"checkout-v2\"",
            "nginx_key = \"${key}\"",
            "routes[0].nginx_key: needs hash = \"nginx\"",
        ),
        (
            "propagate = \"checkout-v2\"",
            "hash = \"nginx\"\nnginx_key = \"$key\"",
            "routes[0].nginx_key: \"$key\" must contain ${key}",
        ),
    ];
    for (from, to, expected) in cases {
        let err = parse_err(&TARGETING.replacen(from, to, 1));
        assert!(err.contains(expected), "{to}: {err}");
    }
}
