//! Bounds-checked access to packet bytes. Every header read in this crate goes through
//! [`ptr_at`], so the verifier always sees a `data + off + len <= data_end` check.

use aya_ebpf::programs::XdpContext;

pub const ETH_HDR_LEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPV4_MIN_HDR_LEN: usize = 20;
pub const IPPROTO_UDP: u8 = 17;

/// Ethernet header, as on the wire.
#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type_be: [u8; 2],
}

/// The fixed part of an IPv4 header, as on the wire.
#[repr(C)]
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
