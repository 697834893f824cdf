//! What a heartbeat carries, and how a sealed link's data address may move.
//!
//! A heartbeat's inner part (sealed on a sealed link) is:
//!
//! ```text
//! 0..2    the largest datagram the sender received from us lately (path-MTU report)
//! 2..10   challenge: a random number the sender wants echoed from a new address (0: none)
//! 10..18  echo: the last challenge the sender received from us (0: none)
//! 18..26  stamp: the sender's clock in µs when it sent this (never 0)
//! 26..34  stamp echo: the last stamp the sender received from us (0: none)
//! 34..38  held: µs between receiving that stamp and sending this heartbeat
//! 38..    zero padding when the heartbeat is a path-MTU probe
//! ```
//!
//! Older peers send only the first two or eighteen bytes; the rest then reads as zero. The
//! stamps give the data path's own round-trip time ([`RoundTrip`]): what `meshctl peers` shows,
//! rather than the control connection's estimate.
//!
//! A sealed heartbeat proves who sealed it, not where it came from: a neighbour holding the
//! link key could send one with a forged source address and so aim our traffic for it at a
//! third party. So the address moves only after a round trip: a heartbeat from a new address
//! makes it a candidate and our next heartbeats (also sent there) carry a challenge; only a
//! sealed heartbeat from the candidate echoing that challenge moves the address. A forged
//! source never sees the challenge; a neighbour whose NAT mapping changed answers within a
//! heartbeat or two.

use std::{net::SocketAddr, time::Instant};

/// The fixed part of a heartbeat's inner bytes.
pub const PAYLOAD_LEN: usize = 38;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Payload {
    pub report: u16,
    pub challenge: u64,
    pub echo: u64,
    pub stamp: Stamps,
}

/// The round-trip part of a heartbeat (see [`RoundTrip`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamps {
    pub sent_us: u64,
    pub echo_us: u64,
    pub held_us: u32,
}

impl Payload {
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.report.to_be_bytes());
        out.extend_from_slice(&self.challenge.to_be_bytes());
        out.extend_from_slice(&self.echo.to_be_bytes());
        out.extend_from_slice(&self.stamp.sent_us.to_be_bytes());
        out.extend_from_slice(&self.stamp.echo_us.to_be_bytes());
        out.extend_from_slice(&self.stamp.held_us.to_be_bytes());
    }

    /// Reads what is there; missing fields (an older peer, a short heartbeat) are zero.
    pub fn parse(inner: &[u8]) -> Payload {
        let mut b = [0u8; PAYLOAD_LEN];
        let n = inner.len().min(PAYLOAD_LEN);
        b[..n].copy_from_slice(&inner[..n]);
        Payload {
            report: u16::from_be_bytes([b[0], b[1]]),
            challenge: u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
            echo: u64::from_be_bytes(b[10..18].try_into().expect("8 bytes")),
            stamp: Stamps {
                sent_us: u64::from_be_bytes(b[18..26].try_into().expect("8 bytes")),
                echo_us: u64::from_be_bytes(b[26..34].try_into().expect("8 bytes")),
                held_us: u32::from_be_bytes(b[34..38].try_into().expect("4 bytes")),
            },
        }
    }
}

/// The data path's round-trip time to one neighbour, from heartbeat stamps: each heartbeat
/// carries our clock, and echoes the neighbour's last stamp with how long it was held before
/// this heartbeat went out. A sample is then `now - echoed stamp - held`, in our clock alone
/// (no clock agreement needed). Samples are smoothed as TCP does (1/8 of each new one).
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundTrip {
    /// The neighbour's last stamp and when (our clock, µs) it arrived.
    heard: Option<(u64, u64)>,
    smoothed_us: Option<u64>,
}

/// `now` as a heartbeat stamp: µs since this process first asked (never 0).
pub fn stamp_of(now: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    now.saturating_duration_since(epoch).as_micros() as u64 + 1
}

/// Samples above this are discarded (a stamp from before a restart, a stuck process).
const MAX_SAMPLE_US: u64 = 10_000_000;

