//! The file-descriptor reserve: upstream connections may not take the last
//! descriptors of the process, which listeners (accept) and the admin port
//! need to keep answering. Pure arithmetic on the soft `RLIMIT_NOFILE` and
//! the lowest free descriptor number plus the connections being opened (the
//! kernel hands out the lowest free one, so when it is N, descriptors 0..N
//! are all in use, and the connections being opened will take the next).

/// Descriptors kept free for accept and the admin port: 1/16 of the limit,
/// at least 32 and at most 4096 (64 at the common limit of 1024).
pub fn reserve(limit: u64) -> u64 {
    (limit / 16).clamp(32, 4096)
}

/// Whether a new upstream connection must be refused: `next` (the lowest
/// free descriptor plus connections being opened) is within the reserve of
/// the limit. Holes below it make this
/// an underestimate of use, never an overestimate, so it never refuses
/// while more than the reserve is free.
pub fn near_limit(next: u64, limit: u64) -> bool {
    next.saturating_add(reserve(limit)) >= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_scales_with_the_limit_within_bounds() {
        assert_eq!(reserve(256), 32);
        assert_eq!(reserve(1024), 64);
        assert_eq!(reserve(65536), 4096);
        assert_eq!(reserve(1 << 20), 4096);
    }

    #[test]
    fn refuses_only_inside_the_reserve() {
        assert!(!near_limit(0, 1024));
        assert!(!near_limit(959, 1024));
        assert!(near_limit(960, 1024));
        assert!(near_limit(1023, 1024));
        assert!(!near_limit(1 << 40, u64::MAX));
    }
}
