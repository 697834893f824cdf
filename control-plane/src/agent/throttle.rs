//! Online password guessing, slowed down. Each incoming connection that fails authentication is
//! one guess; after a failure, the same source (an IPv4 address, or an IPv6 /64) is refused
//! before any handshake work until its wait is over: 1 s after the first failure, doubling
//! with each further one up to 5 minutes. A success clears it. The table is bounded: when it is
//! full, the source whose wait ends first is forgotten.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

pub const FIRST_WAIT: Duration = Duration::from_secs(1);
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Sources remembered at once.
pub const CAPACITY: usize = 4096;

/// Where guesses come from: one IPv4 address, or one IPv6 /64 (what one host usually holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Source(u128);

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => Source((u128::from(v6) >> 64) << 64 | 1),
        }
    }
}

struct Record {
    failures: u32,
    until: Instant,
}

#[derive(Default)]
pub struct Throttle {
    by_source: HashMap<Source, Record>,
}

impl Throttle {
    /// Whether a connection from `ip` may try now; `Err` says how long it still has to wait.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.by_source.get(&Source::of(ip)) {
            Some(r) if r.until > now => Err(r.until - now),
            _ => Ok(()),
        }
    }

    /// A connection from `ip` failed authentication.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        let source = Source::of(ip);
        if !self.by_source.contains_key(&source) && self.by_source.len() >= CAPACITY {
            self.forget_one(now);
        }
        let r = self.by_source.entry(source).or_insert(Record {
            failures: 0,
            until: now,
        });
        r.failures = r.failures.saturating_add(1);
        let wait = FIRST_WAIT
            .saturating_mul(1u32 << (r.failures - 1).min(16))
            .min(MAX_WAIT);
        r.until = now + wait;
    }

    /// A connection from `ip` authenticated: it owes no wait.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.by_source.remove(&Source::of(ip));
    }

    /// Makes room: a source whose wait is over, else the one whose wait ends first.
    fn forget_one(&mut self, now: Instant) {
        let victim = self
            .by_source
            .iter()
            .min_by_key(|(_, r)| (r.until > now, r.until))
            .map(|(s, _)| *s);
        if let Some(s) = victim {
            self.by_source.remove(&s);
        }
    }
}

/// Log lines about what outsiders do (refused handshakes), at most [`LOG_BURST`] per
/// [`LOG_WINDOW`]: a flood of failures must not become a flood of log lines. What is held
/// back is counted and said in one line when the next window opens.
pub const LOG_BURST: u32 = 10;
pub const LOG_WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct LogBudget {
    window: Option<Instant>,
    used: u32,
    held_back: u64,
}

/// What to do with one more line.
#[derive(Debug, PartialEq, Eq)]
pub enum Log {
    /// Write it; before it, say how many earlier ones were held back (if any).
    Write {
        held_back: u64,
    },
    Skip,
}

impl LogBudget {
    pub fn take(&mut self, now: Instant) -> Log {
        if self
            .window
            .is_none_or(|start| now.duration_since(start) >= LOG_WINDOW)
        {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < LOG_BURST {
            self.used += 1;
            Log::Write {
                held_back: std::mem::take(&mut self.held_back),
            }
        } else {
            self.held_back += 1;
            Log::Skip
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_failure_doubles_the_wait_up_to_the_cap_and_a_success_clears_it() {
        let mut t = Throttle::default();
        let (a, now) = (ip("198.18.0.9"), Instant::now());
        assert_eq!(t.admit(a, now), Ok(()));
        let mut at = now;
        for (failure, wait) in [1u64, 2, 4, 8, 16].into_iter().enumerate() {
            t.failed(a, at);
            assert_eq!(
                t.admit(a, at),
                Err(Duration::from_secs(wait)),
                "failure {failure}"
            );
            assert!(t.admit(a, at + Duration::from_secs(wait)).is_ok());
            at += Duration::from_secs(wait);
        }
        for _ in 0..40 {
            t.failed(a, at);
        }
        assert_eq!(t.admit(a, at), Err(MAX_WAIT));
        // Another source is not held up.
        assert_eq!(t.admit(ip("198.18.0.10"), at), Ok(()));
        t.succeeded(a);
        assert_eq!(t.admit(a, at), Ok(()));
    }

    #[test]
    fn an_ipv6_host_cannot_escape_by_changing_its_interface_id() {
        let mut t = Throttle::default();
        let now = Instant::now();
        t.failed(ip("2001:db8:1:2::1"), now);
        assert!(t.admit(ip("2001:db8:1:2:ffff::77"), now).is_err());
        assert!(t.admit(ip("2001:db8:1:3::1"), now).is_ok());
        // An IPv4-mapped address is the IPv4 address.
        t.failed(ip("198.18.0.5"), now);
        assert!(t.admit(ip("::ffff:198.18.0.5"), now).is_err());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = Throttle::default();
        let now = Instant::now();
        for i in 0..(CAPACITY as u32 + 100) {
            t.failed(IpAddr::from(u32::to_be_bytes(0x0a00_0000 + i)), now);
        }
        assert_eq!(t.by_source.len(), CAPACITY);
    }

    #[test]
    fn log_lines_about_outsiders_are_rate_limited_and_the_rest_counted() {
        let mut b = LogBudget::default();
        let now = Instant::now();
        for _ in 0..LOG_BURST {
            assert_eq!(b.take(now), Log::Write { held_back: 0 });
        }
        for _ in 0..500 {
            assert_eq!(b.take(now), Log::Skip);
        }
        assert_eq!(b.take(now + LOG_WINDOW), Log::Write { held_back: 500 });
        assert_eq!(b.take(now + LOG_WINDOW), Log::Write { held_back: 0 });
    }
}
