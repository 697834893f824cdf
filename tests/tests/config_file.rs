//! meshd's configuration file, read at start and again on SIGHUP: the peer list and the log
//! level change while traffic flows through an untouched datapath; a broken file is refused
//! with its line and changes nothing.

use std::time::Duration;

use mesh_tests::{
    Lab,
    mesh::{peer, pings, status},
    wait_until,
};

fn hangup(lab: &Lab, proc: mesh_tests::ProcId) {
    let pid = lab.pid(proc).expect("meshd runs");
    // SAFETY: kill(2) on a process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
}

#[test]
fn sighup_rereads_peers_and_log_level_while_traffic_flows() {
    let mut lab = Lab::new("config").unwrap();
    let h: Vec<_> = (1..=3)
        .map(|i| lab.add_host(&format!("g{i}")).unwrap())
        .collect();
    let c1 = lab
        .add_container(&h[0], "gc1", Some("10.52.0.1/24"))
        .unwrap();
    let c2 = lab
        .add_container(&h[1], "gc2", Some("10.52.0.2/24"))
        .unwrap();
    let file = lab.dir().join("meshd.toml");
    let write = |peers: &[String], log: &str| {
        let list: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
        std::fs::write(
            &file,
            format!(
                "# g1's settings\ninsecure = true\ndatapath = \"tap\"\nlog = \"{log}\"\npeers = [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
    };
    let (a2, a3) = (h[1].addr.to_string(), h[2].addr.to_string());
    write(std::slice::from_ref(&a2), "info");
    let config = file.display().to_string();
    let n1 = lab.start_meshd(&h[0], &["--config", &config]).unwrap();
    let _n2 = lab
        .start_meshd(&h[1], &["--insecure", "--datapath", "tap"])
        .unwrap();
    let _n3 = lab
        .start_meshd(&h[2], &["--insecure", "--datapath", "tap"])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || peer(&n1, "g2")
            .is_some_and(|p| p["state"] == "established")),
        "the file's peer was dialled: {}",
        lab.log(n1.proc)
    );
    assert_eq!(
        status(&n1).unwrap()["datapath"]["mode"],
        "tap",
        "the file's datapath"
    );
    assert!(peer(&n1, "g3").is_none(), "g3 is in nobody's list yet");
    assert!(wait_until(Duration::from_secs(15), || pings(
        &lab, &c1, &c2
    )));
    assert!(
        !lab.log(n1.proc).contains("DEBUG"),
        "the file's log level: info"
    );

    // Traffic across while the configuration is reloaded (100 pings a second, 6 s).
    let target = c2.addr.unwrap().to_string();
    let pinger = lab
        .spawn(
            &c1.ns,
            std::path::Path::new("/usr/bin/ping"),
            &["-n", "-q", "-i", "0.01", "-c", "600", &target],
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    write(&[a2.clone(), a3.clone()], "debug");
    hangup(&lab, n1.proc);
    assert!(
        wait_until(Duration::from_secs(15), || peer(&n1, "g3")
            .is_some_and(|p| p["state"] == "established")),
        "the new peer was dialled: {}",
        lab.log(n1.proc)
    );
    assert!(
        wait_until(Duration::from_secs(10), || lab
            .log(n1.proc)
            .contains("DEBUG")),
        "the new log level applies"
    );
    assert!(lab.log(n1.proc).contains("reloaded the configuration"));

    // A broken file: refused with its line, nothing changes, meshd carries on.
    std::fs::write(&file, "insecure = true\ndata-port = \"high\"\n").unwrap();
    hangup(&lab, n1.proc);
    assert!(wait_until(Duration::from_secs(10), || lab
        .log(n1.proc)
        .contains("reloading the configuration failed")));
    assert!(
        lab.log(n1.proc).contains("meshd.toml:2: data-port"),
        "{}",
        lab.log(n1.proc)
    );
    assert!(status(&n1).is_ok());
    assert!(peer(&n1, "g3").is_some_and(|p| p["state"] == "established"));

    assert!(wait_until(Duration::from_secs(20), || !lab.is_running(pinger)));
    let out = lab.log(pinger);
    assert!(
        out.contains("600 packets transmitted, 600 received"),
        "the datapath carried on untouched through both reloads: {out}"
    );
}

#[test]
fn a_broken_file_stops_meshd_at_start_naming_the_line_and_the_key() {
    let mut lab = Lab::new("config-bad").unwrap();
    let h = lab.add_host("b1").unwrap();
    let file = lab.dir().join("meshd.toml");
    std::fs::write(&file, "insecure = true\n\nbrige = \"br0\"\n").unwrap();
    let config = file.display().to_string();
    let meshd = mesh_tests::bins::path("meshd").unwrap();
    let n = lab.spawn(&h.ns, &meshd, &["--config", &config]).unwrap();
    assert!(wait_until(Duration::from_secs(10), || lab
        .exit_code(n)
        .is_some()));
    assert_eq!(lab.exit_code(n), Some(1));
    let log = lab.log(n);
    assert!(
        log.contains("meshd.toml:3: unknown key `brige`") && log.contains("bridge"),
        "{log}"
    );
}

#[test]
fn the_shipped_default_configuration_starts_meshd() {
    let mut lab = Lab::new("config-default").unwrap();
    let h = lab.add_host("d1").unwrap();
    let shipped =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/meshd.toml");
    let password = lab.dir().join("password");
    std::fs::write(&password, "correct horse battery staple\n").unwrap();
    let (config, password) = (
        shipped.display().to_string(),
        password.display().to_string(),
    );
    // The lab gives its own state, run and bpf directories and underlay (flags override the
    // file); the rest is the file's.
    let n = lab
        .start_meshd(&h, &["--config", &config, "--password-file", &password])
        .unwrap();
    let st = status(&n).unwrap();
    assert_eq!(st["datapath"]["encrypted"], true, "{st}");
    assert!(lab.log(n.proc).contains("meshd ready"));
}

#[test]
fn a_bad_busy_poll_window_is_refused_with_what_to_give() {
    let meshd = mesh_tests::bins::path("meshd").unwrap();
    for bad in ["soon", "100001", "1.5"] {
        let out = std::process::Command::new(&meshd)
            .args(["--busy-poll", bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("give microseconds from 0 (never poll) to 100000, or auto"),
            "{bad}: {err}"
        );
    }
}
