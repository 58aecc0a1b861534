//! W3C baggage (https://www.w3.org/TR/baggage/) as the call chain's carrier of a
//! variant (DESIGN §11): read a `cohort.<NAME>` member, and rewrite the header with
//! ours set and, for untrusted senders, every `cohort.*` member removed.
//!
//! Members that are not cohort's are kept byte for byte (only the whitespace around
//! the separating commas is normalised), whatever they hold: percent-encoded values,
//! properties, even members this parser cannot read. An application's baggage is not
//! cohort's to judge.

use crate::cohort::Variant;
use crate::router::list_elements;

/// W3C limits: a baggage string of at most 8192 bytes and 180 list members.
pub const MAX_BYTES: usize = 8192;
pub const MAX_MEMBERS: usize = 180;

/// Every member key cohort owns starts with this.
pub const PREFIX: &str = "cohort.";

/// The members of one or more `baggage` field values, trimmed, empty ones skipped.
fn members<'a>(values: impl Iterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a [u8]> {
    values.flat_map(list_elements)
}

/// A member's key (the text before `=`, trimmed), or `None` for a member without one.
fn member_key(member: &[u8]) -> Option<&[u8]> {
    let eq = member.iter().position(|&b| b == b'=')?;
    Some(member[..eq].trim_ascii())
}

/// A member's value without its properties, trimmed.
fn member_value(member: &[u8]) -> &[u8] {
    let eq = member.iter().position(|&b| b == b'=').map_or(0, |i| i + 1);
    let value = &member[eq..];
    let end = value.iter().position(|&b| b == b';').unwrap_or(value.len());
    value[..end].trim_ascii()
}

fn is_cohort_member(key: &[u8]) -> bool {
    key.len() >= PREFIX.len() && key[..PREFIX.len()].eq_ignore_ascii_case(PREFIX.as_bytes())
}

fn is_member_named(key: &[u8], name: &str) -> bool {
    is_cohort_member(key) && &key[PREFIX.len()..] == name.as_bytes()
}

/// The variant carried by the member `cohort.<name>` of the `baggage` fields, if any.
/// A value other than `stable` or `canary` carries none. Baggage over the W3C size
/// limit is not read at all (a sender that breaks the limit is not believed).
/// `values` yields the fields afresh on each call (they are measured, then read).
pub fn find<'a, I: Iterator<Item = &'a [u8]>>(
    values: impl Fn() -> I,
    name: &str,
) -> Option<Variant> {
    let size: usize = values().map(<[u8]>::len).sum();
    if size > MAX_BYTES {
        return None;
    }
    members(values())
        .take(MAX_MEMBERS)
        .find(|member| member_key(member).is_some_and(|key| is_member_named(key, name)))
        .and_then(|member| Variant::from_name(member_value(member)))
}

/// Whether the `baggage` fields hold any `cohort.*` member (which an untrusted sender
/// must not pass on).
pub fn has_cohort_member<'a>(values: impl Iterator<Item = &'a [u8]>) -> bool {
    members(values).any(|member| member_key(member).is_some_and(is_cohort_member))
}

/// What to do to the `baggage` header on the way upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite<'n> {
    /// Remove every `cohort.*` member (the sender is not trusted).
    pub strip_cohort: bool,
    /// Set `cohort.<name>=<variant>`, replacing a member of that name.
    pub set: Option<(&'n str, Variant)>,
}

