//! What meshd attached and exposed, as kept in `attachments.json`, and the checks a request
//! passes before anything is changed. Pure: no system calls.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A network namespace, by the identity of its nsfs inode (paths and pids only name it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

/// One namespace plugged into the bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub netns: NetnsId,
    /// How it was named when attached (a path, or "pid N"), for people.
    pub named: String,
    pub ifname: String,
    pub host_ifname: String,
    pub cidrs: Vec<IpNet>,
    pub mac: String,
    /// Who asked (e.g. "cni:NETWORK:CONTAINER-ID"); empty for `meshctl attach`.
    #[serde(default)]
    pub owner: String,
    /// The network it is on ("default" when none was named) and that network's id (0 for
    /// default).
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub network_id: u64,
    /// The network's VLAN id: its own bridge and TAP device unless `default`'s (1).
    #[serde(default = "default_vlan")]
    pub vlan: u16,
}

fn default_vlan() -> u16 {
    crate::networks::DEFAULT_VLAN
}

/// A Docker network on the mesh (`docker network create --driver mesh`): Docker's id for it,
/// and the mesh network it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerNetwork {
    pub id: String,
    pub network: String,
    pub network_id: u64,
    pub vlan: u16,
}

/// A Docker endpoint (a container on a mesh Docker network): created, then joined (its veth
/// exists) until it leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEndpoint {
    pub id: String,
    /// Docker's network id.
    pub docker_network: String,
    pub cidr: IpNet,
    pub mac: String,
    /// The bridge-side veth while joined.
    #[serde(default)]
    pub host_ifname: Option<String>,
    /// The container's namespace (Docker's sandbox key) while joined.
    #[serde(default)]
    pub sandbox: String,
}

/// Everything meshd attached and exposed (`attachments.json` in its state dir).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    pub attached: Vec<Attached>,
    pub exposed: Vec<IpNet>,
    #[serde(default)]
    pub docker_networks: Vec<DockerNetwork>,
    #[serde(default)]
    pub docker_endpoints: Vec<DockerEndpoint>,
}

/// The veth names of a Docker endpoint: the bridge side, and the side Docker moves into the
/// container (stable, derived from the endpoint id, within IFNAMSIZ).
pub fn docker_ifnames(endpoint: &str) -> (String, String) {
    let h = fnv(endpoint.as_bytes()) as u32;
    (format!("vd{h:08x}"), format!("vd{h:08x}c"))
}

/// A locally administered unicast MAC for a Docker endpoint: its IPv4 address, after a byte
/// of its network's id. An address handed out again (a container replaced) comes with the
/// same MAC, so the other containers' ARP entries stay right; within a network addresses are
/// unique, and so are these.
pub fn docker_mac(network_id: u64, addr: std::net::Ipv4Addr) -> [u8; 6] {
    let n = fnv(&network_id.to_le_bytes()).to_be_bytes()[0];
    let a = addr.octets();
    [0x02, n, a[0], a[1], a[2], a[3]]
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address");
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    parts.try_into().map_err(|_| bad())
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The longest interface name Linux takes.
const IFNAMSIZ: usize = 15;

/// Parses `cidrs` ("10.32.0.5/16"); at least one, each an address inside its prefix (not the
/// network or broadcast address of an IPv4 prefix shorter than /31).
pub fn parse_cidrs(cidrs: &[String]) -> Result<Vec<IpNet>, String> {
    if cidrs.is_empty() {
        return Err(
            "give the address(es) to assign, as CIDR (e.g. 10.32.0.5/16): mesh allocates \
             them only in named networks (`meshctl network create`)"
                .into(),
        );
    }
    let mut out: Vec<IpNet> = Vec::new();
    for c in cidrs {
        let net: IpNet = c
            .parse()
            .map_err(|_| format!("{c:?} is not an address in CIDR notation (e.g. 10.32.0.5/16)"))?;
        if let IpNet::V4(v4) = net
            && v4.prefix_len() < 31
            && (v4.addr() == v4.network() || v4.addr() == v4.broadcast())
        {
            return Err(format!(
                "{c} is the network or broadcast address of its prefix: pick a host address"
            ));
        }
        if out.iter().any(|o| o.addr() == net.addr()) {
            return Err(format!("{} is given twice", net.addr()));
        }
        out.push(net);
    }
    Ok(out)
}

/// An interface name Linux accepts.
pub fn check_ifname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid interface name (1 to {IFNAMSIZ} characters, no '/', ':' or \
             spaces)"
        ))
    }
}

