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
pub mod routes;
pub mod sim;

use std::fmt;

pub use gossip::{Config, Gossip};
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

impl std::str::FromStr for PeerId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(PeerId)
    }
}
