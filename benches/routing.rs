//! The routing decision hot path, in nanoseconds: route match, key extraction, hash,
//! and the whole decision; segments (a 100,000-value list and 100,000 CIDRs), W3C
//! baggage and NGINX's hash. Run `cargo bench --bench routing`.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};

use cohort::cohort::{bucket, BasisPoints, Variant};
use cohort::router::{decide, find_key, RouteTable};
use cohort::segment::Attributes;
use cohort::{baggage, config, split_clients};

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

/// The route `api` with segments from `lines` (a values file's text) in front of its
/// percentage: a `key` list, then an `ip` list, neither matching the bench request.
fn with_segments(keys: &str, cidrs: &str) -> cohort_core::config::Config {
    let text = CONFIG.replacen(
        "canary = { endpoints = [\"http://127.0.0.1:9002\"] }\n",
        "canary = { endpoints = [\"http://127.0.0.1:9002\"] }\n\
         [[routes.segments]]\nmatch = \"key\"\nvalues_file = \"keys.txt\"\nvariant = \"canary\"\n\
         [[routes.segments]]\nmatch = \"ip\"\nvalues_file = \"cidrs.txt\"\nvariant = \"stable\"\n",
        1,
    );
    // The core's parse: the values files' text is handed in, not read from disk.
    let mut config = match cohort_core::config::parse(&text, Path::new("bench.toml")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let loaded = config.load_values_files(|path| {
        Ok(if path.ends_with("keys.txt") {
            keys
        } else {
            cidrs
        }
        .to_owned())
    });
    if let Err(e) = loaded {
        panic!("{e}");
    }
    config
}

fn targeting(c: &mut Criterion) {
    let keys: String = (0..100_000).map(|i| format!("customer-{i:06}\n")).collect();
    let cidrs: String = (0..100_000u32)
        .map(|i| format!("{}/30\n", std::net::Ipv4Addr::from(0x0a00_0000 + i * 8)))
        .collect();
    let config = with_segments(&keys, &cidrs);
    let route = &config.routes[0];
    let headers = request_headers();
    let peer: IpAddr = "192.0.2.7".parse().expect("ip");
    let bp = BasisPoints::from_raw(1000).expect("bp");
    c.bench_function("decision_with_100k_segments_not_matching", |b| {
        b.iter(|| decide(route, bp, black_box(&headers), peer, String::new))
    });
    let mut member = headers.clone();
    member.insert("x-user-id", HeaderValue::from_static("customer-054321"));
    c.bench_function("decision_with_100k_segments_matching_key", |b| {
        b.iter(|| decide(route, bp, black_box(&member), peer, String::new))
    });
    let inside: IpAddr = "10.1.2.3".parse().expect("ip");
    c.bench_function("cidr_lookup_100k", |b| {
        let empty = HeaderMap::new();
        let rule = &route.segments[1];
        let request = Attributes {
            fields: &empty,
            key: None,
            client: Some(inside),
        };
        b.iter(|| black_box(rule).matches(black_box(&request)))
    });

    let baggage_value = "userId=alice,serverNode=DF%2028,isProduction=false,\
                         cohort.checkout-v2=canary;ttl=30,tenant=acme";
    let fields = [baggage_value.as_bytes()];
    c.bench_function("baggage_find_member", |b| {
        b.iter(|| baggage::find(|| black_box(fields).into_iter(), "checkout-v2"))
    });
    c.bench_function("baggage_rewrite", |b| {
        let rewrite = baggage::Rewrite {
            strip_cohort: true,
            set: Some(("checkout-v2", Variant::Stable)),
        };
        b.iter(|| baggage::rewrite(black_box(fields).into_iter(), rewrite))
    });
    let template = split_clients::KeyTemplate::new("${key}AAA".to_owned());
    c.bench_function("nginx_bucket_hash", |b| {
        b.iter(|| template.assign(black_box(b"user-8f3a2c"), bp))
    });
}

criterion_group!(benches, routing, targeting);
criterion_main!(benches);
