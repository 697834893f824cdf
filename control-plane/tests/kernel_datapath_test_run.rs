//! The kernel datapath's programs, fed crafted frames through the kernel (BPF_PROG_TEST_RUN):
//! for each case the action, the counter that moved, and the exact bytes that come out.
//! Needs root (loads BPF). The programs are loaded but not attached; `lo` stands in for both
//! interfaces.

use std::{collections::HashMap, net::SocketAddr};

mod mutate;
use mutate::{Rng, mutated};

use mesh::{
    datapath::{
        HostConfig, KernelDatapath,
        compile::{LinkView, compile},
    },
    switch::{ShortId, forward::Table},
};
use mesh_common::{
    DEFAULT_DATA_PORT, KernelCounter as K,
    names::{
        BRIDGE_EGRESS_PROGRAM as EGRESS, PORT_INGRESS_PROGRAM as PORT,
        UNDERLAY_INGRESS_PROGRAM as INGRESS,
    },
    wire::{FLOOD_ID, INITIAL_HOPS, WireHeader},
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const ME: u32 = 0x000001;
const NEAR: u32 = 0x000002; // a kernel (plaintext) neighbour
const FAR: u32 = 0x000003; // reached through NEAR
const SEALED: u32 = 0x000004; // a neighbour whose link is not kernel-capable
const UNRESOLVED: u32 = 0x000005; // a neighbour whose underlay MAC is not known yet
const MY_IP: [u8; 4] = [198, 18, 0, 1];
const NEAR_IP: [u8; 4] = [198, 18, 0, 2];
const UNDERLAY_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const NEAR_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
const NEAR_PORT: u16 = 40123; // as seen through a NAT
const LOCAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const REMOTE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x33];
const MTU: u32 = 1450;

fn s(n: u32) -> ShortId {
    ShortId::from_wire(n)
}

/// The host: `lo` stands in for both interfaces; nothing pinned.
fn host() -> HostConfig {
    HostConfig {
        underlay: "lo".into(),
        underlay_ipv4: MY_IP.into(),
        underlay_mac: UNDERLAY_MAC,
        bridge_port: "lo".into(),
        data_port: DEFAULT_DATA_PORT,
        overlay_mtu: MTU,
        pin_dir: None,
    }
}

fn datapath() -> KernelDatapath {
    let mut dp = KernelDatapath::load(host()).expect("loading the kernel datapath (needs root)");
    let table = Table {
        me: Some(s(ME)),
        next_hop: HashMap::from([
            (s(NEAR), s(NEAR)),
            (s(FAR), s(NEAR)),
            (s(SEALED), s(SEALED)),
            (s(UNRESOLVED), s(UNRESOLVED)),
        ]),
        // Our own tree has a sealed child: meshd floods our frames. FAR's frames come through
        // NEAR (it may teach us FAR's MACs); FAR's tree has no children here.
        children: HashMap::from([(s(ME), vec![s(NEAR), s(SEALED)])]),
        parent: HashMap::from([(s(FAR), s(NEAR))]),
    };
    let link = |peer: u32, ip: [u8; 4], port: u16, kernel: bool, mac: Option<[u8; 6]>| LinkView {
        peer: s(peer),
        link_id: peer * 100,
        addr: SocketAddr::from((ip, port)),
        mtu: MTU,
        kernel,
        next_hop_mac: mac,
    };
    let links = [
        link(NEAR, NEAR_IP, NEAR_PORT, true, Some(NEAR_MAC)),
        link(
            SEALED,
            [198, 18, 0, 4],
            6784,
            false,
            Some([2, 0xaa, 0, 0, 0, 4]),
        ),
        link(UNRESOLVED, [198, 18, 0, 5], 6784, true, None),
    ];
    dp.sync(ME, compile(&table, &links)).unwrap();
    dp
}

fn counters(dp: &KernelDatapath) -> HashMap<&'static str, u64> {
    dp.counters().unwrap().into_iter().collect()
}

