//! The client's address behind trusted proxies (DESIGN §10), end to end: with
//! `listen.trusted_proxies` holding the peer, the address `X-Forwarded-For` names is
//! what the `ip` key and `override.trusted` judge; without it, a client's header
//! changes nothing. On all three ways in: cohort's own HTTP/1.1 engine (a route whose
//! endpoints are plain HTTP/1.1), hyper's HTTP/1.1 engine (a route with h2c endpoints)
//! and HTTP/2 (an h2c client).
mod support;

use bytes::Bytes;
use support::{
    expected_variant, h2c_client, key_in, raw_exchange, send, Config, FakeUpstream, Route,
    TestCohort,
};

const SALT: &str = "addr-salt";

/// The ways a request reaches cohort, each with the route prefix that takes it there.
#[derive(Debug, Clone, Copy)]
enum Way {
    /// HTTP/1.1 to a plain HTTP/1.1 route: cohort's own engine.
    Own,
    /// HTTP/1.1 to a route with h2c endpoints: hyper's engine.
    Hyper,
    /// HTTP/2 (h2c) to the plain route: hyper's engine, HTTP/2.
    H2,
}

const WAYS: [Way; 3] = [Way::Own, Way::Hyper, Way::H2];

/// Two routes with the same salt and split: `/own` to plain HTTP/1.1 endpoints, `/hyper`
/// to the same servers spoken to as h2c.
fn routes(
    config: Config,
    stable: &FakeUpstream,
    canary: &FakeUpstream,
    each: impl Fn(Route) -> Route,
) -> Config {
    let own = Route::new("own").path_prefix("/own");
    let hyper = Route::new("hyper")
        .path_prefix("/hyper")
        .stable_protocol("h2c")
        .canary_protocol("h2c");
    [own, hyper].into_iter().fold(config, |config, route| {
        config.route(
            each(route)
                .salt(SALT)
                .canary_percent(50)
                .stable(stable)
                .canary(canary),
        )
    })
}

/// What came back: the body (the upstream's name) and the variant header.
struct Got {
    status: u16,
    body: String,
    variant: Option<String>,
}

