//! Where an HTTP/1.1 chunked body ends (RFC 9112 §7.1), found without decoding it: the
//! proxy forwards the chunked bytes verbatim and only needs the end (to reuse the
//! upstream connection) and a verdict on the framing (to refuse a smuggling attempt).

/// Longest chunk-size line, size digits and extensions together, CRLF not counted.
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section: the field lines with their CRLFs, not the empty line ending it.
const MAX_TRAILERS: usize = 16 * 1024;

/// Where a chunked body ends, found by feeding its bytes as they arrive.
///
/// Pure and incremental: the result never depends on how the bytes were split into
/// calls, so the proxy can feed whatever each socket read returned.
#[derive(Debug, Clone, Default)]
pub struct ChunkedScanner {
    state: State,
    /// Bytes of the current chunk-size line so far, bounded by [`MAX_SIZE_LINE`].
    size_line_len: usize,
    /// Bytes of the trailer section so far, bounded by [`MAX_TRAILERS`].
    trailer_len: usize,
    /// Chunk data bytes so far (the payload, for the access log).
    data: u64,
}

/// What one [`ChunkedScanner::feed`] learned, so the proxy knows whether the bytes it is
/// about to forward are all body or end with the next response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Every byte fed belongs to the body; the end is still ahead.
    More,
    /// The body ends after the first `n` bytes fed in this call (last chunk, trailers and final CRLF included).
    End(usize),
}

/// Why the bytes are not a chunked body; the proxy must then drop the connection, since
/// it can no longer tell where the next message starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    /// The size line does not start with a hex digit, or a digit is followed by
    /// something other than more digits, an extension (`;`, optionally after spaces)
    /// or CRLF.
    #[error("invalid chunk size")]
    InvalidSize,
    /// More than 16 significant hex digits: the size overflows 64 bits.
    #[error("chunk size does not fit in 64 bits")]
    SizeTooLarge,
    /// A CR or LF is missing where the framing needs CRLF (a bare LF included).
    #[error("expected CRLF in chunked framing")]
    MissingCrlf,
    /// Nothing is buffered, but an endless extension would keep the connection busy
    /// forever; no real size line comes near the limit.
    #[error("chunk size line longer than {} bytes", MAX_SIZE_LINE)]
    LineTooLong,
    /// The same for trailers: real ones are a few checksums or statuses.
    #[error("chunked trailer section larger than {} bytes", MAX_TRAILERS)]
    TrailersTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Framing bytes, read one at a time.
    Framing(Framing),
    /// Inside chunk data: skipped by arithmetic, never looked at.
    Data {
        remaining: u64,
    },
    Done,
    /// Framing errors are final: what follows cannot be trusted to be anything.
    Failed(ChunkedError),
}

impl Default for State {
    fn default() -> State {
        State::Framing(Framing::SizeStart)
    }
}

/// A position in the framing between chunk data; each names what the next byte may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// The first hex digit of a chunk size.
    SizeStart,
    /// More hex digits, `;`, whitespace before `;`, or CR.
    Size { size: u64 },
    /// After whitespace following the size (BWS): only more whitespace or `;`.
    SizeBws { size: u64 },
    /// Inside chunk extensions, skipped up to CR.
    Extension { size: u64 },
    /// The LF ending a chunk-size line.
    SizeLf { size: u64 },
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// The start of a trailer field line, or the CR of the empty line ending the body.
    TrailerStart,
    /// Inside a trailer field line, up to CR.
    Trailer,
    /// The LF ending a trailer field line.
    TrailerLf,
    /// The LF of the empty line ending the body.
    FinalLf,
}

impl ChunkedScanner {
    /// A scanner at the start of a body, one per message: it keeps no state across bodies.
    pub fn new() -> ChunkedScanner {
        ChunkedScanner::default()
    }

