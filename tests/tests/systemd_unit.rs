//! The systemd unit shipped in packaging/systemd: it verifies, its capability sets are enough
//! for each datapath (meshd run with exactly those), and meshd speaks the notification
//! protocol a `Type=notify` unit relies on, in order.

use std::{os::unix::net::UnixDatagram, path::PathBuf, time::Duration};

use mesh_tests::{
    Lab, bins,
    mesh::{Meshd, full_mesh, pings, status},
    wait_until,
};

fn packaging(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/systemd")
        .join(file)
}

/// The values of `key` in a unit file, last assignment wins (an empty one resets, as systemd
/// reads it).
fn setting(text: &str, key: &str) -> Option<String> {
    let mut value = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix(&format!("{key}=")) {
            value = Some(v.trim().to_owned());
        }
    }
    value
}

/// `setpriv` arguments keeping exactly `caps` (a CapabilityBoundingSet value).
fn bounding(caps: &str) -> String {
    let keep: Vec<String> = caps
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", keep.join(","))
}

#[test]
fn the_unit_verifies() {
    let unit = std::fs::read_to_string(packaging("meshd.service")).unwrap();
    let meshd = bins::path("meshd").unwrap();
    let dir = std::env::temp_dir().join(format!("mesh-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("meshd.service");
    // The installed path does not exist here: point it at the binary just built.
    std::fs::write(
        &path,
        unit.replace("/usr/bin/meshd", &meshd.display().to_string()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (cargo xtask setup installs systemd)");
    std::fs::remove_dir_all(&dir).unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    assert_eq!(setting(&unit, "Type").as_deref(), Some("notify"));
    assert_eq!(setting(&unit, "Restart").as_deref(), Some("on-failure"));
}

#[test]
fn meshd_runs_with_only_the_capabilities_the_unit_and_its_tap_drop_in_grant() {
    let unit = std::fs::read_to_string(packaging("meshd.service")).unwrap();
    let drop_in = std::fs::read_to_string(packaging("meshd-tap.conf")).unwrap();
    let kernel_caps = setting(&unit, "CapabilityBoundingSet").unwrap();
    let tap_caps = setting(&drop_in, "CapabilityBoundingSet").unwrap();
    let mut lab = Lab::new("unit-caps").unwrap();
    let h1 = lab.add_host("u1").unwrap();
    let h2 = lab.add_host("u2").unwrap();
    let c1 = lab.add_container(&h1, "uc1", Some("10.51.0.1/24")).unwrap();
    let c2 = lab.add_container(&h2, "uc2", Some("10.51.0.2/24")).unwrap();
    let (k, t) = (bounding(&kernel_caps), bounding(&tap_caps));
    let n1 = lab
        .start_meshd_via(
            &h1,
            &["/usr/bin/setpriv", "--bounding-set", &k],
            &["--insecure", "--datapath", "ebpf"],
        )
        .unwrap();
    let first = h1.addr.to_string();
    let n2 = lab
        .start_meshd_via(
            &h2,
            &["/usr/bin/setpriv", "--bounding-set", &t],
            &["--insecure", "--datapath", "tap", &first],
        )
        .unwrap();
    let nodes = [n1, n2];
    assert!(
        wait_until(Duration::from_secs(15), || full_mesh(&nodes)),
        "{}\n{}",
        lab.log(nodes[0].proc),
        lab.log(nodes[1].proc)
    );
    assert_eq!(status(&nodes[0]).unwrap()["datapath"]["mode"], "ebpf");
    assert_eq!(status(&nodes[1]).unwrap()["datapath"]["mode"], "tap");
    assert!(wait_until(Duration::from_secs(15), || pings(
        &lab, &c1, &c2
    )));
}

/// The next notification, waiting up to `within`.
fn next(sock: &UnixDatagram, within: Duration) -> Option<String> {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn meshd_tells_systemd_it_is_ready_how_many_peers_it_has_that_it_lives_and_that_it_stops() {
    let mut lab = Lab::new("notify").unwrap();
    let h1 = lab.add_host("y1").unwrap();
    let h2 = lab.add_host("y2").unwrap();
    // A path-named socket: reachable from meshd's network namespace.
    let path = lab.dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let env_socket = format!("NOTIFY_SOCKET={}", path.display());
    let n1: Meshd = lab
        .start_meshd_via(
            &h1,
            &["/usr/bin/env", &env_socket, "WATCHDOG_USEC=400000"],
            &["--insecure", "--datapath", "tap"],
        )
        .unwrap();
    let first = next(&sock, Duration::from_secs(20)).expect("no notification from meshd");
    assert_eq!(
        first, "READY=1\nSTATUS=0 peers connected; datapath tap",
        "the first message says it is ready"
    );
    assert!(status(&n1).is_ok(), "ready means the API answers");
    let first_addr = h1.addr.to_string();
    let n2 = lab
        .start_meshd(&h2, &["--insecure", "--datapath", "tap", &first_addr])
        .unwrap();
    let mut got = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            if let Some(m) = next(&sock, Duration::from_millis(200)) {
                got.push(m);
            }
            got.iter()
                .any(|m| m == "STATUS=1 peer connected; datapath tap")
                && got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2
        }),
        "a status naming the peer and watchdog pings (every 200 ms): {got:?}"
    );
    assert!(full_mesh(&[n1.clone(), n2]));
    lab.terminate(n1.proc, Duration::from_secs(10)).unwrap();
    let mut rest = Vec::new();
    while let Some(m) = next(&sock, Duration::from_secs(2)) {
        rest.push(m);
    }
    assert_eq!(
        rest.iter().filter(|m| m.starts_with("STOPPING=1")).count(),
        1,
        "{rest:?}"
    );
    assert!(
        !rest
            .iter()
            .skip_while(|m| !m.starts_with("STOPPING=1"))
            .any(|m| m.starts_with("READY") || m.starts_with("WATCHDOG")),
        "nothing claims life after STOPPING=1: {rest:?}"
    );
    assert!(lab.log(n1.proc).contains("meshd stopped"), "a clean stop");
}
