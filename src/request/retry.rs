//! The one retry (DESIGN §1.6): when nothing reached the first endpoint, the request
//! may go once to another endpoint of the **same** variant. Never the other variant;
//! that would corrupt the experiment. Both engines ask here; each sends on its own
//! connections.

use std::sync::Arc;

use crate::config::Endpoint;
use crate::upstream::UpstreamError;

/// The endpoint to try after `error` at `first`: the next of the variant's endpoints
/// (`rest`, round robin after `first`) when nothing was sent and it is a different one.
#[inline]
pub(crate) fn another_endpoint<'a>(
    error: &UpstreamError,
    first: &Endpoint,
    rest: &mut impl Iterator<Item = &'a (Endpoint, Arc<str>)>,
) -> Option<&'a (Endpoint, Arc<str>)> {
    if !error.nothing_sent() {
        return None;
    }
    rest.next().filter(|(other, _)| other != first)
}