/// Runs `frame` through `program`; asserts the action and that exactly `counter` moved (by
/// one), or nothing did. Returns the bytes that came out.
fn run(
    dp: &KernelDatapath,
    program: &'static str,
    frame: &[u8],
    action: u32,
    counter: Option<K>,
) -> Vec<u8> {
    run_counting(dp, program, frame, action, counter.as_slice())
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// An inner IPv4/UDP frame from a local container with `payload_len` bytes of payload.
fn inner_ipv4(dst: [u8; 6], payload_len: usize) -> Vec<u8> {
    let mut f = ethernet(dst, LOCAL_MAC, 0x0800);
    let total = (20 + 8 + payload_len) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 40, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 40, 0, 3]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x30, 0x39, 0x1b, 0x58]);
    f.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload_len).map(|i| i as u8));
    f
}

fn ipv4_checksum_ok(h: &[u8]) -> bool {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// Checks the outer headers of an encapsulated frame and returns (mesh header, inner frame).
fn outer(out: &[u8], src: [u8; 4], dst: [u8; 4], dport: u16) -> (WireHeader, Vec<u8>) {
    assert_eq!(
        &out[0..6],
        &NEAR_MAC,
        "outer destination MAC: the next hop's"
    );
    assert_eq!(
        &out[6..12],
        &UNDERLAY_MAC,
        "outer source MAC: the underlay's"
    );
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    let ip = &out[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        out.len() - 14,
        "IPv4 total length"
    );
    assert_eq!(ip[6] & 0x40, 0x40, "DF");
    assert_eq!(ip[9], 17);
    assert_eq!(&ip[12..16], &src);
    assert_eq!(&ip[16..20], &dst);
    assert!(ipv4_checksum_ok(ip), "IPv4 header checksum");
    let udp = &out[34..42];
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), DEFAULT_DATA_PORT);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), dport);
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        out.len() - 34,
        "UDP length"
    );
    assert_eq!(&udp[6..8], &[0, 0], "UDP checksum 0");
    let h = WireHeader::from_bytes(out[42..50].try_into().unwrap());
    (h, out[50..].to_vec())
}

/// A datagram as a neighbour sends it: outer headers from `src` to us, mesh header, inner.
fn from_underlay(
    src: [u8; 4],
    flags_hops: (u8, u8),
    origin: u32,
    dest: u32,
    inner: &[u8],
) -> Vec<u8> {
    let mut f = ethernet(UNDERLAY_MAC, NEAR_MAC, 0x0800);
    let udp_len = (8 + 8 + inner.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(udp_len + 20).to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&MY_IP);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&DEFAULT_DATA_PORT.to_be_bytes());
    f.extend_from_slice(&DEFAULT_DATA_PORT.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    let mut h = WireHeader::new(origin, dest, flags_hops.1, false);
    h.flags = flags_hops.0;
    f.extend_from_slice(&h.to_bytes());
    f.extend_from_slice(inner);
    f
}

const PLAIN: u8 = 0x09;

#[test]
fn a_frame_for_a_known_mac_is_encapsulated_for_its_peer() {
    let mut dp = datapath();
    dp.fdb_insert(REMOTE_MAC, NEAR).unwrap();
    let frame = inner_ipv4(REMOTE_MAC, 100);
    let out = run(&dp, EGRESS, &frame, TC_ACT_REDIRECT, Some(K::TxSent));
    let (h, inner) = outer(&out, MY_IP, NEAR_IP, NEAR_PORT);
    assert_eq!(
        h,
        WireHeader::new(ME, NEAR, INITIAL_HOPS, false),
        "origin us, for NEAR"
    );
    assert_eq!(inner, frame, "the inner frame is carried unchanged");
}

