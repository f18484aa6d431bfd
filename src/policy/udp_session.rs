//! The session table of a UDP listener: one session per client address,
//! found per datagram, ended after `idle_timeout` without a datagram in
//! either direction, and never more than `max_sessions` of them.
//!
//! Guarantees:
//! - [`SessionTable::insert`] refuses a new client once `max_sessions`
//!   sessions exist: the table never grows past its cap.
//! - A session last active at `t` is removed by the first
//!   [`SessionTable::expire`] at or after `t + idle_timeout`, never earlier;
//!   [`SessionTable::next_deadline`] is never later than the earliest such
//!   moment, so a caller that sleeps until it misses no expiry.
//! - Finding or touching a session costs one hash lookup: activity only
//!   stamps the session. The ordered schedule is updated when a session
//!   comes due, at most once per idle period of an active session.
//!
//! Pure: the time is passed in; nothing here spawns, sleeps or locks.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use tokio::time::{Duration, Instant};

/// Sessions by client address, with their idle deadlines.
pub struct SessionTable<V> {
    idle_timeout: Duration,
    max_sessions: usize,
    sessions: HashMap<SocketAddr, Entry<V>>,
    /// When each session is next checked, earliest first; the sequence
    /// number keeps keys unique. A session touched since it was scheduled
    /// is rescheduled when its check comes, not on every touch.
    due: BTreeMap<(Instant, u64), SocketAddr>,
    sequence: u64,
}

struct Entry<V> {
    value: V,
    last_active: Instant,
    /// Its key in `due`.
    due: (Instant, u64),
}

impl<V> SessionTable<V> {
    pub fn new(idle_timeout: Duration, max_sessions: usize) -> Self {
        Self {
            idle_timeout,
            max_sessions,
            sessions: HashMap::new(),
            due: BTreeMap::new(),
            sequence: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The session of `client`, counted as active at `now`.
    pub fn get(&mut self, client: &SocketAddr, now: Instant) -> Option<&V> {
        let entry = self.sessions.get_mut(client)?;
        entry.last_active = entry.last_active.max(now);
        Some(&entry.value)
    }

    /// Counts `client`'s session as active at `now` (a reply went to it);
    /// whether there is such a session.
    pub fn touch(&mut self, client: &SocketAddr, now: Instant) -> bool {
        self.get(client, now).is_some()
    }

    /// The session of `client`, without counting it as active.
    pub fn peek(&self, client: &SocketAddr) -> Option<&V> {
        self.sessions.get(client).map(|e| &e.value)
    }

    /// Adds a session for `client`, active at `now`, replacing (and
    /// returning) any it had. `Err` gives `value` back when the table is
    /// full and `client` has no session.
    pub fn insert(&mut self, client: SocketAddr, value: V, now: Instant) -> Result<Option<V>, V> {
        let previous = self.remove(&client);
        if previous.is_none() && self.sessions.len() >= self.max_sessions {
            return Err(value);
        }
        let due = self.schedule(client, now + self.idle_timeout);
        self.sessions.insert(
            client,
            Entry {
                value,
                last_active: now,
                due,
            },
        );
        Ok(previous)
    }

    /// Ends `client`'s session now.
    pub fn remove(&mut self, client: &SocketAddr) -> Option<V> {
        let entry = self.sessions.remove(client)?;
        self.due.remove(&entry.due);
        Some(entry.value)
    }

    /// Removes and returns every session idle for `idle_timeout` at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<V> {
        let mut expired = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let client = entry.remove();
            let Some(session) = self.sessions.get(&client) else {
                continue;
            };
            let deadline = session.last_active + self.idle_timeout;
            if deadline <= now {
                if let Some(session) = self.sessions.remove(&client) {
                    expired.push(session.value);
                }
            } else {
                let due = self.schedule(client, deadline);
                if let Some(session) = self.sessions.get_mut(&client) {
                    session.due = due;
                }
            }
        }
        expired
    }

