//! The datapath scenarios with real meshd processes: containers on different hosts talk as if
//! on one switch (ICMP, UDP unicast and broadcast, TCP, IPv6 link-local; the TAP datapath,
//! password mode, so every frame is sealed), a host pair that cannot talk directly is relayed
//! by a third, a host behind a NAT that only dials out is reachable both ways, and a link whose
//! data path is blocked is routed around. Each of the last three runs in every [`Mode`]: sealed
//! TAP hosts, plaintext kernel-datapath hosts, and a mixed mesh (the last host on TAP).

use std::{net::UdpSocket, time::Duration};

use mesh_tests::{
    Container, Lab, datagrams_until,
    mesh::{
        Meshd, Mode, full_mesh, kernel_counter, meshctl_json, peer, peers, pings, relayed,
        start_mesh_in, status, tap_counter as counter, tcp_transfer, udp_listener,
    },
    netns, wait_until,
};

/// The container's IPv6 link-local address, once duplicate address detection is done.
fn link_local(lab: &Lab, c: &Container) -> Option<String> {
    let out = lab
        .exec(
            &c.ns,
            "ip",
            &["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"],
        )
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.contains("tentative") {
        return None;
    }
    let addr = text.split("inet6 ").nth(1)?.split('/').next()?;
    Some(addr.to_owned())
}

