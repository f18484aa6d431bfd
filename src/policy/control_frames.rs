//! The budget of HTTP/2 control frames one downstream connection may send:
//! frames that cost weft work (an acknowledgement to write, settings to
//! apply) and carry nothing for any request. A client over it is flooding
//! (CVE-2019-9512 PING flood, CVE-2019-9515 SETTINGS flood, CVE-2019-9518
//! empty frames) and its connection is closed with GOAWAY ENHANCE_YOUR_CALM.
//!
//! [`ControlFrameBudget`] is a token bucket: [`BURST`] frames at once,
//! refilled at [`PER_SECOND`], and frames back for what weft sends on the
//! connection (capped at the burst): one per HEADERS frame, and one per
//! [`CREDIT_BYTES`] of DATA payload, counted in bytes so that a client which
//! shrinks its flow-control window to make weft send tiny DATA frames earns
//! next to nothing with them. The numbers are
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
//!   the credit for what weft sends does the same here: a download in DATA
//!   frames of at least [`CREDIT_BYTES`] pays for a ping per frame, so it is
//!   never a flood, and a client can only earn pings by making weft send
//!   response bytes (4 KiB each) or responses.
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
/// DATA payload bytes weft sends that give one control frame back (a
/// quarter of HTTP/2's default and usual frame size, 16 KiB).
pub const CREDIT_BYTES: u32 = 4 * 1024;

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

    /// Gives one frame back: weft sent the client a HEADERS frame.
    pub fn credit(&mut self) {
        self.tokens = (self.tokens + 1.0).min(f64::from(BURST));
    }

    /// Gives back one frame per [`CREDIT_BYTES`] of the `payload` bytes of a
    /// DATA frame weft sent the client.
    pub fn credit_data(&mut self, payload: u32) {
        let earned = f64::from(payload) / f64::from(CREDIT_BYTES);
        self.tokens = (self.tokens + earned).min(f64::from(BURST));
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
    fn tiny_data_frames_earn_next_to_nothing() {
        // A client with a 1-byte window makes weft send 1-byte DATA frames,
        // and pings after each: closed after about the burst.
        let now = Instant::now();
        let mut budget = ControlFrameBudget::new(now);
        let mut frames = 0;
        while budget.spend(now) {
            budget.credit_data(1);
            frames += 1;
            assert!(frames <= 2 * BURST, "a ping per 1-byte DATA frame never ran out");
        }
        // A full 16 KiB frame still pays for a ping each.
        let mut budget = ControlFrameBudget::new(now);
        for frame in 0..100_000 {
            budget.credit_data(16 * 1024);
            assert!(budget.spend(now), "closed after {frame} frames of 16 KiB");
        }
        // As do CREDIT_BYTES sent in small frames.
        let mut budget = ControlFrameBudget::new(now);
        allowed(&mut budget, now);
        for _ in 0..CREDIT_BYTES {
            budget.credit_data(1);
        }
        assert_eq!(allowed(&mut budget, now), 1);
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
