//! TC ingress on the underlay NIC: mesh data frames from plaintext neighbours. A frame for this
//! node is decapsulated and handed to the local bridge through meshd's bridge port (so the
//! bridge learns the remote MAC behind it); a frame for another peer is relayed straight back
//! out with new outer headers, never touching the bridge; a flood is copied to our children in
//! the origin's tree and delivered, when every child is a kernel neighbour (`flood`).
//! Heartbeats, sealed frames, floods with a userspace child, unknown senders and relays over
//! sealed links continue to meshd's data socket. Anything that
//! is not for the data port passes untouched after a few header reads.
//!
//! At TC (not XDP) because a veth underlay delivers GSO super-frames whole: TC sees one 64 KiB
//! packet where XDP would force the sender to segment (see docs/architecture.md).

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_redirect, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use mesh_common::{
    KernelCounter,
    maps::{
        CONFIG_FORWARD, FDB_REFRESH_NS, FdbEntry, LOCAL_PORT_MAX_AGE_NS, LOCAL_PORT_PEER, MacKey,
        NEIGHBOUR_KERNEL, NEIGHBOUR_RESOLVED,
    },
    wire::{ENCAP_IPV4_LEN, ETH_LEN, FLOOD_ID, HEADER_LEN, OUTER_IPV4_LEN, WireHeader},
};

use crate::{
    flood,
    maps::{
        FDB, LEARNT_REMOTE, LOCAL_PORTS, NEIGHBOURS, ROUTES, SENDERS, config, count, learnt_lately,
        link_traffic, note_learnt, now_ns,
    },
    outer::{self, OUTER_LEN},
    packet::{ETH_P_IPV4, ETH_P_IPV6, IPPROTO_UDP, Ipv4Hdr, UdpHdr, vlan_tagged},
};

/// What to do with a frame, decided in one place.
enum Verdict {
    /// Not mesh data traffic: the stack gets it, nothing counted.
    Pass,
    /// meshd's data socket gets it (counted).
    ToMeshd,
    /// Counted and dropped.
    Drop(KernelCounter),
    /// Sent on by the kernel (counted by the path that sent it).
    Sent(i32),
}

#[classifier]
pub fn underlay_ingress(ctx: TcContext) -> i32 {
    match try_ingress(&ctx) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::ToMeshd => {
            count(KernelCounter::RxToMeshd);
            TC_ACT_OK
        }
        Verdict::Drop(c) => {
            count(c);
            TC_ACT_SHOT
        }
        Verdict::Sent(action) => action,
    }
}

const IP_OFF: usize = ETH_LEN;
const UDP_OFF: usize = ETH_LEN + OUTER_IPV4_LEN;
const MESH_OFF: usize = OUTER_LEN;
const INNER_OFF: usize = OUTER_LEN + HEADER_LEN;

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Verdict {
    let Some(cfg) = config() else {
        return Verdict::Pass;
    };
    if cfg.flags & CONFIG_FORWARD == 0 {
        return Verdict::Pass;
    }
    let Ok(ether_type) = ctx.load::<[u8; 2]>(12) else {
        return Verdict::Pass;
    };
    if u16::from_be_bytes(ether_type) != ETH_P_IPV4 {
        return Verdict::Pass;
    }
    let Ok(ip) = ctx.load::<Ipv4Hdr>(IP_OFF) else {
        return Verdict::Pass;
    };
    // mesh sends no IP options and no fragments; meshd's socket deals with whatever else
    // reaches the data port.
    if ip.version_ihl != 0x45
        || ip.protocol != IPPROTO_UDP
        || u16::from_be_bytes(ip.flags_frag_off_be) & 0x3fff != 0
    {
        return Verdict::Pass;
    }
    let Ok(udp) = ctx.load::<UdpHdr>(UDP_OFF) else {
        return Verdict::Pass;
    };
    if u16::from_be_bytes(udp.dst_port_be) != cfg.data_port_host {
        return Verdict::Pass;
    }

    // The data port: from here on every frame is counted.
    let Ok(raw) = ctx.load::<[u8; HEADER_LEN]>(MESH_OFF) else {
        return Verdict::Drop(KernelCounter::RxDropMalformed);
    };
    let h = WireHeader::from_bytes(&raw);
    if !h.is_mesh() || h.has_unknown_flags() {
        return Verdict::Drop(KernelCounter::RxDropBadFlags);
    }
    if h.is_sealed() || h.is_heartbeat() {
        return Verdict::ToMeshd;
    }
    // Unknown plaintext senders go to meshd, which counts them (or, in an encrypted mesh,
    // refuses them as unsealed): one place decides who is a neighbour.
    // SAFETY: read-only map value, copied at once.
    let Some(sender) = (unsafe { SENDERS.get(ip.src) }).copied() else {
        return Verdict::ToMeshd;
    };
    let Ok(inner_eth) = ctx.load::<[u8; ETH_LEN]>(INNER_OFF) else {
        return Verdict::Drop(KernelCounter::RxDropMalformed);
    };
    if vlan_tagged(&inner_eth) {
        // A named network's frame: meshd delivers it to that network's own bridge (or drops
        // it when nothing here is on the network), and relays it.
        return Verdict::ToMeshd;
    }
    // SAFETY: reading a field of the context the kernel gave us.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 && !one_inner_packet(ctx, &inner_eth) {
        // A batch of datagrams (UDP GSO from a sender's meshd, kept whole by a veth): meshd's
        // socket takes it apart. Only a tunnel super-frame holds one inner packet.
        return Verdict::ToMeshd;
    }
    let origin = h.origin();
    if origin == cfg.me || h.hops == 0 {
        return Verdict::Drop(KernelCounter::RxDropLoop);
    }
    let destination = h.destination();
    if destination == FLOOD_ID {
        learn(&inner_eth, origin, sender.short_id);
        return flood_in(ctx, cfg, h, &udp, &inner_eth, sender.link_id);
    }
    if destination == cfg.me {
        learn(&inner_eth, origin, sender.short_id);
        return deliver(
            ctx,
            cfg.bridge_port_ifindex,
            &inner_eth,
            sender.link_id,
            KernelCounter::RxDelivered,
        );
    }
    relay(ctx, cfg, h, &udp, sender.link_id)
}

