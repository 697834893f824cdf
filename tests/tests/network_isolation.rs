//! Networks are isolated in the data path: two networks with the same subnet on the same two
//! hosts, each network's containers reach each other, and no frame of one — ARP, broadcast,
//! or unicast to a MAC on the other, even from a container that set that neighbour by hand —
//! reaches the other's containers or the `default` network's (tcpdump inside them), in the
//! TAP datapath and in the kernel one. Each capture's positive control (its own network's
//! traffic) comes after the frames it must not see, through the same path.

use std::{path::Path, time::Duration};

use mesh_tests::{
    Lab, ProcId,
    mesh::{Meshd, Mode, full_mesh, meshctl_on, start_mesh_in, tap_counter},
    wait_until,
};
use serde_json::Value;

/// A namespace attached to `network` with `cidr` through `node`: (netns name, MAC inside).
fn attach(lab: &mut Lab, node: &Meshd, name: &str, network: &str, cidr: &str) -> (String, String) {
    let ns = lab.add_bare_netns(name).unwrap();
    let path = format!("/var/run/netns/{ns}");
    meshctl_on(
        node,
        &["attach", "--netns", &path, "--network", network, cidr],
    )
    .unwrap();
    let link = link_in(lab, &ns);
    (ns, link["address"].as_str().unwrap().to_owned())
}

fn link_in(lab: &Lab, ns: &str) -> Value {
    let out = lab
        .exec(ns, "ip", &["-j", "link", "show", "mesh0"])
        .unwrap();
    let links: Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0].clone()
}

/// tcpdump on `ns`'s mesh0, with link-level headers, line-buffered into the lab's log.
fn capture(lab: &mut Lab, ns: &str) -> ProcId {
    let p = lab
        .spawn(
            ns,
            Path::new("/usr/bin/tcpdump"),
            &[
                "-i",
                "mesh0",
                "-l",
                "-n",
                "-e",
                "--immediate-mode",
                "not ip6",
            ],
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || lab
            .log(p)
            .contains("listening on")),
        "tcpdump started: {}",
        lab.log(p)
    );
    p
}

/// A broadcast ARP request for 10.70.0.2 from `mac`, tagged with VLAN `vlan` by its sender.
fn tagged_arp(mac: &str, vlan: u16) -> Vec<u8> {
    let src: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&vlan.to_be_bytes());
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[10, 70, 0, 9, 0, 0, 0, 0, 0, 0, 10, 70, 0, 2]);
    f
}

fn ping(lab: &Lab, ns: &str, args: &[&str]) -> bool {
    let mut all = vec!["-n", "-q", "-W", "1"];
    all.extend_from_slice(args);
    lab.exec(ns, "ping", &all).unwrap().status.success()
}

