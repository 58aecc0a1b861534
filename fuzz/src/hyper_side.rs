//! hyper's HTTP/1.1 server, configured as cohort's listener configures it
//! (`src/listener.rs`), reading the same bytes from an in-memory pipe: what hyper's
//! engine would do with a connection the own engine handed over, or one it never saw.
//!
//! No sockets, timers or threads: a current-thread runtime polls the connection until
//! it stops making progress (it waits for bytes that will never come) or ends.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request hyper handed to the service.
#[derive(Debug, Clone, Default)]
pub struct HyperRequest {
    pub method: String,
    /// The target as hyper's `Uri` holds it (origin-form: path and query).
    pub target: String,
    pub version: http::Version,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The body ended (as its framing says) without an error.
    pub body_complete: bool,
    /// Reading the body failed (bad chunked framing, ...).
    pub body_error: bool,
}

/// How hyper's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HyperEnd {
    /// Still open, waiting for bytes.
    Pending,
    /// Closed cleanly (e.g. after `Connection: close`).
    Closed,
    /// Closed with an error (hyper answers a parse error with 400 or 431 first).
    Error(String),
}

#[derive(Debug, Clone)]
pub struct HyperRun {
    pub requests: Vec<HyperRequest>,
    pub end: HyperEnd,
    /// What hyper wrote back, status lines and all.
    pub response: Vec<u8>,
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

/// Polls `fut` once.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// Feeds `input` to hyper's HTTP/1.1 server and reports what reached the service.
pub fn run(input: &[u8]) -> HyperRun {
    RUNTIME.with(|rt| rt.block_on(serve(input)))
}

async fn serve(input: &[u8]) -> HyperRun {
    let (mut client, server) = tokio::io::duplex(input.len().max(1) + (1 << 16));
    client
        .write_all(input)
        .await
        .expect("the pipe holds the whole input");
    let log: Rc<RefCell<Vec<HyperRequest>>> = Rc::default();
    let service = {
        let log = log.clone();
        hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let log = log.clone();
            async move {
                let index = log.borrow().len();
                log.borrow_mut().push(HyperRequest {
                    method: req.method().as_str().to_owned(),
                    target: req.uri().to_string(),
                    version: req.version(),
                    fields: req
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
                        .collect(),
                    ..HyperRequest::default()
                });
                let mut body = req.into_body();
                loop {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                log.borrow_mut()[index].body.extend_from_slice(data);
                            }
                        }
                        Some(Err(_)) => {
                            log.borrow_mut()[index].body_error = true;
                            break;
                        }
                        None => {
                            log.borrow_mut()[index].body_complete = true;
                            break;
                        }
                    }
                }
                Ok::<_, Infallible>(http::Response::new(Empty::<Bytes>::new()))
            }
        })
    };
    let mut builder = http1::Builder::new();
    // As src/listener.rs (no timer: nothing here waits on the clock).
    builder
        .writev(false)
        .max_buf_size(cohort::h1::head::MAX_REQUEST_HEAD);
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(server), service));
    let mut response = Vec::new();
    let mut sink = [0u8; 4096];
    let mut still = 0;
    let progress = |log: &RefCell<Vec<HyperRequest>>, response: &Vec<u8>| {
        let log = log.borrow();
        (
            log.len(),
            log.iter().map(|r| r.body.len()).sum::<usize>(),
            log.iter().filter(|r| r.body_complete).count(),
            response.len(),
        )
    };
    let end = loop {
        let before = progress(&log, &response);
        if let Poll::Ready(result) = poll_once(&mut conn).await {
            break match result {
                Ok(()) => HyperEnd::Closed,
                Err(e) => HyperEnd::Error(e.to_string()),
            };
        }
        loop {
            let mut read = Box::pin(client.read(&mut sink));
            match poll_once(&mut read).await {
                Poll::Ready(Ok(n)) if n > 0 => {
                    drop(read);
                    response.extend_from_slice(&sink[..n]);
                }
                _ => break,
            }
        }
        if progress(&log, &response) == before {
            still += 1;
            if still == 8 {
                break HyperEnd::Pending;
            }
        } else {
            still = 0;
        }
    };
    // What hyper wrote before it ended.
    loop {
        let mut read = Box::pin(client.read(&mut sink));
        match poll_once(&mut read).await {
            Poll::Ready(Ok(n)) if n > 0 => {
                drop(read);
                response.extend_from_slice(&sink[..n]);
            }
            _ => break,
        }
    }
    drop(conn);
    let requests = log.borrow().clone();
    HyperRun {
        requests,
        end,
        response,
    }
}
