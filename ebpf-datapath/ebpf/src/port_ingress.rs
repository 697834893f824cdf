//! TC ingress on each container's bridge port (the host end of its veth): a unicast frame for
//! a MAC the kernel FDB knows, whose peer the kernel sends to, is encapsulated and sent out of
//! the underlay here, before the bridge (no bridge forwarding, no bridge netfilter hooks, no
//! trip through meshd's port). Everything else, and a frame for a MAC that sits behind another
//! local port, continues into the bridge untouched and uncounted; the bridge hands whatever is
//! for the mesh to `bridge_egress`, which does the rest and counts it.
//!
//! An optimisation only: meshd attaches it to the bridge's veth ports it finds, unpinned, so
//! while meshd is down (or before it has seen a new port) frames take the bridge's way.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use mesh_common::{
    KernelCounter,
    maps::{CONFIG_FORWARD, LOCAL_PORT_MAX_AGE_NS, MacKey},
    wire::ETH_LEN,
};

use crate::{
    encap::{learn_local, to_peer},
    maps::{LOCAL_PORTS, config, count, now_ns},
    packet::vlan_tagged,
};

#[classifier]
pub fn port_ingress(ctx: TcContext) -> i32 {
    let Some(cfg) = config() else {
        return TC_ACT_OK;
    };
    if cfg.flags & CONFIG_FORWARD == 0 {
        return TC_ACT_OK;
    }
    let Ok(eth) = ctx.load::<[u8; ETH_LEN]>(0) else {
        return TC_ACT_OK;
    };
    // SAFETY: reading a field of the context the kernel gave us.
    learn_local(&eth, unsafe { (*ctx.skb.skb).ifindex });
    // A tagged frame takes the bridge's way (to its `bridge_egress`, which refuses it).
    // SAFETY: reading a field of the context the kernel gave us.
    if eth[0] & 1 != 0
        || is_local(&eth)
        || vlan_tagged(&eth)
        || unsafe { (*ctx.skb.skb).vlan_present } != 0
    {
        return TC_ACT_OK;
    }
    match to_peer(&ctx, cfg, &eth) {
        Ok(action) => {
            if action != TC_ACT_SHOT {
                count(KernelCounter::TxFromPort);
            }
            action
        }
        Err(_) => TC_ACT_OK,
    }
}

/// Whether the destination MAC was lately seen behind a local bridge port (a container that
/// moved here from another host while the kernel FDB still has it there).
#[inline(always)]
fn is_local(eth: &[u8; ETH_LEN]) -> bool {
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&eth[0..6]);
    // SAFETY: read-only map value, copied at once.
    unsafe {
        LOCAL_PORTS
            .get(MacKey::new(dst))
            .is_some_and(|p| now_ns().saturating_sub(p.seen_ns) < LOCAL_PORT_MAX_AGE_NS)
    }
}
