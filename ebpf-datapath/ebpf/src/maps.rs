//! The maps the programs share; layouts and names are in `mesh_common`. meshd fills them
//! (config, neighbours, senders, routes) and reads them (counters, FDB, link stats).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use mesh_common::{
    DatapathConfig, KERNEL_COUNTER_SLOTS, KernelCounter,
    maps::{
        FDB_CAPACITY, FdbEntry, FloodEntry, LOCAL_PORTS_CAPACITY, LinkStats, LocalPort, MAX_PEERS,
        MacKey, NeighbourEntry, SenderEntry,
    },
};

#[map]
pub static DATAPATH_CONFIG: Array<DatapathConfig> = Array::with_max_entries(1, 0);

#[map]
pub static KERNEL_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(KERNEL_COUNTER_SLOTS, 0);

/// Direct neighbours by short id.
#[map]
pub static NEIGHBOURS: HashMap<u32, NeighbourEntry> = HashMap::with_max_entries(MAX_PEERS, 0);

/// Plaintext senders by IPv4 address (network order bytes).
#[map]
pub static SENDERS: HashMap<[u8; 4], SenderEntry> = HashMap::with_max_entries(MAX_PEERS, 0);

/// Next hop (short id) towards each peer (short id).
#[map]
pub static ROUTES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PEERS, 0);

/// Our place in each origin's broadcast tree, by the origin's short id.
#[map]
pub static FLOODS: HashMap<u32, FloodEntry> = HashMap::with_max_entries(MAX_PEERS, 0);

/// MAC → origin peer, learnt from delivered frames; bounded, least recently used evicted.
#[map]
pub static FDB: LruHashMap<MacKey, FdbEntry> = LruHashMap::with_max_entries(FDB_CAPACITY, 0);

/// MAC → the local bridge port it sits behind, learnt by `bridge_egress`.
#[map]
pub static LOCAL_PORTS: LruHashMap<MacKey, LocalPort> =
    LruHashMap::with_max_entries(LOCAL_PORTS_CAPACITY, 0);

/// Bridge ports that are veths (their peer in a container's namespace), written by meshd: a
/// frame for a MAC behind one can go straight to the container (`bpf_redirect_peer`).
#[map]
pub static PEER_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(LOCAL_PORTS_CAPACITY, 0);

/// What this CPU learnt last, one slot per kind of learning ([`LEARNT_LOCAL`],
/// [`LEARNT_REMOTE`]): a flow's frames come from one MAC, so the next frame finds its fresh
/// entry here (an array slot) instead of looking it up in the LRU map again. Not pinned: it is
/// only a shortcut, and a new program starts with it empty.
#[map]
pub static LEARNT: PerCpuArray<Learnt> = PerCpuArray::with_max_entries(2, 0);

/// [`LEARNT`] slot of `LOCAL_PORTS` learning (MAC behind a bridge port).
pub const LEARNT_LOCAL: u32 = 0;
/// [`LEARNT`] slot of `FDB` learning (MAC behind an origin peer).
pub const LEARNT_REMOTE: u32 = 1;

/// One [`LEARNT`] slot: `mac` was written to its map behind `behind` (a port's ifindex or an
/// origin's short id) at `at_ns`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Learnt {
    pub mac: [u8; 6],
    pub reserved: [u8; 2],
    pub behind: u32,
    pub reserved2: u32,
    pub at_ns: u64,
}

/// Whether this CPU confirmed `mac` behind `behind` in the map of `slot` less than
/// `refresh_ns` ago, so the map needs neither a lookup nor a write now.
#[inline(always)]
pub fn learnt_lately(slot: u32, mac: &[u8; 6], behind: u32, now: u64, refresh_ns: u64) -> bool {
    LEARNT.get(slot).is_some_and(|l| {
        l.behind == behind && l.mac == *mac && now.saturating_sub(l.at_ns) < refresh_ns
    })
}

/// Notes that `mac` behind `behind` is now fresh in the map of `slot` (found fresh, or
/// written).
#[inline(always)]
pub fn note_learnt(slot: u32, mac: &[u8; 6], behind: u32, now: u64) {
    if let Some(l) = LEARNT.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU touches it while the program runs.
        unsafe {
            (*l).mac = *mac;
            (*l).behind = behind;
            (*l).at_ns = now;
        }
    }
}

/// Per-link traffic through the kernel, by link id (entries created by meshd).
#[map]
pub static LINK_STATS: PerCpuHashMap<u32, LinkStats> =
    PerCpuHashMap::with_max_entries(MAX_PEERS, 0);

/// Now, for ageing FDB and port entries: CLOCK_MONOTONIC_COARSE, the same clock as meshd's
/// CLOCK_MONOTONIC at a tick's resolution (ages are seconds), read without the time source
/// (`bpf_ktime_get_ns` reads the TSC: ~2% of a small packet's time on a VM, measured).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    DATAPATH_CONFIG.get(0)
}

#[inline(always)]
pub fn count(c: KernelCounter) {
    if let Some(slot) = KERNEL_COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Adds one packet of `bytes` to a link's sent (`tx`) or received counters.
#[inline(always)]
pub fn link_traffic(link_id: u32, bytes: u32, tx: bool) {
    if let Some(s) = LINK_STATS.get_ptr_mut(link_id) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe {
            if tx {
                (*s).tx_packets += 1;
                (*s).tx_bytes += u64::from(bytes);
            } else {
                (*s).rx_packets += 1;
                (*s).rx_bytes += u64::from(bytes);
            }
        }
    }
}
