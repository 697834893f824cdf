//! meshd as Docker's network and IPAM driver (`--docker-plugin`), against a real dockerd per
//! lab host: `docker network create --driver mesh --ipam-driver mesh` on each host puts
//! Docker's containers on one mesh network, with addresses from the mesh's allocator; they
//! ping and talk TCP across hosts, and `docker rm` gives the address back.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    time::Duration,
};

use mesh_tests::{
    Lab,
    docker::{Dockerd, IMAGE},
    mesh::{Meshd, Mode, full_mesh, meshctl_json, meshctl_on, pings_from_netns},
    netns::run_in_file,
    wait_until,
};
use serde_json::Value;

/// `docker network create --driver mesh --ipam-driver mesh` with `args`, named `name`.
fn mesh_network(d: &Dockerd, name: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec![
        "network",
        "create",
        "--driver",
        "mesh",
        "--ipam-driver",
        "mesh",
    ];
    all.extend_from_slice(args);
    all.push(name);
    d.docker(&all)
}

/// Starts container `name` on Docker network `web`.
fn run_on_web(d: &Dockerd, name: &str) {
    d.docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "web",
        IMAGE,
        "sleep",
        "600",
    ])
    .unwrap();
}

/// The address container `name` has on Docker network `network`.
fn address(d: &Dockerd, name: &str, network: &str) -> Ipv4Addr {
    let f = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let a = d.docker(&["inspect", "-f", &f, name]).unwrap();
    a.parse()
        .unwrap_or_else(|_| panic!("{name} has no address on {network}: {a:?}"))
}

fn netns_of(d: &Dockerd, name: &str) -> String {
    format!("/proc/{}/ns/net", d.pid(name).unwrap())
}

/// What meshd on `node` handed out in network `name` (`meshctl ipam`).
fn allocated_here(node: &Meshd, name: &str) -> u64 {
    let v: Value = meshctl_json(node, &["ipam"]).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .map_or(0, |n| n["allocated_here"].as_u64().unwrap_or(0))
}

/// Sends `len` bytes over TCP from namespace `from` to a listener in namespace `to` at
/// `addr`; returns what arrived.
fn tcp_transfer(from: &str, to: &str, addr: Ipv4Addr, len: usize) -> Vec<u8> {
    let at = SocketAddr::from((addr, 7000));
    let listener = run_in_file(to, move || TcpListener::bind(at))
        .unwrap()
        .unwrap();
    let sent: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let (data, from) = (sent.clone(), from.to_owned());
    let sender = std::thread::spawn(move || {
        let mut s = run_in_file(&from, move || {
            TcpStream::connect_timeout(&at, Duration::from_secs(10))
        })
        .unwrap()
        .unwrap();
        s.write_all(&data).unwrap();
    });
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    sender.join().unwrap();
    assert_eq!(got.len(), sent.len());
    got
}

