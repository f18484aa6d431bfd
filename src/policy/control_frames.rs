//! The budget of HTTP/2 control frames one downstream connection may send:
//! frames that cost weft work (an acknowledgement to write, settings to
//! apply) and carry nothing for any request. A client over it is flooding
//! (CVE-2019-9512 PING flood, CVE-2019-9515 SETTINGS flood, CVE-2019-9518
//! empty frames) and its connection is closed with GOAWAY ENHANCE_YOUR_CALM.
//!
//! [`ControlFrameBudget`] is a token bucket: [`BURST`] frames at once,
//! refilled at [`PER_SECOND`], and one frame back for each DATA or HEADERS
//! frame weft sends on the connection (capped at the burst). The numbers are
//! generous to real clients by orders of magnitude and still stop a flood
//! within a few kilobytes:
//!
//! - A client sends one SETTINGS when it connects and rarely another. gRPC's
//!   keep-alive pings come every 10 s at the fastest its servers accept
//!   (grpc-go's enforcement policy closes clients pinging more often than
//!   every 5 minutes by default); browsers ping on network changes.
//! - gRPC and hyper clients also ping to estimate the bandwidth-delay
//!   product: one PING per round trip while response data arrives, which on
//!   a LAN can be thousands a second. grpc-go's server forgives pings that
//!   follow data it sent ("ping strikes" reset on each DATA or HEADERS);
//!   the credit per frame sent does the same here, so a download is never a
//!   flood, and a client can only earn pings by making weft send responses.
//! - Envoy closes a connection once 1,000 control frames (PING and SETTINGS
//!   acknowledgements, RST_STREAM) wait unwritten
//!   (`http2_protocol_options.max_outbound_control_frames`, counted in
//!   `http2.outbound_control_flood`), and after two consecutive frames with an
//!   empty payload (`max_consecutive_inbound_frames_with_empty_payload: 1`).
//!   nginx closes one once its received bytes pass 8 times its payload
//!   bytes plus 8 MiB ("http2 flood detected": about 500,000 PINGs). Envoy
//!   lets a client that reads its acknowledgements ping at line rate, and
//!   nginx half a million times; weft does not, since each frame costs CPU:
//!   [`BURST`] is Envoy's 1,000, and beyond it [`PER_SECOND`] (100 a second,
//!   still ten times any keep-alive setting in use) is all a flood gets
//!   before it is closed.
//!
//! Pure: time is the caller's `now`; nothing allocates, nothing blocks.

use tokio::time::Instant;

/// Control frames a connection may send at once (Envoy's
/// `max_outbound_control_frames` default).
pub const BURST: u32 = 1000;
/// Control frames a connection regains per second.
pub const PER_SECOND: u32 = 100;

/// One connection's control frame budget (a token bucket).
#[derive(Debug, Clone)]
pub struct ControlFrameBudget {
    tokens: f64,
    last: Instant,
}

impl ControlFrameBudget {
    /// A full budget.
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: f64::from(BURST),
            last: now,
        }
    }

    /// Takes one frame from the budget; false once it is spent (a flood).
    pub fn spend(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * f64::from(PER_SECOND)).min(f64::from(BURST));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives one frame back: weft sent the client a DATA or HEADERS frame.
    pub fn credit(&mut self) {
        self.tokens = (self.tokens + 1.0).min(f64::from(BURST));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Duration;

    /// How many frames in a row `budget` allows at `now`.
    fn allowed(budget: &mut ControlFrameBudget, now: Instant) -> u32 {
        let mut n = 0;
        while budget.spend(now) {
            n += 1;
            assert!(n <= BURST, "the budget never ran out");
        }
        n
    }

    #[test]
    fn a_burst_is_allowed_and_the_frame_after_it_is_a_flood() {
        let start = Instant::now();
        let mut budget = ControlFrameBudget::new(start);
        assert_eq!(allowed(&mut budget, start), BURST);
        assert!(!budget.spend(start));
    }

    #[test]
    fn the_budget_refills_at_its_rate_up_to_the_burst() {
        let start = Instant::now();
        let mut budget = ControlFrameBudget::new(start);
        allowed(&mut budget, start);
        assert_eq!(allowed(&mut budget, start + Duration::from_secs(1)), PER_SECOND);
        assert_eq!(
            allowed(&mut budget, start + Duration::from_millis(1500)),
            PER_SECOND / 2
        );
        // Idle for far longer than it takes to refill: one burst, no more.
        assert_eq!(allowed(&mut budget, start + Duration::from_secs(3600)), BURST);
    }

    #[test]
    fn keep_alive_pings_never_run_out() {
        // A PING a second for a day (ten times gRPC's fastest keep-alive).
        let start = Instant::now();
        let mut budget = ControlFrameBudget::new(start);
        for second in 0..86_400 {
            assert!(
                budget.spend(start + Duration::from_secs(second)),
                "closed after {second} s"
            );
        }
    }

    #[test]
    fn a_ping_per_frame_sent_never_runs_out_but_pings_beyond_it_do() {
        // A bandwidth estimator's ping per DATA frame it receives, all at
        // once: the credits keep it going.
        let now = Instant::now();
        let mut budget = ControlFrameBudget::new(now);
        for frame in 0..100_000 {
            budget.credit();
            assert!(budget.spend(now), "closed after {frame} frames");
        }
        // Two pings per frame sent run out after about the burst.
        let mut frames = 0;
        while budget.spend(now) && budget.spend(now) {
            budget.credit();
            frames += 1;
        }
        assert!((BURST - 2..=BURST).contains(&frames), "{frames}");
        // Credits do not grow the budget past the burst.
        let mut idle = ControlFrameBudget::new(now);
        for _ in 0..10 * BURST {
            idle.credit();
        }
        assert_eq!(allowed(&mut idle, now), BURST);
    }

    #[test]
    fn a_clock_that_goes_back_refills_nothing() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut budget = ControlFrameBudget::new(start);
        allowed(&mut budget, start);
        assert!(!budget.spend(start - Duration::from_secs(5)));
        // Nor does coming forward again to where it was.
        assert!(!budget.spend(start));
    }
}
