//! Addresses in named networks: the agent's side of `mesh_ipam` (docs/ipam.md). A network's
//! creator seeds its ring; a peer that needs an address and owns none says so in its entry
//! (`wants_space`) and the reachable owner with the most free space gives it half of a free
//! run; views travel in the entries and merge. What we handed out is kept in `ipam.pb`, and an
//! address no attachment here uses any more goes back to the free pool.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net};
use mesh_gossip::PeerId;
use mesh_ipam::{NoAddress, Node, Peer};
use mesh_proto::{
    Message,
    v1::{
        AttachRequest, Ipam as IpamView, IpamMember, IpamNetwork, IpamPiece, IpamState,
        NetworkAllocations, response,
    },
};
use tokio::sync::oneshot;

use super::{Agent, now_ms};
use crate::{
    identity::write_atomic,
    ipam::{self, Range},
    networks::Chosen,
};

const FILE: &str = "ipam.pb";
/// How long an attach waits for a donation before it gives up and says why.
const WAIT_FOR_SPACE: Duration = Duration::from_secs(15);
/// A peer asking for space is given some by us at most this often (its entry may still ask
/// while our gift travels).
const GIVE_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// What an address is for.
pub(super) enum Then {
    /// An attach that gave none.
    Attach(AttachRequest, oneshot::Sender<response::Kind>),
    /// Docker's IPAM: the address is held for Docker until it releases it.
    Docker(oneshot::Sender<Result<serde_json::Value, String>>),
}

impl Then {
    fn fail(self, why: String) {
        match self {
            Then::Attach(_, reply) => {
                let _ = reply.send(response::Kind::Error(why));
            }
            Then::Docker(reply) => {
                let _ = reply.send(Err(why));
            }
        }
    }
}

/// An address wanted in a network where we have no free space yet.
pub(super) struct Waiting {
    then: Then,
    network: Chosen,
    since: Instant,
}

/// The allocator state of one meshd.
#[derive(Default)]
pub(super) struct Ipam {
    nodes: BTreeMap<u64, Node>,
    waiting: Vec<Waiting>,
    given: HashMap<(u64, u64), Instant>,
    /// Handed out to an attach still under way: not taken back for lack of a user yet.
    in_flight: std::collections::HashSet<(u64, u32)>,
    /// Handed out to Docker's IPAM, by network: Docker holds them until it releases them.
    held: BTreeMap<u64, std::collections::BTreeSet<u32>>,
    /// `--ipam-reclaim-after`, and since when each ring member we cannot reach has been out
    /// of reach (since our start at the earliest: a restart only delays a reclaim).
    reclaim_after: Option<Duration>,
    unreachable_since: HashMap<u64, Instant>,
    /// What `ipam.pb` holds (written only when this changes).
    saved: Vec<u8>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

impl Ipam {
    /// Our rings and allocations from the state dir (none before the first network).
    pub(super) fn load(
        state_dir: &Path,
        me: PeerId,
        reclaim_after: Option<Duration>,
    ) -> Result<Ipam> {
        let p = path(state_dir);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Ipam {
                    reclaim_after,
                    ..Ipam::default()
                });
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        let state = IpamState::decode(bytes.as_slice()).with_context(|| {
            format!(
                "{} is not mesh's address state; fix or remove it",
                p.display()
            )
        })?;
        let mut nodes = BTreeMap::new();
        for r in &state.rings {
            let ring = ipam::from_proto(r, r.size)
                .with_context(|| format!("{}: a ring that does not fit its range", p.display()))?;
            let mut node = Node::join(Peer(me.0), ring);
            if let Some(a) = state.allocated.iter().find(|a| a.network == r.network) {
                node.allocated = a.offsets.iter().copied().collect();
            }
            nodes.insert(r.network, node);
        }
        let held = state
            .held
            .iter()
            .map(|h| (h.network, h.offsets.iter().copied().collect()))
            .collect();
        Ok(Ipam {
            nodes,
            held,
            reclaim_after,
            saved: bytes,
            ..Ipam::default()
        })
    }

    fn state(&self) -> IpamState {
        IpamState {
            rings: self
                .nodes
                .iter()
                .map(|(n, node)| ipam::to_proto(*n, &node.ring))
                .collect(),
            allocated: self
                .nodes
                .iter()
                .map(|(n, node)| NetworkAllocations {
                    network: *n,
                    offsets: node.allocated.iter().copied().collect(),
                })
                .collect(),
            held: self
                .held
                .iter()
                .filter(|(_, offsets)| !offsets.is_empty())
                .map(|(n, offsets)| NetworkAllocations {
                    network: *n,
                    offsets: offsets.iter().copied().collect(),
                })
                .collect(),
        }
    }

