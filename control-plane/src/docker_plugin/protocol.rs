//! Docker's plugin protocols as mesh speaks them: the requests Docker posts (JSON, field
//! names as Docker spells them), the answers that need no state, and the pool ids we hand out.
//! Pure: the agent does the work (`agent::docker`).
//!
//! Docker's side: libnetwork's remote network driver and remote IPAM driver APIs
//! (`/NetworkDriver.*`, `/IpamDriver.*`, after `/Plugin.Activate`).

use std::collections::HashMap;

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::{Value, json};

/// The option that names the mesh network: `--ipam-opt mesh.network=NAME` (IPAM) and
/// `-o mesh.network=NAME` (network driver).
pub const NETWORK_OPTION: &str = "mesh.network";
/// What Docker's `RequestAddress` options say when it wants a network's gateway address.
const GATEWAY_REQUEST: &str = "com.docker.network.gateway";
/// Where Docker puts a network's `-o` options in `CreateNetwork`.
const GENERIC_OPTIONS: &str = "com.docker.network.generic";

/// A request that needs the agent (the rest is answered by [`parse`] itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// IPAM: which mesh network a Docker network's addresses come from.
    RequestPool {
        /// `--ipam-opt mesh.network=NAME`.
        network: Option<String>,
        /// `--subnet`.
        subnet: Option<Ipv4Net>,
    },
    /// IPAM: an address (a container's, or the network's gateway).
    RequestAddress {
        pool: PoolId,
        /// A given address (`--ip`, `--gateway`); none: mesh picks.
        address: Option<std::net::Ipv4Addr>,
        gateway: bool,
    },
    ReleaseAddress {
        pool: PoolId,
        address: std::net::Ipv4Addr,
    },
    CreateNetwork {
        id: String,
        /// `-o mesh.network=NAME`.
        network: Option<String>,
        /// The subnet of its IPv4 pool.
        subnet: Option<Ipv4Net>,
    },
    DeleteNetwork {
        id: String,
    },
    CreateEndpoint {
        network: String,
        endpoint: String,
        address: Option<ipnet::IpNet>,
        /// The MAC Docker chose (`--mac-address`); none: we choose.
        mac: Option<String>,
    },
    DeleteEndpoint {
        endpoint: String,
    },
    Join {
        network: String,
        endpoint: String,
        sandbox: String,
    },
    Leave {
        endpoint: String,
    },
}

/// What a Docker request becomes.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// Answered without state.
    Answer(Value),
    Call(Call),
}

/// A pool we handed to Docker: the mesh network's id and name. Docker keeps it with its
/// network and gives it back with every address request, across restarts of either side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolId {
    pub network_id: u64,
    pub name: String,
}

impl std::fmt::Display for PoolId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mesh/{}/{:016x}", self.name, self.network_id)
    }
}