    /// Feeds the next bytes, so the proxy can forward them before the end has arrived.
    ///
    /// Once the end has been seen, every later call returns `Ok(Scan::End(0))`: none of
    /// those bytes belong to this body. Once an error has been returned, every later
    /// call returns the same error: the framing is lost for good.
    pub fn feed(&mut self, input: &[u8]) -> Result<Scan, ChunkedError> {
        let mut at = 0;
        loop {
            match self.state {
                State::Done => return Ok(Scan::End(at)),
                State::Failed(error) => return Err(error),
                State::Data { .. } | State::Framing(_) if at == input.len() => {
                    return Ok(Scan::More)
                }
                State::Data { remaining } => {
                    // O(1) per call however large the chunk: data is counted, not read.
                    let available = input.len() - at;
                    let skipped =
                        usize::try_from(remaining).map_or(available, |r| r.min(available));
                    let remaining = remaining - skipped as u64;
                    self.data += skipped as u64;
                    at += skipped;
                    self.state = if remaining == 0 {
                        State::Framing(Framing::DataCr)
                    } else {
                        State::Data { remaining }
                    };
                }
                State::Framing(framing) => {
                    self.state = self
                        .framing_byte(framing, input[at])
                        .unwrap_or_else(State::Failed);
                    at += 1;
                }
            }
        }
    }

    /// Chunk data bytes fed so far: the body's payload, without its framing.
    pub fn data_bytes(&self) -> u64 {
        self.data
    }

    /// Whether the end of the body has been seen, so the connection may carry the next
    /// message.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The state after one framing byte. Lengths are charged before the grammar is
    /// checked, so an endless line fails at its limit whatever it contains.
    fn framing_byte(&mut self, framing: Framing, byte: u8) -> Result<State, ChunkedError> {
        use ChunkedError::{InvalidSize, MissingCrlf, SizeTooLarge};
        use Framing::*;

        match framing {
            SizeStart | Size { .. } | SizeBws { .. } | Extension { .. } if byte != b'\r' => {
                self.size_line_len += 1;
                if self.size_line_len > MAX_SIZE_LINE {
                    return Err(ChunkedError::LineTooLong);
                }
            }
            // The empty line ending the section is not part of its size.
            TrailerStart if byte == b'\r' => {}
            TrailerStart | Trailer | TrailerLf => {
                self.trailer_len += 1;
                if self.trailer_len > MAX_TRAILERS {
                    return Err(ChunkedError::TrailersTooLarge);
                }
            }
            _ => {}
        }

        let next = match (framing, byte) {
            // No whitespace before the digits: an intermediary that trimmed it would
            // disagree with one that did not about where the body ends.
            (SizeStart, _) => Size {
                size: u64::from(hex_digit(byte).ok_or(InvalidSize)?),
            },
            (Size { size }, b'\r') => SizeLf { size },
            (Size { size }, b';') => Extension { size },
            (Size { size }, b' ' | b'\t') => SizeBws { size },
            (Size { size }, _) => {
                let digit = hex_digit(byte).ok_or_else(|| stray_in_size_line(byte))?;
                // Leading zeros keep `size` at 0, so only significant digits can overflow.
                let size = size
                    .checked_mul(16)
                    .and_then(|size| size.checked_add(u64::from(digit)))
                    .ok_or(SizeTooLarge)?;
                Size { size }
            }
            (SizeBws { size }, b' ' | b'\t') => SizeBws { size },
            (SizeBws { size }, b';') => Extension { size },
            (SizeBws { .. }, _) => return Err(stray_in_size_line(byte)),
            // Extensions are forwarded, not interpreted: only their end matters.
            (Extension { size }, b'\r') => SizeLf { size },
            (Extension { .. }, b'\n') => return Err(MissingCrlf),
            (Extension { size }, _) => Extension { size },
            (SizeLf { size: 0 }, b'\n') => TrailerStart,
            (SizeLf { size }, b'\n') => return Ok(State::Data { remaining: size }),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => {
                self.size_line_len = 0;
                SizeStart
            }
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart | Trailer, b'\n') => return Err(MissingCrlf),
            (Trailer, b'\r') => TrailerLf,
            (TrailerStart | Trailer, _) => Trailer,
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => return Ok(State::Done),
            (SizeLf { .. } | DataCr | DataLf | TrailerLf | FinalLf, _) => return Err(MissingCrlf),
        };
        Ok(State::Framing(next))
    }
}

