//! `meshctl attach / detach / expose / hide / attachments / create-bridge`: namespaces plugged
//! into the mesh by path and by pid reach each other across hosts; detached they do not;
//! this host itself on the mesh; what meshd did survives its restart; a half-made attachment
//! left by a crash is removed; bad requests say why and change nothing.

use std::{net::Ipv4Addr, time::Duration};

use mesh_tests::{
    Host, Lab, ProcId, bins,
    mesh::{Meshd, Mode, full_mesh, meshctl_on, pings_from_netns, start_mesh_in},
    wait_until,
};
use serde_json::Value;

fn ok(node: &Meshd, args: &[&str]) -> String {
    meshctl_on(node, args).unwrap()
}

fn attachments(node: &Meshd) -> Value {
    serde_json::from_str(&ok(node, &["attachments", "--json"])).unwrap()
}

fn pings_from(netns: &str, addr: &str) -> bool {
    pings_from_netns(netns, addr)
}

/// `ip` inside the namespace file `netns`.
fn ip_in(netns: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .arg("ip")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A process in a network namespace of its own on `host`: (its proc, its namespace file).
fn process_with_own_netns(lab: &mut Lab, host: &Host) -> (ProcId, String) {
    let p = lab
        .spawn(
            &host.ns,
            std::path::Path::new("/usr/bin/unshare"),
            &["--net", "sleep", "600"],
        )
        .unwrap();
    let pid = lab.pid(p).unwrap();
    // unshare execs sleep once the namespace is made: wait until it is not the host's.
    let host_ns = std::fs::read_link(format!("/var/run/netns/{}", host.ns)).ok();
    let path = format!("/proc/{pid}/ns/net");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_link(&path).is_ok_and(|l| Some(&l) != host_ns.as_ref())
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
    }));
    (p, path)
}

