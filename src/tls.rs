//! TLS with rustls (the `ring` provider, never OpenSSL): certificate, key and CA files;
//! the listener's certificates (SNI, mTLS, reload when their files change); and the
//! client configs for `https://` upstreams.
//!
//! Files are read and checked when the config is loaded (`crate::config`), so a
//! config naming a bad certificate is rejected like any other invalid config.
//! Afterwards [`ServerTls`] re-reads them when their directories change; a bad new file
//! is logged with its path and reason and the certificate in force keeps serving.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::Loaded;

/// ALPN protocol ids.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// How long a client may take for its TLS handshake before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The one crypto provider cohort uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// TLS 1.2 and 1.3 only (rustls supports nothing older).
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// A certificate, key or CA file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {cause}", path.display())]
pub struct TlsFileError {
    pub path: PathBuf,
    pub cause: TlsFileCause,
}

/// Why a TLS file cannot be used. The text is what `cohort check` and a rejected reload
/// print after the file's path.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileCause {
    #[error("cannot read the file: {0}")]
    Unreadable(std::io::Error),
    #[error("not a valid PEM certificate file: {0}")]
    NotPemCertificates(rustls::pki_types::pem::Error),
    #[error("no certificate found (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)")]
    NoCertificate,
    #[error("no private key found (expected a PEM PKCS#8, RSA or EC private key)")]
    NoPrivateKey,
    #[error("not a valid PEM private key file: {0}")]
    NotPemKey(rustls::pki_types::pem::Error),
    #[error("not a usable CA certificate: {0}")]
    UnusableCa(rustls::Error),
    #[error("unsupported private key: {0}")]
    UnsupportedKey(rustls::Error),
    #[error("does not match the certificate in {}: {source}", cert.display())]
    KeyMismatch {
        cert: PathBuf,
        source: rustls::Error,
    },
    /// rustls refused the protocol versions (not a file's fault; the path is empty).
    #[error("{0}")]
    Protocols(rustls::Error),
}

impl TlsFileError {
    fn new(path: &Path, cause: TlsFileCause) -> TlsFileError {
        TlsFileError {
            path: path.to_path_buf(),
            cause,
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError::new(path, TlsFileCause::Unreadable(e)))
}

/// Every certificate of a PEM file, in order (a chain: leaf first).
fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::new(path, TlsFileCause::NotPemCertificates(e)))?;
    if certs.is_empty() {
        return Err(TlsFileError::new(path, TlsFileCause::NoCertificate));
    }
    Ok(certs)
}

/// The first private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsFileError::new(path, TlsFileCause::NoPrivateKey)
        }
        e => TlsFileError::new(path, TlsFileCause::NotPemKey(e)),
    })
}

fn parse_roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(path, pem)? {
        roots
            .add(cert)
            .map_err(|e| TlsFileError::new(path, TlsFileCause::UnusableCa(e)))?;
    }
    Ok(roots)
}

fn certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsFileError> {
    let chain = parse_certs(cert_path, cert_pem)?;
    let key = parse_key(key_path, key_pem)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsFileError::new(key_path, TlsFileCause::UnsupportedKey(e)))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|source| {
        let cert = cert_path.to_path_buf();
        TlsFileError::new(key_path, TlsFileCause::KeyMismatch { cert, source })
    })?;
    Ok(certified)
}

fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.digest()
}

/// Something built from files, compared by the content it was built from (so a config
/// whose files did not change compares equal to the running one).
pub struct Built<T> {
    pub value: Arc<T>,
    pub fingerprint: u64,
}

impl<T> Clone for Built<T> {
    fn clone(&self) -> Self {
        Built {
            value: self.value.clone(),
            fingerprint: self.fingerprint,
        }
    }
}

impl<T> PartialEq for Built<T> {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl<T> Eq for Built<T> {}

impl<T> Hash for Built<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state);
    }
}

impl<T> fmt::Debug for Built<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Built({:016x})", self.fingerprint)
    }
}

// ---------------------------------------------------------------------------------------
// The listener side
// ---------------------------------------------------------------------------------------

/// A certificate with its key, and the CA that client certificates must chain to.
pub struct ServerMaterial {
    pub certified: Arc<CertifiedKey>,
    pub client_roots: Option<Arc<RootCertStore>>,
}

/// Reads and checks a listener certificate (`cert`, `key`, optional `client_ca`).
pub fn load_server_material(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Built<ServerMaterial>, TlsFileError> {
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certified = certified_key(cert, &cert_pem, key, &key_pem)?;
    let (client_roots, ca_pem) = match client_ca {
        Some(path) => {
            let pem = read(path)?;
            (Some(Arc::new(parse_roots(path, &pem)?)), pem)
        }
        None => (None, Vec::new()),
    };
    Ok(Built {
        fingerprint: fingerprint(&[&cert_pem, &key_pem, &ca_pem]),
        value: Arc::new(ServerMaterial {
            certified: Arc::new(certified),
            client_roots,
        }),
    })
}

/// A listener certificate's files, and what was read from them.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub material: Built<ServerMaterial>,
}

/// Picks the certificate by SNI; the default one for other names and for clients
/// that send no SNI.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_host: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello.server_name().and_then(|name| {
            // rustls hands SNI over as sent; host names compare case-insensitively.
            match self.by_host.get(name) {
                Some(key) => Some(key.clone()),
                None => self.by_host.get(&name.to_ascii_lowercase()).cloned(),
            }
        });
        Some(by_name.unwrap_or_else(|| self.default.clone()))
    }
}

