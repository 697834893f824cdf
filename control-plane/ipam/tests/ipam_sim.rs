//! The allocator under a simulated mesh: peers allocate and release concurrently, ask
//! reachable peers for space, are split into partitions and healed, restart from what they
//! persisted, die and are reclaimed by their heirs. After every step: no address is held by two
//! living peers, and no two living peers believe they own one address. Seeds are fixed, so a
//! failure replays.

use std::collections::BTreeMap;

use mesh_ipam::{NoAddress, Node, Peer};

/// xorshift64*: small and deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Sim {
    rng: Rng,
    nodes: BTreeMap<Peer, Node>,
    /// What each node last wrote to disk (after each of its own changes).
    disk: BTreeMap<Peer, Node>,
    /// Peers killed for good (their containers are gone with them).
    killed: Vec<Peer>,
    /// Partition of each node (same number: can talk).
    side: BTreeMap<Peer, u8>,
    allocations: u64,
    donations: u64,
    deaths: u64,
    failed_with_space_on_our_side: u64,
}

impl Sim {
    fn new(seed: u64, peers: u64, size: u32) -> Sim {
        let creator = Node::create(Peer(1), size);
        let ring = creator.ring.clone();
        let mut nodes = BTreeMap::from([(Peer(1), creator)]);
        for p in 2..=peers {
            nodes.insert(Peer(p), Node::join(Peer(p), ring.clone()));
        }
        let disk = nodes.clone();
        let side = nodes.keys().map(|p| (*p, 0)).collect();
        Sim {
            rng: Rng(seed | 1),
            nodes,
            disk,
            killed: Vec::new(),
            side,
            allocations: 0,
            donations: 0,
            deaths: 0,
            failed_with_space_on_our_side: 0,
        }
    }

    fn alive(&self) -> Vec<Peer> {
        self.nodes
            .keys()
            .filter(|p| !self.killed.contains(p))
            .copied()
            .collect()
    }

    fn pick(&mut self) -> Peer {
        let alive = self.alive();
        alive[self.rng.below(alive.len() as u64) as usize]
    }

    fn persist(&mut self, p: Peer) {
        self.disk.insert(p, self.nodes[&p].clone());
    }

    /// Everyone exchanges views with everyone on its side (a few gossip rounds, collapsed).
    fn gossip(&mut self) {
        let alive = self.alive();
        for _ in 0..2 {
            for a in &alive {
                for b in &alive {
                    if a != b && self.side[a] == self.side[b] {
                        let ring = self.nodes[b].ring.clone();
                        let n = self.nodes.get_mut(a).unwrap();
                        let before = n.owned();
                        n.merge(&ring);
                        if n.owned() != before {
                            // Taking a dead peer's pieces is our own change: persisted.
                            self.persist(*a);
                        }
                    }
                }
            }
        }
    }

    fn allocate(&mut self, p: Peer) {
        let result = self.nodes.get_mut(&p).unwrap().allocate();
        match result {
            Ok(_) => {
                self.allocations += 1;
                self.persist(p);
            }
            Err(NoAddress::NoSpace) => {
                // Ask the peer on our side with the most free space, as meshd does.
                let donor = self
                    .alive()
                    .into_iter()
                    .filter(|d| *d != p && self.side[d] == self.side[&p])
                    .max_by_key(|d| self.nodes[d].free_count());
                if let Some(d) = donor
                    && self.nodes.get_mut(&d).unwrap().donate(p)
                {
                    self.donations += 1;
                    self.persist(d);
                    let ring = self.nodes[&d].ring.clone();
                    let n = self.nodes.get_mut(&p).unwrap();
                    n.merge(&ring);
                    if n.allocate().is_ok() {
                        self.allocations += 1;
                    }
                    self.persist(p);
                } else {
                    let side_free: u32 = self
                        .alive()
                        .iter()
                        .filter(|d| self.side[*d] == self.side[&p])
                        .map(|d| self.nodes[d].free_count())
                        .sum();
                    if side_free > 0 {
                        self.failed_with_space_on_our_side += 1;
                    }
                }
            }
            Err(NoAddress::Tombstoned) => panic!("{p:?} was tombstoned while alive"),
        }
    }

    fn release(&mut self, p: Peer) {
        let held: Vec<u32> = self.nodes[&p].allocated.iter().copied().collect();
        if !held.is_empty() {
            let a = held[self.rng.below(held.len() as u64) as usize];
            self.nodes.get_mut(&p).unwrap().release(a);
            self.persist(p);
        }
    }

    /// No address held twice, no address believed owned twice, among living peers.
    fn check(&self, step: usize) {
        let mut held: BTreeMap<u32, Peer> = BTreeMap::new();
        let mut owned: BTreeMap<u32, Peer> = BTreeMap::new();
        for p in self.alive() {
            let n = &self.nodes[&p];
            for a in &n.allocated {
                if let Some(q) = held.insert(*a, p) {
                    panic!("step {step}: address {a} held by {q:?} and {p:?}");
                }
            }
            for (s, e) in n.owned() {
                for a in s..e {
                    if let Some(q) = owned.insert(a, p) {
                        panic!("step {step}: address {a} owned by {q:?} and {p:?}");
                    }
                }
            }
            // Ownership leaves a peer only by its own donation, of free addresses: what it
            // handed out stays inside what it owns.
            let mine = n.owned();
            for a in &n.allocated {
                assert!(
                    mine.iter().any(|(s, e)| (*s..*e).contains(a)),
                    "step {step}: {p:?} holds {a} outside what it owns"
                );
            }
        }
    }

