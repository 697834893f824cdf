//! Named networks (`meshctl network`): each peer lists the networks it created in its own
//! signed gossip entry, so the mesh's networks are the union of every entry's, and only a
//! network's creator can take it back. `default` exists on every host without being created.
//! Pure: the agent keeps our own list in `networks.json` and gossips it.
//!
//! Each network has a VLAN id, chosen by its creator (the lowest free one; of two chosen apart,
//! the older network keeps it): inside the mesh its frames carry an 802.1Q tag with it, and on
//! each host it has a bridge and TAP device of its own (`crate::switch::network`).

use ipnet::Ipv4Net;
use mesh_proto::v1::Network;
use serde::{Deserialize, Serialize};

pub const DEFAULT: &str = "default";
/// The `default` network's subnet (Weave's default allocation range).
pub const DEFAULT_SUBNET: &str = "10.32.0.0/12";
const MAX_NAME: usize = 32;
/// `default`'s VLAN id: its frames are untagged.
pub const DEFAULT_VLAN: u16 = 1;
/// The VLAN ids a created network can have (802.1Q: 0 and 4095 are reserved, 1 is `default`).
pub const VLANS: std::ops::RangeInclusive<u16> = 2..=4094;

/// A network we created, as kept in `networks.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub name: String,
    pub subnet: String,
    pub id: u64,
    pub created_ms: u64,
    /// 0 in a list written before networks had VLAN ids: such a network cannot be used.
    #[serde(default)]
    pub vlan: u16,
}

impl Created {
    pub fn to_proto(&self) -> Network {
        Network {
            name: self.name.clone(),
            subnet: self.subnet.clone(),
            id: self.id,
            created_ms: self.created_ms,
            vlan: u32::from(self.vlan),
        }
    }
}

/// The VLAN id for a network created now: the lowest one no network in `known` has.
pub fn free_vlan(known: &[Listed]) -> Result<u16, String> {
    VLANS
        .clone()
        .find(|v| !known.iter().any(|n| n.vlan == *v))
        .ok_or_else(|| "every VLAN id (2 to 4094) has a network: remove one first".to_owned())
}

/// A name people can type and every tool accepts: 1 to 32 of a-z, 0-9, '-', '_', '.',
/// starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a network name: 1 to {MAX_NAME} of a-z, 0-9, '-', '_', '.', \
             starting with a letter or digit"
        ))
    }
}

/// An IPv4 subnet given by its network address, /8 to /30.
pub fn parse_subnet(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 subnet in CIDR notation (e.g. 10.40.0.0/16)"))?;
    if net.addr() != net.network() {
        return Err(format!(
            "{s} is not a subnet's network address (did you mean {}?)",
            net.trunc()
        ));
    }
    if !(8..=30).contains(&net.prefix_len()) {
        return Err(format!("{s}: a network's prefix is /8 to /30"));
    }
    Ok(net)
}

/// The network something is attached to, as the agent resolved it from its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    pub name: String,
    /// 0 for `default`.
    pub id: u64,
    pub vlan: u16,
    /// Every address given must be in it (none for `default`, whose range is only a default).
    pub subnet: Option<Ipv4Net>,
}

impl Chosen {
    pub fn default_network() -> Chosen {
        Chosen {
            name: DEFAULT.into(),
            id: 0,
            vlan: DEFAULT_VLAN,
            subnet: None,
        }
    }
}

/// One network as `meshctl network ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub subnet: String,
    /// None for `default`.
    pub id: Option<u64>,
    pub creator: Option<String>,
    pub created_ms: u64,
    /// Another network had the name first.
    pub shadowed: bool,
    pub vlan: u16,
    /// An older network has the same VLAN id: this one cannot be used.
    pub vlan_taken: bool,
}

impl Listed {
    /// Whether something may be attached to it.
    pub fn usable(&self) -> Result<(), String> {
        if self.vlan_taken {
            return Err(format!(
                "network {} cannot be used: an older network has its VLAN id {} (both were \
                 created during a partition); remove it and create it again",
                self.name, self.vlan
            ));
        }
        if !VLANS.contains(&self.vlan) && self.creator.is_some() {
            return Err(format!(
                "network {} has no valid VLAN id ({}): its creator runs an older meshd",
                self.name, self.vlan
            ));
        }
        Ok(())
    }
}

