//! A raw HTTP/1.1 client: bytes on a TcpStream, so nothing normalises what is sent or
//! seen. [`RawConn`] reads responses (interim ones too) and the end of a connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::sys::PATIENCE;

/// A response as read off the wire: header names in the case they were sent.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Every value of `name` (any case), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw connection to a server, with whatever was read past the last response.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads until `buf` holds at least `n` bytes; false on EOF first.
    async fn fill(&mut self, n: usize) -> bool {
        let mut chunk = [0u8; 8192];
        while self.buf.len() < n {
            let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("the server sent nothing for too long")
                .expect("read");
            if read == 0 {
                return false;
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
        true
    }

    /// Reads up to the end of a line (CRLF), returned without it.
    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
                return String::from_utf8(line).expect("ascii line");
            }
            let want = self.buf.len() + 1;
            assert!(self.fill(want).await, "EOF inside a line");
        }
    }

    /// Reads one response head.
    pub async fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let status_line = self.line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return (status, headers);
            }
            let (k, v) = line.split_once(':').expect("header line");
            headers.push((k.to_owned(), v.trim().to_owned()));
        }
    }

    /// Reads one whole response (body by `Content-Length`, chunked, or to EOF).
    pub async fn read_response(&mut self, head_request: bool) -> RawResponse {
        let (status, headers) = self.read_head().await;
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 101 || status == 204 || status == 304 {
            return response;
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let size_line = self.line().await;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or(""), 16)
                    .expect("chunk size");
                if size == 0 {
                    while !self.line().await.is_empty() {}
                    break;
                }
                assert!(self.fill(size + 2).await, "EOF inside a chunk");
                response.body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
            }
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            assert!(self.fill(len).await, "EOF inside the body");
            response.body.extend(self.buf.drain(..len));
        } else {
            while self.fill(self.buf.len() + 1).await {}
            response.body = std::mem::take(&mut self.buf);
        }
        response
    }

    /// Whatever arrives before `n` bytes are in or the peer closes.
    pub async fn read_exact_bytes(&mut self, n: usize) -> Vec<u8> {
        assert!(self.fill(n).await, "EOF before {n} bytes");
        self.buf.drain(..n).collect()
    }

    /// Reads one final response, skipping the interim `1xx` heads before it (never a
    /// `101`, which is final for its request); returns their statuses too.
    pub async fn read_final_response(&mut self, head_request: bool) -> (Vec<u16>, RawResponse) {
        let mut interim = Vec::new();
        loop {
            let end = loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let want = self.buf.len() + 1;
                assert!(self.fill(want).await, "EOF inside a response head");
            };
            let status = std::str::from_utf8(&self.buf[..end])
                .ok()
                .and_then(|head| head.split(' ').nth(1))
                .and_then(|s| s.parse::<u16>().ok());
            match status {
                Some(status) if (100..200).contains(&status) && status != 101 => {
                    interim.push(status);
                    self.buf.drain(..end);
                }
                _ => return (interim, self.read_response(head_request).await),
            }
        }
    }

    /// Everything the server sends until it closes the connection, starting with what
    /// was already read past the last response. A reset counts as a close; a
    /// connection still open after [`PATIENCE`] fails the test.
    pub async fn read_until_close(&mut self) -> Vec<u8> {
        let mut chunk = [0u8; 8192];
        loop {
            let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk))
                .await
                .expect("the server kept the connection open");
            match read {
                Ok(0) | Err(_) => return std::mem::take(&mut self.buf),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Waits up to `limit` on a connection that should be quiet: true if the server
    /// closed it meanwhile (a reset counts), false if it stayed open. Any byte fails the
    /// test.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(limit, self.stream.read(&mut byte)).await {
            Err(_) => false,
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) => panic!("unexpected byte {:?} on a quiet connection", byte[0]),
        }
    }
}

/// Sends `request` (a complete HTTP/1.1 message) on a new connection and reads the answer.
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.write(request.as_bytes()).await;
    conn.read_response(request.starts_with("HEAD ")).await
}
