//! `meshctl network create / ls / rm`: a network created on one host is known on every host
//! (gossiped in its creator's signed entry) and across the creator's restart; only the creator
//! removes it; bad requests say why and change nothing.

use std::time::Duration;

use mesh_tests::{
    Lab,
    mesh::{Mode, full_mesh, meshctl_on, start_mesh_in},
    wait_until,
};
use serde_json::Value;

fn networks(node: &mesh_tests::mesh::Meshd) -> Vec<Value> {
    let out = meshctl_on(node, &["network", "ls", "--json"]).unwrap();
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn named(list: &[Value], name: &str) -> Option<Value> {
    list.iter().find(|n| n["name"] == name).cloned()
}

#[test]
fn a_network_created_on_one_host_is_known_everywhere_and_only_its_creator_removes_it() {
    let mut lab = Lab::new("networks").unwrap();
    let hosts: Vec<_> = (1..=3)
        .map(|i| lab.add_host(&format!("nw{i}")).unwrap())
        .collect();
    let nodes = start_mesh_in(&mut lab, &hosts, Mode::TapPlain).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));

    // `default` is there without anyone creating it.
    let d = named(&networks(&nodes[2]), "default").expect("the default network");
    assert_eq!(d["creator"], "");
    assert_eq!(d["vlan"], 1, "default is untagged VLAN 1");

    meshctl_on(
        &nodes[0],
        &["network", "create", "web", "--subnet", "10.60.0.0/16"],
    )
    .unwrap();
    let mut seen = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            seen = named(&networks(&nodes[2]), "web");
            seen.is_some()
        }),
        "web reached the third host"
    );
    let web = seen.unwrap();
    assert_eq!(web["subnet"], "10.60.0.0/16");
    assert_eq!(web["creator"], "nw1");
    assert_eq!(web["id"].as_str().unwrap().len(), 16);
    assert_eq!(web["vlan"], 2, "the lowest free VLAN id");
    assert_eq!(web["vlan_taken"], false);

    // Bad requests: each refused with its reason, nothing changes.
    let before = networks(&nodes[1]);
    for (args, says) in [
        (
            vec!["network", "create", "web", "--subnet", "10.61.0.0/16"],
            "exists already",
        ),
        (
            vec!["network", "create", "default", "--subnet", "10.61.0.0/16"],
            "every host",
        ),
        (
            vec!["network", "create", "Bad Name", "--subnet", "10.61.0.0/16"],
            "not a network name",
        ),
        (
            vec!["network", "create", "db", "--subnet", "10.61.0.1/16"],
            "did you mean 10.61.0.0/16",
        ),
        (
            vec!["network", "create", "db", "--subnet", "banana"],
            "not an IPv4 subnet",
        ),
        (vec!["network", "rm", "web"], "created by nw1"),
        (vec!["network", "rm", "nothing"], "no network called"),
        (vec!["network", "rm", "default"], "cannot be removed"),
    ] {
        let err = meshctl_on(&nodes[1], &args).unwrap_err().to_string();
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(networks(&nodes[1]), before, "nothing changed");

    // Something attached to it on another host: it cannot be removed until detached there.
    let ns = format!("/var/run/netns/{}", lab.add_bare_netns("nwa").unwrap());
    for (args, says) in [
        (
            vec![
                "attach",
                "--netns",
                &ns,
                "--network",
                "nope",
                "10.60.0.5/16",
            ],
            "no network called \"nope\"",
        ),
        (
            vec!["attach", "--netns", &ns, "--network", "web", "10.99.0.5/16"],
            "not in network web's subnet 10.60.0.0/16",
        ),
    ] {
        let err = meshctl_on(&nodes[1], &args).unwrap_err().to_string();
        assert!(err.contains(says), "{args:?}: {err}");
    }
    meshctl_on(
        &nodes[1],
        &["attach", "--netns", &ns, "--network", "web", "10.60.0.5/16"],
    )
    .unwrap();
    let mut err = String::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            err = meshctl_on(&nodes[0], &["network", "rm", "web"])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            err.contains("in use on nw2")
        }),
        "{err}"
    );
    meshctl_on(&nodes[1], &["detach", "--netns", &ns]).unwrap();

    // The creator's restart keeps it.
    lab.terminate(nodes[0].proc, Duration::from_secs(10))
        .unwrap();
    let n1 = lab
        .start_meshd(&hosts[0], &["--insecure", "--datapath", "tap"])
        .unwrap();
    assert_eq!(named(&networks(&n1), "web").unwrap()["id"], web["id"]);

    // Removed by its creator: gone everywhere.
    meshctl_on(&n1, &["network", "rm", "web"]).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || named(
            &networks(&nodes[2]),
            "web"
        )
        .is_none()),
        "the removal reached the third host"
    );
}
