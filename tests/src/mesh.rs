//! Running real meshd processes on lab hosts and asking them questions through meshctl.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{Host, Lab, ProcId, bins, wait_until};

/// A meshd started on a lab host.
#[derive(Clone, Debug)]
pub struct Meshd {
    pub proc: ProcId,
    pub host: Host,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
}

impl Lab {
    /// Writes `password` to a file in the lab dir and returns its path.
    pub fn password_file(&self, name: &str, password: &str) -> Result<PathBuf> {
        let p = self.dir().join(format!("{name}.password"));
        std::fs::write(&p, format!("{password}\n"))?;
        Ok(p)
    }

    /// Starts meshd on `host` (own state and run dirs under the lab dir, underlay `u0`,
    /// name = host name) with `args` appended, and waits until its API answers.
    pub fn start_meshd(&mut self, host: &Host, args: &[&str]) -> Result<Meshd> {
        self.start_meshd_via(host, &[], args)
    }

    /// [`Lab::start_meshd`], with meshd started through `wrapper` (a program and its
    /// arguments, e.g. `setpriv` dropping capabilities) when it is not empty.
    pub fn start_meshd_via(
        &mut self,
        host: &Host,
        wrapper: &[&str],
        args: &[&str],
    ) -> Result<Meshd> {
        let mut command: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        command.push(bins::path("meshd")?.display().to_string());
        self.start_meshd_command(host, &command, args)
    }