/// 3 hosts × 2 containers: every pair pings, UDP unicast reaches each container and one
/// broadcast each exactly once, TCP crosses hosts over IPv4 and IPv6 link-local; then what the
/// mode promises about how frames travelled.
fn basic_scenario(label: &str, mode: Mode) {
    let mut lab = Lab::new(label).unwrap();
    let hosts: Vec<_> = (1..=3)
        .map(|i| lab.add_host(&format!("t{i}")).unwrap())
        .collect();
    let containers: Vec<Container> = (0..6)
        .map(|i| {
            lab.add_container(
                &hosts[i / 2],
                &format!("tc{}", i + 1),
                Some(&format!("10.40.0.{}/24", i + 1)),
            )
            .unwrap()
        })
        .collect();
    let nodes = start_mesh_in(&mut lab, &hosts, mode).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    // Nothing BPF-based that the datapath does not need: no observe-only XDP.
    let st = status(&nodes[0]).unwrap();
    let datapath = if mode == Mode::TapSealed {
        "tap"
    } else {
        "ebpf"
    };
    assert_eq!(st["datapath"]["mode"], datapath, "{st}");
    assert_eq!(st["datapath"]["xdp_mode"], "", "{st}");
    for a in &containers {
        for b in &containers {
            if a.name != b.name {
                assert!(
                    wait_until(Duration::from_secs(15), || pings(&lab, a, b)),
                    "{} cannot reach {}; status: {}",
                    a.name,
                    b.name,
                    meshctl_json(&nodes[0], &["status"]).unwrap()
                );
            }
        }
    }

    // UDP, unicast to each container and one broadcast that reaches all of them.
    let socks: Vec<UdpSocket> = containers.iter().map(|c| udp_listener(c, 7000)).collect();
    let sender = netns::run_in(&containers[0].ns, || {
        let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        s.set_broadcast(true).unwrap();
        s
    })
    .unwrap();
    for c in &containers[1..] {
        let to = (c.addr.unwrap(), 7000);
        sender
            .send_to(format!("unicast to {}", c.name).as_bytes(), to)
            .unwrap();
    }
    sender.send_to(b"broadcast", ("10.40.0.255", 7000)).unwrap();
    // Last, along the broadcast tree too: when it is in, a duplicate would have been too.
    sender.send_to(b"end", ("10.40.0.255", 7000)).unwrap();
    for (c, s) in containers.iter().zip(&socks).skip(1) {
        let got = datagrams_until(s, "end", Duration::from_secs(15));
        assert!(
            got.contains(&format!("unicast to {}", c.name)),
            "{}: {got:?}",
            c.name
        );
        assert!(got.contains(&"broadcast".to_owned()), "{}: {got:?}", c.name);
        assert_eq!(got.len(), 2, "{} got a datagram twice: {got:?}", c.name);
    }

    // A TCP stream across two hosts.
    let gso_before = kernel_counter(&nodes[0], "kernel_tx_gso");
    let (from, to) = (&containers[0], &containers[5]);
    let target = to.addr.unwrap().to_string();
    tcp_transfer(&mut lab, from, to, (&target, &target), "16M").unwrap();

    // IPv6 link-local (neighbour discovery is multicast).
    let ll = containers
        .iter()
        .map(|c| {
            let mut a = None;
            assert!(wait_until(Duration::from_secs(15), || {
                a = link_local(&lab, c);
                a.is_some()
            }));
            a.unwrap()
        })
        .collect::<Vec<_>>();
    for (i, a) in containers.iter().enumerate() {
        let b = (i + 3) % 6;
        let target = format!("{}%eth0", ll[b]);
        assert!(
            wait_until(Duration::from_secs(15), || lab
                .exec(&a.ns, "ping", &["-6", "-n", "-c", "1", "-W", "1", &target])
                .unwrap()
                .status
                .success()),
            "{} cannot reach {} over IPv6 link-local",
            a.name,
            containers[b].name
        );
    }
    // TCP over IPv6 link-local (segmented and coalesced, or encapsulated whole, as IPv6).
    let server_ll = format!("{}%eth0", ll[5]);
    let ends = (server_ll.as_str(), server_ll.as_str());
    tcp_transfer(&mut lab, &containers[0], &containers[5], ends, "16M").unwrap();

    // t1 learned tc3's MAC behind t2.
    let link = lab
        .exec(&containers[2].ns, "ip", &["-o", "link", "show", "eth0"])
        .unwrap();
    let text = String::from_utf8_lossy(&link.stdout).to_string();
    let mac = text
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    let fdb = meshctl_json(&nodes[0], &["fdb"]).unwrap();
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == mac.as_str() && e["peer"] == "t2"),
        "t1's fdb should hold {mac} behind t2: {fdb}"
    );

    let (t1, t3) = (&nodes[0], &nodes[2]);
    match mode {
        Mode::TapSealed | Mode::TapPlain => {
            // ARP requests are broadcasts: every host delivered frames from peers.
            assert!(nodes.iter().all(|n| counter(n, "tap_delivered") > 0));
            // The stream was batched: TCP super-frames read from t1's TAP, coalesced into t3's.
            // (Counted as such: frame-per-call ratios are met by ARP floods alone, one read
            // going to two peers.)
            assert!(
                counter(t1, "tap_gso_reads") > 0,
                "no TCP super-frame was read from the TAP"
            );
            assert!(
                counter(t3, "tap_coalesced_writes") > 0,
                "no coalesced super-frame was written to the TAP"
            );
        }
        Mode::Kernel => {
            // Unicast took the kernel path both ways on every host; the TCP stream left t1 as
            // GSO super-frames, encapsulated whole.
            for n in &nodes {
                let st = status(n).unwrap();
                assert!(kernel_counter(n, "kernel_tx_sent") > 0, "{st}");
                assert!(kernel_counter(n, "kernel_rx_delivered") > 0, "{st}");
            }
            // Broadcasts (ARP, the UDP broadcast, IPv6 neighbour discovery) were flooded by
            // the kernel along the broadcast trees, sent and received on every host.
            for n in &nodes {
                assert!(
                    kernel_counter(n, "kernel_tx_flooded") > 0,
                    "{}",
                    status(n).unwrap()
                );
                assert!(
                    kernel_counter(n, "kernel_rx_flooded") > 0,
                    "{}",
                    status(n).unwrap()
                );
            }
            // Containers' frames for kernel peers left before the bridge (port_ingress).
            assert!(kernel_counter(t1, "kernel_tx_from_port") > 0);
            // Frames for containers went straight to their veth, past the bridge.
            assert!(kernel_counter(t3, "kernel_rx_delivered_direct") > 0);
            assert!(
                kernel_counter(t1, "kernel_tx_gso") > gso_before,
                "no GSO super-frame was encapsulated whole: {}",
                status(t1).unwrap()
            );
        }
        Mode::Mixed => {
            // The kernel hosts' own trees have the TAP host as a child: meshd floods their
            // frames. Each other's floods reach them through the kernel.
            for n in &nodes[..2] {
                let st = status(n).unwrap();
                assert!(kernel_counter(n, "kernel_tx_flood_to_meshd") > 0, "{st}");
                assert!(kernel_counter(n, "kernel_rx_flooded") > 0, "{st}");
            }
        }
    }
    // Every link says how its frames travel, whether they are sealed, that its data path is
    // up, and counts traffic.
    for (i, n) in nodes.iter().enumerate() {
        for p in peers(n).unwrap() {
            let both_kernel = i != 2 && p["name"] != "t3";
            let kind = match mode {
                Mode::TapSealed | Mode::TapPlain => "tap",
                Mode::Kernel => "kernel",
                Mode::Mixed if both_kernel => "kernel",
                Mode::Mixed => "tap",
            };
            assert_eq!(p["datapath"], kind, "{p}");
            assert_eq!(p["encrypted"], mode.sealed(), "{p}");
            assert_eq!(p["datapath_health"], "up", "{p}");
            assert!(p["tx_packets"].as_u64().unwrap() > 0, "{p}");
            assert!(p["rx_bytes"].as_u64().unwrap() > 0, "{p}");
            if kind == "kernel" {
                assert!(p["kernel_tx_packets"].as_u64().unwrap() > 0, "{p}");
                assert!(p["kernel_rx_packets"].as_u64().unwrap() > 0, "{p}");
            }
        }
    }
}

