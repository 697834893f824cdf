//! The kernel datapath at run time: loads mesh's eBPF object, attaches `bridge_egress` to
//! meshd's bridge port (TC egress) and `underlay_ingress` to the underlay NIC (TC ingress),
//! and keeps the maps equal to what the agent computed (writing only differences).

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{SchedClassifier, TcAttachType, tc},
    util::KernelVersion,
};
use mesh_common::{
    DatapathConfig, KERNEL_COUNTER_SLOTS, KernelCounter,
    maps::{CONFIG_FORWARD, FdbEntry, LinkStats, MacKey, NeighbourEntry, SenderEntry},
    names,
};

use super::{
    DatapathError, EBPF_OBJECT,
    compile::{Change, MapState, diff, link_ids},
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
}

/// Owns the loaded object; the programs stay attached while it lives.
pub struct KernelDatapath {
    ebpf: Ebpf,
    host: HostConfig,
    state: MapState,
    links: std::collections::BTreeSet<u32>,
    me: Option<u32>,
}

/// The loaded object with both forwarding programs verified, nothing attached: what the
/// `auto` probe tries, and the first step of [`KernelDatapath::start`].
pub fn load_verified() -> Result<Ebpf, DatapathError> {
    let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(DatapathError::Load)?;
    for name in [
        names::BRIDGE_EGRESS_PROGRAM,
        names::UNDERLAY_INGRESS_PROGRAM,
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

impl KernelDatapath {
    /// Loads the object and writes the host configuration (forwarding stays off until the
    /// first [`KernelDatapath::sync`] names this node); nothing is attached, so
    /// [`KernelDatapath::test_run`] can feed it frames.
    pub fn load(host: HostConfig) -> Result<KernelDatapath, DatapathError> {
        let ebpf = load_verified()?;
        let mut dp = KernelDatapath {
            ebpf,
            host,
            state: MapState::default(),
            links: Default::default(),
            me: None,
        };
        dp.write_config()?;
        Ok(dp)
    }

    /// [`KernelDatapath::load`], then attaches both programs.
    pub fn start(host: HostConfig) -> Result<KernelDatapath, DatapathError> {
        let mut dp = KernelDatapath::load(host)?;
        for (prog, iface, kind) in [
            (
                names::BRIDGE_EGRESS_PROGRAM,
                dp.host.bridge_port.clone(),
                TcAttachType::Egress,
            ),
            (
                names::UNDERLAY_INGRESS_PROGRAM,
                dp.host.underlay.clone(),
                TcAttachType::Ingress,
            ),
        ] {
            if KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0)) {
                // Before TCX, TC programs hang off a clsact qdisc (it may exist already).
                let _ = tc::qdisc_add_clsact(&iface);
            }
            classifier(&mut dp.ebpf, prog)?
                .attach(&iface, kind)
                .map_err(|source| DatapathError::AttachTc {
                    interface: iface.clone(),
                    source,
                })?;
        }
        Ok(dp)
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

    /// Makes the maps hold `new` (this node being `me`), writing only what changed.
    pub fn sync(&mut self, me: u32, new: MapState) -> Result<(), DatapathError> {
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

/// CLOCK_MONOTONIC in ns: what `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
