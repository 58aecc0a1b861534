//! The one HTTP call the library makes that is not proxying: the guard's `on_rollback`
//! webhook, a JSON POST over plain HTTP/1.1 (config validation admits `http://` only),
//! on a connection of its own, with a timeout. The command line has its own client.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// How long one delivery attempt may take, connecting included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one delivery attempt got no answer. The messages are the warning's `error` field.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    #[error("{url:?} has no host")]
    NoHost { url: String },
    #[error("cannot connect to {authority}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake with {authority} failed")]
    Handshake {
        authority: String,
        #[source]
        source: hyper::Error,
    },
    #[error(transparent)]
    Request(#[from] http::Error),
    #[error(transparent)]
    Exchange(#[from] hyper::Error),
    #[error("no answer from http://{authority} within {CALL_TIMEOUT:?}")]
    Timeout { authority: String },
}

/// POSTs `body` as JSON to `url` and returns the answer's status (its body is read and
/// dropped). A URL without a port is called on port 80.
pub(crate) async fn post_json(url: &Uri, body: Bytes) -> Result<StatusCode, PostError> {
    let given = url
        .authority()
        .ok_or_else(|| PostError::NoHost {
            url: url.to_string(),
        })?
        .as_str();
    let authority = if given.contains(':') && !given.ends_with(']') {
        given.to_owned()
    } else {
        format!("{given}:80")
    };
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    tokio::time::timeout(CALL_TIMEOUT, exchange(&authority, path, body))
        .await
        .map_err(|_| PostError::Timeout {
            authority: given.to_owned(),
        })?
}

async fn exchange(authority: &str, path: &str, body: Bytes) -> Result<StatusCode, PostError> {
    let mut sender = open(authority).await?;
    // A server that closed the new connection at once gets one more.
    if sender.ready().await.is_err() {
        sender = open(authority).await?;
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

async fn open(
    authority: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, PostError> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|source| PostError::Connect {
            authority: authority.to_owned(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| PostError::Handshake {
            authority: authority.to_owned(),
            source,
        })?;
    tokio::spawn(conn);
    Ok(sender)
}
