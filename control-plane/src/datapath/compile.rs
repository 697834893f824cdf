//! The forwarding state the agent computes, compiled into the kernel datapath's map entries,
//! and the difference between two compilations (only changes are written to the kernel).
//! Pure: no maps, no clock; `kernel.rs` applies the result.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use mesh_common::maps::{
    FLOOD_IN_KERNEL, FloodEntry, MAX_FLOOD_CHILDREN, NEIGHBOUR_KERNEL, NEIGHBOUR_RESOLVED,
    NeighbourEntry, SenderEntry,
};

use crate::switch::{ShortId, forward::Table};

/// What the agent knows about one direct neighbour's link, for the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkView {
    pub peer: ShortId,
    /// Stable for the life of the control connection: the key of its counters.
    pub link_id: u32,
    /// Where its data frames go (the address its heartbeats come from, through NAT).
    pub addr: SocketAddr,
    /// The overlay MTU on the link.
    pub mtu: u32,
    /// Plaintext, and the neighbour runs the kernel datapath too: frames may take the kernel
    /// path (see `NEIGHBOUR_KERNEL`).
    pub kernel: bool,
    /// The MAC of the underlay next hop towards it, when the kernel has resolved it.
    pub next_hop_mac: Option<[u8; 6]>,
}

/// The full contents the kernel's maps should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub routes: BTreeMap<u32, u32>,
    pub neighbours: BTreeMap<u32, NeighbourEntry>,
    pub senders: BTreeMap<[u8; 4], SenderEntry>,
    pub floods: BTreeMap<u32, FloodEntry>,
}

/// One write to a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Route(u32, Option<u32>),
    Neighbour(u32, Option<NeighbourEntry>),
    Sender([u8; 4], Option<SenderEntry>),
    Flood(u32, Option<FloodEntry>),
}

/// Compiles the table and links. Links over IPv6 underlays are left to meshd (the kernel path
/// speaks IPv4 outer headers). Only plaintext senders are listed: a sealed frame is never
/// opened in the kernel, so knowing its sender there gains nothing.
pub fn compile(table: &Table, links: &[LinkView]) -> MapState {
    let mut s = MapState {
        routes: table
            .next_hop
            .iter()
            .map(|(d, h)| (d.get(), h.get()))
            .collect(),
        ..MapState::default()
    };
    for l in links {
        let SocketAddr::V4(a) = l.addr else { continue };
        s.neighbours.insert(
            l.peer.get(),
            NeighbourEntry {
                ipv4_be: a.ip().octets(),
                port_be: a.port().to_be_bytes(),
                flags: if l.kernel { NEIGHBOUR_KERNEL } else { 0 }
                    | if l.next_hop_mac.is_some() {
                        NEIGHBOUR_RESOLVED
                    } else {
                        0
                    },
                link_id: l.link_id,
                mtu: l.mtu,
                next_hop_mac: l.next_hop_mac.unwrap_or_default(),
                reserved: [0; 2],
            },
        );
        if l.kernel {
            s.senders.insert(
                a.ip().octets(),
                SenderEntry {
                    short_id: l.peer.get(),
                    link_id: l.link_id,
                },
            );
        }
    }
    s.floods = floods(table, &s.neighbours);
    s
}

/// Our place in every origin's broadcast tree. The kernel floods an origin's frames itself
/// only when it can reach every child (a resolved kernel neighbour, at most
/// `MAX_FLOOD_CHILDREN`); otherwise meshd floods them, all of them: a flood is never split
/// between the two.
fn floods(table: &Table, neighbours: &BTreeMap<u32, NeighbourEntry>) -> BTreeMap<u32, FloodEntry> {
    let origins: BTreeSet<ShortId> = table
        .children
        .keys()
        .chain(table.parent.keys())
        .chain(table.me.iter())
        .copied()
        .collect();
    let usable = NEIGHBOUR_KERNEL | NEIGHBOUR_RESOLVED;
    origins
        .into_iter()
        .map(|origin| {
            let children = table
                .children
                .get(&origin)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let links: Option<Vec<&NeighbourEntry>> = children
                .iter()
                .map(|c| {
                    neighbours
                        .get(&c.get())
                        .filter(|n| n.flags & usable == usable)
                })
                .collect();
            let mut e = FloodEntry {
                parent: table.parent.get(&origin).map_or(0, |p| p.get()),
                mtu: u32::MAX,
                ..FloodEntry::default()
            };
            if let Some(links) = links.filter(|l| l.len() <= MAX_FLOOD_CHILDREN) {
                e.flags = FLOOD_IN_KERNEL;
                e.count = links.len() as u16;
                for (slot, c) in e.children.iter_mut().zip(children) {
                    *slot = c.get();
                }
                e.mtu = links.iter().map(|n| n.mtu).min().unwrap_or(u32::MAX);
            }
            (origin.get(), e)
        })
        .collect()
}

