//! mesh with a real Docker daemon (Debian's docker.io, one per lab host): a container attached
//! by its id through the Docker API, and Docker's own bridge networking on a bridge made by
//! `meshctl create-bridge` before meshd runs, its containers reaching those on another host.

use std::time::Duration;

use mesh_tests::{
    Lab, bins,
    docker::{Dockerd, IMAGE},
    mesh::{Meshd, Mode, full_mesh, meshctl_on, pings_from_netns, start_mesh_in},
    wait_until,
};

/// meshctl on `node`: (success, what it printed on stdout or stderr).
fn meshctl(node: &Meshd, args: &[&str]) -> (bool, String) {
    match meshctl_on(node, args) {
        Ok(out) => (true, out),
        Err(e) => (false, e.to_string()),
    }
}

fn pings_from_pid(pid: u32, addr: &str) -> bool {
    pings_from_netns(&format!("/proc/{pid}/ns/net"), addr)
}

#[test]
fn a_docker_container_is_attached_by_its_name_and_forgotten_when_removed() {
    let mut lab = Lab::new("dockatt").unwrap();
    let h1 = lab.add_host("da1").unwrap();
    let h2 = lab.add_host("da2").unwrap();
    let nodes = start_mesh_in(&mut lab, &[h1.clone(), h2.clone()], Mode::TapPlain).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    let docker = Dockerd::start(&lab, &h1, &["--bridge=none"]).unwrap();
    let host = format!("unix://{}", docker.socket.display());
    docker
        .docker(&[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "none",
            IMAGE,
            "sleep",
            "600",
        ])
        .unwrap();
    let far = format!("/var/run/netns/{}", lab.add_bare_netns("dafar").unwrap());
    let attach_web = || {
        meshctl(
            &nodes[0],
            &[
                "attach",
                "--container",
                "web",
                "--docker-host",
                &host,
                "10.56.0.1/24",
            ],
        )
    };

    let (good, out) = attach_web();
    assert!(good, "{out}");
    assert!(out.contains("container web"), "{out}");
    let (good, out) = meshctl(&nodes[1], &["attach", "--netns", &far, "10.56.0.2/24"]);
    assert!(good, "{out}");
    let pid = docker.pid("web").unwrap();
    assert!(
        wait_until(Duration::from_secs(15), || pings_from_pid(pid, "10.56.0.2")),
        "the container reaches a namespace on the other host"
    );

    // Bad input: each refused with the reason.
    docker
        .docker(&[
            "create",
            "--name",
            "idle",
            "--network",
            "none",
            IMAGE,
            "sleep",
            "600",
        ])
        .unwrap();
    for (args, says) in [
        (
            vec![
                "attach",
                "--container",
                "nope",
                "--docker-host",
                &host,
                "10.56.0.3/24",
            ],
            "no container \"nope\"",
        ),
        (
            vec![
                "attach",
                "--container",
                "idle",
                "--docker-host",
                &host,
                "10.56.0.3/24",
            ],
            "is not running",
        ),
        (
            vec![
                "attach",
                "--container",
                "web",
                "--docker-host",
                "unix:///nonexistent.sock",
                "10.56.0.3/24",
            ],
            "Docker is not there",
        ),
    ] {
        let (good, out) = meshctl(&nodes[0], &args);
        assert!(!good && out.contains(says), "{args:?}: {out}");
    }

    // Detached by name, attached again, then the container removed: meshd forgets it.
    let (good, out) = meshctl(
        &nodes[0],
        &["detach", "--container", "web", "--docker-host", &host],
    );
    assert!(good, "{out}");
    assert!(!pings_from_pid(pid, "10.56.0.2"));
    let (good, out) = attach_web();
    assert!(good, "{out}");
    assert!(wait_until(Duration::from_secs(15), || pings_from_pid(
        pid,
        "10.56.0.2"
    )));
    docker.docker(&["rm", "-f", "web"]).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        meshctl(&nodes[0], &["attachments", "--json"])
            .1
            .contains("\"attached\": []")
    }));
}

#[test]
fn dockerd_on_a_bridge_made_before_meshd_puts_containers_on_the_mesh() {
    let mut lab = Lab::new("dockbr").unwrap();
    let hosts = [lab.add_host("db1").unwrap(), lab.add_host("db2").unwrap()];
    let mut dockers = Vec::new();
    let mut pids = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        // Before meshd: the bridge with the overlay MTU and this host's address (Docker's
        // gateway), then dockerd on it with its own slice of the subnet.
        let out = lab
            .exec(
                &h.ns,
                bins::path("meshctl").unwrap().to_str().unwrap(),
                &[
                    "create-bridge",
                    "--mtu",
                    "1422",
                    "--address",
                    &format!("10.57.0.{}/16", i + 1),
                ],
            )
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cidr = format!("--fixed-cidr=10.57.{}.0/24", i + 1);
        let d = Dockerd::start(&lab, h, &["--bridge=mesh", &cidr, "--mtu=1422"]).unwrap();
        d.docker(&["run", "-d", "--name", "app", IMAGE, "sleep", "600"])
            .unwrap();
        pids.push(d.pid("app").unwrap());
        dockers.push(d);
    }
    let addr = |d: &Dockerd| {
        d.docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "app"])
            .unwrap()
    };
    let (a1, a2) = (addr(&dockers[0]), addr(&dockers[1]));
    assert!(
        a1.starts_with("10.57.1.") && a2.starts_with("10.57.2."),
        "{a1} {a2}"
    );
    assert!(!pings_from_pid(pids[0], &a2), "no mesh yet");

    let nodes = start_mesh_in(&mut lab, &hosts, Mode::TapSealed).unwrap();
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    assert!(
        wait_until(Duration::from_secs(20), || pings_from_pid(pids[0], &a2)),
        "a container on one host reaches one on the other"
    );
    assert!(pings_from_pid(pids[1], &a1));
    drop(dockers);
}
