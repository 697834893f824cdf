//! `meshctl ping PEER`: echo requests through the data path report the round-trip time, the
//! loss, and the path taken both ways (direct, or via which relays), on the TAP datapath
//! (sealed) and on the kernel datapath.

use std::time::Duration;

use mesh_tests::{
    Lab, bins,
    mesh::{Meshd, Mode, full_mesh, peer, start_mesh_in, tap_counter},
    wait_until,
};
use serde_json::Value;

/// The data port.
const DATA_PORT: u16 = 6784;

/// `meshctl ping PEER -c COUNT -i 0.05 --json` on `node`: (exit code, JSON or stderr text).
fn ping(node: &Meshd, name: &str, count: u32) -> (i32, Value) {
    let out = std::process::Command::new(bins::path("meshctl").unwrap())
        .arg("--socket")
        .arg(&node.socket)
        .args([
            "ping",
            name,
            "-c",
            &count.to_string(),
            "-i",
            "0.05",
            "-W",
            "2",
        ])
        .arg("--json")
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&out.stderr).into_owned()));
    (code, v)
}

/// The relays each reply recorded, there and back, as "there|back" strings.
fn paths(v: &Value) -> Vec<String> {
    let names = |a: &Value| {
        a.as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    v["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}|{}", names(&r["there"]), names(&r["back"])))
        .collect()
}

/// Pings between three hosts in `mode`: direct to one, through the third once the data port
/// between the first and the last is blocked.
fn direct_and_relayed(label: &str, p: &str, mode: Mode, forwarder: &str) {
    let mut lab = Lab::new(label).unwrap();
    let hosts: Vec<_> = (1..=3)
        .map(|i| lab.add_host(&format!("{p}{i}")).unwrap())
        .collect();
    let nodes = start_mesh_in(&mut lab, &hosts, mode).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    let (n2, n3) = (format!("{p}2"), format!("{p}3"));

    let mut last = (0, Value::Null);
    assert!(
        wait_until(Duration::from_secs(15), || {
            last = ping(&nodes[0], &n2, 4);
            last.0 == 0 && last.1["received"] == 4
        }),
        "{last:?}"
    );
    let v = &last.1;
    assert_eq!(v["peer"], n2.as_str());
    assert_eq!(v["first_hop"], n2.as_str());
    assert_eq!(v["forwarder"], forwarder);
    assert_eq!(v["encrypted"], mode.sealed());
    assert_eq!(v["route_hops"], 1);
    assert_eq!(v["loss_percent"], 0.0);
    assert!(paths(v).iter().all(|p| p == "|"), "direct: {v}");
    let rtt = v["rtt_ms"]["avg"].as_f64().unwrap();
    assert!(rtt > 0.0 && rtt < 1000.0, "{v}");

    // The data port between 1 and 3 blocked (their control connection stays): data, and so
    // echoes, go through 2.
    lab.drop_udp_port_between(&hosts[0], &hosts[2], DATA_PORT)
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), || peer(&nodes[0], &n3)
        .is_some_and(|p| p["via"] == n2.as_str())));
    let relayed_before = tap_counter(&nodes[1], "tap_echoes_relayed");
    assert!(
        wait_until(Duration::from_secs(15), || {
            last = ping(&nodes[0], &n3, 4);
            last.0 == 0 && last.1["received"] == 4
        }),
        "{last:?}"
    );
    let v = &last.1;
    assert_eq!(v["first_hop"], n2.as_str(), "{v}");
    assert_eq!(v["route_hops"], 2, "{v}");
    let via = format!("{n2}|{n2}");
    assert!(
        paths(v).iter().all(|p| *p == via),
        "via {n2} both ways: {v}"
    );
    assert!(
        tap_counter(&nodes[1], "tap_echoes_relayed") >= relayed_before + 8,
        "the relay's meshd passed requests and replies on"
    );
    assert!(tap_counter(&nodes[2], "tap_echoes_answered") >= 4);
}

#[test]
fn ping_reports_rtt_and_the_path_direct_and_through_a_relay_sealed_tap() {
    direct_and_relayed("pingtap", "pt", Mode::TapSealed, "tap");
}

#[test]
fn ping_reports_rtt_and_the_path_direct_and_through_a_relay_kernel() {
    direct_and_relayed("pingkern", "pk", Mode::Kernel, "kernel");
}

#[test]
fn ping_counts_loss_and_says_when_nothing_comes_back() {
    let mut lab = Lab::new("pingloss").unwrap();
    let hosts: Vec<_> = (1..=2)
        .map(|i| lab.add_host(&format!("pl{i}")).unwrap())
        .collect();
    let nodes = start_mesh_in(&mut lab, &hosts, Mode::TapPlain).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    // Positive control: every request answered.
    let mut last = (0, Value::Null);
    assert!(
        wait_until(Duration::from_secs(15), || {
            last = ping(&nodes[0], "pl2", 6);
            last.1["received"] == 6
        }),
        "{last:?}"
    );

    // pl2 drops every second echo request arriving: a plain direct request is the only
    // 36-byte UDP datagram to the data port (UDP header, mesh header, 20-byte echo); heartbeats
    // and data frames are longer.
    let drop_every_second = format!(
        "add table inet pingloss
         add chain inet pingloss input {{ type filter hook input priority 0; }}
         add rule inet pingloss input udp dport {DATA_PORT} udp length 36 numgen inc mod 2 == 0 drop"
    );
    nft(&lab, &hosts[1].ns, &drop_every_second);
    let (code, v) = ping(&nodes[0], "pl2", 6);
    assert_eq!(code, 0, "some replies came: {v}");
    assert_eq!(
        (v["sent"].clone(), v["received"].clone()),
        (6.into(), 3.into()),
        "{v}"
    );
    assert_eq!(v["loss_percent"], 50.0, "{v}");

    // Every request dropped: exit status 1, and the text says what that means.
    nft(
        &lab,
        &hosts[1].ns,
        "flush chain inet pingloss input
        add rule inet pingloss input udp dport 6784 udp length 36 drop",
    );
    let (code, v) = ping(&nodes[0], "pl2", 3);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["loss_percent"], 100.0, "{v}");
    let text = std::process::Command::new(bins::path("meshctl").unwrap())
        .arg("--socket")
        .arg(&nodes[0].socket)
        .args(["ping", "pl2", "-c", "2", "-i", "0.05", "-W", "0.5"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("2 sent, 0 received, 100% loss"), "{text}");
    assert!(text.contains("no reply"), "{text}");

    // Asking for a peer that does not exist is a clear error.
    let (code, v) = ping(&nodes[0], "nobody", 1);
    assert_ne!(code, 0);
    assert!(
        v.as_str()
            .unwrap_or_default()
            .contains("no peer called \"nobody\""),
        "{v}"
    );
}

fn nft(lab: &Lab, ns: &str, script: &str) {
    let path = lab.dir().join("ping.nft");
    std::fs::write(&path, script).unwrap();
    let out = lab
        .exec(ns, "nft", &["-f", path.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
