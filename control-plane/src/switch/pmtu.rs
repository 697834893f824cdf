//! Path-MTU probing per neighbour, as pure logic. The underlay path to a neighbour can be
//! narrower than our own NIC (a tunnel, a cloud network at 1450), and such a path drops big
//! datagrams without a word. So every heartbeat reports the largest datagram its sender
//! received from us lately, and we send padded copies of some heartbeats as probes: a binary
//! search between the smallest payload the overlay needs and our NIC's largest finds what the
//! path carries. Data frames bigger than that are answered with ICMP at the source (see
//! `mtu.rs`).
//!
//! Sizes here are UDP payload bytes (the whole mesh datagram).

use std::time::{Duration, Instant};

/// Probes at one size that go unanswered before the size counts as too big.
const MISSES: u32 = 3;
/// The same for the size a settled path already carried: more patience (3 s of heartbeats),
/// because wrongly shrinking a working path makes containers cache a small MTU.
const CONFIRM_MISSES: u32 = 6;
/// The search stops when the bounds are this close.
const RESOLUTION: usize = 16;
/// How often a settled path is probed again at the full size (paths can widen).
pub const REPROBE_EVERY: Duration = Duration::from_secs(600);
/// How often a settled path's size is confirmed with a probe at that size (paths can narrow:
/// without this a narrowed path would black-hole big frames until the next full re-probe).
pub const CONFIRM_EVERY: Duration = Duration::from_secs(15);
/// How long a received size counts as "lately" in reports.
pub const REPORT_WINDOW: Duration = Duration::from_secs(3);

/// What the probe in flight is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// The binary search between `good` and `bad`.
    Search,
    /// Checking that the settled size still passes.
    Confirm,
}

/// Our side of the path to one neighbour. Invariant: `floor <= good < bad <= ceiling + 1`.
#[derive(Clone, Debug)]
pub struct PathProbe {
    /// Largest payload known to arrive.
    good: usize,
    /// Smallest payload known not to arrive (one more than the largest possible at first).
    bad: usize,
    /// The size being probed, how many probes at it went unanswered, and why.
    probing: Option<(usize, u32, Probe)>,
    settled_at: Option<Instant>,
    confirmed_at: Option<Instant>,
    floor: usize,
    ceiling: usize,
}

impl PathProbe {
    /// `floor`: the payload the smallest acceptable overlay MTU needs; `ceiling`: the largest
    /// our own underlay NIC sends. Until the first probes say otherwise the path is assumed to
    /// carry the ceiling (a wrong guess costs a few seconds; a pessimistic one would make
    /// containers cache a small MTU for ten minutes).
    pub fn new(floor: usize, ceiling: usize) -> PathProbe {
        let floor = floor.min(ceiling);
        PathProbe {
            good: floor,
            bad: ceiling + 1,
            probing: Some((ceiling, 0, Probe::Search)),
            settled_at: None,
            confirmed_at: None,
            floor,
            ceiling,
        }
    }

    /// The largest payload to send to this neighbour now.
    pub fn usable(&self) -> usize {
        match self.probing {
            // Never settled and nothing has failed yet: optimistic. A re-probe of a settled
            // path keeps what is known to pass until a bigger size is proven.
            Some(_) if self.settled_at.is_none() && self.bad > self.ceiling => self.ceiling,
            _ => self.good,
        }
    }

    fn settle(&mut self, now: Instant) {
        self.probing = None;
        self.settled_at = Some(now);
        self.confirmed_at = Some(now);
    }

    /// The size to pad the next heartbeat to (`None`: a plain heartbeat). Counts a probe sent.
    pub fn next_probe(&mut self, now: Instant) -> Option<usize> {
        if self.probing.is_none() {
            let due = |t: Option<Instant>, every| t.is_some_and(|t| now.duration_since(t) >= every);
            if due(self.settled_at, REPROBE_EVERY) && self.good < self.ceiling {
                // Maybe wider now: search between what passes and the full size.
                self.bad = self.ceiling + 1;
                self.probing = Some((self.ceiling, 0, Probe::Search));
            } else if due(self.confirmed_at, CONFIRM_EVERY) {
                self.probing = Some((self.good, 0, Probe::Confirm));
            }
        }
        let (size, misses, kind) = self.probing?;
        let limit = if kind == Probe::Confirm {
            CONFIRM_MISSES
        } else {
            MISSES
        };
        if misses >= limit {
            match kind {
                // The settled size no longer passes: the path narrowed. Fall back to the
                // floor and search again below it.
                Probe::Confirm => {
                    self.bad = self.good.max(self.floor + 1);
                    self.good = self.floor;
                }
                Probe::Search => self.bad = size.max(self.good + 1),
            }
            if self.bad - self.good <= RESOLUTION {
                self.settle(now);
                return None;
            }
            let next = (self.good + self.bad) / 2;
            self.probing = Some((next, 1, Probe::Search));
            return Some(next);
        }
        self.probing = Some((size, misses + 1, kind));
        Some(size)
    }

    /// The neighbour reports the largest payload it received from us lately.
    pub fn reported(&mut self, largest: usize, now: Instant) {
        if largest > self.good {
            self.good = largest.min(self.ceiling);
            // A late report can name a size above one that failed since: it passed then, so
            // the failure bound moves up (the invariant good < bad holds).
            self.bad = self.bad.max(self.good + 1);
        }
        let Some((size, _, kind)) = self.probing else {
            if largest >= self.good {
                self.confirmed_at = Some(now);
            }
            return;
        };
        if largest >= size {
            if kind == Probe::Confirm
                || self.bad - self.good <= RESOLUTION
                || self.good >= self.ceiling
            {
                self.settle(now);
            } else {
                self.probing = Some(((self.good + self.bad) / 2, 0, Probe::Search));
            }
        }
    }
}

