//! In-process simulation of a whole mesh of [`Gossip`] state machines, with synchronous rounds
//! (every message sent in a round arrives in the next; a round is 100 ms of virtual time). It
//! measures what the design promises: rounds to converge (O(log N) on a random graph) and the
//! messages and bytes each peer sends.

use std::collections::BTreeSet;

use mesh_proto::Message;

use crate::{Config, Gossip, GossipMessage, PeerId};

/// Virtual milliseconds per round.
pub const ROUND_MS: u64 = 100;

#[derive(Clone, Debug, PartialEq)]
pub struct SimReport {
    pub peers: usize,
    pub links: usize,
    /// Rounds until every peer held the same topology, starting from nothing.
    pub rounds_to_converge: u32,
    /// Rounds until the survivors agreed again after one well-connected peer died.
    pub rounds_to_reconverge_after_failure: u32,
    pub messages_per_peer_mean: f64,
    pub messages_per_peer_max: u64,
    pub bytes_per_peer_mean: f64,
    pub bytes_per_peer_max: u64,
}

/// xorshift64*: a small deterministic generator, so a seed always gives the same graph.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

/// A random connected graph: a ring plus `extra` random links per peer.
pub fn random_graph(peers: usize, extra: usize, seed: u64) -> BTreeSet<(usize, usize)> {
    let mut rng = Rng(seed | 1);
    let mut edges = BTreeSet::new();
    for i in 0..peers {
        let j = (i + 1) % peers;
        if i != j {
            edges.insert((i.min(j), i.max(j)));
        }
        for _ in 0..extra {
            let j = rng.below(peers);
            if i != j {
                edges.insert((i.min(j), i.max(j)));
            }
        }
    }
    edges
}

/// The gossip configuration of simulated peers: the defaults, with the checksum stand-in for
/// signatures (the same size as Ed25519's, a fraction of the cost).
pub fn config() -> Config {
    Config::new(std::sync::Arc::new(crate::sign::Checksum))
}

pub struct Sim {
    pub nodes: Vec<Option<Gossip>>,
    now: u64,
    in_flight: Vec<(usize, usize, GossipMessage)>,
    pub sent_messages: Vec<u64>,
    pub sent_bytes: Vec<u64>,
}

fn id(i: usize) -> PeerId {
    // Spread ids so that id order is not index order (ties are broken by id).
    PeerId((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

impl Sim {
    /// Starts `peers` peers and brings up every link of `edges` at time zero.
    pub fn new(peers: usize, edges: &BTreeSet<(usize, usize)>) -> Sim {
        let cfg = config();
        let mut nodes: Vec<Option<Gossip>> = (0..peers)
            .map(|i| Some(Gossip::new(id(i), &format!("p{i}"), vec![], 0, cfg.clone())))
            .collect();
        for &(a, b) in edges {
            nodes[a].as_mut().expect("alive").link_up(id(b), None, 0);
            nodes[b].as_mut().expect("alive").link_up(id(a), None, 0);
        }
        let mut sim = Sim {
            nodes,
            now: 0,
            in_flight: Vec::new(),
            sent_messages: vec![0; peers],
            sent_bytes: vec![0; peers],
        };
        sim.collect();
        sim
    }

    fn index(&self, p: PeerId) -> usize {
        // Ids are a bijection of indices; invert by search (only used for delivery setup).
        (0..self.nodes.len())
            .find(|&i| id(i) == p)
            .expect("known peer")
    }

    fn collect(&mut self) {
        let mut index_of = std::collections::HashMap::new();
        for i in 0..self.nodes.len() {
            index_of.insert(id(i), i);
        }
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let Some(g) = node else { continue };
            for (to, msg) in g.take_outbox() {
                self.sent_messages[i] += 1;
                self.sent_bytes[i] += msg.encoded_len() as u64;
                self.in_flight.push((i, index_of[&to], msg));
            }
        }
    }

    /// Delivers everything in flight, advances time by one round, ticks every peer.
    pub fn round(&mut self) {
        self.now += ROUND_MS;
        for (from, to, msg) in std::mem::take(&mut self.in_flight) {
            if let Some(g) = self.nodes[to].as_mut() {
                g.receive(id(from), msg, self.now);
            }
        }
        for g in self.nodes.iter_mut().flatten() {
            g.tick(self.now);
        }
        self.collect();
    }

    /// Whether every live peer holds the same topology.
    pub fn converged(&self) -> bool {
        let mut live = self.nodes.iter().flatten();
        let Some(first) = live.next() else {
            return true;
        };
        let d = first.digest();
        live.all(|g| g.digest() == d)
    }

    /// Runs rounds until converged (or `max` rounds); returns the rounds it took.
    pub fn run_until_converged(&mut self, max: u32) -> Option<u32> {
        for r in 1..=max {
            self.round();
            if self.converged() {
                return Some(r);
            }
        }
        None
    }

    /// Peer `i` dies: its neighbours see their links go down.
    pub fn kill(&mut self, i: usize) {
        let Some(dead) = self.nodes[i].take() else {
            return;
        };
        for n in dead.neighbours().clone() {
            let j = self.index(n);
            if let Some(g) = self.nodes[j].as_mut() {
                g.link_down(id(i), self.now);
            }
        }
        self.in_flight
            .retain(|(from, to, _)| *from != i && *to != i);
        self.collect();
    }

    pub fn peer_id(i: usize) -> PeerId {
        id(i)
    }
}

/// The standard scenario: `peers` peers on a random graph converge from nothing; then the
/// best-connected peer dies and the rest converge again.
pub fn run(peers: usize, extra_links: usize, seed: u64) -> Option<SimReport> {
    let edges = random_graph(peers, extra_links, seed);
    let mut sim = Sim::new(peers, &edges);
    let rounds_to_converge = sim.run_until_converged(1_000)?;
    let hub = (0..peers)
        .max_by_key(|&i| edges.iter().filter(|(a, b)| *a == i || *b == i).count())
        .expect("at least one peer");
    sim.kill(hub);
    let rounds_to_reconverge_after_failure = sim.run_until_converged(1_000)?;
    let n = peers as f64;
    Some(SimReport {
        peers,
        links: edges.len(),
        rounds_to_converge,
        rounds_to_reconverge_after_failure,
        messages_per_peer_mean: sim.sent_messages.iter().sum::<u64>() as f64 / n,
        messages_per_peer_max: *sim.sent_messages.iter().max().unwrap_or(&0),
        bytes_per_peer_mean: sim.sent_bytes.iter().sum::<u64>() as f64 / n,
        bytes_per_peer_max: *sim.sent_bytes.iter().max().unwrap_or(&0),
    })
}
