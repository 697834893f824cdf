//! The lab: builds a topology of network namespaces and tears it down.
//!
//! Shape (all inside namespaces named `<lab id>-<name>`):
//! - a switch namespace `<id>-sw` with bridge `br0`: the shared underlay (198.18.0.0/24);
//! - hosts: a namespace with underlay veth `u0`, plugged into the switch (port `p-<host>`) or
//!   into the LAN of a NAT router, or a pair of hosts whose `u0` are the two ends of one veth
//!   (the benchmark's shape);
//! - containers: a namespace with `eth0`, whose peer `v-<container>` sits on the host's bridge
//!   `mesh` (created on first use);
//! - NAT routers: `wan` on the switch, bridge `lan` (198.19.k.0/24) for the hosts behind it,
//!   nftables masquerade, and a forward policy that lets only LAN-initiated flows through.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

use crate::{
    registry::{self, Record},
    sh::{ip, ip_in, nft_in, sysctl_in},
};

/// Interface and bridge names inside the lab.
const UNDERLAY_IF: &str = "u0";
const SWITCH_BRIDGE: &str = "br0";
const HOST_BRIDGE: &str = "mesh";
/// Longest node name: interface names get a 2-char prefix and must stay within IFNAMSIZ-1 (15).
const MAX_NAME: usize = 12;

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A host: a network namespace with an underlay interface.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// Network namespace name (for `ip -n`, `ip netns exec`).
    pub ns: String,
    /// Underlay interface inside the namespace.
    pub underlay_if: String,
    /// The host's own underlay address.
    pub addr: Ipv4Addr,
    /// The address other hosts see this host's traffic come from (its NAT router's WAN address
    /// when it sits behind one).
    pub public_addr: Ipv4Addr,
}

/// A container: a namespace plugged into a host's `mesh` bridge.
#[derive(Clone, Debug)]
pub struct Container {
    pub name: String,
    pub ns: String,
    pub host: String,
    /// Its interface (`eth0`) address, if it was given one.
    pub addr: Option<Ipv4Addr>,
}

/// A NAT router (masquerade, outbound only) with a LAN for hosts behind it.
#[derive(Clone, Debug)]
pub struct NatRouter {
    pub name: String,
    pub ns: String,
    /// Address on the shared underlay: what the outside sees.
    pub wan_addr: Ipv4Addr,
    /// Third octet of its LAN, 198.19.<lan>.0/24.
    lan: u8,
    next_lan_host: u8,
}

/// Handle of a process started with [`Lab::spawn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcId(usize);

