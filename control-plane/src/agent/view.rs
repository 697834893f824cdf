//! What `meshctl status`, `peers` and `routes` show, computed from the agent's state.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use anyhow::Result;
use mesh_gossip::PeerId;
use mesh_proto::v1::{
    BroadcastRoute, Counter, Datapath, Fdb, FdbEntry, PeerInfo, Peers, Routes, Status, UnicastRoute,
};

use super::{Agent, State};
use crate::{auth::AuthMode, switch::ShortId};

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Agent {
    pub(super) fn name_of(&self, id: PeerId) -> String {
        self.links
            .get(&id)
            .map(|l| l.name.clone())
            .or_else(|| self.gossip.entries().get(&id).map(|e| e.name.clone()))
            .unwrap_or_else(|| id.to_string())
    }

    /// One row per known peer, and one per dial target whose peer is not known (yet).
    fn rows(&mut self) -> Vec<PeerInfo> {
        let routes = self.gossip.routes().clone();
        let me = self.local.id;
        let entries = self.gossip.entries().clone();
        let ids: BTreeSet<PeerId> = entries
            .keys()
            .chain(self.links.keys())
            .copied()
            .filter(|id| *id != me)
            .collect();
        let mut rows = Vec::new();
        for &id in &ids {
            let mut addresses: BTreeSet<String> = BTreeSet::new();
            if let Some(e) = entries.get(&id) {
                addresses.extend(e.addresses.iter().cloned());
            }
            for e in entries.values() {
                for l in e.links.iter().filter(|l| l.peer == id.0) {
                    if !l.observed_addr.is_empty() {
                        addresses.insert(l.observed_addr.clone());
                    }
                }
            }
            let targets: Vec<(&String, &super::Target)> = self
                .targets
                .iter()
                .filter(|(_, t)| t.peer == Some(id))
                .collect();
            // What we dial it at, even when it is down: the operator should see that.
            addresses.extend(targets.iter().map(|(addr, _)| (*addr).clone()));
            let link = self.links.get(&id);
            if let Some(l) = link {
                addresses.insert(l.conn.remote_address().to_string());
            }
            let any = |s: State| targets.iter().any(|(_, t)| t.state == s);
            let state = if link.is_some() {
                "established"
            } else if any(State::Failed) {
                "failed"
            } else if !routes.hops.contains_key(&id) {
                "unreachable"
            } else if any(State::Connecting) {
                "connecting"
            } else if any(State::Retrying) {
                "retrying"
            } else {
                "connecting"
            };
            // Also for a neighbour whose data path is down: its frames take the relay.
            let via = match routes.next_hop.get(&id) {
                Some(hop) if *hop != id => Some(self.name_of(*hop)),
                _ => None,
            };
            let dp = self.datapath.as_deref();
            let report = link.and_then(|l| dp?.link(crate::switch::LinkId(l.conn_id)));
            let r = report.unwrap_or_default();
            let (traffic, k) = (r.meshd, r.kernel);
            rows.push(PeerInfo {
                datapath: r.forwarder.into(),
                kernel_tx_packets: k.tx_packets,
                kernel_rx_packets: k.rx_packets,
                encrypted: report
                    .map_or_else(|| dp.is_some_and(|d| d.info().encrypted), |r| r.encrypted),
                datapath_health: match report.map(|r| r.up) {
                    Some(true) => "up".into(),
                    Some(false) => "down".into(),
                    None => String::new(),
                },
                link_mtu: r.mtu,
                cipher: r.cipher.map_or_else(String::new, |c| c.name().into()),
                tx_packets: traffic.tx_packets + k.tx_packets,
                tx_bytes: traffic.tx_bytes + k.tx_bytes,
                rx_packets: traffic.rx_packets + k.rx_packets,
                rx_bytes: traffic.rx_bytes + k.rx_bytes,
                name: self.name_of(id),
                id: id.to_string(),
                addresses: addresses.into_iter().collect(),
                state: state.into(),
                via,
                rtt_ms: link.map(|l| l.conn.rtt().as_secs_f64() * 1000.0),
                datapath_rtt_ms: r.rtt_us.map(|us| us as f64 / 1000.0),
                since: 0,
                last_error: targets
                    .iter()
                    .map(|(_, t)| t.last_error.clone())
                    .find(|e| !e.is_empty())
                    .unwrap_or_default(),
                hops: routes.hops.get(&id).copied().unwrap_or(0),
            });
        }
        for (addr, t) in &self.targets {
            if t.peer.is_some_and(|p| ids.contains(&p)) {
                continue;
            }
            // A peer we reached once but that gossip never described (it went away right
            // after the handshake): it is unreachable, not a fresh address being tried.
            let state = match (t.peer, t.state) {
                (Some(_), State::Connecting | State::Retrying) => "unreachable",
                (_, s) => s.as_str(),
            };
            rows.push(PeerInfo {
                name: t.peer_name.clone().unwrap_or_else(|| addr.clone()),
                id: t.peer.map(|p| p.to_string()).unwrap_or_default(),
                addresses: vec![addr.clone()],
                state: state.into(),
                via: None,
                rtt_ms: None,
                since: unix(t.since),
                last_error: t.last_error.clone(),
                hops: 0,
                ..Default::default()
            });
        }
        rows
    }

    /// When peer `id` entered `state`: as the last survey recorded it, else when its link came
    /// up; `None` when neither says.
    fn entered(&self, id: PeerId, state: &str) -> Option<SystemTime> {
        match self.state_since.get(&id) {
            Some((s, t)) if s == state => Some(*t),
            _ => self.links.get(&id).map(|l| l.since),
        }
    }

    /// Records when each peer entered its current state (for `since`).
    pub(super) fn refresh_states(&mut self) {
        let rows = self.rows();
        let now = SystemTime::now();
        let mut next = BTreeMap::new();
        for r in rows {
            let Ok(id) = r.id.parse::<PeerId>() else {
                continue;
            };
            let since = self.entered(id, &r.state).unwrap_or(now);
            next.insert(id, (r.state, since));
        }
        self.state_since = next;
    }

    pub(super) fn peers(&mut self) -> Peers {
        let mut rows = self.rows();
        for r in &mut rows {
            // A link that came up since the last survey has no record yet: its own time, not
            // now (which would move on the next survey).
            if let Ok(id) = r.id.parse::<PeerId>()
                && let Some(t) = self.entered(id, &r.state)
            {
                r.since = unix(t);
            }
            if r.since == 0 {
                r.since = unix(SystemTime::now());
            }
        }
        Peers { peers: rows }
    }

    pub(super) fn fdb(&self) -> Fdb {
        let Some(dp) = &self.datapath else {
            return Fdb::default();
        };
        let names: BTreeMap<ShortId, String> = self
            .gossip
            .entries()
            .iter()
            .map(|(id, e)| (self.short(*id), e.name.clone()))
            .collect();
        let all = dp.fdb();
        let mut entries: Vec<FdbEntry> = all
            .into_iter()
            .map(|(mac, peer, age_ms)| FdbEntry {
                mac: mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
                peer: names
                    .get(&peer)
                    .cloned()
                    .unwrap_or_else(|| format!("{:06x}", peer.get())),
                age_ms,
            })
            .collect();
        entries.sort_by(|a, b| (&a.peer, &a.mac).cmp(&(&b.peer, &b.mac)));
        Fdb { entries }
    }

    pub(super) fn routes(&mut self) -> Routes {
        let routes = self.gossip.routes().clone();
        Routes {
            unicast: routes
                .next_hop
                .iter()
                .map(|(dest, hop)| UnicastRoute {
                    destination: self.name_of(*dest),
                    next_hop: self.name_of(*hop),
                    hops: routes.hops.get(dest).copied().unwrap_or(0),
                })
                .collect(),
            broadcast: routes
                .broadcast
                .iter()
                .map(|(source, hops)| BroadcastRoute {
                    source: self.name_of(*source),
                    next_hops: hops.iter().map(|h| self.name_of(*h)).collect(),
                })
                .collect(),
        }
    }

    pub(super) fn status(&mut self) -> Result<Status> {
        let mut by_state: BTreeMap<String, u32> = BTreeMap::new();
        for r in self.rows() {
            *by_state.entry(r.state).or_default() += 1;
        }
        let underlay_counters = match &self.observe {
            Some(o) => o.counters()?.iter().collect(),
            None => Vec::new(),
        };
        let counters = match &self.datapath {
            Some(d) => d.counters()?,
            None => Default::default(),
        };
        let info = self.datapath.as_ref().map(|d| d.info()).unwrap_or_default();
        let counter = |(name, value): (&str, u64)| Counter {
            name: name.into(),
            value,
        };
        Ok(Status {
            name: self.local.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            datapath: Some(Datapath {
                mode: self.mode.name.into(),
                fallback_reason: self.mode.fallback_reason.clone(),
                underlay_interface: self.mode.underlay.clone(),
                xdp_mode: self
                    .observe
                    .as_ref()
                    .and_then(|o| o.attachment())
                    .map(|(_, m)| m.as_str().into())
                    .unwrap_or_default(),
                data_port: self.data_port.into(),
                underlay_counters: underlay_counters.into_iter().map(counter).collect(),
                kernel_counters: counters.kernel.into_iter().map(counter).collect(),
                overlay_mtu: info.overlay_mtu,
                encrypted: info.encrypted,
                tap_counters: counters.tap.into_iter().map(counter).collect(),
                bridge: info.bridge,
            }),
            id: self.local.id.to_string(),
            listen: self.listen.to_string(),
            auth: self.local.auth.describe().into(),
            insecure: matches!(self.local.auth, AuthMode::Insecure),
            peers_by_state: by_state.into_iter().collect(),
            connections: self.links.len() as u32,
            short_id: self.short(self.local.id).get(),
            handshake_counters: [
                ("handshake_failed_auth", self.auth_failures),
                ("handshake_refused_throttled", self.throttled),
                ("handshake_refused_busy", self.busy),
                (
                    "handshakes_pending",
                    self.pending.values().sum::<usize>() as u64,
                ),
            ]
            .into_iter()
            .map(|(name, value)| Counter {
                name: name.into(),
                value,
            })
            .collect(),
            gossip_counters: self
                .gossip
                .refusals()
                .into_iter()
                .chain(self.gossip.traffic())
                .map(|(name, value)| Counter {
                    name: name.into(),
                    value,
                })
                .collect(),
        })
    }
}
