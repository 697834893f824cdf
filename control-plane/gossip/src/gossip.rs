//! The gossip state machine.
//!
//! Each peer owns one entry (its links and addresses) and is the only one that creates new
//! versions of it. A change is pushed to every neighbour at once and flooded onwards by whoever
//! learns something new (an entry version seen before is never forwarded, so floods stop). A new
//! link gets the full state. Every `anti_entropy_ms` one neighbour (round-robin) gets a digest of
//! versions and answers with what we lack, which repairs anything a lost message or a partition
//! left behind. Entries unreachable from us for `departed_after_ms` are dropped, with a tombstone
//! so the departed entry does not bounce back from a peer that has not dropped it yet.
//!
//! Outgoing updates are coalesced per neighbour until [`Gossip::take_outbox`], keeping only the
//! newest version of each entry: bursts of changes cost one message per neighbour.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use mesh_proto::v1::{Digest, GossipMessage, Link, PeerEntry, Update, Version, gossip_message};

use crate::{
    PeerId, Routes, SHORT_ID_ATTEMPTS,
    limits::{self, Limits, Refusal},
    routes,
    sign::EntryAuth,
};

#[derive(Clone, Debug)]
pub struct Config {
    /// How often a digest goes to one neighbour.
    pub anti_entropy_ms: u64,
    /// How long a peer stays in the topology after it became unreachable.
    pub departed_after_ms: u64,
    /// What entries may hold, and how many.
    pub limits: Limits,
    /// Signs our entry and checks the others': only an entry's owner can make a version of it
    /// that is stored and passed on.
    pub auth: Arc<dyn EntryAuth>,
}

impl Config {
    /// The defaults, with entries signed and checked by `auth`.
    pub fn new(auth: Arc<dyn EntryAuth>) -> Self {
        Config {
            anti_entropy_ms: 1_000,
            departed_after_ms: 60_000,
            limits: Limits::default(),
            auth,
        }
    }
}

/// What is waiting to go to one neighbour.
#[derive(Default)]
struct Pending {
    entries: BTreeMap<PeerId, PeerEntry>,
    digest: Option<bool>,
}

pub struct Gossip {
    me: PeerId,
    cfg: Config,
    entries: BTreeMap<PeerId, PeerEntry>,
    neighbours: BTreeSet<PeerId>,
    unreachable_since: BTreeMap<PeerId, u64>,
    /// Departed peers: versions at or below this are ignored, until the time given.
    tombstones: BTreeMap<PeerId, (u64, u64)>,
    outbox: BTreeMap<PeerId, Pending>,
    next_anti_entropy: u64,
    anti_entropy_cursor: usize,
    routes: Option<Routes>,
    /// Peers reachable from us; like `routes`, recomputed only after a topology change.
    reachable: Option<BTreeSet<PeerId>>,
    /// Bumped on every topology change, so drivers can tell when to republish routes.
    generation: u64,
    /// Entries refused, by reason.
    refused: BTreeMap<Refusal, u64>,
    /// Traffic, to tell an idle mesh from a storm: messages in and out, and entries that
    /// were news.
    messages_received: u64,
    messages_sent: u64,
    entries_accepted: u64,
}

impl Gossip {
    pub fn new(me: PeerId, name: &str, addresses: Vec<String>, now_ms: u64, cfg: Config) -> Self {
        let mut own = PeerEntry {
            id: me.0,
            name: name.to_owned(),
            version: now_ms.max(1),
            links: Vec::new(),
            addresses,
            short_id: crate::short_id_candidate(me, 0),
            signature: None,
            networks: Vec::new(),
            networks_in_use: Vec::new(),
            rings: Vec::new(),
            wants_space: Vec::new(),
        };
        cfg.auth.sign(&mut own);
        Gossip {
            me,
            next_anti_entropy: now_ms + cfg.anti_entropy_ms,
            cfg,
            entries: BTreeMap::from([(me, own)]),
            neighbours: BTreeSet::new(),
            unreachable_since: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            outbox: BTreeMap::new(),
            anti_entropy_cursor: 0,
            routes: None,
            reachable: None,
            generation: 0,
            refused: BTreeMap::new(),
            messages_received: 0,
            messages_sent: 0,
            entries_accepted: 0,
        }
    }

    pub fn me(&self) -> PeerId {
        self.me
    }

