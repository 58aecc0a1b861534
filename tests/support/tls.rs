//! TLS helpers for integration tests: a certificate authority made at test time (rcgen;
//! no private key is ever committed), HTTPS clients that report the certificate they
//! were served, and a TLS front that terminates TLS for a plain fake upstream.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test certificate authority whose files live in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    name: String,
}

/// A certificate and key written to disk.
#[derive(Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = params.self_signed(&ca_key).expect("ca cert");
        let pki = Pki {
            dir,
            ca,
            ca_key,
            name: name.to_owned(),
        };
        std::fs::write(pki.ca_path(), pki.ca.pem()).expect("write ca");
        pki
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}-ca.pem", self.name))
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    fn make(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String, Vec<u8>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign leaf");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// A server certificate (PKCS#8 EC key) for `names`, written as `{stem}.pem` and
    /// `{stem}.key` in this authority's directory.
    pub fn server_leaf(&self, stem: &str, names: &[&str]) -> Leaf {
        self.write_leaf(
            self.dir.path(),
            stem,
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate for mTLS.
    pub fn client_leaf(&self, stem: &str) -> Leaf {
        self.write_leaf(
            self.dir.path(),
            stem,
            &["client.test"],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// A new server certificate written to `cert`/`key` atomically (temp file +
    /// rename, as cert-manager and editors do). Returns its DER.
    pub fn rotate(&self, leaf: &Leaf, names: &[&str]) -> CertificateDer<'static> {
        let (cert, key, der) = self.make(names, ExtendedKeyUsagePurpose::ServerAuth);
        write_atomically(&leaf.key, key.as_bytes());
        write_atomically(&leaf.cert, cert.as_bytes());
        CertificateDer::from(der)
    }

    pub fn write_leaf(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        purpose: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        let (cert, key, der) = self.make(names, purpose);
        let leaf = Leaf {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
            der: CertificateDer::from(der),
        };
        std::fs::write(&leaf.cert, cert).expect("write cert");
        std::fs::write(&leaf.key, key).expect("write key");
        leaf
    }
}

impl Pki {
    /// A server certificate whose EC key is written in SEC1 form
    /// (`-----BEGIN EC PRIVATE KEY-----`), as older tools and `openssl ecparam` write it.
    pub fn server_leaf_sec1(&self, stem: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign leaf");
        let sec1 = sec1_of_pkcs8(&key.serialize_der());
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
            der: cert.der().clone(),
        };
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        std::fs::write(&leaf.key, pem("EC PRIVATE KEY", &sec1)).expect("write key");
        leaf
    }
}

/// The ECPrivateKey (SEC1) inside a PKCS#8 PrivateKeyInfo:
/// `SEQUENCE { INTEGER, SEQUENCE algorithm, OCTET STRING { ECPrivateKey } }`.
fn sec1_of_pkcs8(der: &[u8]) -> Vec<u8> {
    fn header(der: &[u8]) -> (u8, usize, usize) {
        let tag = der[0];
        let first = der[1] as usize;
        if first < 0x80 {
            return (tag, 2, first);
        }
        let n = first & 0x7f;
        let len = der[2..2 + n]
            .iter()
            .fold(0, |acc, b| (acc << 8) | *b as usize);
        (tag, 2 + n, len)
    }
    let (tag, head, _) = header(der);
    assert_eq!(tag, 0x30, "PKCS#8 starts with a SEQUENCE");
    let mut rest = &der[head..];
    for expected in [0x02, 0x30] {
        let (tag, head, len) = header(rest);
        assert_eq!(tag, expected);
        rest = &rest[head + len..];
    }
    let (tag, head, len) = header(rest);
    assert_eq!(tag, 0x04, "the private key is an OCTET STRING");
    rest[head..head + len].to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|l| std::str::from_utf8(l).expect("ascii"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp-swap");
    std::fs::write(&tmp, bytes).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

fn read_key(path: &Path) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_file(path).expect("key")
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .expect("certs")
        .map(|c| c.expect("cert"))
        .collect()
}

/// A client config trusting `ca`, offering `alpn`, optionally with a client certificate.
pub fn client_config(
    ca: &Path,
    alpn: &[&[u8]],
    client: Option<&Leaf>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca) {
        roots.add(cert).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(read_certs(&leaf.cert), read_key(&leaf.key))
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// An open HTTPS connection to cohort, HTTP/1.1 or HTTP/2 as ALPN decided.
pub struct TlsConn {
    pub served: Vec<CertificateDer<'static>>,
    pub alpn: Option<Vec<u8>>,
    sender: Sender,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

pub struct TlsAnswer {
    pub status: u16,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TlsAnswer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TlsConn {
    /// Connects to `addr` with SNI `server_name` (an IP address sends none).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<TlsConn, std::io::Error> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(server_name.to_owned()).expect("server name");
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let (_, session) = tls.get_ref();
        let served = session
            .peer_certificates()
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let alpn = session.alpn_protocol().map(|p| p.to_vec());
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(TlsConn {
            served,
            alpn,
            sender,
        })
    }

    /// One GET on this connection.
    pub async fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<TlsAnswer, hyper::Error> {
        let mut req = Request::builder();
        req = match self.sender {
            Sender::H1(_) => req.uri(path).header("host", host),
            Sender::H2(_) => req.uri(format!("https://{host}{path}")),
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).expect("request");
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(TlsAnswer {
            status,
            version,
            headers,
            body,
        })
    }
}

/// A server config for `leaf`, offering `alpn`, optionally requiring client
/// certificates from `client_ca`.
pub fn server_config(
    leaf: &Leaf,
    alpn: &[&[u8]],
    client_ca: Option<&Path>,
) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca) {
                roots.add(cert).expect("root");
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(read_certs(&leaf.cert), read_key(&leaf.key))
        .expect("server cert");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// What one accepted handshake negotiated: ALPN protocol and SNI.
pub type Session = (Option<Vec<u8>>, Option<String>);

/// Terminates TLS on 127.0.0.1 and pipes the bytes to a plain `backend` (a fake
/// upstream), so a test upstream speaks HTTPS. Records what each handshake negotiated.
pub struct TlsFront {
    pub addr: SocketAddr,
    /// Handshakes completed.
    pub handshakes: Arc<AtomicUsize>,
    /// Handshakes that failed.
    pub failures: Arc<AtomicUsize>,
    /// The ALPN protocol and SNI of each completed handshake.
    pub sessions: Arc<Mutex<Vec<Session>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    pub async fn start(backend: SocketAddr, config: Arc<rustls::ServerConfig>) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
        let addr = listener.local_addr().expect("front addr");
        let handshakes = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (ok, failed, seen) = (handshakes.clone(), failures.clone(), sessions.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (ok, failed, seen) = (ok.clone(), failed.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(stream).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    ok.fetch_add(1, Ordering::SeqCst);
                    {
                        let (_, session) = tls.get_ref();
                        seen.lock().expect("sessions").push((
                            session.alpn_protocol().map(|p| p.to_vec()),
                            session.server_name().map(str::to_owned),
                        ));
                    }
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            addr,
            handshakes,
            failures,
            sessions,
            task,
        }
    }

    pub fn https_url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.addr.port())
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