#[test]
fn six_containers_on_three_hosts_talk_like_one_switch() {
    basic_scenario("tap-basic", Mode::TapSealed);
}

#[test]
fn six_containers_on_three_hosts_talk_like_one_switch_kernel() {
    basic_scenario("k-basic", Mode::Kernel);
}

#[test]
fn six_containers_on_three_hosts_talk_like_one_switch_mixed() {
    basic_scenario("mx-basic", Mode::Mixed);
}

fn relay_scenario(label: &str, mode: Mode) {
    let mut lab = Lab::new(label).unwrap();
    let h1 = lab.add_host("r1").unwrap();
    let h2 = lab.add_host("r2").unwrap();
    let h3 = lab.add_host("r3").unwrap();
    lab.drop_between(&h1, &h3).unwrap();
    let c1 = lab.add_container(&h1, "rc1", Some("10.40.0.1/24")).unwrap();
    let c2 = lab.add_container(&h2, "rc2", Some("10.40.0.2/24")).unwrap();
    let c3 = lab.add_container(&h3, "rc3", Some("10.40.0.3/24")).unwrap();
    // r2 first: the others know only it.
    let nodes = start_mesh_in(&mut lab, &[h2.clone(), h1.clone(), h3.clone()], mode).unwrap();
    let talk = |lab: &Lab| pings(lab, &c1, &c3) && pings(lab, &c3, &c1);
    assert!(
        wait_until(Duration::from_secs(8), || talk(&lab)),
        "rc1 and rc3 should talk through r2; r1 peers: {:#?}",
        peers(&nodes[1])
    );
    assert!(pings(&lab, &c1, &c2));
    assert!(relayed(&nodes[0]) > 0, "r2 relayed the unicast frames");
    for n in &nodes {
        let loops = counter(n, "tap_dropped_loop")
            + mesh_tests::mesh::kernel_counter(n, "kernel_dropped_loop");
        assert_eq!(
            loops, 0,
            "no frame came back to its origin or ran out of hops"
        );
    }
}

#[test]
fn a_host_pair_without_a_direct_path_is_relayed_by_a_third() {
    relay_scenario("tap-relay", Mode::TapSealed);
}

#[test]
fn a_host_pair_without_a_direct_path_is_relayed_by_a_third_kernel() {
    relay_scenario("k-relay", Mode::Kernel);
}

#[test]
fn a_host_pair_without_a_direct_path_is_relayed_by_a_third_mixed() {
    relay_scenario("mx-relay", Mode::Mixed);
}