    fn run(&mut self, steps: usize, partitions: bool, deaths: bool) {
        for step in 0..steps {
            match self.rng.below(100) {
                0..=59 => {
                    let p = self.pick();
                    self.allocate(p);
                }
                60..=84 => {
                    let p = self.pick();
                    self.release(p);
                }
                85..=89 if partitions => {
                    // A new split: each living peer on side 0 or 1; or healed.
                    let heal = self.rng.below(3) == 0;
                    for p in self.alive() {
                        let s = if heal { 0 } else { self.rng.below(2) as u8 };
                        self.side.insert(p, s);
                    }
                }
                90..=93 => {
                    // A restart: back to what it persisted (its view since then is lost).
                    let p = self.pick();
                    let saved = self.disk[&p].clone();
                    self.nodes.insert(p, saved);
                }
                94..=95 if deaths && self.alive().len() > 3 => {
                    // A peer dies; an operator on a living peer of *each* side declares it dead
                    // (two reclaims at once, each side unaware of the other's: Weave's
                    // `rmpeer` on two hosts).
                    let p = self.pick();
                    self.killed.push(p);
                    self.deaths += 1;
                    for s in [0u8, 1] {
                        let on_side: Vec<Peer> = self
                            .alive()
                            .into_iter()
                            .filter(|q| self.side[q] == s)
                            .collect();
                        if !on_side.is_empty() {
                            let q = on_side[self.rng.below(on_side.len() as u64) as usize];
                            self.nodes.get_mut(&q).unwrap().tombstone(p);
                            self.persist(q);
                        }
                    }
                }
                _ => {}
            }
            self.gossip();
            self.check(step);
        }
    }
}

#[test]
fn thousands_of_allocations_under_partitions_restarts_and_deaths_never_duplicate() {
    for seed in 1..=6u64 {
        let mut sim = Sim::new(seed * 7919, 10, 512);
        sim.run(1500, true, true);
        assert!(
            sim.allocations > 500 && sim.donations >= 10 && sim.deaths >= 3,
            "seed {seed}: the run exercised too little: {} allocations, {} donations, {} deaths",
            sim.allocations,
            sim.donations,
            sim.deaths
        );
        // Healed and settled: the dead peers' space is back with living peers (unless a dead
        // peer's whole chain of heirs is dead too).
        for p in sim.alive() {
            sim.side.insert(p, 0);
        }
        for _ in 0..3 {
            sim.gossip();
        }
        sim.check(usize::MAX);
        let view = &sim.nodes[&sim.alive()[0]].ring;
        for (s, e, t) in view.pieces() {
            assert!(
                !sim.killed.contains(&t.owner) || view.responsible_for(t.owner).is_none(),
                "seed {seed}: {s}..{e} is still the dead {:?}'s",
                t.owner
            );
        }
    }
}

#[test]
fn three_peers_allocate_300_concurrently_without_duplicates() {
    let mut sim = Sim::new(42, 3, 1024);
    // No releases: every allocation stays, so 300 distinct addresses are in use at the end.
    let mut done = 0;
    while done < 300 {
        let p = sim.pick();
        let before = sim.allocations;
        sim.allocate(p);
        done += (sim.allocations - before) as usize;
        sim.gossip();
        sim.check(done);
    }
    let total: usize = sim.nodes.values().map(|n| n.allocated.len()).sum();
    assert_eq!(total, 300);
}

#[test]
fn a_partitioned_half_keeps_allocating_and_the_healed_mesh_has_no_duplicates() {
    let mut sim = Sim::new(7, 6, 1024);
    // Everyone gets space first.
    for _ in 0..60 {
        let p = sim.pick();
        sim.allocate(p);
        sim.gossip();
    }
    for p in sim.alive() {
        sim.side.insert(p, (p.0 % 2) as u8);
    }
    let before = sim.allocations;
    for step in 0..400 {
        let p = sim.pick();
        sim.allocate(p);
        sim.gossip();
        sim.check(step);
    }
    assert!(sim.allocations - before > 300, "both halves allocated");
    assert_eq!(
        sim.failed_with_space_on_our_side, 0,
        "no side stalled while it had space"
    );
    for p in sim.alive() {
        sim.side.insert(p, 0);
    }
    sim.gossip();
    sim.check(usize::MAX);
}

#[test]
fn a_dead_peers_addresses_come_back_through_its_heir() {
    let mut sim = Sim::new(11, 4, 256);
    for _ in 0..100 {
        let p = sim.pick();
        sim.allocate(p);
        sim.gossip();
    }
    let victim = Peer(3);
    let held_space = sim.nodes[&victim].owned();
    assert!(!held_space.is_empty(), "the victim owned space");
    sim.killed.push(victim);
    sim.nodes.get_mut(&Peer(1)).unwrap().tombstone(victim);
    sim.gossip();
    sim.check(0);
    // Its whole range is owned by living peers again, and usable.
    for (s, e) in held_space {
        for a in s..e {
            assert!(
                sim.alive().iter().any(|p| sim.nodes[p]
                    .owned()
                    .iter()
                    .any(|(s, e)| (*s..*e).contains(&a))),
                "address {a} of the dead peer is owned by nobody alive"
            );
        }
    }
}
