//! Small UDP datagrams in bursts through the TAP path: the sending meshd batches them into GSO
//! sends, the receiving one joins consecutive datagrams of a flow into one UDP super-frame for
//! its TAP device, which the kernel cuts again. What the container receives must be exactly
//! what was sent: every datagram once, in order, with its own length and bytes.

use std::{net::UdpSocket, time::Duration, time::Instant};

use mesh_tests::{
    Lab,
    mesh::{Mode, full_mesh, start_mesh_in_with, tap_counter},
    netns, wait_until,
};

const PORT: u16 = 7300;
const BURST: usize = 64;

/// Datagram `i` of burst `b`: mostly 64 bytes, every 16th shorter (it ends a joined run, and
/// the next starts one), with bytes that say which datagram it is.
fn datagram(b: u32, i: usize) -> Vec<u8> {
    let len = if i % 16 == 15 { 40 } else { 64 };
    let mut d = Vec::with_capacity(len);
    d.extend_from_slice(&b.to_be_bytes());
    d.extend_from_slice(&(i as u16).to_be_bytes());
    d.extend((6..len).map(|k| (b as usize * 31 + i * 7 + k) as u8));
    d
}

/// What arrived instead of `sent`: which datagrams are missing, foreign, or out of order.
fn describe(sent: &[Vec<u8>], got: &[Vec<u8>]) -> String {
    let order: Vec<String> = got
        .iter()
        .map(|g| match sent.iter().position(|s| s == g) {
            Some(i) => i.to_string(),
            None => format!("?{g:?}"),
        })
        .collect();
    let missing: Vec<usize> = (0..sent.len())
        .filter(|&i| !got.contains(&sent[i]))
        .collect();
    format!(
        "{} of {} arrived, missing {missing:?}, in this order (?: not sent): {}",
        got.len(),
        sent.len(),
        order.join(" ")
    )
}

/// A node's counters for a failure message.
fn status(node: &mesh_tests::mesh::Meshd) -> String {
    mesh_tests::mesh::status(node)
        .map_or_else(|e| format!("no status: {e}"), |s| s["datapath"].to_string())
}

/// The kernel's UDP counters in namespace `ns` (where a datagram the kernel dropped shows).
fn udp_counters(lab: &Lab, ns: &str) -> String {
    ["/proc/net/snmp", "/proc/net/snmp6"]
        .iter()
        .filter_map(|f| lab.exec(ns, "cat", &[f]).ok())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.starts_with("Udp"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn bursts_arrive_exactly(label: &str, mode: Mode) {
    let mut lab = Lab::new(label).unwrap();
    let h1 = lab.add_host("u1").unwrap();
    let h2 = lab.add_host("u2").unwrap();
    let c1 = lab.add_container(&h1, "uc1", Some("10.44.0.1/24")).unwrap();
    let c2 = lab.add_container(&h2, "uc2", Some("10.44.0.2/24")).unwrap();
    for (c, a) in [(&c1, "fd44::1/64"), (&c2, "fd44::2/64")] {
        let out = lab
            .exec(
                &c.ns,
                "ip",
                &["-6", "addr", "add", a, "dev", "eth0", "nodad"],
            )
            .unwrap();
        assert!(out.status.success(), "adding {a}");
    }
    let nodes = start_mesh_in_with(&mut lab, &[h1, h2], mode, &[]).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    let to = c2.addr.unwrap();
    assert!(wait_until(Duration::from_secs(15), || lab
        .ping(&c1.ns, to, 1)
        .unwrap()));
    // Each family's neighbour is resolved before its bursts: a sending kernel that releases
    // the datagrams it held during resolution while the sender goes on sending mixes the two
    // (its reordering, not the mesh's).
    assert!(wait_until(Duration::from_secs(15), || {
        lab.exec(
            &c1.ns,
            "ping",
            &["-6", "-n", "-q", "-c", "1", "-W", "1", "fd44::2"],
        )
        .is_ok_and(|out| out.status.success())
    }));
    let joined = || tap_counter(&nodes[1], "tap_coalesced_writes");
    for (family, any, dest) in [
        ("IPv4", "0.0.0.0", to.to_string()),
        ("IPv6", "::", "fd44::2".to_owned()),
    ] {
        let rx = netns::run_in(&c2.ns, move || UdpSocket::bind((any, PORT)))
            .unwrap()
            .unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let tx = netns::run_in(&c1.ns, move || UdpSocket::bind((any, 0)))
            .unwrap()
            .unwrap();
        tx.connect((dest.as_str(), PORT)).unwrap();
        let joined_before = joined();
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut buf = [0u8; 2048];
        let mut burst = 0u32;
        // Bursts until the receiving meshd has joined datagrams (the sender's batching decides
        // how many leave together, and a busy machine batches more), at least 10.
        loop {
            for i in 0..BURST {
                tx.send(&datagram(burst, i)).unwrap();
            }
            let mut got = Vec::with_capacity(BURST);
            while got.len() < BURST {
                match rx.recv(&mut buf) {
                    Ok(n) => got.push(buf[..n].to_vec()),
                    Err(_) => break,
                }
            }
            let sent: Vec<Vec<u8>> = (0..BURST).map(|i| datagram(burst, i)).collect();
            if got != sent {
                panic!(
                    "{label} {family}: burst {burst}: {}\nsender: {}\nreceiver: {}\n\
                     receiving container's UDP counters:\n{}",
                    describe(&sent, &got),
                    status(&nodes[0]),
                    status(&nodes[1]),
                    udp_counters(&lab, &c2.ns)
                );
            }
            burst += 1;
            if burst >= 10 && joined() > joined_before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{label} {family}: {burst} bursts and the receiving meshd never joined datagrams"
            );
        }
        // Nothing more than was sent.
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(
            rx.recv(&mut buf).is_err(),
            "{label} {family}: a datagram too many"
        );
    }
}

#[test]
fn small_datagrams_in_bursts_arrive_exactly_as_sent_sealed() {
    bursts_arrive_exactly("udp-sealed", Mode::TapSealed);
}

#[test]
fn small_datagrams_in_bursts_arrive_exactly_as_sent_plaintext() {
    bursts_arrive_exactly("udp-plain", Mode::TapPlain);
}
