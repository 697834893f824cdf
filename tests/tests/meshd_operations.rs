//! meshd as an operator meets it: restarts, run-time connect/forget, and bad input.

use std::{process::Command, time::Duration};

use mesh_tests::{
    Lab,
    mesh::{meshctl, meshd_fails, peer, peers, sees_established},
    procstat::cpu_ticks,
    wait_until,
};

#[test]
fn a_restarted_meshd_reconnects_from_its_state_dir_alone() {
    let mut lab = Lab::new("ops-restart").unwrap();
    let h1 = lab.add_host("r1").unwrap();
    let h2 = lab.add_host("r2").unwrap();
    let pw = lab.password_file("pw", "s3cret").unwrap();
    let pw = pw.to_str().unwrap();
    let n1 = lab.start_meshd(&h1, &["--password-file", pw]).unwrap();
    let n2 = lab
        .start_meshd(&h2, &["--password-file", pw, &h1.addr.to_string()])
        .unwrap();
    assert!(wait_until(Duration::from_secs(15), || sees_established(
        &n2,
        &["r1"]
    )));
    let id_before = peer(&n1, "r2").unwrap()["id"].clone();

    // Restart r2 with no peer on its command line: it must find r1 from its state dir.
    lab.terminate(n2.proc, Duration::from_secs(3)).unwrap();
    let n2 = lab.start_meshd(&h2, &["--password-file", pw]).unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || sees_established(&n2, &["r1"])
            && sees_established(&n1, &["r2"])),
        "{:#?}",
        peers(&n2)
    );
    assert_eq!(
        peer(&n1, "r2").unwrap()["id"],
        id_before,
        "identity survives a restart"
    );
}

#[test]
fn meshctl_connect_and_forget_change_what_meshd_dials() {
    let mut lab = Lab::new("ops-connect").unwrap();
    let h1 = lab.add_host("c1").unwrap();
    let h2 = lab.add_host("c2").unwrap();
    let n1 = lab.start_meshd(&h1, &["--insecure"]).unwrap();
    let n2 = lab.start_meshd(&h2, &["--insecure"]).unwrap();
    assert!(peers(&n2).unwrap().is_empty());
    // Running without authentication is never silent.
    let status = mesh_tests::mesh::status(&n2).unwrap();
    assert_eq!(status["insecure"], true);
    assert!(lab.log(n2.proc).contains("WITHOUT authentication"));
    let text = meshctl(&n2.socket, &["status"], false).unwrap();
    assert!(text.contains("auth         NONE"), "{text}");
    let target = h1.addr.to_string();
    meshctl(&n2.socket, &["connect", &target], false).unwrap();
    assert!(wait_until(Duration::from_secs(15), || sees_established(
        &n2,
        &["c1"]
    )));
    let saved = std::fs::read_to_string(n2.state_dir.join("peers.json")).unwrap();
    assert!(saved.contains(&target), "connect is remembered: {saved}");

    // With c1 gone, c2 shows it unreachable, still dialled at the address it was given...
    lab.terminate(n1.proc, Duration::from_secs(3)).unwrap();
    let dialled = || {
        peers(&n2).unwrap().iter().any(|p| {
            p["name"] == "c1"
                && p["state"] == "unreachable"
                && p["addresses"].to_string().contains(&target)
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), dialled),
        "{:#?}",
        peers(&n2)
    );
    // ...until it is told to forget it.
    meshctl(&n2.socket, &["forget", &target], false).unwrap();
    assert!(
        !dialled(),
        "forgotten target still dialled: {:#?}",
        peers(&n2)
    );
    let saved = std::fs::read_to_string(n2.state_dir.join("peers.json")).unwrap();
    assert!(!saved.contains(&target), "forget is remembered: {saved}");
    // Unknown targets and malformed ones are explained, not ignored.
    let err = meshctl(&n2.socket, &["forget", "198.18.0.99"], false).unwrap_err();
    assert!(format!("{err:#}").contains("not known"), "{err:#}");
    let err = meshctl(&n2.socket, &["connect", "not a host"], false).unwrap_err();
    assert!(format!("{err:#}").contains("not a peer address"), "{err:#}");
}

#[test]
fn bad_input_gets_a_clear_error_and_a_nonzero_exit() {
    let mut lab = Lab::new("ops-bad").unwrap();
    let h = lab.add_host("b1").unwrap();
    let dir = lab.dir().to_path_buf();
    let state = dir.join("b1-state");
    let run = dir.join("b1-run");
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--underlay", "u0", "--state-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(state.display().to_string());
        v.push("--run-dir".into());
        v.push(run.display().to_string());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run_bad = |extra: &[&str]| {
        let args = base(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        meshd_fails(&lab, &h.ns, &refs)
    };

    let e = run_bad(&["--insecure", "--no-such-flag"]);
    assert!(e.contains("--no-such-flag"), "{e}");
    let e = run_bad(&["--password-file", "/nonexistent/pw"]);
    assert!(
        e.contains("cannot read the password file /nonexistent/pw"),
        "{e}"
    );
    let e = run_bad(&["--insecure", "198.18.0.1:notaport"]);
    assert!(e.contains("not a number"), "{e}");
    let e = run_bad(&["--insecure", "bad host"]);
    assert!(e.contains("not a peer address"), "{e}");
    let e = run_bad(&[]);
    assert!(e.contains("no authentication configured"), "{e}");

    // A full disk for the state dir: a tiny tmpfs, filled up (unmounted even on failure).
    struct Mounted(std::path::PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    std::fs::create_dir_all(&state).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4k", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(mount.success());
    let mounted = Mounted(state.clone());
    let _ = std::fs::write(state.join("filler"), vec![0u8; 64 * 1024]);
    let e = run_bad(&["--insecure"]);
    drop(mounted);
    assert!(e.contains("disk full"), "{e}");
    assert!(
        !state.join("identity.key").exists(),
        "no half-written identity may be left behind"
    );
}

/// utime + stime of `pid`, in clock ticks.
#[test]
fn running_out_of_file_descriptors_on_the_api_socket_does_not_spin() {
    let mut lab = Lab::new("ops-emfile").unwrap();
    let h = lab.add_host("fd1").unwrap();
    // A small descriptor table, so API connections exhaust it.
    let node = lab
        .start_meshd_via(
            &h,
            &["/usr/bin/prlimit", "--nofile=64:64"],
            &["--insecure", "--datapath", "tap"],
        )
        .unwrap();
    let pid = lab.pid(node.proc).unwrap();
    // Positive control: the API answers.
    assert!(meshctl(&node.socket, &["status"], true).is_ok());
    // Hold more connections than meshd has descriptors left; none sends a request.
    let held: Vec<std::os::unix::net::UnixStream> = (0..100)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&node.socket).ok())
        .collect();
    assert!(held.len() > 64, "{} connections", held.len());
    std::thread::sleep(Duration::from_millis(500));
    let (t0, start) = (cpu_ticks(pid), std::time::Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = (cpu_ticks(pid) - t0) as f64 / 100.0 / start.elapsed().as_secs_f64();
    println!(
        "meshd used {:.0}% of a core while out of descriptors",
        used * 100.0
    );
    // A loop retrying accept(2) at once burns a whole core; waiting between tries, a few %.
    assert!(used < 0.3, "meshd spun: {:.0}% of a core", used * 100.0);
    // Once the connections close, the API works again.
    drop(held);
    assert!(wait_until(Duration::from_secs(10), || meshctl(
        &node.socket,
        &["status"],
        true
    )
    .is_ok()));
}
