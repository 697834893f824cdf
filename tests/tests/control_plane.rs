//! The control plane with real meshd processes in a namespace lab: joining, routing around
//! dropped links, failures, partitions, NAT, and authentication.

use std::time::{Duration, Instant};

use mesh_tests::{
    Host, Lab,
    mesh::{Meshd, full_mesh, peer, peers, sees_established},
    wait_until,
};

const PASSWORD: &str = "correct horse battery staple";

fn start_all(lab: &mut Lab, hosts: &[Host], seeds: &[Option<usize>], pw: &str) -> Vec<Meshd> {
    let pwfile = lab.password_file("mesh", pw).unwrap();
    let pwfile = pwfile.to_str().unwrap().to_owned();
    let mut nodes = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let mut args = vec!["--password-file".to_string(), pwfile.clone()];
        if let Some(s) = seeds[i] {
            args.push(hosts[s].addr.to_string());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(lab.start_meshd(h, &refs).unwrap());
    }
    nodes
}

/// Waits until every node sees every other established; returns how long it took.
fn wait_full_mesh(nodes: &[Meshd], limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    wait_until(limit, || full_mesh(nodes)).then(|| t0.elapsed())
}

fn dump(nodes: &[Meshd]) -> String {
    nodes
        .iter()
        .map(|n| format!("{}: {:#?}", n.host.name, peers(n).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn five_hosts_each_knowing_one_converge_to_a_full_mesh() {
    let mut lab = Lab::new("cp-join").unwrap();
    let hosts: Vec<Host> = (1..=5)
        .map(|i| lab.add_host(&format!("h{i}")).unwrap())
        .collect();
    // A chain of introductions: h1 knows nobody, h2 knows h1, h3 knows h2, ...
    let seeds = [None, Some(0), Some(1), Some(2), Some(3)];
    let t0 = Instant::now();
    let nodes = start_all(&mut lab, &hosts, &seeds, PASSWORD);
    let started = t0.elapsed();
    let took = wait_full_mesh(&nodes, Duration::from_secs(15));
    assert!(
        took.is_some(),
        "not a full mesh within 3 s of the last start (starting took {started:?}):\n{}",
        dump(&nodes)
    );
    println!(
        "full mesh of 5 after {:?} (starting all took {started:?})",
        took.unwrap()
    );
}

#[test]
fn a_dropped_link_is_routed_through_a_third_host_and_heals_directly() {
    let mut lab = Lab::new("cp-via").unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let c = lab.add_host("c").unwrap();
    lab.drop_between(&a, &c).unwrap();
    let hosts = [a.clone(), b.clone(), c.clone()];
    let nodes = start_all(&mut lab, &hosts, &[None, Some(0), Some(1)], PASSWORD);
    let (na, nc) = (&nodes[0], &nodes[2]);
    let via_b = |n: &Meshd, other: &str| {
        peer(n, other).is_some_and(|p| p["via"] == "b" && p["state"] != "established")
    };
    assert!(
        wait_until(Duration::from_secs(15), || via_b(na, "c") && via_b(nc, "a")),
        "a and c should reach each other via b:\n{}",
        dump(&nodes)
    );
    let routes = mesh_tests::mesh::meshctl_json(na, &["routes"]).unwrap();
    let to_c = routes["unicast"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["destination"] == "c")
        .cloned();
    assert_eq!(to_c.unwrap()["next_hop"], "b", "{routes}");

    lab.allow_between(&a, &c).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || sees_established(na, &["c"])
            && peer(na, "c").is_some_and(|p| p["via"].is_null())),
        "a direct a-c connection should form once the path is open:\n{}",
        dump(&nodes)
    );
}

#[test]
fn a_killed_peer_is_gone_everywhere() {
    let mut lab = Lab::new("cp-kill").unwrap();
    let hosts: Vec<Host> = (1..=4)
        .map(|i| lab.add_host(&format!("k{i}")).unwrap())
        .collect();
    let nodes = start_all(
        &mut lab,
        &hosts,
        &[None, Some(0), Some(1), Some(2)],
        PASSWORD,
    );
    assert!(
        wait_full_mesh(&nodes, Duration::from_secs(15)).is_some(),
        "{}",
        dump(&nodes)
    );
    let t0 = Instant::now();
    lab.kill(nodes[1].proc).unwrap();
    let survivors = [&nodes[0], &nodes[2], &nodes[3]];
    let gone = wait_until(Duration::from_secs(15), || {
        survivors
            .iter()
            .all(|n| peer(n, "k2").is_some_and(|p| p["state"] == "unreachable"))
    });
    assert!(
        gone,
        "k2 should be unreachable everywhere (the bench times it):\n{}",
        dump(&nodes)
    );
    println!("dead peer noticed everywhere after {:?}", t0.elapsed());
    // The others stay fully connected among themselves.
    for n in survivors {
        let others: Vec<&str> = ["k1", "k3", "k4"]
            .into_iter()
            .filter(|x| *x != n.host.name)
            .collect();
        assert!(sees_established(n, &others), "{}", dump(&nodes));
    }
}

#[test]
fn a_partitioned_mesh_stays_consistent_and_heals() {
    let mut lab = Lab::new("cp-part").unwrap();
    let hosts: Vec<Host> = (1..=4)
        .map(|i| lab.add_host(&format!("p{i}")).unwrap())
        .collect();
    let nodes = start_all(
        &mut lab,
        &hosts,
        &[None, Some(0), Some(1), Some(2)],
        PASSWORD,
    );
    assert!(
        wait_full_mesh(&nodes, Duration::from_secs(15)).is_some(),
        "{}",
        dump(&nodes)
    );
    // {p1, p2} | {p3, p4}
    for x in 0..2 {
        for y in 2..4 {
            lab.drop_between(&hosts[x], &hosts[y]).unwrap();
        }
    }
    let half_view = |n: &Meshd, mine: [&str; 2], theirs: [&str; 2]| {
        mine.iter()
            .filter(|m| **m != n.host.name)
            .all(|m| peer(n, m).is_some_and(|p| p["state"] == "established"))
            && theirs
                .iter()
                .all(|t| peer(n, t).is_some_and(|p| p["state"] == "unreachable"))
    };
    let split = wait_until(Duration::from_secs(15), || {
        half_view(&nodes[0], ["p1", "p2"], ["p3", "p4"])
            && half_view(&nodes[1], ["p1", "p2"], ["p3", "p4"])
            && half_view(&nodes[2], ["p3", "p4"], ["p1", "p2"])
            && half_view(&nodes[3], ["p3", "p4"], ["p1", "p2"])
    });
    assert!(
        split,
        "each half should see itself up and the other unreachable:\n{}",
        dump(&nodes)
    );
    for x in 0..2 {
        for y in 2..4 {
            lab.allow_between(&hosts[x], &hosts[y]).unwrap();
        }
    }
    let healed = wait_full_mesh(&nodes, Duration::from_secs(15));
    assert!(healed.is_some(), "not healed:\n{}", dump(&nodes));
    println!("partition healed after {:?}", healed.unwrap());
}

#[test]
fn a_host_behind_nat_that_only_dials_out_is_a_full_member() {
    let mut lab = Lab::new("cp-nat").unwrap();
    let c1 = lab.add_host("cloud1").unwrap();
    let c2 = lab.add_host("cloud2").unwrap();
    let mut router = lab.add_nat_router("nat").unwrap();
    let home = lab.add_host_behind(&mut router, "home").unwrap();
    let hosts = [c1.clone(), c2.clone(), home.clone()];
    // The clouds know each other; home knows only cloud1.
    let nodes = start_all(&mut lab, &hosts, &[None, Some(0), Some(0)], PASSWORD);
    assert!(
        wait_full_mesh(&nodes, Duration::from_secs(15)).is_some(),
        "{}",
        dump(&nodes)
    );
    // Cloud peers record the address they observe: the router's, not the home LAN's.
    let seen = peer(&nodes[0], "home").unwrap();
    let addrs: Vec<String> = seen["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert!(
        addrs
            .iter()
            .any(|a| a.starts_with(&format!("{}:", router.wan_addr))),
        "cloud1 should know home by the NAT's address: {addrs:?}"
    );
    assert!(
        !addrs.iter().any(|a| a.starts_with(&home.addr.to_string())),
        "the home LAN address is not reachable and should not be used: {addrs:?}"
    );
}

#[test]
fn peers_with_a_wrong_password_or_none_are_refused_and_never_listed() {
    let mut lab = Lab::new("cp-auth").unwrap();
    let h1 = lab.add_host("good1").unwrap();
    let h2 = lab.add_host("good2").unwrap();
    let bad = lab.add_host("wrongpw").unwrap();
    let open = lab.add_host("nopw").unwrap();
    let nodes = start_all(
        &mut lab,
        &[h1.clone(), h2.clone()],
        &[None, Some(0)],
        PASSWORD,
    );
    let wrong = lab.password_file("wrong", "incorrect horse").unwrap();
    let target = h1.addr.to_string();
    let n_bad = lab
        .start_meshd(&bad, &["--password-file", wrong.to_str().unwrap(), &target])
        .unwrap();
    let n_open = lab.start_meshd(&open, &["--insecure", &target]).unwrap();
    assert!(wait_full_mesh(&nodes, Duration::from_secs(15)).is_some());

    // The intruders' own view: their target failed, with the reason.
    let failed_with = |n: &Meshd, text: &str| {
        peers(n).unwrap_or_default().iter().any(|p| {
            p["state"] == "failed" && p["last_error"].as_str().is_some_and(|e| e.contains(text))
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), || failed_with(&n_bad, "password")),
        "wrong-password node should show a failed peer: {:#?}",
        peers(&n_bad)
    );
    assert!(
        wait_until(Duration::from_secs(15), || failed_with(
            &n_open,
            "authentication mismatch"
        )),
        "no-password node should show an authentication mismatch: {:#?}",
        peers(&n_open)
    );
    // The members never list them, and logged why. The log lines are written when good1
    // refuses each handshake, and a listed intruder would be listed from that moment on: once
    // both are there, the absence below is proven, not hoped for.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let log = lab.log(nodes[0].proc);
            log.contains("wrong password") && log.contains("authentication mismatch")
        }),
        "good1's log should say why:\n{}",
        lab.log(nodes[0].proc)
    );
    for n in &nodes {
        let listed: Vec<String> = peers(n)
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap_or("").to_owned())
            .collect();
        assert!(
            !listed.iter().any(|x| x == "wrongpw" || x == "nopw"),
            "{} lists an intruder: {listed:?}",
            n.host.name
        );
    }
    let log = lab.log(nodes[0].proc);
    assert!(
        log.contains("wrong password"),
        "good1's log should say why:\n{log}"
    );
    assert!(
        log.contains("authentication mismatch"),
        "good1's log should say why:\n{log}"
    );
}

