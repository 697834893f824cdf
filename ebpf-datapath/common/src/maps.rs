//! Value and key types of the kernel datapath's BPF maps, filled by meshd and read by the
//! programs. All `#[repr(C)]`, explicit fields, no padding (pinned by the tests below); byte
//! order is in the field names (`_be` = network order, otherwise host order).

/// The single entry of the `DATAPATH_CONFIG` array map. A zeroed entry matches nothing, and
/// the forwarding programs pass every frame on until meshd sets [`CONFIG_FORWARD`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// UDP port of the mesh data plane, in host byte order.
    pub data_port_host: u16,
    /// Reserved, must be zero (keeps the struct free of implicit padding).
    pub reserved: u16,
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// This node's short id (valid with [`CONFIG_FORWARD`]).
    pub me: u32,
    /// The underlay interface (where encapsulated frames leave and arrive).
    pub underlay_ifindex: u32,
    /// meshd's port on the local bridge (its TAP device): decapsulated frames enter the bridge
    /// through it.
    pub bridge_port_ifindex: u32,
    /// The underlay address frames are sent from.
    pub underlay_ipv4_be: [u8; 4],
    /// Largest inner IP packet the overlay carries (the overlay MTU).
    pub overlay_mtu: u32,
    /// The underlay interface's MAC (outer source MAC).
    pub underlay_mac: [u8; 6],
    /// Reserved, must be zero.
    pub reserved2: [u8; 2],
}

/// The kernel forwards: `me` and the interfaces are valid.
pub const CONFIG_FORWARD: u32 = 1;

/// A direct neighbour, key: its short id (`NEIGHBOURS` hash map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighbourEntry {
    /// Where its data frames go (through NAT: the translated address its heartbeats come from).
    pub ipv4_be: [u8; 4],
    pub port_be: [u8; 2],
    /// `NEIGHBOUR_*` bits.
    pub flags: u16,
    /// Key of its counters in `LINK_STATS`: stable for the life of the control connection.
    pub link_id: u32,
    /// The overlay MTU on this link (its probed path MTU less mesh's overhead).
    pub mtu: u32,
    /// The MAC of the underlay next hop towards it (the neighbour itself, or a router), from
    /// the kernel's routing table and ARP cache (valid with [`NEIGHBOUR_RESOLVED`]).
    pub next_hop_mac: [u8; 6],
    pub reserved: [u8; 2],
}

/// `next_hop_mac` is known. Without it the kernel hands frames for this neighbour to meshd,
/// whose own send makes the kernel resolve it.
pub const NEIGHBOUR_RESOLVED: u16 = 2;

/// Frames to this neighbour may leave through the kernel: the link is plaintext (an
/// `--insecure` mesh or a trusted subnet) and the neighbour runs the kernel datapath too.
/// Without it frames for it go to meshd, which seals them or sends them as complete datagrams.
/// (Frames the kernel sends may carry offloaded checksums that only a receiving kernel
/// datapath keeps valid, and GSO super-frames that only it takes whole: a meshd reading them
/// from its socket would get unfinished checksums and giant datagrams.)
pub const NEIGHBOUR_KERNEL: u16 = 1;

/// Who a plaintext datagram came from, key: the sender's IPv4 address (`SENDERS` hash map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderEntry {
    pub short_id: u32,
    pub link_id: u32,
}

/// Key of the `FDB` LRU map: a MAC address padded to 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacKey {
    pub mac: [u8; 6],
    pub reserved: [u8; 2],
}

impl MacKey {
    #[inline(always)]
    pub const fn new(mac: [u8; 6]) -> MacKey {
        MacKey {
            mac,
            reserved: [0; 2],
        }
    }
}

/// Where a MAC lives, learnt by the ingress program from frames the kernel delivers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdbEntry {
    /// The origin peer's short id.
    pub peer: u32,
    pub reserved: u32,
    /// `bpf_ktime_get_ns` when last confirmed (refreshed at most once a second).
    pub seen_ns: u64,
}

/// An FDB entry older than this is not used (the MAC may have moved or gone).
pub const FDB_MAX_AGE_NS: u64 = 300 * 1_000_000_000;
/// A live entry is rewritten at most this often (saves a map write per frame).
pub const FDB_REFRESH_NS: u64 = 1_000_000_000;
/// Capacity of the kernel FDB: a flood of made-up MACs evicts the least recently used.
pub const FDB_CAPACITY: u32 = 16384;
/// Capacity of the neighbour, sender and route maps (the mesh's size bound).
pub const MAX_PEERS: u32 = 4096;

/// Which local bridge port a MAC sits behind (`LOCAL_PORTS` LRU, key: MAC), learnt by the egress
/// program from the port a frame entered the bridge on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalPort {
    pub ifindex: u32,
    /// `LOCAL_PORT_*` bits, as of when the entry was last (re)learnt.
    pub flags: u32,
    /// `bpf_ktime_get_ns` when last confirmed (refreshed at most once a second).
    pub seen_ns: u64,
}

