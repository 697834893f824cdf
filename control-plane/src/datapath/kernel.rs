//! The kernel datapath at run time: loads mesh's eBPF object, attaches `bridge_egress` to
//! meshd's bridge port (TC egress) and `underlay_ingress` to the underlay NIC (TC ingress),
//! and keeps the maps equal to what the agent computed (writing only differences).

use std::{
    net::Ipv4Addr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, SchedClassifierLinkId},
    },
    util::KernelVersion,
};
use mesh_common::{
    DatapathConfig, KERNEL_COUNTER_SLOTS, KernelCounter,
    maps::{
        CONFIG_FORWARD, FDB_MAX_AGE_NS, FdbEntry, FloodEntry, LinkStats, MacKey, NeighbourEntry,
        SenderEntry,
    },
    names,
};

use super::{
    DatapathError, EBPF_OBJECT,
    compile::{Change, MapState, Missing, diff, link_ids, retain_removed},
};

/// Everything the kernel needs to know about this host.
#[derive(Clone, Debug)]
pub struct HostConfig {
    pub underlay: String,
    pub underlay_ipv4: Ipv4Addr,
    pub underlay_mac: [u8; 6],
    pub bridge_port: String,
    pub data_port: u16,
    pub overlay_mtu: u32,
    /// Where maps and links are pinned (a directory on bpffs, one per meshd instance), so the
    /// programs keep forwarding while meshd is down and a restarted meshd adopts them. `None`:
    /// nothing pinned, everything goes with the process.
    pub pin_dir: Option<PathBuf>,
}

/// The maps pinned in the pin directory: all the forwarding state.
const PINNED_MAPS: [&str; 10] = [
    names::DATAPATH_CONFIG_MAP,
    names::KERNEL_COUNTERS_MAP,
    names::NEIGHBOURS_MAP,
    names::SENDERS_MAP,
    names::ROUTES_MAP,
    names::FDB_MAP,
    names::LINK_STATS_MAP,
    names::LOCAL_PORTS_MAP,
    names::PEER_PORTS_MAP,
    names::FLOODS_MAP,
];

/// The attachments: program, which interface of the host, direction, pin name of its link.
const ATTACHMENTS: [(&str, bool, TcAttachType, &str); 2] = [
    (
        names::BRIDGE_EGRESS_PROGRAM,
        false,
        TcAttachType::Egress,
        "link_bridge_egress",
    ),
    (
        names::UNDERLAY_INGRESS_PROGRAM,
        true,
        TcAttachType::Ingress,
        "link_underlay_ingress",
    ),
];

/// Owns the loaded object; the programs stay attached while it lives (and, pinned, after).
pub struct KernelDatapath {
    ebpf: Ebpf,
    host: HostConfig,
    state: MapState,
    links: std::collections::BTreeSet<u32>,
    me: Option<u32>,
    /// Since when entries still in the kernel have been dropped by the agent (see [`RETAIN`]).
    missing: Missing,
    /// The clock for `missing`.
    started: Instant,
    /// Whether this run adopted the state of an earlier one.
    adopted: bool,
    /// `port_ingress` on the bridge's veth ports, by ifindex: not pinned (while meshd is
    /// down, frames take the bridge's way).
    ports: std::collections::BTreeMap<u32, SchedClassifierLinkId>,
}

/// How long a route, neighbour or sender the agent dropped stays in the kernel. A neighbour
/// whose meshd restarts drops its control connection for a moment; its kernel keeps
/// forwarding, and so should ours towards it. A real departure costs a few seconds of frames
/// sent into the void, which is what they would have met anyway.
pub const RETAIN: Duration = Duration::from_secs(5);