/// A bare LF in a size line is a line-ending error; any other stray byte is a bad size.
fn stray_in_size_line(byte: u8) -> ChunkedError {
    if byte == b'\n' {
        ChunkedError::MissingCrlf
    } else {
        ChunkedError::InvalidSize
    }
}

fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the body ends in `input` fed in one call: `Ok(None)` if it has not ended.
    fn scan(input: &[u8]) -> Result<Option<usize>, ChunkedError> {
        scan_pieces(&[input])
    }

    /// Feeds `pieces` in order; the end is reported relative to their concatenation.
    fn scan_pieces(pieces: &[&[u8]]) -> Result<Option<usize>, ChunkedError> {
        let mut scanner = ChunkedScanner::new();
        let mut offset = 0;
        for piece in pieces {
            match scanner.feed(piece)? {
                Scan::End(n) => {
                    assert!(
                        n <= piece.len(),
                        "End({n}) beyond a {}-byte piece",
                        piece.len()
                    );
                    assert!(scanner.is_done());
                    return Ok(Some(offset + n));
                }
                Scan::More => assert!(!scanner.is_done()),
            }
            offset += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn the_payload_is_counted_without_its_framing_however_split() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nx-sum: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut scanner = ChunkedScanner::new();
            let (a, b) = body.split_at(split);
            assert_eq!(scanner.feed(a), Ok(Scan::More), "split at {split}");
            assert_eq!(scanner.feed(b), Ok(Scan::End(b.len())), "split at {split}");
            assert_eq!(scanner.data_bytes(), 21, "split at {split}");
        }
    }

    #[test]
    fn a_simple_body_ends_after_the_last_chunk() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(scan(body), Ok(Some(body.len())));
    }

    #[test]
    fn several_chunks() {
        let body = b"5\r\nhello\r\n1\r\n,\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(scan(body), Ok(Some(body.len())));
    }

    #[test]
    fn uppercase_hex_and_leading_zeros() {
        let body = b"A\r\n0123456789\r\n0a\r\n0123456789\r\n000F\r\n0123456789abcde\r\n000\r\n\r\n";
        assert_eq!(scan(body), Ok(Some(body.len())));
        let sixteen = b"0000FFFFFFFFFFFFFFFF\r\n";
        assert_eq!(
            scan(sixteen),
            Ok(None),
            "16 significant digits after zeros fit"
        );
    }

    #[test]
    fn extensions_with_and_without_whitespace_before_the_semicolon() {
        for body in [
            &b"5;name=value\r\nhello\r\n0;last\r\n\r\n"[..],
            b"5 ;name=value\r\nhello\r\n0\t;last\r\n\r\n",
            b"5 \t ; name = \"quoted;\\\" value\"\r\nhello\r\n0;a;b=c\r\n\r\n",
            b"5;\r\nhello\r\n0\r\n\r\n",
        ] {
            assert_eq!(
                scan(body),
                Ok(Some(body.len())),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn trailers_are_part_of_the_body() {
        let body = b"0\r\nx-checksum: abc\r\n\r\n";
        assert_eq!(scan(body), Ok(Some(body.len())));
        let two = b"3\r\nabc\r\n0\r\nx-checksum: abc\r\nx-other: 1\r\n\r\n";
        assert_eq!(scan(two), Ok(Some(two.len())));
    }

    #[test]
    fn bytes_after_the_end_are_not_part_of_the_body() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        let mut input = body.to_vec();
        input.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(scan(&input), Ok(Some(body.len())));
    }

    #[test]
    fn framing_inside_chunk_data_is_just_data() {
        let body = b"9\r\n0\r\n\r\nabcd\r\n0\r\n\r\n";
        assert_eq!(scan(body), Ok(Some(body.len())));
    }

    #[test]
    fn after_the_end_every_call_returns_end_zero() {
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.feed(b"0\r\n\r\nrest"), Ok(Scan::End(5)));
        assert!(scanner.is_done());
        assert_eq!(scanner.feed(b"more"), Ok(Scan::End(0)));
        assert_eq!(scanner.feed(b""), Ok(Scan::End(0)));
        assert!(scanner.is_done());
    }

    #[test]
    fn after_an_error_every_call_returns_the_same_error() {
        let mut scanner = ChunkedScanner::new();
        assert_eq!(
            scanner.feed(b"5\r\nhello\n"),
            Err(ChunkedError::MissingCrlf)
        );
        assert_eq!(
            scanner.feed(b"\r\n0\r\n\r\n"),
            Err(ChunkedError::MissingCrlf)
        );
        assert_eq!(scanner.feed(b""), Err(ChunkedError::MissingCrlf));
        assert!(!scanner.is_done());
    }

    #[test]
    fn empty_input_changes_nothing() {
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.feed(b""), Ok(Scan::More));
        assert_eq!(scanner.feed(b"5\r\nhel"), Ok(Scan::More));
        assert_eq!(scanner.feed(b""), Ok(Scan::More));
        assert_eq!(scanner.feed(b"lo\r\n0\r\n\r\n"), Ok(Scan::End(9)));
    }

    #[test]
    fn invalid_sizes() {
        for input in [
            &b"x\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b" 5\r\n",
            b"\t5\r\n",
            b"5 \r\n",
            b"5 x;ext\r\n",
            b"-1\r\n",
            b"+1\r\n",
            b"0x5\r\n",
            b"5g\r\n",
        ] {
            let text = String::from_utf8_lossy(input);
            assert_eq!(scan(input), Err(ChunkedError::InvalidSize), "{text:?}");
        }
    }

    #[test]
    fn a_size_beyond_64_bits_is_too_large() {
        assert_eq!(
            scan(b"10000000000000000\r\n"),
            Err(ChunkedError::SizeTooLarge)
        );
        assert_eq!(
            scan(b"00FFFFFFFFFFFFFFFFF\r\n"),
            Err(ChunkedError::SizeTooLarge)
        );
    }

    #[test]
    fn crlf_is_required_everywhere() {
        for input in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5;ext\nhello\r\n0\r\n\r\n",
            b"5 \nhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"5;ext\rhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\n\rX",
            b"0\r\nx-checksum: abc\n\r\n",
            b"0\r\nx-checksum: abc\rX\r\n",
            b"0\r\n\n",
        ] {
            let text = String::from_utf8_lossy(input);
            assert_eq!(scan(input), Err(ChunkedError::MissingCrlf), "{text:?}");
        }
    }

    #[test]
    fn a_size_line_is_bounded() {
        let at_limit = [
            &b"5;"[..],
            &[b'a'; MAX_SIZE_LINE - 2],
            b"\r\nhello\r\n0\r\n\r\n",
        ]
        .concat();
        assert_eq!(scan(&at_limit), Ok(Some(at_limit.len())));
        let over = [&b"5;"[..], &[b'a'; MAX_SIZE_LINE - 1], b"\r\n"].concat();
        assert_eq!(scan(&over), Err(ChunkedError::LineTooLong));
        let zeros = [&[b'0'; MAX_SIZE_LINE + 1][..], b"5\r\n"].concat();
        assert_eq!(scan(&zeros), Err(ChunkedError::LineTooLong));
        // The limit is per line: the next chunk starts a fresh count.
        let two = [&at_limit[..at_limit.len() - 5], &at_limit].concat();
        assert_eq!(scan(&two), Ok(Some(two.len())));
    }

    #[test]
    fn the_trailer_section_is_bounded() {
        // One field line of exactly `len` bytes, CRLF included.
        let field = |len: usize| [&b"x-pad: "[..], &vec![b'a'; len - 9], b"\r\n"].concat();
        let at_limit = [&b"0\r\n"[..], &field(MAX_TRAILERS), b"\r\n"].concat();
        assert_eq!(scan(&at_limit), Ok(Some(at_limit.len())));
        let over = [
            &b"0\r\n"[..],
            &field(MAX_TRAILERS - 100),
            &field(101),
            b"\r\n",
        ]
        .concat();
        assert_eq!(scan(&over), Err(ChunkedError::TrailersTooLarge));
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(ChunkedError::InvalidSize.to_string(), "invalid chunk size");
        assert_eq!(
            ChunkedError::LineTooLong.to_string(),
            "chunk size line longer than 4096 bytes"
        );
        assert_eq!(
            ChunkedError::TrailersTooLarge.to_string(),
            "chunked trailer section larger than 16384 bytes"
        );
    }

    /// Checks the invariant the proxy relies on: the verdict and the end offset depend
    /// only on the bytes, never on how reads split them. Byte by byte, and split in two at
    /// every `stride`-th position (in three too, for short messages).
    fn assert_split_invariant(message: &[u8], stride: usize) {
        let text = String::from_utf8_lossy(&message[..message.len().min(40)]);
        let whole = scan(message);
        for a in (0..=message.len()).step_by(stride) {
            let (head, tail) = message.split_at(a);
            assert_eq!(scan_pieces(&[head, tail]), whole, "{text:?} split at {a}");
            if message.len() > 100 {
                continue;
            }
            for b in a..=message.len() {
                let pieces = [&message[..a], &message[a..b], &message[b..]];
                assert_eq!(scan_pieces(&pieces), whole, "{text:?} split at {a} and {b}");
            }
        }
        let bytes: Vec<&[u8]> = message.chunks(1).collect();
        assert_eq!(scan_pieces(&bytes), whole, "{text:?} byte by byte");
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let short: [&[u8]; 12] = [
            b"5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"A;x=1\r\n0123456789\r\n01 \t;y\r\n!\r\n000;z=\"q\"\r\n\r\nnext",
            b"3\r\nabc\r\n0\r\nx-checksum: abc\r\nx-other: 1\r\n\r\ntail",
            b"9\r\n0\r\n\r\nabcd\r\n0\r\n\r\n",
            b"5\r\nhello",
            b"0\r\nx-checksum: abc\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx: y\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"3\r\nabc\r\n 1\r\n",
            b"3\r\nabc\r\n10000000000000000\r\n",
        ];
        for message in short {
            assert_split_invariant(message, 1);
        }
        let long_line = [&b"1;"[..], &[b'a'; MAX_SIZE_LINE], b"\r\nx\r\n0\r\n\r\n"].concat();
        assert_eq!(scan(&long_line), Err(ChunkedError::LineTooLong));
        assert_split_invariant(&long_line, 1);
        let pad = vec![b'a'; MAX_SIZE_LINE];
        let many_trailers = [
            &b"0\r\n"[..],
            &[&b"x: "[..], &pad, b"\r\n"].concat().repeat(5),
        ]
        .concat();
        assert_eq!(scan(&many_trailers), Err(ChunkedError::TrailersTooLarge));
        // 20 KiB: every 2-way split would feed 400M bytes; a prime stride lands at varied
        // offsets within the field lines.
        assert_split_invariant(&many_trailers, 97);
    }

    #[test]
    fn a_gigabyte_chunk_is_skipped_without_reading_it() {
        const SLICE: usize = 64 * 1024;
        // Bare LFs: any of them read as framing would be an error.
        let data = vec![b'\n'; SLICE];
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.feed(b"40000000\r\n"), Ok(Scan::More));
        for _ in 0..(1 << 30) / SLICE {
            assert_eq!(scanner.feed(&data), Ok(Scan::More));
        }
        assert_eq!(scanner.feed(b"\r\n0\r\n\r\nnext"), Ok(Scan::End(7)));
    }
}