#[test]
fn arp_and_ipv6_are_encapsulated_too_and_a_frame_a_container_tagged_never_leaves() {
    let mut dp = datapath();
    dp.fdb_insert(REMOTE_MAC, NEAR).unwrap();
    let mut arp = ethernet(REMOTE_MAC, LOCAL_MAC, 0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    arp.extend_from_slice(&[0u8; 20]);
    let mut ipv6 = ethernet(REMOTE_MAC, LOCAL_MAC, 0x86dd);
    ipv6.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    ipv6.extend_from_slice(&[0xfe; 32]);
    ipv6.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
    let mut vlan = ethernet(REMOTE_MAC, LOCAL_MAC, 0x8100);
    vlan.extend_from_slice(&[0x00, 0x2a, 0x08, 0x00]);
    vlan.extend_from_slice(&inner_ipv4(REMOTE_MAC, 40)[14..]);
    for frame in [arp, ipv6] {
        let out = run(&dp, EGRESS, &frame, TC_ACT_REDIRECT, Some(K::TxSent));
        let (h, inner) = outer(&out, MY_IP, NEAR_IP, NEAR_PORT);
        assert_eq!(h.destination(), NEAR);
        assert_eq!(inner, frame);
    }
    // On the wire a tag names a network (docs/wire-format.md): one a container put on itself
    // must not leave, or it would speak on that network. At its bridge port the frame takes
    // the bridge's way (untouched, uncounted) to the egress program, which drops it.
    assert_eq!(run(&dp, PORT, &vlan, TC_ACT_OK, None), vlan);
    run(&dp, EGRESS, &vlan, TC_ACT_SHOT, Some(K::DropNetwork));
    let mut qinq = vlan.clone();
    qinq[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
    run(&dp, EGRESS, &qinq, TC_ACT_SHOT, Some(K::DropNetwork));
}

#[test]
fn a_named_networks_frame_from_a_neighbour_goes_to_meshd_untouched() {
    let dp = datapath();
    let mut tagged = ethernet(LOCAL_MAC, REMOTE_MAC, 0x8100);
    tagged.extend_from_slice(&[0x00, 0x07, 0x08, 0x00]);
    tagged.extend_from_slice(&inner_ipv4(LOCAL_MAC, 40)[14..]);
    // For us, a flood, and for another peer: meshd delivers it to the network's own bridge
    // (never the default one), floods and relays it.
    for destination in [ME, FLOOD_ID, FAR] {
        let d = from_underlay(NEAR_IP, (PLAIN, 5), NEAR, destination, &tagged);
        assert_eq!(run(&dp, INGRESS, &d, TC_ACT_OK, Some(K::RxToMeshd)), d);
    }
}

#[test]
fn frames_the_kernel_does_not_send_go_on_to_meshd_unchanged() {
    let mut dp = datapath();
    dp.fdb_insert([2, 0, 0, 0, 0, 4], SEALED).unwrap();
    dp.fdb_insert([2, 0, 0, 0, 0, 5], UNRESOLVED).unwrap();
    dp.fdb_insert([2, 0, 0, 0, 0, 3], FAR).unwrap();
    dp.fdb_insert(REMOTE_MAC, NEAR).unwrap();
    let cases = [
        (inner_ipv4([0xff; 6], 20), K::TxFlood),
        (inner_ipv4([0x01, 0, 0x5e, 0, 0, 1], 20), K::TxFlood),
        (inner_ipv4([2, 0, 0, 0, 0, 0x99], 20), K::TxFlood),
        (inner_ipv4([2, 0, 0, 0, 0, 4], 20), K::TxUserspaceLink),
        (inner_ipv4([2, 0, 0, 0, 0, 5], 20), K::TxNoNeighbour),
        // Reached through a relay: meshd sends it (complete checksums, no GSO).
        (inner_ipv4([2, 0, 0, 0, 0, 3], 20), K::TxUserspaceLink),
        // One byte over the overlay MTU: meshd answers it with ICMP.
        (inner_ipv4(REMOTE_MAC, MTU as usize - 28 + 1), K::TxTooBig),
    ];
    for (frame, counter) in cases {
        let out = run(&dp, EGRESS, &frame, TC_ACT_OK, Some(counter));
        assert_eq!(out, frame, "{counter:?}: passed on untouched");
    }
    // Exactly the overlay MTU still fits.
    run(
        &dp,
        EGRESS,
        &inner_ipv4(REMOTE_MAC, MTU as usize - 28),
        TC_ACT_REDIRECT,
        Some(K::TxSent),
    );
}

/// Runs `frame` through `program` and asserts the action and exactly the `counters` that
/// moved (by one each). Returns the bytes that came out.
fn run_counting(
    dp: &KernelDatapath,
    program: &'static str,
    frame: &[u8],
    action: u32,
    moved: &[K],
) -> Vec<u8> {
    let before = counters(dp);
    let (rc, out) = dp.test_run(program, frame).unwrap();
    assert_eq!(rc, action, "{program}: action");
    let after = counters(dp);
    for k in K::ALL {
        let want = u64::from(moved.contains(&k));
        assert_eq!(
            after[k.name()] - before[k.name()],
            want,
            "{program}: {}",
            k.name()
        );
    }
    out
}

#[test]
fn a_containers_frame_for_a_kernel_peer_is_sent_before_the_bridge_and_the_rest_goes_on() {
    let mut dp = datapath();
    dp.fdb_insert(REMOTE_MAC, NEAR).unwrap();
    dp.fdb_insert([2, 0, 0, 0, 0, 4], SEALED).unwrap();
    let frame = inner_ipv4(REMOTE_MAC, 100);
    let out = run_counting(
        &dp,
        PORT,
        &frame,
        TC_ACT_REDIRECT,
        &[K::TxSent, K::TxFromPort],
    );
    let (h, inner) = outer(&out, MY_IP, NEAR_IP, NEAR_PORT);
    assert_eq!(h, WireHeader::new(ME, NEAR, INITIAL_HOPS, false));
    assert_eq!(inner, frame);
    // Into the bridge untouched and uncounted (bridge_egress counts what reaches it):
    // broadcast, unknown, a sealed peer's, too big.
    for other in [
        inner_ipv4([0xff; 6], 20),
        inner_ipv4([2, 0, 0, 0, 0, 0x99], 20),
        inner_ipv4([2, 0, 0, 0, 0, 4], 20),
        inner_ipv4(REMOTE_MAC, MTU as usize - 28 + 1),
    ] {
        assert_eq!(run_counting(&dp, PORT, &other, TC_ACT_OK, &[]), other);
    }
    // A MAC that has since shown up behind a local port (the container moved here): the bridge
    // delivers it, whatever the kernel FDB still says.
    let mut from_it = inner_ipv4([0xff; 6], 20);
    from_it[6..12].copy_from_slice(&REMOTE_MAC);
    run_counting(&dp, PORT, &from_it, TC_ACT_OK, &[]);
    assert_eq!(run_counting(&dp, PORT, &frame, TC_ACT_OK, &[]), frame);
}

#[test]
fn a_frame_for_this_node_is_decapsulated_and_its_source_learnt() {
    let dp = datapath();
    let inner = inner_ipv4(LOCAL_MAC, 64);
    let mut inner = inner;
    inner[6..12].copy_from_slice(&REMOTE_MAC);
    let dgram = from_underlay(NEAR_IP, (PLAIN, 31), FAR, ME, &inner);
    let out = run(&dp, INGRESS, &dgram, TC_ACT_REDIRECT, Some(K::RxDelivered));
    assert_eq!(out, inner, "exactly the inner frame reaches the bridge");
    assert!(
        dp.fdb()
            .iter()
            .any(|(m, p, _)| *m == REMOTE_MAC && *p == FAR),
        "the source MAC is learnt behind the origin: {:?}",
        dp.fdb()
    );
}

#[test]
fn a_frame_for_another_peer_is_relayed_with_one_hop_less() {
    let dp = datapath();
    let inner = inner_ipv4(REMOTE_MAC, 64);
    let dgram = from_underlay(NEAR_IP, (PLAIN, 9), 0x0000_0042, FAR, &inner);
    let out = run(&dp, INGRESS, &dgram, TC_ACT_REDIRECT, Some(K::RxRelayed));
    let (h, carried) = outer(&out, MY_IP, NEAR_IP, NEAR_PORT);
    assert_eq!(h, WireHeader::new(0x42, FAR, 8, false));
    assert_eq!(carried, inner);
    // The last hop allowed: dropped, never sent on.
    let tired = from_underlay(NEAR_IP, (PLAIN, 1), 0x42, FAR, &inner);
    run(&dp, INGRESS, &tired, TC_ACT_SHOT, Some(K::RxDropLoop));
    let spent = from_underlay(NEAR_IP, (PLAIN, 0), 0x42, ME, &inner);
    run(&dp, INGRESS, &spent, TC_ACT_SHOT, Some(K::RxDropLoop));
    let own = from_underlay(NEAR_IP, (PLAIN, 5), ME, FAR, &inner);
    run(&dp, INGRESS, &own, TC_ACT_SHOT, Some(K::RxDropLoop));
    let lost = from_underlay(NEAR_IP, (PLAIN, 5), 0x42, 0x77, &inner);
    run(&dp, INGRESS, &lost, TC_ACT_SHOT, Some(K::RxDropNoRoute));
    // Towards a sealed link: meshd relays it (and seals it).
    let sealed = from_underlay(NEAR_IP, (PLAIN, 5), 0x42, SEALED, &inner);
    assert_eq!(
        run(&dp, INGRESS, &sealed, TC_ACT_OK, Some(K::RxToMeshd)),
        sealed
    );
}

#[test]
fn malformed_foreign_and_userspace_frames_are_dropped_or_passed_and_counted() {
    let dp = datapath();
    let inner = inner_ipv4(LOCAL_MAC, 32);
    // Truncated: UDP to the data port without a whole mesh header.
    let mut short = from_underlay(NEAR_IP, (PLAIN, 5), NEAR, ME, &inner);
    short.truncate(14 + 20 + 8 + 5);
    run(&dp, INGRESS, &short, TC_ACT_SHOT, Some(K::RxDropMalformed));
    // A mesh header without its inner Ethernet header.
    let mut headless = from_underlay(NEAR_IP, (PLAIN, 5), NEAR, ME, &inner);
    headless.truncate(14 + 20 + 8 + 8 + 6);
    run(
        &dp,
        INGRESS,
        &headless,
        TC_ACT_SHOT,
        Some(K::RxDropMalformed),
    );
    // Flag bits no mesh sets.
    let odd = from_underlay(NEAR_IP, (PLAIN | 0x80, 5), NEAR, ME, &inner);
    run(&dp, INGRESS, &odd, TC_ACT_SHOT, Some(K::RxDropBadFlags));
    // Another network's VXLAN (no mesh flag) on our port.
    let vxlan = from_underlay(NEAR_IP, (0x08, 0), NEAR, ME, &inner);
    run(&dp, INGRESS, &vxlan, TC_ACT_SHOT, Some(K::RxDropBadFlags));
    // Heartbeats, sealed frames, floods and unknown senders go to meshd untouched.
    let hb = from_underlay(NEAR_IP, (PLAIN | 0x02, 1), NEAR, ME, &[0, 0]);
    let sealed = from_underlay(NEAR_IP, (PLAIN | 0x04, 5), NEAR, ME, &inner);
    let flood = from_underlay(NEAR_IP, (PLAIN, 5), NEAR, FLOOD_ID, &inner);
    let stranger = from_underlay([198, 18, 0, 66], (PLAIN, 5), NEAR, ME, &inner);
    for d in [hb, sealed, flood, stranger] {
        assert_eq!(run(&dp, INGRESS, &d, TC_ACT_OK, Some(K::RxToMeshd)), d);
    }
    // Not the data port: passed, nothing counted.
    let mut other = from_underlay(NEAR_IP, (PLAIN, 5), NEAR, ME, &inner);
    other[36..38].copy_from_slice(&53u16.to_be_bytes());
    assert_eq!(run(&dp, INGRESS, &other, TC_ACT_OK, None), other);
    let arp = ethernet([0xff; 6], NEAR_MAC, 0x0806);
    let mut arp = arp;
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(run(&dp, INGRESS, &arp, TC_ACT_OK, None), arp);
}

#[test]
fn nothing_is_forwarded_before_meshd_names_this_node() {
    let dp = KernelDatapath::load(host()).unwrap();
    let frame = inner_ipv4(REMOTE_MAC, 10);
    assert_eq!(run(&dp, EGRESS, &frame, TC_ACT_OK, Some(K::TxOther)), frame);
    let dgram = from_underlay(NEAR_IP, (PLAIN, 5), NEAR, ME, &frame);
    assert_eq!(run(&dp, INGRESS, &dgram, TC_ACT_OK, None), dgram);
}

/// Feeds `count` mutated frames to `program`. Every run must return a TC action the program
/// uses, move at most the one counter that explains it (plus the GSO or direct-delivery
/// counter that only accompanies another), and agree with it: a drop is SHOT, a frame sent on
/// is REDIRECT, everything else passes unchanged.
fn fuzz_program(dp: &KernelDatapath, program: &'static str, bases: &[Vec<u8>], seed: u64) {
    let mut rng = Rng(seed);
    let mut seen: HashMap<String, u64> = HashMap::new();
    for n in 0..3000 {
        let frame = mutated(&mut rng, bases);
        let before = counters(dp);
        let (rc, out) = match dp.test_run(program, &frame) {
            Ok(r) => r,
            // BPF_PROG_TEST_RUN itself refuses some frames before the program runs (an IPv4
            // or IPv6 EtherType with less than that header behind it): nothing to judge.
            Err(e) if format!("{e:?}").contains("code: 22") => {
                *seen.entry("refused by test_run".into()).or_default() += 1;
                continue;
            }
            Err(e) => panic!("{program}, frame {n} (seed {seed}): {e:?} {frame:02x?}"),
        };
        let after = counters(dp);
        let moved: Vec<K> = K::ALL
            .into_iter()
            .filter(|k| after[k.name()] != before[k.name()])
            .collect();
        for k in &moved {
            assert_eq!(
                after[k.name()] - before[k.name()],
                1,
                "{program}, frame {n} (seed {seed}): {k:?} moved by more than one"
            );
        }
        let main: Vec<K> = moved
            .iter()
            .copied()
            .filter(|k| {
                !matches!(
                    k,
                    K::TxGso | K::RxDeliveredDirect | K::FloodSkipped | K::TxFromPort
                )
            })
            .collect();
        let what = format!("{program}, frame {n} (seed {seed}): {frame:02x?}");
        assert!(main.len() <= 1, "{what}: counters {moved:?}");
        match main.first() {
            Some(K::TxSent | K::RxDelivered | K::RxRelayed | K::RxFlooded) => {
                assert_eq!(rc, TC_ACT_REDIRECT, "{what}: {main:?}")
            }
            Some(
                K::TxFlooded
                | K::RxDropMalformed
                | K::RxDropBadFlags
                | K::RxDropUnknownSender
                | K::RxDropLoop
                | K::RxDropNoRoute
                | K::DropNetwork,
            ) => assert_eq!(rc, TC_ACT_SHOT, "{what}: {main:?}"),
            // To meshd, or not ours at all: passed on byte for byte.
            _ => {
                assert_eq!(rc, TC_ACT_OK, "{what}: {main:?}");
                assert_eq!(out, frame, "{what}: changed on its way to meshd");
            }
        }
        if program == EGRESS {
            assert_eq!(main.len(), 1, "{what}: egress counts every frame once");
        }
        let name = main.first().map_or("none", |k| k.name());
        *seen.entry(name.to_owned()).or_default() += 1;
    }
    println!("{program}: 3000 mutated frames (seed {seed}), outcomes {seen:?}");
    // The mutations reach more than one branch (else they test nothing), and most of them
    // reach the program.
    assert!(seen.len() >= 3, "{program}: {seen:?}");
    let refused = seen.get("refused by test_run").copied().unwrap_or(0);
    assert!(refused < 300, "{program}: {seen:?}");
}

#[test]
fn mutated_frames_always_get_a_valid_action_and_counters_that_add_up() {
    let mut dp = datapath();
    let inner = inner_ipv4(LOCAL_MAC, 32);
    let mut vlan = ethernet(REMOTE_MAC, LOCAL_MAC, 0x8100);
    vlan.extend_from_slice(&[0, 5, 0x08, 0x00]);
    vlan.extend_from_slice(&inner[14..]);
    let (behind_sealed, behind_unresolved) = ([2, 0, 0, 0, 0, 0x44], [2, 0, 0, 0, 0, 0x55]);
    let egress_bases = vec![
        inner_ipv4(REMOTE_MAC, 32),
        inner_ipv4([0xff; 6], 32),
        inner_ipv4(REMOTE_MAC, 1500),
        inner_ipv4(behind_sealed, 32),
        inner_ipv4(behind_unresolved, 32),
        vlan,
    ];
    // The kernel's FDB, as meshd would fill it.
    dp.fdb_insert(REMOTE_MAC, NEAR).unwrap();
    dp.fdb_insert(behind_sealed, SEALED).unwrap();
    dp.fdb_insert(behind_unresolved, UNRESOLVED).unwrap();
    fuzz_program(&dp, EGRESS, &egress_bases, 0x6d65_7368_0001);
    fuzz_program(&dp, PORT, &egress_bases, 0x6d65_7368_0003);
    let ingress_bases = vec![
        from_underlay(NEAR_IP, (PLAIN, 5), NEAR, ME, &inner),
        from_underlay(NEAR_IP, (PLAIN, 5), 0x42, FAR, &inner),
        from_underlay(NEAR_IP, (PLAIN, 5), NEAR, FLOOD_ID, &inner),
        from_underlay(NEAR_IP, (PLAIN | 0x02, 1), NEAR, ME, &[0, 0]),
        from_underlay([198, 18, 0, 66], (PLAIN, 5), NEAR, ME, &inner),
    ];
    fuzz_program(&dp, INGRESS, &ingress_bases, 0x6d65_7368_0002);
}

/// Runs `f` on a thread of its own in a new network namespace holding one veth pair, `fa`
/// (the underlay the programs send copies out of) and `fb`, whose traffic `f` can read from
/// an `AF_PACKET` socket. Flood copies really leave (`bpf_clone_redirect` sends at once, even
/// under BPF_PROG_TEST_RUN): here they go nowhere but `fb`. The namespace goes with the thread.
fn in_capture_netns<T: Send + 'static>(f: impl FnOnce(Capture) -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: plain syscall; it moves only this thread.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        for args in [
            &["link", "add", "fa", "type", "veth", "peer", "name", "fb"][..],
            &["link", "set", "fa", "up"],
            &["link", "set", "fb", "up"],
        ] {
            // A child forked from this thread starts in its namespace.
            let ok = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(ok.success(), "ip {args:?}");
        }
        // Until the kernel has seen the carrier come up, a frame sent out of `fa` is dropped
        // by its placeholder queue.
        let up = |dev: &str| {
            let out = std::process::Command::new("ip")
                .args(["-br", "link", "show", dev])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(" UP ")
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !(up("fa") && up("fb")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the veth pair never came up"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        f(Capture::open("fb"))
    })
    .join()
    .unwrap()
}

