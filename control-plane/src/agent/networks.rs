//! `meshctl network create / ls / rm`: our own networks in `networks.json`, carried in our
//! gossip entry; the mesh's are everyone's (`crate::networks`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mesh_proto::v1::{NetworkInfo, NetworkRequest, Networks};

use super::{Agent, now_ms};
use crate::{
    identity::write_atomic,
    networks::{self, Created, Listed},
};

const FILE: &str = "networks.json";

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The networks this peer created, from its state dir.
pub(super) fn load(state_dir: &Path) -> Result<Vec<Created>> {
    let p = path(state_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is not mesh's network list; fix or remove it",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn info(l: &Listed) -> NetworkInfo {
    NetworkInfo {
        name: l.name.clone(),
        subnet: l.subnet.clone(),
        id: l.id.map(|i| format!("{i:016x}")).unwrap_or_default(),
        creator: l.creator.clone().unwrap_or_default(),
        created_ms: l.created_ms,
        shadowed: l.shadowed,
        vlan: u32::from(l.vlan),
        vlan_taken: l.vlan_taken,
    }
}

impl Agent {
    /// Every network the mesh knows.
    pub(super) fn network_list(&self) -> Vec<Listed> {
        let entries = self.gossip.entries();
        networks::list(
            entries
                .iter()
                .map(|(id, e)| (self.name_of(*id), e.networks.as_slice())),
        )
    }

    pub(super) fn networks_view(&self) -> Networks {
        Networks {
            networks: self.network_list().iter().map(info).collect(),
        }
    }

    /// Writes our list and puts it in our gossip entry.
    fn publish_networks(&mut self, list: Vec<Created>) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| e.to_string())?;
        write_atomic(&path(&self.state_dir), &bytes, 0o600).map_err(|e| format!("{e:#}"))?;
        self.gossip
            .set_networks(list.iter().map(Created::to_proto).collect(), now_ms());
        self.networks = list;
        Ok(())
    }

    pub(super) fn network_create(&mut self, req: NetworkRequest) -> Result<Networks, String> {
        networks::check_name(&req.name)?;
        let subnet = networks::parse_subnet(&req.subnet)?;
        if let Some(n) = self.network_list().iter().find(|n| n.name == req.name) {
            return Err(match &n.creator {
                None => format!("{} exists on every host already", n.name),
                Some(c) => format!(
                    "network {} exists already ({}, created by {c})",
                    n.name, n.subnet
                ),
            });
        }
        let vlan = networks::free_vlan(&self.network_list())?;
        let id = rand_id();
        let mut list = self.networks.clone();
        list.push(Created {
            name: req.name,
            subnet: subnet.to_string(),
            id,
            created_ms: now_ms(),
            vlan,
        });
        self.publish_networks(list)?;
        // Its creator owns its whole range until it gives space away.
        self.ipam_seed(id, subnet);
        Ok(self.networks_view())
    }

    /// The network `name` names (empty: default); a shadowed one is named NAME@ID. One whose
    /// VLAN id an older network has cannot be chosen.
    pub(super) fn resolve_network(&self, name: &str) -> Result<networks::Chosen, String> {
        if name.is_empty() || name == networks::DEFAULT {
            return Ok(networks::Chosen::default_network());
        }
        let list = self.network_list();
        let found = list.iter().find(|n| {
            let id = n.id.map(|i| format!("{i:016x}")).unwrap_or_default();
            (n.name == name && !n.shadowed) || format!("{}@{id}", n.name) == name
        });
        let n =
            found.ok_or_else(|| format!("no network called {name:?} (`meshctl network ls`)"))?;
        n.usable()?;
        Ok(networks::Chosen {
            name: n.name.clone(),
            id: n.id.unwrap_or(0),
            vlan: n.vlan,
            subnet: Some(networks::parse_subnet(&n.subnet)?),
        })
    }

    pub(super) fn network_rm(&mut self, req: NetworkRequest) -> Result<Networks, String> {
        if req.name == networks::DEFAULT {
            return Err("the default network cannot be removed".into());
        }
        if let Some(mine) = self.networks.iter().find(|n| n.name == req.name) {
            let users: Vec<String> = self
                .gossip
                .entries()
                .iter()
                .filter(|(_, e)| e.networks_in_use.contains(&mine.id))
                .map(|(id, _)| self.name_of(*id))
                .collect();
            if !users.is_empty() {
                return Err(format!(
                    "network {} is in use on {}: detach what is attached to it there first",
                    req.name,
                    users.join(", ")
                ));
            }
        }
        if !self.networks.iter().any(|n| n.name == req.name) {
            return Err(
                match self.network_list().iter().find(|n| n.name == req.name) {
                    Some(n) => format!(
                        "network {} was created by {}: only that host can remove it",
                        n.name,
                        n.creator.clone().unwrap_or_default()
                    ),
                    None => format!("no network called {:?} (`meshctl network ls`)", req.name),
                },
            );
        }
        let list = self
            .networks
            .iter()
            .filter(|n| n.name != req.name)
            .cloned()
            .collect();
        self.publish_networks(list)?;
        Ok(self.networks_view())
    }
}

/// A random network id (from the OS's generator, as peer ids are).
fn rand_id() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .expect("the system's random generator works");
    u64::from_le_bytes(b)
}
