//! Namespaces and this host on the mesh bridge: `meshctl attach` / `detach` plug a network
//! namespace (a container's) into the bridge with a veth pair and give it addresses; `meshctl
//! expose` / `hide` give this host itself an address on the bridge. What was done is kept in
//! `attachments.json` in the state dir, so a restarted meshd knows it (and re-exposes what a
//! recreated bridge lost).
//!
//! A crash never leaves a half-configured namespace: the bridge side of every veth meshd makes
//! carries this instance's tag as its alias, the record is written only once everything is set
//! up, and at start meshd deletes tagged veths it has no record of (deleting one end of a veth
//! deletes the end in the namespace too).

mod docker;
pub mod record;
mod system;

pub use system::create_bridge;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnet::IpNet;
use mesh_proto::v1::{AttachRequest, Attachment, Attachments as AttachmentsView, attach_request};
use record::{Attached, Records};
use tokio::sync::Mutex;

use crate::identity::write_atomic;

const FILE: &str = "attachments.json";
/// The interface name inside the namespace when none is given.
pub const DEFAULT_IFNAME: &str = "mesh0";

/// The attachments of one meshd, serialised: one change at a time.
pub struct Attachments {
    path: PathBuf,
    bridge: String,
    mtu: u32,
    underlay: String,
    /// The alias of every bridge-side veth this instance made.
    tag: String,
    records: Mutex<Records>,
}

