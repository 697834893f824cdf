//! `meshctl status`'s health checks and `--brief`: a healthy mesh is OK (exit 0); a blocked
//! data port between two hosts is a WARNING (exit 1) that names the relayed peer, the relay
//! and why; meshd not answering is CRITICAL (exit 2).

use std::time::Duration;

use mesh_tests::{
    Lab, bins,
    mesh::{Meshd, Mode, full_mesh, peer, start_mesh_in, status},
    wait_until,
};

/// `meshctl status --brief` on `node`: (exit code, the line).
fn brief(node: &Meshd) -> (i32, String) {
    let out = std::process::Command::new(bins::path("meshctl").unwrap())
        .arg("--socket")
        .arg(&node.socket)
        .args(["status", "--brief"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

#[test]
fn brief_status_says_ok_or_what_is_wrong_and_why_with_a_monitoring_exit_code() {
    let mut lab = Lab::new("health").unwrap();
    let hosts: Vec<_> = (1..=3)
        .map(|i| lab.add_host(&format!("q{i}")).unwrap())
        .collect();
    let nodes = start_mesh_in(&mut lab, &hosts, Mode::TapPlain).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    let mut last = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(15), || {
            last = brief(&nodes[0]);
            last.0 == 0
        }),
        "{last:?}"
    );
    assert!(last.1.starts_with("OK: q1 - 2 reachable"), "{}", last.1);
    // The RTT shown is the data path's own (heartbeat stamps), for each neighbour.
    for name in ["q2", "q3"] {
        let mut p = serde_json::Value::Null;
        assert!(
            wait_until(Duration::from_secs(10), || {
                p = peer(&nodes[0], name).unwrap_or_default();
                p["datapath_rtt_ms"].as_f64().is_some()
            }),
            "{p}"
        );
        let rtt = p["datapath_rtt_ms"].as_f64().unwrap();
        assert!(rtt > 0.0 && rtt < 100.0, "a lab round trip: {rtt} ms ({p})");
    }

    // The data port between q1 and q3 blocked; their control connection stays up.
    lab.drop_udp_port_between(&hosts[0], &hosts[2], 6784)
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), || peer(
        &nodes[0], "q3"
    )
    .is_some_and(|p| p["via"] == "q2")));
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = brief(&nodes[0]);
            last.0 == 1
        }),
        "{last:?}"
    );
    assert!(
        last.1.starts_with("WARNING: q1 - relays: q3 via q2"),
        "{}",
        last.1
    );
    assert!(
        last.1.contains("data-path heartbeats do not arrive"),
        "{}",
        last.1
    );
    let st = status(&nodes[0]).unwrap();
    assert_eq!(st["health_overall"], "WARNING", "{st}");
    assert!(
        st["health"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "relays" && c["level"] == "WARNING"),
        "{st}"
    );

    // Open again: OK again.
    lab.allow_between(&hosts[0], &hosts[2]).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || {
            last = brief(&nodes[0]);
            last.0 == 0
        }),
        "{last:?}"
    );

    // meshd gone: CRITICAL, not an error trace.
    lab.terminate(nodes[0].proc, Duration::from_secs(10))
        .unwrap();
    let (code, line) = brief(&nodes[0]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("CRITICAL: meshd does not answer"),
        "{line}"
    );
}
