//! `meshctl ipam`: the address allocator of the named networks this host takes part in.

use mesh_proto::v1::Ipam;
use serde_json::{Value, json};

pub fn print(v: &Ipam) {
    if v.networks.is_empty() {
        println!(
            "this host takes part in no network's address allocation (it does once it creates \
             a network or attaches something to one without an address)"
        );
        return;
    }
    for n in &v.networks {
        println!(
            "network {} ({}, {} addresses): {} handed out here, {} free here{}",
            n.name,
            n.subnet,
            n.size,
            n.allocated_here,
            n.free_here,
            if n.waiting {
                "; waiting for space from another host"
            } else {
                ""
            }
        );
        println!("  {:<16} {:<16} OWNER", "FIRST", "LAST");
        for p in &n.pieces {
            println!(
                "  {:<16} {:<16} {}{}",
                p.first,
                p.last,
                p.owner,
                if p.owner_reachable {
                    ""
                } else {
                    " (unreachable: its addresses stay with it)"
                }
            );
        }
        println!("  {:<24} FREE", "MEMBER");
        for m in &n.members {
            let note = match (m.dead, m.reachable) {
                (true, _) => " (declared gone)",
                (false, false) => " (unreachable)",
                _ => "",
            };
            println!("  {:<24} {}{note}", m.name, m.free);
        }
    }
}

pub fn json(v: &Ipam) -> Value {
    json!(
        v.networks
            .iter()
            .map(|n| json!({
                "name": n.name,
                "subnet": n.subnet,
                "size": n.size,
                "allocated_here": n.allocated_here,
                "free_here": n.free_here,
                "waiting": n.waiting,
                "pieces": n.pieces.iter().map(|p| json!({
                    "first": p.first,
                    "last": p.last,
                    "owner": p.owner,
                    "owner_reachable": p.owner_reachable,
                })).collect::<Vec<_>>(),
                "members": n.members.iter().map(|m| json!({
                    "name": m.name,
                    "free": m.free,
                    "reachable": m.reachable,
                    "dead": m.dead,
                })).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>()
    )
}