/// Whether the datagram carries exactly one inner IP packet (its length field covers the rest
/// of the frame), as a GSO super-frame from a kernel sender does.
#[inline(always)]
fn one_inner_packet(ctx: &TcContext, inner_eth: &[u8; ETH_LEN]) -> bool {
    let ip_off = INNER_OFF + ETH_LEN;
    let rest = ctx.len().saturating_sub(ip_off as u32);
    match u16::from_be_bytes([inner_eth[12], inner_eth[13]]) {
        ETH_P_IPV4 => ctx
            .load::<[u8; 2]>(ip_off + 2)
            .is_ok_and(|l| u32::from(u16::from_be_bytes(l)) == rest),
        ETH_P_IPV6 => ctx
            .load::<[u8; 2]>(ip_off + 4)
            .is_ok_and(|l| u32::from(u16::from_be_bytes(l)) + 40 == rest),
        _ => false,
    }
}

/// A neighbour's flood: copied to our children in the origin's tree (one hop less), then
/// delivered to the local bridge; or, when a child is not a kernel neighbour, left to meshd.
#[inline(always)]
fn flood_in(
    ctx: &TcContext,
    cfg: &mesh_common::DatapathConfig,
    h: WireHeader,
    udp: &UdpHdr,
    inner_eth: &[u8; ETH_LEN],
    from_link: u32,
) -> Verdict {
    let Some(entry) = flood::in_kernel(h.origin()) else {
        return Verdict::ToMeshd;
    };
    // SAFETY: reading a field of the context the kernel gave us.
    let inner_ip_len = ctx.len().saturating_sub((INNER_OFF + ETH_LEN) as u32);
    if unsafe { (*ctx.skb.skb).gso_size } != 0 || inner_ip_len > entry.mtu {
        return Verdict::ToMeshd;
    }
    let mut onward = h;
    onward.hops = h.hops - 1;
    if onward.hops > 0 {
        let payload = u32::from(u16::from_be_bytes(udp.len_be)).saturating_sub(8);
        if !flood::copy_to_children(ctx, cfg, &entry, onward, payload) {
            return Verdict::Drop(KernelCounter::RxDropMalformed);
        }
    }
    deliver(
        ctx,
        cfg.bridge_port_ifindex,
        inner_eth,
        from_link,
        KernelCounter::RxFlooded,
    )
}

/// Remembers that the inner frame's source MAC lives behind `origin`, when `sender` may say so
/// (see `flood::may_teach`).
#[inline(always)]
fn learn(inner_eth: &[u8; ETH_LEN], origin: u32, sender: u32) {
    let mut src = [0u8; 6];
    src.copy_from_slice(&inner_eth[6..12]);
    if src[0] & 1 != 0 {
        return;
    }
    let now = now_ns();
    if learnt_lately(LEARNT_REMOTE, &src, origin, now, FDB_REFRESH_NS) {
        return;
    }
    let key = MacKey::new(src);
    // SAFETY: read-only, copied at once.
    if let Some(e) = unsafe { FDB.get(key) }
        && e.peer == origin
        && now.saturating_sub(e.seen_ns) < FDB_REFRESH_NS
    {
        note_learnt(LEARNT_REMOTE, &src, origin, e.seen_ns);
        return;
    }
    if !flood::may_teach(origin, sender) {
        return;
    }
    let entry = FdbEntry {
        peer: origin,
        reserved: 0,
        seen_ns: now,
    };
    if FDB.insert(key, entry, 0).is_ok() {
        note_learnt(LEARNT_REMOTE, &src, origin, now);
    }
}