    /// A tombstone for `gone` in every ring it is a member or owner of; its heir takes its
    /// pieces once every living member has acknowledged it (`Node::settle`).
    fn declare_gone(&mut self, gone: Peer) {
        for node in self.nodes.values_mut() {
            if node.ring.members.contains_key(&gone)
                || node.ring.tokens.values().any(|t| t.owner == gone)
            {
                node.tombstone(gone);
                node.settle();
            }
        }
    }

    fn wants(&self) -> Vec<u64> {
        let mut w: Vec<u64> = self.waiting.iter().map(|w| w.network.id).collect();
        w.sort_unstable();
        w.dedup();
        w
    }
}

impl Agent {
    fn me_peer(&self) -> Peer {
        Peer(self.local.id.0)
    }

    /// Every usable named network, as the mesh lists it now: id → (name, subnet).
    fn ipam_networks(&self) -> HashMap<u64, (String, Ipv4Net)> {
        self.network_list()
            .into_iter()
            .filter(|n| !n.shadowed && !n.vlan_taken)
            .filter_map(|n| {
                let subnet = crate::networks::parse_subnet(&n.subnet).ok()?;
                Some((n.id?, (n.name, subnet)))
            })
            .collect()
    }

    /// A network we just created: all of its range is ours.
    pub(super) fn ipam_seed(&mut self, id: u64, subnet: Ipv4Net) {
        let node = Node::create(self.me_peer(), Range::of(subnet).size());
        self.ipam.nodes.insert(id, node);
        self.ipam_publish();
    }

    /// An address for an attach to a named network without one: at once from our own space,
    /// or once a donation comes (`reply` is then answered from `ipam_survey`).
    pub(super) fn ipam_attach(
        &mut self,
        request: AttachRequest,
        network: Chosen,
        reply: oneshot::Sender<response::Kind>,
    ) {
        self.ipam_address(network, Then::Attach(request, reply));
    }

    /// An address in `network` for `then`: at once from our own space, or once a donation
    /// comes (see `ipam_survey`).
    pub(super) fn ipam_address(&mut self, network: Chosen, then: Then) {
        match self.ipam_allocate(&network) {
            Ok(Some((cidr, offset))) => self.ipam_deliver(network, cidr, offset, then),
            Ok(None) => {
                self.ipam.waiting.push(Waiting {
                    then,
                    network,
                    since: Instant::now(),
                });
                self.ipam_publish();
            }
            Err(e) => then.fail(e),
        }
    }

    /// Hands address `cidr` (at `offset`) to what it was for.
    fn ipam_deliver(&mut self, network: Chosen, cidr: IpNet, offset: u32, then: Then) {
        match then {
            Then::Attach(mut request, reply) => {
                request.cidrs = vec![cidr.to_string()];
                let id = network.id;
                self.attach_now(request, network, reply, Some((id, offset)));
            }
            Then::Docker(reply) => {
                self.ipam.in_flight.remove(&(network.id, offset));
                self.ipam.held.entry(network.id).or_default().insert(offset);
                self.ipam_publish();
                let (IpNet::V4(v4), Some(subnet)) = (cidr, network.subnet) else {
                    let _ = reply.send(Err("mesh networks are IPv4".into()));
                    return;
                };
                let _ = reply.send(Ok(crate::docker_plugin::protocol::address_answer(
                    v4.addr(),
                    subnet,
                )));
            }
        }
    }

