//! The commands that read only the config (and `state_dir`): `cohort check` and
//! `cohort assign`.

use std::process::ExitCode;

use cohort::config;
use cohort::guard::{offline_memory, offline_share, wall_now};
use cohort::rollout::{describe_guard, describe_rollout, effective, late_start};
use cohort::router::Described;

use super::load_or_report;

pub fn check(path: &std::path::Path) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::from(1);
    };
    // What `run` and a reload build from the files the config names (the admin token,
    // the listener's TLS): a config they would refuse is refused here too.
    if let Err(e) = cohort::reload::credentials(&config) {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    // `run` refuses to start without a usable state_dir: so does `check`.
    if let Some(dir) = &config.state_dir {
        if let Err(e) = cohort::state_dir::check(dir) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    let now = wall_now();
    out!(
        "{}: ok; listen {}, admin {}, {} route(s)",
        path.display(),
        config.listen.address,
        config.admin.address,
        config.routes.len()
    );
    for route in &config.routes {
        let list = |endpoints: &[config::Endpoint]| {
            endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sticky: Vec<String> = route.sticky.iter().map(ToString::to_string).collect();
        // One read of the route's record and one `now` for the share and the lines below.
        let memory = offline_memory(route, &config);
        let share = effective(route.rollout.as_ref(), route.canary_bp, now, memory).share;
        out!(
            "route {:?}: host={} path_prefix={} canary={}% salt={:?} sticky=[{}] stable=[{}] canary=[{}]",
            route.name,
            route.host.as_deref().unwrap_or("*"),
            route.path_prefix,
            share,
            route.salt,
            sticky.join(", "),
            list(&route.stable.endpoints),
            list(&route.canary.endpoints),
        );
        if let Some(rollout) = &route.rollout {
            out!("  rollout: {}", describe_rollout(rollout, now, memory));
            if !memory.rolled_back {
                if let Some(late) = late_start(rollout, now, memory.resumed_at) {
                    eprintln!("warning: rollout {:?} {late}", route.name);
                }
            }
        } else if memory.rolled_back {
            out!(
                "  rolled back (remembered in state_dir): canary 0 % until `cohort rollout resume {}`",
                route.name
            );
        }
        if let Some(guard) = &route.guard {
            out!("  guard: {}", describe_guard(guard));
        }
        for (i, segment) in route.segments.iter().enumerate() {
            let file = segment
                .values_file
                .as_ref()
                .map(|f| format!(", from {}", f.display()))
                .unwrap_or_default();
            let count = segment.values_count();
            let noun = if count == 1 { "value" } else { "values" };
            out!(
                "  segments[{i}]: {} -> {} ({count} {noun}{file})",
                segment.on,
                segment.variant,
            );
        }
        if let Some(name) = &route.follow {
            out!("  follows baggage cohort.{name} from override.trusted");
        }
        if let Some(name) = &route.propagate {
            out!("  propagates baggage cohort.{name}");
        }
        if let config::Hash::Nginx { nginx_key } = &route.hash {
            out!("  hash: nginx split_clients over {:?}", nginx_key.as_str());
        }
    }
    ExitCode::SUCCESS
}

/// What `cohort assign` was told about the request besides its key.
pub struct Attributes {
    pub headers: Vec<String>,
    pub cookies: Vec<String>,
    pub ip: Option<String>,
}

pub fn assign_key(
    path: &std::path::Path,
    route_name: &str,
    key: &str,
    attributes: &Attributes,
) -> ExitCode {
    let mut request = Described::default();
    let described = (attributes.headers.iter())
        .try_for_each(|h| request.header(h))
        .and_then(|()| {
            attributes
                .cookies
                .iter()
                .try_for_each(|c| request.cookie(c))
        })
        .and_then(|()| attributes.ip.iter().try_for_each(|ip| request.ip(ip)));
    if let Err(reason) = described {
        eprintln!("cohort assign: {reason}");
        return ExitCode::from(2);
    }
    let Some(config) = load_or_report(path) else {
        return ExitCode::from(1);
    };
    let Some(route) = config.routes.iter().find(|r| r.name == route_name) else {
        let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        eprintln!(
            "{}: no route named {route_name:?} (routes: {})",
            path.display(),
            names.join(", ")
        );
        return ExitCode::from(1);
    };
    let share = offline_share(route, &config, wall_now());
    let decision = request.decide(route, share, key.as_bytes());
    let bucket = decision.bucket.map_or("-".to_owned(), |b| b.to_string());
    let variant = decision.variant;
    let decided_by = decision.decided_by();
    // DESIGN §6's line as it always was; a rule other than the percentage (new
    // with segments and overrides) is named after it.
    if decided_by == "percentage" {
        out!("route={route_name} key={key} bucket={bucket} variant={variant}");
    } else {
        out!("route={route_name} key={key} bucket={bucket} variant={variant} decided_by={decided_by}");
    }
    ExitCode::SUCCESS
}
