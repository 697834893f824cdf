//! Addresses from mesh's allocator (docs/ipam.md) in a real mesh: namespaces attached to a
//! named network without an address get one from its range, unique across the mesh — the
//! creator's own, or space another host was given on asking — and reach each other; a full
//! range says so; the default network still needs addresses given.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use mesh_tests::{
    Lab,
    mesh::{
        Meshd, Mode, full_mesh, meshctl_json, meshctl_on, pings_from_netns, start_mesh_in_with,
    },
    wait_until,
};
use serde_json::Value;

/// The IPv4 addresses meshd's attachments on `node` have in network `network`.
fn addresses(node: &Meshd, network: &str) -> Vec<Ipv4Addr> {
    let v: Value = meshctl_json(node, &["attachments"]).unwrap();
    v["attached"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["network"] == network)
        .flat_map(|a| a["cidrs"].as_array().unwrap().clone())
        .map(|c| {
            c.as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// `count` hosts named `prefix`1.. meshed in TAP mode (meshd also given `extra`), and network
/// `pool` with `subnet` created on the first and known to every host.
fn pool_mesh(
    label: &str,
    prefix: &str,
    count: usize,
    subnet: &str,
    extra: &[&str],
) -> (Lab, Vec<mesh_tests::Host>, Vec<Meshd>) {
    let mut lab = Lab::new(label).unwrap();
    let hosts: Vec<_> = (1..=count)
        .map(|i| lab.add_host(&format!("{prefix}{i}")).unwrap())
        .collect();
    let nodes = start_mesh_in_with(&mut lab, &hosts, Mode::TapPlain, extra).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    meshctl_on(
        &nodes[0],
        &["network", "create", "pool", "--subnet", subnet],
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || nodes.iter().all(|n| {
            meshctl_on(n, &["network", "ls"]).unwrap().contains("pool")
        })),
        "every host knows the network"
    );
    (lab, hosts, nodes)
}

#[test]
fn namespaces_on_a_named_network_get_unique_addresses_from_every_host() {
    let (mut lab, hosts, nodes) = pool_mesh("ipam", "ip", 3, "10.80.0.0/22", &[]);

    // A hundred namespaces per host, the three hosts at once: 300 addresses. Only the creator
    // owns space at first, the others ask for some.
    const EACH: usize = 100;
    let mut spaces: Vec<Vec<String>> = Vec::new();
    for h in 0..3 {
        spaces.push(
            (0..EACH)
                .map(|i| {
                    let ns = lab.add_bare_netns(&format!("p{h}n{i}")).unwrap();
                    format!("/var/run/netns/{ns}")
                })
                .collect(),
        );
    }
    std::thread::scope(|s| {
        for (node, list) in nodes.iter().zip(&spaces) {
            s.spawn(move || {
                for ns in list {
                    meshctl_on(node, &["attach", "--netns", ns, "--network", "pool"])
                        .unwrap_or_else(|e| panic!("{}: {e:#}", node.host.name));
                }
            });
        }
    });
    let mut all = Vec::new();
    for n in &nodes {
        let mine = addresses(n, "pool");
        assert_eq!(mine.len(), EACH, "{}: {mine:?}", n.host.name);
        all.extend(mine);
    }
    let unique: BTreeSet<Ipv4Addr> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no address twice: {all:?}");
    // 10.80.0.0/22, less its network and broadcast addresses.
    let (network, broadcast) = (
        u32::from(Ipv4Addr::new(10, 80, 0, 0)),
        u32::from(Ipv4Addr::new(10, 80, 3, 255)),
    );
    assert!(
        all.iter()
            .all(|a| (network + 1..broadcast).contains(&u32::from(*a))),
        "inside the subnet, not its network or broadcast address: {all:?}"
    );

    // They are real: a namespace on the last host reaches one on the first.
    let first = addresses(&nodes[0], "pool")[0].to_string();
    assert!(
        wait_until(Duration::from_secs(20), || pings_from_netns(
            &spaces[2][0],
            &first
        )),
        "allocated addresses carry traffic"
    );

    // Detached, an address goes back and is handed out again, still without a duplicate.
    meshctl_on(&nodes[1], &["detach", "--netns", &spaces[1][0]]).unwrap();
    meshctl_on(
        &nodes[1],
        &["attach", "--netns", &spaces[1][0], "--network", "pool"],
    )
    .unwrap();
    let again: Vec<Ipv4Addr> = nodes.iter().flat_map(|n| addresses(n, "pool")).collect();
    let unique: BTreeSet<Ipv4Addr> = again.iter().copied().collect();
    assert_eq!(
        (unique.len(), again.len()),
        (3 * EACH, 3 * EACH),
        "{again:?}"
    );

    // `meshctl ipam` shows who owns what: the second host owns space it was given.
    let v: Value = meshctl_json(&nodes[1], &["ipam"]).unwrap();
    let pool = v
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "pool")
        .cloned()
        .unwrap();
    assert_eq!(pool["size"], 1022);
    assert_eq!(pool["allocated_here"], EACH);
    let owners: BTreeSet<&str> = pool["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["owner"].as_str().unwrap())
        .collect();
    assert!(owners.contains("ip1") && owners.contains("ip2"), "{pool}");
    assert!(meshctl_on(&nodes[1], &["ipam"]).unwrap().contains("10.80."));

    // What a host handed out survives its restart: it hands out none of it again.
    lab.terminate(nodes[1].proc, Duration::from_secs(10))
        .unwrap();
    let n2 = lab
        .start_meshd(&hosts[1], &["--insecure", "--datapath", "tap"])
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || full_mesh(&[
        nodes[0].clone(),
        n2.clone(),
        nodes[2].clone()
    ])));
    let extra = format!("/var/run/netns/{}", lab.add_bare_netns("pextra").unwrap());
    meshctl_on(&n2, &["attach", "--netns", &extra, "--network", "pool"]).unwrap();
    let after: Vec<Ipv4Addr> = [&nodes[0], &n2, &nodes[2]]
        .iter()
        .flat_map(|n| addresses(n, "pool"))
        .collect();
    let unique: BTreeSet<Ipv4Addr> = after.iter().copied().collect();
    assert_eq!(
        (unique.len(), after.len()),
        (3 * EACH + 1, 3 * EACH + 1),
        "{after:?}"
    );

    // A range with room for two: the third says the range is full, and changes nothing.
    meshctl_on(
        &nodes[0],
        &["network", "create", "tiny", "--subnet", "10.81.0.0/30"],
    )
    .unwrap();
    let tiny: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "/var/run/netns/{}",
                lab.add_bare_netns(&format!("t{i}")).unwrap()
            )
        })
        .collect();
    for ns in &tiny[..2] {
        meshctl_on(&nodes[0], &["attach", "--netns", ns, "--network", "tiny"]).unwrap();
    }
    let err = meshctl_on(
        &nodes[0],
        &["attach", "--netns", &tiny[2], "--network", "tiny"],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no free address"), "{err}");
    assert_eq!(addresses(&nodes[0], "tiny").len(), 2);

    // The default network has no allocator: the address must be given.
    let err = meshctl_on(&nodes[0], &["attach", "--netns", &tiny[2]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("give the address"), "{err}");
}

/// Owners of `network`'s pieces as `node` sees them.
fn owners(node: &Meshd, network: &str) -> Vec<String> {
    let v: Value = meshctl_json(node, &["ipam"]).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|n| n["name"] == network)
        .flat_map(|n| n["pieces"].as_array().unwrap().clone())
        .map(|p| p["owner"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_host_gone_for_good_and_reclaimed_returns_its_space_to_its_heir() {
    gone_scenario("ipamgone", None);
}

#[test]
fn a_host_out_of_reach_longer_than_stated_returns_its_space_by_itself() {
    gone_scenario("ipamauto", Some("5s"));
}

/// A host is given space, uses some, and goes for good; its space comes back to its heir,
/// through `meshctl ipam reclaim` or (with `reclaim_after`) by itself.
fn gone_scenario(label: &str, reclaim_after: Option<&str>) {
    let after = reclaim_after.map(|a| format!("--ipam-reclaim-after={a}"));
    let extra: Vec<&str> = after.iter().map(String::as_str).collect();
    let (mut lab, _, nodes) = pool_mesh(label, "ig", 3, "10.82.0.0/24", &extra);
    // The third host is given space by the first (its heir), and uses some.
    for i in 0..2 {
        let ns = format!(
            "/var/run/netns/{}",
            lab.add_bare_netns(&format!("g{i}")).unwrap()
        );
        meshctl_on(&nodes[2], &["attach", "--netns", &ns, "--network", "pool"]).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(15), || owners(&nodes[0], "pool")
            .contains(&"ig3".to_owned())),
        "the first host sees the third's piece"
    );
    let err = meshctl_on(&nodes[0], &["ipam", "reclaim", "ig3"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("is reachable"), "{err}");
    let err = meshctl_on(&nodes[0], &["ipam", "reclaim", "nobody"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds no address space"), "{err}");

    // It goes for good, and is declared gone once the first host no longer reaches it: by
    // the operator, or once it has been out of reach for the stated time.
    lab.terminate(nodes[2].proc, Duration::from_secs(10))
        .unwrap();
    if reclaim_after.is_none() {
        assert!(wait_until(Duration::from_secs(30), || {
            !mesh_tests::mesh::sees_established(&nodes[0], &["ig3"])
                && meshctl_on(&nodes[0], &["ipam", "reclaim", "ig3"]).is_ok()
        }));
    }
    // Its heir (the first host, which gave it its space) takes its pieces back.
    assert!(
        wait_until(Duration::from_secs(40), || {
            let o = owners(&nodes[0], "pool");
            !o.is_empty() && o.iter().all(|x| x == "ig1")
        }),
        "{:?}",
        owners(&nodes[0], "pool")
    );
    let v: Value = meshctl_json(&nodes[0], &["ipam"]).unwrap();
    assert_eq!(
        v[0]["free_here"], 254,
        "all of the range is free with its creator again"
    );
}

#[test]
fn a_partitioned_half_keeps_allocating_and_the_healed_mesh_has_no_duplicate() {
    let (mut lab, hosts, nodes) = pool_mesh("ipampart", "iq", 4, "10.83.0.0/24", &[]);
    let mut n = 0;
    let mut attach = |lab: &mut Lab, node: &Meshd| {
        n += 1;
        let ns = format!(
            "/var/run/netns/{}",
            lab.add_bare_netns(&format!("q{n}")).unwrap()
        );
        meshctl_on(node, &["attach", "--netns", &ns, "--network", "pool"])
            .unwrap_or_else(|e| panic!("{}: {e:#}", node.host.name));
    };
    // Before the split, the third host gets space from the creator.
    attach(&mut lab, &nodes[2]);
    assert!(
        wait_until(Duration::from_secs(15), || owners(&nodes[2], "pool")
            .contains(&"iq3".to_owned())),
        "the third host owns space"
    );

    // Split {1, 2} from {3, 4}: each half allocates on both of its hosts, the second half
    // from the space its third host owns (the fourth asks it for some).
    for x in 0..2 {
        for y in 2..4 {
            lab.drop_between(&hosts[x], &hosts[y]).unwrap();
        }
    }
    assert!(wait_until(Duration::from_secs(20), || {
        !mesh_tests::mesh::sees_established(&nodes[0], &["iq3"])
            && !mesh_tests::mesh::sees_established(&nodes[3], &["iq1"])
    }));
    for node in [&nodes[0], &nodes[1], &nodes[2], &nodes[3]] {
        for _ in 0..3 {
            attach(&mut lab, node);
        }
    }

    // Healed: every address is still held once.
    for x in 0..2 {
        for y in 2..4 {
            lab.allow_between(&hosts[x], &hosts[y]).unwrap();
        }
    }
    assert!(wait_until(Duration::from_secs(30), || full_mesh(&nodes)));
    let all: Vec<Ipv4Addr> = nodes.iter().flat_map(|n| addresses(n, "pool")).collect();
    let unique: BTreeSet<Ipv4Addr> = all.iter().copied().collect();
    assert_eq!((unique.len(), all.len()), (13, 13), "{all:?}");
}