    /// Docker's IPAM asks for a fixed address (`--ip`, `--gateway`): handed out when it is in
    /// our own space and free, and held for Docker.
    pub(super) fn ipam_hold_at(
        &mut self,
        network: &Chosen,
        address: Ipv4Addr,
    ) -> Result<serde_json::Value, String> {
        let subnet = network
            .subnet
            .ok_or_else(|| "the default network has no allocator".to_owned())?;
        let range = Range::of(subnet);
        let offset = range.offset(address).ok_or_else(|| {
            format!(
                "{address} is not a host address in network {}'s subnet {subnet}",
                network.name
            )
        })?;
        let node = self.ipam.nodes.get_mut(&network.id).ok_or_else(|| {
            format!(
                "{address} belongs to another host's part of network {}: leave the address \
                 out and mesh picks one (`meshctl ipam` shows who owns what)",
                network.name
            )
        })?;
        match node.allocate_at(offset) {
            Ok(()) => {}
            Err(mesh_ipam::NotYours::InUse) => {
                return Err(format!("{address} is in use"));
            }
            Err(mesh_ipam::NotYours::NotOurs) => {
                return Err(format!(
                    "{address} belongs to another host's part of network {}: leave the \
                     address out and mesh picks one (`meshctl ipam` shows who owns what)",
                    network.name
                ));
            }
            Err(mesh_ipam::NotYours::Tombstoned) => {
                return Err(format!(
                    "this host was declared gone in network {}'s allocator and hands out \
                     nothing",
                    network.name
                ));
            }
        }
        self.ipam.held.entry(network.id).or_default().insert(offset);
        self.ipam_publish();
        Ok(crate::docker_plugin::protocol::address_answer(
            address, subnet,
        ))
    }

    /// Docker's IPAM releases an address it held.
    pub(super) fn ipam_release_held(
        &mut self,
        network_id: u64,
        subnet: Ipv4Net,
        address: Ipv4Addr,
    ) -> Result<(), String> {
        let offset = Range::of(subnet)
            .offset(address)
            .ok_or_else(|| format!("{address} is not in {subnet}"))?;
        let was = self
            .ipam
            .held
            .get_mut(&network_id)
            .is_some_and(|h| h.remove(&offset));
        if was && let Some(node) = self.ipam.nodes.get_mut(&network_id) {
            node.release(offset);
        }
        self.ipam_publish();
        // Releasing what is not held is what Docker does after a failed request: no error.
        Ok(())
    }

    /// `Ok(None)`: nothing of ours is free, ask for space.
    fn ipam_allocate(&mut self, network: &Chosen) -> Result<Option<(IpNet, u32)>, String> {
        let subnet = network
            .subnet
            .ok_or_else(|| "the default network has no allocator: give the address".to_owned())?;
        let range = Range::of(subnet);
        let Some(node) = self.ipam.nodes.get_mut(&network.id) else {
            return Ok(None);
        };
        match node.allocate() {
            Ok(offset) => {
                self.ipam.in_flight.insert((network.id, offset));
                self.ipam_publish();
                Ok(Some((range.cidr(offset), offset)))
            }
            Err(NoAddress::Tombstoned) => Err(format!(
                "this host was declared gone in network {}'s allocator and hands out nothing",
                network.name
            )),
            Err(NoAddress::NoSpace) => {
                if ipam::why_none(&node.ring, &network.name, range.size()).contains("no free") {
                    return Err(ipam::why_none(&node.ring, &network.name, range.size()));
                }
                Ok(None)
            }
        }
    }