/// Frames arriving on one interface, as raw Ethernet.
struct Capture(std::os::fd::OwnedFd);

impl Capture {
    fn open(interface: &str) -> Capture {
        use std::os::fd::FromRawFd;
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain syscalls; the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
        assert!(fd >= 0, "AF_PACKET socket");
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(interface).unwrap();
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        use std::os::fd::AsRawFd;
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind to {interface}");
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Capture(fd)
    }

    /// The next mesh datagram (UDP from the data port) to arrive, waiting up to 10 s; other
    /// traffic (IPv6 neighbour discovery on the fresh link) is skipped.
    fn next_datagram(&self) -> Vec<u8> {
        use std::os::fd::AsRawFd;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut buf = vec![0u8; 65536];
        while std::time::Instant::now() < deadline {
            // SAFETY: a valid buffer of its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let f = &buf[..n as usize];
            let to_data_port = f.len() >= 42
                && f[12..14] == [0x08, 0x00]
                && f[23] == 17
                && f[34..36] == DEFAULT_DATA_PORT.to_be_bytes();
            if to_data_port {
                return f.to_vec();
            }
        }
        panic!("no datagram arrived within 10 s");
    }
}

const NEAR2: u32 = 0x000006; // a second kernel neighbour
const NEAR2_IP: [u8; 4] = [198, 18, 0, 6];