/// A CA and node certificates, written as PEM files into `dir`.
fn issue(dir: &std::path::Path, ca_name: &str, nodes: &[&str]) -> std::path::PathBuf {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = dir.join(format!("{ca_name}.pem"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    for n in nodes {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![n.to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join(format!("{n}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{n}.key")), key.serialize_pem()).unwrap();
    }
    ca_path
}

#[test]
fn certificate_mode_admits_members_of_the_ca_only() {
    let mut lab = Lab::new("cp-certs").unwrap();
    let hosts: Vec<Host> = ["m1", "m2", "other", "m3"]
        .iter()
        .map(|n| lab.add_host(n).unwrap())
        .collect();
    let dir = lab.dir().to_path_buf();
    let ca = issue(&dir, "mesh-ca", &["m1", "m2", "m3"]);
    let rogue_ca = issue(&dir, "rogue-ca", &["other"]);
    let args = |name: &str, ca: &std::path::Path, peer: Option<String>| -> Vec<String> {
        let mut v = vec![
            "--ca-cert".to_string(),
            ca.display().to_string(),
            "--cert".into(),
            dir.join(format!("{name}.crt")).display().to_string(),
            "--key".into(),
            dir.join(format!("{name}.key")).display().to_string(),
        ];
        v.extend(peer);
        v
    };
    let start = |lab: &mut Lab, h: &Host, a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        lab.start_meshd(h, &refs).unwrap()
    };
    let seed = Some(hosts[0].addr.to_string());
    let m1 = start(&mut lab, &hosts[0], args("m1", &ca, None));
    let m2 = start(&mut lab, &hosts[1], args("m2", &ca, seed.clone()));
    let other = start(&mut lab, &hosts[2], args("other", &rogue_ca, seed));
    assert!(
        wait_until(Duration::from_secs(15), || sees_established(&m1, &["m2"])
            && sees_established(&m2, &["m1"])),
        "{}",
        dump(&[m1.clone(), m2.clone()])
    );
    let status = mesh_tests::mesh::status(&m1).unwrap();
    assert_eq!(status["auth"], "certificates");
    assert!(
        wait_until(Duration::from_secs(15), || peers(&other)
            .unwrap_or_default()
            .iter()
            .any(|p| p["state"] == "failed")),
        "{:#?}",
        peers(&other)
    );
    // A member of the CA that starts now is listed by both (the positive control through the
    // same path: handshake with m1, then gossip to m2); the other CA's node, which tried
    // earlier, is still listed by neither.
    let m3 = start(
        &mut lab,
        &hosts[3],
        args("m3", &ca, Some(hosts[0].addr.to_string())),
    );
    assert!(
        wait_until(Duration::from_secs(10), || sees_established(&m1, &["m3"])
            && peer(&m2, "m3").is_some()),
        "{}",
        dump(&[m1.clone(), m2.clone(), m3.clone()])
    );
    for n in [&m1, &m2] {
        assert!(
            peer(n, "other").is_none(),
            "{} admitted a node of another CA: {:#?}",
            n.host.name,
            peers(n)
        );
    }
}
