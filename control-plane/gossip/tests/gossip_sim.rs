//! The gossip state machine driven in-process: convergence, failures, partitions, restarts,
//! ageing, and agreement of routes. No I/O, virtual time.

use std::collections::BTreeSet;

use mesh_gossip::{
    Gossip, PeerId,
    sim::{self, ROUND_MS, Sim},
};

#[test]
fn a_thousand_peers_converge_in_logarithmic_rounds_with_bounded_bytes() {
    let r = sim::run(1000, 2, 7).expect("the simulation converges");
    println!("{r:?}");
    // The simulation is deterministic (seeded graph, no clock), so these bounds are the
    // measured figures with a little room, not guesses: a random graph of 1000 peers with
    // degree ~6 has a diameter of 5-7 hops, and flooding converges in 7 rounds (6 after the
    // best-connected peer dies). A protocol that floods in loops or replays old versions
    // blows through these.
    assert!(r.rounds_to_converge <= 8, "{r:?}");
    assert!(r.rounds_to_reconverge_after_failure <= 8, "{r:?}");
    // Each peer's entry (~100 bytes, plus a 44-byte key and a 64-byte signature) reaches each
    // peer over a handful of links: measured 1036 KiB per peer on average, 2028 KiB at most
    // (docs/architecture.md).
    assert!(r.bytes_per_peer_mean < 1.1 * 1024.0 * 1024.0, "{r:?}");
    assert!(r.bytes_per_peer_max < 2_200_000, "{r:?}");
}

#[test]
fn both_ends_of_one_link_learn_each_other() {
    let mut sim = Sim::new(2, &BTreeSet::from([(0, 1)]));
    assert!(sim.run_until_converged(10).is_some());
    let a = sim.nodes[0].as_mut().unwrap();
    assert_eq!(a.entries().len(), 2);
    assert_eq!(a.routes().next_hop[&Sim::peer_id(1)], Sim::peer_id(1));
}

#[test]
fn a_dead_peer_is_routed_around() {
    // A line 0-1-2 plus a detour 0-3-4-2.
    let edges = BTreeSet::from([(0, 1), (1, 2), (0, 3), (3, 4), (2, 4)]);
    let mut sim = Sim::new(5, &edges);
    sim.run_until_converged(50).unwrap();
    assert_eq!(
        sim.nodes[0].as_mut().unwrap().routes().next_hop[&Sim::peer_id(2)],
        Sim::peer_id(1)
    );
    sim.kill(1);
    sim.run_until_converged(50).unwrap();
    let r = sim.nodes[0].as_mut().unwrap().routes().clone();
    assert_eq!(r.next_hop[&Sim::peer_id(2)], Sim::peer_id(3));
    assert!(
        !r.next_hop.contains_key(&Sim::peer_id(1)),
        "dead peer still routed"
    );
}

#[test]
fn partitioned_halves_stay_consistent_and_heal() {
    let edges = sim::random_graph(40, 2, 3);
    let mut sim = Sim::new(40, &edges);
    sim.run_until_converged(100).unwrap();
    let half = |i: usize| i < 20;
    let cross: Vec<(usize, usize)> = edges
        .iter()
        .copied()
        .filter(|(a, b)| half(*a) != half(*b))
        .collect();
    for &(a, b) in &cross {
        sim.nodes[a].as_mut().unwrap().link_down(Sim::peer_id(b), 0);
        sim.nodes[b].as_mut().unwrap().link_down(Sim::peer_id(a), 0);
    }
    for _ in 0..50 {
        sim.round();
    }
    // Each half agrees with itself, and sees none of the other half as reachable.
    for side in [0..20, 20..40] {
        let digests: BTreeSet<_> = side
            .clone()
            .map(|i| sim.nodes[i].as_ref().unwrap().digest())
            .collect();
        assert_eq!(digests.len(), 1, "a half disagrees with itself");
        let i = side.start;
        let routes = sim.nodes[i].as_mut().unwrap().routes().clone();
        for j in 0..40 {
            assert_eq!(
                routes.hops.contains_key(&Sim::peer_id(j)),
                half(i) == half(j),
                "peer {i} -> {j}"
            );
        }
    }
    for &(a, b) in &cross {
        sim.nodes[a]
            .as_mut()
            .unwrap()
            .link_up(Sim::peer_id(b), None, 0);
        sim.nodes[b]
            .as_mut()
            .unwrap()
            .link_up(Sim::peer_id(a), None, 0);
    }
    let rounds = sim.run_until_converged(100).expect("healed mesh converges");
    assert!(rounds <= 20, "took {rounds} rounds");
    let routes = sim.nodes[0].as_mut().unwrap().routes().clone();
    assert_eq!(routes.hops.len(), 40);
}

#[test]
fn broadcast_trees_agree_across_a_converged_mesh() {
    let edges = sim::random_graph(60, 2, 11);
    let mut sim = Sim::new(60, &edges);
    sim.run_until_converged(100).unwrap();
    let all: Vec<_> = (0..60)
        .map(|i| sim.nodes[i].as_mut().unwrap().routes().clone())
        .collect();
    let index = |p: PeerId| (0..60).find(|&i| Sim::peer_id(i) == p).unwrap();
    for s in 0..60 {
        let source = Sim::peer_id(s);
        let mut reached = vec![s];
        let mut k = 0;
        while k < reached.len() {
            for c in &all[reached[k]].broadcast[&source] {
                let c = index(*c);
                assert!(
                    !reached.contains(&c),
                    "broadcast from {s} reaches {c} twice"
                );
                reached.push(c);
            }
            k += 1;
        }
        assert_eq!(reached.len(), 60, "broadcast from {s} misses peers");
    }
}