/// ME with two kernel neighbours. Our own tree: NEAR and NEAR2. FAR's tree: its frames come
/// from NEAR, we pass them on to NEAR2. (Both neighbours sit behind the same underlay router
/// MAC, so the outer Ethernet header is the same.)
fn flooding_datapath() -> KernelDatapath {
    let mut dp = KernelDatapath::load(HostConfig {
        underlay: "fa".into(),
        ..host()
    })
    .expect("loading the kernel datapath (needs root)");
    let table = Table {
        me: Some(s(ME)),
        next_hop: HashMap::from([(s(NEAR), s(NEAR)), (s(NEAR2), s(NEAR2)), (s(FAR), s(NEAR))]),
        children: HashMap::from([(s(ME), vec![s(NEAR), s(NEAR2)]), (s(FAR), vec![s(NEAR2)])]),
        parent: HashMap::from([(s(FAR), s(NEAR)), (s(NEAR), s(NEAR)), (s(NEAR2), s(NEAR2))]),
    };
    let link = |peer: u32, ip: [u8; 4], port: u16| LinkView {
        peer: s(peer),
        link_id: peer * 100,
        addr: SocketAddr::from((ip, port)),
        mtu: MTU,
        kernel: true,
        next_hop_mac: Some(NEAR_MAC),
    };
    let links = [link(NEAR, NEAR_IP, NEAR_PORT), link(NEAR2, NEAR2_IP, 6784)];
    dp.sync(ME, compile(&table, &links)).unwrap();
    dp
}

