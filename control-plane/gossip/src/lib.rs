//! The control-plane core of mesh, without I/O and without a clock (the quinn-proto / boringtun
//! pattern): meshd feeds it events (a control connection came up or went down, a gossip message
//! arrived, time passed) and sends what it puts in its outbox. The same code runs in the
//! in-process simulation of thousands of peers ([`sim`]).
//!
//! - [`Gossip`]: the topology (each peer's own entry: its links and addresses, versioned by the
//!   peer itself), flooded on change and repaired by periodic anti-entropy digests; peers that
//!   stay unreachable age out.
//! - [`routes`]: unicast next hops (shortest paths over symmetric links) and one broadcast tree
//!   per source, computed deterministically so that every peer derives the same trees.

mod gossip;
pub mod limits;
pub mod routes;
pub mod sign;
pub mod sim;

use std::fmt;

pub use gossip::{Config, Gossip};
pub use limits::{Limits, Refusal};
pub use sign::EntryAuth;

pub use mesh_proto::v1::{GossipMessage, PeerEntry};
pub use routes::Routes;

/// A peer's stable identity: the first 8 bytes of the SHA-256 of its public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The flood destination on the data path; never a peer's short id.
pub const SHORT_ID_FLOOD: u32 = 0x00ff_ffff;

/// How many short id candidates a peer may try: enough that one is free in any mesh of the
/// allowed size, few enough that nobody can claim an arbitrary id (see `limits`).
pub const SHORT_ID_ATTEMPTS: u32 = 64;

/// The `attempt`-th short id candidate of `peer`: its low 24 bits first, then scrambled
/// variants, skipping 0 and the flood id.
pub fn short_id_candidate(peer: PeerId, attempt: u32) -> u32 {
    let mut x = peer.0;
    if attempt > 0 {
        // splitmix64: a cheap, well-spread mix of the id and the attempt.
        x = x.wrapping_add(u64::from(attempt).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    match (x & 0x00ff_ffff) as u32 {
        0 => 1,
        SHORT_ID_FLOOD => SHORT_ID_FLOOD - 1,
        v => v,
    }
}

impl std::str::FromStr for PeerId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(PeerId)
    }
}
