//! What cohort's fuzz targets share: the one adapter to the config API, the own
//! engine's request loop as `src/h1/server.rs` runs it (without sockets), hyper's
//! HTTP/1.1 server on an in-memory pipe for the differential, and reference models
//! written independently of the code they check.

pub mod chunked_model;
pub mod hyper_side;
pub mod own;

use std::path::Path;

use cohort_core::config::{Config, ConfigError};

/// Where fuzzed config text claims to live: relative paths in it resolve into a
/// directory that does not exist, so validation never reads a real file through them.
const CONFIG_PATH: &str = "/nonexistent/cohort-fuzz/cohort.toml";

/// Parses and validates config text with the pure core (`cohort_core::config::parse`:
/// no file is read; the shell reads the certificate and token files afterwards). The
/// one place that names the config API.
pub fn parse_config(text: &str) -> Result<Config, ConfigError> {
    cohort_core::config::parse(text, Path::new(CONFIG_PATH))
}

/// `text` as a TOML basic string, quotes included.
pub fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Header fields by lowercase name, each name's values in order: how hyper's
/// `HeaderMap` holds them, so two engines' fields can be compared.
pub fn fields_by_name<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> std::collections::BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut map = std::collections::BTreeMap::<Vec<u8>, Vec<Vec<u8>>>::new();
    for (name, value) in fields {
        map.entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.to_vec());
    }
    map
}
