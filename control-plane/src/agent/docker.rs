//! Docker's network and IPAM driver requests (`meshd --docker-plugin`), done by the agent:
//! a Docker network is a mesh network (named by `mesh.network`, or found by its subnet), its
//! addresses come from the mesh's allocator and are held for Docker until it releases them,
//! and a container joins through a veth pair on that network's bridge.

use ipnet::Ipv4Net;
use mesh_proto::v1::NetworkRequest;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{Agent, Event, ipam::Then};
use crate::{
    docker_plugin::protocol::{self, Call, PoolId},
    networks::{self, Chosen},
};

type Reply = oneshot::Sender<Result<Value, String>>;

impl Agent {
    pub(super) fn docker(&mut self, call: Call, reply: Reply) {
        match call {
            Call::RequestPool { network, subnet } => {
                let _ = reply.send(self.docker_pool(network, subnet));
            }
            Call::RequestAddress {
                pool,
                address,
                gateway: _,
            } => match self.docker_network_of(&pool) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
                Ok(net) => match address {
                    Some(a) => {
                        let _ = reply.send(self.ipam_hold_at(&net, a));
                    }
                    // The gateway Docker asks for is held like a container's address: it is
                    // in the network's subnet, and no container may get it.
                    None => self.ipam_address(net, Then::Docker(reply)),
                },
            },
            Call::ReleaseAddress { pool, address } => {
                let answer = match self.docker_network_of(&pool) {
                    Ok(net) => match net.subnet {
                        Some(s) => self
                            .ipam_release_held(net.id, s, address)
                            .map(|()| json!({})),
                        None => Ok(json!({})),
                    },
                    // The mesh network is gone (and with it what it held).
                    Err(_) => Ok(json!({})),
                };
                let _ = reply.send(answer);
            }
            Call::CreateNetwork {
                id,
                network,
                subnet,
            } => match self.docker_find(network, subnet) {
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
                Ok(net) => self.on_docker(reply, move |at| async move {
                    at.docker_network_add(&id, &net).await.map(|()| json!({}))
                }),
            },
            Call::DeleteNetwork { id } => self.on_docker(reply, move |at| async move {
                at.docker_network_rm(&id).await.map(|()| json!({}))
            }),
            Call::CreateEndpoint {
                network,
                endpoint,
                address,
                mac,
            } => self.on_docker(reply, move |at| async move {
                let address = address.filter(|a| a.addr().is_ipv4()).ok_or_else(|| {
                    "the endpoint has no IPv4 address: create the Docker network with \
                     --ipam-driver mesh"
                        .to_owned()
                })?;
                let chosen = at
                    .docker_endpoint_add(&endpoint, &network, address, mac.as_deref())
                    .await?;
                Ok(protocol::endpoint_answer(chosen.as_deref()))
            }),
            Call::Join {
                network,
                endpoint,
                sandbox,
            } => {
                let events = self.events.clone();
                self.on_docker(reply, move |at| async move {
                    let net = at.docker_network(&network).await.ok_or_else(|| {
                        format!("Docker network {network} is not on the mesh here")
                    })?;
                    // A named network's TAP device and bridge come first.
                    if net.vlan != networks::DEFAULT_VLAN {
                        let (ready, opened) = oneshot::channel();
                        events
                            .send(Event::OpenNetwork {
                                vlan: net.vlan,
                                ready,
                            })
                            .map_err(|_| "meshd is stopping".to_owned())?;
                        opened
                            .await
                            .map_err(|_| "the data path stopped".to_owned())??;
                    }
                    let src = at.docker_join(&endpoint, &sandbox).await?;
                    Ok(protocol::join_answer(&src))
                })
            }
            Call::Leave { endpoint } => self.on_docker(reply, move |at| async move {
                at.docker_leave(&endpoint).await.map(|()| json!({}))
            }),
            Call::DeleteEndpoint { endpoint } => self.on_docker(reply, move |at| async move {
                at.docker_endpoint_rm(&endpoint).await.map(|()| json!({}))
            }),
        }
    }

    /// The mesh network a pool id names, as it is now.
    fn docker_network_of(&self, pool: &PoolId) -> Result<Chosen, String> {
        let listed = self
            .network_list()
            .into_iter()
            .find(|n| n.id == Some(pool.network_id))
            .ok_or_else(|| format!("mesh network {} no longer exists", pool.name))?;
        listed.usable()?;
        Ok(Chosen {
            name: listed.name.clone(),
            id: pool.network_id,
            vlan: listed.vlan,
            subnet: Some(networks::parse_subnet(&listed.subnet)?),
        })
    }

    /// The mesh network `name` names, or else the one whose subnet is `subnet`; when both are
    /// given they must agree.
    fn docker_find(&self, name: Option<String>, subnet: Option<Ipv4Net>) -> Result<Chosen, String> {
        let net = match (&name, subnet) {
            (Some(name), _) => self.resolve_network(name)?,
            (None, Some(s)) => {
                let matching: Vec<String> = self
                    .network_list()
                    .into_iter()
                    .filter(|n| n.id.is_some() && !n.shadowed)
                    .filter(|n| networks::parse_subnet(&n.subnet) == Ok(s))
                    .map(|n| n.name)
                    .collect();
                match matching.as_slice() {
                    [one] => self.resolve_network(one)?,
                    [] => {
                        return Err(format!(
                            "no mesh network has subnet {s}: create one (`meshctl network \
                             create NAME --subnet {s}`), or name one with \
                             --ipam-opt {opt}=NAME -o {opt}=NAME",
                            opt = protocol::NETWORK_OPTION
                        ));
                    }
                    several => {
                        return Err(format!(
                            "mesh networks {} all have subnet {s}: say which with \
                             --ipam-opt {opt}=NAME -o {opt}=NAME",
                            several.join(", "),
                            opt = protocol::NETWORK_OPTION
                        ));
                    }
                }
            }
            (None, None) => {
                return Err(format!(
                    "say which mesh network: --ipam-opt {}=NAME, or the --subnet of one \
                     (`meshctl network ls`)",
                    protocol::NETWORK_OPTION
                ));
            }
        };
        if net.subnet.is_none() {
            return Err(
                "the default network has no allocator: use a named mesh network (`meshctl \
                 network create`)"
                    .into(),
            );
        }
        if let Some(s) = subnet
            && net.subnet != Some(s)
        {
            return Err(format!(
                "mesh network {} has subnet {}, not {s}",
                net.name,
                net.subnet.map(|s| s.to_string()).unwrap_or_default()
            ));
        }
        Ok(net)
    }

    /// `RequestPool`: the mesh network's whole subnet. A named network that does not exist
    /// yet is created when a subnet is given (as `meshctl network create` would).
    fn docker_pool(
        &mut self,
        name: Option<String>,
        subnet: Option<Ipv4Net>,
    ) -> Result<Value, String> {
        if let (Some(n), Some(s)) = (&name, subnet)
            && !self.network_list().iter().any(|l| &l.name == n)
        {
            self.network_create(NetworkRequest {
                name: n.clone(),
                subnet: s.to_string(),
            })?;
            tracing::info!(network = n, subnet = %s, "created a network for Docker");
        }
        let net = self.docker_find(name, subnet)?;
        let subnet = net.subnet.expect("docker_find: named networks only");
        Ok(protocol::pool_answer(
            &PoolId {
                network_id: net.id,
                name: net.name,
            },
            subnet,
        ))
    }

    /// Runs `op` on the attachments in a task of its own, answers `reply`, and tells the
    /// mesh what is in use now.
    fn on_docker<F, Fut>(&self, reply: Reply, op: F)
    where
        F: FnOnce(std::sync::Arc<crate::attach::Attachments>) -> Fut,
        Fut: std::future::Future<Output = Result<Value, String>> + Send + 'static,
    {
        let Some(at) = self.attachments.clone() else {
            let _ = reply.send(Err(
                "this meshd runs no data path, so it has no bridge to attach to".into(),
            ));
            return;
        };
        let work = op(at.clone());
        let events = self.events.clone();
        tokio::spawn(async move {
            let answer = work.await;
            let _ = events.send(Event::NetworksInUse(at.networks_in_use().await));
            let _ = events.send(Event::AddressesInUse(at.addresses_in_use().await));
            let _ = reply.send(answer);
        });
    }
}