/// Strips the outer headers and hands the inner frame to the bridge, as if it arrived on
/// meshd's bridge port.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    port: u32,
    inner_eth: &[u8; ETH_LEN],
    link_id: u32,
    counter: KernelCounter,
) -> Verdict {
    let received = ctx.len() - ETH_LEN as u32;
    // Shrinking at the MAC layer removes the bytes after the first 14: outer IPv4, UDP, the
    // mesh header and the inner Ethernet header, whose copy then replaces the outer one.
    if ctx
        .adjust_room(
            -((ENCAP_IPV4_LEN + ETH_LEN) as i32),
            BPF_ADJ_ROOM_MAC,
            BPF_F_ADJ_ROOM_FIXED_GSO as u64,
        )
        .is_err()
    {
        return Verdict::Drop(KernelCounter::RxDropMalformed);
    }
    if ctx.store(0, inner_eth, 0).is_err() {
        return Verdict::Drop(KernelCounter::RxDropMalformed);
    }
    link_traffic(link_id, received, false);
    count(counter);
    if let Some(veth) = local_veth(inner_eth) {
        // Straight into the container's namespace: no bridge, no extra backlog queue.
        count(KernelCounter::RxDeliveredDirect);
        // SAFETY: helper with plain arguments.
        return Verdict::Sent(unsafe { bpf_redirect_peer(veth, 0) } as i32);
    }
    // SAFETY: helper with plain arguments.
    Verdict::Sent(unsafe { bpf_redirect(port, BPF_F_INGRESS as u64) } as i32)
}

/// The veth bridge port the frame's destination MAC sits behind, when the egress program saw
/// it lately and meshd had confirmed the port is a veth then (only a veth has a peer to hand
/// to; see `LOCAL_PORT_PEER`).
/// IPv4 only: a frame handed to a peer keeps the packet's protocol as the outer header set it
/// (IPv4), where the bridge would read it anew from the inner header; ARP or IPv6 taken for
/// IPv4 would be dropped by the container's stack.
#[inline(always)]
fn local_veth(inner_eth: &[u8; ETH_LEN]) -> Option<u32> {
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&inner_eth[0..6]);
    if dst[0] & 1 != 0 || u16::from_be_bytes([inner_eth[12], inner_eth[13]]) != ETH_P_IPV4 {
        return None;
    }
    // SAFETY: read-only map values, copied at once.
    let port = (unsafe { LOCAL_PORTS.get(MacKey::new(dst)) }).copied()?;
    if port.flags & LOCAL_PORT_PEER == 0
        || now_ns().saturating_sub(port.seen_ns) > LOCAL_PORT_MAX_AGE_NS
    {
        return None;
    }
    Some(port.ifindex)
}

/// Sends a frame for another peer on towards it: new outer headers, one hop less.
#[inline(always)]
fn relay(
    ctx: &TcContext,
    cfg: &mesh_common::DatapathConfig,
    h: WireHeader,
    udp: &UdpHdr,
    from_link: u32,
) -> Verdict {
    let hops = h.hops - 1;
    if hops == 0 {
        return Verdict::Drop(KernelCounter::RxDropLoop);
    }
    // SAFETY: read-only map values, copied at once.
    let Some(next) = (unsafe { ROUTES.get(h.destination()) }).copied() else {
        return Verdict::Drop(KernelCounter::RxDropNoRoute);
    };
    let Some(n) = (unsafe { NEIGHBOURS.get(next) }).copied() else {
        return Verdict::ToMeshd;
    };
    if n.flags & NEIGHBOUR_KERNEL == 0 {
        return Verdict::ToMeshd;
    }
    // A relay cannot answer the original sender about an MTU: too big for the next link
    // goes to meshd, which counts it.
    let gso = unsafe { (*ctx.skb.skb).gso_size } != 0;
    if gso {
        // Kernel senders keep super-frames whole only to their destination: not for a relay.
        return Verdict::ToMeshd;
    }
    let inner_ip_len = ctx.len().saturating_sub((INNER_OFF + ETH_LEN) as u32);
    if !gso && inner_ip_len > n.mtu {
        return Verdict::ToMeshd;
    }
    if n.flags & NEIGHBOUR_RESOLVED == 0 {
        return Verdict::ToMeshd;
    }
    let payload = u32::from(u16::from_be_bytes(udp.len_be)).saturating_sub(8);
    let mut onward = h;
    onward.hops = hops;
    let head = outer::to_neighbour(cfg, &n, onward, payload);
    if ctx.store(0, &head, 0).is_err() {
        return Verdict::Drop(KernelCounter::RxDropMalformed);
    }
    let len = ctx.len() - ETH_LEN as u32;
    link_traffic(from_link, len, false);
    link_traffic(n.link_id, len, true);
    count(KernelCounter::RxRelayed);
    // SAFETY: helper with plain arguments.
    Verdict::Sent(unsafe { bpf_redirect(cfg.underlay_ifindex, 0) } as i32)
}
