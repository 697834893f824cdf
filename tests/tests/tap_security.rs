//! What an observer or an attacker on the underlay can do to an encrypted mesh: read nothing,
//! replay nothing, inject nothing. The same steps against an `--insecure` mesh show that each
//! check would catch a leak.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use mesh_tests::{
    Container, Host, Lab, datagrams_until,
    mesh::{Meshd, full_mesh, start_mesh, status, tap_counter},
    netns, pcap, wait_until,
};

const MARKER: &str = "MESH-MARKER-5e1f0c";
const PORT: u16 = 7100;

struct Setup {
    lab: Lab,
    h1: Host,
    h2: Host,
    attacker: Host,
    c1: Container,
    c2: Container,
    nodes: Vec<Meshd>,
    /// c2's UDP listener on PORT.
    listener: UdpSocket,
}

fn setup(label: &str, insecure: bool) -> Setup {
    let mut lab = Lab::new(label).unwrap();
    let h1 = lab.add_host("s1").unwrap();
    let h2 = lab.add_host("s2").unwrap();
    let attacker = lab.add_host("eve").unwrap();
    let c1 = lab.add_container(&h1, "sc1", Some("10.43.0.1/24")).unwrap();
    let c2 = lab.add_container(&h2, "sc2", Some("10.43.0.2/24")).unwrap();
    let nodes = if insecure {
        let n1 = lab
            .start_meshd(&h1, &["--insecure", "--datapath", "tap"])
            .unwrap();
        let n2 = lab
            .start_meshd(
                &h2,
                &["--insecure", "--datapath", "tap", &h1.addr.to_string()],
            )
            .unwrap();
        vec![n1, n2]
    } else {
        start_mesh(
            &mut lab,
            &[h1.clone(), h2.clone()],
            "security test",
            &["--datapath", "tap"],
        )
        .unwrap()
    };
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    assert!(wait_until(Duration::from_secs(15), || lab
        .ping(&c1.ns, c2.addr.unwrap(), 1)
        .unwrap()));
    let listener = netns::run_in(&c2.ns, || UdpSocket::bind(("0.0.0.0", PORT)))
        .unwrap()
        .unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    Setup {
        lab,
        h1,
        h2,
        attacker,
        c1,
        c2,
        nodes,
        listener,
    }
}

/// What reached c2's listener before a control datagram c1 sends now through the mesh: the
/// proof that an injected frame was *not* delivered (anything delivered would be in by the
/// time the control, sent after it along the path that works, arrives).
fn nothing_before_a_control(s: &Setup) -> Vec<String> {
    let c2 = s.c2.addr.unwrap();
    let sender = netns::run_in(&s.c1.ns, || UdpSocket::bind(("0.0.0.0", 0)))
        .unwrap()
        .unwrap();
    sender.send_to(b"control", (c2, PORT)).unwrap();
    datagrams_until(&s.listener, "control", Duration::from_secs(15))
}

/// Captures the data port on s2's underlay while c1 sends marker datagrams to c2; returns the
/// UDP payloads captured, as (source, destination port, payload).
fn capture_markers(s: &mut Setup) -> Vec<(Ipv4Addr, u16, Vec<u8>)> {
    let capture = pcap::start(&mut s.lab, &s.h2, "underlay", "udp port 6784").unwrap();
    let c2 = s.c2.addr.unwrap();
    let sender = netns::run_in(&s.c1.ns, || UdpSocket::bind(("0.0.0.0", 0)))
        .unwrap()
        .unwrap();
    // One at a time, each delivered before the next is sent, so that each leaves as a datagram
    // of its own: frames queued together leave in one GSO send, which a capture on a veth
    // shows as one packet.
    for i in 0..10 {
        let marker = format!("{MARKER} {i} {}", "-".repeat(100));
        sender.send_to(marker.as_bytes(), (c2, PORT)).unwrap();
        let before = datagrams_until(&s.listener, &marker, Duration::from_secs(15));
        assert!(before.is_empty(), "c2 got something else first: {before:?}");
    }
    capture.finish(&mut s.lab).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An Ethernet broadcast carrying a UDP datagram "SPOOFED" to 10.43.0.255:PORT.
fn inner_broadcast() -> Vec<u8> {
    let payload = b"SPOOFED";
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0xee, 0, 0, 0, 1, 0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 43, 0, 66]);
    ip[16..20].copy_from_slice(&[10, 43, 0, 255]);
    let mut sum = 0u32;
    for c in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A mesh data frame as a peer would send it in plaintext: flood from `origin`.
fn plain_frame(origin: u32) -> Vec<u8> {
    let o = origin.to_be_bytes();
    let mut d = vec![0x09, 0xff, 0xff, 0xff, o[1], o[2], o[3], 32];
    d.extend_from_slice(&inner_broadcast());
    d
}

/// The same in the sealed layout, claiming to be sealed by `sender`, with a made-up tag.
fn forged_sealed_frame(origin: u32, sender: u32) -> Vec<u8> {
    let mut d = plain_frame(origin);
    d[0] |= 0x04;
    let s = sender.to_be_bytes();
    let mut seal = vec![s[1], s[2], s[3], 0];
    seal.extend_from_slice(&1_000_000u64.to_be_bytes());
    d.splice(8..8, seal);
    d.extend_from_slice(&[0x5a; 16]);
    d
}