    /// When [`SessionTable::expire`] next has a session to check; `None`
    /// while the table is empty.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.due.first_key_value().map(|((at, _), _)| *at)
    }

    /// Removes every session (the listener is closing).
    pub fn drain(&mut self) -> Vec<V> {
        self.due.clear();
        self.sessions.drain().map(|(_, e)| e.value).collect()
    }

    fn schedule(&mut self, client: SocketAddr, at: Instant) -> (Instant, u64) {
        self.sequence += 1;
        let key = (at, self.sequence);
        self.due.insert(key, client);
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(30);

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_session_ends_exactly_idle_timeout_after_its_last_datagram() {
        let t0 = Instant::now();
        let mut table = SessionTable::new(IDLE, 10);
        table.insert(client(1), "a", t0).unwrap();
        assert_eq!(table.get(&client(1), t0 + secs(10)), Some(&"a"));
        assert_eq!(table.next_deadline(), Some(t0 + IDLE));
        // Due for a check at t0 + 30 s, but active at t0 + 10 s: kept, rescheduled.
        assert!(table.expire(t0 + IDLE).is_empty());
        assert_eq!(table.next_deadline(), Some(t0 + secs(40)));
        assert!(table.expire(t0 + secs(40) - Duration::from_millis(1)).is_empty());
        assert_eq!(table.expire(t0 + secs(40)), vec!["a"]);
        assert!(table.is_empty());
        assert_eq!(table.next_deadline(), None);
        assert_eq!(table.get(&client(1), t0 + secs(41)), None);
    }

    #[test]
    fn replies_keep_a_session_alive_as_datagrams_from_its_client_do() {
        let t0 = Instant::now();
        let mut table = SessionTable::new(IDLE, 10);
        table.insert(client(1), 1, t0).unwrap();
        table.insert(client(2), 2, t0).unwrap();
        // Only replies reach client 1 (upstream direction); client 2 is silent.
        for s in [20, 45, 70] {
            assert!(table.touch(&client(1), t0 + secs(s)));
            table.expire(t0 + secs(s));
        }
        assert_eq!(table.peek(&client(2)), None, "the silent session ended at t0 + 30 s");
        assert_eq!(table.peek(&client(1)), Some(&1));
        assert_eq!(table.expire(t0 + secs(100)), vec![1]);
        assert!(!table.touch(&client(1), t0 + secs(101)));
    }

    #[test]
    fn next_deadline_is_never_after_the_first_real_expiry() {
        let t0 = Instant::now();
        let mut table = SessionTable::new(IDLE, 100);
        for i in 0..50u16 {
            table.insert(client(i), i, t0 + secs(u64::from(i % 7))).unwrap();
        }
        let mut now = t0;
        let mut ended = Vec::new();
        while let Some(at) = table.next_deadline() {
            assert!(at >= now, "deadlines move forward");
            now = at;
            for i in table.expire(now) {
                assert_eq!(now, t0 + secs(u64::from(i % 7)) + IDLE, "session {i} ended on time");
                ended.push(i);
            }
        }
        assert_eq!(ended.len(), 50);
    }

    #[test]
    fn max_sessions_refuses_new_clients_but_not_known_ones() {
        let t0 = Instant::now();
        let mut table = SessionTable::new(IDLE, 2);
        table.insert(client(1), 1, t0).unwrap();
        table.insert(client(2), 2, t0).unwrap();
        assert_eq!(table.insert(client(3), 3, t0), Err(3));
        assert_eq!(table.len(), 2);
        // A known client may replace its own session at the cap.
        assert_eq!(table.insert(client(2), 20, t0), Ok(Some(2)));
        assert_eq!(table.remove(&client(1)), Some(1));
        assert_eq!(table.insert(client(3), 3, t0), Ok(None));
        assert_eq!(table.insert(client(4), 4, t0), Err(4));
        // Expiry frees room too.
        assert_eq!(table.expire(t0 + IDLE).len(), 2);
        assert_eq!(table.insert(client(4), 4, t0 + IDLE), Ok(None));
    }

    #[test]
    fn a_removed_session_leaves_no_schedule_behind() {
        let t0 = Instant::now();
        let mut table = SessionTable::new(IDLE, 10);
        table.insert(client(1), "old", t0).unwrap();
        table.remove(&client(1));
        assert_eq!(table.next_deadline(), None);
        table.insert(client(1), "new", t0 + secs(20)).unwrap();
        assert_eq!(table.next_deadline(), Some(t0 + secs(50)));
        assert!(table.expire(t0 + IDLE).is_empty());
        assert_eq!(table.drain(), vec!["new"]);
        assert_eq!(table.next_deadline(), None);
    }
}
