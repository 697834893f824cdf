//! Counter slots of the kernel programs' per-CPU arrays, with the names meshctl shows.

/// What the underlay receive program saw, one slot per class in the `UNDERLAY_COUNTERS` per-CPU
/// array. Every frame increments `Total` and exactly one other slot.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnderlayCounter {
    /// Every frame the program ran on.
    Total = 0,
    /// Shorter than the headers it claims to carry (Ethernet, IPv4 or UDP cut off).
    Truncated = 1,
    /// Ethernet type other than IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp = 2,
    /// IPv6 frames (not parsed yet: the underlay is IPv4 for now).
    Ipv6 = 3,
    /// IPv4 with a header that cannot be right (IHL < 5).
    MalformedIpv4 = 4,
    /// IPv4 that is not UDP, or a non-first fragment (no UDP header to read).
    Ipv4NotUdp = 5,
    /// UDP to some other port.
    UdpOtherPort = 6,
    /// UDP to the mesh data port.
    DataPort = 7,
}

impl UnderlayCounter {
    /// All counters, in slot order.
    pub const ALL: [UnderlayCounter; UNDERLAY_COUNTER_SLOTS as usize] = [
        UnderlayCounter::Total,
        UnderlayCounter::Truncated,
        UnderlayCounter::NotIp,
        UnderlayCounter::Ipv6,
        UnderlayCounter::MalformedIpv4,
        UnderlayCounter::Ipv4NotUdp,
        UnderlayCounter::UdpOtherPort,
        UnderlayCounter::DataPort,
    ];

    /// Stable snake_case name, used in `meshctl status` and JSON output.
    pub const fn name(self) -> &'static str {
        match self {
            UnderlayCounter::Total => "total",
            UnderlayCounter::Truncated => "truncated",
            UnderlayCounter::NotIp => "not_ip",
            UnderlayCounter::Ipv6 => "ipv6",
            UnderlayCounter::MalformedIpv4 => "malformed_ipv4",
            UnderlayCounter::Ipv4NotUdp => "ipv4_not_udp",
            UnderlayCounter::UdpOtherPort => "udp_other_port",
            UnderlayCounter::DataPort => "data_port",
        }
    }
}

/// Number of slots in the `UNDERLAY_COUNTERS` map.
pub const UNDERLAY_COUNTER_SLOTS: u32 = 8;

/// Why a frame was dropped: one list for both datapaths. meshd counts each reason as
/// `tap_dropped_<name>`, the kernel the ones it meets as `kernel_dropped_<name>`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Truncated, or not a whole mesh frame.
    Malformed = 0,
    /// Flag bits no mesh sets, or no mesh flag (another network's VXLAN).
    BadFlags = 1,
    /// From an address or sender id that is no neighbour.
    UnknownSender = 2,
    /// Plain although the mesh encrypts.
    Unsealed = 3,
    /// Failed authentication (another key, forged, tampered).
    Auth = 4,
    /// Seen before, or older than the replay window.
    Replay = 5,
    /// Our own frame came back, or the hop limit ran out.
    Loop = 6,
    /// For a peer there is no route to.
    NoRoute = 7,
    /// Too big for the link and neither answerable with ICMP nor splittable.
    TooBig = 8,
    /// On no network of this host's: tagged by a container itself (which would let it speak on
    /// another network), or for a network nothing here is attached to.
    Network = 9,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::Malformed,
        DropReason::BadFlags,
        DropReason::UnknownSender,
        DropReason::Unsealed,
        DropReason::Auth,
        DropReason::Replay,
        DropReason::Loop,
        DropReason::NoRoute,
        DropReason::TooBig,
        DropReason::Network,
    ];

    /// Stable snake_case name (the suffix of the counters).
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::BadFlags => "bad_flags",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::Unsealed => "unsealed",
            DropReason::Auth => "auth",
            DropReason::Replay => "replay",
            DropReason::Loop => "loop",
            DropReason::NoRoute => "no_route",
            DropReason::TooBig => "too_big",
            DropReason::Network => "network",
        }
    }
}

