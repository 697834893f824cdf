//! XDP on the underlay NIC: classify what arrives and count it.
//!
//! For now this program only observes (every frame is passed to the stack); it is the first
//! stage of the receive path, where decapsulation and relaying will live. Classification is kept
//! in one `try_` function whose error type names the counter, so the mapping from "what went
//! wrong" to "which counter" is in one place.

use aya_ebpf::{
    bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext,
};
use mesh_common::{UNDERLAY_COUNTER_SLOTS, UnderlayCounter};

use crate::maps::DATAPATH_CONFIG;
use crate::packet::{
    ETH_HDR_LEN, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_UDP, IPV4_MIN_HDR_LEN, Ipv4Hdr, UdpHdr,
    ptr_at,
};

#[map]
static UNDERLAY_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(UNDERLAY_COUNTER_SLOTS, 0);

#[xdp]
pub fn underlay_rx(ctx: XdpContext) -> u32 {
    count(UnderlayCounter::Total);
    let class = match classify(&ctx) {
        Ok(c) | Err(c) => c,
    };
    count(class);
    xdp_action::XDP_PASS
}

/// Which counter a frame belongs to. `Err` carries the counter for frames that stop parsing
/// early (truncated, not IP, ...), so `?` can be used on every header read.
#[inline(always)]
fn classify(ctx: &XdpContext) -> Result<UnderlayCounter, UnderlayCounter> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(UnderlayCounter::Truncated)?;
    // SAFETY: ptr_at checked that the whole header is inside the packet.
    let ether_type = u16::from_be_bytes(unsafe { (*eth).ether_type_be });
    match ether_type {
        ETH_P_IPV4 => {}
        ETH_P_IPV6 => return Err(UnderlayCounter::Ipv6),
        _ => return Err(UnderlayCounter::NotIp),
    }

    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(UnderlayCounter::Truncated)?;
    // SAFETY: as above.
    let (version_ihl, protocol, frag) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).protocol,
            u16::from_be_bytes((*ip).flags_frag_off_be),
        )
    };
    let ihl_bytes = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl_bytes < IPV4_MIN_HDR_LEN {
        return Err(UnderlayCounter::MalformedIpv4);
    }
    // Only the first fragment carries the UDP header.
    if protocol != IPPROTO_UDP || frag & 0x1fff != 0 {
        return Err(UnderlayCounter::Ipv4NotUdp);
    }

    let udp: *const UdpHdr =
        ptr_at(ctx, ETH_HDR_LEN + ihl_bytes).ok_or(UnderlayCounter::Truncated)?;
    // SAFETY: as above.
    let dst_port = u16::from_be_bytes(unsafe { (*udp).dst_port_be });
    let data_port = DATAPATH_CONFIG.get(0).map_or(0, |c| c.data_port_host);
    if data_port != 0 && dst_port == data_port {
        Ok(UnderlayCounter::DataPort)
    } else {
        Ok(UnderlayCounter::UdpOtherPort)
    }
}

#[inline(always)]
fn count(c: UnderlayCounter) {
    if let Some(slot) = UNDERLAY_COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}
