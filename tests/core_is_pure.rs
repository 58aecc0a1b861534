//! cohort-core holds the decisions and must stay free of I/O (DESIGN §8): no dependency
//! that does I/O in its manifest, and no file, socket, clock or environment access in its
//! source. The manifest half is what the compiler enforces (a crate cannot call what it
//! does not depend on); the source half catches `std`, which every crate has.

use std::path::Path;

const CORE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/core");

#[test]
fn the_core_depends_on_nothing_that_does_io() {
    let manifest =
        std::fs::read_to_string(Path::new(CORE).join("Cargo.toml")).expect("core/Cargo.toml");
    let doc: toml::Table = manifest.parse().expect("core/Cargo.toml is TOML");
    let deps: Vec<&String> = ["dependencies", "build-dependencies"]
        .iter()
        .filter_map(|section| doc.get(*section).and_then(toml::Value::as_table))
        .flat_map(|table| table.keys())
        .collect();
    assert!(!deps.is_empty(), "core/Cargo.toml lists its dependencies");
    for forbidden in [
        "tokio",
        "hyper",
        "hyper-util",
        "rustls",
        "tokio-rustls",
        "notify",
        "tracing",
        "tracing-subscriber",
        "socket2",
        "mio",
        "metrics",
        "metrics-exporter-prometheus",
    ] {
        assert!(
            !deps.iter().any(|d| d.as_str() == forbidden),
            "cohort-core must not depend on {forbidden}: {deps:?}"
        );
    }
}

#[test]
fn the_core_source_touches_no_files_sockets_clocks_or_environment() {
    let mut files = Vec::new();
    let mut dirs = vec![Path::new(CORE).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read core/src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 3, "core/src has its modules: {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        // Unit tests may build fixtures however they like.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for forbidden in [
            "std::fs",
            "std::net::TcpStream",
            "std::net::TcpListener",
            "std::net::UdpSocket",
            "std::env",
            "SystemTime::now",
            "Instant::now",
            "std::process",
            "std::thread",
        ] {
            assert!(
                !code.contains(forbidden),
                "{} uses {forbidden}: the core takes what it needs as arguments",
                file.display()
            );
        }
    }
}