struct Proc {
    ns: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

/// A topology of namespaces, removed on drop.
pub struct Lab {
    id: String,
    record: Record,
    dir: PathBuf,
    /// Where this lab's meshd instances pin their kernel datapath (one directory each).
    bpf_dir: PathBuf,
    switch_ns: String,
    namespaces: Vec<String>,
    next_underlay_host: u8,
    next_lan: u8,
    hosts: Vec<Host>,
    procs: Vec<Proc>,
    /// Host pairs (by name, ordered) whose traffic is dropped.
    /// Host pairs whose traffic is dropped: all of it (`None`) or UDP to one port.
    drops: BTreeMap<(String, String), Option<u16>>,
}

impl Lab {
    /// Creates an empty lab (just the underlay switch), after reaping what crashed runs left.
    /// `label` only helps a person recognise the lab's files in the log dir.
    pub fn new(label: &str) -> Result<Lab> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the lab needs root (network namespaces): run the tests with sudo");
        }
        registry::reap_stale();
        let id = format!(
            "ml{}-{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let record = Record::create(&id)?;
        registry::mount_bpffs()?;
        let bpf_dir = Path::new(registry::BPF_DIR).join(&id);
        record.bpf_dir(&bpf_dir)?;
        let dir = std::env::temp_dir()
            .join("mesh-lab")
            .join(format!("{id}-{label}"));
        // A directory of this name is left from an earlier test process that had our PID (labs
        // keep their files for post-mortems): its sockets and logs would collide with ours.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the stale {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let switch_ns = format!("{id}-sw");
        let mut lab = Lab {
            id,
            record,
            dir,
            bpf_dir,
            switch_ns: switch_ns.clone(),
            namespaces: Vec::new(),
            next_underlay_host: 1,
            next_lan: 1,
            hosts: Vec::new(),
            procs: Vec::new(),
            drops: BTreeMap::new(),
        };
        lab.add_netns(&switch_ns)?;
        ip_in(
            &switch_ns,
            &["link", "add", SWITCH_BRIDGE, "type", "bridge"],
        )?;
        ip_in(&switch_ns, &["link", "set", SWITCH_BRIDGE, "up"])?;
        // The switch is a wire: where br_netfilter is loaded (dockerd loads it) every bridged
        // IPv4 frame would also pass through iptables here (13% fewer 64-byte UDP packets
        // host to host, measured). The settings are per namespace; without br_netfilter the
        // keys do not exist and there is nothing to turn off.
        if Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
            for family in ["iptables", "ip6tables", "arptables"] {
                sysctl_in(&switch_ns, &format!("net.bridge.bridge-nf-call-{family}=0"))?;
            }
        }
        Ok(lab)
    }

    /// This lab's id: the prefix of every namespace it creates.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Directory for this lab's files (process logs, per-instance dirs). Kept after the lab is
    /// dropped, so a failed test can be looked at.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory meshd on `host` pins its kernel datapath in (`--bpf-dir`).
    pub fn bpf_dir_of(&self, host: &str) -> PathBuf {
        self.bpf_dir.join(host)
    }

    /// Every namespace this lab created so far.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    fn add_netns(&mut self, ns: &str) -> Result<()> {
        self.record.netns(ns)?;
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        ip_in(ns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    fn check_name(&self, name: &str) -> Result<()> {
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name.chars().all(|c| c.is_ascii_alphanumeric())
        {
            bail!("lab node name {name:?}: use 1-{MAX_NAME} ASCII letters and digits");
        }
        if self.namespaces.contains(&format!("{}-{name}", self.id)) {
            bail!("lab node name {name:?} is already used in this lab");
        }
        Ok(())
    }

    /// Adds a host on the shared underlay switch, with the next free 198.18.0.x/24 address.
    pub fn add_host(&mut self, name: &str) -> Result<Host> {
        let host = self.underlay_host(name)?;
        self.plug_into_switch(&host.ns, UNDERLAY_IF, &format!("p-{name}"))?;
        self.address_underlay(&host)?;
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Adds two hosts joined by one veth pair, with no switch between them: the shape of the
    /// benchmark's reference labs (kernel VXLAN, WireGuard, tinc), so that mesh is measured
    /// over the same wire. They get the next free 198.18.0.x/24 addresses; only each other
    /// is reachable on their underlay.
    pub fn add_cabled_pair(&mut self, a: &str, b: &str) -> Result<(Host, Host)> {
        if a == b {
            bail!("lab node name {a:?} given twice");
        }
        let ha = self.underlay_host(a)?;
        let hb = self.underlay_host(b)?;
        ip(&[
            "link",
            "add",
            UNDERLAY_IF,
            "netns",
            &ha.ns,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY_IF,
            "netns",
            &hb.ns,
        ])?;
        for h in [&ha, &hb] {
            self.address_underlay(h)?;
            self.hosts.push(h.clone());
        }
        Ok((ha, hb))
    }

    /// A new host namespace named after `name`, with the next free underlay address (not yet
    /// on any interface).
    fn underlay_host(&mut self, name: &str) -> Result<Host> {
        self.check_name(name)?;
        let addr = self.next_underlay_addr()?;
        let ns = format!("{}-{name}", self.id);
        self.add_netns(&ns)?;
        Ok(Host {
            name: name.to_owned(),
            ns,
            underlay_if: UNDERLAY_IF.to_owned(),
            addr,
            public_addr: addr,
        })
    }

    /// Gives `host`'s underlay interface (already created) its address, up.
    fn address_underlay(&self, host: &Host) -> Result<()> {
        ip_in(
            &host.ns,
            &[
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                UNDERLAY_IF,
            ],
        )?;
        ip_in(&host.ns, &["link", "set", UNDERLAY_IF, "up"]).map(|_| ())
    }

    fn next_underlay_addr(&mut self) -> Result<Ipv4Addr> {
        if self.next_underlay_host == 255 {
            bail!("the lab underlay 198.18.0.0/24 is full");
        }
        let a = Ipv4Addr::new(198, 18, 0, self.next_underlay_host);
        self.next_underlay_host += 1;
        Ok(a)
    }

    /// Creates veth `inner` in `ns` with peer `port` on the switch bridge, both up.
    fn plug_into_switch(&self, ns: &str, inner: &str, port: &str) -> Result<()> {
        ip(&[
            "link",
            "add",
            inner,
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &self.switch_ns,
        ])?;
        ip_in(
            &self.switch_ns,
            &["link", "set", port, "master", SWITCH_BRIDGE, "up"],
        )?;
        ip_in(ns, &["link", "set", inner, "up"])?;
        Ok(())
    }

    /// Adds a NAT router: `wan` on the switch, a LAN bridge for hosts behind it, masquerade,
    /// and a forward policy that drops every flow the LAN did not start.
    pub fn add_nat_router(&mut self, name: &str) -> Result<NatRouter> {
        self.check_name(name)?;
        let wan_addr = self.next_underlay_addr()?;
        let lan = self.next_lan;
        self.next_lan += 1;
        let ns = format!("{}-{name}", self.id);
        self.add_netns(&ns)?;
        self.plug_into_switch(&ns, "wan", &format!("p-{name}"))?;
        ip_in(
            &ns,
            &["addr", "add", &format!("{wan_addr}/24"), "dev", "wan"],
        )?;
        ip_in(&ns, &["link", "add", "lan", "type", "bridge"])?;
        ip_in(
            &ns,
            &["addr", "add", &format!("198.19.{lan}.1/24"), "dev", "lan"],
        )?;
        ip_in(&ns, &["link", "set", "lan", "up"])?;
        sysctl_in(&ns, "net.ipv4.ip_forward=1")?;
        nft_in(
            &ns,
            r#"table ip meshlab_nat {
                 chain postrouting {
                   type nat hook postrouting priority srcnat; policy accept;
                   oifname "wan" masquerade
                 }
                 chain forward {
                   type filter hook forward priority filter; policy drop;
                   ct state established,related accept
                   iifname "lan" oifname "wan" accept
                 }
               }"#,
        )?;
        Ok(NatRouter {
            name: name.to_owned(),
            ns,
            wan_addr,
            lan,
            next_lan_host: 2,
        })
    }

    /// Adds a host on `router`'s LAN, with a default route through the router.
    pub fn add_host_behind(&mut self, router: &mut NatRouter, name: &str) -> Result<Host> {
        self.check_name(name)?;
        let ns = format!("{}-{name}", self.id);
        self.add_netns(&ns)?;
        let port = format!("l-{name}");
        ip(&[
            "link",
            "add",
            UNDERLAY_IF,
            "netns",
            &ns,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &router.ns,
        ])?;
        ip_in(&router.ns, &["link", "set", &port, "master", "lan", "up"])?;
        ip_in(&ns, &["link", "set", UNDERLAY_IF, "up"])?;
        let addr = Ipv4Addr::new(198, 19, router.lan, router.next_lan_host);
        router.next_lan_host += 1;
        ip_in(
            &ns,
            &["addr", "add", &format!("{addr}/24"), "dev", UNDERLAY_IF],
        )?;
        let gw = format!("198.19.{}.1", router.lan);
        ip_in(&ns, &["route", "add", "default", "via", &gw])?;
        let host = Host {
            name: name.to_owned(),
            ns,
            underlay_if: UNDERLAY_IF.to_owned(),
            addr,
            public_addr: router.wan_addr,
        };
        self.hosts.push(host.clone());
        Ok(host)
    }

    /// Adds a network namespace with only `lo` (a container nothing plugged in yet, for
    /// `meshctl attach`); returns its name (`ip netns`; its file is /var/run/netns/<name>).
    pub fn add_bare_netns(&mut self, name: &str) -> Result<String> {
        self.check_name(name)?;
        let ns = format!("{}-{name}", self.id);
        self.add_netns(&ns)?;
        Ok(ns)
    }

    /// Adds a container on `host`: namespace with `eth0` (address `cidr` if given, e.g.
    /// "10.40.0.1/24"), its peer plugged into the host's `mesh` bridge.
    pub fn add_container(
        &mut self,
        host: &Host,
        name: &str,
        cidr: Option<&str>,
    ) -> Result<Container> {
        self.check_name(name)?;
        let ns = format!("{}-{name}", self.id);
        self.add_netns(&ns)?;
        if ip_in(&host.ns, &["link", "show", HOST_BRIDGE]).is_err() {
            ip_in(&host.ns, &["link", "add", HOST_BRIDGE, "type", "bridge"])?;
            ip_in(&host.ns, &["link", "set", HOST_BRIDGE, "up"])?;
        }
        let port = format!("v-{name}");
        ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns",
            &host.ns,
        ])?;
        ip_in(
            &host.ns,
            &["link", "set", &port, "master", HOST_BRIDGE, "up"],
        )?;
        ip_in(&ns, &["link", "set", "eth0", "up"])?;
        let addr = match cidr {
            Some(c) => {
                ip_in(&ns, &["addr", "add", c, "dev", "eth0"])?;
                let a = c.split('/').next().unwrap_or(c);
                Some(
                    a.parse()
                        .with_context(|| format!("container address {c:?}"))?,
                )
            }
            None => None,
        };
        Ok(Container {
            name: name.to_owned(),
            ns,
            host: host.name.clone(),
            addr,
        })
    }

    /// Narrows the underlay path of `host`: the switch port it is plugged into gets MTU `mtu`,
    /// so bigger frames to or from it are dropped silently (no ICMP), as on a tunnel or a
    /// cloud network narrower than the host's own NIC.
    pub fn narrow_path(&self, host: &Host, mtu: u32) -> Result<()> {
        ip_in(
            &self.switch_ns,
            &[
                "link",
                "set",
                &format!("p-{}", host.name),
                "mtu",
                &mtu.to_string(),
            ],
        )
        .map(|_| ())
    }

    /// Cuts `host`'s underlay link (interface down): nothing passes either way.
    pub fn cut_link(&self, host: &Host) -> Result<()> {
        ip_in(&host.ns, &["link", "set", &host.underlay_if, "down"]).map(|_| ())
    }

    /// Restores a link cut by [`Lab::cut_link`].
    pub fn restore_link(&self, host: &Host) -> Result<()> {
        ip_in(&host.ns, &["link", "set", &host.underlay_if, "up"]).map(|_| ())
    }

    /// Drops all traffic between `a` and `b` (nftables on both hosts); other pairs are unaffected.
    pub fn drop_between(&mut self, a: &Host, b: &Host) -> Result<()> {
        self.drops.insert(pair(a, b), None);
        self.apply_drops(a)?;
        self.apply_drops(b)
    }

    /// Drops UDP to `port` between `a` and `b`, both ways; everything else still passes.
    pub fn drop_udp_port_between(&mut self, a: &Host, b: &Host, port: u16) -> Result<()> {
        self.drops.insert(pair(a, b), Some(port));
        self.apply_drops(a)?;
        self.apply_drops(b)
    }

    /// Undoes [`Lab::drop_between`] and [`Lab::drop_udp_port_between`].
    pub fn allow_between(&mut self, a: &Host, b: &Host) -> Result<()> {
        self.drops.remove(&pair(a, b));
        self.apply_drops(a)?;
        self.apply_drops(b)
    }

    /// Rewrites `host`'s drop table from `self.drops` in one nft transaction.
    fn apply_drops(&self, host: &Host) -> Result<()> {
        let mut rules = String::new();
        for ((x, y), port) in &self.drops {
            let other = if *x == host.name {
                y
            } else if *y == host.name {
                x
            } else {
                continue;
            };
            let o = self
                .hosts
                .iter()
                .find(|h| &h.name == other)
                .context("drop rule names an unknown host")?;
            // Match both the peer's own and its public address: behind NAT they differ.
            let what = port.map_or(String::new(), |p| format!("udp dport {p} "));
            for addr in BTreeSet::from([o.addr, o.public_addr]) {
                rules.push_str(&format!(
                    "add rule inet meshlab input ip saddr {addr} {what}drop\n\
                     add rule inet meshlab output ip daddr {addr} {what}drop\n"
                ));
            }
        }
        nft_in(
            &host.ns,
            &format!(
                "add table inet meshlab\ndelete table inet meshlab\n\
                 add table inet meshlab\n\
                 add chain inet meshlab input {{ type filter hook input priority filter; }}\n\
                 add chain inet meshlab output {{ type filter hook output priority filter; }}\n\
                 {rules}"
            ),
        )
    }

    /// Starts `program args...` inside namespace `ns`, output to a log file in [`Lab::dir`].
    pub fn spawn(&mut self, ns: &str, program: &Path, args: &[&str]) -> Result<ProcId> {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log = self
            .dir
            .join(format!("{ns}-{name}-{}.log", self.procs.len()));
        let mut proc = Proc {
            ns: ns.to_owned(),
            program: program.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            log,
            child: None,
        };
        start(&self.record, &mut proc)?;
        self.procs.push(proc);
        Ok(ProcId(self.procs.len() - 1))
    }

    /// PID of a started process (while it runs).
    pub fn pid(&self, id: ProcId) -> Option<u32> {
        self.procs[id.0].child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self, id: ProcId) -> bool {
        match self.procs[id.0].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit code of a process that has ended (None while it runs, or if a signal ended
    /// it).
    pub fn exit_code(&mut self, id: ProcId) -> Option<i32> {
        let c = self.procs[id.0].child.as_mut()?;
        c.try_wait().ok().flatten().and_then(|s| s.code())
    }

    /// Kills a process with SIGKILL (a crash, as far as it is concerned) and reaps it.
    pub fn kill(&mut self, id: ProcId) -> Result<()> {
        if let Some(mut c) = self.procs[id.0].child.take() {
            c.kill().ok();
            c.wait()?;
        }
        Ok(())
    }

    /// Stops a process with SIGTERM (a clean shutdown), SIGKILL after `grace`.
    pub fn terminate(&mut self, id: ProcId, grace: std::time::Duration) -> Result<()> {
        if let Some(mut c) = self.procs[id.0].child.take() {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let exited = crate::wait_until(grace, || matches!(c.try_wait(), Ok(Some(_))));
            if !exited {
                c.kill().ok();
            }
            c.wait()?;
        }
        Ok(())
    }

    /// Starts a process again with the same namespace, program and arguments.
    pub fn restart(&mut self, id: ProcId) -> Result<()> {
        self.kill(id)?;
        start(&self.record, &mut self.procs[id.0])
    }

    /// The output a process wrote so far.
    pub fn log(&self, id: ProcId) -> String {
        std::fs::read_to_string(&self.procs[id.0].log).unwrap_or_default()
    }

    /// Runs a command to completion inside namespace `ns` and returns its output (whatever
    /// its exit status).
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} in {ns}"))
    }

    /// `ping -c count` from `ns` to `addr` (200 ms interval, 1 s deadline per reply); true if
    /// every reply came back.
    pub fn ping(&self, ns: &str, addr: Ipv4Addr, count: u32) -> Result<bool> {
        let out = self.exec(
            ns,
            "ping",
            &[
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                &addr.to_string(),
            ],
        )?;
        Ok(out.status.success())
    }
}

fn start(record: &Record, proc: &mut Proc) -> Result<()> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(&proc.log)
        .with_context(|| format!("opening {}", proc.log.display()))?;
    // `ip netns exec` execs the program, so the child's PID is the program's PID.
    let child = Command::new("ip")
        .args(["netns", "exec", &proc.ns])
        .arg(&proc.program)
        .args(&proc.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} in {}", proc.program.display(), proc.ns))?;
    record.process(child.id())?;
    proc.child = Some(child);
    Ok(())
}

fn pair(a: &Host, b: &Host) -> (String, String) {
    if a.name <= b.name {
        (a.name.clone(), b.name.clone())
    } else {
        (b.name.clone(), a.name.clone())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            let _ = self.terminate(ProcId(i), std::time::Duration::from_secs(2));
        }
        for ns in self.namespaces.iter().rev() {
            registry::end_processes_in(ns);
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("lab {}: {e:#}", self.id);
            }
        }
        let _ = std::fs::remove_dir_all(&self.bpf_dir);
        self.record.remove();
    }
}