/// Every network, from each creator's (name, networks): `default` first, then by name; of two
/// with one name (created apart), the older keeps it and the other is marked shadowed.
pub fn list<'a>(created: impl IntoIterator<Item = (String, &'a [Network])>) -> Vec<Listed> {
    let mut all: Vec<Listed> = created
        .into_iter()
        .flat_map(|(creator, nets)| {
            nets.iter().map(move |n| Listed {
                name: n.name.clone(),
                subnet: n.subnet.clone(),
                id: Some(n.id),
                creator: Some(creator.clone()),
                created_ms: n.created_ms,
                shadowed: false,
                vlan: u16::try_from(n.vlan).unwrap_or(0),
                vlan_taken: false,
            })
        })
        .filter(|l| l.name != DEFAULT)
        .collect();
    all.sort_by(|a, b| (&a.name, a.created_ms, a.id).cmp(&(&b.name, b.created_ms, b.id)));
    for i in 1..all.len() {
        if all[i].name == all[i - 1].name {
            all[i].shadowed = true;
        }
    }
    // Of two with one VLAN id, the older (then the lower id) keeps it.
    let mut by_age: Vec<usize> = (0..all.len()).collect();
    by_age.sort_by_key(|&i| (all[i].created_ms, all[i].id));
    let mut seen = std::collections::HashSet::new();
    for i in by_age {
        if !seen.insert(all[i].vlan) {
            all[i].vlan_taken = true;
        }
    }
    all.insert(
        0,
        Listed {
            name: DEFAULT.into(),
            subnet: DEFAULT_SUBNET.into(),
            id: None,
            creator: None,
            created_ms: 0,
            shadowed: false,
            vlan: DEFAULT_VLAN,
            vlan_taken: false,
        },
    );
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, id: u64, created_ms: u64) -> Network {
        Network {
            name: name.into(),
            subnet: "10.40.0.0/16".into(),
            id,
            created_ms,
            vlan: 2 + id as u32,
        }
    }

    #[test]
    fn names_and_subnets_are_checked() {
        assert!(check_name("web-1.prod").is_ok());
        for bad in ["", "Web", "-x", "a b", "a/b", &"x".repeat(33)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(parse_subnet("10.40.0.0/16").is_ok());
        assert!(
            parse_subnet("10.40.0.1/16")
                .unwrap_err()
                .contains("did you mean 10.40.0.0/16")
        );
        assert!(parse_subnet("10.0.0.0/4").is_err());
        assert!(parse_subnet("fd00::/64").is_err());
        assert!(parse_subnet("nonsense").is_err());
    }

    #[test]
    fn the_older_of_two_networks_with_one_name_keeps_it() {
        let a = [net("web", 7, 2_000)];
        let b = [net("web", 3, 1_000), net("db", 9, 5_000)];
        let l = list([("h1".to_owned(), &a[..]), ("h2".to_owned(), &b[..])]);
        let names: Vec<(&str, bool)> = l.iter().map(|n| (n.name.as_str(), n.shadowed)).collect();
        assert_eq!(
            names,
            [
                ("default", false),
                ("db", false),
                ("web", false),
                ("web", true)
            ]
        );
        assert_eq!(l[2].creator.as_deref(), Some("h2"), "h2's is older");
    }

    #[test]
    fn nobody_can_create_a_second_default() {
        let a = [net("default", 1, 1)];
        let l = list([("h1".to_owned(), &a[..])]);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].id, None);
    }

    #[test]
    fn a_new_network_takes_the_lowest_free_vlan_and_of_two_with_one_the_older_keeps_it() {
        let a = [net("web", 0, 2_000)];
        let b = [net("db", 2, 1_000)];
        let l = list([("h1".to_owned(), &a[..]), ("h2".to_owned(), &b[..])]);
        assert_eq!(
            l.iter().map(|n| n.vlan).collect::<Vec<_>>(),
            [DEFAULT_VLAN, 4, 2]
        );
        assert_eq!(free_vlan(&l), Ok(3));

        // Created apart with one VLAN id: the younger cannot be used, the older can.
        let mut young = net("db", 9, 5_000);
        young.vlan = 2;
        let c = [young];
        let l = list([("h1".to_owned(), &a[..]), ("h3".to_owned(), &c[..])]);
        let web = l.iter().find(|n| n.name == "web").unwrap();
        let db = l.iter().find(|n| n.name == "db").unwrap();
        assert!(web.usable().is_ok() && !web.vlan_taken);
        assert!(db.vlan_taken);
        assert!(db.usable().unwrap_err().contains("VLAN id 2"));

        // An entry from a meshd that chose no VLAN cannot be used either.
        let mut old = net("old", 1, 1);
        old.vlan = 0;
        let d = [old];
        let l = list([("h4".to_owned(), &d[..])]);
        assert!(l[1].usable().is_err());
        assert!(l[0].usable().is_ok(), "default");
    }
}
