//! Busy-polling after traffic: for a short window after the last frame, the data path thread
//! keeps polling its sockets instead of sleeping in the kernel until the next one.
//!
//! Why: a small packet's latency through meshd is mostly waking up. A request leaves, and its
//! reply comes back a few tens of microseconds later to a thread that went to sleep in
//! `epoll_wait` meanwhile; the wake-up (scheduler, and on a VM often the idle CPU's exit from a
//! low-power state) costs about as much as the work on the packet. Polling for a window after
//! each frame catches the reply awake. Bulk traffic never waits, so it pays nothing; sparse
//! traffic costs one window per frame; heartbeats do not count as traffic, so an idle mesh
//! never polls. On a single CPU polling would only take time from the programs whose replies
//! it waits for, so it is off there (see [`default_window`]).
//!
//! How: the data path thread, instead of waiting in `epoll_wait`, looks (a zero timeout) and
//! yields the CPU to the scheduler between looks. With both ends of a request/response on one
//! machine, a poller that held its CPU until preempted delayed the very programs it waited for
//! (measured in the lab, TCP request/response through the sealed path: 7k/s without polling,
//! 12k/s polling greedily, 19-20k/s polling politely). This is pure state: the thread asks
//! [`BusyPoll::polling`] before each wait.

use std::time::{Duration, Instant};

/// Traffic seen by the data path, and whether a window is open.
pub struct BusyPoll {
    /// How long to poll after the last traffic; zero: never.
    window: Duration,
    /// When the last lone frame was read, while its window is open.
    last: Option<Instant>,
    /// Until when (`Shared::now_ms`) lone frames open no window, after bulk traffic.
    bulk_until: u64,
}

impl BusyPoll {
    pub fn new(window: Duration) -> BusyPoll {
        BusyPoll {
            window,
            last: None,
            bulk_until: 0,
        }
    }

    /// Called for each read that brought data frames, with how many it brought, the data
    /// path's clock (`Shared::now_ms`) and the instant it stands for. One frame opens the
    /// window or keeps it open. Several (a TCP super-frame, a receive of many datagrams) are
    /// traffic in bulk: it waits on no reply, the next batch wakes the thread soon enough,
    /// and the CPUs are better left to the programs that produce and consume it. So the
    /// window closes, and lone frames (the ACKs of a bulk stream, say) open none for
    /// [`BULK_HOLD_MS`] after (sealed bulk TCP in the lab: 6.12-6.74 Gbit/s polling,
    /// 6.57-6.85 not polling).
    pub fn traffic(&mut self, frames: usize, now_ms: u64, now: Instant) {
        if self.window.is_zero() {
            return;
        }
        if frames > 1 {
            self.bulk_until = now_ms + BULK_HOLD_MS;
            self.last = None;
            return;
        }
        if now_ms < self.bulk_until {
            return;
        }
        self.last = Some(now);
    }

    /// Whether the next wait should only look (and yield the CPU first): traffic was seen
    /// less than a window before `now`.
    pub fn polling(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.window => true,
            _ => {
                self.last = None;
                false
            }
        }
    }

    /// A yield to the scheduler while polling took `yielded` (see [`keep_polling`]).
    pub fn yielded(&mut self, yielded: Duration) {
        if !keep_polling(Duration::ZERO, yielded, self.window) {
            self.last = None;
        }
    }
}

/// Whether an open window stays open: traffic was seen less than a window ago, and the CPU is
/// not wanted elsewhere. A yield that lasted a whole window gave the CPU to programs that had
/// work for that long (the scheduler ran them first): the CPUs are busy, as under a flood of
/// small packets, and polling on would only take from them the share they need, such as the
/// receiving program's. Measured in the lab (two hosts, 2 CPUs): a 64-byte UDP flood through
/// plaintext TAP delivered 211-246k/s polling on regardless, 265-283k/s not polling at all,
/// 214-255k/s closing the window this way; TCP_RR, ping and bulk TCP as before. With CPUs to
/// spare a yield returns at once, or after the short run of the program a reply is for, and
/// polling goes on.
fn keep_polling(quiet: Duration, yielded: Duration, window: Duration) -> bool {
    quiet < window && yielded < window
}