impl RoundTrip {
    /// The stamps for a heartbeat sent at `now_us` (our clock, never 0).
    pub fn outgoing(&self, now_us: u64) -> Stamps {
        let (echo_us, held_us) = self.heard.map_or((0, 0), |(stamp, at)| {
            (
                stamp,
                now_us.saturating_sub(at).min(u64::from(u32::MAX)) as u32,
            )
        });
        Stamps {
            sent_us: now_us.max(1),
            echo_us,
            held_us,
        }
    }

    /// Takes in an authentic heartbeat's stamps, arrived at `now_us`.
    pub fn heard(&mut self, s: &Stamps, now_us: u64) {
        if s.sent_us != 0 {
            self.heard = Some((s.sent_us, now_us));
        }
        if s.echo_us == 0 || s.echo_us > now_us {
            return;
        }
        let sample = (now_us - s.echo_us).saturating_sub(u64::from(s.held_us));
        if sample > MAX_SAMPLE_US {
            return;
        }
        self.smoothed_us = Some(match self.smoothed_us {
            None => sample,
            Some(old) => (old * 7 + sample) / 8,
        });
    }

    /// The smoothed round-trip time in µs, once a sample came back.
    pub fn rtt_us(&self) -> Option<u64> {
        self.smoothed_us
    }
}

/// What a sealed heartbeat from `from` did to the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// It came from the current address: the path works.
    Current,
    /// It came from the candidate with our challenge: the address moved there.
    Moved,
    /// It came from elsewhere: that address is now the candidate, to be challenged.
    Challenged,
}

struct Candidate {
    addr: SocketAddr,
    challenge: u64,
}

/// A sealed link's data address and the proof a new one must give.
pub struct DataAddr {
    pub current: SocketAddr,
    candidate: Option<Candidate>,
    /// The neighbour's last challenge to us, echoed in our heartbeats.
    echo: u64,
}

impl DataAddr {
    pub fn new(addr: SocketAddr) -> DataAddr {
        DataAddr {
            current: addr,
            candidate: None,
            echo: 0,
        }
    }

    /// An address waiting for its proof: our heartbeats go there too.
    pub fn candidate(&self) -> Option<SocketAddr> {
        self.candidate.as_ref().map(|c| c.addr)
    }

    /// The challenge and echo for our next heartbeat.
    pub fn outgoing(&self, report: u16) -> Payload {
        Payload {
            report,
            challenge: self.candidate.as_ref().map_or(0, |c| c.challenge),
            echo: self.echo,
            stamp: Stamps::default(),
        }
    }

    /// Takes in an authentic heartbeat that arrived from `from`. `fresh` makes a new (non-zero)
    /// challenge.
    pub fn heard(&mut self, from: SocketAddr, p: &Payload, fresh: impl FnOnce() -> u64) -> Seen {
        if p.challenge != 0 {
            self.echo = p.challenge;
        }
        if from == self.current {
            return Seen::Current;
        }
        match &self.candidate {
            Some(c) if c.addr == from && p.echo == c.challenge => {
                self.current = from;
                self.candidate = None;
                Seen::Moved
            }
            // Still waiting for this address's answer: keep its challenge.
            Some(c) if c.addr == from => Seen::Challenged,
            _ => {
                self.candidate = Some(Candidate {
                    addr: from,
                    challenge: fresh().max(1),
                });
                Seen::Challenged
            }
        }
    }
}

/// A random non-zero challenge.
pub fn random_challenge() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most the 8 bytes of our buffer.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if got == b.len() as isize {
        u64::from_ne_bytes(b).max(1)
    } else {
        // Without the kernel's randomness, something unpredictable enough from outside.
        let t = Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64;
        t.wrapping_mul(0x9e37_79b9_7f4a_7c15).max(1)
    }
}

#[cfg(test)]
mod round_trip_tests {
    use super::*;

