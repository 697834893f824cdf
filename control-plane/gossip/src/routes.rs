//! Routes from a topology: unicast next hops and broadcast trees.
//!
//! Only symmetric links count (A lists B *and* B lists A): a link one side still reports after
//! the other side dropped it carries nothing. Ties are broken by peer id everywhere, so every
//! peer computes the same broadcast tree for a source from the same topology — which is what
//! makes flooding along it reach each peer exactly once.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use crate::{PeerEntry, PeerId};

/// What one peer forwards where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    /// For every reachable peer (not ourselves): the direct neighbour to send to.
    pub next_hop: BTreeMap<PeerId, PeerId>,
    /// Hop count to every reachable peer (ourselves: 0).
    pub hops: BTreeMap<PeerId, u32>,
    /// For every reachable source (ourselves included): the neighbours we forward that
    /// source's broadcasts to (our children in its tree).
    pub broadcast: BTreeMap<PeerId, Vec<PeerId>>,
    /// For every reachable source but ourselves: our parent in its tree, the neighbour its
    /// broadcasts arrive from.
    pub parent: BTreeMap<PeerId, PeerId>,
}

/// The symmetric-link graph, neighbours sorted by id.
pub fn graph(entries: &BTreeMap<PeerId, PeerEntry>) -> BTreeMap<PeerId, Vec<PeerId>> {
    graph_of(entries, false)
}

/// The graph data frames may use: symmetric links that neither end reports as data-path down.
pub fn data_graph(entries: &BTreeMap<PeerId, PeerEntry>) -> BTreeMap<PeerId, Vec<PeerId>> {
    graph_of(entries, true)
}

fn graph_of(
    entries: &BTreeMap<PeerId, PeerEntry>,
    data_only: bool,
) -> BTreeMap<PeerId, Vec<PeerId>> {
    let directed: HashSet<(u64, u64)> = entries
        .values()
        .flat_map(|e| {
            e.links
                .iter()
                .filter(move |l| !(data_only && l.datapath_down))
                .map(move |l| (e.id, l.peer))
        })
        .collect();
    entries
        .values()
        .map(|e| {
            let mut ns: Vec<PeerId> = e
                .links
                .iter()
                .filter(|l| {
                    l.peer != e.id
                        && !(data_only && l.datapath_down)
                        && directed.contains(&(l.peer, e.id))
                })
                .map(|l| PeerId(l.peer))
                .collect();
            ns.sort();
            ns.dedup();
            (PeerId(e.id), ns)
        })
        .collect()
}

/// Breadth-first search from `root`: each reached node's parent (the root has none), in the
/// deterministic order given by sorted neighbour lists.
fn bfs(g: &BTreeMap<PeerId, Vec<PeerId>>, root: PeerId) -> BTreeMap<PeerId, Option<PeerId>> {
    let mut parent = BTreeMap::from([(root, None)]);
    let mut queue = VecDeque::from([root]);
    while let Some(u) = queue.pop_front() {
        for &v in g.get(&u).map(Vec::as_slice).unwrap_or(&[]) {
            if let std::collections::btree_map::Entry::Vacant(e) = parent.entry(v) {
                e.insert(Some(u));
                queue.push_back(v);
            }
        }
    }
    parent
}

/// Peers reachable from `me` over symmetric links (including `me`).
pub fn reachable(entries: &BTreeMap<PeerId, PeerEntry>, me: PeerId) -> BTreeSet<PeerId> {
    bfs(&graph(entries), me).into_keys().collect()
}

