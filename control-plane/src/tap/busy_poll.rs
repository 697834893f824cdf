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
//! How: the runtime is single-threaded; one task yields in a loop while polling, and each yield
//! makes the runtime poll its I/O driver without blocking, which wakes the pumps as their
//! sockets get data. Each round also yields the CPU to the kernel's scheduler: with both ends
//! of a request/response on one machine, a poller that held its CPU until preempted delayed
//! the very programs it waited for (measured in the lab, TCP request/response through the
//! sealed path: 7k/s without polling, 12k/s polling greedily, 19-20k/s polling politely).

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// Traffic seen by the pumps, and the poller's state.
pub struct BusyPoll {
    /// How long to poll after the last traffic; zero: never.
    window: Duration,
    /// Frames or datagrams read so far (any change restarts the window).
    seen: AtomicU64,
    polling: AtomicBool,
    /// Bulk traffic was seen since the window opened: it closes.
    bulk: AtomicBool,
    /// Until when (`Shared::now_ms`) lone frames open no window, after bulk traffic.
    bulk_until: AtomicU64,
    start: Notify,
}

impl BusyPoll {
    pub fn new(window: Duration) -> BusyPoll {
        BusyPoll {
            window,
            seen: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            bulk: AtomicBool::new(false),
            bulk_until: AtomicU64::new(0),
            start: Notify::new(),
        }
    }

    /// Called by a pump for each read that brought data frames, with how many it brought and
    /// the data path's clock (`Shared::now_ms`). One frame starts the window or keeps it open.
    /// Several (a TCP super-frame, a receive of many datagrams) are traffic in bulk: it waits
    /// on no reply, the next batch wakes the pump soon enough, and the CPUs are better left to
    /// the programs that produce and consume it. So the window closes, and lone frames (the
    /// ACKs of a bulk stream, say) open none for [`BULK_HOLD_MS`] after (sealed bulk TCP in the
    /// lab: 6.12-6.74 Gbit/s polling, 6.57-6.85 not polling).
    pub fn traffic(&self, frames: usize, now_ms: u64) {
        if frames > 1 {
            self.bulk_until
                .store(now_ms + BULK_HOLD_MS, Ordering::Relaxed);
            self.bulk.store(true, Ordering::Relaxed);
            return;
        }
        if now_ms < self.bulk_until.load(Ordering::Relaxed) {
            return;
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        if !self.polling.load(Ordering::Relaxed) {
            self.start.notify_one();
        }
    }

    /// Whether a window is open.
    #[cfg(test)]
    fn polling(&self) -> bool {
        self.polling.load(Ordering::Relaxed)
    }

    /// The poller's task: idle until traffic, then polls until the window has passed without
    /// any. With no window it never polls (and never ends, like the pumps).
    pub async fn run(&self) {
        if self.window.is_zero() {
            std::future::pending::<()>().await;
        }
        loop {
            self.start.notified().await;
            self.polling.store(true, Ordering::Relaxed);
            self.bulk.store(false, Ordering::Relaxed);
            let mut seen = self.seen.load(Ordering::Relaxed);
            let mut quiet_since = Instant::now();
            loop {
                // Polite polling: a program woken on this CPU (the one a reply is for,
                // often) runs at once instead of waiting for the scheduler to preempt us.
                let yielding = Instant::now();
                std::thread::yield_now();
                let yielded = yielding.elapsed();
                tokio::task::yield_now().await;
                let now = self.seen.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    // Close enough to the traffic, and one clock read less per round.
                    quiet_since = yielding;
                }
                if self.bulk.load(Ordering::Relaxed)
                    || !keep_polling(quiet_since.elapsed(), yielded, self.window)
                {
                    break;
                }
            }
            self.polling.store(false, Ordering::Relaxed);
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
    use std::sync::Arc;

    /// Yields (letting the poller run) until `cond` holds; false after a generous deadline.
    async fn until(cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        false
    }

    /// A poller with `window`, running as a task of the test's runtime.
    fn started(window: Duration) -> (Arc<BusyPoll>, tokio::task::JoinHandle<()>) {
        let bp = Arc::new(BusyPoll::new(window));
        let poller = tokio::spawn({
            let bp = bp.clone();
            async move { bp.run().await }
        });
        (bp, poller)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn polls_from_traffic_until_a_quiet_window_and_again_on_the_next() {
        let (bp, poller) = started(Duration::from_millis(200));
        tokio::task::yield_now().await;
        assert!(!bp.polling(), "polling before any traffic");
        bp.traffic(1, 0);
        assert!(until(|| bp.polling()).await, "traffic opened no window");
        // Traffic inside the window keeps it open past its first end.
        let opened = Instant::now();
        while opened.elapsed() < Duration::from_millis(400) {
            bp.traffic(1, 0);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(bp.polling(), "the window closed during traffic");
        assert!(until(|| !bp.polling()).await, "the window never closed");
        bp.traffic(1, 0);
        assert!(
            until(|| bp.polling()).await,
            "the next traffic opened no window"
        );
        poller.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bulk_traffic_closes_the_window_and_lone_frames_open_none_for_a_while() {
        let (bp, poller) = started(Duration::from_secs(3600));
        bp.traffic(1, 1000);
        assert!(
            until(|| bp.polling()).await,
            "a lone frame opened no window"
        );
        // The window is an hour long: only the bulk read can close it.
        bp.traffic(40, 1000);
        assert!(
            until(|| !bp.polling()).await,
            "bulk did not close the window"
        );
        // A bulk stream's ACKs, within the hold.
        bp.traffic(1, 1000 + BULK_HOLD_MS - 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !bp.polling(),
            "a lone frame right after bulk opened a window"
        );
        bp.traffic(1, 1000 + BULK_HOLD_MS);
        assert!(
            until(|| bp.polling()).await,
            "a lone frame after the hold opened no window"
        );
        poller.abort();
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
