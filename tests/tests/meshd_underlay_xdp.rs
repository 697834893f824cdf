//! meshd attaches the underlay receive program to a real interface in a lab host; real traffic
//! from another host is classified, counted, and still delivered (the program passes it).

use std::{net::UdpSocket, path::Path, process::Command, time::Duration};

use mesh_tests::{Lab, bins, mesh::meshd_fails, netns, wait_until};
use serde_json::Value;

fn status(socket: &Path) -> Result<Value, String> {
    let out = Command::new(bins::path("meshctl").unwrap())
        .args(["--socket", socket.to_str().unwrap(), "status", "--json"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn counter(status: &Value, name: &str) -> u64 {
    status["datapath"]["underlay_counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {status}"))
}

/// Receives datagrams on `sock` until `want` arrived or a receive times out.
fn receive(sock: &UdpSocket, want: usize) -> usize {
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while got < want && sock.recv(&mut buf).is_ok() {
        got += 1;
    }
    got
}

#[test]
fn meshd_counts_real_underlay_traffic_and_passes_it() {
    let meshd = bins::path("meshd").unwrap();
    let mut lab = Lab::new("xdp-traffic").unwrap();
    let h1 = lab.add_host("h1").unwrap();
    let h2 = lab.add_host("h2").unwrap();
    let run_dir = lab.dir().join("h2-run");
    let state_dir = lab.dir().join("h2-state");
    let socket = run_dir.join("meshd.sock");
    let args = [
        "--underlay",
        &h2.underlay_if,
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--name",
        "h2",
        "--insecure",
        // The observe-only program is opt-in. In TAP mode every data-port datagram reaches
        // meshd's socket (the kernel datapath would drop malformed ones itself).
        "--observe-underlay",
        "--datapath",
        "tap",
        // The native hook is what this test is about; `auto` takes the generic one on a veth.
        "--xdp-mode",
        "driver",
    ];
    let d = lab.spawn(&h2.ns, &meshd, &args).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || status(&socket).is_ok()),
        "meshd did not come up; its log:\n{}",
        lab.log(d)
    );
    let before = status(&socket).unwrap();
    assert_eq!(before["name"], "h2");
    assert_eq!(before["datapath"]["underlay_interface"], "u0");
    assert_eq!(
        before["datapath"]["xdp_mode"], "driver",
        "veth supports native XDP"
    );

    // On h2, meshd's own data socket receives the data port; a test receiver another port.
    // A sender on h1, which is not a mesh peer.
    let (h2a, h1a) = (h2.addr, h1.addr);
    let rx_other = netns::run_in(&h2.ns, move || UdpSocket::bind((h2a, 7000)).unwrap()).unwrap();
    let tx = netns::run_in(&h1.ns, move || UdpSocket::bind((h1a, 0)).unwrap()).unwrap();
    for i in 0..50u32 {
        tx.send_to(&i.to_be_bytes(), (h2a, 6784)).unwrap();
    }
    for i in 0..20u32 {
        tx.send_to(&i.to_be_bytes(), (h2a, 7000)).unwrap();
    }
    assert_eq!(
        receive(&rx_other, 20),
        20,
        "other datagrams must be passed up"
    );
    assert!(lab.ping(&h1.ns, h2.addr, 3).unwrap());

    let after = status(&socket).unwrap();
    let delta = |n| counter(&after, n) - counter(&before, n);
    // The data-port datagrams were passed up to meshd, which refused them: h1 is no peer.
    let refused = |s: &Value| {
        s["datapath"]["tap_counters"]["tap_dropped_unknown_sender"]
            .as_u64()
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(15), || refused(
            &status(&socket).unwrap()
        ) - refused(&before)
            == 50),
        "all 50 data-port datagrams must reach meshd and be dropped as from a non-peer: {}",
        status(&socket).unwrap()
    );
    assert_eq!(delta("data_port"), 50);
    assert_eq!(delta("udp_other_port"), 20);
    assert!(delta("ipv4_not_udp") >= 3, "ICMP echo requests: {after}");
    assert!(delta("not_ip") >= 1, "ARP from h1: {after}");
    assert_eq!(delta("truncated") + delta("malformed_ipv4"), 0);
    let classified: u64 = [
        "truncated",
        "not_ip",
        "ipv6",
        "malformed_ipv4",
        "ipv4_not_udp",
        "udp_other_port",
        "data_port",
    ]
    .iter()
    .map(|n| delta(n))
    .sum();
    assert_eq!(classified, delta("total"), "every frame lands in one class");

    // A crashed meshd leaves no program on the interface, and a restart replaces its stale
    // socket and attaches again.
    lab.kill(d).unwrap();
    let link = lab.exec(&h2.ns, "ip", &["link", "show", "u0"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "XDP program left attached after meshd died: {}",
        String::from_utf8_lossy(&link.stdout)
    );
    assert!(
        socket.exists(),
        "a SIGKILLed meshd cannot remove its socket"
    );
    lab.restart(d).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || status(&socket).is_ok()),
        "meshd did not come back after a crash; its log:\n{}",
        lab.log(d)
    );
}

#[test]
fn a_second_meshd_on_the_same_run_dir_is_refused() {
    let meshd = bins::path("meshd").unwrap();
    let mut lab = Lab::new("run-dir").unwrap();
    let h1 = lab.add_host("h1").unwrap();
    let h2 = lab.add_host("h2").unwrap();
    let run_dir = lab.dir().join("shared-run");
    let run_dir = run_dir.to_str().unwrap();
    let state = |h: &str| lab.dir().join(h).display().to_string();
    let (s1, s2) = (state("h1-state"), state("h2-state"));
    let first = lab
        .spawn(
            &h1.ns,
            &meshd,
            &[
                "--insecure",
                "--underlay",
                "u0",
                "--run-dir",
                run_dir,
                "--state-dir",
                &s1,
            ],
        )
        .unwrap();
    let socket = Path::new(run_dir).join("meshd.sock");
    assert!(
        wait_until(Duration::from_secs(10), || status(&socket).is_ok()),
        "{}",
        lab.log(first)
    );
    let second = lab
        .exec(
            &h2.ns,
            meshd.to_str().unwrap(),
            &[
                "--insecure",
                "--underlay",
                "u0",
                "--run-dir",
                run_dir,
                "--state-dir",
                &s2,
            ],
        )
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another meshd is already serving"), "{err}");
    assert!(status(&socket).is_ok(), "the first meshd keeps its socket");
}

#[test]
fn meshd_explains_a_missing_underlay_interface() {
    let mut lab = Lab::new("bad-iface").unwrap();
    let h1 = lab.add_host("h1").unwrap();
    let run_dir = lab.dir().join("run").display().to_string();
    let state_dir = lab.dir().join("state").display().to_string();
    let dirs = ["--run-dir", &run_dir, "--state-dir", &state_dir];
    let err = meshd_fails(
        &lab,
        &h1.ns,
        &[&["--insecure", "--underlay", "nosuch0"][..], &dirs].concat(),
    );
    assert!(err.contains("\"nosuch0\""), "{err}");
    // No default route in a lab host: meshd says how to choose the interface.
    let err = meshd_fails(&lab, &h1.ns, &[&["--insecure"][..], &dirs].concat());
    assert!(err.contains("pass --underlay IFACE"), "{err}");
}