/// The loaded object with both forwarding programs verified, nothing attached: what the
/// `auto` probe tries, and the first step of [`KernelDatapath::start`]. With `pin_dir`, the
/// forwarding maps are taken from the pins there (an earlier meshd's) or created and pinned.
pub fn load_verified(pin_dir: Option<&Path>) -> Result<Ebpf, DatapathError> {
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = match pin_dir {
        Some(d) => PINNED_MAPS.iter().map(|m| (*m, d.join(m))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(DatapathError::Load)?;
    for name in [
        names::BRIDGE_EGRESS_PROGRAM,
        names::UNDERLAY_INGRESS_PROGRAM,
        names::PORT_INGRESS_PROGRAM,
    ] {
        classifier(&mut ebpf, name)?.load()?;
    }
    Ok(ebpf)
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    Ok(ebpf
        .program_mut(name)
        .ok_or(DatapathError::Missing(name))?
        .try_into()?)
}

fn ifindex(name: &str) -> Result<u32, DatapathError> {
    let c = std::ffi::CString::new(name).map_err(|_| DatapathError::NoInterface(name.into()))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(DatapathError::NoInterface(name.into())),
        i => Ok(i),
    }
}

/// Removes what a meshd pinned in `dir`: the links (which detaches the programs) and the maps.
/// Nothing there is not an error.
pub fn remove_pins(dir: &Path) -> Result<(), DatapathError> {
    let pin_err = |e: std::io::Error| DatapathError::Pins(dir.to_owned(), e);
    for (_, _, _, pin) in ATTACHMENTS {
        let path = dir.join(pin);
        if path.exists() {
            match PinnedLink::from_pin(&path) {
                Ok(link) => {
                    link.unpin().map_err(pin_err)?;
                }
                Err(_) => std::fs::remove_file(&path).map_err(pin_err)?,
            }
        }
    }
    for m in PINNED_MAPS {
        match std::fs::remove_file(dir.join(m)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(pin_err(e)),
            _ => {}
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(pin_err(e)),
        _ => Ok(()),
    }
}

impl KernelDatapath {
    /// Loads the object and writes the host configuration (forwarding stays off until the
    /// first [`KernelDatapath::sync`] names this node); nothing is attached, so
    /// [`KernelDatapath::test_run`] can feed it frames. With a pin directory holding an
    /// earlier meshd's state for the same interfaces, that state is adopted as it is: the
    /// programs keep forwarding with it until the first sync.
    pub fn load(host: HostConfig) -> Result<KernelDatapath, DatapathError> {
        if let Some(dir) = &host.pin_dir {
            let cfg = dir.join(names::DATAPATH_CONFIG_MAP);
            if cfg.exists() && !same_host(&cfg, &host) {
                // Other interfaces (a recreated bridge port, another underlay): the old links
                // point at nothing; start afresh.
                tracing::info!(dir = %dir.display(), "pinned datapath state is for other interfaces; replacing it");
                remove_pins(dir)?;
            }
            std::fs::create_dir_all(dir).map_err(|e| DatapathError::Pins(dir.clone(), e))?;
        }
        let ebpf = load_verified(host.pin_dir.as_deref())?;
        let mut dp = KernelDatapath {
            ebpf,
            host,
            state: MapState::default(),
            links: Default::default(),
            me: None,
            missing: Missing::new(),
            started: Instant::now(),
            adopted: false,
            ports: Default::default(),
        };
        let old: DatapathConfig = {
            let map: Array<&MapData, DatapathConfig> = dp.map(names::DATAPATH_CONFIG_MAP)?;
            map.get(&0, 0)?
        };
        if old.flags & CONFIG_FORWARD != 0 {
            dp.adopt(old.me)?;
        } else {
            dp.write_config()?;
        }
        Ok(dp)
    }

    /// Takes over an earlier meshd's maps: what they hold becomes the state differences are
    /// computed against, so stale entries are removed by the first sync, not left behind.
    fn adopt(&mut self, me: u32) -> Result<(), DatapathError> {
        self.me = Some(me);
        self.adopted = true;
        let routes: HashMap<&MapData, u32, u32> = self.map(names::ROUTES_MAP)?;
        self.state.routes = routes.iter().filter_map(Result::ok).collect();
        let neighbours: HashMap<&MapData, u32, NeighbourEntry> = self.map(names::NEIGHBOURS_MAP)?;
        self.state.neighbours = neighbours.iter().filter_map(Result::ok).collect();
        let senders: HashMap<&MapData, [u8; 4], SenderEntry> = self.map(names::SENDERS_MAP)?;
        self.state.senders = senders.iter().filter_map(Result::ok).collect();
        let floods: HashMap<&MapData, u32, FloodEntry> = self.map(names::FLOODS_MAP)?;
        self.state.floods = floods.iter().filter_map(Result::ok).collect();
        let stats: PerCpuHashMap<&MapData, u32, LinkStats> = self.map(names::LINK_STATS_MAP)?;
        self.links = stats.keys().filter_map(Result::ok).collect();
        Ok(())
    }

    /// Whether this run took over an earlier meshd's pinned state.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// [`KernelDatapath::load`], then attaches both programs: to links an earlier meshd
    /// pinned, atomically replacing its programs (no frame goes unhandled), else afresh, and
    /// then pins them.
    pub fn start(host: HostConfig) -> Result<KernelDatapath, DatapathError> {
        let mut dp = KernelDatapath::load(host)?;
        for (prog, on_underlay, kind, pin) in ATTACHMENTS {
            let iface = if on_underlay {
                dp.host.underlay.clone()
            } else {
                dp.host.bridge_port.clone()
            };
            let pin = dp.host.pin_dir.as_ref().map(|d| d.join(pin));
            let attach_err = |source| DatapathError::AttachTc {
                interface: iface.clone(),
                source,
            };
            let program = classifier(&mut dp.ebpf, prog)?;
            let earlier = pin.as_ref().filter(|p| p.exists()).and_then(|p| {
                let link = FdLink::from(PinnedLink::from_pin(p).ok()?);
                SchedClassifierLink::try_from(link).ok()
            });
            if let Some(link) = earlier {
                // Replaced in place: the pin keeps pointing at the link, now running ours.
                program.attach_to_link(link).map_err(attach_err)?;
                continue;
            }
            if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0)) {
                // Before TCX, TC programs hang off a clsact qdisc (it may exist already).
                let _ = tc::qdisc_add_clsact(&iface);
            }
            let id = program.attach(&iface, kind).map_err(attach_err)?;
            if let Some(pin) = pin {
                let link: FdLink = program.take_link(id)?.try_into().map_err(
                    |e: aya::programs::links::LinkError| {
                        DatapathError::Pins(pin.clone(), std::io::Error::other(e))
                    },
                )?;
                link.pin(&pin)
                    .map_err(|e| DatapathError::Pins(pin.clone(), std::io::Error::other(e)))?;
            }
        }
        Ok(dp)
    }

    /// Detaches the programs and removes every pin: a clean stop leaves nothing behind.
    pub fn remove(self) -> Result<(), DatapathError> {
        let dir = self.host.pin_dir.clone();
        drop(self);
        match dir {
            Some(d) => remove_pins(&d),
            None => Ok(()),
        }
    }

    pub fn host(&self) -> &HostConfig {
        &self.host
    }

    fn write_config(&mut self) -> Result<(), DatapathError> {
        let cfg = DatapathConfig {
            data_port_host: self.host.data_port,
            flags: if self.me.is_some() { CONFIG_FORWARD } else { 0 },
            me: self.me.unwrap_or(0),
            underlay_ifindex: ifindex(&self.host.underlay)?,
            bridge_port_ifindex: ifindex(&self.host.bridge_port)?,
            underlay_ipv4_be: self.host.underlay_ipv4.octets(),
            overlay_mtu: self.host.overlay_mtu,
            underlay_mac: self.host.underlay_mac,
            ..Default::default()
        };
        let mut map: Array<&mut MapData, DatapathConfig> =
            self.map_mut(names::DATAPATH_CONFIG_MAP)?;
        map.set(0, cfg, 0)?;
        Ok(())
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, DatapathError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        Ok(self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::Missing(name))?
            .try_into()?)
    }

    fn map<'a, T>(&'a self, name: &'static str) -> Result<T, DatapathError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        Ok(self
            .ebpf
            .map(name)
            .ok_or(DatapathError::Missing(name))?
            .try_into()?)
    }

    /// Makes the maps hold `new` (this node being `me`), writing only what changed; what the
    /// agent dropped stays [`RETAIN`] longer.
    pub fn sync(&mut self, me: u32, new: MapState) -> Result<(), DatapathError> {
        let now = self.started.elapsed().as_millis() as u64;
        let keep = RETAIN.as_millis() as u64;
        let new = retain_removed(&self.state, new, &mut self.missing, now, keep);
        let changes = diff(&self.state, &new);
        let wanted = link_ids(&new);
        // Counters first: a neighbour entry never points at a missing one.
        for id in wanted.difference(&self.links).copied().collect::<Vec<_>>() {
            let mut stats: PerCpuHashMap<&mut MapData, u32, LinkStats> =
                self.map_mut(names::LINK_STATS_MAP)?;
            let zero = PerCpuValues::try_from(vec![
                LinkStats::default();
                aya::util::nr_cpus()
                    .map_err(|(_, e)| DatapathError::Cpus(e))?
            ])
            .map_err(|e| DatapathError::Cpus(std::io::Error::other(e)))?;
            stats.insert(id, zero, 0)?;
            self.links.insert(id);
        }
        for c in changes {
            match c {
                Change::Route(k, v) => {
                    let mut m: HashMap<&mut MapData, u32, u32> = self.map_mut(names::ROUTES_MAP)?;
                    set(&mut m, k, v)?;
                }
                Change::Neighbour(k, v) => {
                    let mut m: HashMap<&mut MapData, u32, NeighbourEntry> =
                        self.map_mut(names::NEIGHBOURS_MAP)?;
                    set(&mut m, k, v)?;
                }
                Change::Sender(k, v) => {
                    let mut m: HashMap<&mut MapData, [u8; 4], SenderEntry> =
                        self.map_mut(names::SENDERS_MAP)?;
                    set(&mut m, k, v)?;
                }
                Change::Flood(k, v) => {
                    let mut m: HashMap<&mut MapData, u32, FloodEntry> =
                        self.map_mut(names::FLOODS_MAP)?;
                    set(&mut m, k, v)?;
                }
            }
        }
        for id in self.links.difference(&wanted).copied().collect::<Vec<_>>() {
            let mut stats: PerCpuHashMap<&mut MapData, u32, LinkStats> =
                self.map_mut(names::LINK_STATS_MAP)?;
            let _ = stats.remove(&id);
            self.links.remove(&id);
        }
        self.state = new;
        if self.me != Some(me) {
            self.me = Some(me);
            self.write_config()?;
        }
        Ok(())
    }

    /// Makes `PEER_PORTS` list exactly the veth ports of the local bridge `bridge`, and
    /// `port_ingress` run on each of them.
    pub fn sync_peer_ports(&mut self, bridge: &str) -> Result<(), DatapathError> {
        let wanted: std::collections::BTreeMap<u32, String> =
            super::ports::veth_ports(bridge).into_iter().collect();
        let mut map: HashMap<&mut MapData, u32, u32> = self.map_mut(names::PEER_PORTS_MAP)?;
        let have: std::collections::BTreeSet<u32> = map.keys().filter_map(Result::ok).collect();
        for gone in have.iter().filter(|p| !wanted.contains_key(p)) {
            let _ = map.remove(gone);
        }
        for new in wanted.keys().filter(|p| !have.contains(p)) {
            map.insert(new, 1, 0)?;
        }
        let gone: Vec<u32> = self
            .ports
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        let program = classifier(&mut self.ebpf, names::PORT_INGRESS_PROGRAM)?;
        for port in gone {
            if let Some(link) = self.ports.remove(&port) {
                // The port is gone, and its attachment with it; detaching only tidies up.
                let _ = program.detach(link);
            }
        }
        for (index, name) in &wanted {
            if self.ports.contains_key(index) {
                continue;
            }
            match program.attach(name, TcAttachType::Ingress) {
                Ok(link) => {
                    self.ports.insert(*index, link);
                }
                // Not fatal: its frames take the bridge's way. Tried again next sync.
                Err(e) => tracing::debug!(port = %name, error = %e, "attaching port_ingress"),
            }
        }
        Ok(())
    }

    /// The kernel's counters, summed over CPUs, in slot order.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        let map: PerCpuArray<&MapData, u64> = self.map(names::KERNEL_COUNTERS_MAP)?;
        let mut out = Vec::with_capacity(KERNEL_COUNTER_SLOTS as usize);
        for c in KernelCounter::ALL {
            out.push((c.name(), map.get(&(c as u32), 0)?.iter().sum()));
        }
        Ok(out)
    }

    /// Traffic the kernel carried on a link, summed over CPUs.
    pub fn link_stats(&self, link_id: u32) -> Option<LinkStats> {
        let map: PerCpuHashMap<&MapData, u32, LinkStats> = self.map(names::LINK_STATS_MAP).ok()?;
        let per_cpu = map.get(&link_id, 0).ok()?;
        Some(per_cpu.iter().fold(LinkStats::default(), |a, s| LinkStats {
            tx_packets: a.tx_packets + s.tx_packets,
            tx_bytes: a.tx_bytes + s.tx_bytes,
            rx_packets: a.rx_packets + s.rx_packets,
            rx_bytes: a.rx_bytes + s.rx_bytes,
        }))
    }

    /// Puts `mac` behind `peer` in the kernel FDB, as if just learnt.
    pub fn fdb_insert(&mut self, mac: [u8; 6], peer: u32) -> Result<(), DatapathError> {
        let mut map: HashMap<&mut MapData, MacKey, FdbEntry> = self.map_mut(names::FDB_MAP)?;
        let entry = FdbEntry {
            peer,
            reserved: 0,
            seen_ns: monotonic_ns(),
        };
        map.insert(MacKey::new(mac), entry, 0)?;
        Ok(())
    }

    /// A handle on the kernel FDB of its own, for another thread.
    pub fn fdb_handle(&self) -> Result<FdbHandle, DatapathError> {
        let map = self
            .ebpf
            .map(names::FDB_MAP)
            .ok_or(DatapathError::Missing(names::FDB_MAP))?;
        let (aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data)) = map else {
            return Err(DatapathError::Missing(names::FDB_MAP));
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(DatapathError::MapHandle)?;
        let own = aya::maps::Map::LruHashMap(MapData::from_fd(fd)?);
        Ok(FdbHandle(HashMap::try_from(own)?))
    }

    /// The kernel FDB: (MAC, peer short id, age in ms).
    pub fn fdb(&self) -> Vec<([u8; 6], u32, u64)> {
        let Ok(map) = self.map::<HashMap<&MapData, MacKey, FdbEntry>>(names::FDB_MAP) else {
            return Vec::new();
        };
        let now = monotonic_ns();
        map.iter()
            .filter_map(Result::ok)
            .map(|(k, e)| (k.mac, e.peer, now.saturating_sub(e.seen_ns) / 1_000_000))
            .collect()
    }

    /// Runs a program once on `frame` (BPF_PROG_TEST_RUN): its return code and the bytes that
    /// come out. For tests of the programs against crafted frames.
    pub fn test_run(
        &self,
        program: &'static str,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), DatapathError> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .ok_or(DatapathError::Missing(program))?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = aya::programs::TestRun::test_run(
            prog,
            aya::programs::TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..aya::programs::TestRunOptions::new()
            },
        )?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }
}