impl Attachments {
    /// Loads the records of `state_dir`, drops those whose veth is gone (the namespace died),
    /// deletes tagged veths without a record (a crash mid-attach), and exposes again what the
    /// bridge lost.
    pub async fn open(
        state_dir: &Path,
        bridge: &str,
        mtu: u32,
        underlay: &str,
    ) -> Result<Attachments> {
        let path = state_dir.join(FILE);
        let records: Records = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} is not mesh's attachment list; fix or remove it",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Records::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // Which instance made a veth: one per state dir (several meshd may share a machine).
        let tag = format!(
            "mesh-attach:{:08x}",
            record::fnv(state_dir.as_os_str().as_encoded_bytes()) as u32
        );
        let me = Attachments {
            path,
            bridge: bridge.to_owned(),
            mtu,
            underlay: underlay.to_owned(),
            tag,
            records: Mutex::new(records),
        };
        let mut r = me.records.lock().await;
        me.prune(&mut r).await;
        for name in system::tagged(&me.tag).await? {
            let docker = r
                .docker_endpoints
                .iter()
                .any(|e| e.host_ifname.as_deref() == Some(name.as_str()));
            if !docker && !r.attached.iter().any(|a| a.host_ifname == name) {
                tracing::warn!(
                    veth = name,
                    "removing a half-made attachment (meshd stopped while making it)"
                );
                system::unplug(&name).await?;
            }
        }
        for c in &r.exposed {
            system::expose(bridge, *c, bridge_mac(&me.tag))
                .await
                .with_context(|| format!("exposing {c} again"))?;
        }
        me.save(&r)?;
        drop(r);
        Ok(me)
    }

    fn save(&self, r: &Records) -> Result<()> {
        write_atomic(&self.path, &serde_json::to_vec_pretty(r)?, 0o600)
    }

    pub async fn view(&self) -> AttachmentsView {
        let mut r = self.records.lock().await;
        self.prune(&mut r).await;
        self.view_of(&r)
    }

    /// Forgets attachments whose namespace died (its veth died with it: a container that
    /// stopped).
    async fn prune(&self, r: &mut Records) {
        let before = r.attached.len();
        let mut live = Vec::new();
        for a in r.attached.drain(..) {
            // An error asking counts as alive: forgetting is for what is surely gone.
            if system::exists(&a.host_ifname).await.unwrap_or(true) {
                live.push(a);
            } else {
                tracing::info!(
                    netns = a.named,
                    ifname = a.ifname,
                    "an attached namespace is gone"
                );
            }
        }
        r.attached = live;
        if r.attached.len() != before
            && let Err(e) = self.save(r)
        {
            tracing::warn!(error = %format!("{e:#}"), "saving the attachments");
        }
    }

    fn view_of(&self, r: &Records) -> AttachmentsView {
        AttachmentsView {
            attached: r
                .attached
                .iter()
                .map(|a| Attachment {
                    netns: a.named.clone(),
                    ifname: a.ifname.clone(),
                    host_ifname: a.host_ifname.clone(),
                    cidrs: a.cidrs.iter().map(ToString::to_string).collect(),
                    mac: a.mac.clone(),
                    owner: a.owner.clone(),
                    network: a.network.clone(),
                    mtu: crate::switch::network::interface_mtu(self.mtu, a.vlan),
                    vlan: u32::from(a.vlan),
                })
                .chain(r.docker_endpoints.iter().filter_map(|e| {
                    let n = r
                        .docker_networks
                        .iter()
                        .find(|n| n.id == e.docker_network)?;
                    Some(Attachment {
                        netns: e.sandbox.clone(),
                        ifname: String::new(),
                        host_ifname: e.host_ifname.clone().unwrap_or_default(),
                        cidrs: vec![e.cidr.to_string()],
                        mac: e.mac.clone(),
                        owner: format!("docker:{}", short(&e.id)),
                        network: n.network.clone(),
                        mtu: crate::switch::network::interface_mtu(self.mtu, n.vlan),
                        vlan: u32::from(n.vlan),
                    })
                }))
                .collect(),
            exposed: r.exposed.iter().map(ToString::to_string).collect(),
            bridge: self.bridge.clone(),
            mtu: self.mtu,
        }
    }

    /// The VLAN ids of the named networks something here is attached to: their TAP devices
    /// must be open.
    pub async fn vlans_in_use(&self) -> Vec<u16> {
        let r = self.records.lock().await;
        let joined = r
            .docker_endpoints
            .iter()
            .filter(|e| e.host_ifname.is_some());
        let mut v: Vec<u16> = r
            .attached
            .iter()
            .map(|a| a.vlan)
            .chain(joined.filter_map(|e| {
                let n = r
                    .docker_networks
                    .iter()
                    .find(|n| n.id == e.docker_network)?;
                Some(n.vlan)
            }))
            .filter(|v| *v != crate::networks::DEFAULT_VLAN)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The IPv4 addresses attachments here use, by named network id (the allocator takes
    /// back what nobody uses).
    pub async fn addresses_in_use(&self) -> Vec<(u64, Vec<std::net::Ipv4Addr>)> {
        let r = self.records.lock().await;
        let mut by: std::collections::BTreeMap<u64, Vec<std::net::Ipv4Addr>> = Default::default();
        for a in r.attached.iter().filter(|a| a.network_id != 0) {
            by.entry(a.network_id)
                .or_default()
                .extend(a.cidrs.iter().filter_map(|c| match c.addr() {
                    std::net::IpAddr::V4(v4) => Some(v4),
                    std::net::IpAddr::V6(_) => None,
                }));
        }
        for e in &r.docker_endpoints {
            if let Some(n) = r.docker_networks.iter().find(|n| n.id == e.docker_network)
                && let std::net::IpAddr::V4(v4) = e.cidr.addr()
            {
                by.entry(n.network_id).or_default().push(v4);
            }
        }
        by.into_iter().collect()
    }

    /// Ids of the named networks something here is attached to (for gossip).
    pub async fn networks_in_use(&self) -> Vec<u64> {
        let r = self.records.lock().await;
        // A Docker network on a mesh network uses it, containers or not.
        let mut ids: Vec<u64> = r
            .attached
            .iter()
            .map(|a| a.network_id)
            .chain(r.docker_networks.iter().map(|n| n.network_id))
            .filter(|i| *i != 0)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// `meshctl attach`, onto `network` (resolved by the agent: its name, its id, 0 for
    /// default, and its subnet, which every address must be in).
    pub async fn attach(
        &self,
        req: AttachRequest,
        network: crate::networks::Chosen,
    ) -> Result<AttachmentsView, String> {
        let (path, named) = target(&req).await?;
        let ifname = ifname_of(&req)?;
        let cidrs = record::parse_cidrs(&req.cidrs)?;
        if let Some(subnet) = network.subnet
            && let Some(c) = cidrs.iter().find(|c| match c.addr() {
                std::net::IpAddr::V4(a) => !subnet.contains(&a),
                std::net::IpAddr::V6(_) => true,
            })
        {
            return Err(format!(
                "{} is not in network {}'s subnet {subnet}",
                c.addr(),
                network.name
            ));
        }
        let (ns, id) = system::open_netns(&path)?;
        let mut r = self.records.lock().await;
        self.prune(&mut r).await;
        if r.find(id, &ifname).is_some() {
            return Err(format!(
                "{named} has {ifname} attached already (`meshctl detach` first)"
            ));
        }
        if r.find_owned(&req.owner, &ifname).is_some() {
            return Err(format!("{} has {ifname} attached already", req.owner));
        }
        r.check_free(&cidrs, network.vlan)?;
        let host_ifname = record::host_ifname(id, &ifname);
        // A named network has a bridge of its own, and its frames carry a tag in the mesh,
        // which comes out of the overlay MTU.
        let bridge = if network.vlan == crate::networks::DEFAULT_VLAN {
            self.bridge.clone()
        } else {
            crate::tap::network_device(&self.bridge, network.vlan)?
        };
        let mtu = crate::switch::network::interface_mtu(self.mtu, network.vlan);
        let mac = system::plug(
            &ns,
            &system::Plug {
                bridge: &bridge,
                mtu,
                tag: &self.tag,
                host_ifname: &host_ifname,
                ifname: &ifname,
                cidrs: &cidrs,
            },
        )
        .await
        .map_err(|e| format!("attaching {named}: {e:#}"))?;
        r.attached.push(Attached {
            netns: id,
            named,
            ifname,
            host_ifname,
            cidrs,
            mac,
            owner: req.owner.clone(),
            network: network.name,
            network_id: network.id,
            vlan: network.vlan,
        });
        self.save(&r).map_err(|e| format!("{e:#}"))?;
        Ok(self.view_of(&r))
    }

    /// `meshctl detach`; or, given an owner and no namespace, that owner's attachment (a CNI
    /// DEL, whose namespace may be gone already: then there is nothing left to do).
    pub async fn detach(&self, req: AttachRequest) -> Result<AttachmentsView, String> {
        let ifname = ifname_of(&req)?;
        let mut r = self.records.lock().await;
        let found = if req.target.is_none() && !req.owner.is_empty() {
            r.find_owned(&req.owner, &ifname).cloned()
        } else {
            let (path, named) = target(&req).await?;
            let (_, id) = system::open_netns(&path)?;
            Some(r.find(id, &ifname).cloned().ok_or_else(|| {
                format!("{named} has no {ifname} attached by this meshd (`meshctl attachments`)")
            })?)
        };
        if let Some(a) = found {
            system::unplug(&a.host_ifname)
                .await
                .map_err(|e| format!("detaching {}: {e:#}", a.named))?;
            r.attached.retain(|x| x.host_ifname != a.host_ifname);
            self.save(&r).map_err(|e| format!("{e:#}"))?;
        }
        Ok(self.view_of(&r))
    }

    /// `meshctl expose`: `peers` are the peers' underlay addresses (never to be overlay ones).
    pub async fn expose(
        &self,
        cidrs: &[String],
        peers: &[IpAddr],
    ) -> Result<AttachmentsView, String> {
        let cidrs = record::parse_cidrs(cidrs)?;
        let mut tunnels = system::addresses_of(&self.underlay)
            .await
            .map_err(|e| format!("{e:#}"))?;
        tunnels.extend_from_slice(peers);
        record::check_expose(&cidrs, &tunnels)?;
        let mut r = self.records.lock().await;
        r.check_free(&cidrs, crate::networks::DEFAULT_VLAN)?;
        for c in &cidrs {
            system::expose(&self.bridge, *c, bridge_mac(&self.tag))
                .await
                .map_err(|e| format!("{e:#}"))?;
            r.exposed.push(*c);
        }
        self.save(&r).map_err(|e| format!("{e:#}"))?;
        Ok(self.view_of(&r))
    }

    /// `meshctl hide`: the given addresses, or every exposed one.
    pub async fn hide(&self, cidrs: &[String]) -> Result<AttachmentsView, String> {
        let mut r = self.records.lock().await;
        let gone: Vec<IpNet> = if cidrs.is_empty() {
            r.exposed.clone()
        } else {
            let want = record::parse_cidrs(cidrs)?;
            for w in &want {
                if !r.exposed.iter().any(|e| e.addr() == w.addr()) {
                    return Err(format!(
                        "{} is not exposed (`meshctl attachments`)",
                        w.addr()
                    ));
                }
            }
            r.exposed
                .iter()
                .filter(|e| want.iter().any(|w| w.addr() == e.addr()))
                .copied()
                .collect()
        };
        for c in &gone {
            system::hide(&self.bridge, *c)
                .await
                .map_err(|e| format!("{e:#}"))?;
            r.exposed.retain(|e| e != c);
        }
        self.save(&r).map_err(|e| format!("{e:#}"))?;
        Ok(self.view_of(&r))
    }
}

/// Docker's long ids, shortened as `docker ps` shows them.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Docker's side of the attachments (`agent::docker`): its networks on the mesh and their
/// endpoints, kept with the rest, so a restarted meshd still knows them.
impl Attachments {
    /// Records Docker network `id` as mesh network `network` (again: the same answer).
    pub async fn docker_network_add(
        &self,
        id: &str,
        network: &crate::networks::Chosen,
    ) -> Result<(), String> {
        let mut r = self.records.lock().await;
        if let Some(n) = r.docker_networks.iter().find(|n| n.id == id) {
            return if n.network_id == network.id {
                Ok(())
            } else {
                Err(format!(
                    "Docker network {} is on mesh network {} already",
                    short(id),
                    n.network
                ))
            };
        }
        r.docker_networks.push(record::DockerNetwork {
            id: id.to_owned(),
            network: network.name.clone(),
            network_id: network.id,
            vlan: network.vlan,
        });
        self.save(&r).map_err(|e| format!("{e:#}"))
    }

    pub async fn docker_network(&self, id: &str) -> Option<record::DockerNetwork> {
        let r = self.records.lock().await;
        r.docker_networks.iter().find(|n| n.id == id).cloned()
    }

    /// Forgets a Docker network. Docker removes its endpoints first; any still here are ones
    /// whose removal meshd missed (it was down), and go with it.
    pub async fn docker_network_rm(&self, id: &str) -> Result<(), String> {
        let mut r = self.records.lock().await;
        for e in r.docker_endpoints.iter().filter(|e| e.docker_network == id) {
            if let Some(host) = &e.host_ifname {
                system::unplug(host).await.map_err(|e| format!("{e:#}"))?;
            }
        }
        r.docker_endpoints.retain(|e| e.docker_network != id);
        r.docker_networks.retain(|n| n.id != id);
        self.save(&r).map_err(|e| format!("{e:#}"))
    }

    /// Records an endpoint with its address (which must be free on its network here) and MAC
    /// (chosen here when Docker chose none). Returns the MAC when chosen here.
    pub async fn docker_endpoint_add(
        &self,
        id: &str,
        docker_network: &str,
        cidr: IpNet,
        mac: Option<&str>,
    ) -> Result<Option<String>, String> {
        let mut r = self.records.lock().await;
        let net = r
            .docker_networks
            .iter()
            .find(|n| n.id == docker_network)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "Docker network {} is not on the mesh",
                    short(docker_network)
                )
            })?;
        if r.docker_endpoints.iter().any(|e| e.id == id) {
            return Err(format!("endpoint {} exists already", short(id)));
        }
        r.check_free(&[cidr], net.vlan)?;
        let chosen = match mac {
            Some(m) => {
                record::parse_mac(m)?;
                None
            }
            None => match cidr.addr() {
                IpAddr::V4(a) => Some(record::format_mac(record::docker_mac(net.network_id, a))),
                IpAddr::V6(_) => return Err("mesh networks are IPv4".into()),
            },
        };
        r.docker_endpoints.push(record::DockerEndpoint {
            id: id.to_owned(),
            docker_network: docker_network.to_owned(),
            cidr,
            mac: mac
                .map(str::to_owned)
                .or(chosen.clone())
                .unwrap_or_default(),
            host_ifname: None,
            sandbox: String::new(),
        });
        self.save(&r).map_err(|e| format!("{e:#}"))?;
        Ok(chosen)
    }

    /// Makes endpoint `id`'s veth pair (on its network's bridge) for Docker to move into
    /// `sandbox`. Returns the name of the end Docker moves.
    pub async fn docker_join(&self, id: &str, sandbox: &str) -> Result<String, String> {
        let mut r = self.records.lock().await;
        let i = r
            .docker_endpoints
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| format!("no endpoint {} here", short(id)))?;
        let e = r.docker_endpoints[i].clone();
        let net = r
            .docker_networks
            .iter()
            .find(|n| n.id == e.docker_network)
            .cloned()
            .ok_or_else(|| format!("Docker network {} is not on the mesh", short(id)))?;
        let (host, inner) = record::docker_ifnames(id);
        let bridge = if net.vlan == crate::networks::DEFAULT_VLAN {
            self.bridge.clone()
        } else {
            crate::tap::network_device(&self.bridge, net.vlan)?
        };
        let mtu = crate::switch::network::interface_mtu(self.mtu, net.vlan);
        let mac = record::parse_mac(&e.mac)?;
        system::veth_for_docker(&bridge, mtu, &self.tag, &host, &inner, mac)
            .await
            .map_err(|e| format!("joining endpoint {}: {e:#}", short(id)))?;
        r.docker_endpoints[i].host_ifname = Some(host);
        r.docker_endpoints[i].sandbox = sandbox.to_owned();
        self.save(&r).map_err(|e| format!("{e:#}"))?;
        Ok(inner)
    }

    /// Removes endpoint `id`'s veth (gone already is fine: the container's namespace died).
    pub async fn docker_leave(&self, id: &str) -> Result<(), String> {
        let mut r = self.records.lock().await;
        let Some(e) = r.docker_endpoints.iter_mut().find(|e| e.id == id) else {
            return Err(format!("no endpoint {} here", short(id)));
        };
        if let Some(host) = e.host_ifname.take() {
            system::unplug(&host)
                .await
                .map_err(|err| format!("leaving endpoint {}: {err:#}", short(id)))?;
        }
        e.sandbox.clear();
        self.save(&r).map_err(|e| format!("{e:#}"))
    }

    /// Forgets endpoint `id` (after it left; a veth still there goes too).
    pub async fn docker_endpoint_rm(&self, id: &str) -> Result<(), String> {
        let mut r = self.records.lock().await;
        if let Some(host) = r
            .docker_endpoints
            .iter()
            .find(|e| e.id == id)
            .and_then(|e| e.host_ifname.clone())
        {
            system::unplug(&host).await.map_err(|e| format!("{e:#}"))?;
        }
        r.docker_endpoints.retain(|e| e.id != id);
        self.save(&r).map_err(|e| format!("{e:#}"))
    }
}