/// Routes over the links the data path can use (see [`data_graph`]).
pub fn compute(entries: &BTreeMap<PeerId, PeerEntry>, me: PeerId) -> Routes {
    let g = data_graph(entries);
    let tree = bfs(&g, me);
    let mut routes = Routes::default();
    // Hops and next hops follow BFS order, so a node's parent is always resolved first.
    let mut order: Vec<PeerId> = vec![me];
    let mut i = 0;
    routes.hops.insert(me, 0);
    while i < order.len() {
        let u = order[i];
        i += 1;
        for &v in g.get(&u).map(Vec::as_slice).unwrap_or(&[]) {
            if tree.get(&v) == Some(&Some(u)) {
                routes.hops.insert(v, routes.hops[&u] + 1);
                let hop = if u == me { v } else { routes.next_hop[&u] };
                routes.next_hop.insert(v, hop);
                order.push(v);
            }
        }
    }
    for &source in &order {
        let t = bfs(&g, source);
        let children: Vec<PeerId> = t
            .iter()
            .filter(|(_, p)| **p == Some(me))
            .map(|(c, _)| *c)
            .collect();
        routes.broadcast.insert(source, children);
        if let Some(Some(p)) = t.get(&me) {
            routes.parent.insert(source, *p);
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use mesh_proto::v1::Link;

    use super::*;

    fn topo(edges: &[(u64, u64)], one_sided: &[(u64, u64)]) -> BTreeMap<PeerId, PeerEntry> {
        let mut m: BTreeMap<PeerId, PeerEntry> = BTreeMap::new();
        let mut add = |a: u64, b: u64| {
            let e = m.entry(PeerId(a)).or_insert_with(|| PeerEntry {
                id: a,
                ..Default::default()
            });
            e.links.push(Link {
                peer: b,
                ..Default::default()
            });
        };
        for &(a, b) in edges {
            add(a, b);
            add(b, a);
        }
        for &(a, b) in one_sided {
            add(a, b);
        }
        m
    }

    #[test]
    fn next_hops_follow_shortest_paths() {
        // 1 - 2 - 3 - 4, plus 1 - 5 - 4: 4 is two hops via 5, not three via 2.
        let t = topo(&[(1, 2), (2, 3), (3, 4), (1, 5), (5, 4)], &[]);
        let r = compute(&t, PeerId(1));
        assert_eq!(r.next_hop[&PeerId(2)], PeerId(2));
        assert_eq!(r.next_hop[&PeerId(3)], PeerId(2));
        assert_eq!(r.next_hop[&PeerId(4)], PeerId(5));
        assert_eq!(r.hops[&PeerId(4)], 2);
    }

    #[test]
    fn one_sided_links_carry_nothing() {
        let t = topo(&[(1, 2)], &[(2, 3)]);
        let r = compute(&t, PeerId(1));
        assert!(!r.next_hop.contains_key(&PeerId(3)));
        assert!(!reachable(&t, PeerId(1)).contains(&PeerId(3)));
    }

    #[test]
    fn a_link_with_its_data_path_down_is_routed_around_but_keeps_peers_reachable() {
        // Triangle 1-2-3; 3 reports its data path from 1 down.
        let mut t = topo(&[(1, 2), (2, 3), (1, 3)], &[]);
        for l in &mut t.get_mut(&PeerId(3)).unwrap().links {
            l.datapath_down = l.peer == 1;
        }
        for (me, other) in [(1, 3), (3, 1)] {
            let r = compute(&t, PeerId(me));
            assert_eq!(r.next_hop[&PeerId(other)], PeerId(2), "from {me}");
            assert_eq!(r.hops[&PeerId(other)], 2);
            assert!(!r.broadcast[&PeerId(me)].contains(&PeerId(other)));
        }
        assert!(reachable(&t, PeerId(1)).contains(&PeerId(3)));
    }

    #[test]
    fn broadcast_trees_span_every_peer_once_and_agree_everywhere() {
        // A graph with cycles: broadcasts must not loop.
        let t = topo(
            &[(1, 2), (2, 3), (3, 1), (3, 4), (4, 5), (5, 2), (5, 6)],
            &[],
        );
        let peers: Vec<PeerId> = t.keys().copied().collect();
        let all: Vec<Routes> = peers.iter().map(|&p| compute(&t, p)).collect();
        for &source in &peers {
            // Walk the tree as the peers forward: start at the source, each forwards to its
            // children for that source. Every peer must be reached exactly once.
            let mut reached = vec![source];
            let mut i = 0;
            while i < reached.len() {
                let at = peers.iter().position(|p| *p == reached[i]).unwrap();
                for c in &all[at].broadcast[&source] {
                    assert!(!reached.contains(c), "{c} reached twice from {source}");
                    let child = peers.iter().position(|p| p == c).unwrap();
                    assert_eq!(all[child].parent[&source], reached[i], "{c}'s parent");
                    reached.push(*c);
                }
                i += 1;
            }
            reached.sort();
            assert_eq!(reached, peers, "broadcast from {source} misses peers");
        }
    }
}