/// What the forwarding programs (`bridge_egress`, `underlay_ingress`) did with a frame: one
/// slot each in the `KERNEL_COUNTERS` per-CPU array. A frame counts in exactly one slot (the
/// GSO, direct-delivery, from-port and skipped-copy counters only accompany another). Frames
/// "to meshd" continue on the userspace path (meshd's TAP device and data socket), which does
/// everything the kernel leaves to it: sealed links, floods, misses, oversize answers.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCounter {
    /// Frames (or GSO super-frames) from the bridge encapsulated and sent by the kernel.
    TxSent = 0,
    /// Of those, GSO super-frames (the underlay cuts each into several datagrams).
    TxGso = 1,
    /// To meshd: broadcast, multicast or unknown destination that meshd floods (our tree has a
    /// child the kernel cannot send to).
    TxFlood = 2,
    /// To meshd: the destination is no direct kernel-datapath neighbour over a plaintext link
    /// (sealed, TAP-mode, or reached through a relay).
    TxUserspaceLink = 3,
    /// To meshd: bigger than the link's MTU (meshd answers with ICMP).
    TxTooBig = 4,
    /// To meshd: no route to the underlay next hop yet (meshd's send resolves it).
    TxNoNeighbour = 5,
    /// To meshd: not an Ethernet frame the kernel handles (too short).
    TxOther = 6,
    /// Datagrams decapsulated and delivered to the local bridge.
    RxDelivered = 7,
    /// Datagrams relayed to another peer without touching the local bridge.
    RxRelayed = 8,
    /// To meshd: heartbeats, sealed frames, floods the kernel leaves to meshd, relays over
    /// sealed links.
    RxToMeshd = 9,
    /// Dropped: truncated or malformed mesh frame.
    RxDropMalformed = 10,
    /// Dropped: flag bits no mesh sets, or not a mesh frame.
    RxDropBadFlags = 11,
    /// Dropped: plaintext from an address that is no neighbour.
    RxDropUnknownSender = 12,
    /// Dropped: hop limit exhausted, or our own frame came back.
    RxDropLoop = 13,
    /// Dropped: addressed to a peer we have no route to.
    RxDropNoRoute = 14,
    /// Of the delivered, those handed straight to the container's veth (`bpf_redirect_peer`),
    /// past the bridge.
    RxDeliveredDirect = 15,
    /// Frames from the bridge (broadcast, multicast, unknown destination) flooded along our
    /// broadcast tree by the kernel, one copy per child.
    TxFlooded = 16,
    /// Floods from a neighbour delivered to the local bridge and copied to our children in the
    /// origin's tree by the kernel.
    RxFlooded = 17,
    /// Copies of a flood not sent because the child is no longer a resolved kernel neighbour
    /// (the maps were changing under the frame); one per child left out, alongside the frame's
    /// own counter.
    FloodSkipped = 18,
    /// Of `TxSent`, frames taken at a container's bridge port (`port_ingress`), before the
    /// bridge.
    TxFromPort = 19,
    /// Dropped: a frame from the bridge carrying a VLAN tag of its own (a container may not
    /// choose its network; see `DropReason::Network`).
    DropNetwork = 20,
}

impl KernelCounter {
    /// The counter of a drop the kernel makes for `why` (the kernel meets only some reasons).
    pub const fn dropped(why: DropReason) -> Option<KernelCounter> {
        match why {
            DropReason::Malformed => Some(KernelCounter::RxDropMalformed),
            DropReason::BadFlags => Some(KernelCounter::RxDropBadFlags),
            DropReason::UnknownSender => Some(KernelCounter::RxDropUnknownSender),
            DropReason::Loop => Some(KernelCounter::RxDropLoop),
            DropReason::NoRoute => Some(KernelCounter::RxDropNoRoute),
            DropReason::Network => Some(KernelCounter::DropNetwork),
            _ => None,
        }
    }

