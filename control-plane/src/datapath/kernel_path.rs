//! The kernel datapath behind the agent's [`Datapath`] interface. The eBPF programs forward
//! plaintext frames between kernel hosts; the TAP datapath it wraps forwards everything else
//! (sealed links, links to TAP-mode peers, floods, misses) and is where the links' state lives.
//! The kernel's maps are compiled from that state by pure code (`super::compile`) and only the
//! differences are written.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    KernelDatapath,
    compile::{LinkView, compile},
    iface::{Datapath, DatapathCounters, DatapathInfo, LinkReport},
    neigh,
};
use crate::{
    switch::{LinkId, Mac, ShortId, forward::Table},
    tap::{LinkSpec, TapDatapath},
};

/// How often the maps are re-synced without a topology change, for what heartbeats and probes
/// move (a neighbour's address behind NAT, a link's MTU, an ARP entry).
const RESYNC_EVERY: Duration = Duration::from_secs(1);

pub struct KernelPath {
    tap: TapDatapath,
    kernel: KernelDatapath,
    /// Links whose peer runs the kernel datapath too.
    kernel_peers: BTreeSet<LinkId>,
    synced: Option<Instant>,
}

impl KernelPath {
    /// meshd's table asks the kernel's about destinations it has not learnt: a frame the
    /// kernel hands over (a route through a relay or over a sealed link) goes to its peer, not
    /// to a flood.
    pub fn new(tap: TapDatapath, kernel: KernelDatapath) -> Result<KernelPath> {
        let fdb = kernel.fdb_handle()?;
        tap.shared.set_mac_lookup(Box::new(move |mac: &Mac| {
            fdb.lookup(mac)
                .map(|(peer, age)| (ShortId::from_wire(peer), age))
        }));
        Ok(KernelPath {
            tap,
            kernel,
            kernel_peers: BTreeSet::new(),
            synced: None,
        })
    }

    /// Whether the kernel forwards a link's frames: plaintext (there is no AEAD in this
    /// kernel's BPF; sealed links stay with meshd), and the peer decapsulates in its kernel too
    /// (see `NEIGHBOUR_KERNEL`).
    fn in_kernel(&self, link: LinkId, sealed: bool) -> bool {
        !sealed && self.kernel_peers.contains(&link)
    }
}

impl Datapath for KernelPath {
    fn set_table(&mut self, table: Table) {
        self.tap.set_table(table);
    }

    fn set_me(&mut self, me: ShortId) {
        self.tap.set_me(me);
    }

    fn add_link(&mut self, link: LinkId, spec: LinkSpec) -> bool {
        let kernel = spec.peer_kernel;
        let added = self.tap.add_link(link, spec);
        if added && kernel {
            self.kernel_peers.insert(link);
        }
        added
    }

    fn set_peer(&mut self, link: LinkId, peer: ShortId) {
        self.tap.set_peer(link, peer);
    }

    fn remove_link(&mut self, link: LinkId) {
        self.kernel_peers.remove(&link);
        self.tap.remove_link(link);
    }

    fn sync(&mut self, changed: bool) -> Result<()> {
        if !changed && self.synced.is_some_and(|at| at.elapsed() < RESYNC_EVERY) {
            return Ok(());
        }
        self.synced = Some(Instant::now());
        let shared = &self.tap.shared;
        let table = shared.table();
        let Some(me) = table.me else { return Ok(()) };
        let neighbours = shared.links();
        let v4: Vec<Ipv4Addr> = neighbours
            .iter()
            .map(|l| match l.addr.ip() {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            })
            .collect();
        let macs = neigh::resolve(&self.kernel.host().underlay, &v4);
        let links: Vec<LinkView> = neighbours
            .into_iter()
            .zip(macs)
            .map(|(l, mac)| LinkView {
                peer: l.peer,
                link_id: l.link.0 as u32,
                addr: l.addr,
                mtu: l.mtu as u32,
                kernel: self.in_kernel(l.link, l.sealed),
                next_hop_mac: mac,
            })
            .collect();
        self.kernel.sync(me.get(), compile(&table, &links))?;
        self.kernel.sync_peer_ports(&shared.bridge)?;
        // The headroom port must stay down: up, a VXLAN device takes frames from the network
        // into the bridge. meshd never brings it up; whatever did is overruled.
        let headroom = crate::tap::device::headroom_port_name(&shared.tap_name);
        if super::ports::take_down(&headroom) {
            tracing::warn!(
                port = %headroom,
                "something brought the bridge's headroom port up: took it down again (up, it \
                 would take VXLAN frames from the network into the bridge)"
            );
        }
        Ok(())
    }

    fn link(&self, link: LinkId) -> Option<LinkReport> {
        let mut r = self.tap.link(link)?;
        if self.in_kernel(link, r.encrypted) {
            r.forwarder = "kernel";
            r.kernel = self.kernel.link_stats(link.0 as u32).unwrap_or_default();
        }
        Some(r)
    }

    fn open_network(&self, vlan: u16) -> crate::tap::NetworkReady {
        // A named network's frames go through meshd in both datapaths (the kernel programs
        // hand tagged frames to it).
        self.tap.open_network(vlan)
    }

    fn link_up(&self, link: LinkId) -> Option<bool> {
        self.tap.link_up(link)
    }

    fn counters(&self) -> Result<DatapathCounters> {
        Ok(DatapathCounters {
            kernel: self.kernel.counters()?,
            ..self.tap.counters()?
        })
    }

    fn fdb(&self) -> Vec<(Mac, ShortId, u64)> {
        // The kernel's entries (learnt from frames it delivered) and meshd's own, freshest
        // first.
        let mut all = self.tap.fdb();
        all.extend(
            self.kernel
                .fdb()
                .into_iter()
                .map(|(mac, peer, age)| (mac, ShortId::from_wire(peer), age)),
        );
        all.sort_by_key(|(mac, _, age)| (*mac, *age));
        all.dedup_by_key(|(mac, _, _)| *mac);
        all
    }

    fn info(&self) -> DatapathInfo {
        self.tap.info()
    }

    fn failure(&self) -> Option<String> {
        self.tap.failure()
    }

    /// Echoes go through meshd on every host (the kernel hands heartbeat-flagged frames up).
    fn ping(&self) -> crate::tap::ping::PingSession {
        self.tap.ping()
    }

    fn stop(self: Box<Self>) -> Result<()> {
        // A clean stop leaves no pinned program or map behind.
        Ok(self.kernel.remove()?)
    }
}