#[test]
fn a_restarted_peer_supersedes_its_old_entry() {
    let cfg = mesh_gossip::sim::config();
    let (a, b) = (PeerId(1), PeerId(2));
    let mut ga = Gossip::new(a, "a", vec![], 1_000, cfg.clone());
    let mut gb = Gossip::new(b, "b", vec![], 1_000, cfg.clone());
    let exchange = |x: &mut Gossip, y: &mut Gossip, now| {
        for _ in 0..5 {
            for (_, m) in x.take_outbox() {
                y.receive(x.me(), m, now);
            }
            for (_, m) in y.take_outbox() {
                x.receive(y.me(), m, now);
            }
        }
    };
    ga.link_up(b, None, 1_000);
    gb.link_up(a, None, 1_000);
    exchange(&mut ga, &mut gb, 1_000);
    let old = gb.entries()[&a].version;
    // `a` restarts with a clock behind its previous versions and meets b again.
    let mut ga = Gossip::new(a, "a", vec!["198.18.0.1:6783".into()], 10, cfg);
    ga.link_up(b, None, 10);
    gb.link_down(a, 2_000);
    gb.link_up(a, None, 2_000);
    exchange(&mut ga, &mut gb, 2_000);
    assert!(gb.entries()[&a].version > old);
    assert_eq!(
        gb.entries()[&a].addresses,
        vec!["198.18.0.1:6783".to_string()]
    );
    assert_eq!(ga.digest(), gb.digest());
}

#[test]
fn our_own_entry_coming_back_is_not_news() {
    // a pushes its entry to b and c at once; c hears it from b first (a race that load makes
    // common) and passes it back to a. Before, a took that for an older incarnation of itself,
    // made a new version, flooded it, got it back... the idle storm of issue 10.
    let cfg = sim::config();
    let (a, b, c) = (PeerId(1), PeerId(2), PeerId(3));
    let mut ga = Gossip::new(a, "a", vec![], 1_000, cfg.clone());
    let mut gb = Gossip::new(b, "b", vec![], 1_000, cfg.clone());
    ga.link_up(b, None, 1_000);
    gb.link_up(a, None, 1_000);
    ga.link_up(c, None, 1_000);
    gb.link_up(c, None, 1_000);
    for (_, m) in ga.take_outbox() {
        gb.receive(a, m, 1_000);
    }
    let own = ga.entries()[&a].clone();
    assert_eq!(gb.entries()[&a], own);
    let generation = ga.generation();
    // c passes it back as it heard it.
    ga.receive(
        c,
        mesh_gossip::GossipMessage {
            kind: Some(mesh_proto::v1::gossip_message::Kind::Update(
                mesh_proto::v1::Update {
                    entries: vec![own.clone()],
                },
            )),
        },
        1_001,
    );
    assert_eq!(ga.entries()[&a], own, "our entry stays as it was");
    assert_eq!(ga.generation(), generation, "nothing changed");
    assert!(
        ga.take_outbox().is_empty(),
        "nothing to flood: {:?}",
        ga.entries()[&a].version
    );
}

#[test]
fn departed_peers_age_out_and_do_not_come_back() {
    let edges = BTreeSet::from([(0, 1), (1, 2)]);
    let mut sim = Sim::new(3, &edges);
    sim.run_until_converged(20).unwrap();
    sim.kill(2);
    // Ageing runs once per anti-entropy period, so allow two of those on top of the timeout.
    let cfg = mesh_gossip::sim::config();
    let departed_rounds = (cfg.departed_after_ms + 2 * cfg.anti_entropy_ms) / ROUND_MS;
    for _ in 0..departed_rounds {
        sim.round();
    }
    for i in 0..2 {
        assert!(
            !sim.nodes[i]
                .as_ref()
                .unwrap()
                .entries()
                .contains_key(&Sim::peer_id(2)),
            "peer {i} still lists the departed peer"
        );
    }
    // Anti-entropy between the survivors keeps it gone.
    for _ in 0..50 {
        sim.round();
    }
    assert!(
        !sim.nodes[0]
            .as_ref()
            .unwrap()
            .entries()
            .contains_key(&Sim::peer_id(2))
    );
}

#[test]
fn two_peers_claiming_one_short_id_end_with_distinct_ones_agreed_by_both() {
    // Same low 24 bits: the same first short id candidate.
    let (a_id, b_id) = (PeerId(0x1111_0000_00ab_cdef), PeerId(0x2222_0000_00ab_cdef));
    let cfg = mesh_gossip::sim::config();
    let mut a = Gossip::new(a_id, "a", vec![], 0, cfg.clone());
    let mut b = Gossip::new(b_id, "b", vec![], 0, cfg);
    assert_eq!(a.short_id(a_id), b.short_id(b_id));
    a.link_up(b_id, None, 0);
    b.link_up(a_id, None, 0);
    for now in 1..20 {
        for (_, msg) in a.take_outbox() {
            b.receive(a_id, msg, now);
        }
        for (_, msg) in b.take_outbox() {
            a.receive(b_id, msg, now);
        }
    }
    // The lower peer id keeps its short id; the other moved, and both know both.
    assert_eq!(a.short_id(a_id), 0xab_cdef);
    assert_ne!(b.short_id(b_id), 0xab_cdef);
    for g in [&a, &b] {
        assert_eq!(g.short_id(a_id), a.short_id(a_id));
        assert_eq!(g.short_id(b_id), b.short_id(b_id));
    }
    assert!(b.short_id(b_id) != 0 && b.short_id(b_id) != mesh_gossip::SHORT_ID_FLOOD);
}