    /// [`Lab::start_meshd`], run as `command`: a program and its first arguments, ending with
    /// a meshd binary (e.g. an emulator, its options and an ARM build of meshd).
    pub fn start_meshd_command(
        &mut self,
        host: &Host,
        command: &[String],
        args: &[&str],
    ) -> Result<Meshd> {
        let (program, command_args) = command.split_first().context("an empty command")?;
        let state_dir = self.dir().join(format!("{}-state", host.name));
        let run_dir = self.dir().join(format!("{}-run", host.name));
        let mut all: Vec<String> = command_args.to_vec();
        all.extend([
            "--name".into(),
            host.name.clone(),
            "--underlay".into(),
            host.underlay_if.clone(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--run-dir".into(),
            run_dir.display().to_string(),
            "--bpf-dir".into(),
            self.bpf_dir_of(&host.name).display().to_string(),
        ]);
        if !args.contains(&"--config") {
            // Not the machine's /etc/mesh/meshd.toml (an installed package's): a lab meshd
            // is configured by its arguments alone.
            let empty = self.dir().join("no-config.toml");
            std::fs::write(&empty, "")?;
            all.extend(["--config".into(), empty.display().to_string()]);
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let proc = self.spawn(&host.ns, Path::new(program), &refs)?;
        let node = Meshd {
            proc,
            host: host.clone(),
            socket: run_dir.join("meshd.sock"),
            state_dir,
        };
        if !wait_until(Duration::from_secs(20), || status(&node).is_ok()) {
            bail!(
                "meshd on {} did not come up; its log:\n{}",
                host.name,
                self.log(proc)
            );
        }
        Ok(node)
    }
}

/// Runs meshd in namespace `ns` with `args`, expecting it to refuse to start; returns what it
/// printed on stderr. Panics (a test failure) if it started.
pub fn meshd_fails(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let meshd = bins::path("meshd").expect("meshd is built");
    let out = lab
        .exec(ns, meshd.to_str().expect("UTF-8 path"), args)
        .expect("running meshd");
    assert!(!out.status.success(), "meshd {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `meshctl --socket <node's socket> <args> --json` and parses the output.
pub fn meshctl_json(node: &Meshd, args: &[&str]) -> Result<Value> {
    let out = meshctl(&node.socket, args, true)?;
    serde_json::from_str(&out).with_context(|| format!("meshctl printed no JSON: {out}"))
}

/// Runs meshctl against `socket`; returns stdout, or fails with its stderr.
pub fn meshctl(socket: &Path, args: &[&str], json: bool) -> Result<String> {
    let mut cmd = Command::new(bins::path("meshctl")?);
    cmd.arg("--socket").arg(socket).args(args);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("meshctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// meshctl against `node` with `args`: its stdout, or an error with its stderr.
pub fn meshctl_on(node: &Meshd, args: &[&str]) -> Result<String> {
    meshctl(&node.socket, args, false)
}

/// Whether `addr` answers one ping from the network namespace file `netns` (a path under
/// /var/run/netns, or /proc/PID/ns/net).
pub fn pings_from_netns(netns: &str, addr: &str) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ping", "-n", "-q", "-c", "1", "-W", "1", addr])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn status(node: &Meshd) -> Result<Value> {
    meshctl_json(node, &["status"])
}

/// `meshctl peers --json` as a list.
pub fn peers(node: &Meshd) -> Result<Vec<Value>> {
    match meshctl_json(node, &["peers"])? {
        Value::Array(a) => Ok(a),
        other => bail!("meshctl peers printed {other}"),
    }
}

/// The row for peer `name` in `node`'s peer list, if any.
pub fn peer(node: &Meshd, name: &str) -> Option<Value> {
    peers(node).ok()?.into_iter().find(|p| p["name"] == name)
}

/// Which of `names` `node` does not show as established, each with the state it shows
/// instead; all of them when `node` does not answer. One `meshctl peers` call: a 24-node
/// check asks 24 times, not 24 x 23.
pub fn not_established(node: &Meshd, names: &[&str]) -> Vec<String> {
    let rows = match peers(node) {
        Ok(rows) => rows,
        Err(e) => return vec![format!("(meshctl peers failed: {e:#})")],
    };
    names
        .iter()
        .filter_map(|&n| match rows.iter().find(|p| p["name"] == n) {
            Some(p) if p["state"] == "established" => None,
            Some(p) => Some(format!("{n} {}", p["state"])),
            None => Some(format!("{n} unknown")),
        })
        .collect()
}

/// Whether `node` shows every one of `names` as established.
pub fn sees_established(node: &Meshd, names: &[&str]) -> bool {
    not_established(node, names).is_empty()
}

/// What keeps `nodes` from a full mesh: for each node that lacks peers, which and in what
/// state (empty when every node sees every other established). For failure messages.
pub fn mesh_gaps(nodes: &[Meshd]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|n| {
            let missing = not_established(n, &others(nodes, n));
            (!missing.is_empty()).then(|| format!("{}: {}", n.host.name, missing.join(", ")))
        })
        .collect()
}

/// The names of the nodes of `nodes` other than `node`.
fn others<'a>(nodes: &'a [Meshd], node: &Meshd) -> Vec<&'a str> {
    nodes
        .iter()
        .filter(|o| o.host.name != node.host.name)
        .map(|o| o.host.name.as_str())
        .collect()
}

/// Whether every node in `nodes` sees every other one established.
pub fn full_mesh(nodes: &[Meshd]) -> bool {
    nodes.iter().all(|n| sees_established(n, &others(nodes, n)))
}

/// Starts meshd with password `password` and `extra` arguments on every host in `hosts`, each
/// given the first as its only peer (gossip finds the rest).
pub fn start_mesh(
    lab: &mut Lab,
    hosts: &[Host],
    password: &str,
    extra: &[&str],
) -> Result<Vec<Meshd>> {
    let pw = lab.password_file("pw", password)?;
    let pw = pw.to_str().context("UTF-8 lab dir")?.to_owned();
    let first = hosts.first().context("no hosts")?.addr.to_string();
    let mut nodes = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let mut args = vec!["--password-file", pw.as_str()];
        args.extend_from_slice(extra);
        if i > 0 {
            args.push(&first);
        }
        nodes.push(lab.start_meshd(h, &args)?);
    }
    Ok(nodes)
}

/// How a test's meshd instances forward frames: the datapath scenarios run in each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every host in TAP mode with a password: meshd seals every frame.
    TapSealed,
    /// Every host in TAP mode, plaintext (`--insecure`).
    TapPlain,
    /// Every host on the kernel datapath, plaintext (`--insecure`).
    Kernel,
    /// Plaintext; the last host of the list runs the TAP datapath, the others the kernel one.
    Mixed,
}

