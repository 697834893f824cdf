//! The virtual Ethernet switch, as pure logic (no I/O): the frame header on the wire, the MAC
//! table, and the forwarding decision for a frame from the local bridge or from a peer. The TAP
//! datapath (`crate::tap`) drives it; the eBPF datapath will implement the same decisions.

pub mod echo;
pub mod fdb;
pub mod forward;
pub mod heartbeat;
pub mod mtu;
pub mod network;
pub mod offload;
pub mod pmtu;
pub mod seal;
pub mod wire;

/// A peer's 24-bit id on the data path, announced in its gossip entry (the low 24 bits of its
/// peer id unless another peer had them first). It fits the VXLAN header, which has room for
/// two of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortId(u32);

impl ShortId {
    /// Destination meaning "flood along the origin's broadcast tree".
    pub const FLOOD: ShortId = ShortId(mesh_common::wire::FLOOD_ID);

    pub fn from_wire(v: u32) -> ShortId {
        ShortId(v & mesh_common::wire::SHORT_ID_MASK)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// One control connection's data link, for as long as the connection lives: the key every
/// per-link state (keys, nonce counters, replay windows, probes, counters) hangs on. Unlike a
/// short id it never moves and is never shared, so that state is never dropped and re-created
/// while the link lives (a re-created sealer would reuse nonces).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// An Ethernet MAC address.
pub type Mac = [u8; 6];

pub fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 == 1
}
