//! Route matching (`src/router.rs`: `RouteTable::find`) over routes a config declares
//! (parsed and validated as cohort does): the pick agrees with a reference reading of
//! DESIGN §1.2 (host routes first, host compared without case or port; within a group
//! the longest matching `path_prefix`, ties in file order; host-less routes otherwise),
//! and the route picked always has a prefix of the path.
#![no_main]

use arbitrary::Arbitrary;
use cohort::config::Route;
use cohort::router::RouteTable;
use libfuzzer_sys::fuzz_target;

const HOSTS: [&str; 6] = [
    "shop.example.com",
    "SHOP.example.com",
    "a",
    "b.example",
    "[::1]",
    "127.0.0.1",
];
const PREFIXES: [&str; 8] = [
    "/", "/api", "/api/", "/api/v1", "/a", "/apix", "/b/c", "/API",
];

#[derive(Arbitrary, Debug)]
enum Text {
    Known(u8),
    Free(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<(Option<Text>, Text)>,
    host: Option<(Text, Option<String>)>,
    path: (Text, String),
}

fn text(t: &Text, pool: &[&str]) -> String {
    match t {
        Text::Known(i) => pool[usize::from(*i) % pool.len()].to_owned(),
        Text::Free(s) => s.clone(),
    }
}

/// `host:port` → `host`, `[v6]:port` → `[v6]`.
fn without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

fn reference(routes: &[Route], host: Option<&str>, path: &str) -> Option<usize> {
    let best = |want_host: Option<&str>| {
        let mut best: Option<usize> = None;
        for (i, r) in routes.iter().enumerate() {
            let host_ok = match (want_host, r.host.as_deref()) {
                (Some(w), Some(h)) => h.eq_ignore_ascii_case(w),
                (None, None) => true,
                _ => false,
            };
            if host_ok
                && path.starts_with(&r.path_prefix)
                && best.is_none_or(|b| routes[b].path_prefix.len() < r.path_prefix.len())
            {
                best = Some(i);
            }
        }
        best
    };
    host.map(without_port)
        .filter(|h| !h.is_empty())
        .and_then(|h| best(Some(h)))
        .or_else(|| best(None))
}

fuzz_target!(|input: Input| {
    if input.routes.is_empty() || input.routes.len() > 12 {
        return;
    }
    let mut toml = String::from(
        "[listen]\naddress = \"127.0.0.1:8080\"\n[admin]\naddress = \"127.0.0.1:9901\"\n",
    );
    for (i, (host, prefix)) in input.routes.iter().enumerate() {
        toml.push_str(&format!("[[routes]]\nname = \"r{i}\"\n"));
        if let Some(host) = host {
            toml.push_str(&format!(
                "host = {}\n",
                cohort_fuzz::toml_string(&text(host, &HOSTS))
            ));
        }
        toml.push_str(&format!(
            "path_prefix = {}\nsalt = \"s\"\nstable = {{ endpoints = [\"http://127.0.0.1:9001\"] }}\ncanary = {{ endpoints = [\"http://127.0.0.1:9002\"] }}\n",
            cohort_fuzz::toml_string(&text(prefix, &PREFIXES))
        ));
    }
    let Ok(config) = cohort_fuzz::parse_config(&toml) else {
        return;
    };
    let routes = &config.routes;
    let host = input.host.as_ref().map(|(h, port)| match port {
        Some(port) => format!("{}:{port}", text(h, &HOSTS)),
        None => text(h, &HOSTS),
    });
    let path = format!("{}{}", text(&input.path.0, &PREFIXES), input.path.1);
    let table = RouteTable::new(routes);
    let found = table.find(routes, host.as_deref(), &path);
    assert_eq!(
        found,
        reference(routes, host.as_deref(), &path),
        "host {host:?} path {path:?} routes {:?}",
        routes
            .iter()
            .map(|r| (&r.host, &r.path_prefix))
            .collect::<Vec<_>>()
    );
    if let Some(i) = found {
        assert!(path.starts_with(&routes[i].path_prefix));
    }
});
