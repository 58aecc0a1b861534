//! The HTTP calls the library makes that are not proxying: the guard's `on_rollback`
//! webhook (a JSON POST) and a fleet guard's Prometheus queries (a form POST). Plain
//! HTTP/1.1 (config validation admits `http://` only), a connection per call, a
//! timeout, and a bounded answer. The command line has its own client.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// Largest answer body read: a Prometheus vector for a large fleet fits many times.
const MAX_ANSWER: usize = 8 << 20;

/// Why one call got no answer. The messages are the warnings' `error` field.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
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
    #[error("the answer from {authority} is over {MAX_ANSWER} bytes")]
    TooLarge { authority: String },
    #[error("no answer from http://{authority} within {timeout:?}")]
    Timeout {
        authority: String,
        timeout: Duration,
    },
}

/// An answer: its status and body.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// POSTs `body` (of `content_type`) to `url` and reads the answer, all within `timeout`,
/// connecting included. A URL without a port is called on port 80.
pub(crate) async fn post(
    url: &Uri,
    content_type: &'static str,
    body: Bytes,
    timeout: Duration,
) -> Result<Answer, CallError> {
    let given = url
        .authority()
        .ok_or_else(|| CallError::NoHost {
            url: url.to_string(),
        })?
        .as_str();
    let authority = if given.contains(':') && !given.ends_with(']') {
        given.to_owned()
    } else {
        format!("{given}:80")
    };
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    tokio::time::timeout(timeout, exchange(&authority, path, content_type, body))
        .await
        .map_err(|_| CallError::Timeout {
            authority: given.to_owned(),
            timeout,
        })?
}

async fn exchange(
    authority: &str,
    path: &str,
    content_type: &'static str,
    body: Bytes,
) -> Result<Answer, CallError> {
    let mut sender = open(authority).await?;
    // A server that closed the new connection at once gets one more.
    if sender.ready().await.is_err() {
        sender = open(authority).await?;
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => CallError::Exchange(*e),
            Err(_) => CallError::TooLarge {
                authority: authority.to_owned(),
            },
        })?
        .to_bytes();
    Ok(Answer { status, body })
}

async fn open(
    authority: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, CallError> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|source| CallError::Connect {
            authority: authority.to_owned(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| CallError::Handshake {
            authority: authority.to_owned(),
            source,
        })?;
    tokio::spawn(conn);
    Ok(sender)
}
