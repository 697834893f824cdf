//! Floods in the kernel: one copy of a frame to each of our children in the origin's broadcast
//! tree (`FLOODS`), each with its own outer headers. Shared by the egress program (our own
//! frames: broadcast, multicast, unknown destinations) and the ingress program (a neighbour's
//! flood, passed on before it is delivered locally).
//!
//! Each copy is made with `bpf_clone_redirect`: the frame's outer headers are rewritten for the
//! next child and a clone goes out of the underlay; the original stays with the program, which
//! then drops it (egress) or delivers it (ingress).

use aya_ebpf::{helpers::bpf_clone_redirect, programs::TcContext};
use mesh_common::{
    DatapathConfig, KernelCounter,
    maps::{FLOOD_IN_KERNEL, FloodEntry, MAX_FLOOD_CHILDREN, NEIGHBOUR_KERNEL, NEIGHBOUR_RESOLVED},
    wire::WireHeader,
};

use crate::{
    maps::{FLOODS, NEIGHBOURS, count, link_traffic},
    outer,
};

/// Our entry in `origin`'s tree when the kernel floods its frames itself.
#[inline(always)]
pub fn in_kernel(origin: u32) -> Option<FloodEntry> {
    // SAFETY: read-only map value, copied at once.
    let entry = (unsafe { FLOODS.get(origin) }).copied()?;
    (entry.flags & FLOOD_IN_KERNEL != 0).then_some(entry)
}

/// Whether `sender` may teach the kernel where `origin`'s MACs live: it is the origin, or our
/// parent in the origin's tree (the way the origin's frames come). The same rule as meshd's.
#[inline(always)]
pub fn may_teach(origin: u32, sender: u32) -> bool {
    // SAFETY: read-only map value, copied at once.
    sender == origin || (unsafe { FLOODS.get(origin) }).is_some_and(|e| e.parent == sender)
}

/// Sends one copy of the frame to every child of `entry`. The frame must start with room for
/// the outer headers and the mesh header (`OUTER_LEN + HEADER_LEN` bytes, rewritten here) in
/// front of the inner Ethernet frame; `payload` is the UDP payload's length (mesh header and
/// inner frame). Returns false when the frame could not be rewritten (it is then in no state
/// to go on).
#[inline(always)]
pub fn copy_to_children(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    entry: &FloodEntry,
    header: WireHeader,
    payload: u32,
) -> bool {
    let n_children = entry.count as usize;
    let len = ctx.len() - mesh_common::wire::ETH_LEN as u32;
    let mut i = 0;
    while i < MAX_FLOOD_CHILDREN {
        if i >= n_children {
            break;
        }
        let child = entry.children[i];
        i += 1;
        // SAFETY: read-only map value, copied at once.
        let Some(n) = (unsafe { NEIGHBOURS.get(child) }).copied() else {
            count(KernelCounter::FloodSkipped);
            continue;
        };
        let usable = NEIGHBOUR_KERNEL | NEIGHBOUR_RESOLVED;
        if n.flags & usable != usable {
            count(KernelCounter::FloodSkipped);
            continue;
        }
        let head = outer::to_neighbour(cfg, &n, header, payload);
        if ctx.store(0, &head, 0).is_err() {
            return false;
        }
        // SAFETY: helper with plain arguments on our own skb.
        if unsafe { bpf_clone_redirect(ctx.skb.skb, cfg.underlay_ifindex, 0) } == 0 {
            link_traffic(n.link_id, len, true);
        } else {
            count(KernelCounter::FloodSkipped);
        }
    }
    true
}
