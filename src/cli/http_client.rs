//! A small plain-HTTP/1.1 client for the command line (`set`, `rollback`, `status`)
//! and the demo: one keep-alive connection, whole responses. (The library's one
//! outgoing call, the `on_rollback` webhook, has its own in `cohort`'s `webhook`.)

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

    #[tokio::test]
    async fn call_itself_still_wants_the_scheme() {
        // `call` stays strict; the command line normalises first
        // (`admin_client::admin_base`).
        let err = call("127.0.0.1:1", Method::GET, "/", &[], Bytes::new())
            .await
            .err()
            .expect("no scheme");
        assert!(format!("{err:#}").contains("only http://"), "{err:#}");
    }
}
