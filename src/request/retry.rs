//! The one retry (DESIGN §1.6): when nothing reached the first endpoint, the request
//! may go once to another endpoint of the **same** variant. Never the other variant;
//! that would corrupt the experiment. Both engines ask here; each sends on its own
//! connections.

use crate::config::Endpoint;
use crate::upstream::{Target, UpstreamError};

/// The endpoint to try after `error` at `first`: the next of the variant's endpoints
/// (`rest`, round robin after `first`) when nothing was sent and it is a different one.
#[inline]
pub(crate) fn another_endpoint<'a>(
    error: &UpstreamError,
    first: &Endpoint,
    rest: &mut impl Iterator<Item = &'a Target>,
) -> Option<&'a Target> {
    if !error.nothing_sent() {
        return None;
    }
    rest.next().filter(|other| other.endpoint != *first)
}
