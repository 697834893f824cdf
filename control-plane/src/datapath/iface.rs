//! The one interface between the agent and a datapath. Both datapaths implement it: the TAP
//! datapath (meshd moves every frame; `crate::tap`) and the kernel datapath
//! ([`super::kernel_path::KernelPath`]: eBPF programs move plaintext frames between kernel
//! hosts, and the TAP datapath it wraps moves everything else and answers what the kernel hands
//! up). The agent tells it what changed — the forwarding table, our short id, links coming and
//! going with their keys, a peer's short id moving — and asks for per-link state and counters.
//! Per-link state is keyed by [`LinkId`], which is stable for a link's life.

use anyhow::Result;

use crate::{
    switch::{LinkId, Mac, ShortId, forward::Table},
    tap::{LinkSpec, Traffic},
};

/// Traffic the kernel carried on a link.
pub use mesh_common::maps::LinkStats;

/// One link as the datapath sees it (`meshctl peers`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkReport {
    /// Who moves its frames: "kernel" or "tap".
    pub forwarder: &'static str,
    /// Whether its frames are sealed.
    pub encrypted: bool,
    /// What they are sealed with.
    pub cipher: Option<crate::switch::seal::Cipher>,
    /// Heartbeats arrive (or it is too new to tell).
    pub up: bool,
    /// The overlay MTU on the link.
    pub mtu: u32,
    /// What meshd itself sent and received on it (data frames and heartbeats).
    pub meshd: Traffic,
    /// What the kernel carried on it (zero on the TAP datapath).
    pub kernel: LinkStats,
    /// The data path's round-trip time (µs), from heartbeat stamps, once one came back.
    pub rtt_us: Option<u64>,
}

/// Counters shown by `meshctl status`, by datapath part.
#[derive(Clone, Debug, Default)]
pub struct DatapathCounters {
    pub tap: Vec<(&'static str, u64)>,
    pub kernel: Vec<(&'static str, u64)>,
}

/// Settings of the running datapath (`meshctl status`).
#[derive(Clone, Debug, Default)]
pub struct DatapathInfo {
    pub bridge: String,
    pub overlay_mtu: u32,
    pub encrypted: bool,
}

pub trait Datapath: Send {
    /// Installs the forwarding table the agent computed (after a topology change).
    fn set_table(&mut self, table: Table);
    /// Our own short id (first set, or moved by gossip).
    fn set_me(&mut self, me: ShortId);
    /// Adds an established link with its keys; refused (false) for a link id already added.
    fn add_link(&mut self, link: LinkId, spec: LinkSpec) -> bool;
    /// A link's peer goes by another short id now; the link's state stays.
    fn set_peer(&mut self, link: LinkId, peer: ShortId);
    /// Removes a closed link and its keys.
    fn remove_link(&mut self, link: LinkId);
    /// Brings what the datapath derives from the above up to date (the kernel's maps); called
    /// every agent tick, `changed` when the table or the links changed since the last call.
    fn sync(&mut self, changed: bool) -> Result<()>;
    fn link(&self, link: LinkId) -> Option<LinkReport>;
    /// Only whether `link`'s heartbeats arrive: what the agent checks every tick, without the
    /// counters (the kernel's cost a map read per link).
    fn link_up(&self, link: LinkId) -> Option<bool> {
        self.link(link).map(|r| r.up)
    }
    fn counters(&self) -> Result<DatapathCounters>;
    /// The MAC table, freshest entry per MAC: (MAC, peer, age in ms).
    fn fdb(&self) -> Vec<(Mac, ShortId, u64)>;
    fn info(&self) -> DatapathInfo;
    /// Starts a `meshctl ping`: echo requests out along the data path, replies back.
    fn ping(&self) -> crate::tap::ping::PingSession;
    /// Why the datapath stopped working, if it did (its TAP device was deleted, a read
    /// failed). Not recoverable in place: the agent ends meshd with this reason, so that the
    /// service manager starts a fresh one instead of peers sending into a hole.
    fn failure(&self) -> Option<String>;
    /// Ends the datapath on a clean stop, removing what it leaves in the system.
    /// Opens named network `vlan`'s TAP device on its own bridge (`switch::network`); the
    /// answer comes once its frames are carried. Repeating it for an open network is fine.
    fn open_network(&self, vlan: u16) -> crate::tap::NetworkReady;

    fn stop(self: Box<Self>) -> Result<()>;
}