    /// Entries refused by the limits, by reason (every reason, zeros included).
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|r| (r.name(), self.refused.get(r).copied().unwrap_or(0)))
            .collect()
    }

    /// Gossip traffic so far: messages received and sent, entries taken in as news.
    pub fn traffic(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("gossip_messages_received", self.messages_received),
            ("gossip_messages_sent", self.messages_sent),
            ("gossip_entries_accepted", self.entries_accepted),
        ]
    }

    /// The limits entries are held to (our own included: see `meshd`'s checks).
    pub fn limits(&self) -> &Limits {
        &self.cfg.limits
    }

    /// Every known entry, ourselves included.
    pub fn entries(&self) -> &BTreeMap<PeerId, PeerEntry> {
        &self.entries
    }

    pub fn neighbours(&self) -> &BTreeSet<PeerId> {
        &self.neighbours
    }

    /// `peer`'s short id on the data path, as it announced it (its first candidate until its
    /// entry is known).
    pub fn short_id(&self, peer: PeerId) -> u32 {
        self.entries
            .get(&peer)
            .map(|e| e.short_id)
            .filter(|s| *s != 0)
            .unwrap_or_else(|| crate::short_id_candidate(peer, 0))
    }

    /// When a peer with a lower id claims our short id, moves ours to the first candidate
    /// nobody we know uses. The lower id keeps it, so exactly one side moves.
    fn resolve_short_id(&mut self, now_ms: u64) {
        let mine = self.entries[&self.me].short_id;
        let contested = self
            .entries
            .iter()
            .any(|(id, e)| *id < self.me && e.short_id == mine);
        if !contested {
            return;
        }
        let taken: BTreeSet<u32> = self
            .entries
            .iter()
            .filter(|(id, _)| **id != self.me)
            .map(|(_, e)| e.short_id)
            .collect();
        let me = self.me;
        // With at most `max_entries` (4096) peers in 16M ids, 63 candidates all taken does not
        // happen by chance; if it does, we keep ours and the lower id wins the data path.
        if let Some(next) = (1..SHORT_ID_ATTEMPTS)
            .map(|attempt| crate::short_id_candidate(me, attempt))
            .find(|c| !taken.contains(c))
        {
            self.edit_own(now_ms, |own| own.short_id = next);
        }
    }

    /// Routes for the current topology (recomputed only after a change).
    pub fn routes(&mut self) -> &Routes {
        let (entries, me) = (&self.entries, self.me);
        self.routes
            .get_or_insert_with(|| routes::compute(entries, me))
    }

    /// `(id, version)` of every entry: equal digests mean equal topologies.
    pub fn digest(&self) -> Vec<(PeerId, u64)> {
        self.entries
            .iter()
            .map(|(id, e)| (*id, e.version))
            .collect()
    }

    /// A control connection to `peer` is established (authenticated). `observed_addr` is its
    /// remote address as we see it.
    pub fn link_up(&mut self, peer: PeerId, observed_addr: Option<String>, now_ms: u64) {
        if peer == self.me {
            return;
        }
        self.neighbours.insert(peer);
        self.edit_own(now_ms, |own| {
            own.links.retain(|l| l.peer != peer.0);
            own.links.push(Link {
                peer: peer.0,
                observed_addr: observed_addr.unwrap_or_default(),
                datapath_down: false,
            });
            own.links.sort_by_key(|l| l.peer);
        });
        // The new neighbour gets everything we know (our new own entry included).
        let all: Vec<PeerEntry> = self.entries.values().cloned().collect();
        self.queue_entries(peer, all);
    }

    /// The control connection to `peer` is gone.
    pub fn link_down(&mut self, peer: PeerId, now_ms: u64) {
        if !self.neighbours.remove(&peer) {
            return;
        }
        self.outbox.remove(&peer);
        self.edit_own(now_ms, |own| own.links.retain(|l| l.peer != peer.0));
    }

    /// The data path to neighbour `peer` went down (heartbeats stopped) or came back: routes
    /// everywhere avoid or use the link again.
    pub fn set_datapath_down(&mut self, peer: PeerId, down: bool, now_ms: u64) {
        let own = &self.entries[&self.me];
        if !own
            .links
            .iter()
            .any(|l| l.peer == peer.0 && l.datapath_down != down)
        {
            return;
        }
        self.edit_own(now_ms, |own| {
            for l in own.links.iter_mut().filter(|l| l.peer == peer.0) {
                l.datapath_down = down;
            }
        });
    }

    /// Our listen addresses changed.
    pub fn set_addresses(&mut self, addresses: Vec<String>, now_ms: u64) {
        if self.entries[&self.me].addresses != addresses {
            self.edit_own(now_ms, |own| own.addresses = addresses);
        }
    }

    /// The networks we created changed (`meshctl network create / rm`).
    pub fn set_networks(&mut self, networks: Vec<mesh_proto::v1::Network>, now_ms: u64) {
        if self.entries[&self.me].networks != networks {
            self.edit_own(now_ms, |own| own.networks = networks);
        }
    }

    /// The named networks something here is attached to changed.
    pub fn set_networks_in_use(&mut self, ids: Vec<u64>, now_ms: u64) {
        if self.entries[&self.me].networks_in_use != ids {
            self.edit_own(now_ms, |own| own.networks_in_use = ids);
        }
    }

    /// Our views of the address rings we take part in, and the networks we need space in,
    /// changed.
    pub fn set_ipam(
        &mut self,
        rings: Vec<mesh_proto::v1::NetworkRing>,
        wants_space: Vec<u64>,
        now_ms: u64,
    ) {
        let own = &self.entries[&self.me];
        if own.rings != rings || own.wants_space != wants_space {
            self.edit_own(now_ms, |own| {
                own.rings = rings;
                own.wants_space = wants_space;
            });
        }
    }

    /// Changes our own entry, gives it a new version, and pushes it to every neighbour.
    fn edit_own(&mut self, now_ms: u64, f: impl FnOnce(&mut PeerEntry)) {
        let own = self
            .entries
            .get_mut(&self.me)
            .expect("own entry always present");
        f(own);
        own.version = own.version.saturating_add(1).max(now_ms);
        self.cfg.auth.sign(own);
        let own = own.clone();
        self.topology_changed();
        for n in self.neighbours.clone() {
            self.queue_entries(n, vec![own.clone()]);
        }
    }

    fn topology_changed(&mut self) {
        self.routes = None;
        self.reachable = None;
        self.generation += 1;
    }

    /// Changes whenever the topology (and so the routes) may have changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn queue_entries(&mut self, to: PeerId, entries: Vec<PeerEntry>) {
        let pending = self.outbox.entry(to).or_default();
        for e in entries {
            let id = PeerId(e.id);
            if pending
                .entries
                .get(&id)
                .is_none_or(|p| p.version < e.version)
            {
                pending.entries.insert(id, e);
            }
        }
    }

    /// Handles a message from neighbour `from`.
    pub fn receive(&mut self, from: PeerId, msg: GossipMessage, now_ms: u64) {
        self.messages_received += 1;
        match msg.kind {
            Some(gossip_message::Kind::Update(u)) => self.receive_update(from, u, now_ms),
            Some(gossip_message::Kind::Digest(d)) => self.receive_digest(from, d),
            None => {}
        }
    }

    fn receive_update(&mut self, from: PeerId, update: Update, now_ms: u64) {
        let mut changed = Vec::new();
        for e in update.entries {
            let id = PeerId(e.id);
            if let Err(why) = self.cfg.limits.check(&e, now_ms) {
                *self.refused.entry(why).or_default() += 1;
                continue;
            }
            // Only what would change our state is worth a signature check (the expensive
            // part); repeats of what we hold are dropped unverified.
            let newer = if id == self.me {
                // Our own entry comes back to us whenever a neighbour heard it from another
                // neighbour first (a race that load makes likely). The very same entry is not
                // news; taking it for an older incarnation bumped our version, which flooded
                // and came back again: a storm that fed on the load it made.
                let own = &self.entries[&self.me];
                e.version > own.version || (e.version == own.version && e != *own)
            } else {
                self.tombstones.get(&id).is_none_or(|(v, _)| e.version > *v)
                    && self
                        .entries
                        .get(&id)
                        .is_none_or(|old| old.version < e.version)
            };
            if !newer {
                continue;
            }
            if !self.cfg.auth.verify(&e) {
                *self.refused.entry(Refusal::BadSignature).or_default() += 1;
                continue;
            }
            if id == self.me {
                // An older incarnation of us is still circulating with a version at least as
                // new as ours (we restarted): move past it, so ours wins everywhere.
                let v = e.version;
                self.edit_own(now_ms.max(v.saturating_add(1)), |_| {});
                continue;
            }
            if !self.entries.contains_key(&id) && self.entries.len() >= self.cfg.limits.max_entries
            {
                *self.refused.entry(Refusal::TooManyEntries).or_default() += 1;
                continue;
            }
            self.tombstones.remove(&id);
            self.entries.insert(id, e.clone());
            self.entries_accepted += 1;
            changed.push(e);
        }
        if changed.is_empty() {
            return;
        }
        self.topology_changed();
        for n in self.neighbours.clone() {
            if n != from {
                self.queue_entries(n, changed.clone());
            }
        }
        self.resolve_short_id(now_ms);
    }

    fn receive_digest(&mut self, from: PeerId, digest: Digest) {
        let theirs: BTreeMap<PeerId, u64> = digest
            .versions
            .iter()
            .map(|v| (PeerId(v.id), v.version))
            .collect();
        let newer: Vec<PeerEntry> = self
            .entries
            .iter()
            .filter(|(id, e)| theirs.get(id).is_none_or(|v| *v < e.version))
            .map(|(_, e)| e.clone())
            .collect();
        if !newer.is_empty() {
            self.queue_entries(from, newer);
        }
        if !digest.reply {
            let we_lack = theirs.iter().any(|(id, v)| {
                self.entries.get(id).is_none_or(|e| e.version < *v)
                    && self.tombstones.get(id).is_none_or(|(tv, _)| tv < v)
            });
            if we_lack {
                self.outbox.entry(from).or_default().digest = Some(true);
            }
        }
    }

    /// Periodic work: anti-entropy and ageing. Call often (e.g. every 100 ms).
    pub fn tick(&mut self, now_ms: u64) {
        if now_ms >= self.next_anti_entropy {
            self.next_anti_entropy = now_ms + self.cfg.anti_entropy_ms;
            // Ageing needs reachability (a graph search); once per period is precise enough
            // for a timeout of tens of seconds.
            self.age(now_ms);
            if !self.neighbours.is_empty() {
                let i = self.anti_entropy_cursor % self.neighbours.len();
                self.anti_entropy_cursor = self.anti_entropy_cursor.wrapping_add(1);
                let n = *self.neighbours.iter().nth(i).expect("index within len");
                self.outbox
                    .entry(n)
                    .or_default()
                    .digest
                    .get_or_insert(false);
            }
        }
    }

    fn age(&mut self, now_ms: u64) {
        self.tombstones.retain(|_, (_, until)| *until > now_ms);
        let (entries, me) = (&self.entries, self.me);
        let reachable = self
            .reachable
            .get_or_insert_with(|| routes::reachable(entries, me));
        if reachable.len() == self.entries.len() {
            self.unreachable_since.clear();
            return;
        }
        self.unreachable_since
            .retain(|id, _| !reachable.contains(id));
        let mut departed = Vec::new();
        for id in self.entries.keys() {
            if reachable.contains(id) {
                continue;
            }
            let since = *self.unreachable_since.entry(*id).or_insert(now_ms);
            if now_ms.saturating_sub(since) >= self.cfg.departed_after_ms {
                departed.push(*id);
            }
        }
        for id in departed {
            let e = self.entries.remove(&id).expect("listed above");
            self.unreachable_since.remove(&id);
            self.tombstones
                .insert(id, (e.version, now_ms + 2 * self.cfg.departed_after_ms));
            self.topology_changed();
        }
    }

    /// Messages to send: `(neighbour, message)`. Updates to one neighbour are merged into one
    /// message holding only the newest version of each entry.
    pub fn take_outbox(&mut self) -> Vec<(PeerId, GossipMessage)> {
        let mut out = Vec::new();
        for (to, p) in std::mem::take(&mut self.outbox) {
            if !self.neighbours.contains(&to) {
                continue;
            }
            // A full state can be large: cut it into messages well under the frame limit.
            for entries in limits::chunk(p.entries.into_values().collect()) {
                out.push((
                    to,
                    GossipMessage {
                        kind: Some(gossip_message::Kind::Update(Update { entries })),
                    },
                ));
            }
            if let Some(reply) = p.digest {
                out.push((
                    to,
                    GossipMessage {
                        kind: Some(gossip_message::Kind::Digest(Digest {
                            versions: self
                                .entries
                                .iter()
                                .map(|(id, e)| Version {
                                    id: id.0,
                                    version: e.version,
                                })
                                .collect(),
                            reply,
                        })),
                    },
                ));
            }
        }
        self.messages_sent += out.len() as u64;
        out
    }
}
