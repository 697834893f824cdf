//! `--trusted-subnets`: in an authenticated mesh, a link whose two ends each see the other
//! inside their trusted subnets carries data frames unsealed — through the kernel datapath
//! where both run it — while every other link stays sealed in meshd.

use std::{net::UdpSocket, time::Duration};

use mesh_tests::{
    Lab,
    mesh::{Meshd, full_mesh, kernel_counter, peer, pings, tcp_transfer, udp_listener},
    netns, pcap, wait_until,
};

const MARKER: &str = "MESH-TRUSTED-7d31";
const PORT: u16 = 7300;

/// Where a readable marker starts in a captured datagram's payload, if one is there.
fn marker_at(payload: &[u8]) -> Option<usize> {
    payload
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())
}

/// (encrypted, datapath) of `node`'s link to `other`.
fn link(node: &Meshd, other: &str) -> (bool, String) {
    let p = peer(node, other).unwrap_or_default();
    (
        p["encrypted"].as_bool().unwrap_or(true),
        p["datapath"].as_str().unwrap_or("").to_owned(),
    )
}

#[test]
fn only_links_both_ends_trust_go_unsealed_and_through_the_kernel() {
    let mut lab = Lab::new("trusted").unwrap();
    let hosts = [
        lab.add_host("t1").unwrap(),
        lab.add_host("t2").unwrap(),
        lab.add_host("t3").unwrap(),
    ];
    let [h1, h2, h3] = &hosts;
    let c: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let cidr = format!("10.49.0.{}/24", i + 1);
            lab.add_container(h, &format!("tc{}", i + 1), Some(&cidr))
                .unwrap()
        })
        .collect();
    let pw = lab.password_file("pw", "trusted subnets").unwrap();
    let pw = pw.to_str().unwrap().to_owned();
    // t1 trusts t2; t2 trusts t1 and t3; t3 trusts nobody. Only t1-t2 is trusted both ways.
    let t1_trusts = format!("{}/32", h2.addr);
    let t2_trusts = format!("{}/32,{}/32", h1.addr, h3.addr);
    let first = h1.addr.to_string();
    let base = ["--password-file", pw.as_str(), "--datapath", "ebpf"];
    let n1 = lab
        .start_meshd(
            h1,
            &[&base[..], &["--trusted-subnets", &t1_trusts]].concat(),
        )
        .unwrap();
    let n2 = lab
        .start_meshd(
            h2,
            &[&base[..], &["--trusted-subnets", &t2_trusts, &first]].concat(),
        )
        .unwrap();
    let n3 = lab
        .start_meshd(h3, &[&base[..], &[&first]].concat())
        .unwrap();
    let nodes = [n1, n2, n3];
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    let [n1, n2, n3] = &nodes;

    assert_eq!(
        link(n1, "t2"),
        (false, "kernel".into()),
        "trusted both ways"
    );
    assert_eq!(link(n2, "t1"), (false, "kernel".into()));
    assert_eq!(link(n2, "t3"), (true, "tap".into()), "t3 does not trust t2");
    assert_eq!(link(n3, "t2"), (true, "tap".into()));
    assert_eq!(link(n1, "t3"), (true, "tap".into()), "t1 does not trust t3");
    assert_eq!(link(n3, "t1"), (true, "tap".into()));

    for (a, b) in [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)] {
        assert!(
            wait_until(Duration::from_secs(10), || pings(&lab, &c[a], &c[b])),
            "ping tc{} -> tc{}",
            a + 1,
            b + 1
        );
    }
    // Bulk TCP on the trusted link goes through the kernel.
    let sent = kernel_counter(n1, "kernel_tx_sent");
    let target = c[1].addr.unwrap().to_string();
    tcp_transfer(&mut lab, &c[0], &c[1], (&target, &target), "16M").unwrap();
    assert!(kernel_counter(n1, "kernel_tx_sent") > sent + 100);
    assert!(
        peer(n1, "t2").unwrap()["kernel_tx_packets"]
            .as_u64()
            .unwrap()
            > 100
    );

    // On t1's underlay: what t1 sends t2 is readable, what it sends t3 is not.
    let filter = format!("udp port 6784 and src {}", h1.addr);
    let capture = pcap::start(&mut lab, h1, "t1", &filter).unwrap();
    let listeners = [udp_listener(&c[1], PORT), udp_listener(&c[2], PORT)];
    let sender = netns::run_in(&c[0].ns, || UdpSocket::bind(("0.0.0.0", 0)))
        .unwrap()
        .unwrap();
    // One at a time, each delivered before the next is sent: markers sent back to back can
    // leave together in one GSO send whenever they take meshd's way, and a capture on a veth
    // shows such a send as one packet (CI once counted 1 for 5).
    for (i, to) in [&c[1], &c[2]].iter().enumerate() {
        for n in 0..5 {
            let msg = format!("{MARKER} {n}");
            sender
                .send_to(msg.as_bytes(), (to.addr.unwrap(), PORT))
                .unwrap();
            let before = mesh_tests::datagrams_until(&listeners[i], &msg, Duration::from_secs(15));
            assert!(
                before.is_empty(),
                "tc{} got something else first: {before:?}",
                i + 2
            );
        }
    }
    let captured = capture.finish(&mut lab).unwrap();
    // Exactly the five markers sent to tc2 are readable; the five to tc3 were sealed.
    let markers = captured
        .iter()
        .filter(|(_, _, p)| marker_at(p).is_some())
        .count();
    assert_eq!(
        markers,
        5,
        "only the trusted link's markers are readable (captured (source, port, length, marker): \
         {:?}; t1's kernel counters: {})",
        captured
            .iter()
            .map(|(src, port, p)| {
                let at = marker_at(p);
                (
                    src,
                    port,
                    p.len(),
                    at.map(|at| String::from_utf8_lossy(&p[at..])),
                )
            })
            .collect::<Vec<_>>(),
        mesh_tests::mesh::status(n1)
            .map(|s| s["datapath"]["kernel_counters"].to_string())
            .unwrap_or_default()
    );
}
