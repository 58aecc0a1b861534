//! The request journey of DESIGN §1, end to end: header hygiene, HTTP/2 clients,
//! route matching, sticky cohorts, overrides, protocol upgrades and upstream
//! keep-alive, each through a real cohort between real clients and fake upstreams.
mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    client, expected_variant, get, h2c_client, key_in, raw_exchange, send, user_route, Config,
    FakeUpstream, RawConn, Route, TestCohort,
};

const REQUESTS: &str = "cohort_requests_total";
const ASSIGNMENTS: &str = "cohort_assignments_total";

/// Headers that must never cross cohort in either direction (DESIGN §1.7), besides
/// whatever a `Connection` header names.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

// ---------------------------------------------------------------------------------------
// Header hygiene
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_upstream_sees_an_end_to_end_request_with_forwarding_headers() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(user_route("app", &stable, &canary).canary_percent(50)).await;
    let user = key_in("stable", "app-salt", 50.0, "user");

    // Sent byte for byte, so no client library tidies anything up on the way. The
    // Connection header names two extra hop-by-hop headers, in other cases than the
    // headers themselves are written in, over two lines.
    let request = format!(
        "GET /hygiene?q=1 HTTP/1.1\r\n\
         Host: App.Example.com:8080\r\n\
         Connection: keep-alive, X-HOP-Named\r\n\
         connection: x-Other-Hop\r\n\
         x-hop-named: secret\r\n\
         X-OTHER-HOP: 2\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Trailer: x-checksum\r\n\
         Upgrade: h2c\r\n\
         Proxy-Authorization: Basic YTpi\r\n\
         Proxy-Authenticate: Basic\r\n\
         X-Forwarded-For: 203.0.113.9\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: spoofed.example\r\n\
         X-Cohort-Variant: canary\r\n\
         X-User-Id: {user}\r\n\
         X-End-To-End: kept\r\n\
         \r\n"
    );
    let answer = raw_exchange(cohort.proxy, &request).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "stable");

    let seen = stable.last_seen();
    assert_eq!(seen.uri, "/hygiene?q=1", "the path goes upstream unchanged");
    for name in HOP_BY_HOP.iter().filter(|n| **n != "te") {
        assert!(
            seen.headers.get(*name).is_none(),
            "{name} reached the upstream"
        );
    }
    assert!(seen.headers.get("x-hop-named").is_none());
    assert!(seen.headers.get("x-other-hop").is_none());
    assert_eq!(
        seen.one("te"),
        Some("trailers"),
        "TE: trailers is kept for gRPC"
    );
    assert_eq!(seen.one("host"), Some("App.Example.com:8080"));
    assert_eq!(seen.one("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(seen.one("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.one("x-forwarded-host"), Some("App.Example.com:8080"));
    assert_eq!(
        seen.one("x-cohort-variant"),
        Some("stable"),
        "the decision replaces what the client claimed"
    );
    assert_eq!(seen.one("x-end-to-end"), Some("kept"));
    assert_eq!(seen.one("x-user-id"), Some(user.as_str()));
    assert_eq!(canary.hits(), 0);
    cohort.shutdown().await;
}

/// A client that sends `TE: trailers` names `TE` in `Connection` (RFC 9110 §10.1.4); the
/// upstream still gets `TE: trailers`, on cohort's own path (HTTP/1.1) and on hyper's
/// (an HTTP/1.0 request is handed to it).
#[tokio::test]
async fn te_trailers_named_in_connection_reaches_the_upstream_on_both_paths() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;
    for version in ["1.1", "1.0"] {
        let request = format!(
            "GET /te HTTP/{version}\r\n\
             Host: app.example\r\n\
             Connection: TE, x-hop\r\n\
             TE: trailers\r\n\
             x-hop: 1\r\n\
             \r\n"
        );
        let answer = raw_exchange(cohort.proxy, &request).await;
        assert_eq!(answer.status, 200, "HTTP/{version}: {}", answer.text());
        let seen = stable.last_seen();
        assert_eq!(
            seen.one("te"),
            Some("trailers"),
            "HTTP/{version}: {:?}",
            seen.headers
        );
        assert!(seen.headers.get("x-hop").is_none(), "HTTP/{version}");
    }
    assert_eq!(stable.hits(), 2);
    cohort.shutdown().await;
}