/// How long after bulk traffic lone frames open no window, in milliseconds: past the gaps
/// between a stream's batches, short against a person's pause before the next request.
const BULK_HOLD_MS: u64 = 2;

/// The window used when none is configured: none on a single CPU (see the module's comment).
pub fn default_window(cpus: usize) -> Duration {
    if cpus > 1 {
        Duration::from_micros(DEFAULT_WINDOW_US)
    } else {
        Duration::ZERO
    }
}

/// Long enough to span a request/response through a LAN peer (tens of microseconds on a VM),
/// short enough that a packet a second costs nothing measurable.
pub const DEFAULT_WINDOW_US: u64 = 200;

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn polls_from_traffic_until_a_quiet_window_and_again_on_the_next() {
        let mut bp = BusyPoll::new(200 * MS);
        let t0 = Instant::now();
        assert!(!bp.polling(t0), "polling before any traffic");
        bp.traffic(1, 0, t0);
        assert!(bp.polling(t0 + 100 * MS));
        // Traffic inside the window keeps it open past its first end.
        bp.traffic(1, 150, t0 + 150 * MS);
        assert!(
            bp.polling(t0 + 300 * MS),
            "the window closed during traffic"
        );
        assert!(!bp.polling(t0 + 350 * MS), "the window never closed");
        assert!(!bp.polling(t0 + 300 * MS), "a closed window stays closed");
        bp.traffic(1, 400, t0 + 400 * MS);
        assert!(
            bp.polling(t0 + 401 * MS),
            "the next traffic opened no window"
        );
    }

    #[test]
    fn bulk_traffic_closes_the_window_and_lone_frames_open_none_for_a_while() {
        let mut bp = BusyPoll::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        bp.traffic(1, 1000, t0);
        assert!(bp.polling(t0), "a lone frame opened no window");
        // The window is an hour long: only the bulk read can close it.
        bp.traffic(40, 1000, t0);
        assert!(!bp.polling(t0), "bulk did not close the window");
        // A bulk stream's ACKs, within the hold.
        bp.traffic(1, 1000 + BULK_HOLD_MS - 1, t0);
        assert!(
            !bp.polling(t0),
            "a lone frame right after bulk opened a window"
        );
        bp.traffic(1, 1000 + BULK_HOLD_MS, t0);
        assert!(
            bp.polling(t0),
            "a lone frame after the hold opened no window"
        );
    }

    #[test]
    fn a_yield_that_lasted_a_window_closes_it() {
        let mut bp = BusyPoll::new(200 * MS);
        let t0 = Instant::now();
        bp.traffic(1, 0, t0);
        bp.yielded(30 * MS);
        assert!(bp.polling(t0), "a short yield: CPUs to spare");
        bp.yielded(200 * MS);
        assert!(!bp.polling(t0), "a yield as long as the window");
    }

    #[test]
    fn no_window_never_polls() {
        let mut bp = BusyPoll::new(Duration::ZERO);
        let t0 = Instant::now();
        bp.traffic(1, 0, t0);
        assert!(!bp.polling(t0));
    }

    #[test]
    fn a_window_closes_when_quiet_for_its_length_or_when_the_cpu_is_wanted() {
        let w = Duration::from_micros(200);
        let us = Duration::from_micros;
        assert!(keep_polling(us(0), us(1), w));
        assert!(
            keep_polling(us(199), us(30), w),
            "a short yield: CPUs to spare"
        );
        assert!(
            !keep_polling(us(200), us(1), w),
            "quiet for the whole window"
        );
        assert!(
            !keep_polling(us(10), us(200), w),
            "a yield that lasted the window"
        );
    }

    #[test]
    fn polls_only_with_a_cpu_to_spare() {
        assert_eq!(default_window(1), Duration::ZERO);
        assert_eq!(default_window(2), Duration::from_micros(DEFAULT_WINDOW_US));
    }
}
