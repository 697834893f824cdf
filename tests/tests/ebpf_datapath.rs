//! The kernel datapath with real meshd processes on plaintext (`--insecure`) links: containers
//! on different hosts talk as if on one switch, and the frames that can take the kernel path
//! do (the kernel's counters and per-link statistics say so), while floods and misses still
//! go through meshd.

use std::{net::UdpSocket, time::Duration};

use mesh_tests::{
    Container, Lab, datagrams,
    mesh::{Meshd, full_mesh, meshctl_json, peers, status, tcp_transfer},
    netns, wait_until,
};

/// A kernel datapath counter from `meshctl status` (0 when absent).
fn kcounter(node: &Meshd, name: &str) -> u64 {
    status(node).map_or(0, |s| {
        s["datapath"]["kernel_counters"][name].as_u64().unwrap_or(0)
    })
}

/// Starts an `--insecure` meshd with `--datapath ebpf` on every host, each told the first.
fn mesh(lab: &mut Lab, hosts: &[mesh_tests::Host]) -> Vec<Meshd> {
    let first = hosts[0].addr.to_string();
    hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut args = vec!["--insecure", "--datapath", "ebpf"];
            if i > 0 {
                args.push(&first);
            }
            lab.start_meshd(h, &args).unwrap()
        })
        .collect()
}

fn ping(lab: &Lab, from: &Container, to: &Container) -> bool {
    lab.ping(&from.ns, to.addr.unwrap(), 2).unwrap()
}

fn udp_in(c: &Container, port: u16) -> UdpSocket {
    let s = netns::run_in(&c.ns, move || UdpSocket::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

#[test]
fn six_containers_on_three_kernel_hosts_talk_like_one_switch() {
    let mut lab = Lab::new("ebpf-basic").unwrap();
    let hosts: Vec<_> = (1..=3)
        .map(|i| lab.add_host(&format!("k{i}")).unwrap())
        .collect();
    let containers: Vec<Container> = (0..6)
        .map(|i| {
            lab.add_container(
                &hosts[i / 2],
                &format!("kc{}", i + 1),
                Some(&format!("10.40.0.{}/24", i + 1)),
            )
            .unwrap()
        })
        .collect();
    let nodes = mesh(&mut lab, &hosts);
    assert!(wait_until(Duration::from_secs(5), || full_mesh(&nodes)));
    let st = status(&nodes[0]).unwrap();
    assert_eq!(st["datapath"]["mode"], "ebpf", "{st}");
    assert_eq!(st["datapath"]["fallback_reason"], "", "{st}");
    for a in &containers {
        for b in &containers {
            if a.name != b.name {
                assert!(
                    wait_until(Duration::from_secs(5), || ping(&lab, a, b)),
                    "{} cannot reach {}; status: {}",
                    a.name,
                    b.name,
                    status(&nodes[0]).unwrap()
                );
            }
        }
    }
    // Unicast took the kernel path both ways on every host.
    for n in &nodes {
        assert!(kcounter(n, "kernel_tx_sent") > 0, "{}", status(n).unwrap());
        assert!(
            kcounter(n, "kernel_rx_delivered") > 0,
            "{}",
            status(n).unwrap()
        );
    }

    // UDP unicast to each container and one broadcast that reaches each exactly once.
    let socks: Vec<UdpSocket> = containers.iter().map(|c| udp_in(c, 7000)).collect();
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
    for (c, s) in containers.iter().zip(&socks).skip(1) {
        let got = datagrams(s);
        assert!(
            got.contains(&format!("unicast to {}", c.name)),
            "{}: {got:?}",
            c.name
        );
        assert!(got.contains(&"broadcast".to_owned()), "{}: {got:?}", c.name);
        assert_eq!(got.len(), 2, "{} got a datagram twice: {got:?}", c.name);
    }

    // TCP across hosts: GSO super-frames leave whole (the kernel counts them).
    let gso_before = kcounter(&nodes[0], "kernel_tx_gso");
    let (from, to) = (&containers[0], &containers[5]);
    let target = to.addr.unwrap().to_string();
    tcp_transfer(&mut lab, from, to, (&target, &target), "16M").unwrap();
    assert!(
        kcounter(&nodes[0], "kernel_tx_gso") > gso_before,
        "no GSO super-frame was encapsulated whole: {}",
        status(&nodes[0]).unwrap()
    );

    // Every link is a kernel link with traffic counted in the kernel; the kernel FDB knows
    // remote containers.
    for n in &nodes {
        for p in peers(n).unwrap() {
            assert_eq!(p["datapath"], "kernel", "{p}");
            assert_eq!(p["encrypted"], false, "{p}");
            assert!(p["kernel_tx_packets"].as_u64().unwrap() > 0, "{p}");
            assert!(p["kernel_rx_packets"].as_u64().unwrap() > 0, "{p}");
        }
    }
    let fdb = meshctl_json(&nodes[0], &["fdb"]).unwrap();
    assert!(
        fdb.as_array().unwrap().iter().any(|e| e["peer"] == "k3"),
        "k1's fdb should hold k3's containers: {fdb}"
    );
}