/// The bridge-side veth's name for an attachment: derived from the namespace and the
/// interface, so it is stable and fits IFNAMSIZ.
pub fn host_ifname(netns: NetnsId, ifname: &str) -> String {
    let mut bytes = netns.dev.to_le_bytes().to_vec();
    bytes.extend_from_slice(&netns.ino.to_le_bytes());
    bytes.extend_from_slice(ifname.as_bytes());
    format!("vm{:08x}", fnv(&bytes) as u32)
}

/// FNV-1a: a hash that is stable across builds and runs, unlike std's, for names derived
/// from identities.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Records {
    pub fn find(&self, netns: NetnsId, ifname: &str) -> Option<&Attached> {
        self.attached
            .iter()
            .find(|a| a.netns == netns && a.ifname == ifname)
    }

    pub fn find_owned(&self, owner: &str, ifname: &str) -> Option<&Attached> {
        self.attached
            .iter()
            .find(|a| !owner.is_empty() && a.owner == owner && a.ifname == ifname)
    }

    /// Every address meshd assigned: attached and exposed.
    /// The addresses in use on network `vlan` here (this host's own are on `default`'s).
    fn addresses(&self, vlan: u16) -> impl Iterator<Item = IpAddr> + '_ {
        let exposed = (vlan == crate::networks::DEFAULT_VLAN).then_some(&self.exposed);
        let docker = self.docker_endpoints.iter().filter(move |e| {
            self.docker_networks
                .iter()
                .any(|n| n.id == e.docker_network && n.vlan == vlan)
        });
        self.attached
            .iter()
            .filter(move |a| a.vlan == vlan)
            .flat_map(|a| a.cidrs.iter().map(IpNet::addr))
            .chain(exposed.into_iter().flatten().map(IpNet::addr))
            .chain(docker.map(|e| e.cidr.addr()))
    }

    /// Refuses an address meshd already gave to a namespace or to this host on network
    /// `vlan` (another network may use the same addresses: it is a bridge of its own).
    pub fn check_free(&self, cidrs: &[IpNet], vlan: u16) -> Result<(), String> {
        for c in cidrs {
            if self.addresses(vlan).any(|a| a == c.addr()) {
                return Err(format!(
                    "{} is in use on this network here (`meshctl attachments`)",
                    c.addr()
                ));
            }
        }
        Ok(())
    }
}