    /// Merges the views in every entry, gives space to peers that ask for it, serves attaches
    /// waiting for space, and publishes what changed. Runs with the topology survey.
    pub(super) fn ipam_survey(&mut self) {
        let me = self.me_peer();
        let networks = self.ipam_networks();
        // Only the entries that take part in allocation (copied: the loop changes our state).
        let entries: Vec<(PeerId, mesh_proto::v1::PeerEntry)> = self
            .gossip
            .entries()
            .iter()
            .filter(|(p, e)| {
                **p != self.local.id && (!e.rings.is_empty() || !e.wants_space.is_empty())
            })
            .map(|(p, e)| (*p, e.clone()))
            .collect();
        let reachable: std::collections::BTreeSet<u64> =
            self.gossip.routes().next_hop.keys().map(|p| p.0).collect();
        // A network gone from the mesh takes its ring with it once nothing here uses its
        // addresses (right after a restart the list may simply not have arrived yet).
        self.ipam
            .nodes
            .retain(|id, node| networks.contains_key(id) || !node.allocated.is_empty());
        let wanted = self.ipam.wants();
        for (_, e) in &entries {
            for r in &e.rings {
                let Some((_, subnet)) = networks.get(&r.network) else {
                    continue;
                };
                let Some(ring) = ipam::from_proto(r, Range::of(*subnet).size()) else {
                    continue;
                };
                match self.ipam.nodes.get_mut(&r.network) {
                    Some(node) => node.merge(&ring),
                    None if wanted.contains(&r.network) => {
                        let mut node = Node::join(me, ring.clone());
                        node.merge(&ring);
                        self.ipam.nodes.insert(r.network, node);
                    }
                    None => {}
                }
            }
        }
        self.ipam_reclaim_unreachable(&reachable);
        // Donations.
        let now = Instant::now();
        self.ipam
            .given
            .retain(|_, at| now.duration_since(*at) < GIVE_AGAIN_AFTER);
        for (peer, e) in &entries {
            if !reachable.contains(&peer.0) {
                continue;
            }
            for net in &e.wants_space {
                if self.ipam.given.contains_key(&(*net, peer.0)) {
                    continue;
                }
                let Some(node) = self.ipam.nodes.get_mut(net) else {
                    continue;
                };
                let can_act = |p: Peer| p == me || reachable.contains(&p.0);
                if ipam::we_give(node, Peer(peer.0), can_act) && node.donate(Peer(peer.0)) {
                    tracing::info!(peer = %self.name_of(*peer), network = net, "gave address space");
                    self.ipam.given.insert((*net, peer.0), now);
                }
            }
        }
        // Addresses waiting for space.
        for w in std::mem::take(&mut self.ipam.waiting) {
            match self.ipam_allocate(&w.network) {
                Ok(Some((cidr, offset))) => self.ipam_deliver(w.network, cidr, offset, w.then),
                Ok(None) if w.since.elapsed() < WAIT_FOR_SPACE => self.ipam.waiting.push(w),
                Ok(None) => {
                    let why = match (self.ipam.nodes.get(&w.network.id), w.network.subnet) {
                        (Some(node), Some(s)) => {
                            ipam::why_none(&node.ring, &w.network.name, Range::of(s).size())
                        }
                        _ => format!(
                            "no host that owns addresses in network {} is reachable \
                             (`meshctl ipam`)",
                            w.network.name
                        ),
                    };
                    w.then.fail(why);
                }
                Err(e) => w.then.fail(e),
            }
        }
        self.ipam_publish();
    }

    /// The attach an address was handed out for is over: the address is in use, or (when
    /// it failed) free again.
    pub(super) fn ipam_settled(&mut self, network: u64, offset: u32, attached: bool) {
        self.ipam.in_flight.remove(&(network, offset));
        if !attached && let Some(node) = self.ipam.nodes.get_mut(&network) {
            node.release(offset);
            self.ipam_publish();
        }
    }

    /// Gives back what we handed out that no attachment here uses (after a detach, or a
    /// restart), sparing addresses whose attach is under way.
    pub(super) fn ipam_in_use(&mut self, in_use: Vec<(u64, Vec<Ipv4Addr>)>) {
        let networks = self.ipam_networks();
        let ids: Vec<u64> = self.ipam.nodes.keys().copied().collect();
        for id in ids {
            let Some((_, subnet)) = networks.get(&id).cloned() else {
                continue;
            };
            let range = Range::of(subnet);
            let used: Vec<u32> = in_use
                .iter()
                .filter(|(n, _)| *n == id)
                .flat_map(|(_, addrs)| addrs.iter().filter_map(|a| range.offset(*a)))
                .collect();
            let in_flight = &self.ipam.in_flight;
            let held = self.ipam.held.get(&id);
            let node = self.ipam.nodes.get_mut(&id).expect("listed above");
            let unused: Vec<u32> = node
                .allocated
                .iter()
                .copied()
                .filter(|o| {
                    !used.contains(o)
                        && !in_flight.contains(&(id, *o))
                        && !held.is_some_and(|h| h.contains(o))
                })
                .collect();
            for o in unused {
                node.release(o);
            }
        }
        self.ipam_publish();
    }

