//! TLS on both sides, seen from outside: cohort terminating HTTPS (HTTP/1.1 and HTTP/2,
//! with curl as a real client), SNI certificates, certificate rotation on disk without
//! a restart, mTLS, handshake failures; and cohort as a TLS client of `https://`
//! upstreams (CA file, wrong CA, insecure_skip_verify, client certificates), plus h2
//! and h2c upstreams. Every certificate is made at test time.
mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{get, Config, FakeUpstream, Route, TestCohort, UpstreamTls, PATIENCE};
use tls_support::{client_config, server_config, Pki, TlsConn, TlsFront};

const H2: &[u8] = b"h2";
const H1: &[u8] = b"http/1.1";
const HANDSHAKE_ERRORS: &str = "cohort_tls_handshake_errors_total";
const UPSTREAM_ERRORS: &str = "cohort_upstream_errors_total";

/// Runs a command without blocking the test's runtime, which also runs the upstreams.
trait OffRuntime {
    async fn output_off_runtime(self) -> std::process::Output;
}

impl OffRuntime for &mut Command {
    async fn output_off_runtime(self) -> std::process::Output {
        let mut command = std::mem::replace(self, Command::new("true"));
        tokio::task::spawn_blocking(move || command.output().expect("run curl"))
            .await
            .expect("curl task")
    }
}