/// The links in `ns` (names), to see that a refused request made none.
fn links(lab: &Lab, ns: &str) -> Vec<String> {
    let out = lab.exec(ns, "ip", &["-o", "link", "show"]).unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        // "3: vm1234@if5: <...": the name, without the peer's index.
        .filter_map(|l| l.split(':').nth(1))
        .map(|s| s.trim().split('@').next().unwrap_or_default().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn namespaces_attached_by_path_and_by_pid_reach_each_other_and_the_exposed_host() {
    let mut lab = Lab::new("attach").unwrap();
    let h1 = lab.add_host("at1").unwrap();
    let h2 = lab.add_host("at2").unwrap();
    let nodes = start_mesh_in(&mut lab, &[h1.clone(), h2.clone()], Mode::TapPlain).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    let a1 = lab.add_bare_netns("ata1").unwrap();
    let a1_path = format!("/var/run/netns/{a1}");
    let (_sleeper, a2_path) = process_with_own_netns(&mut lab, &h2);
    let pid = a2_path.split('/').nth(2).unwrap().to_owned();

    ok(&nodes[0], &["attach", "--netns", &a1_path, "10.50.0.1/24"]);
    ok(
        &nodes[1],
        &["attach", "--pid", &pid, "--ifname", "eth7", "10.50.0.2/24"],
    );
    let v = attachments(&nodes[0]);
    assert_eq!(v["attached"][0]["netns"], a1_path.as_str(), "{v}");
    assert_eq!(v["attached"][0]["ifname"], "mesh0", "{v}");
    let mtu = v["mtu"].as_u64().unwrap();
    let (_, inside) = ip_in(&a1_path, &["-o", "addr", "show", "dev", "mesh0"]);
    assert!(inside.contains("10.50.0.1/24"), "{inside}");
    let (_, link) = ip_in(&a1_path, &["-o", "link", "show", "mesh0"]);
    assert!(
        link.contains(&format!("mtu {mtu} ")),
        "the overlay MTU: {link}"
    );
    assert!(ip_in(&a2_path, &["link", "show", "eth7"]).0);

    assert!(
        wait_until(Duration::from_secs(15), || pings_from(
            &a1_path,
            "10.50.0.2"
        )),
        "path-attached to pid-attached across the mesh"
    );
    assert!(pings_from(&a2_path, "10.50.0.1"));

    // This host on the mesh.
    ok(&nodes[0], &["expose", "10.50.0.100/24"]);
    assert!(wait_until(Duration::from_secs(10), || pings_from(
        &a2_path,
        "10.50.0.100"
    )));
    ok(&nodes[0], &["hide"]);
    assert!(
        pings_from(&a2_path, "10.50.0.1"),
        "positive control: the same path"
    );
    assert!(!pings_from(&a2_path, "10.50.0.100"), "hidden");
    assert_eq!(attachments(&nodes[0])["exposed"], serde_json::json!([]));

    // Detached: gone from the namespace and the bridge, unreachable.
    let host_if = v["attached"][0]["host_ifname"].as_str().unwrap().to_owned();
    ok(&nodes[0], &["detach", "--netns", &a1_path]);
    assert!(!ip_in(&a1_path, &["link", "show", "mesh0"]).0);
    assert!(!links(&lab, &h1.ns).contains(&host_if));
    assert!(!pings_from(&a2_path, "10.50.0.1"));
    // Attached again: reachable again (the positive control for the detach).
    ok(&nodes[0], &["attach", "--netns", &a1_path, "10.50.0.1/24"]);
    assert!(wait_until(Duration::from_secs(15), || pings_from(
        &a2_path,
        "10.50.0.1"
    )));

    // meshd restarted: it still knows what it attached, and exposes again.
    ok(&nodes[0], &["expose", "10.50.0.100/24"]);
    lab.terminate(nodes[0].proc, Duration::from_secs(10))
        .unwrap();
    let args = ["--insecure", "--datapath", "tap"];
    let n1 = lab.start_meshd(&h1, &args).unwrap();
    let v = attachments(&n1);
    assert_eq!(v["attached"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["exposed"], serde_json::json!(["10.50.0.100/24"]), "{v}");
    let ok_after = wait_until(Duration::from_secs(20), || {
        pings_from(&a2_path, "10.50.0.100") && pings_from(&a2_path, "10.50.0.1")
    });
    if !ok_after {
        let out = lab.exec(&h1.ns, "ip", &["-d", "link", "show"]).unwrap();
        let addrs = lab.exec(&h1.ns, "ip", &["addr", "show", "mesh"]).unwrap();
        panic!(
            "after the restart: {} {}\n{}\n{}\n{}",
            pings_from(&a2_path, "10.50.0.100"),
            pings_from(&a2_path, "10.50.0.1"),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&addrs.stdout),
            lab.log(n1.proc)
        );
    }
    ok(&n1, &["detach", "--netns", &a1_path]);
    assert!(!ip_in(&a1_path, &["link", "show", "mesh0"]).0);
}

#[test]
fn bad_requests_say_why_and_change_nothing() {
    let mut lab = Lab::new("attachbad").unwrap();
    let h = lab.add_host("ab1").unwrap();
    let node = lab
        .start_meshd(&h, &["--insecure", "--datapath", "tap"])
        .unwrap();
    let a = lab.add_bare_netns("aba").unwrap();
    let b = lab.add_bare_netns("abb").unwrap();
    let (a, b) = (format!("/var/run/netns/{a}"), format!("/var/run/netns/{b}"));
    ok(&node, &["attach", "--netns", &a, "10.51.0.1/24"]);
    let (dead, _) = process_with_own_netns(&mut lab, &h);
    let dead_pid = lab.pid(dead).unwrap().to_string();
    lab.kill(dead).unwrap();

    let before = (links(&lab, &h.ns), attachments(&node));
    for (args, says) in [
        (
            vec!["attach", "--netns", &b, "10.51.0.300/24"],
            "not an address in CIDR",
        ),
        (
            vec!["attach", "--netns", &b, "10.51.0.0/24"],
            "network or broadcast",
        ),
        (
            vec![
                "attach",
                "--netns",
                "/var/run/netns/nothing-here",
                "10.51.0.2/24",
            ],
            "cannot open",
        ),
        (
            vec!["attach", "--netns", "/etc/hostname", "10.51.0.2/24"],
            "not a network namespace",
        ),
        (
            vec!["attach", "--pid", &dead_pid, "10.51.0.2/24"],
            "no process",
        ),
        (vec!["attach", "--netns", &b, "10.51.0.1/24"], "in use"),
        (
            vec!["attach", "--netns", &a, "10.51.0.9/24"],
            "attached already",
        ),
        (
            vec!["attach", "--netns", &b, "--ifname", "a/b", "10.51.0.2/24"],
            "not a valid interface name",
        ),
        (
            vec!["attach", "--netns", &b, "--network", "nope", "10.51.0.2/24"],
            "no network called \"nope\"",
        ),
        (vec!["detach", "--netns", &b], "no mesh0 attached"),
        (
            vec!["expose", "198.18.0.200/24"],
            "route the tunnels into themselves",
        ),
        (vec!["hide", "10.51.0.77/24"], "not exposed"),
    ] {
        let err = match meshctl_on(&node, &args) {
            Ok(out) => panic!("{args:?} was accepted: {out}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(
        (links(&lab, &h.ns), attachments(&node)),
        before,
        "nothing changed"
    );
    assert!(
        !ip_in(&b, &["link", "show", "mesh0"]).0,
        "nothing was left in the namespace"
    );
}

#[test]
fn a_half_made_attachment_left_by_a_crash_is_removed_at_start() {
    let mut lab = Lab::new("attachcrash").unwrap();
    let h = lab.add_host("ac1").unwrap();
    let args = ["--insecure", "--datapath", "tap"];
    let node = lab.start_meshd(&h, &args).unwrap();
    let a = format!("/var/run/netns/{}", lab.add_bare_netns("aca").unwrap());
    let b_ns = lab.add_bare_netns("acb").unwrap();
    let b = format!("/var/run/netns/{b_ns}");
    ok(&node, &["attach", "--netns", &a, "10.52.0.1/24"]);
    let host_if = attachments(&node)["attached"][0]["host_ifname"]
        .as_str()
        .unwrap()
        .to_owned();
    // The alias meshd tags its veths with.
    let out = lab
        .exec(&h.ns, "ip", &["-o", "link", "show", &host_if])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let tag = text
        .split("alias ")
        .nth(1)
        .map(|s| s.split_whitespace().next().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no alias on {host_if}: {text}"));

    // meshd killed in the middle of an attach: a tagged veth, its end in a namespace, no record.
    lab.kill(node.proc).unwrap();
    for cmd in [
        vec![
            "link", "add", "vmhalf", "type", "veth", "peer", "name", "vmhalfp",
        ],
        vec!["link", "set", "vmhalf", "alias", &tag],
        vec!["link", "set", "vmhalfp", "netns", &b_ns],
    ] {
        let out = lab.exec(&h.ns, "ip", &cmd).unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(ip_in(&b, &["link", "show", "vmhalfp"]).0);
    let node = lab.start_meshd(&h, &args).unwrap();
    assert!(
        !links(&lab, &h.ns).contains(&"vmhalf".to_owned()),
        "the orphan is gone"
    );
    assert!(
        !ip_in(&b, &["link", "show", "vmhalfp"]).0,
        "and its end in the namespace"
    );
    assert!(
        links(&lab, &h.ns).contains(&host_if),
        "the recorded attachment stays"
    );
    assert_eq!(attachments(&node)["attached"].as_array().unwrap().len(), 1);
}

#[test]
fn a_bridge_created_before_meshd_is_adopted_with_its_containers() {
    let mut lab = Lab::new("bridge").unwrap();
    let h1 = lab.add_host("br1").unwrap();
    let h2 = lab.add_host("br2").unwrap();
    // Before meshd: the bridge, with the overlay MTU, as a container runtime would find it.
    let out = lab
        .exec(
            &h1.ns,
            bins::path("meshctl").unwrap().to_str().unwrap(),
            &["create-bridge", "--mtu", "1400"],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c1 = lab
        .add_container(&h1, "brc1", Some("10.53.0.1/24"))
        .unwrap();
    let c2 = lab
        .add_container(&h2, "brc2", Some("10.53.0.2/24"))
        .unwrap();
    let nodes = start_mesh_in(&mut lab, &[h1.clone(), h2.clone()], Mode::TapPlain).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    assert!(wait_until(Duration::from_secs(15), || lab
        .ping(&c1.ns, Ipv4Addr::new(10, 53, 0, 2), 1)
        .unwrap_or(false)));
    assert!(lab.ping(&c2.ns, Ipv4Addr::new(10, 53, 0, 1), 1).unwrap());
    let out = lab
        .exec(&h1.ns, "ip", &["-o", "link", "show", "mesh"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("mtu 1400 "),
        "meshd kept the bridge's MTU: {text}"
    );
}

#[test]
fn namespaces_attached_on_kernel_datapath_hosts_reach_each_other() {
    let mut lab = Lab::new("attachk").unwrap();
    let h1 = lab.add_host("ak1").unwrap();
    let h2 = lab.add_host("ak2").unwrap();
    let nodes = start_mesh_in(&mut lab, &[h1.clone(), h2.clone()], Mode::Kernel).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    let a = format!("/var/run/netns/{}", lab.add_bare_netns("aka").unwrap());
    let b = format!("/var/run/netns/{}", lab.add_bare_netns("akb").unwrap());
    ok(&nodes[0], &["attach", "--netns", &a, "10.54.0.1/24"]);
    ok(&nodes[1], &["attach", "--netns", &b, "10.54.0.2/24"]);
    assert!(wait_until(Duration::from_secs(15), || pings_from(
        &a,
        "10.54.0.2"
    )));
    // The kernel carried it: the attached veth is a bridge port like any container's.
    assert!(wait_until(Duration::from_secs(15), || {
        mesh_tests::mesh::kernel_counter(&nodes[0], "kernel_tx_from_port") > 0
    }));
    ok(&nodes[1], &["detach", "--netns", &b]);
    assert!(!pings_from(&a, "10.54.0.2"));
}
