//! A small plain-HTTP/1.1 client for the command line (`set`, `rollback`, `status`)
//! and the demo: one keep-alive connection, whole responses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// How long the CLI waits for an admin call before giving up.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection to `authority` (`host:port`).
pub struct Connection {
    authority: String,
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(authority: &str) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {authority} failed"))?;
        tokio::spawn(conn);
        Ok(Connection {
            authority: authority.to_owned(),
            sender,
        })
    }

    /// Sends `method path` with `headers` and `body`, reconnecting once if the
    /// server closed the idle connection.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        if self.sender.ready().await.is_err() {
            *self = Connection::open(&self.authority).await?;
        }
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.authority.as_str());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = self.sender.send_request(req.body(Full::new(body))?).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

/// The admin listener the command line calls when told nothing.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9901";

/// An `--admin` value as a base URL: `http://host:port[/prefix]` as given, and a bare
/// `host:port` (`127.0.0.1:9901`, `[::1]:9901`, `localhost:9901`) as plain http, the
/// only scheme the admin listener speaks.
pub fn admin_base(text: &str) -> String {
    let text = text.trim();
    if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    }
}

/// The URL that reaches, from this machine, an admin listener bound to `addr` (a
/// config's `admin.address`). An unspecified address (`0.0.0.0`, `[::]`) listens on
/// every interface, so it is called on loopback of the same family: connecting to the
/// unspecified address itself works on Linux only, and says nothing to a reader.
pub fn admin_url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// One call to an `http://host:port` base URL plus `path`, with a timeout.
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<Answer> {
    let uri: Uri = base
        .parse()
        .with_context(|| format!("{base:?} is not a URL such as http://127.0.0.1:9901"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("{base:?}: only http:// admin URLs are supported");
    }
    let authority = uri
        .authority()
        .with_context(|| format!("{base:?} has no host"))?
        .as_str()
        .to_owned();
    let authority = if authority.contains(':') && !authority.ends_with(']') {
        authority
    } else {
        format!("{authority}:80")
    };
    let prefix = uri.path().trim_end_matches('/');
    let full_path = format!("{prefix}{path}");
    tokio::time::timeout(CALL_TIMEOUT, async {
        let mut conn = Connection::open(&authority).await?;
        conn.send(method, &full_path, headers, body).await
    })
    .await
    .with_context(|| format!("no answer from {base} within {CALL_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_values_without_a_scheme_are_plain_http() {
        for (given, base) in [
            ("127.0.0.1:9901", "http://127.0.0.1:9901"),
            (" [::1]:9901 ", "http://[::1]:9901"),
            ("localhost:9901", "http://localhost:9901"),
            ("http://127.0.0.1:9901", "http://127.0.0.1:9901"),
            ("http://10.0.0.7:9901/cohort", "http://10.0.0.7:9901/cohort"),
            // Kept as given, so `call` can say that only http:// is supported.
            ("https://10.0.0.7:9901", "https://10.0.0.7:9901"),
        ] {
            assert_eq!(admin_base(given), base, "{given}");
        }
    }

    #[test]
    fn an_unspecified_admin_address_is_called_on_loopback() {
        let url = |addr: &str| admin_url_for(addr.parse().expect("socket address"));
        assert_eq!(url("0.0.0.0:9901"), "http://127.0.0.1:9901");
        assert_eq!(url("[::]:9901"), "http://[::1]:9901");
        assert_eq!(url("127.0.0.1:9901"), "http://127.0.0.1:9901");
        assert_eq!(url("10.1.2.3:9000"), "http://10.1.2.3:9000");
        assert_eq!(url("[2001:db8::5]:9901"), "http://[2001:db8::5]:9901");
    }

    #[tokio::test]
    async fn call_itself_still_wants_the_scheme() {
        // `call` stays strict (the guard's webhook uses it too); the command line
        // normalises first.
        let err = call("127.0.0.1:1", Method::GET, "/", &[], Bytes::new())
            .await
            .err()
            .expect("no scheme");
        assert!(format!("{err:#}").contains("only http://"), "{err:#}");
    }
}
