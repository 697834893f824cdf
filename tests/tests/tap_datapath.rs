//! The TAP datapath with real meshd processes: containers on different hosts talk as if on one
//! switch, broadcasts (ARP) reach everyone, and a host pair that cannot talk directly is
//! relayed by a third.

use std::time::Duration;

use mesh_tests::{
    Container, Lab,
    mesh::{Meshd, full_mesh, meshctl_json, peers, start_mesh, tap_counter as counter},
    wait_until,
};

fn mesh(lab: &mut Lab, hosts: &[mesh_tests::Host]) -> Vec<Meshd> {
    start_mesh(lab, hosts, "tap test").unwrap()
}

fn ping(lab: &Lab, from: &Container, to: &Container) -> bool {
    lab.ping(&from.ns, to.addr.unwrap(), 2).unwrap()
}

#[test]
fn containers_on_three_hosts_reach_each_other() {
    let mut lab = Lab::new("tap-basic").unwrap();
    let hosts: Vec<_> = (1..=3)
        .map(|i| lab.add_host(&format!("t{i}")).unwrap())
        .collect();
    let containers: Vec<Container> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            lab.add_container(
                h,
                &format!("tc{}", i + 1),
                Some(&format!("10.40.0.{}/24", i + 1)),
            )
            .unwrap()
        })
        .collect();
    let nodes = mesh(&mut lab, &hosts);
    assert!(wait_until(Duration::from_secs(5), || full_mesh(&nodes)));
    for a in &containers {
        for b in &containers {
            if a.name != b.name {
                assert!(
                    wait_until(Duration::from_secs(5), || ping(&lab, a, b)),
                    "{} cannot reach {}; status: {}",
                    a.name,
                    b.name,
                    meshctl_json(&nodes[0], &["status"]).unwrap()
                );
            }
        }
    }
    // ARP requests are broadcasts: they crossed, or nothing above would work; the hosts'
    // counters show frames delivered from peers.
    assert!(nodes.iter().all(|n| counter(n, "tap_delivered") > 0));
    // t1 learned tc2's MAC behind t2.
    let link = lab
        .exec(&containers[1].ns, "ip", &["-o", "link", "show", "eth0"])
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
}

#[test]
fn a_host_pair_without_a_direct_path_is_relayed_by_a_third() {
    let mut lab = Lab::new("tap-relay").unwrap();
    let h1 = lab.add_host("r1").unwrap();
    let h2 = lab.add_host("r2").unwrap();
    let h3 = lab.add_host("r3").unwrap();
    lab.drop_between(&h1, &h3).unwrap();
    let c1 = lab.add_container(&h1, "rc1", Some("10.40.0.1/24")).unwrap();
    let c2 = lab.add_container(&h2, "rc2", Some("10.40.0.2/24")).unwrap();
    let c3 = lab.add_container(&h3, "rc3", Some("10.40.0.3/24")).unwrap();
    // r2 first: the others know only it.
    let nodes = mesh(&mut lab, &[h2.clone(), h1.clone(), h3.clone()]);
    let relayed = |lab: &Lab| ping(lab, &c1, &c3) && ping(lab, &c3, &c1);
    assert!(
        wait_until(Duration::from_secs(8), || relayed(&lab)),
        "rc1 and rc3 should talk through r2; r1 peers: {:#?}",
        peers(&nodes[1])
    );
    assert!(ping(&lab, &c1, &c2));
    assert!(
        counter(&nodes[0], "tap_relayed") > 0,
        "r2 relayed the unicast frames"
    );
    assert_eq!(
        counter(&nodes[0], "tap_dropped_loop"),
        0,
        "no frame came back to its origin or ran out of hops"
    );
}