fn p(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// A config whose listener speaks TLS with `leaf` as its default certificate.
fn tls_listener(leaf: &tls_support::Leaf) -> Config {
    Config::new().tls(&leaf.cert, &leaf.key)
}

/// The route "web" to `stable` and `canary`.
fn web(stable: &FakeUpstream, canary: &FakeUpstream) -> Route {
    Route::new("web").stable(stable).canary(canary)
}

/// A route "shop" on host `shop.test` with `leaf` as its own certificate, to `upstream`.
/// A TLS listener serving `localhost` from a certificate in its own directory (apart
/// from the config's), in front of a stable and a canary upstream.
struct LocalhostTls {
    pki: Pki,
    leaf: tls_support::Leaf,
    cohort: TestCohort,
    _certs: tempfile::TempDir,
    _upstreams: [FakeUpstream; 2],
}

impl LocalhostTls {
    async fn start(name: &str) -> LocalhostTls {
        let pki = Pki::new(name);
        let certs = tempfile::tempdir().expect("tempdir");
        let leaf = pki.write_leaf(
            certs.path(),
            "server",
            &["localhost"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let stable = FakeUpstream::start("stable").await;
        let canary = FakeUpstream::start("canary").await;
        let cohort = TestCohort::start(tls_listener(&leaf).route(web(&stable, &canary))).await;
        LocalhostTls {
            pki,
            leaf,
            cohort,
            _certs: certs,
            _upstreams: [stable, canary],
        }
    }
}

fn shop_route(leaf: &tls_support::Leaf, upstream: &FakeUpstream) -> Route {
    Route::new("shop")
        .host("shop.test")
        .salt("s")
        .stable(upstream)
        .tls(&leaf.cert, &leaf.key)
}

// ---------------------------------------------------------------------------------------
// Downstream: cohort terminates TLS
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn curl_gets_http2_over_tls_with_https_forwarding_and_a_secure_cookie() {
    let pki = Pki::new("edge");
    let leaf = pki.server_leaf("server", &["localhost", "127.0.0.1"]);
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(tls_listener(&leaf).route(web(&stable, &canary))).await;
    let port = cohort.proxy.port();

    let out = Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(pki.ca_path())
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-D", "-", "-w", "\nversion=%{http_version}\n"])
        .arg(format!("https://localhost:{port}/hello"))
        .output_off_runtime()
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("HTTP/2 200"), "{stdout}");
    assert!(stdout.contains("version=2"), "{stdout}");
    assert!(
        stdout.contains("\nstable\n") || stdout.contains("\ncanary\n"),
        "{stdout}"
    );
    // No key at all: a cohort_id cookie, Secure on a TLS listener.
    let cookie = stdout
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: cohort_id="))
        .unwrap_or_else(|| panic!("no cohort_id cookie in {stdout}"));
    assert!(cookie.contains("; Secure"), "{cookie}");

    let seen = if stable.hits() > 0 {
        stable.last_seen()
    } else {
        canary.last_seen()
    };
    assert_eq!(seen.one("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.one("host"), Some(format!("localhost:{port}").as_str()));
    assert_eq!(seen.uri, "/hello");

    // And HTTP/1.1 over TLS from curl too.
    let out = Command::new("curl")
        .args(["-sS", "--http1.1", "--cacert"])
        .arg(pki.ca_path())
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .args(["-H", "x-user-id: alice"])
        .arg(format!("https://localhost:{port}/"))
        .output_off_runtime()
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 1.1");
    assert_eq!(cohort.series(HANDSHAKE_ERRORS, &[]).await, 0.0);
    cohort.shutdown().await;
}

#[tokio::test]
async fn sni_picks_the_routes_certificate_and_the_default_serves_the_rest() {
    let pki = Pki::new("sni");
    let default = pki.server_leaf("default", &["localhost", "127.0.0.1"]);
    let shop = pki.server_leaf("shop", &["shop.test"]);
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let shop_stable = FakeUpstream::start("shop").await;
    let config = tls_listener(&default)
        .route(web(&stable, &canary))
        .route(shop_route(&shop, &shop_stable));
    let cohort = TestCohort::start(config).await;
    let config = client_config(&pki.ca_path(), &[H1], None);

    let mut conn = TlsConn::connect(cohort.proxy, "shop.test", config.clone())
        .await
        .expect("shop handshake");
    assert_eq!(
        conn.served[0], shop.der,
        "SNI shop.test gets the shop certificate"
    );
    let answer = conn.get("shop.test", "/", &[]).await.expect("request");
    assert_eq!(answer.text(), "shop");

    // Case-insensitive, like host matching.
    let conn = TlsConn::connect(cohort.proxy, "SHOP.test", config.clone())
        .await
        .expect("upper-case SNI");
    assert_eq!(conn.served[0], shop.der);

    let conn = TlsConn::connect(cohort.proxy, "localhost", config.clone())
        .await
        .expect("default handshake");
    assert_eq!(conn.served[0], default.der, "other names get listen.tls");
    // An IP address sends no SNI at all: the default certificate.
    let mut conn = TlsConn::connect(cohort.proxy, "127.0.0.1", config.clone())
        .await
        .expect("no-SNI handshake");
    assert_eq!(conn.served[0], default.der);
    let answer = conn
        .get("127.0.0.1", "/", &[("x-user-id", "u")])
        .await
        .expect("request");
    assert_eq!(answer.status, 200);
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections_while_old_ones_keep_working() {
    let LocalhostTls {
        pki,
        leaf,
        cohort,
        _certs,
        _upstreams,
    } = LocalhostTls::start("rotate").await;
    let config = client_config(&pki.ca_path(), &[H2, H1], None);

    let mut old = TlsConn::connect(cohort.proxy, "localhost", config.clone())
        .await
        .expect("first handshake");
    assert_eq!(old.served[0], leaf.der);
    assert_eq!(old.alpn.as_deref(), Some(H2), "ALPN prefers h2");
    let first = old
        .get("localhost", "/", &[("x-user-id", "a")])
        .await
        .expect("request");
    assert_eq!((first.status, first.version), (200, http::Version::HTTP_2));

    let rotated_at = Instant::now();
    let new_der = pki.rotate(&leaf, &["localhost"]);
    let took = loop {
        let conn = TlsConn::connect(cohort.proxy, "localhost", config.clone())
            .await
            .expect("handshake during rotation");
        if conn.served[0] == new_der {
            break rotated_at.elapsed();
        }
        assert!(
            rotated_at.elapsed() < PATIENCE,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("new certificate served {took:?} after the rename");

    // The connection opened before the rotation goes on.
    let again = old
        .get("localhost", "/", &[("x-user-id", "a")])
        .await
        .expect("old connection");
    assert_eq!(again.status, 200);

    // A broken certificate is rejected and the one in force keeps serving.
    tls_support::write_atomically(&leaf.cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let conn = TlsConn::connect(cohort.proxy, "localhost", config.clone())
        .await
        .expect("handshake after a bad write");
    assert_eq!(conn.served[0], new_der);
    cohort.shutdown().await;
}

/// The certificate files are inputs of the config like its text: a change to one is a
/// reload through the same path (counted, a new generation, the whole config re-read),
/// and a broken one is a rejected reload while the snapshot in force keeps serving.
#[tokio::test]
async fn a_certificate_change_is_a_reload_and_a_broken_one_a_rejected_reload() {
    let LocalhostTls {
        pki,
        leaf,
        cohort,
        _certs,
        _upstreams,
    } = LocalhostTls::start("reload-path").await;
    let config = client_config(&pki.ca_path(), &[H1], None);
    let figures = || async {
        let text = cohort.metrics().await;
        let value =
            |name: &str, labels: &[(&str, &str)]| support::prom::series_value(&text, name, labels);
        (
            value("cohort_config_generation", &[]),
            value("cohort_config_reloads_total", &[("result", "ok")]),
            value("cohort_config_reloads_total", &[("result", "error")]),
        )
    };
    let (generation, ok, error) = figures().await;

    let new_der = pki.rotate(&leaf, &["localhost"]);
    let deadline = Instant::now() + PATIENCE;
    while TlsConn::connect(cohort.proxy, "localhost", config.clone())
        .await
        .expect("handshake")
        .served[0]
        != new_der
    {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after_rotation = figures().await;
    assert_eq!(
        after_rotation,
        (generation + 1.0, ok + 1.0, error),
        "(generation, ok, error) after a rotation"
    );

    tls_support::write_atomically(&leaf.cert, b"-----BEGIN CERTIFICATE-----\nnot base64\n");
    let deadline = Instant::now() + PATIENCE;
    while figures().await.2 == error {
        assert!(
            Instant::now() < deadline,
            "the broken certificate was never rejected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(figures().await, (generation + 1.0, ok + 1.0, error + 1.0));
    let conn = TlsConn::connect(cohort.proxy, "localhost", config.clone())
        .await
        .expect("handshake after a bad write");
    assert_eq!(conn.served[0], new_der);
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_kubernetes_secret_symlink_swap_is_picked_up() {
    // A mounted Secret: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>/; an update
    // writes a new timestamped directory and re-points ..data with a rename.
    let pki = Pki::new("k8s");
    let mount = tempfile::tempdir().expect("tempdir");
    let version = |name: &str| {
        let dir = mount.path().join(name);
        std::fs::create_dir(&dir).expect("mkdir");
        let leaf = pki.write_leaf(
            &dir,
            "tls",
            &["localhost"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        (dir, leaf)
    };
    let (first_dir, first) = version("..2026_01");
    std::os::unix::fs::symlink(&first_dir, mount.path().join("..data")).expect("..data");
    for file in ["tls.pem", "tls.key"] {
        std::os::unix::fs::symlink(Path::new("..data").join(file), mount.path().join(file))
            .expect("link");
    }
    let mounted = tls_support::Leaf {
        cert: mount.path().join("tls.pem"),
        key: mount.path().join("tls.key"),
        der: first.der.clone(),
    };
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(tls_listener(&mounted).route(web(&stable, &canary))).await;
    let config = client_config(&pki.ca_path(), &[H1], None);
    let conn = TlsConn::connect(cohort.proxy, "localhost", config.clone())
        .await
        .expect("handshake");
    assert_eq!(conn.served[0], first.der);

    let (second_dir, second) = version("..2026_02");
    let tmp = mount.path().join("..data_tmp");
    std::os::unix::fs::symlink(&second_dir, &tmp).expect("..data_tmp");
    std::fs::rename(&tmp, mount.path().join("..data")).expect("swap ..data");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let conn = TlsConn::connect(cohort.proxy, "localhost", config.clone())
            .await
            .expect("handshake");
        if conn.served[0] == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the swapped certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cohort.shutdown().await;
}

#[tokio::test]
async fn a_config_reload_adds_an_sni_certificate_and_cannot_turn_tls_off() {
    let pki = Pki::new("reload");
    let default = pki.server_leaf("default", &["localhost"]);
    let shop = pki.server_leaf("shop", &["shop.test"]);
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(tls_listener(&default).route(web(&stable, &canary))).await;
    let config = client_config(&pki.ca_path(), &[H1], None);
    let conn = TlsConn::connect(cohort.proxy, "shop.test", config.clone()).await;
    assert!(
        conn.is_err(),
        "no shop certificate yet: the default one names localhost only"
    );

    let with_shop = tls_listener(&default)
        .route(web(&stable, &canary))
        .route(shop_route(&shop, &stable));
    tls_support::write_atomically(&cohort.config_path, with_shop.to_toml().as_bytes());
    let deadline = Instant::now() + PATIENCE;
    let mut conn = loop {
        if let Ok(conn) = TlsConn::connect(cohort.proxy, "shop.test", config.clone()).await {
            break conn;
        }
        assert!(
            Instant::now() < deadline,
            "the reloaded SNI certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(conn.served[0], shop.der);
    assert_eq!(
        conn.get("shop.test", "/", &[])
            .await
            .expect("request")
            .text(),
        "stable"
    );

    // Removing listen.tls needs a restart: the listener keeps speaking TLS.
    let plain = Config::new().route(web(&stable, &canary));
    tls_support::write_atomically(&cohort.config_path, plain.to_toml().as_bytes());
    assert_eq!(
        cohort
            .series_eventually("cohort_config_generation", &[], 3.0)
            .await,
        3.0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conn = TlsConn::connect(cohort.proxy, "localhost", config.clone())
        .await
        .expect("still TLS");
    assert_eq!(conn.served[0], default.der);
    // /config shows what is in force: the listener's TLS settings stay.
    let effective = support::get(&cohort.admin_url("/config"), &[]).await;
    let effective: serde_json::Value = serde_json::from_slice(&effective.body).expect("json");
    assert!(effective["listen"]["tls"].is_object(), "{effective}");
    cohort.shutdown().await;
}

#[tokio::test]
async fn sec1_ec_keys_are_read_like_pkcs8_ones() {
    let pki = Pki::new("sec1");
    let leaf = pki.server_leaf_sec1("server", &["localhost"]);
    let key = std::fs::read_to_string(&leaf.key).expect("key");
    assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{key}");
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(tls_listener(&leaf).route(web(&stable, &canary))).await;
    let mut conn = TlsConn::connect(
        cohort.proxy,
        "localhost",
        client_config(&pki.ca_path(), &[H1], None),
    )
    .await
    .expect("handshake with a SEC1 key");
    assert_eq!(conn.served[0], leaf.der);
    let answer = conn
        .get("localhost", "/", &[("x-user-id", "k")])
        .await
        .expect("request");
    assert_eq!(answer.status, 200);
    cohort.shutdown().await;
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_spoken() {
    let pki = Pki::new("versions");
    let leaf = pki.server_leaf("server", &["localhost"]);
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(tls_listener(&leaf).route(web(&stable, &canary))).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der()).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(tls_support::provider())
            .with_protocol_versions(&[version])
            .expect("version")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut conn = TlsConn::connect(cohort.proxy, "localhost", std::sync::Arc::new(config))
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        let answer = conn
            .get("localhost", "/", &[("x-user-id", "v")])
            .await
            .expect("request");
        assert_eq!(answer.status, 200);
    }
    cohort.shutdown().await;
}

#[tokio::test]
async fn mtls_accepts_known_client_certificates_and_refuses_the_rest() {
    let pki = Pki::new("mtls-server");
    let clients = Pki::new("mtls-clients");
    let strangers = Pki::new("strangers");
    let leaf = pki.server_leaf("server", &["localhost"]);
    let good = clients.client_leaf("good");
    let stranger = strangers.client_leaf("stranger");
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(
        tls_listener(&leaf)
            .client_ca(&clients.ca_path())
            .route(web(&stable, &canary)),
    )
    .await;

    let mut conn = TlsConn::connect(
        cohort.proxy,
        "localhost",
        client_config(&pki.ca_path(), &[H1], Some(&good)),
    )
    .await
    .expect("known client");
    let answer = conn
        .get("localhost", "/", &[("x-user-id", "a")])
        .await
        .expect("request");
    assert_eq!(answer.status, 200);

    // TLS 1.3 clients finish their side first; the refusal arrives on the first read.
    for client in [None, Some(&stranger)] {
        let refused = match TlsConn::connect(
            cohort.proxy,
            "localhost",
            client_config(&pki.ca_path(), &[H1], client),
        )
        .await
        {
            Err(_) => true,
            Ok(mut conn) => conn.get("localhost", "/", &[]).await.is_err(),
        };
        assert!(refused, "a client without a known certificate was served");
    }
    assert_eq!(
        cohort.series_eventually(HANDSHAKE_ERRORS, &[], 2.0).await,
        2.0
    );
    assert_eq!(
        stable.hits() + canary.hits(),
        1,
        "refused clients never reach the router"
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn failed_handshakes_are_counted_and_never_reach_the_router() {
    let pki = Pki::new("bad-clients");
    let leaf = pki.server_leaf("server", &["localhost"]);
    let other = Pki::new("other");
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(tls_listener(&leaf).route(web(&stable, &canary))).await;

    // Plain HTTP to the TLS port.
    let mut raw = support::RawConn::connect(cohort.proxy).await;
    raw.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    // A client that does not trust cohort's certificate.
    let distrust = TlsConn::connect(
        cohort.proxy,
        "localhost",
        client_config(&other.ca_path(), &[H1], None),
    )
    .await;
    assert!(distrust.is_err());

    assert_eq!(
        cohort.series_eventually(HANDSHAKE_ERRORS, &[], 2.0).await,
        2.0
    );
    let metrics = cohort.metrics().await;
    // The unrouted statuses are exported from the start, all still at 0.
    let unrouted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("cohort_unrouted_requests_total{"))
        .collect();
    assert!(
        !unrouted.is_empty() && unrouted.iter().all(|l| l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(!metrics.contains("cohort_requests_total{"), "{metrics}");
    assert_eq!(stable.hits() + canary.hits(), 0);
    cohort.shutdown().await;
}

/// On a TLS connection hyper parses the heads: a malformed one gets its 400 and is
/// counted in `cohort_unrouted_requests_total` like one on cohort's own plain path.
#[tokio::test]
async fn a_malformed_request_over_tls_gets_400_and_is_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pki = Pki::new("malformed");
    let leaf = pki.server_leaf("server", &["localhost"]);
    let stable = FakeUpstream::start("stable").await;
    let canary = FakeUpstream::start("canary").await;
    let cohort = TestCohort::start(tls_listener(&leaf).route(web(&stable, &canary))).await;
    let tcp = tokio::net::TcpStream::connect(cohort.proxy)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(client_config(&pki.ca_path(), &[H1], None))
        .connect(name, tcp)
        .await
        .expect("handshake");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header Name: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    // cohort closes after the answer, with or without a close_notify.
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
    assert_eq!(
        cohort
            .series_eventually("cohort_unrouted_requests_total", &[("status", "400")], 1.0)
            .await,
        1.0
    );
    assert_eq!(stable.hits() + canary.hits(), 0);
    cohort.shutdown().await;
}

#[tokio::test]
async fn bad_certificate_files_are_rejected_with_file_key_and_reason() {
    let pki = Pki::new("bad-files");
    let leaf = pki.server_leaf("server", &["localhost"]);
    let other = pki.server_leaf("other", &["localhost"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("cohort.toml");
    // Raw TOML on purpose: minimal files that validation must refuse, each with one
    // bad `tls` value, checked by `config::parse` alone (nothing is started).
    let base = "[[routes]]\nname = \"r\"\nsalt = \"s\"\nstable = { endpoints = [\"http://127.0.0.1:1\"] }\n";
    let parse = |listen: &str, routes: &str| {
        cohort::config::parse(&format!("[listen]\n{listen}\n{routes}"), &file)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let missing = dir.path().join("missing.pem");
    let err = parse(
        &format!("tls = {{ cert = {}, key = {} }}", p(&missing), p(&leaf.key)),
        base,
    )
    .unwrap_err();
    assert!(
        err.contains("listen.tls.cert: ") && err.contains("missing.pem: cannot read the file"),
        "{err}"
    );

    let err = parse(
        &format!(
            "tls = {{ cert = {}, key = {} }}",
            p(&leaf.cert),
            p(&other.key)
        ),
        base,
    )
    .unwrap_err();
    assert!(
        err.contains("listen.tls.key: ") && err.contains("does not match the certificate in"),
        "{err}"
    );

    let err = parse(
        &format!(
            "tls = {{ cert = {}, key = {} }}",
            p(&leaf.key),
            p(&leaf.key)
        ),
        base,
    )
    .unwrap_err();
    assert!(
        err.contains("listen.tls.cert: ") && err.contains("no certificate found"),
        "{err}"
    );

    let err = parse(
        "",
        &format!(
            "{base}host = \"a.test\"\ntls = {{ cert = {}, key = {} }}\n",
            p(&leaf.cert),
            p(&leaf.key)
        ),
    )
    .unwrap_err();
    assert!(err.contains("routes[0].tls: needs listen.tls"), "{err}");

    let err = parse(
        "",
        "[[routes]]\nname = \"r\"\nsalt = \"s\"\nstable = { endpoints = [\"http://127.0.0.1:1\"], protocol = \"h2\" }\n",
    )
    .unwrap_err();
    assert!(
        err.contains("routes[0].stable.endpoints[0]: protocol = \"h2\" needs an https:// endpoint"),
        "{err}"
    );

    let err = parse(
        "",
        &format!(
            "[[routes]]\nname = \"r\"\nsalt = \"s\"\nstable = {{ endpoints = [\"https://127.0.0.1:1\"], tls = {{ ca = {} }} }}\n",
            p(&missing)
        ),
    )
    .unwrap_err();
    assert!(
        err.contains("routes[0].stable.tls.ca: ") && err.contains("cannot read the file"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Upstream: cohort as a TLS client
// ---------------------------------------------------------------------------------------

/// A route `name` whose stable variant is `stable_url` with `tls`.
fn https_route(name: &str, stable_url: &str, tls: UpstreamTls, canary: &FakeUpstream) -> Route {
    Route::new(name)
        .salt("s")
        .stable_urls(&[stable_url])
        .stable_tls(tls)
        .canary(canary)
}

#[tokio::test]
async fn https_upstreams_are_verified_against_a_ca_file_and_a_wrong_ca_is_a_502_tls() {
    let upstream_pki = Pki::new("upstream");
    let wrong = Pki::new("wrong");
    let leaf = upstream_pki.server_leaf("up", &["localhost"]);
    let backend = FakeUpstream::start("secure").await;
    let canary = FakeUpstream::start("canary").await;
    let front = TlsFront::start(backend.addr, server_config(&leaf, &[H1], None)).await;
    let config = Config::new()
        .route(https_route(
            "api",
            &front.https_url("localhost"),
            UpstreamTls::new().ca(&upstream_pki.ca_path()),
            &canary,
        ))
        .route(
            https_route(
                "wrong",
                &front.https_url("localhost"),
                UpstreamTls::new().ca(&wrong.ca_path()),
                &canary,
            )
            .path_prefix("/wrong"),
        );
    let cohort = TestCohort::start(config).await;

    for _ in 0..3 {
        let answer = get(&cohort.url("/"), &[("x-user-id", "alice")]).await;
        assert_eq!((answer.status, answer.text().as_str()), (200, "secure"));
    }
    assert_eq!(
        backend.connections(),
        1,
        "the TLS connection is kept alive and reused"
    );
    let sessions = front.sessions.lock().expect("sessions").clone();
    assert_eq!(
        sessions[0],
        (Some(H1.to_vec()), Some("localhost".to_owned())),
        "ALPN http/1.1, SNI from the URL host"
    );

    let answer = get(&cohort.url("/wrong"), &[("x-user-id", "alice")]).await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.text(), "upstream TLS handshake failed\n");
    assert_eq!(answer.variant(), Some("stable"));
    let labels = [("route", "wrong"), ("variant", "stable"), ("kind", "tls")];
    assert_eq!(
        cohort
            .series_eventually(UPSTREAM_ERRORS, &labels, 1.0)
            .await,
        1.0
    );
    let requests = [("route", "wrong"), ("variant", "stable"), ("status", "502")];
    assert_eq!(
        cohort
            .series_eventually("cohort_requests_total", &requests, 1.0)
            .await,
        1.0
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn server_name_insecure_skip_verify_and_client_certificates() {
    let upstream_pki = Pki::new("upstream");
    let clients = Pki::new("upstream-clients");
    let leaf = upstream_pki.server_leaf("up", &["api.internal"]);
    let client = clients.client_leaf("cohort");
    let backend = FakeUpstream::start("secure").await;
    let canary = FakeUpstream::start("canary").await;
    let plain_front = TlsFront::start(backend.addr, server_config(&leaf, &[H1], None)).await;
    let mtls_front = TlsFront::start(
        backend.addr,
        server_config(&leaf, &[H1], Some(&clients.ca_path())),
    )
    .await;

    let named = https_route(
        "api",
        &plain_front.https_url("127.0.0.1"),
        UpstreamTls::new()
            .ca(&upstream_pki.ca_path())
            .server_name("api.internal"),
        &canary,
    );
    let insecure = https_route(
        "insecure",
        &plain_front.https_url("127.0.0.1"),
        UpstreamTls::new().insecure_skip_verify(true),
        &canary,
    )
    .path_prefix("/insecure");
    let mtls = https_route(
        "mtls",
        &mtls_front.https_url("127.0.0.1"),
        UpstreamTls::new()
            .ca(&upstream_pki.ca_path())
            .server_name("api.internal")
            .client_cert(&client.cert, &client.key),
        &canary,
    )
    .path_prefix("/mtls");
    let refused = https_route(
        "refused",
        &mtls_front.https_url("127.0.0.1"),
        UpstreamTls::new()
            .ca(&upstream_pki.ca_path())
            .server_name("api.internal"),
        &canary,
    )
    .path_prefix("/refused");
    let config = Config::new()
        .route(named)
        .route(insecure)
        .route(mtls)
        .route(refused);
    let cohort = TestCohort::start(config).await;

    let answer = get(&cohort.url("/"), &[("x-user-id", "a")]).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "secure"));
    assert_eq!(
        plain_front.sessions.lock().expect("sessions")[0]
            .1
            .as_deref(),
        Some("api.internal")
    );

    // The certificate names api.internal, not 127.0.0.1, and no CA is given: only
    // insecure_skip_verify lets this through.
    let answer = get(&cohort.url("/insecure"), &[("x-user-id", "a")]).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "secure"));

    let answer = get(&cohort.url("/mtls"), &[("x-user-id", "a")]).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "secure"));
    assert_eq!(
        mtls_front
            .handshakes
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // Without the client certificate the upstream refuses the session: 502, kind tls.
    let answer = get(&cohort.url("/refused"), &[("x-user-id", "a")]).await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    let labels = [("route", "refused"), ("variant", "stable"), ("kind", "tls")];
    assert_eq!(
        cohort
            .series_eventually(UPSTREAM_ERRORS, &labels, 1.0)
            .await,
        1.0
    );
    cohort.shutdown().await;
}

#[tokio::test]
async fn h2c_and_h2_upstreams_share_one_multiplexed_connection() {
    let upstream_pki = Pki::new("h2-upstream");
    let leaf = upstream_pki.server_leaf("up", &["localhost"]);
    let h2c = FakeUpstream::start("h2c").await;
    let h2_backend = FakeUpstream::start("h2").await;
    let front = TlsFront::start(h2_backend.addr, server_config(&leaf, &[H2, H1], None)).await;
    let config = Config::new()
        .route(
            Route::new("plain")
                .salt("s")
                .stable(&h2c)
                .stable_protocol("h2c"),
        )
        .route(
            Route::new("secure")
                .path_prefix("/secure")
                .salt("s")
                .stable_urls(&[front.https_url("localhost")])
                .stable_protocol("h2")
                .stable_tls(UpstreamTls::new().ca(&upstream_pki.ca_path())),
        );
    let cohort = TestCohort::start(config).await;

    let many = (0..20).map(|i| {
        let url = cohort.url(if i % 2 == 0 { "/x" } else { "/secure/x" });
        async move { get(&url, &[("x-user-id", "a")]).await }
    });
    let answers = futures_join_all(many).await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), if i % 2 == 0 { "h2c" } else { "h2" });
    }
    let seen = h2c.last_seen();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(
        seen.uri,
        format!("http://{}/x", cohort.proxy),
        ":authority is the client's Host"
    );
    assert_eq!(h2_backend.last_seen().version, http::Version::HTTP_2);
    assert_eq!(
        front.sessions.lock().expect("sessions")[0].0.as_deref(),
        Some(H2)
    );
    assert_eq!(
        h2c.connections(),
        1,
        "one multiplexed h2c connection per endpoint and worker"
    );
    assert_eq!(
        front.handshakes.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // A closed connection is replaced.
    h2c.stop_and_wait().await;
    let h2c_again = FakeUpstream::restart_on("h2c-2", h2c.addr).await;
    let answer = get(&cohort.url("/x"), &[("x-user-id", "a")]).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "h2c-2"));
    assert_eq!(h2c_again.connections(), 1);
    cohort.shutdown().await;
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}