/// The receiving side: the largest payload from one neighbour lately, for our reports.
#[derive(Clone, Debug, Default)]
pub struct Received {
    largest: usize,
    at: Option<Instant>,
}

impl Received {
    pub fn saw(&mut self, size: usize, now: Instant) {
        let stale = self
            .at
            .is_none_or(|t| now.duration_since(t) >= REPORT_WINDOW);
        if stale || size >= self.largest {
            self.largest = size;
            self.at = Some(now);
        }
    }

    pub fn report(&self, now: Instant) -> usize {
        match self.at {
            Some(t) if now.duration_since(t) < REPORT_WINDOW => self.largest,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the exchange over a path carrying at most `path` bytes; returns the usable size.
    fn converge(path: usize) -> (usize, usize) {
        let now = Instant::now();
        let mut p = PathProbe::new(1330, 1472);
        let mut rx = Received::default();
        let mut rounds = 0;
        for i in 0..200u64 {
            let t = now + Duration::from_millis(500 * i);
            if let Some(size) = p.next_probe(t) {
                if size <= path {
                    rx.saw(size, t);
                }
            } else if p.probing.is_none() {
                break;
            }
            rounds += 1;
            p.reported(rx.report(t), t);
        }
        (p.usable(), rounds)
    }

    #[test]
    fn a_full_path_settles_at_once_and_a_narrow_one_within_seconds() {
        assert_eq!(converge(1500), (1472, 1));
        let (usable, rounds) = converge(1372);
        assert!(usable <= 1372 && usable > 1372 - RESOLUTION, "{usable}");
        assert!(rounds < 40, "{rounds} heartbeats");
    }

    #[test]
    fn optimistic_until_a_probe_fails_then_only_what_is_known_to_pass() {
        let now = Instant::now();
        let mut p = PathProbe::new(1330, 1472);
        assert_eq!(p.usable(), 1472);
        for _ in 0..=MISSES {
            p.next_probe(now);
        }
        assert_eq!(p.usable(), 1330, "after the full size failed");
    }

    #[test]
    fn a_settled_path_is_probed_again_later() {
        let now = Instant::now();
        let mut p = PathProbe::new(1330, 1472);
        p.next_probe(now);
        p.reported(1472, now);
        assert_eq!(p.next_probe(now), None);
        assert_eq!(p.next_probe(now + REPROBE_EVERY), Some(1472));
    }

    #[test]
    fn reports_expire() {
        let now = Instant::now();
        let mut r = Received::default();
        r.saw(1400, now);
        r.saw(100, now);
        assert_eq!(r.report(now), 1400);
        assert_eq!(r.report(now + REPORT_WINDOW), 0);
        r.saw(100, now + REPORT_WINDOW);
        assert_eq!(r.report(now + REPORT_WINDOW), 100);
    }

    /// Heartbeats every 500 ms from `start` for `secs` over a path carrying `path` bytes.
    fn run(p: &mut PathProbe, rx: &mut Received, start: Instant, secs: u64, path: usize) {
        for i in 0..secs * 2 {
            let t = start + Duration::from_millis(500 * i);
            if let Some(size) = p.next_probe(t)
                && size <= path
            {
                rx.saw(size, t);
            }
            p.reported(rx.report(t), t);
        }
    }

    #[test]
    fn a_path_that_narrows_is_noticed_and_searched_again() {
        let now = Instant::now();
        let (mut p, mut rx) = (PathProbe::new(1330, 1472), Received::default());
        run(&mut p, &mut rx, now, 10, 1500);
        assert_eq!(p.usable(), 1472);
        // The path narrows to 1400: within a confirmation period and a search, usable fits.
        let later = now + Duration::from_secs(10);
        run(&mut p, &mut rx, later, CONFIRM_EVERY.as_secs() + 30, 1400);
        assert!(
            p.usable() <= 1400 && p.usable() > 1400 - RESOLUTION,
            "{}",
            p.usable()
        );
    }

    #[test]
    fn a_reprobe_keeps_what_is_known_to_pass() {
        let now = Instant::now();
        let (mut p, mut rx) = (PathProbe::new(1330, 1472), Received::default());
        run(&mut p, &mut rx, now, 30, 1400);
        let settled = p.usable();
        assert!(settled <= 1400);
        // The re-probe tries the full size again; meanwhile frames stay within what passes.
        assert_eq!(
            p.next_probe(now + REPROBE_EVERY + Duration::from_secs(30)),
            Some(1472)
        );
        assert_eq!(p.usable(), settled);
    }

    #[test]
    fn a_late_report_above_a_failed_size_keeps_the_bounds_ordered() {
        let now = Instant::now();
        let mut p = PathProbe::new(1330, 1472);
        for _ in 0..=MISSES {
            p.next_probe(now);
        }
        // 1472 failed; now a report of 1472 arrives late (it did pass once).
        p.reported(1472, now);
        assert!(p.good < p.bad);
        for _ in 0..20 {
            p.next_probe(now);
            p.reported(0, now);
        }
        assert!(p.good < p.bad && p.usable() >= 1330);
    }
}