    pub const ALL: [KernelCounter; KERNEL_COUNTER_SLOTS as usize] = [
        KernelCounter::TxSent,
        KernelCounter::TxGso,
        KernelCounter::TxFlood,
        KernelCounter::TxUserspaceLink,
        KernelCounter::TxTooBig,
        KernelCounter::TxNoNeighbour,
        KernelCounter::TxOther,
        KernelCounter::RxDelivered,
        KernelCounter::RxRelayed,
        KernelCounter::RxToMeshd,
        KernelCounter::RxDropMalformed,
        KernelCounter::RxDropBadFlags,
        KernelCounter::RxDropUnknownSender,
        KernelCounter::RxDropLoop,
        KernelCounter::RxDropNoRoute,
        KernelCounter::RxDeliveredDirect,
        KernelCounter::TxFlooded,
        KernelCounter::RxFlooded,
        KernelCounter::FloodSkipped,
        KernelCounter::TxFromPort,
        KernelCounter::DropNetwork,
    ];

    /// Stable snake_case name, used in `meshctl status` and JSON output.
    pub const fn name(self) -> &'static str {
        match self {
            KernelCounter::TxSent => "kernel_tx_sent",
            KernelCounter::TxGso => "kernel_tx_gso",
            KernelCounter::TxFlood => "kernel_tx_flood_to_meshd",
            KernelCounter::TxUserspaceLink => "kernel_tx_userspace_link",
            KernelCounter::TxTooBig => "kernel_tx_too_big_to_meshd",
            KernelCounter::TxNoNeighbour => "kernel_tx_no_neighbour",
            KernelCounter::TxOther => "kernel_tx_other_to_meshd",
            KernelCounter::RxDelivered => "kernel_rx_delivered",
            KernelCounter::RxRelayed => "kernel_rx_relayed",
            KernelCounter::RxToMeshd => "kernel_rx_to_meshd",
            KernelCounter::RxDropMalformed => "kernel_dropped_malformed",
            KernelCounter::RxDropBadFlags => "kernel_dropped_bad_flags",
            KernelCounter::RxDropUnknownSender => "kernel_dropped_unknown_sender",
            KernelCounter::RxDropLoop => "kernel_dropped_loop",
            KernelCounter::RxDropNoRoute => "kernel_dropped_no_route",
            KernelCounter::RxDeliveredDirect => "kernel_rx_delivered_direct",
            KernelCounter::TxFlooded => "kernel_tx_flooded",
            KernelCounter::RxFlooded => "kernel_rx_flooded",
            KernelCounter::FloodSkipped => "kernel_flood_copies_skipped",
            KernelCounter::TxFromPort => "kernel_tx_from_port",
            KernelCounter::DropNetwork => "kernel_dropped_network",
        }
    }
}

/// Number of slots in the `KERNEL_COUNTERS` map.
pub const KERNEL_COUNTER_SLOTS: u32 = 21;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drop_counters_are_named_after_their_reason() {
        for why in DropReason::ALL {
            if let Some(c) = KernelCounter::dropped(why) {
                let name = c.name();
                assert_eq!(
                    name.strip_prefix("kernel_dropped_"),
                    Some(why.name()),
                    "{name}"
                );
            }
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} is not in slot order");
        }
    }

    #[test]
    fn counter_slots_are_dense_and_named_uniquely() {
        for (i, c) in UnderlayCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "counter {c:?} is not in slot order");
        }
        for (i, c) in KernelCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "counter {c:?} is not in slot order");
        }
        let names = UnderlayCounter::ALL
            .iter()
            .map(|c| c.name())
            .chain(KernelCounter::ALL.iter().map(|c| c.name()));
        for (i, a) in names.clone().enumerate() {
            for (j, b) in names.clone().enumerate() {
                assert!(i == j || a != b, "{a} is used twice");
            }
        }
    }
}
