//! The Raspberry Pi 1/Zero build (ARMv6, `cargo xtask cross --target armv6`) in a mesh with
//! x86 hosts: its meshd runs under qemu-user emulating the Pi's ARM1176, which faults on any
//! ARMv7-only instruction, in TAP mode, and carries pings and TCP both ways, with x86 hosts on
//! the kernel datapath and, sealed, with an x86 host in TAP mode.
//!
//! `cargo xtask test` builds the ARMv6 binaries and names their directory in
//! `MESH_ARMV6_BIN_DIR`; run alone, the test looks in target/cross/armv6.

use std::{path::PathBuf, process::Command, time::Duration};

use mesh_tests::{
    Container, Host, Lab,
    mesh::{Meshd, full_mesh, peer, pings, status, tcp_exact},
    wait_until,
};

/// The directory of the ARMv6 meshd and meshctl; a test failure, with what to do, when they
/// are not built.
fn armv6_dir() -> PathBuf {
    let dir = std::env::var_os("MESH_ARMV6_BIN_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/cross/armv6"),
        PathBuf::from,
    );
    assert!(
        dir.join("meshd").is_file() && dir.join("meshctl").is_file(),
        "no ARMv6 build in {}: run `cargo xtask cross --target armv6` (`cargo xtask test` does)",
        dir.display()
    );
    dir
}

/// qemu-user emulating the Raspberry Pi 1/Zero's CPU, running the ARMv6 `bin`.
fn on_arm1176(bin: &str) -> Vec<String> {
    vec![
        "qemu-arm-static".into(),
        "-cpu".into(),
        "arm1176".into(),
        armv6_dir().join(bin).display().to_string(),
    ]
}

/// Starts the ARMv6 meshd on `host` (TAP mode) with `args`.
fn start_arm_meshd(lab: &mut Lab, host: &Host, args: &[&str]) -> Meshd {
    let mut all = vec!["--datapath", "tap"];
    all.extend(args);
    lab.start_meshd_command(host, &on_arm1176("meshd"), &all)
        .expect("the ARMv6 meshd starts under qemu")
}

/// Pings both ways and moves 4 MiB over TCP each way between `a` and `b`.
fn carries_traffic(lab: &mut Lab, a: &Container, b: &Container) {
    assert!(
        wait_until(Duration::from_secs(30), || pings(lab, a, b)),
        "ping {} -> {}",
        a.name,
        b.name
    );
    assert!(pings(lab, b, a), "ping {} -> {}", b.name, a.name);
    for (from, to) in [(a, b), (b, a)] {
        tcp_exact(from, to, 5201, 4 << 20)
            .unwrap_or_else(|e| panic!("TCP {} -> {}: {e}", from.name, to.name));
    }
}

#[test]
fn the_armv6_meshd_under_qemu_meshes_with_kernel_datapath_hosts() {
    let mut lab = Lab::new("armk").unwrap();
    let x1 = lab.add_host("ak1").unwrap();
    let x2 = lab.add_host("ak2").unwrap();
    let pi = lab.add_host("akpi").unwrap();
    let c1 = lab
        .add_container(&x1, "akc1", Some("10.71.0.1/24"))
        .unwrap();
    let c2 = lab
        .add_container(&x2, "akc2", Some("10.71.0.2/24"))
        .unwrap();
    let cpi = lab
        .add_container(&pi, "akcpi", Some("10.71.0.3/24"))
        .unwrap();
    let first = x1.addr.to_string();
    let n1 = lab
        .start_meshd(&x1, &["--insecure", "--datapath", "ebpf"])
        .unwrap();
    let n2 = lab
        .start_meshd(&x2, &["--insecure", "--datapath", "ebpf", &first])
        .unwrap();
    let npi = start_arm_meshd(&mut lab, &pi, &["--insecure", &first]);
    let nodes = [n1.clone(), n2.clone(), npi.clone()];
    assert!(
        wait_until(Duration::from_secs(60), || full_mesh(&nodes)),
        "the mesh did not form; the ARM meshd's log:\n{}",
        lab.log(npi.proc)
    );
    assert_eq!(status(&n1).unwrap()["datapath"]["mode"], "ebpf");
    assert_eq!(status(&npi).unwrap()["datapath"]["mode"], "tap");
    carries_traffic(&mut lab, &cpi, &c1);
    carries_traffic(&mut lab, &c2, &cpi);

    // The ARMv6 meshctl, under the same emulation, talks to the ARMv6 meshd.
    let cmd = on_arm1176("meshctl");
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .arg("--socket")
        .arg(&npi.socket)
        .args(["peers", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = peers
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        names.contains(&"ak1") && names.contains(&"ak2"),
        "{names:?}"
    );
}

#[test]
fn the_armv6_meshd_under_qemu_seals_traffic_with_an_x86_tap_host() {
    let mut lab = Lab::new("arms").unwrap();
    let x = lab.add_host("as1").unwrap();
    let pi = lab.add_host("aspi").unwrap();
    let cx = lab.add_container(&x, "asc1", Some("10.72.0.1/24")).unwrap();
    let cpi = lab
        .add_container(&pi, "ascpi", Some("10.72.0.2/24"))
        .unwrap();
    let pw = lab.password_file("pw", "a pi on the mesh").unwrap();
    let pw = pw.display().to_string();
    let nx = lab
        .start_meshd(&x, &["--password-file", &pw, "--datapath", "tap"])
        .unwrap();
    let first = x.addr.to_string();
    let npi = start_arm_meshd(&mut lab, &pi, &["--password-file", &pw, &first]);
    let nodes = [nx.clone(), npi.clone()];
    assert!(
        wait_until(Duration::from_secs(60), || full_mesh(&nodes)),
        "the mesh did not form; the ARM meshd's log:\n{}",
        lab.log(npi.proc)
    );
    carries_traffic(&mut lab, &cpi, &cx);
    let dp = &status(&npi).unwrap()["datapath"];
    assert_eq!(dp["encrypted"], true, "the ARM meshd seals: {dp}");
    // An ARMv6 has no AES hardware: the link takes ChaCha20-Poly1305, although the x86 end
    // would offer AES-256-GCM.
    let link = peer(&nx, "aspi").unwrap();
    assert_eq!(link["cipher"], "chacha20-poly1305", "{link}");
    assert!(
        dp["tap_counters"]["tap_rx_frames"].as_u64().unwrap_or(0) > 0,
        "frames went through the ARM meshd's TAP path: {dp}"
    );
}
