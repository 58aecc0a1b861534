//! The routing decision allocates nothing for a request that carries its key, and
//! neither does the HTTP/1.1 head work around it: counted with a counting global
//! allocator around the pure hot path (parse, route match, key extraction from header,
//! cookie or peer address, hash, variant, head rewriting both ways).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::path::Path;

use http::{HeaderMap, HeaderValue};

use cohort::cohort::BasisPoints;
use cohort::router::{decide, RouteTable};

struct Counting;

thread_local! {
    // Per thread: the tests run in parallel, each counts only its own allocations.
    // A `const` cell without a destructor, so touching it never allocates.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
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

/// The routes of DESIGN §2's example, as a user writes them; raw TOML because this
/// binary parses it with `config::parse` and nothing else of `tests/support`.
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
    let before = allocations();
    for _ in 0..calls {
        f();
    }
    (allocations() - before) as f64 / calls as f64
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

/// cohort's own HTTP/1.1 path parses a request head in place, routes on the parsed
/// fields and writes the upstream head into a buffer it reuses; then parses the
/// response head and writes the client's: none of it allocates.
#[test]
fn parsing_routing_and_rewriting_heads_allocates_nothing() {
    use cohort::h1::head::{
        field_storage, parse_request, parse_response, write_client_response,
        write_upstream_request, BaggageRewrite, Decoration, Forwarding, ParsedRequest,
        ParsedResponse,
    };

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cohort.toml");
    std::fs::write(&path, CONFIG).expect("write config");
    let config = cohort::config::load(Path::new(&path)).expect("valid config");
    let routes = &config.routes;
    let table = RouteTable::new(routes);
    let peer: IpAddr = "192.0.2.7".parse().expect("ip");
    let request = b"GET /api/cart?items=3 HTTP/1.1\r\nHost: shop.example\r\n\
        User-Agent: curl/8.5\r\nAccept: */*\r\nX-User-Id: user-42\r\n\
        Cookie: session=abc; theme=dark\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n";
    let response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\
        Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nstable";
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let per_call = allocations_per_call(10_000, || {
        out.clear();
        let mut fields = field_storage();
        let ParsedRequest::Ready(req) = parse_request(request, &mut fields) else {
            panic!("the request is forwardable");
        };
        let path = req.target.split('?').next().unwrap_or("/");
        let index = table.find(routes, req.host, path).expect("a route");
        let route = &routes[index];
        let decision = decide(route, route.canary_bp, &req.fields, peer, || {
            unreachable!("the request carries its key")
        });
        // The request carries no id: one is drawn and written, still on the stack.
        let id = cohort::request_id::RequestId::generate();
        let forwarding = Forwarding {
            proto: "http",
            variant: decision.variant.as_str(),
            untrusted_override: None,
            request_id: req.request_id.is_none().then_some(&id),
            baggage: BaggageRewrite::Keep,
        };
        write_upstream_request(&req, &forwarding, b"192.0.2.7", &mut out);
        let mut fields = field_storage();
        let ParsedResponse::Ready(resp) = parse_response(response, &mut fields, false) else {
            panic!("a final response");
        };
        write_client_response(&resp, &Decoration::plain(false), &mut out);
    });
    assert_eq!(per_call, 0.0, "the HTTP/1.1 head path allocated");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("GET /api/cart?items=3 HTTP/1.1\r\n")
            && text.contains("x-forwarded-for: 203.0.113.1, 192.0.2.7\r\n")
            && text.contains("\r\nx-request-id: ")
            && text.contains("\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{text}"
    );
    assert!(!text.contains("Keep-Alive"), "{text}");
}

/// Behind trusted proxies (`listen.trusted_proxies`), the client's address is walked out
/// of the `X-Forwarded-For` lines parsed in place, then keys the decision: nothing
/// allocated on cohort's own path.
#[test]
fn the_client_address_behind_trusted_proxies_allocates_nothing() {
    use cohort::h1::head::{field_storage, parse_request, ParsedRequest};
    use cohort::router::Fields;

    let text = format!("[listen]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.0/24\"]\n{CONFIG}");
    let config = cohort::config::parse(&text, Path::new("alloc.toml")).expect("config");
    let trusted = &config.listen.trusted_proxies;
    let routes = &config.routes;
    let table = RouteTable::new(routes);
    let peer: IpAddr = "192.0.2.7".parse().expect("ip");
    let request = b"GET /other HTTP/1.1\r\nHost: shop.example\r\n\
        X-Forwarded-For: 203.0.113.1, 198.51.100.7:4711\r\nAccept: */*\r\n\
        X-Forwarded-For: 10.1.1.1,  [::ffff:10.2.2.2]:80\r\n\r\n";
    let mut client = peer;
    let per_call = allocations_per_call(10_000, || {
        let mut fields = field_storage();
        let ParsedRequest::Ready(req) = parse_request(request, &mut fields) else {
            panic!("the request is forwardable");
        };
        let index = table.find(routes, req.host, "/other").expect("a route");
        let route = &routes[index];
        client = cohort::client_addr::client_addr(peer, trusted, req.fields.forwarded_for());
        let decision = decide(route, route.canary_bp, &req.fields, client, || {
            unreachable!("the ip is the key")
        });
        std::hint::black_box(decision);
    });
    assert_eq!(per_call, 0.0, "the client address walk allocated");
    assert_eq!(client, "198.51.100.7".parse::<IpAddr>().expect("ip"));
}