/// The writes that turn `old` into `new`: removals first, so a key that moves never exists
/// twice, then additions and updates.
pub fn diff(old: &MapState, new: &MapState) -> Vec<Change> {
    let mut out = Vec::new();
    removed(&old.routes, &new.routes, &mut out, |k| {
        Change::Route(k, None)
    });
    removed(&old.neighbours, &new.neighbours, &mut out, |k| {
        Change::Neighbour(k, None)
    });
    removed(&old.senders, &new.senders, &mut out, |k| {
        Change::Sender(k, None)
    });
    removed(&old.floods, &new.floods, &mut out, |k| {
        Change::Flood(k, None)
    });
    changed(&old.routes, &new.routes, &mut out, |k, v| {
        Change::Route(k, Some(v))
    });
    changed(&old.neighbours, &new.neighbours, &mut out, |k, v| {
        Change::Neighbour(k, Some(v))
    });
    changed(&old.senders, &new.senders, &mut out, |k, v| {
        Change::Sender(k, Some(v))
    });
    changed(&old.floods, &new.floods, &mut out, |k, v| {
        Change::Flood(k, Some(v))
    });
    out
}

fn removed<K: Ord + Copy, V>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    out: &mut Vec<Change>,
    f: impl Fn(K) -> Change,
) {
    out.extend(old.keys().filter(|k| !new.contains_key(k)).map(|k| f(*k)));
}

fn changed<K: Ord + Copy, V: PartialEq + Copy>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    out: &mut Vec<Change>,
    f: impl Fn(K, V) -> Change,
) {
    out.extend(
        new.iter()
            .filter(|(k, v)| old.get(k) != Some(v))
            .map(|(k, v)| f(*k, *v)),
    );
}

/// A key of one of the maps, for [`retain_removed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Route(u32),
    Neighbour(u32),
    Sender([u8; 4]),
    Flood(u32),
}

/// Since when (ms) each key the kernel holds has been missing from what the agent wants.
pub type Missing = BTreeMap<Key, u64>;

/// `wanted`, plus the entries of `kernel` it dropped less than `keep_ms` ago (`missing` tracks
/// since when). So a neighbour whose meshd restarts, and whose control connection therefore
/// drops for a moment, keeps its routes in the kernel; a real departure is removed a little
/// later.
pub fn retain_removed(
    kernel: &MapState,
    mut wanted: MapState,
    missing: &mut Missing,
    now_ms: u64,
    keep_ms: u64,
) -> MapState {
    let still = |key: Key, missing: &mut Missing| {
        let since = *missing.entry(key).or_insert(now_ms);
        now_ms.saturating_sub(since) < keep_ms
    };
    let mut seen = Missing::new();
    for (k, v) in &kernel.routes {
        if !wanted.routes.contains_key(k) && still(Key::Route(*k), missing) {
            wanted.routes.insert(*k, *v);
            seen.insert(Key::Route(*k), missing[&Key::Route(*k)]);
        }
    }
    for (k, v) in &kernel.neighbours {
        if !wanted.neighbours.contains_key(k) && still(Key::Neighbour(*k), missing) {
            wanted.neighbours.insert(*k, *v);
            seen.insert(Key::Neighbour(*k), missing[&Key::Neighbour(*k)]);
        }
    }
    for (k, v) in &kernel.senders {
        if !wanted.senders.contains_key(k) && still(Key::Sender(*k), missing) {
            wanted.senders.insert(*k, *v);
            seen.insert(Key::Sender(*k), missing[&Key::Sender(*k)]);
        }
    }
    for (k, v) in &kernel.floods {
        if !wanted.floods.contains_key(k) && still(Key::Flood(*k), missing) {
            wanted.floods.insert(*k, *v);
            seen.insert(Key::Flood(*k), missing[&Key::Flood(*k)]);
        }
    }
    // Forget keys that are wanted again, or gone for good.
    *missing = seen;
    wanted
}

