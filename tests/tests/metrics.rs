//! meshd's Prometheus endpoint (`--metrics-listen`): a scrape passes `promtool check metrics`,
//! names every peer, and its per-peer counters move with real traffic.

use std::{
    io::{Read, Write},
    time::Duration,
};

use mesh_tests::{
    Lab,
    mesh::{Mode, full_mesh, pings, start_mesh_in_with, tcp_transfer},
    netns, wait_until,
};

/// GET `path` from 127.0.0.1:9464 inside `ns`, with an optional Accept header.
fn get(ns: &str, path: &str, accept: Option<&str>) -> String {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{}\r\n",
        accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default()
    );
    netns::run_in(ns, move || {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9464").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap()
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The value of the sample line starting with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

fn promtool_accepts(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_scrape_lints_clean_and_its_peer_counters_move_with_traffic() {
    let mut lab = Lab::new("metrics").unwrap();
    let hosts = vec![lab.add_host("m1").unwrap(), lab.add_host("m2").unwrap()];
    let c1 = lab
        .add_container(&hosts[0], "mc1", Some("10.53.0.1/24"))
        .unwrap();
    let c2 = lab
        .add_container(&hosts[1], "mc2", Some("10.53.0.2/24"))
        .unwrap();
    lab.exec(&hosts[0].ns, "ip", &["link", "set", "lo", "up"])
        .unwrap();
    let nodes = start_mesh_in_with(
        &mut lab,
        &hosts,
        Mode::TapPlain,
        &["--metrics-listen", "127.0.0.1:9464"],
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    assert!(wait_until(Duration::from_secs(15), || pings(
        &lab, &c1, &c2
    )));
    let ns = hosts[0].ns.clone();

    let first = get(&ns, "/metrics", None);
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(first.contains("Content-Type: text/plain; version=0.0.4"));
    let text = body(&first);
    promtool_accepts(text);
    let tx = r#"mesh_peer_tx_bytes_total{peer="m2",datapath="tap"}"#;
    let before = sample(text, tx).unwrap_or_else(|| panic!("{tx} missing:\n{text}"));
    assert_eq!(sample(text, r#"mesh_peer_up{peer="m2"}"#), Some(1.0));
    assert!(sample(text, r#"mesh_peer_rtt_seconds{peer="m2"}"#).is_some());
    assert!(text.contains(r#"mesh_datapath_info{mode="tap""#), "{text}");

    let target = c2.addr.unwrap().to_string();
    // What the receiver got (iperf3 ends the test with the last segments still in flight;
    // those may never cross, so the sender's 8 MiB is no bound).
    let received = tcp_transfer(&mut lab, &c1, &c2, (&target, &target), "8M").unwrap() as f64;
    assert!(received > 1e6, "{received}");
    // The last segments may still be on their way when iperf3 returns.
    let mut moved = 0.0;
    assert!(
        wait_until(Duration::from_secs(15), || {
            moved = sample(body(&get(&ns, "/metrics", None)), tx).unwrap() - before;
            moved >= received
        }),
        "{moved} bytes counted on the link for {received} bytes of TCP received"
    );

    // Prometheus asks for OpenMetrics and gets it.
    let open = get(
        &ns,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0"),
    );
    assert!(open.contains("Content-Type: application/openmetrics-text"));
    assert!(body(&open).ends_with("# EOF\n"));
    assert!(get(&ns, "/", None).starts_with("HTTP/1.1 404"));
}
