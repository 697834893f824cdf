//! Half failures of the data path are seen, not hidden. When meshd's TAP device is deleted
//! under it (by an operator or a script), nothing it writes arrives and nothing is read: before,
//! the read loop blocked forever, heartbeats went on, and peers saw the link "up" while every
//! frame fell into a hole. Now meshd stops, says why, and exits non-zero (a service manager
//! starts a fresh one); its peers see it gone and route around it.

use std::time::Duration;

use mesh_tests::{
    Lab,
    mesh::{Meshd, Mode, full_mesh, peer, pings, start_mesh_in, tap_counter},
    wait_until,
};

fn state(node: &Meshd, other: &str) -> String {
    peer(node, other)
        .map(|p| p["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[test]
fn a_tap_device_deleted_under_meshd_ends_it_with_the_reason_and_peers_route_around() {
    let mut lab = Lab::new("tapgone").unwrap();
    let hosts = [
        lab.add_host("ga").unwrap(),
        lab.add_host("gb").unwrap(),
        lab.add_host("gc").unwrap(),
    ];
    let ca = lab
        .add_container(&hosts[0], "gca", Some("10.52.0.1/24"))
        .unwrap();
    let cc = lab
        .add_container(&hosts[2], "gcc", Some("10.52.0.3/24"))
        .unwrap();
    let nodes = start_mesh_in(&mut lab, &hosts, Mode::TapSealed).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    // Positive control: traffic flows, and gb is running.
    assert!(wait_until(Duration::from_secs(15), || pings(
        &lab, &ca, &cc
    )));
    assert!(lab.is_running(nodes[1].proc));

    let out = lab
        .exec(&hosts[1].ns, "ip", &["link", "del", "meshtap0"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // gb notices (within a heartbeat period or so), says why, and exits non-zero.
    assert!(
        wait_until(Duration::from_secs(20), || !lab.is_running(nodes[1].proc)),
        "meshd kept running without its TAP device: {}",
        lab.log(nodes[1].proc)
    );
    let log = lab.log(nodes[1].proc);
    assert!(
        log.contains("the data path failed") && log.contains("meshtap0"),
        "{log}"
    );
    assert!(
        !log.contains('\x1b'),
        "terminal colours in a log file: {log}"
    );
    let code = lab.exit_code(nodes[1].proc);
    assert!(code.is_some_and(|c| c != 0), "exit status {code:?}");
    // Its peers see it gone, and carry on between themselves.
    assert!(wait_until(Duration::from_secs(15), || {
        state(&nodes[0], "gb") != "established" && state(&nodes[2], "gb") != "established"
    }));
    assert!(pings(&lab, &ca, &cc));
}

#[test]
fn sends_that_fail_are_counted_and_meshd_recovers_when_the_underlay_returns() {
    let mut lab = Lab::new("sendfail").unwrap();
    let hosts = [lab.add_host("sa").unwrap(), lab.add_host("sb").unwrap()];
    let ca = lab
        .add_container(&hosts[0], "sca", Some("10.53.0.1/24"))
        .unwrap();
    let cb = lab
        .add_container(&hosts[1], "scb", Some("10.53.0.2/24"))
        .unwrap();
    let nodes = start_mesh_in(&mut lab, &hosts, Mode::TapSealed).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    assert!(wait_until(Duration::from_secs(15), || pings(
        &lab, &ca, &cb
    )));
    assert_eq!(tap_counter(&nodes[0], "tap_send_errors"), 0);

    // sa's underlay goes down: its route goes with it, and every send fails at once
    // (ENETUNREACH) until the control connection times out and the link is dropped.
    let ip = |lab: &Lab, args: &[&str]| {
        let out = lab.exec(&hosts[0].ns, "ip", args).unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    ip(&lab, &["link", "set", "u0", "down"]);
    assert!(
        wait_until(Duration::from_secs(15), || {
            tap_counter(&nodes[0], "tap_send_errors") > 0
        }),
        "failed sends were not counted"
    );
    assert!(
        lab.is_running(nodes[0].proc),
        "a failing send is no reason to stop"
    );
    ip(&lab, &["link", "set", "u0", "up"]);
    ip(
        &lab,
        &[
            "addr",
            "replace",
            &format!("{}/24", hosts[0].addr),
            "dev",
            "u0",
        ],
    );
    assert!(wait_until(Duration::from_secs(30), || full_mesh(&nodes)));
    assert!(wait_until(Duration::from_secs(15), || pings(
        &lab, &ca, &cb
    )));
}
