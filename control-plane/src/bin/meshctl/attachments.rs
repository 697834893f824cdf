//! `meshctl attach / detach / expose / hide / attachments`: what is on the mesh bridge.

use anyhow::{Result, bail};
use mesh_proto::v1::{Attachments, response};
use serde_json::{Value, json};

pub fn print(answer: response::Kind) -> Result<()> {
    let response::Kind::Attachments(a) = answer else {
        bail!("unexpected answer from meshd: {answer:?}");
    };
    println!("bridge {} (overlay MTU {})", a.bridge, a.mtu);
    if a.attached.is_empty() {
        println!("no namespaces attached");
    } else {
        println!(
            "{:<28} {:<10} {:<12} {:<12} {:<18} ADDRESSES",
            "NAMESPACE", "IFNAME", "NETWORK", "BRIDGE PORT", "MAC"
        );
        for x in &a.attached {
            println!(
                "{:<28} {:<10} {:<12} {:<12} {:<18} {}",
                x.netns,
                x.ifname,
                x.network,
                x.host_ifname,
                x.mac,
                x.cidrs.join(" ")
            );
        }
    }
    if a.exposed.is_empty() {
        println!("this host is not exposed on the mesh");
    } else {
        println!("exposed: {}", a.exposed.join(" "));
    }
    Ok(())
}

pub fn json(a: &Attachments) -> Value {
    json!({
        "bridge": a.bridge,
        "mtu": a.mtu,
        "attached": a.attached.iter().map(|x| json!({
            "netns": x.netns,
            "ifname": x.ifname,
            "host_ifname": x.host_ifname,
            "mac": x.mac,
            "cidrs": x.cidrs,
            "network": x.network,
            "vlan": x.vlan,
            "mtu": x.mtu,
            "owner": x.owner,
        })).collect::<Vec<_>>(),
        "exposed": a.exposed,
    })
}