impl Mode {
    /// meshd's arguments (authentication and datapath) for host `i` of `n`; `password_file`
    /// is used when the mode seals.
    pub fn args(self, i: usize, n: usize, password_file: &str) -> Vec<String> {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            Mode::TapSealed => v(&["--password-file", password_file, "--datapath", "tap"]),
            Mode::TapPlain => v(&["--insecure", "--datapath", "tap"]),
            Mode::Kernel => v(&["--insecure", "--datapath", "ebpf"]),
            Mode::Mixed if i + 1 == n => v(&["--insecure", "--datapath", "tap"]),
            Mode::Mixed => v(&["--insecure", "--datapath", "ebpf"]),
        }
    }

    /// Data frames are sealed (28 bytes of overhead more).
    pub fn sealed(self) -> bool {
        self == Mode::TapSealed
    }
}

/// Starts meshd on every host in `hosts` as `mode` says, each given the first host as its only
/// peer (gossip finds the rest).
pub fn start_mesh_in(lab: &mut Lab, hosts: &[Host], mode: Mode) -> Result<Vec<Meshd>> {
    start_mesh_in_with(lab, hosts, mode, &[])
}

/// [`start_mesh_in`], every meshd also given `extra` arguments.
pub fn start_mesh_in_with(
    lab: &mut Lab,
    hosts: &[Host],
    mode: Mode,
    extra: &[&str],
) -> Result<Vec<Meshd>> {
    let pw = lab.password_file("pw", "mesh test")?;
    let pw = pw.to_str().context("UTF-8 lab dir")?.to_owned();
    let first = hosts.first().context("no hosts")?.addr.to_string();
    let mut nodes = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let mut args = mode.args(i, hosts.len(), &pw);
        args.extend(extra.iter().map(|s| s.to_string()));
        if i > 0 {
            args.push(first.clone());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(lab.start_meshd(h, &refs)?);
    }
    Ok(nodes)
}

/// A kernel data-path counter from `meshctl status` (0 when absent).
pub fn kernel_counter(node: &Meshd, name: &str) -> u64 {
    status(node).map_or(0, |s| {
        s["datapath"]["kernel_counters"][name].as_u64().unwrap_or(0)
    })
}

/// Frames `node` relayed for other peers, by the kernel or by meshd.
pub fn relayed(node: &Meshd) -> u64 {
    kernel_counter(node, "kernel_rx_relayed") + tap_counter(node, "tap_relayed")
}

/// Whether container `from` gets an answer to a ping to `to` (2 tries).
pub fn pings(lab: &Lab, from: &crate::Container, to: &crate::Container) -> bool {
    lab.ping(&from.ns, to.addr.expect("container has an address"), 2)
        .unwrap_or(false)
}

/// A UDP socket bound to `port` inside container `c`'s namespace, reading with a short timeout.
pub fn udp_listener(c: &crate::Container, port: u16) -> std::net::UdpSocket {
    let s = crate::netns::run_in(&c.ns, move || std::net::UdpSocket::bind(("0.0.0.0", port)))
        .expect("entering the container's namespace")
        .expect("binding the UDP port");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("setting a read timeout");
    s
}

/// Two hosts on the kernel datapath (`--insecure`, `--datapath ebpf`), `<p>1` and `<p>2`,
/// with a container each (`<p>c1`, `<p>c2` at `<subnet>.1` and `.2`), meshed and able to ping.
pub fn kernel_pair(
    lab: &mut Lab,
    p: &str,
    subnet: &str,
) -> Result<(Vec<Host>, Vec<crate::Container>, Vec<Meshd>)> {
    pair_in(lab, p, subnet, Mode::Kernel)
}