/// The namespace file a request names, and how to call it.
async fn target(req: &AttachRequest) -> Result<(PathBuf, String), String> {
    match &req.target {
        Some(attach_request::Target::Netns(p)) if !p.is_empty() => {
            Ok((PathBuf::from(p), p.clone()))
        }
        Some(attach_request::Target::Pid(pid)) if *pid > 0 => Ok((
            netns_of_pid(*pid).ok_or_else(|| {
                format!("no process {pid} (it is not running, or not in meshd's pid namespace)")
            })?,
            format!("pid {pid}"),
        )),
        Some(attach_request::Target::Container(c)) if !c.is_empty() => {
            let pid = docker::container_pid(&req.docker_host, c).await?;
            let path = netns_of_pid(pid)
                .ok_or_else(|| format!("container {c}'s process {pid} ended meanwhile"))?;
            Ok((path, format!("container {c}")))
        }
        _ => Err("say which namespace: --netns PATH, --pid PID or --container ID".into()),
    }
}

fn netns_of_pid(pid: u32) -> Option<PathBuf> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    path.exists().then_some(path)
}

fn ifname_of(req: &AttachRequest) -> Result<String, String> {
    let name = if req.ifname.is_empty() {
        DEFAULT_IFNAME
    } else {
        &req.ifname
    };
    record::check_ifname(name)?;
    Ok(name.to_owned())
}

/// The bridge's MAC while this host is exposed: stable across restarts (derived from the
/// instance's tag), locally administered, unicast.
fn bridge_mac(tag: &str) -> [u8; 6] {
    let h = record::fnv(tag.as_bytes()).to_be_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}
