//! A member that lies (tests/src/bin/rogue-member.rs: it holds the password and joins like any
//! meshd) forges an honest peer's entry, inflates versions to `u64::MAX`, claims the flood id
//! and an honest peer's short id, and sends an oversize entry. The honest peers' routes and
//! short ids stay as they were, nothing panics, traffic keeps flowing, every lie is refused and
//! counted in `meshctl status --json` where it arrived, and none is passed on.

use std::{collections::BTreeSet, time::Duration};

use mesh_tests::{
    Lab, bins,
    mesh::{Meshd, full_mesh, meshctl_json, peer, pings, start_mesh_in, status, status_counter},
    wait_until,
};
use serde_json::{Value, json};

const HONEST: [&str; 3] = ["ra", "rb", "rc"];

/// `node`'s routes among honest peers only (the rogue joins as a leaf, and its own rows come
/// and go with it).
fn honest_routes(node: &Meshd) -> Value {
    let r = meshctl_json(node, &["routes"]).unwrap();
    let honest = |v: &Value| HONEST.contains(&v.as_str().unwrap_or(""));
    let unicast: Vec<Value> = r["unicast"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| honest(&u["destination"]))
        .cloned()
        .collect();
    let broadcast: Vec<Value> = r["broadcast"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| honest(&b["source"]))
        .map(|b| {
            let hops: Vec<&Value> = b["next_hops"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| honest(h))
                .collect();
            json!({"source": b["source"], "next_hops": hops})
        })
        .collect();
    json!({"unicast": unicast, "broadcast": broadcast})
}

fn short_id(node: &Meshd) -> String {
    status(node).unwrap()["short_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn refused(node: &Meshd, reason: &str) -> u64 {
    status_counter(node, "gossip_counters", &format!("gossip_refused_{reason}"))
}

const REASONS: [&str; 5] = [
    "bad_signature",
    "future_version",
    "reserved_short_id",
    "foreign_short_id",
    "oversize",
];

#[test]
fn a_lying_member_changes_no_honest_route_or_short_id_and_is_counted() {
    let mut lab = Lab::new("rogue").unwrap();
    let hosts: Vec<_> = HONEST.iter().map(|n| lab.add_host(n).unwrap()).collect();
    let rogue_host = lab.add_host("rx").unwrap();
    let ca = lab
        .add_container(&hosts[0], "rca", Some("10.51.0.1/24"))
        .unwrap();
    let cc = lab
        .add_container(&hosts[2], "rcc", Some("10.51.0.3/24"))
        .unwrap();
    let nodes = start_mesh_in(&mut lab, &hosts, mesh_tests::mesh::Mode::TapSealed).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    assert!(wait_until(Duration::from_secs(15), || pings(
        &lab, &ca, &cc
    )));
    let routes_before: Vec<Value> = nodes.iter().map(honest_routes).collect();
    let ids_before: Vec<String> = nodes.iter().map(short_id).collect();
    assert_eq!(
        ids_before.iter().collect::<BTreeSet<_>>().len(),
        3,
        "{ids_before:?}"
    );
    for n in &nodes {
        for r in REASONS {
            assert_eq!(
                refused(n, r),
                0,
                "{} refused {r} before the rogue",
                n.host.name
            );
        }
    }

    // The rogue joins ra with the mesh's password and lies about rc.
    let pw = lab.dir().join("pw.password");
    let rogue_state = lab.dir().join("rogue-state");
    let rogue = lab
        .spawn(
            &rogue_host.ns,
            &bins::path("rogue-member").unwrap(),
            &[
                &format!("{}:6783", hosts[0].addr),
                pw.to_str().unwrap(),
                rogue_state.to_str().unwrap(),
                "rc",
                "120",
            ],
        )
        .unwrap();
    // Its last message is a valid entry named rogue-done: once rb and rc list it (ra passed
    // it on; ra itself names its neighbour by its hello, "rogue"), everything the rogue sent
    // before it has been processed.
    let listed = wait_until(Duration::from_secs(30), || {
        peer(&nodes[0], "rogue").is_some()
            && nodes[1..].iter().all(|n| peer(n, "rogue-done").is_some())
    });
    let log = lab.log(rogue);
    assert!(listed, "the rogue's valid entry never arrived: {log}");
    assert!(
        log.contains("own_oversize"),
        "the rogue sent its lies: {log}"
    );

    // Every lie was refused and counted where it arrived (ra): two forgeries of rc's entry,
    // two versions at u64::MAX, the flood id, rc's short id, one oversize entry...
    let counts: Vec<(&str, u64)> = REASONS
        .iter()
        .map(|r| (*r, refused(&nodes[0], r)))
        .collect();
    println!("refused at ra: {counts:?}");
    assert_eq!(
        counts,
        vec![
            ("bad_signature", 2),
            ("future_version", 2),
            ("reserved_short_id", 1),
            ("foreign_short_id", 1),
            ("oversize", 1),
        ]
    );
    // ...and passed on to nobody.
    for n in &nodes[1..] {
        for r in REASONS {
            assert_eq!(refused(n, r), 0, "{} saw a lie ({r})", n.host.name);
        }
    }
    // Honest routes and short ids are as they were; everybody is up and the mesh carries
    // traffic between the hosts whose entry was forged and the one it was sent to.
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(
            honest_routes(n),
            routes_before[i],
            "{}'s routes",
            n.host.name
        );
        assert_eq!(short_id(n), ids_before[i], "{}'s short id", n.host.name);
        assert!(lab.is_running(n.proc), "{} is running", n.host.name);
    }
    assert!(full_mesh(&nodes));
    assert!(pings(&lab, &ca, &cc));
    assert!(pings(&lab, &cc, &ca));
    lab.kill(rogue).unwrap();
}