/// Both engines apply the one hop-by-hop list: the same request, with every listed
/// field a plain request can carry and fields its `Connection` names, reaches the
/// upstream with the same fields from cohort's own path (HTTP/1.1) and from hyper's
/// (an HTTP/1.0 request is handed to it).
#[tokio::test]
async fn both_engines_strip_the_same_hop_by_hop_fields() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;
    let mut seen_by_engine = Vec::new();
    for version in ["1.1", "1.0"] {
        // `Upgrade` and `Transfer-Encoding` are left out: either sends the request
        // to hyper on both versions (they are checked on hyper's path above).
        let request = format!(
            "GET /hop HTTP/{version}\r\n\
             Host: app.example\r\n\
             Connection: keep-alive, X-Named-Hop\r\n\
             X-Named-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\n\
             TE: gzip\r\n\
             Trailer: x-checksum\r\n\
             Proxy-Authorization: Basic YTpi\r\n\
             Proxy-Authenticate: Basic\r\n\
             X-End-To-End: kept\r\n\
             \r\n"
        );
        let answer = raw_exchange(cohort.proxy, &request).await;
        assert_eq!(answer.status, 200, "HTTP/{version}: {}", answer.text());
        let seen = stable.last_seen();
        for name in HOP_BY_HOP.iter().chain(&["x-named-hop"]) {
            assert!(
                seen.headers.get(*name).is_none(),
                "HTTP/{version}: {name} reached the upstream"
            );
        }
        assert_eq!(seen.one("x-end-to-end"), Some("kept"), "HTTP/{version}");
        let mut names: Vec<String> = seen.headers.keys().map(|n| n.to_string()).collect();
        names.sort();
        seen_by_engine.push(names);
    }
    assert_eq!(
        seen_by_engine[0], seen_by_engine[1],
        "own engine (left) and hyper's (right) forward different fields"
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn te_other_than_trailers_is_dropped_and_a_chunked_body_arrives_intact() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(
        b"POST /upload HTTP/1.1\r\n\
          Host: app.example\r\n\
          TE: gzip, trailers\r\n\
          Transfer-Encoding: chunked\r\n\
          \r\n\
          6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
    )
    .await;
    let answer = conn.read_response(false).await;
    assert_eq!(answer.status, 200);
    let seen = stable.last_seen();
    assert_eq!(seen.method, "POST");
    assert!(seen.headers.get("te").is_none(), "{:?}", seen.headers);
    assert_eq!(&seen.body[..], b"hello world");

    // Same client connection, a second request: keep-alive survived the hygiene.
    conn.write(b"GET /again HTTP/1.1\r\nHost: app.example\r\nTE: trailers\r\n\r\n")
        .await;
    let again = conn.read_response(false).await;
    assert_eq!(again.status, 200);
    assert_eq!(stable.last_seen().one("te"), Some("trailers"));
    cohort.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_upstream_response_stop_at_cohort() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_response_headers(&[
        ("Connection", "X-Up-Hop"),
        ("x-up-hop", "1"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authenticate", "Basic realm=\"up\""),
        ("Trailer", "x-checksum"),
        ("Upgrade", "h2c"),
        ("x-end-to-end", "kept"),
        ("set-cookie", "up=1"),
    ]);
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    // Precondition: the upstream really sends them on the wire.
    let direct = raw_exchange(stable.addr, "GET / HTTP/1.1\r\nHost: up\r\n\r\n").await;
    for name in [
        "x-up-hop",
        "keep-alive",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    ] {
        assert!(
            direct.header(name).is_some(),
            "the fake upstream did not send {name}"
        );
    }
    assert_eq!(direct.header("connection"), Some("X-Up-Hop"));

    let answer = raw_exchange(
        cohort.proxy,
        "GET / HTTP/1.1\r\nHost: app.example\r\nx-user-id: u\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "stable");
    for name in [
        "x-up-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    ] {
        assert!(answer.header(name).is_none(), "{name} reached the client");
    }
    // cohort may speak for its own hop, but never repeat the upstream's.
    for value in answer.all("connection") {
        assert!(!value.to_ascii_lowercase().contains("x-up-hop"), "{value}");
    }
    assert_eq!(answer.header("x-end-to-end"), Some("kept"));
    assert_eq!(answer.header("x-upstream"), Some("stable"));
    assert_eq!(answer.all("x-cohort-variant"), ["stable"]);
    cohort.shutdown().await;
}

#[tokio::test]
async fn the_response_names_the_variant_under_the_configured_header_or_not_at_all() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let config = Config::new().route(user_route("app", &stable, &canary).canary_percent(50));
    let user = key_in("canary", "app-salt", 50.0, "user");

    let renamed = TestCohort::start(config.clone().variant_header("x-arm")).await;
    let answer = get(&renamed.url("/"), &[("x-user-id", &user)]).await;
    assert_eq!(answer.text(), "canary");
    assert_eq!(answer.header("x-arm"), Some("canary"));
    assert_eq!(answer.variant(), None);
    assert_eq!(
        canary.last_seen().one("x-cohort-variant"),
        Some("canary"),
        "the upstream always gets x-cohort-variant, whatever variant_header says"
    );
    renamed.shutdown().await;

    let silent = TestCohort::start(config.variant_header("")).await;
    let answer = get(&silent.url("/"), &[("x-user-id", &user)]).await;
    assert_eq!(answer.text(), "canary");
    assert_eq!(answer.variant(), None, "variant_header = \"\" turns it off");
    assert_eq!(canary.last_seen().one("x-cohort-variant"), Some("canary"));
    silent.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// HTTP/2 clients
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_h2c_client_is_proxied_to_an_http1_upstream_with_host_and_folded_cookies() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(
        Route::new("app")
            .stable(&stable)
            .canary(&canary)
            .sticky(&["cookie:session"])
            .canary_percent(50),
    )
    .await;
    let h2 = h2c_client();
    for variant in ["stable", "canary"] {
        let session = key_in(variant, "app-salt", 50.0, "session");
        // Three separate `cookie` fields, as HTTP/2 clients send them; the key sits in
        // the second one.
        let answer = send(
            &h2,
            "GET",
            &cohort.url("/h2?x=1"),
            &[
                ("cookie", "theme=dark"),
                ("cookie", &format!("session={session}")),
                ("cookie", "lang=en"),
            ],
            Bytes::new(),
        )
        .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.variant(), Some(variant), "session {session}");
        assert_eq!(answer.text(), variant);

        let upstream = if variant == "stable" {
            &stable
        } else {
            &canary
        };
        let seen = upstream.last_seen();
        assert_eq!(seen.version, Version::HTTP_11);
        assert_eq!(seen.uri, "/h2?x=1");
        let authority = cohort.proxy.to_string();
        assert_eq!(seen.one("host"), Some(authority.as_str()));
        assert_eq!(seen.one("x-forwarded-host"), Some(authority.as_str()));
        assert_eq!(
            seen.all("cookie"),
            [format!("theme=dark; session={session}; lang=en")],
            "HTTP/1.1 allows one Cookie line"
        );
    }
    assert_eq!(
        cohort
            .series(
                ASSIGNMENTS,
                &[
                    ("route", "app"),
                    ("variant", "canary"),
                    ("source", "cookie")
                ]
            )
            .await,
        1.0
    );
    cohort.shutdown().await;
}

