//! `RUST_LOG` as cohort reads it: a level, and/or comma-separated `target=level` pairs
//! (`warn,cohort::access=info`). Read strictly: `tracing`'s own `Targets` parser takes a
//! bare word as a target to enable and `cohort[span]=debug` as a target name, so a
//! mistyped value would silently turn every other line off, errors included. Here
//! anything else is an error the caller reports before falling back to `info`.

use tracing_subscriber::filter::{LevelFilter, Targets};

/// A `RUST_LOG` element that is neither `level` nor `target=level`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not `level` or `target=level` (levels: trace, debug, info, warn, error, off; \
     span and field filters are not supported)"
)]
pub struct BadDirective(pub String);

/// Parses a `RUST_LOG` value. Without a bare level, targets not listed log errors only:
/// a list such as `cohort::access=info` adds the access log and does not hide errors.
pub fn parse(spec: &str) -> Result<Targets, BadDirective> {
    let mut targets = Targets::new();
    let mut default = None;
    let mut any = false;
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        any = true;
        let bad = || BadDirective(directive.to_owned());
        match directive.split_once('=') {
            None => default = Some(level(directive).ok_or_else(bad)?),
            Some((target, value)) => {
                let target = target.trim();
                if !is_target(target) {
                    return Err(bad());
                }
                let level = level(value.trim()).ok_or_else(bad)?;
                targets = targets.with_target(target.to_owned(), level);
            }
        }
    }
    let fallback = if any {
        LevelFilter::ERROR
    } else {
        LevelFilter::INFO
    };
    Ok(targets.with_default(default.unwrap_or(fallback)))
}

/// A module path such as `cohort::access` (letters, digits, `_`, `-`, `::`).
fn is_target(target: &str) -> bool {
    !target.is_empty()
        && target.split("::").all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

fn level(value: &str) -> Option<LevelFilter> {
    Some(match value.to_ascii_lowercase().as_str() {
        "trace" => LevelFilter::TRACE,
        "debug" => LevelFilter::DEBUG,
        "info" => LevelFilter::INFO,
        "warn" => LevelFilter::WARN,
        "error" => LevelFilter::ERROR,
        "off" => LevelFilter::OFF,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn a_level_and_target_pairs_are_read() {
        let f = parse("warn,cohort::access=info").unwrap();
        assert!(f.would_enable("cohort::access", &Level::INFO));
        assert!(f.would_enable("cohort::server", &Level::WARN));
        assert!(!f.would_enable("cohort::server", &Level::INFO));
        let f = parse(" DEBUG ").unwrap();
        assert!(f.would_enable("hyper", &Level::DEBUG));
    }

    #[test]
    fn a_target_list_alone_keeps_errors_visible() {
        let f = parse("cohort::access=info").unwrap();
        assert!(f.would_enable("cohort::access", &Level::INFO));
        assert!(f.would_enable("cohort::server", &Level::ERROR));
        assert!(!f.would_enable("cohort::server", &Level::WARN));
        let f = parse("off").unwrap();
        assert!(!f.would_enable("cohort::server", &Level::ERROR));
    }

    #[test]
    fn nothing_but_separators_is_info() {
        let f = parse(" , ").unwrap();
        assert!(f.would_enable("cohort", &Level::INFO));
        assert!(!f.would_enable("cohort", &Level::DEBUG));
    }

    #[test]
    fn span_field_and_unknown_forms_are_refused() {
        for spec in [
            "cohort=loud",
            "verbose",
            "cohort[span]=debug",
            "cohort[{x=1}]=info",
            "[{x}]",
            "cohort::access=info,/foo/",
            "=info",
            "cohort::=info",
            "cohort==info",
        ] {
            let err = parse(spec)
                .err()
                .unwrap_or_else(|| panic!("{spec:?} accepted"));
            assert!(spec.contains(err.0.as_str()), "{spec:?}: {err}");
        }
    }
}
