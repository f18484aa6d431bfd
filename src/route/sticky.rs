//! Sticky weighted splits: `sticky: { header: x-user-id }` or
//! `sticky: { cookie: NAME }` next to `split:` keeps each value on one side of
//! the split, so a user does not flip between versions during a rollout.
//!
//! How: the value is hashed to a point in `[0, 1)` (FNV-1a, then the
//! SplitMix64 finalizer so similar ids spread evenly), scaled to the split's
//! total weight, and looked up against the cumulative weights exactly as a
//! random point would be. The hash does not depend on the weights, so a
//! value's point never moves: when weights change, only the values whose
//! point falls between the old and the new boundary change sides. With a
//! two-way split (stable, canary) going from 90/10 to 80/20, exactly the users
//! in [0.8, 0.9) move to the canary and nobody moves back (the "consistent"
//! property of rendezvous/range hashing; see Karger et al. 1997 for the
//! general idea). The hash is fixed (not `std`'s `DefaultHasher`, whose output
//! may change between Rust releases), so a restart or upgrade of weft keeps
//! every user where they were.
//!
//! Requests without the header or cookie return `None` and split at random.

use http::{header, HeaderMap, HeaderName};

use super::matcher::MatchError;
use crate::config::schema::StickyConfig;

#[derive(Debug, Clone)]
pub enum Sticky {
    Header(HeaderName),
    Cookie(String),
}

impl Sticky {
    pub fn compile(config: &StickyConfig) -> Result<Self, MatchError> {
        let err = |key: &str, message: String| MatchError {
            key: format!("sticky.{key}"),
            message,
        };
        match (&config.header, &config.cookie) {
            (Some(name), None) => HeaderName::try_from(name.as_str())
                .map(Sticky::Header)
                .map_err(|e| err("header", format!("invalid header name {name:?}: {e}"))),
            (None, Some(name)) if !name.is_empty() && !name.contains([';', '=', ' ']) => {
                Ok(Sticky::Cookie(name.clone()))
            }
            (None, Some(name)) => Err(err("cookie", format!("invalid cookie name {name:?}"))),
            _ => Err(err("header", "set exactly one of header, cookie".into())),
        }
    }

    /// The request's sticky value, if it carries one.
    pub fn value<'a>(&self, headers: &'a HeaderMap) -> Option<&'a [u8]> {
        match self {
            Sticky::Header(name) => headers.get(name).map(|v| v.as_bytes()).filter(|v| !v.is_empty()),
            Sticky::Cookie(name) => cookie(headers, name).map(str::as_bytes),
        }
    }
}

/// The value of cookie `name` in the request's `cookie` headers (RFC 6265
/// section 5.4: `name=value` pairs separated by `; `).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// A stable 64-bit hash of `value`: FNV-1a followed by the SplitMix64
/// finalizer (FNV alone leaves nearby inputs' high bits close together).
pub fn hash(value: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = value
        .iter()
        .fold(FNV_OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME));
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// `value`'s point in `0..total`: its hash read as a fraction of 2^64, scaled.
pub fn point(value: &[u8], total: u64) -> u64 {
    ((u128::from(hash(value)) * u128::from(total)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::WeightedSplit;

    fn side(split: &WeightedSplit, user: &str) -> usize {
        split.pick(point(user.as_bytes(), split.total())).unwrap()
    }

    #[test]
    fn same_value_same_side_and_ratio_follows_weights() {
        let split = WeightedSplit::new([(0, 90), (1, 10)]);
        let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        assert!(users.iter().all(|u| side(&split, u) == side(&split, u)));
        let canary = users.iter().filter(|u| side(&split, u) == 1).count();
        assert!((800..1200).contains(&canary), "{canary} of 10000 on a 10% canary");
    }

    #[test]
    fn raising_the_canary_moves_only_the_moved_share() {
        let before = WeightedSplit::new([(0, 90), (1, 10)]);
        let after = WeightedSplit::new([(0, 80), (1, 20)]);
        let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let mut moved = 0;
        for u in &users {
            let (b, a) = (side(&before, u), side(&after, u));
            assert!(!(b == 1 && a == 0), "{u} went back from canary to stable");
            moved += usize::from(b != a);
        }
        assert!((800..1200).contains(&moved), "{moved} of 10000 moved for a 10% shift");
    }

    #[test]
    fn header_and_cookie_values() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", "42".parse().unwrap());
        headers.append(header::COOKIE, "a=1; uid=\"abc\"".parse().unwrap());
        let by_header = Sticky::compile(&StickyConfig {
            header: Some("x-user-id".into()),
            cookie: None,
        })
        .unwrap();
        assert_eq!(by_header.value(&headers), Some(&b"42"[..]));
        let by_cookie = Sticky::compile(&StickyConfig {
            header: None,
            cookie: Some("uid".into()),
        })
        .unwrap();
        assert_eq!(by_cookie.value(&headers), Some(&b"abc"[..]));
        assert_eq!(by_cookie.value(&HeaderMap::new()), None);
        assert!(Sticky::compile(&StickyConfig::default()).is_err());
    }
}