/// The kernel FDB, readable from any thread.
pub struct FdbHandle(HashMap<MapData, MacKey, FdbEntry>);

impl FdbHandle {
    /// The peer behind `mac` and the entry's age in ms, when it is fresh enough to use.
    pub fn lookup(&self, mac: &[u8; 6]) -> Option<(u32, u64)> {
        let e = self.0.get(&MacKey::new(*mac), 0).ok()?;
        let age = monotonic_ns().saturating_sub(e.seen_ns);
        (age < FDB_MAX_AGE_NS).then_some((e.peer, age / 1_000_000))
    }
}

fn set<K: aya::Pod, V: aya::Pod>(
    m: &mut HashMap<&mut MapData, K, V>,
    k: K,
    v: Option<V>,
) -> Result<(), DatapathError> {
    match v {
        Some(v) => m.insert(k, v, 0)?,
        None => {
            let _ = m.remove(&k);
        }
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns: the clock the programs age entries by (they read its coarse
/// variant, a tick behind at most).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether the pinned configuration at `path` was written for this host's interfaces and
/// address (then its links and entries are still right).
fn same_host(path: &Path, host: &HostConfig) -> bool {
    let Ok(data) = aya::maps::MapData::from_pin(path) else {
        return false;
    };
    let Ok(map) = Array::<_, DatapathConfig>::try_from(aya::maps::Map::Array(data)) else {
        return false;
    };
    let Ok(old) = map.get(&0, 0) else {
        return false;
    };
    Some(old.underlay_ifindex) == ifindex(&host.underlay).ok()
        && Some(old.bridge_port_ifindex) == ifindex(&host.bridge_port).ok()
        && old.underlay_ipv4_be == host.underlay_ipv4.octets()
        && old.data_port_host == host.data_port
}
