//! The pure cores of weft's policies: each takes the time (`now`) and a
//! random number generator as arguments, holds no locks and spawns nothing,
//! and is unit-tested with plain `#[test]`s on constructed time. The
//! services that apply them (`cluster`, `layer`) are thin shells around them.

pub mod backoff;
pub mod balancer;
pub mod circuit;
pub mod control_frames;
pub mod descriptors;
pub mod discovery;
pub mod ewma;
pub mod gradient;
pub mod outlier;
pub mod retry;
pub mod retry_budget;
pub mod split;
pub mod udp_session;
pub mod zone;
