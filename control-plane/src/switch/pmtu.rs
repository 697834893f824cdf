//! Path-MTU probing per neighbour, as pure logic. The underlay path to a neighbour can be
//! narrower than our own NIC (a tunnel, a cloud network at 1450), and such a path drops big
//! datagrams without a word. So every heartbeat reports the largest datagram its sender
//! received from us lately, and we pad some heartbeats into probes: a binary search between the
//! smallest payload the overlay needs and our NIC's largest finds what the path carries. Data
//! frames bigger than that are answered with ICMP at the source (see `mtu.rs`).
//!
//! Sizes here are UDP payload bytes (the whole mesh datagram).

use std::time::{Duration, Instant};

/// Probes at one size that go unanswered before the size counts as too big.
const MISSES: u32 = 3;
/// The search stops when the bounds are this close.
const RESOLUTION: usize = 16;
/// How often a settled path is probed again at the full size (paths change).
pub const REPROBE_EVERY: Duration = Duration::from_secs(600);
/// How long a received size counts as "lately" in reports.
pub const REPORT_WINDOW: Duration = Duration::from_secs(3);

/// Our side of the path to one neighbour.
#[derive(Clone, Debug)]
pub struct PathProbe {
    /// Largest payload known to arrive.
    good: usize,
    /// Smallest payload known not to arrive (one more than the largest possible at first).
    bad: usize,
    /// The size being probed and how many probes at it went unanswered.
    probing: Option<(usize, u32)>,
    settled_at: Option<Instant>,
    ceiling: usize,
}

impl PathProbe {
    /// `floor`: the payload the smallest acceptable overlay MTU needs; `ceiling`: the largest
    /// our own underlay NIC sends. Until probes say otherwise the path is assumed to carry the
    /// ceiling (a wrong guess costs a few seconds; a pessimistic one would make containers
    /// cache a small MTU for ten minutes).
    pub fn new(floor: usize, ceiling: usize) -> PathProbe {
        PathProbe {
            good: floor.min(ceiling),
            bad: ceiling + 1,
            probing: Some((ceiling, 0)),
            settled_at: None,
            ceiling,
        }
    }

    /// The largest payload to send to this neighbour now.
    pub fn usable(&self) -> usize {
        match self.probing {
            // Nothing has failed yet: optimistic.
            Some(_) if self.bad > self.ceiling => self.ceiling,
            _ => self.good,
        }
    }

    /// The size to pad the next heartbeat to (`None`: a plain heartbeat). Counts a probe sent.
    pub fn next_probe(&mut self, now: Instant) -> Option<usize> {
        if self.probing.is_none()
            && self
                .settled_at
                .is_some_and(|t| now.duration_since(t) >= REPROBE_EVERY)
        {
            self.bad = self.ceiling + 1;
            self.probing = Some((self.ceiling, 0));
        }
        let (size, misses) = self.probing.as_mut()?;
        if *misses >= MISSES {
            // Too big: search below it.
            self.bad = *size;
            let next = (self.good + self.bad) / 2;
            if self.bad - self.good <= RESOLUTION {
                self.probing = None;
                self.settled_at = Some(now);
                return None;
            }
            *size = next;
            *misses = 0;
        }
        *misses += 1;
        Some(*size)
    }

    /// The neighbour reports the largest payload it received from us lately.
    pub fn reported(&mut self, largest: usize, now: Instant) {
        if largest > self.good {
            self.good = largest.min(self.ceiling);
        }
        let Some((size, _)) = self.probing else {
            return;
        };
        if largest >= size {
            if self.bad - self.good <= RESOLUTION || self.good >= self.ceiling {
                self.probing = None;
                self.settled_at = Some(now);
            } else {
                self.probing = Some(((self.good + self.bad) / 2, 0));
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
}
