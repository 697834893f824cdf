//! Encapsulation of a frame for a MAC the kernel FDB knows, straight to its peer: shared by
//! `bridge_egress` (frames the bridge sends to meshd's port) and `port_ingress` (frames a
//! container sends, before the bridge).

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{bpf_redirect, bpf_skb_change_head},
    programs::TcContext,
};
use mesh_common::{
    DatapathConfig, KernelCounter,
    maps::{
        FDB_MAX_AGE_NS, FDB_REFRESH_NS, LOCAL_PORT_PEER, LocalPort, MacKey, NEIGHBOUR_KERNEL,
        NEIGHBOUR_RESOLVED,
    },
    wire::{ENCAP_IPV4_LEN, ETH_LEN, HEADER_LEN, INITIAL_HOPS, WireHeader},
};

use crate::{
    maps::{
        FDB, LEARNT_LOCAL, LOCAL_PORTS, NEIGHBOURS, PEER_PORTS, ROUTES, count, learnt_lately,
        link_traffic, note_learnt, now_ns,
    },
    outer::{self, OUTER_LEN},
    packet::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_TCP, IPV4_MIN_HDR_LEN,
        IPV6_HDR_LEN,
    },
};

/// Flags for growing the frame into a UDP tunnel packet that keeps GSO: outer IPv4 + UDP, and
/// the inner Ethernet header as the inner MAC header. The mesh header between them counts as
/// part of the tunnel header (as VXLAN's does for the kernel's own VXLAN device): the kernel
/// finds the inner frame from the inner MAC offset, so segmentation copies UDP + mesh header
/// in front of every segment.
const ENCAP_FLAGS: u64 = aya_ebpf::bindings::BPF_F_ADJ_ROOM_FIXED_GSO as u64
    | aya_ebpf::bindings::BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
    | aya_ebpf::bindings::BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
    | aya_ebpf::bindings::BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
    | ((ETH_LEN as u64) & 0xff) << 56;

/// Encapsulates a unicast frame for its peer and redirects it out of the underlay: `Ok` with
/// the action (the frame was sent, or was spoilt half-way and is dropped; counted), `Err` with
/// why the kernel does not send it (`TxFlood`: no fresh FDB entry), not counted.
#[inline(always)]
pub fn to_peer(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    eth: &[u8; ETH_LEN],
) -> Result<i32, KernelCounter> {
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&eth[0..6]);
    // SAFETY: the value is only read, and copied out at once.
    let entry = (unsafe { FDB.get(MacKey::new(dst)) })
        .copied()
        .ok_or(KernelCounter::TxFlood)?;
    let (peer, seen) = (entry.peer, entry.seen_ns);
    if now_ns().saturating_sub(seen) > FDB_MAX_AGE_NS {
        return Err(KernelCounter::TxFlood);
    }
    // SAFETY: as above.
    let hop = *unsafe { ROUTES.get(peer) }.ok_or(KernelCounter::TxUserspaceLink)?;
    let n = *unsafe { NEIGHBOURS.get(hop) }.ok_or(KernelCounter::TxUserspaceLink)?;
    // Only straight to the destination: a relay might pass the frame to a meshd (a sealed or
    // TAP-mode next link), which could not take its offloaded checksum or GSO.
    if n.flags & NEIGHBOUR_KERNEL == 0 || hop != peer {
        return Err(KernelCounter::TxUserspaceLink);
    }
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if packet_len(ctx, eth, gso_size) > n.mtu {
        return Err(KernelCounter::TxTooBig);
    }
    if n.flags & NEIGHBOUR_RESOLVED == 0 {
        return Err(KernelCounter::TxNoNeighbour);
    }
    let inner_len = ctx.len();
    let payload = inner_len + HEADER_LEN as u32;
    let mut head = [0u8; OUTER_LEN + HEADER_LEN + ETH_LEN];
    head[..OUTER_LEN + HEADER_LEN].copy_from_slice(&outer::to_neighbour(
        cfg,
        &n,
        WireHeader::new(cfg.me, peer, INITIAL_HOPS, false),
        payload,
    ));
    head[OUTER_LEN + HEADER_LEN..].copy_from_slice(eth);
    let written = if gso_size != 0 {
        // A GSO super-frame (always IP) grows at the MAC layer with the encapsulation flags, so
        // it stays one packet marked as a UDP tunnel: the room goes after the first 14 bytes,
        // the original Ethernet header becomes the outer one and the room holds outer IPv4,
        // UDP, the mesh header and a copy of the inner Ethernet header.
        ctx.adjust_room(
            (ENCAP_IPV4_LEN + ETH_LEN) as i32,
            BPF_ADJ_ROOM_MAC,
            ENCAP_FLAGS,
        )
        .map_err(|_| KernelCounter::TxOther)?;
        ctx.store(0, &head, 0)
    } else {
        // A single frame of any protocol (adjust_room refuses ARP): room in front of it, the
        // inner frame untouched behind the new headers.
        // SAFETY: helper with plain arguments on our own skb.
        let rc = unsafe { bpf_skb_change_head(ctx.skb.skb, (ENCAP_IPV4_LEN + ETH_LEN) as u32, 0) };
        if rc != 0 {
            return Err(KernelCounter::TxOther);
        }
        let mut front = [0u8; OUTER_LEN + HEADER_LEN];
        front.copy_from_slice(&head[..OUTER_LEN + HEADER_LEN]);
        ctx.store(0, &front, 0)
    };
    if written.is_err() {
        // The frame is half rewritten: it cannot go on as it was.
        count(KernelCounter::TxOther);
        return Ok(TC_ACT_SHOT);
    }
    link_traffic(n.link_id, ctx.len() - ETH_LEN as u32, true);
    count(KernelCounter::TxSent);
    if gso_size != 0 {
        count(KernelCounter::TxGso);
    }
    // SAFETY: helper with plain arguments.
    Ok(unsafe { bpf_redirect(cfg.underlay_ifindex, 0) } as i32)
}

