//! The routing decision allocates nothing for a request that carries its key: counted
//! with a counting global allocator around the pure hot path (route match, key
//! extraction from header, cookie or peer address, hash, variant).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderValue};

use cohort::cohort::BasisPoints;
use cohort::router::{decide, RouteTable};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONFIG: &str = r#"
[[routes]]
name = "api"
path_prefix = "/api"
sticky = ["header:x-user-id", "cookie:session", "ip"]
salt = "checkout-v2"
canary_percent = 10
stable = { endpoints = ["http://127.0.0.1:9001"] }
canary = { endpoints = ["http://127.0.0.1:9002"] }
override = { trusted = ["10.0.0.0/8"] }

[[routes]]
name = "default"
path_prefix = "/"
sticky = ["ip"]
salt = "default-v1"
stable = { endpoints = ["http://127.0.0.1:9001"] }
"#;

/// Allocations made by `f`, run many times (the figure is per call).
fn allocations_per_call(calls: usize, mut f: impl FnMut()) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..calls {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / calls as f64
}

#[test]
fn a_keyed_routing_decision_allocates_nothing() {
    let config = cohort::config::parse(CONFIG, Path::new("alloc.toml")).expect("config");
    let routes = &config.routes;
    let table = RouteTable::new(routes);
    let peer: IpAddr = "192.0.2.7".parse().expect("ip");
    let mut by_header = HeaderMap::new();
    by_header.insert("x-user-id", HeaderValue::from_static("user-8f3a2c"));
    by_header.insert(
        "cookie",
        HeaderValue::from_static("theme=dark; session=abc"),
    );
    let mut by_cookie = HeaderMap::new();
    by_cookie.insert(
        "cookie",
        HeaderValue::from_static("theme=dark; session=abc"),
    );
    let by_ip = HeaderMap::new();
    let share = BasisPoints::from_percent(10.0).expect("bp");

    for (what, headers, path) in [
        ("header key", &by_header, "/api/items"),
        ("cookie key", &by_cookie, "/api/items"),
        ("ip key", &by_ip, "/api/items"),
        ("ip key, second route", &by_ip, "/other"),
    ] {
        let per_call = allocations_per_call(10_000, || {
            let index = table
                .find(routes, Some("shop.example.com:8080"), path)
                .expect("a route");
            let decision = decide(&routes[index], share, headers, peer, || {
                unreachable!("a keyed request draws no key")
            });
            std::hint::black_box(decision);
        });
        eprintln!("{what}: {per_call} allocations per decision");
        assert_eq!(per_call, 0.0, "{what}: the decision allocated");
    }
}