/// The port is a veth whose peer sits in a container's namespace (it was in `PEER_PORTS`
/// when the MAC was last learnt behind it): a frame for the MAC can be handed straight to the
/// container. Looked up once a second at learning instead of once per delivered frame; a port
/// meshd confirms later gets the bit at the next refresh, up to a second on.
pub const LOCAL_PORT_PEER: u32 = 1;

/// Capacity of `LOCAL_PORTS` (containers on this host).
pub const LOCAL_PORTS_CAPACITY: u32 = 4096;
/// A local port entry older than this is not used: the container may have gone.
pub const LOCAL_PORT_MAX_AGE_NS: u64 = 60 * 1_000_000_000;

/// Most children one node has in a broadcast tree that the kernel still floods to itself; an
/// origin with more is flooded by meshd (the programs copy a frame once per child, in a
/// bounded loop).
pub const MAX_FLOOD_CHILDREN: usize = 16;

/// This node's place in one origin's broadcast tree (`FLOODS` hash map, key: the origin's short
/// id; our own tree under our own id). meshd writes an entry for every origin it has a tree for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodEntry {
    /// Our parent in the tree: the neighbour the origin's frames come from. Besides the origin
    /// itself, only it may teach the kernel where the origin's MACs live (a member relaying a
    /// frame with another's origin cannot). Zero in our own tree.
    pub parent: u32,
    /// `FLOOD_*` bits.
    pub flags: u16,
    /// How many of `children` are valid.
    pub count: u16,
    /// The smallest overlay MTU of the children's links: a bigger flood goes to meshd, which
    /// answers or drops it as the TAP path does.
    pub mtu: u32,
    /// Our children in the tree: where the origin's floods go next.
    pub children: [u32; MAX_FLOOD_CHILDREN],
}

/// The kernel floods this origin's frames itself: delivered to the local bridge and copied to
/// every child. Set only when every child is a resolved kernel neighbour over IPv4 (and there
/// are at most [`MAX_FLOOD_CHILDREN`]); otherwise floods go to meshd, which does all of it. A
/// flood is never split between the two, so no child gets it twice.
pub const FLOOD_IN_KERNEL: u16 = 1;

/// Per-link traffic through the kernel (`LINK_STATS` per-CPU hash, key: link id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY (all): plain-old-data, repr(C), no padding (see the layout tests), every bit
    // pattern valid.
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::NeighbourEntry {}
    unsafe impl aya::Pod for super::SenderEntry {}
    unsafe impl aya::Pod for super::MacKey {}
    unsafe impl aya::Pod for super::FdbEntry {}
    unsafe impl aya::Pod for super::LinkStats {}
    unsafe impl aya::Pod for super::LocalPort {}
    unsafe impl aya::Pod for super::FloodEntry {}
}

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<DatapathConfig>(), 36);
        assert_eq!(offset_of!(DatapathConfig, underlay_mac), 28);
        assert_eq!(offset_of!(DatapathConfig, data_port_host), 0);
        assert_eq!(offset_of!(DatapathConfig, flags), 4);
        assert_eq!(offset_of!(DatapathConfig, me), 8);
        assert_eq!(offset_of!(DatapathConfig, underlay_ifindex), 12);
        assert_eq!(offset_of!(DatapathConfig, bridge_port_ifindex), 16);
        assert_eq!(offset_of!(DatapathConfig, underlay_ipv4_be), 20);
        assert_eq!(offset_of!(DatapathConfig, overlay_mtu), 24);
        assert_eq!(size_of::<NeighbourEntry>(), 24);
        assert_eq!(offset_of!(NeighbourEntry, next_hop_mac), 16);
        assert_eq!(offset_of!(NeighbourEntry, port_be), 4);
        assert_eq!(offset_of!(NeighbourEntry, flags), 6);
        assert_eq!(offset_of!(NeighbourEntry, link_id), 8);
        assert_eq!(offset_of!(NeighbourEntry, mtu), 12);
        assert_eq!(size_of::<SenderEntry>(), 8);
        assert_eq!(size_of::<MacKey>(), 8);
        assert_eq!(size_of::<FdbEntry>(), 16);
        assert_eq!(offset_of!(FdbEntry, seen_ns), 8);
        assert_eq!(size_of::<LinkStats>(), 32);
        assert_eq!(size_of::<LocalPort>(), 16);
        assert_eq!(offset_of!(LocalPort, seen_ns), 8);
        assert_eq!(size_of::<FloodEntry>(), 12 + 4 * MAX_FLOOD_CHILDREN);
        assert_eq!(offset_of!(FloodEntry, flags), 4);
        assert_eq!(offset_of!(FloodEntry, count), 6);
        assert_eq!(offset_of!(FloodEntry, mtu), 8);
        assert_eq!(offset_of!(FloodEntry, children), 12);
    }
}