/// Why rustls refused to build the listener's TLS from certificates that were read and
/// checked one by one.
#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    #[error("{0}")]
    Protocols(rustls::Error),
    #[error("listen.tls.client_ca: {0}")]
    ClientCa(rustls::server::VerifierBuilderError),
}

/// The listener's TLS for one config: `listen.tls`'s certificate by default, each
/// route's `tls` for its `host` by SNI (the first route naming a host wins); `None`
/// without `listen.tls`. Built with each snapshot, so a connection takes the
/// certificates of the snapshot in force when it is accepted and keeps them.
pub fn server_config(config: &Loaded) -> Result<Option<Arc<ServerConfig>>, ServerConfigError> {
    let Some(default) = &config.tls.listener else {
        return Ok(None);
    };
    let default = &default.material.value;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(ServerConfigError::Protocols)?;
    let builder = match &default.client_roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(ServerConfigError::ClientCa)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut by_host = HashMap::new();
    for (route, tls) in config.routes.iter().zip(&config.tls.routes) {
        if let (Some(host), Some(cert)) = (&route.host, &tls.sni) {
            by_host
                .entry(host.clone())
                .or_insert_with(|| cert.material.value.certified.clone());
        }
    }
    let resolver = SniResolver {
        default: default.certified.clone(),
        by_host,
    };
    let mut server = builder.with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Some(Arc::new(server)))
}

// ---------------------------------------------------------------------------------------
// The upstream side
// ---------------------------------------------------------------------------------------

/// A variant's `tls` settings for `https://` endpoints, with its paths resolved.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// Speak HTTP/2 (ALPN `h2`) rather than HTTP/1.1.
    pub h2: bool,
}

/// The roots `https://` upstreams are verified against without a `ca`: the system's CA
/// bundle (`SSL_CERT_FILE`, or the usual Debian, Red Hat, Alpine and SUSE paths), else
/// the Mozilla roots compiled into cohort.
fn platform_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let candidates = std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .into_iter()
                .chain(
                    [
                        "/etc/ssl/certs/ca-certificates.crt",
                        "/etc/pki/tls/certs/ca-bundle.crt",
                        "/etc/ssl/cert.pem",
                        "/etc/ssl/ca-bundle.pem",
                    ]
                    .map(PathBuf::from),
                );
            for path in candidates {
                let Ok(pem) = std::fs::read(&path) else {
                    continue;
                };
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
                let (added, _) = roots.add_parsable_certificates(certs);
                if added > 0 {
                    tracing::debug!(file = %path.display(), roots = added, "using the system's CA certificates for https:// upstreams");
                    return Arc::new(roots);
                }
            }
            tracing::debug!("no system CA bundle found; using the built-in Mozilla roots for https:// upstreams");
            Arc::new(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
        })
        .clone()
}

/// Reads a variant's TLS files and builds its client config; an error names the file
/// (its `path` tells the caller which setting it came from).
fn client_config(settings: &ClientSettings) -> Result<Built<ClientConfig>, TlsFileError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsFileError::new(Path::new(""), TlsFileCause::Protocols(e)))?;
    let mut seen: Vec<Vec<u8>> = vec![vec![
        u8::from(settings.insecure_skip_verify),
        u8::from(settings.h2),
    ]];
    let builder = if settings.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let roots = match &settings.ca {
            Some(ca) => {
                let pem = read(ca)?;
                let roots = parse_roots(ca, &pem)?;
                seen.push(pem);
                Arc::new(roots)
            }
            None => platform_roots(),
        };
        builder.with_root_certificates(roots)
    };
    let mut config = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let cert_pem = read(cert)?;
            let key_pem = read(key)?;
            let certified = certified_key(cert, &cert_pem, key, &key_pem)?;
            seen.push(cert_pem);
            seen.push(key_pem);
            builder.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
                certified,
            )))
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![if settings.h2 { ALPN_H2 } else { ALPN_HTTP11 }.to_vec()];
    let parts: Vec<&[u8]> = seen.iter().map(Vec::as_slice).collect();
    Ok(Built {
        fingerprint: fingerprint(&parts),
        value: Arc::new(config),
    })
}

/// A ready TLS client config for one variant's `https://` endpoints.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ClientTls {
    pub config: Built<ClientConfig>,
    /// SNI and the name the certificate must carry; the endpoint's host when `None`.
    pub server_name: Option<ServerName<'static>>,
    pub h2: bool,
    /// Files, options and server name in one number: connections verified under one
    /// set of settings are never lent to another (`crate::upstream::Target`).
    pub id: u64,
}

impl ClientTls {
    /// Reads the variant's files and builds its client config. `server_name` has passed
    /// the config's rules (a DNS name or an IP address).
    pub fn build(
        settings: &ClientSettings,
        server_name: Option<&str>,
    ) -> Result<ClientTls, TlsFileError> {
        let config = client_config(settings)?;
        let id = {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&config.fingerprint.to_le_bytes());
            h.update(server_name.unwrap_or("").as_bytes());
            // Never 0 or 1, the ids of plain HTTP/1.1 and h2c.
            h.digest() | 2
        };
        Ok(ClientTls {
            config,
            server_name: server_name.and_then(|n| ServerName::try_from(n.to_owned()).ok()),
            h2: settings.h2,
            id,
        })
    }
}

/// `insecure_skip_verify = true`: any certificate is accepted (signatures are still
/// checked, so the handshake itself is sound). Never the default; logged at every load.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