#[test]
fn the_kernel_floods_our_frames_to_every_child_of_our_tree() {
    in_capture_netns(|cap| {
        let dp = flooding_datapath();
        for frame in [
            inner_ipv4([0xff; 6], 40),
            inner_ipv4([2, 0, 0, 0, 0, 0x99], 40),
        ] {
            // Broadcast, and a unicast nobody has learnt: one copy per child, nothing else.
            run(&dp, EGRESS, &frame, TC_ACT_SHOT, Some(K::TxFlooded));
            for (ip, port) in [(NEAR_IP, NEAR_PORT), (NEAR2_IP, 6784)] {
                let (h, inner) = outer(&cap.next_datagram(), MY_IP, ip, port);
                assert_eq!(h, WireHeader::new(ME, FLOOD_ID, INITIAL_HOPS, false));
                assert_eq!(inner, frame);
            }
        }
        // Too big for a child's link: meshd answers it, as in the TAP path.
        let big = inner_ipv4([0xff; 6], MTU as usize - 28 + 1);
        assert_eq!(run(&dp, EGRESS, &big, TC_ACT_OK, Some(K::TxTooBig)), big);
        let stats = dp.link_stats(NEAR2 * 100).unwrap();
        assert_eq!(stats.tx_packets, 2, "each copy is counted on its link");
    });
}

