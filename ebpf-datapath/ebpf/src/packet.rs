//! Bounds-checked access to packet bytes, and the header layouts the programs read. Every
//! direct header read goes through [`ptr_at`], so the verifier always sees a
//! `data + off + len <= data_end` check; TC programs read through `bpf_skb_load_bytes`
//! (`TcContext::load`), which also reaches bytes outside the linear part.

use aya_ebpf::programs::XdpContext;
pub use mesh_common::wire::ETH_LEN as ETH_HDR_LEN;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub use mesh_common::wire::OUTER_IPV4_LEN as IPV4_MIN_HDR_LEN;
pub const IPV6_HDR_LEN: usize = 40;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Whether an Ethernet header carries a VLAN tag in its bytes (a named network's frame on the
/// wire; from a bridge, a container's own tag).
#[inline(always)]
pub fn vlan_tagged(eth: &[u8; ETH_HDR_LEN]) -> bool {
    matches!(
        u16::from_be_bytes([eth[12], eth[13]]),
        ETH_P_8021Q | ETH_P_8021AD
    )
}

/// Ethernet header, as on the wire.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type_be: [u8; 2],
}

/// The fixed part of an IPv4 header, as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len_be: [u8; 2],
    pub id_be: [u8; 2],
    pub flags_frag_off_be: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub check_be: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// UDP header, as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub src_port_be: [u8; 2],
    pub dst_port_be: [u8; 2],
    pub len_be: [u8; 2],
    pub check_be: [u8; 2],
}

/// A pointer to a `T` at byte offset `off`, or `None` when the packet is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// The IPv4 header checksum of `h` (its own checksum field is taken as zero).
#[inline(always)]
pub fn ipv4_checksum(h: &[u8; IPV4_MIN_HDR_LEN]) -> [u8; 2] {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < IPV4_MIN_HDR_LEN {
        if i != 10 {
            sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        }
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
