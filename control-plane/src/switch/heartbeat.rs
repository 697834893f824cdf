//! What a heartbeat carries, and how a sealed link's data address may move.
//!
//! A heartbeat's inner part (sealed on a sealed link) is:
//!
//! ```text
//! 0..2    the largest datagram the sender received from us lately (path-MTU report)
//! 2..10   challenge: a random number the sender wants echoed from a new address (0: none)
//! 10..18  echo: the last challenge the sender received from us (0: none)
//! 18..    zero padding when the heartbeat is a path-MTU probe
//! ```
//!
//! Older peers send only the first two bytes; the rest then reads as zero.
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
pub const PAYLOAD_LEN: usize = 18;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Payload {
    pub report: u16,
    pub challenge: u64,
    pub echo: u64,
}

impl Payload {
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.report.to_be_bytes());
        out.extend_from_slice(&self.challenge.to_be_bytes());
        out.extend_from_slice(&self.echo.to_be_bytes());
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
        }
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