#[test]
fn a_neighbours_flood_is_passed_on_along_the_origins_tree_and_delivered() {
    in_capture_netns(|cap| {
        let dp = flooding_datapath();
        let mut inner = inner_ipv4([0xff; 6], 40);
        inner[6..12].copy_from_slice(&REMOTE_MAC);
        let dgram = from_underlay(NEAR_IP, (PLAIN, 9), FAR, FLOOD_ID, &inner);
        let out = run(&dp, INGRESS, &dgram, TC_ACT_REDIRECT, Some(K::RxFlooded));
        assert_eq!(
            out, inner,
            "delivered to the bridge: exactly the inner frame"
        );
        let (h, carried) = outer(&cap.next_datagram(), MY_IP, NEAR2_IP, 6784);
        assert_eq!(h, WireHeader::new(FAR, FLOOD_ID, 8, false), "one hop less");
        assert_eq!(carried, inner);
        assert!(
            dp.fdb()
                .iter()
                .any(|(m, p, _)| *m == REMOTE_MAC && *p == FAR),
            "learnt from FAR's parent: {:?}",
            dp.fdb()
        );

        // The last hop allowed: delivered, passed on to nobody. The next flood (a positive
        // control through the same path) is the next datagram out.
        let last = from_underlay(NEAR_IP, (PLAIN, 1), FAR, FLOOD_ID, &inner);
        run(&dp, INGRESS, &last, TC_ACT_REDIRECT, Some(K::RxFlooded));
        let control = from_underlay(NEAR_IP, (PLAIN, 7), FAR, FLOOD_ID, &inner);
        run(&dp, INGRESS, &control, TC_ACT_REDIRECT, Some(K::RxFlooded));
        let (h, _) = outer(&cap.next_datagram(), MY_IP, NEAR2_IP, 6784);
        assert_eq!(h.hops, 6, "the hop-limit-1 flood was not copied");

        // A frame claiming FAR's origin from NEAR2 (not FAR's parent) is delivered but
        // teaches nothing.
        let mut liar = inner_ipv4(LOCAL_MAC, 40);
        let planted = [2, 0, 0, 0, 0, 0x77];
        liar[6..12].copy_from_slice(&planted);
        let lie = from_underlay(NEAR2_IP, (PLAIN, 9), FAR, ME, &liar);
        run(&dp, INGRESS, &lie, TC_ACT_REDIRECT, Some(K::RxDelivered));
        assert!(
            !dp.fdb().iter().any(|(m, _, _)| *m == planted),
            "{:?}",
            dp.fdb()
        );
        // Too big for the onward link: meshd gets it whole.
        let mut big = inner_ipv4([0xff; 6], MTU as usize - 28 + 1);
        big[6..12].copy_from_slice(&REMOTE_MAC);
        let big = from_underlay(NEAR_IP, (PLAIN, 9), FAR, FLOOD_ID, &big);
        assert_eq!(run(&dp, INGRESS, &big, TC_ACT_OK, Some(K::RxToMeshd)), big);
    });
}
