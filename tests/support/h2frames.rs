//! A raw HTTP/2 client for abuse tests: frames written byte by byte on a TcpStream
//! (RFC 9113 §4), so a test can send what no well-behaved client library would (a
//! RST_STREAM right behind every HEADERS, CONTINUATION without end, a zero
//! WINDOW_UPDATE), and read back what the server answered, frame by frame. Header
//! blocks are HPACK "literal without indexing, new name" fields with plain strings
//! (RFC 7541 §6.2.2): any decoder must accept them, and the client keeps no table.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

// Settings identifiers (RFC 9113 §6.5.2).
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// The name of an error code, for messages and tables.
pub fn error_name(code: u32) -> &'static str {
    match code {
        NO_ERROR => "NO_ERROR",
        PROTOCOL_ERROR => "PROTOCOL_ERROR",
        FLOW_CONTROL_ERROR => "FLOW_CONTROL_ERROR",
        STREAM_CLOSED => "STREAM_CLOSED",
        REFUSED_STREAM => "REFUSED_STREAM",
        CANCEL => "CANCEL",
        COMPRESSION_ERROR => "COMPRESSION_ERROR",
        ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM",
        _ => "other",
    }
}

/// One frame as read off the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A GOAWAY's (last stream id, error code); `None` for other frames.
    pub fn goaway(&self) -> Option<(u32, u32)> {
        (self.kind == GOAWAY && self.payload.len() >= 8).then(|| {
            (
                be32(&self.payload[..4]) & 0x7fff_ffff,
                be32(&self.payload[4..8]),
            )
        })
    }

    /// A RST_STREAM's error code; `None` for other frames.
    pub fn reset(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4).then(|| be32(&self.payload))
    }

    /// A SETTINGS frame's (identifier, value) pairs.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|s| (u16::from_be_bytes([s[0], s[1]]), be32(&s[2..])))
            .collect()
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The bytes of one frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24, "frame payload of {len} bytes");
    let mut out = Vec::with_capacity(9 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with these (identifier, value) pairs.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = pairs
        .iter()
        .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
        .collect();
    frame(SETTINGS, 0, 0, &payload)
}

pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &data)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(DATA, flags, stream, payload)
}

/// A PRIORITY frame: `stream` depends on `on` (exclusive bit clear), weight 16.
pub fn priority(stream: u32, on: u32) -> Vec<u8> {
    let mut payload = on.to_be_bytes().to_vec();
    payload.push(15);
    frame(PRIORITY, 0, stream, &payload)
}

/// An HPACK integer with an `n`-bit prefix whose upper bits are `first` (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of "literal without indexing, new name" fields, plain strings.
pub fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The pseudo-header fields of a request for `path` on `app.example`.
pub fn request_fields<'a>(method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", "app.example"),
    ]
}

/// A HEADERS frame carrying `fields` whole (END_HEADERS), plus `flags`.
pub fn headers(stream: u32, flags: u8, fields: &[(&str, &str)]) -> Vec<u8> {
    frame(HEADERS, flags | END_HEADERS, stream, &hpack(fields))
}

/// Frames an [`Outcome`] keeps whole; later ones are only counted, so a flood of
/// answers does not grow the test's own memory (it shares the process with cohort).
const KEPT_FRAMES: usize = 1000;

/// What the server did after an attack: the frames it sent, and how it ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The first [`KEPT_FRAMES`] frames.
    pub frames: Vec<Frame>,
    /// Frames by type (types 0 to 9), and those of them with the ACK flag.
    kinds: [usize; 10],
    acks: [usize; 10],
    /// The first GOAWAY: (last stream id, error code).
    pub goaway: Option<(u32, u32)>,
    /// The server closed the connection (EOF or reset).
    pub closed: bool,
}

impl Outcome {
    /// Records a frame the server sent.
    pub fn push(&mut self, frame: Frame) {
        if self.goaway.is_none() {
            self.goaway = frame.goaway();
        }
        if let Some(n) = self.kinds.get_mut(usize::from(frame.kind)) {
            *n += 1;
            if frame.flags & ACK != 0 && matches!(frame.kind, SETTINGS | PING) {
                self.acks[usize::from(frame.kind)] += 1;
            }
        }
        if self.frames.len() < KEPT_FRAMES {
            self.frames.push(frame);
        }
    }

    /// RST_STREAM frames (among those kept) by error code.
    pub fn resets(&self, code: u32) -> usize {
        self.frames
            .iter()
            .filter(|f| f.reset() == Some(code))
            .count()
    }

    /// Frames of this type.
    pub fn count(&self, kind: u8) -> usize {
        self.kinds.get(usize::from(kind)).copied().unwrap_or(0)
    }

    /// SETTINGS or PING frames with the ACK flag.
    pub fn acks(&self, kind: u8) -> usize {
        self.acks.get(usize::from(kind)).copied().unwrap_or(0)
    }

