//! The process's file-descriptor limit as upstream connections see it:
//! raised to its hard ceiling at start-up, and checked before each new
//! upstream connection against the reserve `policy::descriptors` keeps for
//! listeners and the admin port.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::policy::descriptors;

/// The soft `RLIMIT_NOFILE` last read or set (0: not read yet).
static SOFT_LIMIT: AtomicU64 = AtomicU64::new(0);

fn read_limit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// Raises the soft descriptor limit to the hard one; returns the limit now
/// in force and the reserve kept from upstream connections.
pub fn raise_limit() -> io::Result<(u64, u64)> {
    let mut limit = read_limit()?;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads only the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    SOFT_LIMIT.store(limit.rlim_cur, Ordering::Relaxed);
    Ok((limit.rlim_cur, descriptors::reserve(limit.rlim_cur)))
}

fn soft_limit() -> u64 {
    match SOFT_LIMIT.load(Ordering::Relaxed) {
        0 => {
            let soft = read_limit().map_or(u64::MAX, |l| l.rlim_cur);
            SOFT_LIMIT.store(soft, Ordering::Relaxed);
            soft
        }
        soft => soft,
    }
}

/// Upstream connections admitted whose descriptor may not exist yet.
static OPENING: AtomicU64 = AtomicU64::new(0);

/// A new upstream connection's claim on a descriptor, counted until dropped
/// (once the connection's own descriptor exists, or its attempt failed).
pub struct Opening(());

impl Drop for Opening {
    fn drop(&mut self) {
        OPENING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Claims a descriptor for a new upstream connection, or `None` when free
/// descriptors are down to the reserve. Connections being opened count as
/// taken (a burst of connects is checked before any of their sockets
/// exists). Costs two non-blocking system calls: the kernel's lowest free
/// descriptor, found by creating an eventfd and closing it.
pub fn claim() -> Option<Opening> {
    let opening = OPENING.fetch_add(1, Ordering::Relaxed) + 1;
    let claim = Opening(());
    // SAFETY: eventfd creates a descriptor that is closed right below and
    // never used otherwise.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just created here and nothing else holds it.
    unsafe { libc::close(fd) };
    (!descriptors::near_limit(fd as u64 + opening, soft_limit())).then_some(claim)
}