/// An HTTP/2 request with a chosen `:authority`, on one prior-knowledge connection.
async fn h2_get(proxy: SocketAddr, uri: &str) -> (u16, Option<String>, String) {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get(uri)
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("h2 request");
    let status = resp.status().as_u16();
    let variant = resp
        .headers()
        .get("x-cohort-variant")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, variant, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn an_h2_authority_picks_the_host_route_and_becomes_the_upstream_host() {
    let shop = FakeUpstream::start("shop").await;
    let other = FakeUpstream::start("other").await;
    let config = Config::new()
        .route(
            Route::new("shop")
                .stable(&shop)
                .canary(&shop)
                .host("shop.example.com"),
        )
        .route(Route::new("default").stable(&other).canary(&other));
    let cohort = TestCohort::start(config).await;

    let (status, variant, body) = h2_get(cohort.proxy, "http://Shop.Example.com:8443/cart").await;
    assert_eq!((status, body.as_str()), (200, "shop"));
    assert_eq!(variant.as_deref(), Some("stable"));
    let seen = shop.last_seen();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.uri, "/cart");
    assert_eq!(seen.one("host"), Some("Shop.Example.com:8443"));

    let (status, _, body) = h2_get(cohort.proxy, "http://elsewhere.example/cart").await;
    assert_eq!((status, body.as_str()), (200, "other"));
    assert_eq!(other.last_seen().one("host"), Some("elsewhere.example"));
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn host_routes_come_first_then_the_longest_prefix_then_file_order() {
    let shop_root = FakeUpstream::start("shop-root").await;
    let shop_api = FakeUpstream::start("shop-api").await;
    let api = FakeUpstream::start("api").await;
    let api_v2 = FakeUpstream::start("api-v2").await;
    let api_v2_twin = FakeUpstream::start("api-v2-twin").await;
    let block = |name: &str, up: &FakeUpstream| Route::new(name).stable(up).canary(up);
    // File order deliberately differs from match order.
    let config = Config::new()
        .route(block("api", &api).path_prefix("/api"))
        .route(block("api-v2", &api_v2).path_prefix("/api/v2"))
        .route(block("api-v2-twin", &api_v2_twin).path_prefix("/api/v2"))
        .route(
            block("shop-root", &shop_root)
                .host("shop.example.com")
                .path_prefix("/"),
        )
        .route(
            block("shop-api", &shop_api)
                .host("shop.example.com")
                .path_prefix("/api"),
        );
    let cohort = TestCohort::start(config).await;

    let cases = [
        // A host route wins over a longer host-less prefix.
        ("shop.example.com", "/api/v2/items", 200, "shop-api"),
        ("SHOP.Example.COM:8080", "/api/v2/items", 200, "shop-api"),
        ("shop.example.com", "/checkout", 200, "shop-root"),
        // No host route matches the path: the host-less group is tried.
        ("other.example", "/api/v2/items", 200, "api-v2"),
        ("other.example", "/api/v1", 200, "api"),
        // Byte prefixes, not path segments.
        ("other.example", "/apiary", 200, "api"),
        ("other.example", "/checkout", 404, ""),
        ("", "/nothing", 404, ""),
    ];
    for (host, path, status, upstream) in cases {
        let headers: Vec<(&str, &str)> = if host.is_empty() {
            vec![]
        } else {
            vec![("host", host)]
        };
        let answer = get(&cohort.url(path), &headers).await;
        assert_eq!(answer.status, status, "{host} {path}");
        if status == 200 {
            assert_eq!(answer.text(), upstream, "{host} {path}");
            assert_eq!(answer.variant(), Some("stable"));
        } else {
            assert_eq!(answer.variant(), None, "no route, no variant");
            assert!(answer.text().contains("no route"), "{}", answer.text());
        }
    }
    assert_eq!(api_v2_twin.hits(), 0, "ties keep file order");
    assert_eq!(
        cohort
            .series_eventually("cohort_unrouted_requests_total", &[("status", "404")], 2.0)
            .await,
        2.0
    );
    assert_eq!(
        cohort
            .series_eventually(
                REQUESTS,
                &[("route", "api"), ("variant", "stable"), ("status", "200")],
                2.0
            )
            .await,
        2.0
    );
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Stickiness
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn header_cookie_and_ip_keys_are_tried_in_the_routes_order() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(
        Route::new("app")
            .stable(&stable)
            .canary(&canary)
            .sticky(&["header:x-user-id", "cookie:session", "ip"])
            .canary_percent(50),
    )
    .await;
    // Every key below lands in the variant opposite to the peer address, so a request
    // that fell through to the wrong source would show it.
    let ip_variant = expected_variant("app-salt", "127.0.0.1", 50.0);
    let other = if ip_variant == "stable" {
        "canary"
    } else {
        "stable"
    };
    let user = key_in(other, "app-salt", 50.0, "user");
    let session = key_in(other, "app-salt", 50.0, "session");
    let cookie = format!("a=1; session={session}; b=2");

    let http = client();
    let go = |headers: Vec<(&'static str, String)>| {
        let http = http.clone();
        let url = cohort.url("/");
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let answer = send(&http, "GET", &url, &headers, Bytes::new()).await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.variant(), Some(answer.text().as_str()));
            assert!(
                answer.header("set-cookie").is_none(),
                "a keyed client gets no cookie"
            );
            answer.text()
        }
    };
    assert_eq!(go(vec![("x-user-id", user.clone())]).await, other);
    assert_eq!(
        go(vec![("x-user-id", format!("  {user}\t"))]).await,
        other,
        "surrounding whitespace is trimmed"
    );
    assert_eq!(go(vec![("cookie", cookie.clone())]).await, other);
    assert_eq!(
        go(vec![
            ("x-user-id", String::new()),
            ("cookie", cookie.clone())
        ])
        .await,
        other,
        "an empty header is no key"
    );
    assert_eq!(
        go(vec![]).await,
        ip_variant,
        "the peer address is the last resort"
    );
    assert_eq!(go(vec![("cookie", "session=".into())]).await, ip_variant);

    let assigned = |source: &'static str| {
        let cohort = &cohort;
        async move {
            let mut total = 0.0;
            for variant in ["stable", "canary"] {
                total += cohort
                    .series(
                        ASSIGNMENTS,
                        &[("route", "app"), ("variant", variant), ("source", source)],
                    )
                    .await;
            }
            total
        }
    };
    assert_eq!(assigned("header").await, 2.0);
    assert_eq!(assigned("cookie").await, 2.0);
    assert_eq!(assigned("ip").await, 2.0);
    assert_eq!(assigned("random").await, 0.0);
    cohort.shutdown().await;
}

