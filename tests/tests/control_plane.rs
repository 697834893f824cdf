//! The control plane with real meshd processes in a namespace lab: joining, routing around
//! dropped links, failures, partitions, NAT, and authentication.

use std::time::{Duration, Instant};

use mesh_tests::{
    Host, Lab,
    mesh::{Meshd, peer, peers, sees_established},
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

fn names(hosts: &[Host]) -> Vec<String> {
    hosts.iter().map(|h| h.name.clone()).collect()
}

/// Waits until every node sees every other established; returns how long it took.
fn wait_full_mesh(nodes: &[Meshd], hosts: &[Host], limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let all = names(hosts);
    wait_until(limit, || {
        nodes.iter().all(|n| {
            let others: Vec<&str> = all
                .iter()
                .filter(|x| **x != n.host.name)
                .map(String::as_str)
                .collect();
            sees_established(n, &others)
        })
    })
    .then(|| t0.elapsed())
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
    let took = wait_full_mesh(&nodes, &hosts, Duration::from_secs(3));
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