/// The seed NAT scenario: a home host behind a router that only lets its own flows out, two
/// cloud hosts. `home_first`: home's meshd starts first (dialling cloud1, which is not up yet)
/// and its container speaks first; otherwise the clouds start first and a cloud container
/// speaks first. In the mixed mode home (the Pi) is the TAP host.
fn nat_scenario(label: &str, home_first: bool, mode: Mode) {
    let mut lab = Lab::new(label).unwrap();
    let cloud1 = lab.add_host("cloud1").unwrap();
    let cloud2 = lab.add_host("cloud2").unwrap();
    let mut router = lab.add_nat_router("nat").unwrap();
    let home = lab.add_host_behind(&mut router, "home").unwrap();
    let cc1 = lab
        .add_container(&cloud1, "cc1", Some("10.42.0.1/24"))
        .unwrap();
    let cc2 = lab
        .add_container(&cloud2, "cc2", Some("10.42.0.2/24"))
        .unwrap();
    let hc = lab
        .add_container(&home, "hc", Some("10.42.0.3/24"))
        .unwrap();
    let pw = lab.password_file("pw", "nat test").unwrap();
    let pw = pw.to_str().unwrap().to_owned();
    let c1_addr = cloud1.addr.to_string();
    // Host i of (cloud1, cloud2, home); all but cloud1 are told cloud1.
    let args = |i: usize| {
        let mut a = mode.args(i, 3, &pw);
        if i > 0 {
            a.push(c1_addr.clone());
        }
        a
    };
    let start = |lab: &mut Lab, h: &mesh_tests::Host, i: usize| {
        let a = args(i);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        lab.start_meshd(h, &refs).unwrap()
    };
    // Nodes in the order cloud1, cloud2, home.
    let nodes = if home_first {
        let h = start(&mut lab, &home, 2);
        // The case is about home dialling before cloud1 listens: its first dial must fail
        // (else this is the other order again).
        assert!(
            wait_until(Duration::from_secs(15), || peers(&h).is_ok_and(|ps| ps
                .iter()
                .any(|p| p["addresses"].to_string().contains(&c1_addr)
                    && p["state"] != "established"
                    && !p["last_error"].as_str().unwrap_or("").is_empty()))),
            "home's first dial of cloud1 did not fail: {:#?}",
            peers(&h)
        );
        let n1 = start(&mut lab, &cloud1, 0);
        let n2 = start(&mut lab, &cloud2, 1);
        vec![n1, n2, h]
    } else {
        let n1 = start(&mut lab, &cloud1, 0);
        let n2 = start(&mut lab, &cloud2, 1);
        let h = start(&mut lab, &home, 2);
        vec![n1, n2, h]
    };
    assert!(
        wait_until(Duration::from_secs(10), || full_mesh(&nodes)),
        "home peers: {:#?}",
        peers(&nodes[2])
    );
    // The first conversation: home's container with cloud2's, or the other way round.
    let (first_from, first_to) = if home_first { (&hc, &cc2) } else { (&cc2, &hc) };
    assert!(
        wait_until(Duration::from_secs(8), || pings(&lab, first_from, first_to)),
        "{} cannot reach {}; cloud2 peers: {:#?}",
        first_from.name,
        first_to.name,
        peers(&nodes[1])
    );
    // Then the rest, both ways.
    for (a, b) in [(&hc, &cc1), (&cc1, &hc), (&hc, &cc2), (&cc2, &hc)] {
        assert!(
            wait_until(Duration::from_secs(15), || pings(&lab, a, b)),
            "{} cannot reach {}",
            a.name,
            b.name
        );
    }
    // The clouds send home's data to the router's address, learnt from home's heartbeats.
    let seen = peer(&nodes[0], "home").unwrap();
    assert_eq!(seen["datapath_health"], "up", "{seen}");
    // Home's frames took the kernel path through the NAT, both ways, when both ends run it.
    let kind = if mode == Mode::Kernel {
        "kernel"
    } else {
        "tap"
    };
    assert_eq!(seen["datapath"], kind, "{seen}");
    if mode == Mode::Kernel {
        assert!(seen["kernel_tx_packets"].as_u64().unwrap() > 0, "{seen}");
        assert!(seen["kernel_rx_packets"].as_u64().unwrap() > 0, "{seen}");
    }
    assert!(seen["rx_packets"].as_u64().unwrap() > 0);
    let wan = router.wan_addr.to_string();
    assert!(
        seen["addresses"].to_string().contains(&wan),
        "cloud1 should reach home through {wan}: {seen}"
    );
}

