//! The reference systems the bench compares mesh with, set up by this code (no script outside
//! the repository): two "hosts" (network namespaces `<prefix>h1`, `<prefix>h2`) on a veth
//! underlay 198.18.0.1-2/24 (`u1`, `u2`), each with one "container" (`<prefix>c1`, `<prefix>c2`,
//! 10.40.0.1-2/24), joined by
//!
//! - kernel VXLAN: a Linux bridge and a VXLAN device on each host (Docker's overlay, Flannel's
//!   vxlan backend), container MTU 1450;
//! - userspace WireGuard, boringtun (`boringtun-cli`) or wireguard-go, configured with `wg`:
//!   routed, the container behind its host with proxy ARP, the other container's /32 through
//!   the TUN device, MTU 1420;
//! - tinc 1.0 in switch mode (a userspace L2 mesh VPN: the closest to mesh's TAP mode), its TAP
//!   device bridged with the container, encrypted as it ships (RSA keys, Blowfish-CBC and
//!   HMAC-SHA1 on data), MTU 1400 (tinc adds 33 to 49 bytes and some padding).
//!
//! The lab is removed on drop (and a leftover of an interrupted run with the same prefix when it
//! is built).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use mesh_tests::{
    sh::{ip, ip_in, run, sysctl_in},
    wait_until,
};

/// A reference lab, taken down on drop.
pub struct RefLab {
    prefix: String,
    /// boringtun processes (none for VXLAN).
    children: Vec<Child>,
    /// Keys and logs (boringtun).
    state: PathBuf,
}