fn short_id(node: &Meshd) -> u32 {
    let id = status(node).unwrap()["id"].as_str().unwrap().to_owned();
    u32::from_str_radix(&id[id.len() - 6..], 16).unwrap()
}

/// Sends `datagram` to s2's data port from namespace `ns`, bound to `from`.
fn send_from(ns: &str, from: Ipv4Addr, to: Ipv4Addr, datagram: Vec<u8>) {
    netns::run_in(ns, move || {
        let s = UdpSocket::bind((from, 0)).unwrap();
        s.send_to(&datagram, (to, 6784)).unwrap();
    })
    .unwrap();
}

#[test]
fn an_encrypted_mesh_hides_content_and_refuses_replays_and_injection() {
    let mut s = setup("sec-enc", false);
    assert_eq!(status(&s.nodes[1]).unwrap()["datapath"]["encrypted"], true);
    let captured = capture_markers(&mut s);
    let from_s1: Vec<&Vec<u8>> = captured
        .iter()
        .filter(|(src, port, p)| *src == s.h1.addr && *port == 6784 && p.len() > 100)
        .map(|(_, _, p)| p)
        .collect();
    assert!(
        from_s1.len() >= 10,
        "the capture should hold the marker frames: {} data frames from s1",
        from_s1.len()
    );
    assert!(
        !captured
            .iter()
            .any(|(_, _, p)| contains(p, MARKER.as_bytes())),
        "the marker is readable on the underlay"
    );

    // Replaying a captured frame, from s1's own address: refused and counted.
    let (s2, n2) = (s.h2.addr, &s.nodes[1]);
    let replays = tap_counter(n2, "tap_dropped_replay");
    // The largest frames are the markers (ARP and IPv6 neighbour discovery are smaller): if
    // the replay were accepted, the listener would get a marker again.
    let marker_frame = from_s1.iter().max_by_key(|p| p.len()).unwrap();
    send_from(&s.h1.ns, s.h1.addr, s2, marker_frame.to_vec());
    assert!(wait_until(Duration::from_secs(15), || tap_counter(
        n2,
        "tap_dropped_replay"
    ) == replays + 1));
    assert!(
        nothing_before_a_control(&s).is_empty(),
        "the replay was delivered"
    );

    // A host without the secret: plain frames, forged seals, strangers, garbage.
    let s1_id = short_id(&s.nodes[0]);
    let before = |name: &str| tap_counter(n2, name);
    let (unsealed, auth, unknown, malformed) = (
        before("tap_dropped_unsealed"),
        before("tap_dropped_auth"),
        before("tap_dropped_unknown_sender"),
        before("tap_dropped_malformed"),
    );
    let eve = (&s.attacker.ns, s.attacker.addr);
    send_from(eve.0, eve.1, s2, plain_frame(s1_id));
    send_from(eve.0, eve.1, s2, forged_sealed_frame(s1_id, s1_id));
    send_from(eve.0, eve.1, s2, forged_sealed_frame(0x123456, 0x123456));
    send_from(eve.0, eve.1, s2, vec![0x0d, 1, 2]);
    // ...and from s1's address (spoofed source).
    s.lab
        .exec(
            eve.0,
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/32", s.h1.addr),
                "dev",
                &s.attacker.underlay_if,
                "nodad",
            ],
        )
        .unwrap();
    send_from(eve.0, s.h1.addr, s2, plain_frame(s1_id));
    send_from(eve.0, s.h1.addr, s2, forged_sealed_frame(s1_id, s1_id));
    let counted = || {
        before("tap_dropped_unsealed") == unsealed + 2
            && before("tap_dropped_auth") == auth + 2
            && before("tap_dropped_unknown_sender") == unknown + 1
            && before("tap_dropped_malformed") == malformed + 1
    };
    assert!(
        wait_until(Duration::from_secs(15), counted),
        "{}",
        status(n2).unwrap()["datapath"]["tap_counters"]
    );
    assert!(
        nothing_before_a_control(&s).is_empty(),
        "an injected frame was delivered"
    );
}

#[test]
fn the_same_checks_see_everything_in_an_insecure_mesh() {
    let mut s = setup("sec-plain", true);
    assert_eq!(status(&s.nodes[1]).unwrap()["datapath"]["encrypted"], false);
    let captured = capture_markers(&mut s);
    assert!(
        captured
            .iter()
            .any(|(_, _, p)| contains(p, MARKER.as_bytes())),
        "without encryption the marker should be on the wire"
    );
    // The frame the encrypted mesh refused is a valid one: sent from a peer's address into a
    // plaintext mesh, it is delivered.
    let s1_id = short_id(&s.nodes[0]);
    send_from(&s.h1.ns, s.h1.addr, s.h2.addr, plain_frame(s1_id));
    let got = datagrams_until(&s.listener, "SPOOFED", Duration::from_secs(15));
    assert!(got.is_empty(), "{got:?}");
}