/// [`kernel_pair`] with both hosts in `mode`.
pub fn pair_in(
    lab: &mut Lab,
    p: &str,
    subnet: &str,
    mode: Mode,
) -> Result<(Vec<Host>, Vec<crate::Container>, Vec<Meshd>)> {
    let hosts = vec![
        lab.add_host(&format!("{p}1"))?,
        lab.add_host(&format!("{p}2"))?,
    ];
    let mut containers = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let name = format!("{p}c{}", i + 1);
        containers.push(lab.add_container(h, &name, Some(&format!("{subnet}.{}/24", i + 1)))?);
    }
    let nodes = start_mesh_in(lab, &hosts, mode)?;
    if !wait_until(Duration::from_secs(8), || full_mesh(&nodes)) {
        bail!("the two meshd did not connect");
    }
    if !wait_until(Duration::from_secs(5), || {
        pings(lab, &containers[0], &containers[1])
    }) {
        bail!("the containers cannot reach each other");
    }
    Ok((hosts, containers, nodes))
}

/// A control-plane counter from `meshctl status` (`group`: "handshake_counters",
/// "gossip_counters"; 0 when absent).
pub fn status_counter(node: &Meshd, group: &str, name: &str) -> u64 {
    status(node).map_or(0, |s| s[group][name].as_u64().unwrap_or(0))
}

/// A TAP data-path counter from `meshctl status` (0 when absent).
pub fn tap_counter(node: &Meshd, name: &str) -> u64 {
    status(node).map_or(0, |s| {
        s["datapath"]["tap_counters"][name].as_u64().unwrap_or(0)
    })
}

/// Sends `bytes` over one TCP connection from container `from` to a listener in `to` (at its
/// address, `port`) and checks that exactly that many arrived before the sender closed. Exact,
/// unlike iperf3's own count (read by its client before a slow path has delivered the tail).
pub fn tcp_exact(
    from: &crate::Container,
    to: &crate::Container,
    port: u16,
    bytes: usize,
) -> Result<()> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from((to.addr.context("the receiver has no address")?, port));
    // Sockets keep the namespace they were made in: made there, used from here.
    let listener = crate::netns::run_in(&to.ns, move || std::net::TcpListener::bind(addr))??;
    let receiver = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut total = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match conn.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    });
    let mut conn = crate::netns::run_in(&from.ns, move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30))
    })??;
    conn.set_write_timeout(Some(Duration::from_secs(60)))?;
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| i as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        conn.write_all(&chunk[..n])
            .with_context(|| format!("sending to {addr} ({} of {bytes} sent)", bytes - left))?;
        left -= n;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiving thread panicked"))?
        .with_context(|| format!("receiving at {addr}"))?;
    if got != bytes {
        bail!(
            "{} -> {}: {got} of {bytes} bytes arrived",
            from.name,
            to.name
        );
    }
    Ok(())
}

/// Transfers `size` (iperf3 syntax, e.g. "16M") over TCP from container `from` to an iperf3
/// server in `to` bound to `bind`, dialled at `target` (they differ for link-local addresses,
/// which need a scope). Retries for up to 10 s while the path comes up; the error says what
/// iperf3 said last. Returns the bytes the server received (iperf3 ends the test with the last
/// segments still in flight, so this can be less than `size`).
pub fn tcp_transfer(
    lab: &mut Lab,
    from: &crate::Container,
    to: &crate::Container,
    (bind, target): (&str, &str),
    size: &str,
) -> Result<u64> {
    let server = lab.spawn(
        &to.ns,
        Path::new("/usr/bin/iperf3"),
        &["-s", "-1", "-B", bind],
    )?;
    let mut last = String::new();
    let mut received = 0;
    let ok = wait_until(Duration::from_secs(10), || {
        let out = lab.exec(&from.ns, "iperf3", &["-c", target, "-n", size, "-J"]);
        match out {
            Ok(out) => {
                // With -J iperf3 reports, errors included, as JSON on stdout.
                let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
                last = report["error"].as_str().map_or_else(
                    || String::from_utf8_lossy(&out.stderr).into_owned(),
                    str::to_owned,
                );
                // iperf3 3.12 can exit 0 with "unable to connect" in its JSON (a client
                // started before its server listens): only a transfer counts.
                out.status.success() && report["error"].is_null() && received > 0
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        }
    });
    lab.kill(server).ok();
    if !ok {
        bail!("iperf3 {} -> {}: {last}", from.name, to.name);
    }
    Ok(received)
}
