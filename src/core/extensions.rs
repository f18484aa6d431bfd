//! Request and response extensions: facts one layer hands to another
//! without either importing the other.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// Response extension naming the endpoint that answered, for logs and spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServedBy(pub SocketAddr);

/// Request extension from the retry layer: avoid the endpoint that just
/// failed (when another exists) and report which one this try picked. Both
/// are endpoint ids, which stay valid when the cluster's endpoint set
/// changes between tries (an id is never reused).
#[derive(Clone, Debug, Default)]
pub struct EndpointHint {
    pub exclude: Option<usize>,
    pub picked: Arc<OnceLock<usize>>,
}

/// Response extension from the retry layer: the retry that produced the
/// response (absent or 0 for a first try).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAttempt(pub u32);

/// Request extension from listeners with `original_destination`: where the
/// client's connection was going before the nat redirect sent it to weft.
/// Routes may match on it; an original-destination cluster sends there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalDestination(pub SocketAddr);
