//! A member that lies in gossip: another peer's entry, versions from the far future, the flood
//! id or another peer's short id as its own, oversize entries, and more entries than a mesh
//! has. Each is refused, counted, and changes nothing honest peers hold; nothing panics (no
//! `v + 1` overflow). Signatures here are the checksum stand-in (`sign::Checksum`); meshd's
//! real ones are tested in `mesh::entry_sign`.

use mesh_gossip::{
    Config, EntryAuth, Gossip, GossipMessage, Limits, PeerEntry, PeerId, limits::MESSAGE_BUDGET,
    sign::Checksum,
};
use mesh_proto::{
    Message,
    v1::{Update, gossip_message},
};

const NOW: u64 = 1_000_000;

fn update(entries: Vec<PeerEntry>) -> GossipMessage {
    GossipMessage {
        kind: Some(gossip_message::Kind::Update(Update { entries })),
    }
}

/// An entry as its owner makes it: signed.
fn entry(id: u64, version: u64) -> PeerEntry {
    signed(PeerEntry {
        id,
        name: format!("p{id}"),
        version,
        links: vec![],
        addresses: vec![],
        short_id: (id & 0xff_ffff) as u32,
        signature: None,
        networks: Vec::new(),
        networks_in_use: Vec::new(),
        rings: Vec::new(),
        wants_space: Vec::new(),
    })
}

fn signed(mut e: PeerEntry) -> PeerEntry {
    Checksum.sign(&mut e);
    e
}

fn refused(g: &Gossip, reason: &str) -> u64 {
    g.refusals()
        .into_iter()
        .find(|(n, _)| *n == reason)
        .map(|(_, v)| v)
        .unwrap()
}

#[test]
fn lies_are_refused_counted_and_change_nothing() {
    let (me, honest, liar) = (PeerId(1), PeerId(2), PeerId(3));
    let mut g = Gossip::new(me, "me", vec![], NOW, mesh_gossip::sim::config());
    g.link_up(liar, None, NOW);
    g.receive(liar, update(vec![entry(honest.0, NOW)]), NOW);
    let honest_entry = g.entries()[&honest].clone();
    let generation = g.generation();

    // Another peer's entry pushed to u64::MAX would freeze it forever.
    g.receive(liar, update(vec![entry(honest.0, u64::MAX)]), NOW);
    // Our own entry at u64::MAX: `v + 1` overflowed here before.
    g.receive(liar, update(vec![entry(me.0, u64::MAX)]), NOW);
    // The flood id as a short id.
    let mut flood = entry(honest.0, NOW + 1);
    flood.short_id = 0x00ff_ffff;
    g.receive(liar, update(vec![signed(flood)]), NOW);
    // Another peer's short id, or any other it cannot derive from its own id.
    let mut foreign = entry(liar.0, NOW + 1);
    foreign.short_id = (honest.0 & 0xff_ffff) as u32;
    g.receive(liar, update(vec![signed(foreign)]), NOW);
    // An oversize entry (a name of a megabyte).
    let mut big = entry(honest.0, NOW + 2);
    big.name = "x".repeat(1 << 20);
    g.receive(liar, update(vec![signed(big)]), NOW);
    // The honest peer's entry, changed: links to the liar (to route through it) and no
    // addresses. Once with the old signature, once unsigned, once "signed" as the liar.
    let mut forged = entry(honest.0, NOW + 3);
    forged.links = vec![mesh_proto::v1::Link {
        peer: liar.0,
        ..Default::default()
    }];
    forged.addresses.clear();
    let mut unsigned = forged.clone();
    unsigned.signature = None;
    let mut as_liar = forged.clone();
    as_liar.signature = entry(liar.0, NOW + 3).signature;
    g.receive(liar, update(vec![forged, unsigned, as_liar]), NOW);

    assert_eq!(
        g.entries()[&honest],
        honest_entry,
        "the honest entry stands"
    );
    assert_eq!(g.entries()[&me].version, NOW + 1, "our version stayed ours");
    assert_eq!(g.generation(), generation, "nothing changed");
    assert_eq!(refused(&g, "gossip_refused_future_version"), 2);
    assert_eq!(refused(&g, "gossip_refused_reserved_short_id"), 1);
    assert_eq!(refused(&g, "gossip_refused_foreign_short_id"), 1);
    assert_eq!(refused(&g, "gossip_refused_oversize"), 1);
    assert_eq!(refused(&g, "gossip_refused_bad_signature"), 3);
    // Our own entry forged with a version just ahead does not make us move either.
    let mut own = entry(me.0, NOW + 100);
    own.signature = entry(liar.0, NOW + 100).signature;
    g.receive(liar, update(vec![own]), NOW);
    assert_eq!(g.entries()[&me].version, NOW + 1);
    assert_eq!(refused(&g, "gossip_refused_bad_signature"), 4);
    // A version a little ahead (a clock that runs fast) is still taken.
    g.receive(liar, update(vec![entry(honest.0, NOW + 60_000)]), NOW);
    assert_eq!(g.entries()[&honest].version, NOW + 60_000);
}

#[test]
fn the_number_of_entries_is_bounded() {
    let cfg = Config {
        limits: Limits {
            max_entries: 10,
            ..Limits::default()
        },
        ..mesh_gossip::sim::config()
    };
    let (me, liar) = (PeerId(1), PeerId(2));
    let mut g = Gossip::new(me, "me", vec![], NOW, cfg);
    g.link_up(liar, None, NOW);
    let invented: Vec<PeerEntry> = (100..200).map(|id| entry(id, NOW)).collect();
    g.receive(liar, update(invented), NOW);
    assert_eq!(g.entries().len(), 10);
    // Ours and 9 invented ones fill the 10 places; the other 91 are refused.
    assert_eq!(refused(&g, "gossip_refused_too_many_entries"), 91);
}

#[test]
fn a_full_state_travels_in_messages_under_the_frame_limit() {
    let (me, a, b) = (PeerId(1), PeerId(2), PeerId(3));
    let mut g = Gossip::new(me, "me", vec![], NOW, mesh_gossip::sim::config());
    g.link_up(a, None, NOW);
    let l = Limits::default();
    // 3000 entries at the size limit: far more than one 8 MiB frame.
    let fat: Vec<PeerEntry> = (100..3100)
        .map(|id| {
            signed(PeerEntry {
                name: "n".repeat(l.max_name_bytes),
                addresses: vec!["a".repeat(l.max_address_bytes); l.max_addresses],
                ..entry(id, NOW)
            })
        })
        .collect();
    g.receive(a, update(fat), NOW);
    g.take_outbox();
    // A new neighbour gets the full state.
    g.link_up(b, None, NOW + 1);
    let out = g.take_outbox();
    let to_b: Vec<&GossipMessage> = out
        .iter()
        .filter(|(p, _)| *p == b)
        .map(|(_, m)| m)
        .collect();
    assert!(to_b.len() > 1);
    let mut total = 0;
    for m in to_b {
        assert!(m.encoded_len() <= MESSAGE_BUDGET + 64);
        if let Some(gossip_message::Kind::Update(u)) = &m.kind {
            total += u.entries.len();
        }
    }
    assert_eq!(total, 3001, "every entry, ours included");
}