fn two_networks_with_one_subnet_do_not_mix(mode: Mode, lab_name: &str) {
    let mut lab = Lab::new(lab_name).unwrap();
    let hosts: Vec<_> = (1..=2)
        .map(|i| lab.add_host(&format!("{lab_name}{i}")).unwrap())
        .collect();
    let nodes = start_mesh_in(&mut lab, &hosts, mode).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    for net in ["red", "blue"] {
        meshctl_on(
            &nodes[0],
            &["network", "create", net, "--subnet", "10.70.0.0/24"],
        )
        .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(15), || {
            let out = meshctl_on(&nodes[1], &["network", "ls", "--json"]).unwrap();
            serde_json::from_str::<Value>(&out)
                .unwrap()
                .as_array()
                .unwrap()
                .len()
                == 3
        }),
        "both networks reached the second host"
    );

    // The same addresses in both networks, on both hosts; and a `default` container.
    let (r1, r1_mac) = attach(&mut lab, &nodes[0], "r1", "red", "10.70.0.1/24");
    let (b1, b1_mac) = attach(&mut lab, &nodes[0], "b1", "blue", "10.70.0.1/24");
    let (d1, d1_mac) = attach(&mut lab, &nodes[0], "d1", "default", "10.70.0.3/24");
    let (r2, r2_mac) = attach(&mut lab, &nodes[1], "r2", "red", "10.70.0.2/24");
    let (b2, _) = attach(&mut lab, &nodes[1], "b2", "blue", "10.70.0.2/24");
    let (d2, _) = attach(&mut lab, &nodes[1], "d2", "default", "10.70.0.2/24");

    // A named network's interfaces leave room for its tag; full-size packets get through.
    let overlay = link_in(&lab, &d1)["mtu"].as_u64().unwrap();
    assert_eq!(link_in(&lab, &r1)["mtu"].as_u64().unwrap(), overlay - 4);
    for (ns, what) in [(&r1, "red"), (&b1, "blue"), (&d1, "default")] {
        assert!(
            wait_until(Duration::from_secs(20), || ping(
                &lab,
                ns,
                &["-c", "1", "10.70.0.2"]
            )),
            "{what} reaches its own network's 10.70.0.2"
        );
    }
    let full = (overlay - 4 - 28).to_string();
    assert!(
        ping(
            &lab,
            &r1,
            &["-c", "1", "-M", "do", "-s", &full, "10.70.0.2"]
        ),
        "a full-size packet within red"
    );

    let in_r2 = capture(&mut lab, &r2);
    let in_b2 = capture(&mut lab, &b2);
    let in_d2 = capture(&mut lab, &d2);
    let dropped_before = tap_counter(&nodes[0], "tap_dropped_network");

    // Frames that must not cross: blue and default containers aim at red's MAC by hand; red
    // and blue broadcast ARP for an address every network has; and a default container tags
    // its own frames with red's VLAN id (2: the first network created).
    for (ns, from) in [(&b1, "blue"), (&d1, "default")] {
        lab.exec(
            ns,
            "ip",
            &[
                "neigh",
                "replace",
                "10.70.0.2",
                "lladdr",
                &r2_mac,
                "dev",
                "mesh0",
            ],
        )
        .unwrap();
        assert!(
            !ping(&lab, ns, &["-c", "3", "-i", "0.2", "10.70.0.2"]),
            "{from} reached red's container"
        );
    }
    mesh_tests::netns::send_frames(&d1, "mesh0", vec![tagged_arp(&d1_mac, 2); 5]).unwrap();
    // The positive controls, last: red to red, blue to blue, default to default.
    lab.exec(&r1, "ip", &["neigh", "flush", "dev", "mesh0"])
        .unwrap();
    for ns in [&b1, &d1] {
        // The entries set by hand (a flush leaves those).
        lab.exec(ns, "ip", &["neigh", "del", "10.70.0.2", "dev", "mesh0"])
            .unwrap();
    }
    assert!(
        ping(&lab, &r1, &["-c", "3", "-i", "0.2", "10.70.0.2"]),
        "red to red"
    );
    assert!(
        ping(&lab, &b1, &["-c", "3", "-i", "0.2", "10.70.0.2"]),
        "blue to blue"
    );
    assert!(
        ping(&lab, &d1, &["-c", "3", "-i", "0.2", "10.70.0.2"]),
        "default to default"
    );

    let saw = |p: ProcId, mac: &str| lab.log(p).contains(mac);
    assert!(
        wait_until(Duration::from_secs(10), || saw(in_r2, &r1_mac)
            && saw(in_b2, &b1_mac)
            && saw(in_d2, &d1_mac)),
        "each capture saw its own network:\nred {}\nblue {}\ndefault {}",
        lab.log(in_r2),
        lab.log(in_b2),
        lab.log(in_d2)
    );
    let (r2_log, b2_log, d2_log) = (lab.log(in_r2), lab.log(in_b2), lab.log(in_d2));
    for (mac, who) in [(&b1_mac, "blue's b1"), (&d1_mac, "default's d1")] {
        assert!(
            !r2_log.contains(mac.as_str()),
            "{who} reached red's r2:\n{r2_log}"
        );
    }
    for (mac, who) in [(&r1_mac, "red's r1"), (&d1_mac, "default's d1")] {
        assert!(
            !b2_log.contains(mac.as_str()),
            "{who} reached blue's b2:\n{b2_log}"
        );
    }
    for (mac, who) in [(&r1_mac, "red's r1"), (&b1_mac, "blue's b1")] {
        assert!(
            !d2_log.contains(mac.as_str()),
            "{who} reached default's d2:\n{d2_log}"
        );
    }
    assert!(
        !d2_log.contains("vlan"),
        "a tagged frame reached default's d2:\n{d2_log}"
    );
    // The self-tagged frames were refused on the sending host, and counted.
    let refused = tap_counter(&nodes[0], "tap_dropped_network")
        + mesh_tests::mesh::kernel_counter(&nodes[0], "kernel_dropped_network");
    assert!(
        refused > dropped_before,
        "the self-tagged frames were counted"
    );

    // A restarted meshd carries its attached networks again (their TAP devices reopened).
    lab.terminate(nodes[1].proc, Duration::from_secs(10))
        .unwrap();
    let pw = lab.dir().join("pw.password");
    let args = mode.args(1, 2, pw.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = lab.start_meshd(&hosts[1], &args).unwrap();
    assert!(wait_until(Duration::from_secs(20), || full_mesh(&[
        nodes[0].clone(),
        again.clone()
    ])));
    for (ns, what) in [(&r1, "red"), (&b1, "blue")] {
        assert!(
            wait_until(Duration::from_secs(20), || ping(
                &lab,
                ns,
                &["-c", "1", "10.70.0.2"]
            )),
            "{what} reaches its own network again after the restart"
        );
    }
}

#[test]
fn tap_datapath_keeps_networks_apart() {
    two_networks_with_one_subnet_do_not_mix(Mode::TapPlain, "isot");
}

#[test]
fn kernel_datapath_keeps_networks_apart() {
    two_networks_with_one_subnet_do_not_mix(Mode::Kernel, "isok");
}

#[test]
fn sealed_links_keep_networks_apart() {
    two_networks_with_one_subnet_do_not_mix(Mode::TapSealed, "isos");
}

#[test]
fn a_mixed_mesh_keeps_networks_apart() {
    two_networks_with_one_subnet_do_not_mix(Mode::Mixed, "isom");
}
