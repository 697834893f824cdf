//! TC egress on meshd's bridge port (its TAP device): frames the local bridge sends towards the
//! mesh. A frame for a MAC the kernel FDB knows, whose route leaves over a kernel-capable
//! (plaintext) link, is encapsulated here and sent straight out of the underlay, GSO
//! super-frames staying whole (the underlay cuts them, each segment with its own outer
//! headers). Broadcast, multicast and unknown destinations are flooded along our broadcast
//! tree when every child in it is a kernel neighbour (`flood`). Everything else goes on to
//! meshd through the TAP, which does the rest exactly as in the pure-TAP mode: floods with a
//! userspace child, sealed links, ICMP answers to oversize packets. A frame that arrives
//! tagged is dropped (`kernel_dropped_network`): named networks have bridges of their own, and
//! meshd alone puts their tags on.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_skb_change_head,
    macros::classifier,
    programs::TcContext,
};
use mesh_common::{
    KernelCounter,
    maps::CONFIG_FORWARD,
    wire::{ENCAP_IPV4_LEN, ETH_LEN, FLOOD_ID, HEADER_LEN, INITIAL_HOPS, WireHeader},
};

use crate::{
    encap::{learn_local, packet_len, to_peer},
    flood,
    maps::{config, count},
    packet::vlan_tagged,
};

#[classifier]
pub fn bridge_egress(ctx: TcContext) -> i32 {
    match try_egress(&ctx) {
        Ok(action) => action,
        Err(c) => {
            count(c);
            TC_ACT_OK
        }
    }
}

/// `Ok`: the action for a frame the kernel sent (counted); `Err`: the counter of a frame that
/// continues to meshd.
#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, KernelCounter> {
    let cfg = config().ok_or(KernelCounter::TxOther)?;
    if cfg.flags & CONFIG_FORWARD == 0 {
        return Err(KernelCounter::TxOther);
    }
    let eth: [u8; ETH_LEN] = ctx.load(0).map_err(|_| KernelCounter::TxOther)?;
    // A frame that comes tagged from the bridge was tagged by a container: on the wire a tag
    // says which named network a frame is on, so it would speak on another network.
    // SAFETY: reading a field of the context the kernel gave us.
    if vlan_tagged(&eth) || unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        count(KernelCounter::DropNetwork);
        return Ok(TC_ACT_SHOT);
    }
    // SAFETY: reading a field of the context the kernel gave us.
    learn_local(&eth, unsafe { (*ctx.skb.skb).ingress_ifindex });
    if eth[0] & 1 != 0 {
        return flood_out(ctx, cfg, &eth);
    }
    match to_peer(ctx, cfg, &eth) {
        Err(KernelCounter::TxFlood) => flood_out(ctx, cfg, &eth),
        other => other,
    }
}

/// Floods a frame along our broadcast tree when the kernel may (every child a kernel
/// neighbour); otherwise it goes to meshd, which floods it.
#[inline(always)]
fn flood_out(
    ctx: &TcContext,
    cfg: &mesh_common::DatapathConfig,
    eth: &[u8; ETH_LEN],
) -> Result<i32, KernelCounter> {
    let entry = flood::in_kernel(cfg.me).ok_or(KernelCounter::TxFlood)?;
    // SAFETY: reading a field of the context the kernel gave us.
    if unsafe { (*ctx.skb.skb).gso_size } != 0 {
        return Err(KernelCounter::TxFlood);
    }
    if packet_len(ctx, eth, 0) > entry.mtu {
        return Err(KernelCounter::TxTooBig);
    }
    let payload = ctx.len() + HEADER_LEN as u32;
    // SAFETY: helper with plain arguments on our own skb.
    if unsafe { bpf_skb_change_head(ctx.skb.skb, (ENCAP_IPV4_LEN + ETH_LEN) as u32, 0) } != 0 {
        return Err(KernelCounter::TxOther);
    }
    let h = WireHeader::new(cfg.me, FLOOD_ID, INITIAL_HOPS, false);
    if !flood::copy_to_children(ctx, cfg, &entry, h, payload) {
        // The frame is half rewritten: it cannot go on as it was.
        count(KernelCounter::TxOther);
        return Ok(TC_ACT_SHOT);
    }
    count(KernelCounter::TxFlooded);
    // Every child has its copy; the frame itself goes nowhere else.
    Ok(TC_ACT_SHOT)
}