#[test]
fn containers_behind_a_nat_talk_both_ways_when_the_clouds_start_first() {
    nat_scenario("tap-nat-c", false, Mode::TapSealed);
}

#[test]
fn containers_behind_a_nat_talk_both_ways_when_home_starts_first() {
    nat_scenario("tap-nat-h", true, Mode::TapSealed);
}

#[test]
fn containers_behind_a_nat_talk_both_ways_when_the_clouds_start_first_kernel() {
    nat_scenario("k-nat-c", false, Mode::Kernel);
}

#[test]
fn containers_behind_a_nat_talk_both_ways_when_home_starts_first_kernel() {
    nat_scenario("k-nat-h", true, Mode::Kernel);
}

#[test]
fn containers_behind_a_nat_talk_both_ways_when_the_clouds_start_first_mixed() {
    nat_scenario("mx-nat-c", false, Mode::Mixed);
}

#[test]
fn containers_behind_a_nat_talk_both_ways_when_home_starts_first_mixed() {
    nat_scenario("mx-nat-h", true, Mode::Mixed);
}

fn health_scenario(label: &str, mode: Mode) {
    let mut lab = Lab::new(label).unwrap();
    let hosts: Vec<_> = (1..=3)
        .map(|i| lab.add_host(&format!("x{i}")).unwrap())
        .collect();
    let c1 = lab
        .add_container(&hosts[0], "xc1", Some("10.44.0.1/24"))
        .unwrap();
    let c3 = lab
        .add_container(&hosts[2], "xc3", Some("10.44.0.3/24"))
        .unwrap();
    let nodes = start_mesh_in(&mut lab, &hosts, mode).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    assert!(wait_until(Duration::from_secs(15), || pings(
        &lab, &c1, &c3
    )));
    // A firewall between x1 and x3 that lets QUIC through but not the data port.
    lab.drop_udp_port_between(&hosts[0], &hosts[2], 6784)
        .unwrap();
    let rerouted = |n: &Meshd, other: &str| {
        peer(n, other).is_some_and(|p| {
            p["state"] == "established" && p["datapath_health"] == "down" && p["via"] == "x2"
        })
    };
    assert!(
        wait_until(Duration::from_secs(6), || rerouted(&nodes[0], "x3")
            && rerouted(&nodes[2], "x1")),
        "x1 peers: {:#?}",
        peers(&nodes[0])
    );
    let before = relayed(&nodes[1]);
    assert!(wait_until(Duration::from_secs(15), || pings(
        &lab, &c1, &c3
    ) && pings(
        &lab, &c3, &c1
    )));
    assert!(relayed(&nodes[1]) > before, "x2 relayed");
    // Open again: the direct data path comes back.
    lab.allow_between(&hosts[0], &hosts[2]).unwrap();
    assert!(
        wait_until(Duration::from_secs(6), || {
            peer(&nodes[0], "x3")
                .is_some_and(|p| p["datapath_health"] == "up" && p["via"].is_null())
        }),
        "x1 peers: {:#?}",
        peers(&nodes[0])
    );
    assert!(pings(&lab, &c1, &c3));
}

#[test]
fn a_link_whose_data_path_is_blocked_is_relayed_while_its_control_connection_stays_up() {
    health_scenario("tap-health", Mode::TapSealed);
}

#[test]
fn a_link_whose_data_path_is_blocked_is_relayed_while_its_control_connection_stays_up_kernel() {
    health_scenario("k-health", Mode::Kernel);
}

#[test]
fn a_link_whose_data_path_is_blocked_is_relayed_while_its_control_connection_stays_up_mixed() {
    health_scenario("mx-health", Mode::Mixed);
}