fn scenario(label: &str, mode: Mode) {
    let mut lab = Lab::new(label).unwrap();
    let hosts = [
        lab.add_host(&format!("{label}1")).unwrap(),
        lab.add_host(&format!("{label}2")).unwrap(),
    ];
    let pw = lab.password_file("pw", "mesh test").unwrap();
    let mut nodes = Vec::new();
    let mut plugin_dirs: Vec<PathBuf> = Vec::new();
    let mut meshd_args: Vec<Vec<String>> = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        // Each host's Docker finds its own meshd's socket (see `Dockerd::start_with_plugins`).
        let dir = lab.dir().join(format!("{}-plugins", h.name));
        let mut args = mode.args(i, hosts.len(), pw.to_str().unwrap());
        args.push(format!(
            "--docker-plugin={}",
            dir.join("mesh.sock").display()
        ));
        if i > 0 {
            args.push(hosts[0].addr.to_string());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(lab.start_meshd(h, &refs).unwrap());
        plugin_dirs.push(dir);
        meshd_args.push(args);
    }
    assert!(wait_until(Duration::from_secs(15), || full_mesh(&nodes)));
    // A second meshd cannot take a plugin socket that is served, and says so before it
    // changes anything.
    let second = lab.dir().join("second");
    let out = lab
        .exec(
            &hosts[0].ns,
            mesh_tests::bins::path("meshd").unwrap().to_str().unwrap(),
            &[
                "--insecure",
                "--underlay",
                &hosts[0].underlay_if,
                "--state-dir",
                second.join("state").to_str().unwrap(),
                "--run-dir",
                second.join("run").to_str().unwrap(),
                &format!(
                    "--docker-plugin={}",
                    plugin_dirs[0].join("mesh.sock").display()
                ),
            ],
        )
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("another process"),
        "{said}"
    );
    meshctl_on(
        &nodes[0],
        &["network", "create", "web", "--subnet", "10.90.0.0/24"],
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(15), || {
        meshctl_on(&nodes[1], &["network", "ls"])
            .unwrap()
            .contains("web")
    }));
    let dockers: Vec<Dockerd> = hosts
        .iter()
        .zip(&plugin_dirs)
        .map(|(h, dir)| {
            Dockerd::start_with_plugins(&lab, h, &["--bridge=none"], Some(dir)).unwrap()
        })
        .collect();

    // Each host's Docker puts a network on the mesh network, found by its subnet.
    for d in &dockers {
        mesh_network(d, "web", &["--subnet", "10.90.0.0/24"]).unwrap();
    }
    // A subnet no mesh network has is refused, saying what to do; nothing is created.
    let err = mesh_network(&dockers[0], "nope", &["--subnet", "10.91.0.0/24"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no mesh network has subnet 10.91.0.0/24"),
        "{err}"
    );
    assert!(dockers[0].docker(&["network", "inspect", "nope"]).is_err());

    for d in &dockers {
        run_on_web(d, "app");
    }
    let (a1, a2) = (
        address(&dockers[0], "app", "web"),
        address(&dockers[1], "app", "web"),
    );
    assert_ne!(a1, a2);
    assert!(
        [a1, a2].iter().all(|a| a.octets()[..3] == [10, 90, 0]),
        "{a1} {a2}"
    );
    // Inside the container: the mesh's MTU for a named network (4 bytes of tag less).
    let mtu = dockers[0]
        .docker(&["exec", "app", "cat", "/sys/class/net/eth0/mtu"])
        .unwrap();
    let want = meshctl_json(&nodes[0], &["attachments"]).unwrap()["attached"][0]["mtu"].clone();
    assert_eq!(mtu, want.to_string(), "the container's MTU");

    let (n1, n2) = (netns_of(&dockers[0], "app"), netns_of(&dockers[1], "app"));
    assert!(
        wait_until(Duration::from_secs(20), || pings_from_netns(
            &n1,
            &a2.to_string()
        )),
        "a container reaches one on the other host"
    );
    assert!(pings_from_netns(&n2, &a1.to_string()));
    tcp_transfer(&n1, &n2, a2, 4 << 20);

    // meshd knows the endpoint: `meshctl attachments` shows it, owned by Docker.
    let at = meshctl_json(&nodes[1], &["attachments"]).unwrap();
    let ep = &at["attached"][0];
    assert!(ep["owner"].as_str().unwrap().starts_with("docker:"), "{at}");
    assert_eq!(ep["cidrs"][0], format!("{a2}/24"));
    assert_eq!(ep["network"], "web");

    // `docker rm` gives the address back; the next container gets it again.
    // Docker asks for a gateway address too (not shown by `docker network inspect` for
    // a plugin's network): mesh holds it for Docker like a container's.
    let before = allocated_here(&nodes[1], "web");
    assert_eq!(before, 2, "the container's address and the gateway's");
    dockers[1].docker(&["rm", "-f", "app"]).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || allocated_here(&nodes[1], "web")
            == before - 1),
        "the removed container's address is free again"
    );
    assert!(
        meshctl_json(&nodes[1], &["attachments"]).unwrap()["attached"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    run_on_web(&dockers[1], "app2");
    assert_eq!(address(&dockers[1], "app2", "web"), a2);

    // meshd restarts under running containers: Docker's network, its endpoints and the
    // addresses held for Docker survive.
    lab.terminate(nodes[0].proc, Duration::from_secs(10))
        .unwrap();
    let refs: Vec<&str> = meshd_args[0].iter().map(String::as_str).collect();
    nodes[0] = lab.start_meshd(&hosts[0], &refs).unwrap();
    assert!(wait_until(Duration::from_secs(20), || full_mesh(&nodes)));
    assert!(
        wait_until(Duration::from_secs(20), || pings_from_netns(
            &n1,
            &a2.to_string()
        )),
        "the container still reaches the other host (and a2's new container, which has the \
         MAC its address had) after meshd restarted"
    );
    assert_eq!(allocated_here(&nodes[0], "web"), 2);
    run_on_web(&dockers[0], "app3");
    let a3 = address(&dockers[0], "app3", "web");
    assert!(a3 != a1 && a3 != a2, "{a3} is new");
    assert_eq!(allocated_here(&nodes[0], "web"), 3);
    dockers[0].docker(&["rm", "-f", "app"]).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || allocated_here(&nodes[0], "web")
            == 2),
        "an endpoint made before the restart is released after it"
    );

    // A mesh network named from Docker, with a subnet, is created on the mesh; the other
    // host's Docker then names it without one. A name that does not exist is refused.
    mesh_network(
        &dockers[1],
        "api",
        &["--ipam-opt", "mesh.network=api", "--subnet", "10.92.0.0/24"],
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(15), || {
        meshctl_on(&nodes[0], &["network", "ls"])
            .unwrap()
            .contains("10.92.0.0/24")
    }));
    let by_name = |d: &Dockerd, name: &str| {
        let opt = format!("mesh.network={name}");
        mesh_network(d, name, &["--ipam-opt", &opt, "-o", &opt])
    };
    by_name(&dockers[0], "api").unwrap();
    let err = by_name(&dockers[0], "ghost").unwrap_err().to_string();
    assert!(err.contains("no network called \"ghost\""), "{err}");
    for d in &dockers {
        d.docker(&["network", "rm", "api"]).unwrap();
    }

    // A Docker network on it keeps the mesh network from being removed.
    let err = meshctl_on(&nodes[0], &["network", "rm", "web"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("in use"), "{err}");

    // Removing the Docker networks gives back everything they held.
    for d in &dockers {
        d.docker(&["rm", "-f", "app", "app2", "app3"]).ok();
        d.docker(&["network", "rm", "web"]).unwrap();
    }
    for n in &nodes {
        assert!(
            wait_until(Duration::from_secs(10), || allocated_here(n, "web") == 0),
            "{}: nothing held once Docker's network is gone",
            n.host.name
        );
    }
    drop(dockers);
}

#[test]
fn docker_containers_on_a_mesh_network_reach_each_other_across_hosts() {
    scenario("dpl", Mode::TapSealed);
}

#[test]
fn docker_containers_on_a_mesh_network_reach_each_other_across_hosts_kernel() {
    scenario("dplk", Mode::Kernel);
}
