//! The outer headers of a frame on the underlay: the bytes of Ethernet + IPv4 + UDP that carry
//! the mesh header. Shared by the egress (encapsulate) and relay paths. The MACs come from the
//! maps: meshd resolves each neighbour's underlay next hop (through any router) from the
//! kernel's routing table and ARP cache, so the programs need no FIB lookup (which the kernel
//! refuses on a host that does not forward IP).

use mesh_common::{
    DatapathConfig,
    maps::NeighbourEntry,
    wire::{ETH_LEN, HEADER_LEN, OUTER_IPV4_LEN, OUTER_UDP_LEN, WireHeader},
};

use crate::packet::{ETH_P_IPV4, IPPROTO_UDP, ipv4_checksum};

/// Bytes of outer Ethernet + IPv4 + UDP.
pub const OUTER_LEN: usize = ETH_LEN + OUTER_IPV4_LEN + OUTER_UDP_LEN;

/// The two ends of the underlay hop.
pub struct Hop {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// The outer Ethernet, IPv4 (DF, no options, checksum filled in) and UDP (checksum 0: BPF
/// cannot ask for one per GSO segment; the kernel fixes lengths per segment) headers for a
/// datagram whose UDP payload is `payload_len` bytes.
#[inline(always)]
pub fn headers(
    hop: &Hop,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport_be: [u8; 2],
    payload_len: u32,
) -> [u8; OUTER_LEN] {
    let udp_len = payload_len + OUTER_UDP_LEN as u32;
    // A GSO super-frame can exceed 64 KiB; each segment gets its own, right length.
    let ip_len = (udp_len + OUTER_IPV4_LEN as u32).min(0xffff) as u16;
    let udp_len = udp_len.min(0xffff) as u16;
    let mut ip = [0u8; OUTER_IPV4_LEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF: path-MTU probing depends on it, as on meshd's own socket
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let csum = ipv4_checksum(&ip);
    ip[10] = csum[0];
    ip[11] = csum[1];

    let mut out = [0u8; OUTER_LEN];
    out[0..6].copy_from_slice(&hop.dmac);
    out[6..12].copy_from_slice(&hop.smac);
    out[12..14].copy_from_slice(&ETH_P_IPV4.to_be_bytes());
    out[ETH_LEN..ETH_LEN + OUTER_IPV4_LEN].copy_from_slice(&ip);
    let u = ETH_LEN + OUTER_IPV4_LEN;
    out[u..u + 2].copy_from_slice(&sport.to_be_bytes());
    out[u + 2..u + 4].copy_from_slice(&dport_be);
    out[u + 4..u + 6].copy_from_slice(&udp_len.to_be_bytes());
    out
}

/// Everything in front of the inner frame of a datagram from this host (`cfg`) to neighbour
/// `n`: outer Ethernet, IPv4 and UDP, then `header`. `payload` is the UDP payload's length
/// (mesh header and inner frame).
#[inline(always)]
pub fn to_neighbour(
    cfg: &DatapathConfig,
    n: &NeighbourEntry,
    header: WireHeader,
    payload: u32,
) -> [u8; OUTER_LEN + HEADER_LEN] {
    let hop = Hop {
        smac: cfg.underlay_mac,
        dmac: n.next_hop_mac,
    };
    let mut head = [0u8; OUTER_LEN + HEADER_LEN];
    head[..OUTER_LEN].copy_from_slice(&headers(
        &hop,
        cfg.underlay_ipv4_be,
        n.ipv4_be,
        cfg.data_port_host,
        n.port_be,
        payload,
    ));
    head[OUTER_LEN..].copy_from_slice(&header.to_bytes());
    head
}
