//! The request id (`x-request-id`): the client's, passed through unchanged, or one
//! cohort draws for a request that has none, so the upstream, the access log and
//! whatever the upstream calls next can name the same request (Envoy's behaviour).
//!
//! Drawn for every request without one, on the hot path: 128 bits from `fastrand`
//! (a thread-local wyrand, a few instructions a draw) written as a UUID v4 into a stack
//! buffer, no allocation and no formatting machinery.

use http::HeaderName;

/// The header carrying the id, both ways of the upstream hop.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Bytes of a UUID in its text form: 32 hex digits and 4 hyphens.
pub(crate) const LEN: usize = 36;

/// What comes before the id in the field line cohort's own engine writes.
const FIELD_PREFIX: &[u8; 16] = b"\r\nx-request-id: ";

/// A drawn id in UUID v4 text form (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`, `y` one of
/// `89ab`), as RFC 9562 §5.4 lays out a random UUID. Held behind its field name, so
/// the own engine writes the whole field in one copy.
#[derive(Clone, Copy)]
pub struct RequestId([u8; FIELD_PREFIX.len() + LEN]);

impl RequestId {
    /// A fresh random id. Not a secret (it travels in headers and logs): a fast
    /// non-cryptographic generator is enough to keep ids apart.
    pub fn generate() -> RequestId {
        RequestId::from_bits(fastrand::u128(..))
    }

    /// The id for these 128 bits, with the version and variant bits set.
    ///
    /// Eight digits at a time in one 64-bit register, no table and no loop: a digit at
    /// a time out of a `u128` cost about 800 instructions a request (callgrind,
    /// opt-level "s"), a byte-pair table 150, this about 60.
    pub(crate) fn from_bits(bits: u128) -> RequestId {
        // Version 4 in the 13th hex digit (bits 12..16 of the high half), variant `10`
        // in the two top bits of the low half.
        let high = ((bits >> 64) as u64 & !(0xf << 12)) | (0x4 << 12);
        let low = (bits as u64 & !(0x3 << 62)) | (0x2 << 62);
        let digits = [
            hex8((high >> 32) as u32),
            hex8(high as u32),
            hex8((low >> 32) as u32),
            hex8(low as u32),
        ];
        let mut line = [b'-'; FIELD_PREFIX.len() + LEN];
        let (prefix, out) = line.split_at_mut(FIELD_PREFIX.len());
        prefix.copy_from_slice(FIELD_PREFIX);
        out[..8].copy_from_slice(&digits[0]);
        out[9..13].copy_from_slice(&digits[1][..4]);
        out[14..18].copy_from_slice(&digits[1][4..]);
        out[19..23].copy_from_slice(&digits[2][..4]);
        out[24..28].copy_from_slice(&digits[2][4..]);
        out[28..].copy_from_slice(&digits[3]);
        RequestId(line)
    }

    /// `\r\nx-request-id: ` and the id: the field, after the line before it.
    pub(crate) fn field_line(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0[FIELD_PREFIX.len()..]
    }

    /// The id as text; only the tests read it so (the proxy writes bytes).
    #[cfg(test)]
    fn as_str(&self) -> &str {
        // Only ASCII hex digits and hyphens are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

/// `x` as eight lowercase hex digits, most significant first.
fn hex8(x: u32) -> [u8; 8] {
    // Spread the eight nibbles over the eight bytes, the most significant one on top.
    let x = u64::from(x);
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is 10 or more, then `'0' + n`, plus `'a' - '0' - 10`
    // (39) for the letters. No byte carries into the next: each stays below 0x67.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * 39).to_be_bytes()
}

/// The id a client sent: the first `x-request-id` value, when it is not blank. A blank
/// one is replaced rather than passed on, so every forwarded request carries an id.
pub(crate) fn usable(value: &[u8]) -> bool {
    !value.trim_ascii().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_uuid_v4(text: &str) -> bool {
        let b = text.as_bytes();
        b.len() == LEN
            && b.iter().enumerate().all(|(i, &c)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    c == b'-'
                } else {
                    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
                }
            })
            && b[14] == b'4'
            && matches!(b[19], b'8' | b'9' | b'a' | b'b')
    }

    #[test]
    fn ids_are_uuid_v4_text_with_the_bits_in_place() {
        assert_eq!(
            RequestId::from_bits(0).as_str(),
            "00000000-0000-4000-8000-000000000000"
        );
        assert_eq!(
            RequestId::from_bits(u128::MAX).as_str(),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        assert_eq!(
            RequestId::from_bits(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef).as_str(),
            "01234567-89ab-4def-8123-456789abcdef"
        );
        for _ in 0..1000 {
            let id = RequestId::generate();
            assert!(is_uuid_v4(id.as_str()), "{}", id.as_str());
        }
    }

    #[test]
    fn eight_digits_at_a_time_match_the_formatter() {
        for x in [
            0u32,
            9,
            10,
            15,
            0x1234_abcd,
            0xffff_ffff,
            0x0a0b_0c0d,
            0x9f9f_9f9f,
        ] {
            assert_eq!(hex8(x), format!("{x:08x}").as_bytes(), "{x:#x}");
        }
        for _ in 0..10_000 {
            let x = fastrand::u32(..);
            assert_eq!(hex8(x), format!("{x:08x}").as_bytes(), "{x:#x}");
        }
    }

    #[test]
    fn the_field_line_ends_with_the_id() {
        let id = RequestId::from_bits(7);
        assert_eq!(
            id.field_line(),
            b"\r\nx-request-id: 00000000-0000-4000-8000-000000000007"
        );
    }

    #[test]
    fn drawn_ids_differ() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn blank_client_ids_are_not_used() {
        assert!(usable(b"abc"));
        assert!(!usable(b""));
        assert!(!usable(b"  "));
    }
}