/// The `cohort_id` value of a `Set-Cookie` header cohort added, checked for its exact shape.
fn cohort_id_from(set_cookie: &[&str]) -> String {
    let ours: Vec<&&str> = set_cookie
        .iter()
        .filter(|c| c.starts_with("cohort_id="))
        .collect();
    assert_eq!(ours.len(), 1, "{set_cookie:?}");
    let (pair, attributes) = ours[0].split_once("; ").expect("attributes");
    assert_eq!(
        attributes,
        "Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
    );
    let key = pair.trim_start_matches("cohort_id=");
    assert!(
        key.len() >= 16 && key.bytes().all(|b| b.is_ascii_alphanumeric()),
        "key {key:?}"
    );
    key.to_owned()
}

#[tokio::test]
async fn a_keyless_client_gets_a_cohort_cookie_and_keeps_its_variant_with_it() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_response_headers(&[("set-cookie", "up=1; Path=/")]);
    canary.set_response_headers(&[("set-cookie", "up=1; Path=/")]);
    let cohort = TestCohort::start(user_route("app", &stable, &canary).canary_percent(50)).await;

    let mut variants = Vec::new();
    for _ in 0..20 {
        let first = get(&cohort.url("/"), &[]).await;
        assert_eq!(first.status, 200);
        let set_cookie: Vec<&str> = first
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        assert!(
            set_cookie.contains(&"up=1; Path=/"),
            "the upstream's cookie is kept beside cohort's: {set_cookie:?}"
        );
        let key = cohort_id_from(&set_cookie);
        let variant = expected_variant("app-salt", &key, 50.0);
        assert_eq!(first.variant(), Some(variant), "the drawn key decided");
        assert_eq!(first.text(), variant);

        for _ in 0..3 {
            let again = get(
                &cohort.url("/"),
                &[("cookie", &format!("pref=x; cohort_id={key}"))],
            )
            .await;
            assert_eq!(again.variant(), Some(variant));
            assert_eq!(again.text(), variant);
            let cookies: Vec<_> = again.headers.get_all("set-cookie").iter().collect();
            assert_eq!(cookies, ["up=1; Path=/"], "no new cohort cookie");
        }
        variants.push(variant);
    }
    assert!(
        variants.contains(&"stable") && variants.contains(&"canary"),
        "each first visit draws a fresh key: {variants:?}"
    );
    let random: f64 = [
        cohort
            .series(
                ASSIGNMENTS,
                &[
                    ("route", "app"),
                    ("variant", "stable"),
                    ("source", "random"),
                ],
            )
            .await,
        cohort
            .series(
                ASSIGNMENTS,
                &[
                    ("route", "app"),
                    ("variant", "canary"),
                    ("source", "random"),
                ],
            )
            .await,
    ]
    .iter()
    .sum();
    assert_eq!(random, 20.0);
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_hundred_keyed_requests_land_exactly_where_assign_says() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(user_route("app", &stable, &canary).canary_percent(30)).await;
    let http = client();
    let mut expected_canary = 0;
    for n in 0..100 {
        let user = format!("customer-{n}");
        let expected = expected_variant("app-salt", &user, 30.0);
        if expected == "canary" {
            expected_canary += 1;
        }
        let answer = send(
            &http,
            "GET",
            &cohort.url("/"),
            &[("x-user-id", &user)],
            Bytes::new(),
        )
        .await;
        assert_eq!(answer.variant(), Some(expected), "{user}");
        assert_eq!(answer.text(), expected, "{user}");
    }
    assert!(
        (10..=60).contains(&expected_canary),
        "a 30 % split of 100 fixed keys: {expected_canary}"
    );
    assert_eq!(canary.hits(), expected_canary);
    assert_eq!(stable.hits(), 100 - expected_canary);
    assert_eq!(
        cohort
            .series_eventually(
                REQUESTS,
                &[("route", "app"), ("variant", "canary"), ("status", "200")],
                expected_canary as f64
            )
            .await,
        expected_canary as f64
    );
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Overrides
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_trusted_peer_forces_the_variant_by_header_or_cookie() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(
        user_route("app", &stable, &canary)
            .canary_percent(50)
            .trusted(&["127.0.0.0/8"]),
    )
    .await;
    let stable_user = key_in("stable", "app-salt", 50.0, "user");
    let canary_user = key_in("canary", "app-salt", 50.0, "user");

    let forced = get(
        &cohort.url("/"),
        &[("x-user-id", &stable_user), ("x-cohort-variant", "canary")],
    )
    .await;
    assert_eq!(forced.text(), "canary");
    assert_eq!(forced.variant(), Some("canary"));
    assert_eq!(canary.last_seen().one("x-cohort-variant"), Some("canary"));

    let forced = get(
        &cohort.url("/"),
        &[
            ("x-user-id", &canary_user),
            ("cookie", "a=b; cohort_variant=stable"),
        ],
    )
    .await;
    assert_eq!(forced.text(), "stable");
    assert_eq!(stable.last_seen().one("x-cohort-variant"), Some("stable"));

    // Only the two variant names force anything.
    let unforced = get(
        &cohort.url("/"),
        &[("x-user-id", &stable_user), ("x-cohort-variant", "Canary")],
    )
    .await;
    assert_eq!(unforced.text(), "stable");

    let overrides = |variant: &'static str| {
        let cohort = &cohort;
        async move {
            cohort
                .series(
                    ASSIGNMENTS,
                    &[
                        ("route", "app"),
                        ("variant", variant),
                        ("source", "override"),
                    ],
                )
                .await
        }
    };
    assert_eq!(overrides("canary").await, 1.0);
    assert_eq!(overrides("stable").await, 1.0);
    cohort.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_peer_cannot_force_a_variant_and_its_override_header_is_stripped() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(
        user_route("app", &stable, &canary)
            .canary_percent(50)
            .override_header("x-force")
            .trusted(&["10.0.0.0/8"]),
    )
    .await;
    let stable_user = key_in("stable", "app-salt", 50.0, "user");

    let answer = get(
        &cohort.url("/"),
        &[("x-user-id", &stable_user), ("x-force", "canary")],
    )
    .await;
    assert_eq!(answer.text(), "stable");
    assert_eq!(answer.variant(), Some("stable"));
    let seen = stable.last_seen();
    assert!(
        seen.headers.get("x-force").is_none(),
        "the override header is removed before forwarding"
    );
    assert_eq!(seen.one("x-cohort-variant"), Some("stable"));

    let answer = get(
        &cohort.url("/"),
        &[
            ("x-user-id", &stable_user),
            ("cookie", "cohort_variant=canary"),
            ("x-cohort-variant", "canary"),
        ],
    )
    .await;
    assert_eq!(answer.text(), "stable");
    assert_eq!(stable.last_seen().one("x-cohort-variant"), Some("stable"));
    assert_eq!(canary.hits(), 0);
    for variant in ["stable", "canary"] {
        assert_eq!(
            cohort
                .series(
                    ASSIGNMENTS,
                    &[
                        ("route", "app"),
                        ("variant", variant),
                        ("source", "override")
                    ],
                )
                .await,
            0.0
        );
    }
    cohort.shutdown().await;

    // The same custom header from a trusted peer does force.
    let trusting = TestCohort::start(
        user_route("app", &stable, &canary)
            .canary_percent(50)
            .override_header("x-force")
            .trusted(&["127.0.0.1/32"]),
    )
    .await;
    let answer = get(
        &trusting.url("/"),
        &[("x-user-id", &stable_user), ("x-force", "canary")],
    )
    .await;
    assert_eq!(answer.text(), "canary");
    trusting.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Protocol upgrades
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_websocket_handshake_switches_protocols_and_bytes_flow_both_ways() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(user_route("app", &stable, &canary).canary_percent(50)).await;
    let user = key_in("canary", "app-salt", 50.0, "user");

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(
        format!(
            "GET /chat HTTP/1.1\r\n\
             Host: chat.example\r\n\
             Upgrade: websocket\r\n\
             Connection: keep-alive, Upgrade, X-Hop\r\n\
             X-Hop: 1\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\
             X-User-Id: {user}\r\n\
             \r\n"
        )
        .as_bytes(),
    )
    .await;
    let (status, headers) = conn.read_head().await;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(status, 101, "{headers:?}");
    assert_eq!(header("x-cohort-variant"), Some("canary"));
    assert_eq!(
        header("x-upstream"),
        Some("canary"),
        "reached its key's variant"
    );
    assert!(header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(header("connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));

    let seen = canary.last_seen();
    assert_eq!(seen.one("upgrade"), Some("websocket"));
    assert_eq!(seen.one("connection"), Some("upgrade"));
    assert!(seen.headers.get("x-hop").is_none());
    assert_eq!(
        seen.one("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert_eq!(stable.hits(), 0);

    // The tunnel carries bytes both ways, small and large, in order.
    conn.write(b"hello through cohort").await;
    assert_eq!(conn.read_exact_bytes(20).await, b"hello through cohort");
    let big: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    let (mut reader, mut writer) = conn.stream.split();
    let (_, echoed) = tokio::join!(
        async {
            tokio::io::AsyncWriteExt::write_all(&mut writer, &big)
                .await
                .expect("write")
        },
        async {
            let mut echoed = vec![0u8; big.len()];
            tokio::io::AsyncReadExt::read_exact(&mut reader, &mut echoed)
                .await
                .expect("read echo");
            echoed
        }
    );
    assert!(echoed == big, "the echo came back intact");

    assert_eq!(
        cohort
            .series_eventually(
                REQUESTS,
                &[("route", "app"), ("variant", "canary"), ("status", "101")],
                1.0
            )
            .await,
        1.0
    );
    drop(conn);
    cohort.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Upstream connections
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let http = client();
    for n in 0..30 {
        let answer = send(
            &http,
            if n % 2 == 0 { "GET" } else { "POST" },
            &cohort.url(&format!("/r{n}")),
            &[],
            Bytes::from(vec![b'x'; n * 100]),
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    // Fresh client connections each time: the upstream side is pooled all the same.
    for n in 0..20 {
        let answer = get(&cohort.url(&format!("/fresh{n}")), &[]).await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(stable.hits(), 50);
    assert_eq!(
        stable.connections(),
        1,
        "50 sequential requests should share one kept-alive upstream connection"
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_closes_after_every_response_never_costs_a_client_a_502() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_response_headers(&[("connection", "close")]);
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let http = client();
    for n in 0..20 {
        let answer = send(
            &http,
            "GET",
            &cohort.url(&format!("/r{n}")),
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (200, "stable"),
            "request {n}"
        );
        assert!(!answer
            .header("connection")
            .is_some_and(|c| c.contains("close")));
    }
    assert_eq!(
        stable.connections(),
        20,
        "a closed connection is never reused"
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_client_expecting_100_continue_gets_it_and_its_body_through() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    // As curl does for bodies over 1 KiB: the head, then wait for `100 Continue`.
    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(
        b"POST /form HTTP/1.1\r\nHost: app.example\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
    )
    .await;
    let (status, _) = conn.read_head().await;
    assert_eq!(status, 100, "the client is told to go on");
    conn.write(b"hello world").await;
    let answer = conn.read_response(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "stable"));
    assert_eq!(&stable.last_seen().body[..], b"hello world");
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_head_request_keeps_the_upstreams_content_length_and_the_connection() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    stable.set_reply(support::Reply::Pattern { len: 12345 });
    let cohort = TestCohort::start(Route::new("app").stable(&stable).canary(&canary)).await;

    let mut conn = RawConn::connect(cohort.proxy).await;
    conn.write(b"HEAD /file HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await;
    let head = conn.read_response(true).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("12345"));
    assert_eq!(stable.last_seen().method, "HEAD");

    // No body bytes were sent after the HEAD answer: the next response parses cleanly.
    conn.write(b"GET /file HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .await;
    let full = conn.read_response(false).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body.len(), 12345);
    cohort.shutdown().await;
}

/// RFC 9112 §3.2.2: an absolute-form target's authority wins over `Host`, for routing
/// and for the `Host` the upstream hop carries.
#[tokio::test]
async fn an_absolute_form_target_is_routed_by_its_authority() {
    let a = FakeUpstream::start("a").await;
    let b = FakeUpstream::start("b").await;
    let config = Config::new()
        .route(Route::new("a").host("a.example").salt("s").stable(&a))
        .route(Route::new("b").host("b.example").salt("s").stable(&b));
    let cohort = TestCohort::start(config).await;
    let answer = support::raw_exchange(
        cohort.proxy,
        "GET http://b.example/x?q=1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(String::from_utf8_lossy(&answer.body), "b");
    assert_eq!((a.hits(), b.hits()), (0, 1));
    let seen = b.last_seen();
    assert_eq!(
        seen.uri, "/x?q=1",
        "the upstream gets an origin-form target"
    );
    assert_eq!(
        seen.headers.get("host").and_then(|v| v.to_str().ok()),
        Some("b.example")
    );
    cohort.shutdown().await;
}