/// The new `baggage` value, or `None` when there should be no `baggage` field at all.
/// Other members keep their order and bytes; ours goes last. If ours would take the
/// header past the W3C limits it is left out (the application's members are not
/// cohort's to drop) and the rest passes as it came.
pub fn rewrite<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    rewrite: Rewrite<'_>,
) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    let mut count = 0usize;
    for member in members(values) {
        if let Some(key) = member_key(member) {
            let replaced = rewrite
                .set
                .is_some_and(|(name, _)| is_member_named(key, name));
            if replaced || (rewrite.strip_cohort && is_cohort_member(key)) {
                continue;
            }
        }
        if count > 0 {
            out.push(b',');
        }
        out.extend_from_slice(member);
        count += 1;
    }
    if let Some((name, variant)) = rewrite.set {
        let extra = usize::from(count > 0) + PREFIX.len() + name.len() + 1 + variant.as_str().len();
        if count < MAX_MEMBERS && out.len() + extra <= MAX_BYTES {
            if count > 0 {
                out.push(b',');
            }
            out.extend_from_slice(PREFIX.as_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            out.extend_from_slice(variant.as_str().as_bytes());
            count += 1;
        }
    }
    (count > 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(value: &str) -> std::iter::Once<&[u8]> {
        std::iter::once(value.as_bytes())
    }

    fn text(bytes: Option<Vec<u8>>) -> Option<String> {
        bytes.map(|b| String::from_utf8(b).expect("ascii"))
    }

    #[test]
    fn finds_our_member_among_others_with_properties_and_whitespace() {
        let header = "userId=alice, cohort.checkout-v2 = canary ;ttl=30 ,serverNode=DF%2028";
        assert_eq!(find(|| one(header), "checkout-v2"), Some(Variant::Canary));
        assert_eq!(find(|| one(header), "other"), None);
        assert_eq!(find(|| one("cohort.x=stable"), "x"), Some(Variant::Stable));
        assert_eq!(
            find(|| one("cohort.x=blue"), "x"),
            None,
            "only the two names"
        );
        assert_eq!(
            find(|| one("cohort.xy=canary"), "x"),
            None,
            "whole names only"
        );
        // Several baggage fields form one list (RFC 9110 §5.3).
        let fields = [&b"a=1"[..], &b"cohort.x=canary"[..]];
        assert_eq!(find(|| fields.into_iter(), "x"), Some(Variant::Canary));
    }

    #[test]
    fn baggage_over_the_size_limit_is_not_believed() {
        let big = format!("pad={},cohort.x=canary", "a".repeat(MAX_BYTES));
        assert_eq!(find(|| one(&big), "x"), None);
    }

    #[test]
    fn a_member_beyond_the_member_limit_is_not_read() {
        let mut header: Vec<String> = (0..MAX_MEMBERS).map(|i| format!("k{i}=v")).collect();
        header.push("cohort.x=canary".into());
        let header = header.join(",");
        assert_eq!(find(|| one(&header), "x"), None);
    }

    #[test]
    fn rewrite_sets_ours_last_and_keeps_the_rest_byte_for_byte() {
        let header = "userId=alice;p=1 , cohort.x=stable,  odd member ,k=%2C%3B";
        let set = Rewrite {
            strip_cohort: false,
            set: Some(("x", Variant::Canary)),
        };
        assert_eq!(
            text(rewrite(one(header), set)).as_deref(),
            Some("userId=alice;p=1,odd member,k=%2C%3B,cohort.x=canary")
        );
        assert_eq!(
            text(rewrite(std::iter::empty(), set)).as_deref(),
            Some("cohort.x=canary")
        );
    }

    #[test]
    fn an_untrusted_senders_cohort_members_are_all_removed() {
        let header = "cohort.x=canary,a=1,COHORT.y=canary;p,b=2";
        let strip = Rewrite {
            strip_cohort: true,
            set: None,
        };
        assert!(has_cohort_member(one(header)));
        assert!(!has_cohort_member(one("a=1,cohorts=2")));
        assert_eq!(
            text(rewrite(one(header), strip)).as_deref(),
            Some("a=1,b=2")
        );
        assert_eq!(text(rewrite(one("cohort.x=canary"), strip)), None);
        let strip_and_set = Rewrite {
            strip_cohort: true,
            set: Some(("x", Variant::Stable)),
        };
        assert_eq!(
            text(rewrite(one(header), strip_and_set)).as_deref(),
            Some("a=1,b=2,cohort.x=stable")
        );
    }

    #[test]
    fn ours_is_left_out_rather_than_breaking_the_limits() {
        let full: Vec<String> = (0..MAX_MEMBERS).map(|i| format!("k{i}=v")).collect();
        let full = full.join(",");
        let set = Rewrite {
            strip_cohort: false,
            set: Some(("x", Variant::Canary)),
        };
        assert_eq!(
            text(rewrite(one(&full), set)).as_deref(),
            Some(full.as_str())
        );
        let long = format!("pad={}", "a".repeat(MAX_BYTES - 10));
        assert_eq!(
            text(rewrite(one(&long), set)).as_deref(),
            Some(long.as_str())
        );
    }
}