/// Link ids in `state` (their counters must exist in the kernel).
pub fn link_ids(state: &MapState) -> BTreeSet<u32> {
    state.neighbours.values().map(|n| n.link_id).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn s(n: u32) -> ShortId {
        ShortId::from_wire(n)
    }

    fn link(peer: u32, ip: u8, kernel: bool) -> LinkView {
        LinkView {
            peer: s(peer),
            link_id: peer * 10,
            addr: SocketAddr::from(([198, 18, 0, ip], 6784)),
            mtu: 1450,
            kernel,
            next_hop_mac: Some([2, 0, 0, 0, 0, ip]),
        }
    }

    fn table() -> Table {
        Table {
            me: Some(s(1)),
            next_hop: HashMap::from([(s(2), s(2)), (s(3), s(2)), (s(4), s(4))]),
            children: HashMap::from([(s(1), vec![s(2), s(4)]), (s(3), vec![s(4)])]),
            parent: HashMap::from([(s(2), s(2)), (s(3), s(2)), (s(4), s(4))]),
        }
    }

    /// Applies changes to a state, as the kernel maps would.
    fn apply(mut st: MapState, changes: &[Change]) -> MapState {
        for c in changes {
            match c {
                Change::Route(k, v) => {
                    st.routes.remove(k);
                    if let Some(v) = v {
                        st.routes.insert(*k, *v);
                    }
                }
                Change::Neighbour(k, v) => {
                    st.neighbours.remove(k);
                    if let Some(v) = v {
                        st.neighbours.insert(*k, *v);
                    }
                }
                Change::Sender(k, v) => {
                    st.senders.remove(k);
                    if let Some(v) = v {
                        st.senders.insert(*k, *v);
                    }
                }
                Change::Flood(k, v) => {
                    st.floods.remove(k);
                    if let Some(v) = v {
                        st.floods.insert(*k, *v);
                    }
                }
            }
        }
        st
    }

    #[test]
    fn sealed_links_are_neighbours_but_never_kernel_senders() {
        let st = compile(&table(), &[link(2, 2, true), link(4, 4, false)]);
        assert_eq!(st.routes.get(&3), Some(&2), "3 is reached through 2");
        assert_eq!(
            st.neighbours[&2].flags,
            NEIGHBOUR_KERNEL | NEIGHBOUR_RESOLVED
        );
        assert_eq!(st.neighbours[&2].next_hop_mac, [2, 0, 0, 0, 0, 2]);
        assert_eq!(
            st.neighbours[&4].flags, NEIGHBOUR_RESOLVED,
            "sealed: frames go to meshd"
        );
        assert_eq!(st.neighbours[&2].port_be, 6784u16.to_be_bytes());
        assert_eq!(st.senders.len(), 1);
        assert_eq!(st.senders[&[198, 18, 0, 2]].short_id, 2);
        assert_eq!(link_ids(&st), BTreeSet::from([20, 40]));
    }

    #[test]
    fn floods_go_to_the_kernel_only_when_every_child_is_a_kernel_neighbour() {
        let mut small = link(4, 4, true);
        small.mtu = 1400;
        let st = compile(&table(), &[link(2, 2, true), small.clone()]);
        let own = st.floods[&1];
        assert_eq!(own.flags, FLOOD_IN_KERNEL);
        assert_eq!(&own.children[..usize::from(own.count)], &[2, 4]);
        assert_eq!(own.parent, 0, "no parent in our own tree");
        assert_eq!(own.mtu, 1400, "the smallest child link");
        assert_eq!((st.floods[&3].parent, st.floods[&3].count), (2, 1));
        // A leaf in 2's tree: delivers, copies to nobody.
        assert_eq!(st.floods[&2].flags, FLOOD_IN_KERNEL);
        assert_eq!((st.floods[&2].count, st.floods[&2].mtu), (0, u32::MAX));

        // One sealed child: meshd floods our frames and 3's; 2's still flood in the kernel.
        let st = compile(&table(), &[link(2, 2, true), link(4, 4, false)]);
        assert_eq!(st.floods[&1].flags, 0);
        assert_eq!(
            st.floods[&1].count, 0,
            "no children listed for meshd's floods"
        );
        assert_eq!(st.floods[&3].flags, 0);
        assert_eq!(
            st.floods[&3].parent, 2,
            "the parent still says who may teach MACs"
        );
        assert_eq!(st.floods[&2].flags, FLOOD_IN_KERNEL);
        // An unresolved child, or a child with no link at all, is left to meshd too.
        let unresolved = LinkView {
            next_hop_mac: None,
            ..link(4, 4, true)
        };
        let st = compile(&table(), &[link(2, 2, true), unresolved]);
        assert_eq!(st.floods[&1].flags, 0);
        let st = compile(&table(), &[link(2, 2, true)]);
        assert_eq!(st.floods[&1].flags, 0);
    }

    #[test]
    fn a_tree_with_more_children_than_the_kernel_copies_to_is_left_to_meshd() {
        let many: Vec<u32> = (2..2 + MAX_FLOOD_CHILDREN as u32 + 1).collect();
        let table = Table {
            me: Some(s(1)),
            next_hop: many.iter().map(|p| (s(*p), s(*p))).collect(),
            children: HashMap::from([(s(1), many.iter().map(|p| s(*p)).collect())]),
            parent: HashMap::new(),
        };
        let links: Vec<LinkView> = many.iter().map(|p| link(*p, *p as u8, true)).collect();
        assert_eq!(compile(&table, &links).floods[&1].flags, 0);
        let fewer = &links[..MAX_FLOOD_CHILDREN];
        let mut table = table;
        table.children.get_mut(&s(1)).unwrap().pop();
        assert_eq!(
            compile(&table, fewer).floods[&1].count as usize,
            MAX_FLOOD_CHILDREN
        );
    }

    #[test]
    fn ipv6_underlay_links_stay_in_userspace() {
        let mut l = link(2, 2, true);
        l.addr = "[2001:db8::2]:6784".parse().unwrap();
        let st = compile(&table(), &[l]);
        assert!(st.neighbours.is_empty() && st.senders.is_empty());
    }

    #[test]
    fn applying_the_diff_of_any_two_states_gives_the_new_one() {
        let states = [
            MapState::default(),
            compile(&table(), &[link(2, 2, true)]),
            compile(&table(), &[link(2, 2, true), link(4, 4, true)]),
            compile(&table(), &[link(2, 9, true), link(4, 4, false)]),
            compile(
                &table(),
                &[LinkView {
                    next_hop_mac: None,
                    ..link(2, 9, true)
                }],
            ),
            compile(&Table::default(), &[]),
        ];
        for a in &states {
            for b in &states {
                let changes = diff(a, b);
                assert_eq!(&apply(a.clone(), &changes), b);
                if a == b {
                    assert!(changes.is_empty(), "an unchanged state writes nothing");
                }
            }
        }
    }

    #[test]
    fn dropped_entries_stay_for_a_while_and_then_go() {
        let full = compile(&table(), &[link(2, 2, true), link(4, 4, true)]);
        let without_4 = compile(
            &Table {
                next_hop: HashMap::from([(s(2), s(2)), (s(3), s(2))]),
                children: HashMap::from([(s(1), vec![s(2)])]),
                parent: HashMap::from([(s(2), s(2)), (s(3), s(2))]),
                ..table()
            },
            &[link(2, 2, true)],
        );
        // What stays: everything of 4's; the trees that still exist change at once.
        let mut kept_4 = full.clone();
        kept_4.floods = without_4.floods.clone();
        kept_4.floods.insert(4, full.floods[&4]);
        let mut missing = Missing::new();
        let mut kernel = full.clone();
        // Peer 4 drops out at t=0: kept until 5 s later.
        for t in [0, 1000, 4999] {
            let target = retain_removed(&kernel, without_4.clone(), &mut missing, t, 5000);
            assert_eq!(target, kept_4, "at {t} ms");
            kernel = target;
        }
        let target = retain_removed(&kernel, without_4.clone(), &mut missing, 5000, 5000);
        assert_eq!(target, without_4, "gone after 5 s");
        assert!(missing.is_empty());
        // Back before the deadline: nothing was removed, and the clock starts afresh next time.
        let mut missing = Missing::new();
        let kept = retain_removed(&full, without_4.clone(), &mut missing, 0, 5000);
        let back = retain_removed(&kept, full.clone(), &mut missing, 3000, 5000);
        assert_eq!(back, full);
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn a_neighbour_whose_address_moved_is_one_update_and_one_sender_swap() {
        let a = compile(&table(), &[link(2, 2, true)]);
        let b = compile(&table(), &[link(2, 7, true)]);
        let changes = diff(&a, &b);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(matches!(changes[0], Change::Sender(ip, None) if ip == [198, 18, 0, 2]));
    }
}