    /// `--ipam-reclaim-after`: a ring member (or owner) out of reach that long is declared
    /// gone, as `meshctl ipam reclaim` would. Only its heir acts on that, once every living
    /// member acknowledged it; a peer alive on the other side of a partition longer than this
    /// would keep addresses its heir hands out again (docs/ipam.md).
    fn ipam_reclaim_unreachable(&mut self, reachable: &std::collections::BTreeSet<u64>) {
        let Some(after) = self.ipam.reclaim_after else {
            return;
        };
        let me = self.local.id.0;
        let mut out_of_reach = std::collections::BTreeSet::new();
        for node in self.ipam.nodes.values() {
            let owners = node.ring.tokens.values().map(|t| t.owner);
            for p in node.ring.members.keys().copied().chain(owners) {
                if p.0 != me && !reachable.contains(&p.0) && !node.ring.is_dead(p) {
                    out_of_reach.insert(p.0);
                }
            }
        }
        let now = Instant::now();
        self.ipam
            .unreachable_since
            .retain(|p, _| out_of_reach.contains(p));
        let mut gone = Vec::new();
        for p in out_of_reach {
            let since = *self.ipam.unreachable_since.entry(p).or_insert(now);
            if now.duration_since(since) >= after {
                gone.push(p);
            }
        }
        for p in gone {
            self.ipam.unreachable_since.remove(&p);
            self.ipam.declare_gone(Peer(p));
            tracing::warn!(
                peer = %self.name_of(PeerId(p)),
                after = ?after,
                "declared gone in the address allocator: out of reach longer than \
                 --ipam-reclaim-after"
            );
        }
    }

    /// `meshctl ipam reclaim PEER`: a tombstone for `who` in every ring it is a member of. Its
    /// heir takes its pieces once every living member has acknowledged it (`Node::settle`).
    pub(super) fn ipam_reclaim(&mut self, who: &str) -> Result<(), String> {
        // Members, and owners whose own view has not arrived yet (a donation names its
        // recipient before the recipient reports).
        let members: std::collections::BTreeSet<u64> = self
            .ipam
            .nodes
            .values()
            .flat_map(|n| {
                n.ring
                    .members
                    .keys()
                    .map(|p| p.0)
                    .chain(n.ring.tokens.values().map(|t| t.owner.0))
            })
            .collect();
        let found = members
            .iter()
            .copied()
            .find(|id| self.name_of(PeerId(*id)) == who || format!("{:016x}", id) == who)
            .ok_or_else(|| {
                format!("{who} holds no address space here (`meshctl ipam` lists the members)")
            })?;
        if found == self.local.id.0 {
            return Err("this host cannot declare itself gone".into());
        }
        if self.gossip.routes().next_hop.contains_key(&PeerId(found)) {
            return Err(format!(
                "{who} is reachable: a live peer's addresses stay its own (stop it for good \
                 first)"
            ));
        }
        self.ipam.declare_gone(Peer(found));
        tracing::info!(peer = who, "declared gone in the address allocator");
        self.ipam_publish();
        Ok(())
    }

    /// `meshctl ipam`: each network we take part in, its pieces and owners, its members'
    /// free space, and which owners we cannot reach.
    pub(super) fn ipam_view(&mut self) -> IpamView {
        let me = self.me_peer();
        let reachable: std::collections::BTreeSet<u64> =
            self.gossip.routes().next_hop.keys().map(|p| p.0).collect();
        let can_reach = |p: Peer| p == me || reachable.contains(&p.0);
        let waiting = self.ipam.wants();
        let listed = self.ipam_networks();
        let mut networks = Vec::new();
        for (id, node) in &self.ipam.nodes {
            let Some((name, subnet)) = listed.get(id).cloned() else {
                continue;
            };
            let range = Range::of(subnet);
            networks.push(IpamNetwork {
                name,
                subnet: subnet.to_string(),
                size: range.size(),
                allocated_here: node.allocated.len() as u32,
                free_here: node.free_count(),
                pieces: node
                    .ring
                    .pieces()
                    .map(|(start, end, t)| IpamPiece {
                        first: range.addr(start).to_string(),
                        last: range.addr(end - 1).to_string(),
                        owner: self.name_of(PeerId(t.owner.0)),
                        owner_reachable: can_reach(t.owner),
                    })
                    .collect(),
                members: node
                    .ring
                    .members
                    .iter()
                    .map(|(p, m)| IpamMember {
                        name: self.name_of(PeerId(p.0)),
                        free: m.free,
                        reachable: can_reach(*p),
                        dead: m.dead,
                    })
                    .collect(),
                waiting: waiting.contains(id),
            });
        }
        IpamView { networks }
    }

    /// Puts our views and wants in our entry and on disk, when they changed.
    fn ipam_publish(&mut self) {
        let state = self.ipam.state();
        let wants = self.ipam.wants();
        self.gossip.set_ipam(state.rings.clone(), wants, now_ms());
        let bytes = state.encode_to_vec();
        if bytes != self.ipam.saved {
            match write_atomic(&path(&self.state_dir), &bytes, 0o600) {
                Ok(()) => self.ipam.saved = bytes,
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "saving the address state"),
            }
        }
    }
}