/// Remembers that the frame's source MAC sits behind bridge port `ifindex`, so frames for it
/// arriving from the mesh can go straight to that port's container.
#[inline(always)]
pub fn learn_local(eth: &[u8; ETH_LEN], ifindex: u32) {
    let mut src = [0u8; 6];
    src.copy_from_slice(&eth[6..12]);
    if src[0] & 1 != 0 || ifindex == 0 {
        return;
    }
    let now = now_ns();
    if learnt_lately(LEARNT_LOCAL, &src, ifindex, now, FDB_REFRESH_NS) {
        return;
    }
    let key = MacKey::new(src);
    // SAFETY: read-only, copied at once.
    if let Some(e) = unsafe { LOCAL_PORTS.get(key) }
        && e.ifindex == ifindex
        && now.saturating_sub(e.seen_ns) < FDB_REFRESH_NS
    {
        note_learnt(LEARNT_LOCAL, &src, ifindex, e.seen_ns);
        return;
    }
    // SAFETY: read-only map value, only its presence matters.
    let flags = if unsafe { PEER_PORTS.get(ifindex) }.is_some() {
        LOCAL_PORT_PEER
    } else {
        0
    };
    let entry = LocalPort {
        ifindex,
        flags,
        seen_ns: now,
    };
    if LOCAL_PORTS.insert(key, entry, 0).is_ok() {
        note_learnt(LEARNT_LOCAL, &src, ifindex, now);
    }
}

/// The size of the largest IP packet this frame becomes on the overlay: for a GSO super-frame
/// one segment (payload size plus the inner IP and TCP headers), otherwise the frame less its
/// Ethernet header (and VLAN tag). Compared with the link's overlay MTU.
#[inline(always)]
pub fn packet_len(ctx: &TcContext, eth: &[u8; ETH_LEN], gso_size: u32) -> u32 {
    let ether_type = u16::from_be_bytes([eth[12], eth[13]]);
    let l2 = match ether_type {
        ETH_P_8021Q | ETH_P_8021AD => ETH_LEN as u32 + 4,
        _ => ETH_LEN as u32,
    };
    if gso_size == 0 {
        return ctx.len().saturating_sub(l2);
    }
    let headers = match ether_type {
        ETH_P_IPV4 => {
            let vihl: u8 = ctx.load(ETH_LEN).unwrap_or(0x45);
            let proto: u8 = ctx.load(ETH_LEN + 9).unwrap_or(0);
            let ihl = u32::from(vihl & 0x0f) * 4;
            ihl.max(IPV4_MIN_HDR_LEN as u32) + l4_len(ctx, ETH_LEN + ihl as usize, proto)
        }
        ETH_P_IPV6 => {
            let next: u8 = ctx.load(ETH_LEN + 6).unwrap_or(0);
            IPV6_HDR_LEN as u32 + l4_len(ctx, ETH_LEN + IPV6_HDR_LEN, next)
        }
        // GSO is for IP; anything else is measured whole (and so handed to meshd).
        _ => return ctx.len(),
    };
    gso_size + headers
}

/// The TCP header's length (data offset) or, for UDP GSO, the UDP header's.
#[inline(always)]
fn l4_len(ctx: &TcContext, off: usize, proto: u8) -> u32 {
    if proto == IPPROTO_TCP {
        let doff: u8 = ctx.load(off + 12).unwrap_or(0xf0);
        u32::from(doff >> 4) * 4
    } else {
        8
    }
}