impl std::str::FromStr for PoolId {
    type Err = String;
    fn from_str(s: &str) -> Result<PoolId, String> {
        let bad = || format!("{s:?} is not a pool mesh handed out");
        let rest = s.strip_prefix("mesh/").ok_or_else(bad)?;
        let (name, id) = rest.rsplit_once('/').ok_or_else(bad)?;
        if id.len() != 16 || name.is_empty() {
            return Err(bad());
        }
        Ok(PoolId {
            network_id: u64::from_str_radix(id, 16).map_err(|_| bad())?,
            name: name.to_owned(),
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RequestPool {
    pool: String,
    sub_pool: String,
    options: Option<HashMap<String, String>>,
    #[serde(rename = "V6")]
    v6: bool,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RequestAddress {
    #[serde(rename = "PoolID")]
    pool_id: String,
    address: String,
    options: Option<HashMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct IpamData {
    pool: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct CreateNetwork {
    #[serde(rename = "NetworkID")]
    network_id: String,
    options: Option<HashMap<String, Value>>,
    #[serde(rename = "IPv4Data")]
    ipv4_data: Option<Vec<IpamData>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct EndpointInterface {
    address: String,
    mac_address: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct Endpoint {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    interface: Option<EndpointInterface>,
    sandbox_key: String,
}

fn body<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}").map_err(|e| e.to_string());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("{what}: not the JSON Docker sends: {e}"))
}

fn subnet(s: &str) -> Result<Option<Ipv4Net>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    crate::networks::parse_subnet(s).map(Some)
}

fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Reads the request Docker posted to `path`.
pub fn parse(path: &str, bytes: &[u8]) -> Result<Parsed, String> {
    use Parsed::Answer;
    let call = match path {
        "/Plugin.Activate" => {
            return Ok(Answer(
                json!({ "Implements": ["NetworkDriver", "IpamDriver"] }),
            ));
        }
        // Containers on other hosts are reachable: the network is global in what it connects,
        // though each Docker daemon keeps its own record of it.
        "/NetworkDriver.GetCapabilities" => {
            return Ok(Answer(
                json!({ "Scope": "local", "ConnectivityScope": "global" }),
            ));
        }
        "/IpamDriver.GetCapabilities" => {
            return Ok(Answer(json!({ "RequiresMACAddress": false })));
        }
        "/IpamDriver.GetDefaultAddressSpaces" => {
            return Ok(Answer(json!({
                "LocalDefaultAddressSpace": "mesh",
                "GlobalDefaultAddressSpace": "mesh",
            })));
        }
        // Nothing is held per pool: its addresses are released one by one.
        "/IpamDriver.ReleasePool"
        // Swarm's and external connectivity's hooks: no state of ours.
        | "/NetworkDriver.DiscoverNew"
        | "/NetworkDriver.DiscoverDelete"
        | "/NetworkDriver.ProgramExternalConnectivity"
        | "/NetworkDriver.RevokeExternalConnectivity"
        | "/NetworkDriver.AllocateNetwork"
        | "/NetworkDriver.FreeNetwork" => return Ok(Answer(json!({}))),
        "/NetworkDriver.EndpointOperInfo" => return Ok(Answer(json!({ "Value": {} }))),
        "/IpamDriver.RequestPool" => {
            let r: RequestPool = body(path, bytes)?;
            if r.v6 {
                return Err(
                    "mesh hands out IPv4 addresses only: create the network without --ipv6"
                        .into(),
                );
            }
            if !r.sub_pool.is_empty() {
                return Err(
                    "mesh hands out addresses from the whole subnet: leave out --ip-range".into(),
                );
            }
            Call::RequestPool {
                network: r
                    .options
                    .and_then(|mut o| o.remove(NETWORK_OPTION))
                    .and_then(some),
                subnet: subnet(&r.pool)?,
            }
        }
        "/IpamDriver.RequestAddress" => {
            let r: RequestAddress = body(path, bytes)?;
            let gateway = r
                .options
                .as_ref()
                .and_then(|o| o.get("RequestAddressType"))
                .is_some_and(|t| t == GATEWAY_REQUEST);
            Call::RequestAddress {
                pool: r.pool_id.parse()?,
                address: match r.address.as_str() {
                    "" => None,
                    a => Some(
                        a.parse()
                            .map_err(|_| format!("{a:?} is not an IPv4 address"))?,
                    ),
                },
                gateway,
            }
        }
        "/IpamDriver.ReleaseAddress" => {
            let r: RequestAddress = body(path, bytes)?;
            Call::ReleaseAddress {
                pool: r.pool_id.parse()?,
                address: r
                    .address
                    .parse()
                    .map_err(|_| format!("{:?} is not an IPv4 address", r.address))?,
            }
        }
        "/NetworkDriver.CreateNetwork" => {
            let r: CreateNetwork = body(path, bytes)?;
            let network = r
                .options
                .as_ref()
                .and_then(|o| o.get(GENERIC_OPTIONS))
                .and_then(|g| g.get(NETWORK_OPTION))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .and_then(some);
            let pools = r.ipv4_data.unwrap_or_default();
            if pools.len() > 1 {
                return Err("a mesh network has one subnet: give one --subnet".into());
            }
            Call::CreateNetwork {
                id: need(r.network_id, "NetworkID")?,
                network,
                subnet: match pools.first() {
                    Some(p) => subnet(&p.pool)?,
                    None => None,
                },
            }
        }
        "/NetworkDriver.DeleteNetwork" => {
            let r: CreateNetwork = body(path, bytes)?;
            Call::DeleteNetwork {
                id: need(r.network_id, "NetworkID")?,
            }
        }
        "/NetworkDriver.CreateEndpoint" => {
            let r: Endpoint = body(path, bytes)?;
            let i = r.interface.unwrap_or_default();
            Call::CreateEndpoint {
                network: need(r.network_id, "NetworkID")?,
                endpoint: need(r.endpoint_id, "EndpointID")?,
                address: match i.address.as_str() {
                    "" => None,
                    a => Some(
                        a.parse()
                            .map_err(|_| format!("{a:?} is not an address in CIDR notation"))?,
                    ),
                },
                mac: some(i.mac_address),
            }
        }
        "/NetworkDriver.DeleteEndpoint" => Call::DeleteEndpoint {
            endpoint: need(body::<Endpoint>(path, bytes)?.endpoint_id, "EndpointID")?,
        },
        "/NetworkDriver.Join" => {
            let r: Endpoint = body(path, bytes)?;
            Call::Join {
                network: need(r.network_id, "NetworkID")?,
                endpoint: need(r.endpoint_id, "EndpointID")?,
                sandbox: r.sandbox_key,
            }
        }
        "/NetworkDriver.Leave" => Call::Leave {
            endpoint: need(body::<Endpoint>(path, bytes)?.endpoint_id, "EndpointID")?,
        },
        other => {
            return Err(format!(
                "{other}: not part of the network or IPAM driver protocol mesh serves"
            ));
        }
    };
    Ok(Parsed::Call(call))
}

fn need(v: String, what: &str) -> Result<String, String> {
    if v.is_empty() {
        Err(format!("the request has no {what}"))
    } else {
        Ok(v)
    }
}

/// The answer to `RequestPool`.
pub fn pool_answer(pool: &PoolId, subnet: Ipv4Net) -> Value {
    json!({ "PoolID": pool.to_string(), "Pool": subnet.to_string(), "Data": {} })
}

/// The answer to `RequestAddress`: the address with its subnet's prefix.
pub fn address_answer(address: std::net::Ipv4Addr, subnet: Ipv4Net) -> Value {
    json!({ "Address": format!("{address}/{}", subnet.prefix_len()), "Data": {} })
}

/// The answer to `CreateEndpoint`: the MAC when we chose it (Docker refuses an answer that
/// changes what it gave).
pub fn endpoint_answer(chosen_mac: Option<&str>) -> Value {
    match chosen_mac {
        Some(mac) => json!({ "Interface": { "MacAddress": mac } }),
        None => json!({}),
    }
}

/// The answer to `Join`: Docker moves `src` into the container and names it ethN. No gateway:
/// Docker gives the container its way out through a bridge network of its own, as for its
/// overlay driver.
pub fn join_answer(src: &str) -> Value {
    json!({ "InterfaceName": { "SrcName": src, "DstPrefix": "eth" }, "DisableGatewayService": false })
}

/// The body of an error answer.
pub fn error_answer(e: &str) -> Value {
    json!({ "Err": e })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(path: &str, body: Value) -> Result<Call, String> {
        match parse(path, body.to_string().as_bytes())? {
            Parsed::Call(c) => Ok(c),
            Parsed::Answer(a) => panic!("{path} answered {a}"),
        }
    }

    #[test]
    fn activation_names_both_drivers_and_capabilities_need_no_state() {
        let Parsed::Answer(a) = parse("/Plugin.Activate", b"").unwrap() else {
            panic!()
        };
        assert_eq!(a["Implements"], json!(["NetworkDriver", "IpamDriver"]));
        let Parsed::Answer(c) = parse("/NetworkDriver.GetCapabilities", b"{}").unwrap() else {
            panic!()
        };
        assert_eq!(c["Scope"], "local");
        assert!(parse("/NetworkDriver.Nonsense", b"{}").is_err());
    }

    #[test]
    fn a_pool_is_asked_for_by_network_name_or_subnet_and_ipv6_is_refused() {
        let c = call(
            "/IpamDriver.RequestPool",
            json!({"AddressSpace": "mesh", "Pool": "10.90.0.0/24", "SubPool": "",
                   "Options": {"mesh.network": "web"}, "V6": false}),
        )
        .unwrap();
        assert_eq!(
            c,
            Call::RequestPool {
                network: Some("web".into()),
                subnet: Some("10.90.0.0/24".parse().unwrap())
            }
        );
        let c = call("/IpamDriver.RequestPool", json!({"Pool": ""})).unwrap();
        assert_eq!(
            c,
            Call::RequestPool {
                network: None,
                subnet: None
            }
        );
        let e = call("/IpamDriver.RequestPool", json!({"V6": true})).unwrap_err();
        assert!(e.contains("IPv4"), "{e}");
        let e = call("/IpamDriver.RequestPool", json!({"Pool": "10.90.0.0/33"})).unwrap_err();
        assert!(e.contains("10.90.0.0/33"), "{e}");
    }

    #[test]
    fn pool_ids_round_trip_and_strangers_are_refused() {
        let p = PoolId {
            network_id: 0xabc,
            name: "web".into(),
        };
        assert_eq!(p.to_string().parse::<PoolId>(), Ok(p.clone()));
        for bad in [
            "",
            "web",
            "mesh/web",
            "mesh//0000000000000abc",
            "mesh/web/xyz",
        ] {
            assert!(bad.parse::<PoolId>().is_err(), "{bad}");
        }
        let c = call(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": p.to_string(), "Address": "",
                   "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
        )
        .unwrap();
        assert_eq!(
            c,
            Call::RequestAddress {
                pool: p.clone(),
                address: None,
                gateway: true
            }
        );
        let e = call(
            "/IpamDriver.RequestAddress",
            json!({"PoolID": "default/10.0.0.0/8"}),
        )
        .unwrap_err();
        assert!(e.contains("not a pool mesh handed out"), "{e}");
    }

    #[test]
    fn network_and_endpoint_requests_carry_what_the_agent_needs() {
        let c = call(
            "/NetworkDriver.CreateNetwork",
            json!({"NetworkID": "n1", "Options": {"com.docker.network.generic": {"mesh.network": "web"},
                   "com.docker.network.enable_ipv6": false},
                   "IPv4Data": [{"AddressSpace": "mesh", "Pool": "10.90.0.0/24", "Gateway": "10.90.0.1/24"}],
                   "IPv6Data": []}),
        )
        .unwrap();
        assert_eq!(
            c,
            Call::CreateNetwork {
                id: "n1".into(),
                network: Some("web".into()),
                subnet: Some("10.90.0.0/24".parse().unwrap())
            }
        );
        let c = call(
            "/NetworkDriver.CreateEndpoint",
            json!({"NetworkID": "n1", "EndpointID": "e1",
                   "Interface": {"Address": "10.90.0.7/24", "AddressIPv6": "", "MacAddress": ""}}),
        )
        .unwrap();
        assert_eq!(
            c,
            Call::CreateEndpoint {
                network: "n1".into(),
                endpoint: "e1".into(),
                address: Some("10.90.0.7/24".parse().unwrap()),
                mac: None
            }
        );
        let e = call("/NetworkDriver.Join", json!({"NetworkID": "n1"})).unwrap_err();
        assert!(e.contains("EndpointID"), "{e}");
        let e = parse("/NetworkDriver.Leave", b"{not json").unwrap_err();
        assert!(e.contains("not the JSON"), "{e}");
    }
}