/// Refuses to expose a prefix that holds an underlay address: traffic to that peer would be
/// routed into the overlay, inside its own tunnel (the loop Weave's `expose` could make).
pub fn check_expose(cidrs: &[IpNet], underlay: &[IpAddr]) -> Result<(), String> {
    for c in cidrs {
        if let Some(u) = underlay.iter().find(|u| c.contains(*u)) {
            return Err(format!(
                "{c} contains {u}, an address mesh's own tunnels use (this host's underlay or \
                 a peer's): exposing it would route the tunnels into themselves; pick an \
                 overlay subnet apart from the underlay"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn addresses_are_checked_before_anything_changes() {
        assert_eq!(
            parse_cidrs(&v(&["10.32.0.5/16", "fd00::5/64"]))
                .unwrap()
                .len(),
            2
        );
        for (bad, says) in [
            (v(&[]), "give the address"),
            (v(&["10.32.0.5"]), "CIDR"),
            (v(&["10.32.0.300/16"]), "CIDR"),
            (v(&["10.32.0.0/16"]), "network or broadcast"),
            (v(&["10.32.255.255/16"]), "network or broadcast"),
            (v(&["10.32.0.5/16", "10.32.0.5/24"]), "twice"),
        ] {
            let e = parse_cidrs(&bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(parse_cidrs(&v(&["10.32.0.1/32"])).is_ok());
    }

    #[test]
    fn interface_names_are_what_linux_takes() {
        assert!(check_ifname("mesh0").is_ok());
        for bad in ["", "a/b", "a b", "x:1", "sixteen-chars-xx", ".."] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_side_names_are_stable_short_and_differ_per_namespace_and_interface() {
        let a = NetnsId {
            dev: 4,
            ino: 4026532000,
        };
        let b = NetnsId {
            dev: 4,
            ino: 4026532001,
        };
        let n = host_ifname(a, "mesh0");
        assert_eq!(n, host_ifname(a, "mesh0"));
        assert!(n.len() <= IFNAMSIZ && n.starts_with("vm"), "{n}");
        assert_ne!(n, host_ifname(b, "mesh0"));
        assert_ne!(n, host_ifname(a, "mesh1"));
    }

    #[test]
    fn an_address_in_use_or_an_underlay_address_is_refused() {
        let mut r = Records::default();
        r.attached.push(Attached {
            netns: NetnsId { dev: 1, ino: 2 },
            named: "x".into(),
            ifname: "mesh0".into(),
            host_ifname: "vm0".into(),
            cidrs: vec!["10.32.0.5/16".parse().unwrap()],
            mac: String::new(),
            owner: String::new(),
            network: String::new(),
            network_id: 0,
            vlan: 1,
        });
        r.exposed.push("10.32.0.100/16".parse().unwrap());
        for used in ["10.32.0.5/24", "10.32.0.100/16"] {
            assert!(r.check_free(&[used.parse().unwrap()], 1).is_err(), "{used}");
            assert!(
                r.check_free(&[used.parse().unwrap()], 5).is_ok(),
                "{used} on another network"
            );
        }
        assert!(r.check_free(&["10.32.0.6/16".parse().unwrap()], 1).is_ok());
        let underlay: Vec<IpAddr> = vec!["198.18.0.1".parse().unwrap()];
        assert!(check_expose(&["198.18.5.1/15".parse().unwrap()], &underlay).is_err());
        assert!(check_expose(&["10.32.0.100/16".parse().unwrap()], &underlay).is_ok());
    }

    #[test]
    fn records_read_back_as_written() {
        let r = Records {
            attached: vec![Attached {
                netns: NetnsId { dev: 3, ino: 9 },
                named: "pid 42".into(),
                ifname: "eth1".into(),
                host_ifname: "vmabc".into(),
                cidrs: vec!["10.1.0.2/24".parse().unwrap()],
                mac: "02:00:00:00:00:01".into(),
                owner: "cni:net:abc".into(),
                network: "web".into(),
                network_id: 7,
                vlan: 2,
            }],
            exposed: vec!["10.1.0.1/24".parse().unwrap()],
            docker_networks: vec![DockerNetwork {
                id: "n1".into(),
                network: "web".into(),
                network_id: 7,
                vlan: 2,
            }],
            docker_endpoints: vec![DockerEndpoint {
                id: "e1".into(),
                docker_network: "n1".into(),
                cidr: "10.1.0.3/24".parse().unwrap(),
                mac: format_mac(docker_mac(7, "10.1.0.3".parse().unwrap())),
                host_ifname: Some(docker_ifnames("e1").0),
                sandbox: "/var/run/docker/netns/x".into(),
            }],
        };
        // A Docker endpoint's address is in use on its network like an attachment's.
        let e = r
            .check_free(&["10.1.0.3/24".parse().unwrap()], 2)
            .unwrap_err();
        assert!(e.contains("in use"), "{e}");
        assert!(r.check_free(&["10.1.0.3/24".parse().unwrap()], 3).is_ok());
        assert_eq!(
            parse_mac(&r.docker_endpoints[0].mac),
            Ok([
                0x02,
                docker_mac(7, "10.1.0.3".parse().unwrap())[1],
                10,
                1,
                0,
                3
            ])
        );
        assert!(parse_mac("02:00:00:00:00").is_err());
        let (host, inner) = docker_ifnames("e1");
        assert!(check_ifname(&host).is_ok() && check_ifname(&inner).is_ok());
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Records>(&text).unwrap(), r);
    }
}