    /// "GOAWAY ENHANCE_YOUR_CALM" or "no GOAWAY", for messages.
    pub fn goaway_name(&self) -> String {
        match self.goaway {
            Some((_, code)) => format!("GOAWAY {}", error_name(code)),
            None => "no GOAWAY".to_owned(),
        }
    }
}

/// A raw HTTP/2 connection, with what was read past the last whole frame.
pub struct H2Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The server's first SETTINGS.
    pub server_settings: Vec<(u16, u32)>,
}

impl H2Conn {
    /// Connects, sends the preface and an empty SETTINGS, reads the server's SETTINGS
    /// and acknowledges them.
    pub async fn handshake(addr: SocketAddr) -> H2Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut conn = H2Conn {
            stream,
            buf: Vec::new(),
            server_settings: Vec::new(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(&[]));
        conn.write(&hello).await.expect("write the preface");
        let first = conn
            .read_frame(Duration::from_secs(5))
            .await
            .expect("the server's SETTINGS");
        assert_eq!(first.kind, SETTINGS, "the server starts with SETTINGS");
        conn.server_settings = first.settings();
        conn.write(&settings_ack())
            .await
            .expect("write SETTINGS ACK");
        conn
    }

    /// The server's value for a setting, if it sent one.
    pub fn server_setting(&self, id: u16) -> Option<u32> {
        self.server_settings
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }

    /// Writes bytes; an error once the server has closed is the caller's to judge.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame, `None` on EOF, a reset, or nothing within `wait`.
    pub async fn read_frame(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9).collect();
                    let payload = self.buf.drain(..len).collect();
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: be32(&head[5..9]) & 0x7fff_ffff,
                        payload,
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads frames until the server closes the connection or is silent for `quiet`;
    /// answers the server's PINGs (the way a live client would), records its GOAWAY.
    pub async fn outcome(&mut self, quiet: Duration) -> Outcome {
        let mut outcome = Outcome::default();
        let limit = Instant::now() + Duration::from_secs(30);
        while Instant::now() < limit {
            match self.read_frame(quiet).await {
                Some(frame) => {
                    if frame.kind == PING && frame.flags & ACK == 0 {
                        let mut pong = frame.payload.clone();
                        pong.resize(8, 0);
                        let _ = self.write(&self::frame(PING, ACK, 0, &pong)).await;
                    }
                    outcome.push(frame);
                }
                None => {
                    outcome.closed = self.is_closed().await;
                    return outcome;
                }
            }
        }
        outcome
    }

    /// Writes `frames` in batches of `batch` frames and returns how many were written:
    /// until the iterator ends, a write fails (the server closed), a GOAWAY arrives, or
    /// a batch is not taken within `stall` (the server stopped reading). With `read`,
    /// what the server sent is read between batches into `outcome`, as a client that
    /// reads would; without, nothing is read and the server's writes back up.
    pub async fn flood(
        &mut self,
        frames: impl IntoIterator<Item = Vec<u8>>,
        batch: usize,
        read: bool,
        stall: Duration,
        outcome: &mut Outcome,
    ) -> usize {
        let mut written = 0;
        let mut frames = frames.into_iter().peekable();
        while frames.peek().is_some() {
            let chunk: Vec<Vec<u8>> = frames.by_ref().take(batch).collect();
            let bytes = chunk.concat();
            match tokio::time::timeout(stall, self.write(&bytes)).await {
                Ok(Ok(())) => written += chunk.len(),
                Ok(Err(_)) => {
                    outcome.closed = true;
                    break;
                }
                Err(_) => break,
            }
            if read {
                while let Some(frame) = self.read_frame(Duration::ZERO).await {
                    outcome.push(frame);
                }
                if outcome.goaway.is_some() {
                    break;
                }
            }
        }
        written
    }

    /// Reads what is left after a [`H2Conn::flood`] into `outcome` (see
    /// [`H2Conn::outcome`]).
    pub async fn finish(&mut self, outcome: &mut Outcome, quiet: Duration) {
        let rest = self.outcome(quiet).await;
        if outcome.goaway.is_none() {
            outcome.goaway = rest.goaway;
        }
        for i in 0..rest.kinds.len() {
            outcome.kinds[i] += rest.kinds[i];
            outcome.acks[i] += rest.acks[i];
        }
        let room = KEPT_FRAMES.saturating_sub(outcome.frames.len());
        outcome.frames.extend(rest.frames.into_iter().take(room));
        outcome.closed |= rest.closed;
    }

    /// Whether the server has closed the connection (EOF or reset) by now.
    async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(1), self.stream.read(&mut byte)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) => {
                self.buf.push(byte[0]);
                false
            }
            Err(_) => false,
        }
    }
}
