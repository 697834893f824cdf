//! The underlay receive program, fed crafted frames through the kernel (BPF_PROG_TEST_RUN):
//! every frame must be passed, and land in exactly the right counter. Needs root (loads BPF).

mod mutate;

use mesh::datapath::{Counters, UnderlayRx};
use mesh_common::{DEFAULT_DATA_PORT, UnderlayCounter as C};

const XDP_PASS: u32 = 2;

/// Builds Ethernet + IPv4 (with `ihl` 32-bit words of header) + UDP to `dport` + payload.
fn udp_frame(ihl: u8, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = ethernet(0x0800);
    let ip_len = ihl as usize * 4;
    let total = (ip_len + 8 + payload.len()) as u16;
    let mut ip = vec![0u8; ip_len];
    ip[0] = 0x40 | (ihl & 0x0f);
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
    ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn ethernet(ether_type: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// Runs `frame` once, asserts XDP_PASS, and returns how the counters moved.
fn run(rx: &UnderlayRx, frame: &[u8]) -> Counters {
    let before = rx.counters().unwrap();
    let action = rx.run_frame(frame).unwrap();
    assert_eq!(
        action, XDP_PASS,
        "every underlay frame is passed to the stack"
    );
    rx.counters().unwrap().since(&before)
}

/// Asserts that exactly `Total` and `class` moved, by one.
fn assert_counted_as(delta: Counters, class: C) {
    for c in C::ALL {
        let want = u64::from(c == C::Total || c == class);
        assert_eq!(
            delta.get(c),
            want,
            "counter {} (frame should count as {})",
            c.name(),
            class.name()
        );
    }
}

fn loaded() -> UnderlayRx {
    UnderlayRx::load(DEFAULT_DATA_PORT).expect("loading the datapath (run as root)")
}

#[test]
fn udp_to_the_data_port_is_counted_and_passed() {
    let rx = loaded();
    assert_counted_as(
        run(&rx, &udp_frame(5, DEFAULT_DATA_PORT, b"vxlan")),
        C::DataPort,
    );
}

#[test]
fn ipv4_options_are_skipped_to_find_the_udp_header() {
    let rx = loaded();
    // IHL 15: the longest IPv4 header (60 bytes); the UDP header follows it.
    assert_counted_as(
        run(&rx, &udp_frame(15, DEFAULT_DATA_PORT, b"x")),
        C::DataPort,
    );
    assert_counted_as(run(&rx, &udp_frame(6, 53, b"x")), C::UdpOtherPort);
}

#[test]
fn udp_to_another_port_is_not_mesh_traffic() {
    let rx = loaded();
    assert_counted_as(run(&rx, &udp_frame(5, 53, b"dns")), C::UdpOtherPort);
}

#[test]
fn the_data_port_comes_from_the_config_map() {
    let rx = UnderlayRx::load(9999).unwrap();
    assert_counted_as(
        run(&rx, &udp_frame(5, DEFAULT_DATA_PORT, b"")),
        C::UdpOtherPort,
    );
    assert_counted_as(run(&rx, &udp_frame(5, 9999, b"")), C::DataPort);
}

#[test]
fn truncated_frames_are_counted_not_misread() {
    let rx = loaded();
    let full = udp_frame(5, DEFAULT_DATA_PORT, b"");
    // Ethernet header only; IPv4 header cut; UDP header cut (one byte short).
    for len in [14, 14 + 10, 14 + 20 + 7] {
        assert_counted_as(run(&rx, &full[..len]), C::Truncated);
    }
    // Options claimed but not present: the UDP header would start past the end.
    let options = udp_frame(15, DEFAULT_DATA_PORT, b"");
    assert_counted_as(run(&rx, &options[..14 + 40]), C::Truncated);
}

#[test]
fn malformed_ipv4_headers_are_counted() {
    let rx = loaded();
    let mut bad_ihl = udp_frame(5, DEFAULT_DATA_PORT, b"");
    bad_ihl[14] = 0x44; // IHL 4 < 5
    assert_counted_as(run(&rx, &bad_ihl), C::MalformedIpv4);
    let mut bad_version = udp_frame(5, DEFAULT_DATA_PORT, b"");
    bad_version[14] = 0x65; // version 6 inside an IPv4 ethertype
    assert_counted_as(run(&rx, &bad_version), C::MalformedIpv4);
}

#[test]
fn non_udp_and_later_fragments_have_no_udp_header() {
    let rx = loaded();
    let mut tcp = udp_frame(5, DEFAULT_DATA_PORT, &[0; 20]);
    tcp[14 + 9] = 6;
    assert_counted_as(run(&rx, &tcp), C::Ipv4NotUdp);
    // A non-first fragment: its first bytes are payload, not a UDP header.
    let mut frag = udp_frame(5, DEFAULT_DATA_PORT, b"");
    frag[14 + 6..14 + 8].copy_from_slice(&0x00b9u16.to_be_bytes());
    assert_counted_as(run(&rx, &frag), C::Ipv4NotUdp);
}

#[test]
fn arp_and_ipv6_are_classified() {
    let rx = loaded();
    let mut arp = ethernet(0x0806);
    arp.extend_from_slice(&[0; 28]);
    assert_counted_as(run(&rx, &arp), C::NotIp);
    let mut v6 = ethernet(0x86DD);
    v6.extend_from_slice(&[0x60; 48]);
    assert_counted_as(run(&rx, &v6), C::Ipv6);
}

#[test]
fn the_kernel_refuses_frames_shorter_than_ethernet() {
    // The kernel will not run an XDP program on less than an Ethernet header, so the program's
    // guard for that case is only reachable by real traffic; this pins the kernel behaviour.
    let rx = loaded();
    assert!(rx.run_frame(&[0u8; 10]).is_err());
}

#[test]
fn mutated_frames_are_always_passed_and_counted_once() {
    let rx = UnderlayRx::load(DEFAULT_DATA_PORT).unwrap();
    let bases = vec![
        udp_frame(5, DEFAULT_DATA_PORT, &[0x09, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
        udp_frame(6, 53, b"dns"),
        ethernet(0x0806),
        ethernet(0x86dd),
    ];
    let seed = 0x6d65_7368_0003;
    let mut rng = mutate::Rng(seed);
    let mut seen = std::collections::BTreeMap::new();
    for n in 0..3000 {
        let mut frame = mutate::mutated(&mut rng, &bases);
        frame.resize(frame.len().max(14), 0);
        let before = rx.counters().unwrap();
        let action = rx
            .run_frame(&frame)
            .unwrap_or_else(|e| panic!("frame {n} (seed {seed}): {e:?} {frame:02x?}"));
        let delta = rx.counters().unwrap().since(&before);
        assert_eq!(action, XDP_PASS, "frame {n} (seed {seed}): {frame:02x?}");
        assert_eq!(delta.get(C::Total), 1, "frame {n} (seed {seed})");
        let classes: Vec<C> = C::ALL
            .into_iter()
            .filter(|c| *c != C::Total && delta.get(*c) > 0)
            .collect();
        assert_eq!(
            classes.len(),
            1,
            "frame {n} (seed {seed}): {classes:?} {frame:02x?}"
        );
        assert_eq!(delta.get(classes[0]), 1);
        *seen.entry(classes[0].name()).or_insert(0u32) += 1;
    }
    println!("underlay_rx: 3000 mutated frames (seed {seed}), outcomes {seen:?}");
    assert!(seen.len() >= 4, "{seen:?}");
}
