//! `meshctl ping PEER`: which peer is meant, how the data path reaches it, and a task that
//! sends the echo requests and gathers the replies while the agent goes on.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use mesh_gossip::PeerId;
use mesh_proto::v1::{PingReply, PingRequest, PingResult, response};
use tokio::{sync::oneshot, time::Instant};

use super::Agent;
use crate::switch::{LinkId, ShortId};

/// Bounds on what one request may ask: a ping is a diagnostic, not a load generator.
const MAX_COUNT: u32 = 1000;
const MIN_INTERVAL_MS: u32 = 10;
const MAX_WAIT_MS: u32 = 10_000;

/// `peer` among `known` (id, name): by exact name, else by a unique prefix of the id.
pub(super) fn find_peer(known: &[(PeerId, String)], peer: &str) -> Result<PeerId, String> {
    if let Some((id, _)) = known.iter().find(|(_, name)| name == peer) {
        return Ok(*id);
    }
    let by_id: Vec<&(PeerId, String)> = known
        .iter()
        .filter(|(id, _)| !peer.is_empty() && id.to_string().starts_with(&peer.to_lowercase()))
        .collect();
    match by_id.as_slice() {
        [(id, _)] => Ok(*id),
        [] => Err(format!(
            "no peer called {peer:?} (`meshctl peers` lists names and ids)"
        )),
        several => Err(format!(
            "{peer:?} is the start of several peers' ids ({}): give more of it",
            several
                .iter()
                .map(|(_, n)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

impl Agent {
    /// Starts the pings `req` asks for; `reply` gets the result when they are done.
    pub(super) fn ping(&mut self, req: PingRequest, reply: oneshot::Sender<response::Kind>) {
        match self.start_ping(req) {
            Ok(task) => {
                tokio::spawn(async move {
                    let _ = reply.send(task.await);
                });
            }
            Err(e) => {
                let _ = reply.send(response::Kind::Error(e));
            }
        }
    }

    fn start_ping(
        &mut self,
        req: PingRequest,
    ) -> Result<impl std::future::Future<Output = response::Kind> + use<>, String> {
        let me = self.local.id;
        let known: Vec<(PeerId, String)> = self
            .gossip
            .entries()
            .iter()
            .map(|(id, e)| (*id, e.name.clone()))
            .collect();
        let peer = find_peer(&known, &req.peer)?;
        let name = self.name_of(peer);
        if peer == me {
            return Err(format!("{name} is this host"));
        }
        let Some(dp) = &self.datapath else {
            return Err("this meshd runs no data path".into());
        };
        let routes = self.gossip.routes();
        let Some(hop) = routes.next_hop.get(&peer).copied() else {
            return Err(format!(
                "the data path has no route to {name}: it is not connected to the mesh, or \
                 every path to it is down (`meshctl peers`, `meshctl status`)"
            ));
        };
        let route_hops = routes.hops.get(&peer).copied().unwrap_or(0);
        let link = self
            .links
            .get(&hop)
            .and_then(|l| dp.link(LinkId(l.conn_id)));
        let names: HashMap<ShortId, String> = known
            .iter()
            .map(|(id, n)| (self.short(*id), n.clone()))
            .collect();
        let target = self.short(peer);
        let mut session = dp.ping();
        let count = req.count.clamp(1, MAX_COUNT);
        let interval = Duration::from_millis(u64::from(req.interval_ms.max(MIN_INTERVAL_MS)));
        let wait = Duration::from_millis(u64::from(req.wait_ms.min(MAX_WAIT_MS)));
        let mut result = PingResult {
            peer: name,
            peer_id: peer.to_string(),
            sent: 0,
            replies: Vec::new(),
            first_hop: self.name_of(hop),
            forwarder: link.map_or("", |l| l.forwarder).to_owned(),
            encrypted: link.is_some_and(|l| l.encrypted),
            route_hops,
        };
        let name_of = move |s: &ShortId| {
            names
                .get(s)
                .cloned()
                .unwrap_or_else(|| format!("short id {:06x}", s.get()))
        };
        Ok(async move {
            let start = Instant::now();
            let mut got: BTreeMap<u32, PingReply> = BTreeMap::new();
            for seq in 0..count {
                if let Err(e) = session.send(target, seq) {
                    return response::Kind::Error(format!("pinging {}: {e}", result.peer));
                }
                result.sent += 1;
                let last = seq + 1 == count;
                let until = start + interval * (seq + 1) + if last { wait } else { Duration::ZERO };
                while !(last && got.len() as u32 == count) {
                    let Ok(Some(a)) = tokio::time::timeout_at(until, session.next()).await else {
                        break;
                    };
                    if a.echo.seq < result.sent {
                        got.entry(a.echo.seq).or_insert_with(|| PingReply {
                            seq: a.echo.seq,
                            rtt_us: a.rtt_us,
                            there: a.echo.there.iter().map(&name_of).collect(),
                            back: a.echo.back.iter().map(&name_of).collect(),
                        });
                    }
                }
            }
            result.replies = got.into_values().collect();
            response::Kind::Ping(result)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_found_by_name_or_by_a_unique_start_of_its_id() {
        let known = vec![
            (PeerId(0xab12_0000_0000_0001), "b1".to_owned()),
            (PeerId(0xab34_0000_0000_0002), "b2".to_owned()),
        ];
        assert_eq!(find_peer(&known, "b2"), Ok(known[1].0));
        assert_eq!(find_peer(&known, "AB12"), Ok(known[0].0));
        let several = find_peer(&known, "ab").unwrap_err();
        assert!(several.contains("b1, b2"), "{several}");
        let none = find_peer(&known, "b3").unwrap_err();
        assert!(none.contains("meshctl peers"), "{none}");
        assert!(find_peer(&known, "").is_err());
    }
}