impl RefLab {
    /// Namespace name of host or container `n` (e.g. "h1", "c2").
    pub fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }

    /// PIDs of the lab's overlay processes (boringtun's), for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The shared part: namespaces, the underlay veth, loopbacks.
    fn base(prefix: &str) -> Result<RefLab> {
        let mut lab = RefLab {
            prefix: prefix.to_owned(),
            children: Vec::new(),
            state: std::env::temp_dir().join(format!("{prefix}-lab")),
        };
        lab.down();
        for n in ["h1", "h2", "c1", "c2"] {
            ip(&["netns", "add", &lab.ns(n)])?;
        }
        let (h1, h2) = (lab.ns("h1"), lab.ns("h2"));
        ip(&[
            "link", "add", "u1", "netns", &h1, "type", "veth", "peer", "name", "u2", "netns", &h2,
        ])?;
        for h in 1..=2 {
            let ns = lab.ns(&format!("h{h}"));
            ip_in(
                &ns,
                &[
                    "addr",
                    "add",
                    &format!("198.18.0.{h}/24"),
                    "dev",
                    &format!("u{h}"),
                ],
            )?;
            ip_in(&ns, &["link", "set", "lo", "up"])?;
            ip_in(&ns, &["link", "set", &format!("u{h}"), "up"])?;
            ip_in(&lab.ns(&format!("c{h}")), &["link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// Adds container `h` behind host `h` on a veth (`ve<h>` on the host, `eth0` inside) with
    /// MTU `mtu` and address 10.40.0.<h>/24.
    fn container(&self, h: u8, mtu: u32) -> Result<()> {
        let (host, c) = (self.ns(&format!("h{h}")), self.ns(&format!("c{h}")));
        let ve = format!("ve{h}");
        ip(&[
            "link", "add", &ve, "netns", &host, "type", "veth", "peer", "name", "eth0", "netns", &c,
        ])?;
        ip_in(&c, &["link", "set", "eth0", "mtu", &mtu.to_string(), "up"])?;
        ip_in(
            &c,
            &["addr", "add", &format!("10.40.0.{h}/24"), "dev", "eth0"],
        )?;
        Ok(())
    }

    /// Kernel VXLAN (VNI 42, port 4789) bridged with each container, static flood entries.
    pub fn vxlan(prefix: &str) -> Result<RefLab> {
        let lab = RefLab::base(prefix)?;
        for h in 1..=2u8 {
            let ns = lab.ns(&format!("h{h}"));
            ip_in(&ns, &["link", "add", "br0", "type", "bridge"])?;
            ip_in(&ns, &["link", "set", "br0", "up"])?;
            let local = format!("198.18.0.{h}");
            ip_in(
                &ns,
                &[
                    "link",
                    "add",
                    "vx0",
                    "type",
                    "vxlan",
                    "id",
                    "42",
                    "dstport",
                    "4789",
                    "local",
                    &local,
                    "nolearning",
                ],
            )?;
            ip_in(
                &ns,
                &["link", "set", "vx0", "master", "br0", "mtu", "1450", "up"],
            )?;
            lab.container(h, 1450)?;
            ip_in(
                &ns,
                &["link", "set", &format!("ve{h}"), "master", "br0", "up"],
            )?;
            let other = format!("198.18.0.{}", 3 - h);
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "bridge",
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    "vx0",
                    "dst",
                    &other,
                ],
            )?;
        }
        Ok(lab)
    }

    /// boringtun on each host (`threads`: its `--threads`, `None` for its default).
    pub fn boringtun(prefix: &str, threads: Option<&str>) -> Result<RefLab> {
        let mut args = vec!["-f".to_owned(), "--disable-drop-privileges".to_owned()];
        if let Some(t) = threads {
            args.extend(["--threads".to_owned(), t.to_owned()]);
        }
        RefLab::userspace_wireguard(prefix, &which("boringtun-cli")?, &args)
    }

    /// wireguard-go on each host.
    pub fn wireguard_go(prefix: &str) -> Result<RefLab> {
        RefLab::userspace_wireguard(prefix, &which("wireguard-go")?, &["-f".to_owned()])
    }

    /// A userspace WireGuard (`program args IFACE`, which opens the usual UAPI socket) on each
    /// host, configured with `wg`.
    fn userspace_wireguard(
        prefix: &str,
        program: &std::path::Path,
        args: &[String],
    ) -> Result<RefLab> {
        const MTU: u32 = 1420;
        let mut lab = RefLab::base(prefix)?;
        std::fs::create_dir_all(&lab.state)?;
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut keys = Vec::new();
        for _ in 1..=2 {
            let private = run("wg", &["genkey"])?.trim().to_owned();
            let public = pipe("wg", &["pubkey"], &private)?.trim().to_owned();
            keys.push((private, public));
        }
        for h in 1..=2u8 {
            let (ns, o) = (lab.ns(&format!("h{h}")), 3 - h);
            let wg = format!("wgb{}{h}", lab.prefix);
            sysctl_in(&ns, "net.ipv4.ip_forward=1")?;
            lab.container(h, MTU)?;
            let ve = format!("ve{h}");
            ip_in(&ns, &["link", "set", &ve, "mtu", &MTU.to_string(), "up"])?;
            sysctl_in(&ns, &format!("net.ipv4.conf.{ve}.proxy_arp=1"))?;
            ip_in(
                &ns,
                &["route", "add", &format!("10.40.0.{h}/32"), "dev", &ve],
            )?;
            let log = std::fs::File::create(lab.state.join(format!("h{h}.out")))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(program)
                .args(args)
                .arg(&wg)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {name} (`cargo xtask setup` installs it)"))?;
            lab.children.push(child);
            let sock = PathBuf::from(format!("/var/run/wireguard/{wg}.sock"));
            if !wait_until(Duration::from_secs(5), || sock.exists()) {
                bail!("{name} did not open {}", sock.display());
            }
            let key = lab.state.join(format!("h{h}.key"));
            std::fs::write(&key, format!("{}\n", keys[usize::from(h) - 1].0))?;
            let key = key.display().to_string();
            let (endpoint, allowed) = (format!("198.18.0.{o}:51820"), format!("10.40.0.{o}/32"));
            let peer = &keys[usize::from(o) - 1].1;
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "wg",
                    "set",
                    &wg,
                    "private-key",
                    &key,
                    "listen-port",
                    "51820",
                    "peer",
                    peer,
                    "endpoint",
                    &endpoint,
                    "allowed-ips",
                    &allowed,
                ],
            )?;
            ip_in(&ns, &["link", "set", &wg, "mtu", &MTU.to_string(), "up"])?;
            ip_in(&ns, &["route", "add", &allowed, "dev", &wg])?;
        }
        lab.connected(&name)?;
        Ok(lab)
    }

    /// tinc 1.0 in switch mode on each host, its TAP device on a bridge with the container.
    pub fn tinc(prefix: &str) -> Result<RefLab> {
        const MTU: u32 = 1400;
        let mut lab = RefLab::base(prefix)?;
        let tincd = which("tincd")?;
        let conf = |h: u8| lab.state.join(format!("h{h}"));
        for h in 1..=2u8 {
            let dir = conf(h);
            std::fs::create_dir_all(dir.join("hosts"))?;
            let mut tinc_conf = format!(
                "Name = h{h}\nMode = switch\nInterface = tinc{}{h}\nAddressFamily = ipv4\n",
                lab.prefix
            );
            if h == 1 {
                tinc_conf.push_str("ConnectTo = h2\n");
            }
            std::fs::write(dir.join("tinc.conf"), tinc_conf)?;
            std::fs::write(
                dir.join("hosts").join(format!("h{h}")),
                format!("Address = 198.18.0.{h}\nPort = 655\n"),
            )?;
            let up = dir.join("tinc-up");
            std::fs::write(
                &up,
                "#!/bin/sh\nip link set \"$INTERFACE\" master br0 mtu 1500 up\n",
            )?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o755))?;
            // Not a terminal: tincd writes the key pair where it belongs without asking.
            run(
                tincd.to_str().context("tincd's path")?,
                &["-c", dir.to_str().context("UTF-8 path")?, "-K2048"],
            )?;
        }
        // Each host knows the other's address and public key.
        for (a, b) in [(1u8, 2u8), (2, 1)] {
            std::fs::copy(
                conf(a).join("hosts").join(format!("h{a}")),
                conf(b).join("hosts").join(format!("h{a}")),
            )?;
        }
        for h in 1..=2u8 {
            let ns = lab.ns(&format!("h{h}"));
            ip_in(&ns, &["link", "add", "br0", "type", "bridge"])?;
            ip_in(&ns, &["link", "set", "br0", "up"])?;
            lab.container(h, MTU)?;
            ip_in(
                &ns,
                &["link", "set", &format!("ve{h}"), "master", "br0", "up"],
            )?;
            let log = std::fs::File::create(lab.state.join(format!("h{h}.out")))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(&tincd)
                .arg("-c")
                .arg(conf(h))
                .arg(format!(
                    "--pidfile={}",
                    lab.state.join(format!("h{h}.pid")).display()
                ))
                .args(["-D", "-d0"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting tincd (`cargo xtask setup` installs tinc)")?;
            lab.children.push(child);
        }
        lab.connected("tinc")?;
        Ok(lab)
    }

    /// Waits until container 1 reaches container 2 across the overlay.
    fn connected(&self, what: &str) -> Result<()> {
        let c1 = self.ns("c1");
        let ok = wait_until(Duration::from_secs(15), || {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &c1,
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    "10.40.0.2",
                ],
            )
            .is_ok()
        });
        if !ok {
            bail!("the {what} lab has no overlay connectivity");
        }
        Ok(())
    }

    fn down(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
        for n in ["h1", "h2", "c1", "c2"] {
            let _ = ip(&["netns", "del", &self.ns(n)]);
        }
        for h in 1..=2 {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/wgb{}{h}.sock", self.prefix));
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

impl Drop for RefLab {
    fn drop(&mut self) {
        self.down();
    }
}

/// `prog` on the PATH, or in ~/.cargo/bin (where `cargo install` puts it).
fn which(prog: &str) -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")))
        .map(|d| d.join(prog))
        .find(|p| p.is_file());
    on_path.with_context(|| format!("{prog} not found; run `cargo xtask setup`"))
}

/// Runs `prog args` with `input` on its standard input; returns its output.
fn pipe(prog: &str, args: &[&str], input: &str) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {prog}"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{prog} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
