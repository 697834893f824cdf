//! The data frame header: the one definition both datapaths compile (docs/wire-format.md).
//!
//! RFC 7348 VXLAN framing with mesh's fields in the bits VXLAN reserves, so
//! `tcpdump -T vxlan udp port 6784` decodes the inner Ethernet frame.
//!
//! ```text
//!  0               1               2               3
//! +---------------+-----------------------------------------------+
//! | flags  I=0x08 | destination short id (24 bits)                |
//! | M=0x01 H=0x02 | 0xffffff = flood along the origin's tree      |
//! | S=0x04        |                                               |
//! +---------------+-----------------------------------------------+
//! | VNI = origin short id (24 bits)               | hop limit     |
//! +-----------------------------------------------+---------------+
//! | inner Ethernet frame (none in a heartbeat)                    |
//! ```

/// Bytes of the mesh header (the VXLAN header's size).
pub const HEADER_LEN: usize = 8;
/// VXLAN's "VNI valid" flag.
pub const FLAG_I: u8 = 0x08;
/// The mesh fields are valid (set by every mesh sender).
pub const FLAG_MESH: u8 = 0x01;
/// A data-path heartbeat: no inner frame, never relayed.
pub const FLAG_HEARTBEAT: u8 = 0x02;
/// The rest of the datagram is sealed (see docs/wire-format.md, "Sealed frames").
pub const FLAG_SEALED: u8 = 0x04;
/// Every flag a mesh sender may set; a frame with any other bit is refused.
pub const KNOWN_FLAGS: u8 = FLAG_I | FLAG_MESH | FLAG_HEARTBEAT | FLAG_SEALED;
/// Hop limit a frame starts with; a relay decrements it and drops at zero (no loop can live).
pub const INITIAL_HOPS: u8 = 32;
/// Destination short id meaning "flood along the origin's broadcast tree"; never a peer's id.
pub const FLOOD_ID: u32 = 0x00ff_ffff;
/// Short ids are 24 bits.
pub const SHORT_ID_MASK: u32 = 0x00ff_ffff;

/// Outer IPv4 header without options, as mesh sends it.
pub const OUTER_IPV4_LEN: usize = 20;
/// Outer UDP header.
pub const OUTER_UDP_LEN: usize = 8;
/// Ethernet header without VLAN tag.
pub const ETH_LEN: usize = 14;
/// What encapsulation adds in front of an inner Ethernet frame on an IPv4 underlay, counted
/// from the inner frame's first byte: outer IPv4 + UDP + mesh header (+ the outer Ethernet
/// header, which the underlay MTU does not count).
pub const ENCAP_IPV4_LEN: usize = OUTER_IPV4_LEN + OUTER_UDP_LEN + HEADER_LEN;
/// Bytes a frame gains on the underlay relative to the overlay MTU: outer IPv4 + UDP + this
/// header, plus the inner Ethernet header that the overlay MTU does not count.
pub const OVERHEAD_IPV4: usize = ENCAP_IPV4_LEN + ETH_LEN;

/// The header as bytes on the wire. `#[repr(C)]` of bytes only: no padding, no alignment, the
/// same in the eBPF object and in meshd.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireHeader {
    pub flags: u8,
    pub destination_be: [u8; 3],
    pub origin_be: [u8; 3],
    pub hops: u8,
}

impl WireHeader {
    /// A data frame (or heartbeat) header with mesh's flags set.
    #[inline(always)]
    pub const fn new(origin: u32, destination: u32, hops: u8, heartbeat: bool) -> WireHeader {
        WireHeader {
            flags: FLAG_I | FLAG_MESH | if heartbeat { FLAG_HEARTBEAT } else { 0 },
            destination_be: id_bytes(destination),
            origin_be: id_bytes(origin),
            hops,
        }
    }

    #[inline(always)]
    pub const fn origin(&self) -> u32 {
        id_from(self.origin_be)
    }

    #[inline(always)]
    pub const fn destination(&self) -> u32 {
        id_from(self.destination_be)
    }

    /// Both I and M are set: a frame some mesh sent.
    #[inline(always)]
    pub const fn is_mesh(&self) -> bool {
        self.flags & (FLAG_I | FLAG_MESH) == FLAG_I | FLAG_MESH
    }

    /// Some bit no mesh sender sets.
    #[inline(always)]
    pub const fn has_unknown_flags(&self) -> bool {
        self.flags & !KNOWN_FLAGS != 0
    }

    #[inline(always)]
    pub const fn is_heartbeat(&self) -> bool {
        self.flags & FLAG_HEARTBEAT != 0
    }

    #[inline(always)]
    pub const fn is_sealed(&self) -> bool {
        self.flags & FLAG_SEALED != 0
    }

    #[inline(always)]
    pub const fn to_bytes(self) -> [u8; HEADER_LEN] {
        let d = self.destination_be;
        let o = self.origin_be;
        [self.flags, d[0], d[1], d[2], o[0], o[1], o[2], self.hops]
    }

    #[inline(always)]
    pub const fn from_bytes(b: &[u8; HEADER_LEN]) -> WireHeader {
        WireHeader {
            flags: b[0],
            destination_be: [b[1], b[2], b[3]],
            origin_be: [b[4], b[5], b[6]],
            hops: b[7],
        }
    }
}

#[inline(always)]
const fn id_bytes(id: u32) -> [u8; 3] {
    [(id >> 16) as u8, (id >> 8) as u8, id as u8]
}

#[inline(always)]
const fn id_from(b: [u8; 3]) -> u32 {
    ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn header_is_eight_bytes_with_vxlan_framing() {
        assert_eq!(size_of::<WireHeader>(), HEADER_LEN);
        let h = WireHeader::new(0x123456, FLOOD_ID, 31, false);
        let b = h.to_bytes();
        // A VXLAN decoder sees the I flag and VNI = origin.
        assert_eq!(b[0] & FLAG_I, FLAG_I);
        assert_eq!(&b[4..7], &[0x12, 0x34, 0x56]);
        assert_eq!(b[7], 31);
        assert_eq!(WireHeader::from_bytes(&b), h);
        assert_eq!(h.origin(), 0x123456);
        assert_eq!(h.destination(), FLOOD_ID);
        assert!(h.is_mesh() && !h.is_heartbeat() && !h.is_sealed() && !h.has_unknown_flags());
    }

    #[test]
    fn every_id_round_trips_through_24_bits() {
        for id in [0, 1, 0xff, 0x100, 0xffff, 0x10000, 0xabcdef, FLOOD_ID] {
            let h = WireHeader::new(id, id ^ SHORT_ID_MASK, 1, true);
            assert_eq!(h.origin(), id);
            assert_eq!(h.destination(), id ^ SHORT_ID_MASK);
            assert!(h.is_heartbeat());
        }
    }

    #[test]
    fn unknown_flags_are_told_apart() {
        for bit in 0..8u8 {
            let mut h = WireHeader::new(1, 2, 3, false);
            h.flags |= 1 << bit;
            assert_eq!(h.has_unknown_flags(), (1 << bit) & !KNOWN_FLAGS != 0);
        }
    }
}
