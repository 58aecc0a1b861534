//! A reference for `cohort::h1::chunked::ChunkedScanner`: the same grammar and limits
//! (RFC 9112 §7.1 as `src/h1/chunked.rs` documents them), written line by line over a
//! whole buffer instead of byte by byte over pieces, so the two can be compared.

use cohort::h1::chunked::ChunkedError;

const MAX_SIZE_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Where the body in `b` ends and its payload bytes; `Ok(None)` if it has not ended.
pub fn scan(b: &[u8]) -> Result<Option<(usize, u64)>, ChunkedError> {
    let mut at = 0;
    let mut data = 0u64;
    loop {
        let Some((size, next)) = size_line(b, at)? else {
            return Ok(None);
        };
        at = next;
        if size == 0 {
            return trailers(b, at).map(|end| end.map(|end| (end, data)));
        }
        let available = (b.len() - at) as u64;
        if available < size {
            return Ok(None);
        }
        at += size as usize;
        data += size;
        match crlf(b, at)? {
            None => return Ok(None),
            Some(next) => at = next,
        }
    }
}

/// `\r\n` at `at`: the position after it, `None` if the bytes end first.
fn crlf(b: &[u8], at: usize) -> Result<Option<usize>, ChunkedError> {
    match (b.get(at), b.get(at + 1)) {
        (None, _) | (Some(b'\r'), None) => Ok(None),
        (Some(b'\r'), Some(b'\n')) => Ok(Some(at + 2)),
        _ => Err(ChunkedError::MissingCrlf),
    }
}

/// A chunk-size line at `at`: its size and the position after its CRLF.
fn size_line(b: &[u8], at: usize) -> Result<Option<(u64, usize)>, ChunkedError> {
    // The line's content: everything before the first CR (an LF inside is an error,
    // found where it stands).
    let content_end = b[at..].iter().position(|&c| c == b'\r').map(|p| at + p);
    let content = &b[at..content_end.unwrap_or(b.len())];
    // The first grammar error in the content, by position, or the size.
    let mut size = 0u64;
    let mut first_error: Option<(usize, ChunkedError)> = None;
    let digits = content.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 {
        // Nothing but a hex digit may start the line (CR included: an empty line).
        if content.is_empty() && content_end.is_none() {
            return Ok(None);
        }
        return Err(ChunkedError::InvalidSize);
    }
    let mut significant = 0;
    for (i, &c) in content[..digits].iter().enumerate() {
        if size == 0 && c == b'0' {
            continue;
        }
        significant += 1;
        if significant > 16 {
            first_error = Some((i, ChunkedError::SizeTooLarge));
            break;
        }
        size = size * 16 + u64::from((c as char).to_digit(16).unwrap() as u8);
    }
    if first_error.is_none() {
        let rest = &content[digits..];
        let blanks = rest
            .iter()
            .take_while(|&&c| c == b' ' || c == b'\t')
            .count();
        match rest.get(blanks) {
            // Whitespace may only come before `;`: the CR after it is a bad size.
            None if blanks > 0 && content_end.is_some() => {
                first_error = Some((digits + blanks, ChunkedError::InvalidSize));
            }
            None => {}
            Some(b';') => {
                // Extensions: anything but a bare LF up to the CR.
                if let Some(lf) = rest[blanks..].iter().position(|&c| c == b'\n') {
                    first_error = Some((digits + blanks + lf, ChunkedError::MissingCrlf));
                }
            }
            Some(b'\n') => first_error = Some((digits + blanks, ChunkedError::MissingCrlf)),
            Some(_) if blanks == 0 => {
                first_error = Some((digits, ChunkedError::InvalidSize));
            }
            Some(_) => first_error = Some((digits + blanks, ChunkedError::InvalidSize)),
        }
    }
    // The length is charged before each byte is looked at: the 4097th byte fails
    // whatever it is, unless an earlier byte already had.
    match first_error {
        Some((i, e)) if i < MAX_SIZE_LINE => return Err(e),
        _ if content.len() > MAX_SIZE_LINE => return Err(ChunkedError::LineTooLong),
        Some((_, e)) => return Err(e),
        None => {}
    }
    let Some(cr) = content_end else {
        return Ok(None);
    };
    // After the CR only its LF.
    match b.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((size, cr + 2))),
        Some(_) => Err(ChunkedError::MissingCrlf),
    }
}

/// The trailer section at `at` and the empty line ending the body: where it ends.
fn trailers(b: &[u8], mut at: usize) -> Result<Option<usize>, ChunkedError> {
    let mut charged = 0usize;
    loop {
        match b.get(at) {
            None => return Ok(None),
            Some(b'\r') => {
                return match b.get(at + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some(at + 2)),
                    Some(_) => Err(ChunkedError::MissingCrlf),
                }
            }
            Some(_) => {}
        }
        // A field line: every byte up to and including its LF counts.
        let mut i = at;
        loop {
            let Some(&c) = b.get(i) else {
                return Ok(None);
            };
            charged += 1;
            if charged > MAX_TRAILERS {
                return Err(ChunkedError::TrailersTooLarge);
            }
            match c {
                b'\n' => return Err(ChunkedError::MissingCrlf),
                b'\r' => {
                    let Some(&lf) = b.get(i + 1) else {
                        return Ok(None);
                    };
                    charged += 1;
                    if charged > MAX_TRAILERS {
                        return Err(ChunkedError::TrailersTooLarge);
                    }
                    if lf != b'\n' {
                        return Err(ChunkedError::MissingCrlf);
                    }
                    at = i + 2;
                    break;
                }
                _ => i += 1,
            }
        }
    }
}