    #[test]
    fn the_round_trip_leaves_out_how_long_the_neighbour_held_our_stamp() {
        let (mut a, mut b) = (RoundTrip::default(), RoundTrip::default());
        // a sends at 1000 µs (a's clock); it arrives at b at 5_000_000 (b's clock) after a
        // 100 µs one-way trip; b answers 300 ms later; that arrives 100 µs later at a.
        let to_b = a.outgoing(1000);
        b.heard(&to_b, 5_000_000);
        let to_a = b.outgoing(5_300_000);
        assert_eq!((to_a.echo_us, to_a.held_us), (1000, 300_000));
        a.heard(&to_a, 1000 + 100 + 300_000 + 100);
        assert_eq!(a.rtt_us(), Some(200));
        assert_eq!(b.rtt_us(), None, "b has had no echo yet");
        // Smoothed: a 1000 µs sample moves it by an eighth of the difference.
        let to_b = a.outgoing(400_000);
        b.heard(&to_b, 5_500_000);
        a.heard(&b.outgoing(5_500_000), 401_000);
        assert_eq!(a.rtt_us(), Some((200 * 7 + 1000) / 8));
    }

    #[test]
    fn an_older_peers_heartbeat_and_wild_samples_change_nothing() {
        let mut a = RoundTrip::default();
        let old = Payload::parse(&[0x05, 0xdc]);
        assert_eq!(old.stamp, Stamps::default());
        a.heard(&old.stamp, 10);
        assert_eq!(a.rtt_us(), None);
        let from_the_future = Stamps {
            sent_us: 5,
            echo_us: 99,
            held_us: 0,
        };
        a.heard(&from_the_future, 10);
        assert_eq!(a.rtt_us(), None);
        let stale = Stamps {
            sent_us: 5,
            echo_us: 1,
            held_us: 0,
        };
        a.heard(&stale, 20_000_000);
        assert_eq!(a.rtt_us(), None);
    }

    #[test]
    fn stamps_survive_the_wire() {
        let p = Payload {
            report: 1450,
            challenge: 7,
            echo: 9,
            stamp: Stamps {
                sent_us: 123_456,
                echo_us: 654_321,
                held_us: 42,
            },
        };
        let mut out = Vec::new();
        p.write(&mut out);
        assert_eq!(out.len(), PAYLOAD_LEN);
        assert_eq!(Payload::parse(&out), p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 1], port))
    }

    #[test]
    fn the_payload_reads_back_and_an_old_short_one_reads_as_zeros() {
        let p = Payload {
            report: 1400,
            challenge: 7,
            echo: 9,
            ..Default::default()
        };
        let mut v = Vec::new();
        p.write(&mut v);
        v.extend_from_slice(&[0; 100]);
        assert_eq!(Payload::parse(&v), p);
        assert_eq!(
            Payload::parse(&1400u16.to_be_bytes()),
            Payload {
                report: 1400,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_forged_source_never_moves_the_address() {
        let mut a = DataAddr::new(at(1));
        let forged = Payload::default();
        assert_eq!(a.heard(at(66), &forged, || 42), Seen::Challenged);
        assert_eq!(a.current, at(1));
        assert_eq!(a.candidate(), Some(at(66)));
        assert_eq!(a.outgoing(0).challenge, 42);
        // Guessing wrong, or answering from another address, does not move it either.
        let guess = Payload {
            echo: 41,
            ..Default::default()
        };
        assert_eq!(a.heard(at(66), &guess, || 43), Seen::Challenged);
        let right_elsewhere = Payload {
            echo: 42,
            ..Default::default()
        };
        assert_eq!(a.heard(at(1), &right_elsewhere, || 44), Seen::Current);
        assert_eq!(a.current, at(1));
    }

    #[test]
    fn a_neighbour_that_moved_proves_it_with_one_round_trip() {
        // Ours: the neighbour's address moves from port 1 to port 2 (its NAT rebound).
        let mut ours = DataAddr::new(at(1));
        let mut theirs = DataAddr::new(at(9));
        assert_eq!(
            ours.heard(at(2), &theirs.outgoing(1400), || 5),
            Seen::Challenged
        );
        // Our next heartbeat (sent to port 2 as well) carries the challenge; theirs echoes it.
        assert_eq!(
            theirs.heard(at(9), &ours.outgoing(1400), || 6),
            Seen::Current
        );
        assert_eq!(ours.heard(at(2), &theirs.outgoing(1400), || 7), Seen::Moved);
        assert_eq!(ours.current, at(2));
        assert_eq!(ours.candidate(), None);
        assert_eq!(ours.outgoing(0).challenge, 0);
    }
}
