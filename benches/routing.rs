//! The routing decision hot path, in nanoseconds: route match, key extraction, hash,
//! and the whole decision. Run `cargo bench --bench routing`.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};

use cohort::cohort::{bucket, BasisPoints};
use cohort::config;
use cohort::router::{decide, find_key, RouteTable};

const CONFIG: &str = r#"
[[routes]]
name = "api"
path_prefix = "/api"
sticky = ["header:x-user-id", "cookie:session", "ip"]
salt = "checkout-v2"
canary_percent = 10
stable = { endpoints = ["http://127.0.0.1:9001"] }
canary = { endpoints = ["http://127.0.0.1:9002"] }

[[routes]]
name = "shop"
host = "shop.example.com"
path_prefix = "/"
sticky = ["cookie:session"]
salt = "shop-v1"
stable = { endpoints = ["http://127.0.0.1:9001"] }

[[routes]]
name = "default"
path_prefix = "/"
sticky = ["header:x-user-id", "ip"]
salt = "default-v1"
canary_percent = 10
stable = { endpoints = ["http://127.0.0.1:9001"] }
canary = { endpoints = ["http://127.0.0.1:9002"] }
"#;

fn request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("api.example.com"));
    headers.insert("user-agent", HeaderValue::from_static("wrk"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    headers.insert("x-user-id", HeaderValue::from_static("user-8f3a2c"));
    headers.insert(
        "cookie",
        HeaderValue::from_static("theme=dark; session=abc123; cohort_id=ffee"),
    );
    headers
}

fn routing(c: &mut Criterion) {
    let config = match config::parse(CONFIG, Path::new("bench.toml")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let routes = &config.routes;
    let table = RouteTable::new(routes);
    let headers = request_headers();
    let peer: IpAddr = "192.0.2.7".parse().expect("ip");

    c.bench_function("route_match", |b| {
        b.iter(|| {
            table.find(
                black_box(routes),
                Some("api.example.com"),
                black_box("/api/v1/items"),
            )
        })
    });
    c.bench_function("key_from_header", |b| {
        b.iter(|| find_key(black_box(&routes[0].sticky), black_box(&headers), peer).is_some())
    });
    c.bench_function("key_from_cookie", |b| {
        b.iter(|| find_key(black_box(&routes[1].sticky), black_box(&headers), peer).is_some())
    });
    c.bench_function("key_from_ip", |b| {
        let empty = HeaderMap::new();
        b.iter(|| find_key(black_box(&routes[2].sticky), black_box(&empty), peer).is_some())
    });
    c.bench_function("bucket_hash", |b| {
        b.iter(|| bucket(black_box("checkout-v2"), black_box(b"user-8f3a2c")))
    });
    c.bench_function("full_decision", |b| {
        b.iter(|| {
            let index = table
                .find(routes, Some("api.example.com"), black_box("/api/v1/items"))
                .expect("route");
            let route = &routes[index];
            decide(
                route,
                BasisPoints::from_raw(1000).expect("bp"),
                black_box(&headers),
                peer,
                String::new,
            )
        })
    });
}

criterion_group!(benches, routing);
criterion_main!(benches);
