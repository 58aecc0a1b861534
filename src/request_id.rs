//! The request id (`x-request-id`): the client's, passed through unchanged, or one
//! cohort draws for a request that has none, so the upstream, the access log and
//! whatever the upstream calls next can name the same request (Envoy's behaviour).
//!
//! Drawn for every request without one, on the hot path: 128 bits from `fastrand`
//! (a thread-local wyrand, a few instructions a draw) written as a UUID v4 into a stack
//! buffer, no allocation and no formatting machinery.

use http::HeaderName;

/// The header carrying the id, both ways of the upstream hop.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Bytes of a UUID in its text form: 32 hex digits and 4 hyphens.
pub const LEN: usize = 36;

/// A drawn id in UUID v4 text form (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`, `y` one of
/// `89ab`), as RFC 9562 §5.4 lays out a random UUID.
#[derive(Clone, Copy)]
pub struct RequestId([u8; LEN]);

impl RequestId {
    /// A fresh random id. Not a secret (it travels in headers and logs): a fast
    /// non-cryptographic generator is enough to keep ids apart.
    pub fn generate() -> RequestId {
        RequestId::from_bits(fastrand::u128(..))
    }

    /// The id for these 128 bits, with the version and variant bits set.
    pub fn from_bits(bits: u128) -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // Version 4 in bits 48..52 (from the left), variant `10` in bits 64..66.
        let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
        let mut out = [b'-'; LEN];
        let mut nibble = 0;
        for (i, slot) in out.iter_mut().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                continue;
            }
            *slot = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
            nibble += 1;
        }
        RequestId(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and hyphens are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// The id a client sent: the first `x-request-id` value, when it is not blank. A blank
/// one is replaced rather than passed on, so every forwarded request carries an id.
pub fn usable(value: &[u8]) -> bool {
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