/// One GET on `way` with these header lines (repeated names stay separate lines).
async fn request(cohort: &TestCohort, way: Way, headers: &[(&str, &str)]) -> Got {
    match way {
        Way::Own | Way::Hyper => {
            let path = if matches!(way, Way::Own) {
                "/own"
            } else {
                "/hyper"
            };
            let mut text = format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n");
            for (name, value) in headers {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            text.push_str("Connection: close\r\n\r\n");
            let answer = raw_exchange(cohort.proxy, &text).await;
            Got {
                status: answer.status,
                body: answer.text(),
                variant: answer.header("x-cohort-variant").map(str::to_owned),
            }
        }
        Way::H2 => {
            let answer = send(
                &h2c_client(),
                "GET",
                &cohort.url("/own"),
                headers,
                Bytes::new(),
            )
            .await;
            Got {
                status: answer.status,
                body: answer.text(),
                variant: answer.variant().map(str::to_owned),
            }
        }
    }
}

/// An address in 203.0.113.0/24 whose `ip` key lands in `variant`.
fn address_in(variant: &str) -> String {
    (1..=254)
        .map(|n| format!("203.0.113.{n}"))
        .find(|ip| expected_variant(SALT, ip, 50.0) == variant)
        .expect("some address lands in the variant")
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_ip_key() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let config = Config::new().trusted_proxies(&["127.0.0.1/32"]);
    let cohort = TestCohort::start(routes(config, &stable, &canary, |r| r.sticky(&["ip"]))).await;
    for way in WAYS {
        for variant in ["stable", "canary"] {
            let client = address_in(variant);
            // What the client wrote left of its own address is not believed; the
            // trusted proxy's own entry (127.0.0.1) is walked past; a second header
            // line continues the list.
            let one_line = format!("198.51.100.1, {client}");
            let shapes: [Vec<(&str, &str)>; 3] = [
                vec![("x-forwarded-for", &client)],
                vec![("x-forwarded-for", &one_line)],
                vec![
                    ("x-forwarded-for", &client),
                    ("x-forwarded-for", "127.0.0.1"),
                ],
            ];
            for headers in &shapes {
                // The same address lands in the same variant every time.
                for _ in 0..2 {
                    let got = request(&cohort, way, headers).await;
                    assert_eq!(got.status, 200, "{way:?}");
                    assert_eq!(got.body, variant, "{way:?} {headers:?}");
                    assert_eq!(got.variant.as_deref(), Some(variant), "{way:?}");
                }
            }
            // X-Forwarded-For upstream is still what was received, the peer appended.
            let last = if variant == "stable" {
                &stable
            } else {
                &canary
            };
            assert_eq!(
                last.last_seen().all("x-forwarded-for").join(", "),
                format!("{client}, 127.0.0.1, 127.0.0.1"),
                "{way:?}"
            );
        }
    }
    cohort.shutdown().await;
}

#[tokio::test]
async fn without_trusted_proxies_a_forwarded_address_moves_no_one_and_forces_nothing() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let peer_variant = expected_variant(SALT, "127.0.0.1", 50.0);
    let other = if peer_variant == "stable" {
        "canary"
    } else {
        "stable"
    };
    let spoofed = address_in(other);
    // The spoofed address is even in override.trusted: only a believed address counts.
    for config in [
        Config::new(),
        // Trusted proxies that do not include the peer are no different.
        Config::new().trusted_proxies(&["10.0.0.0/8"]),
    ] {
        let cohort = TestCohort::start(routes(config, &stable, &canary, |r| {
            r.sticky(&["ip"])
                .override_header("x-force")
                .trusted(&["203.0.113.0/24"])
        }))
        .await;
        for way in WAYS {
            let got = request(&cohort, way, &[("x-forwarded-for", &spoofed)]).await;
            assert_eq!(got.body, peer_variant, "{way:?}: the peer decides");
            let got = request(
                &cohort,
                way,
                &[("x-forwarded-for", &spoofed), ("x-force", other)],
            )
            .await;
            assert_eq!(got.body, peer_variant, "{way:?}: the override is ignored");
            let upstream = if peer_variant == "stable" {
                &stable
            } else {
                &canary
            };
            let seen = upstream.last_seen();
            assert!(
                seen.headers.get("x-force").is_none(),
                "{way:?}: the override header is stripped"
            );
            assert_eq!(
                seen.all("x-forwarded-for").join(", "),
                format!("{spoofed}, 127.0.0.1"),
                "{way:?}"
            );
        }
        cohort.shutdown().await;
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_override_trusts_the_client_not_the_proxy() {
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let config = Config::new().trusted_proxies(&["127.0.0.1/32"]);
    let cohort = TestCohort::start(routes(config, &stable, &canary, |r| {
        r.sticky(&["header:x-user-id"])
            .override_header("x-force")
            .trusted(&["192.0.2.0/24"])
    }))
    .await;
    let user = key_in("stable", SALT, 50.0, "user");
    for way in WAYS {
        // A tester in 192.0.2.0/24 behind the proxy forces the canary.
        let got = request(
            &cohort,
            way,
            &[
                ("x-user-id", &user),
                ("x-forwarded-for", "192.0.2.10"),
                ("x-force", "canary"),
            ],
        )
        .await;
        assert_eq!(got.body, "canary", "{way:?}: a trusted client forces");
        // Anyone else behind the same proxy does not, even naming a trusted address
        // left of their own.
        let got = request(
            &cohort,
            way,
            &[
                ("x-user-id", &user),
                ("x-forwarded-for", "192.0.2.10, 198.51.100.9"),
                ("x-force", "canary"),
            ],
        )
        .await;
        assert_eq!(got.body, "stable", "{way:?}: an untrusted client does not");
        assert!(
            stable.last_seen().headers.get("x-force").is_none(),
            "{way:?}: its override header is stripped"
        );
        // The proxy itself (no header) is not in override.trusted either.
        let got = request(&cohort, way, &[("x-user-id", &user), ("x-force", "canary")]).await;
        assert_eq!(got.body, "stable", "{way:?}");
    }
    cohort.shutdown().await;
}
