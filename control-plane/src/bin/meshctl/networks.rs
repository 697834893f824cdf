//! `meshctl network`: the mesh's networks, as a table or JSON.

use mesh_proto::v1::Networks;
use serde_json::{Value, json};

/// How a network is addressed: its name, or NAME@ID when another network had the name first.
fn shown(n: &mesh_proto::v1::NetworkInfo) -> String {
    if n.shadowed {
        format!("{}@{}", n.name, n.id)
    } else {
        n.name.clone()
    }
}

pub fn print(n: &Networks) {
    println!(
        "{:<40} {:<18} {:<16} {:<5} CREATED BY",
        "NETWORK", "SUBNET", "ID", "VLAN"
    );
    for x in &n.networks {
        let vlan = if x.vlan_taken {
            format!("{}!", x.vlan)
        } else {
            x.vlan.to_string()
        };
        println!(
            "{:<40} {:<18} {:<16} {:<5} {}",
            shown(x),
            x.subnet,
            if x.id.is_empty() { "-" } else { &x.id },
            vlan,
            if x.creator.is_empty() {
                "(every host)"
            } else {
                &x.creator
            }
        );
    }
    if n.networks.iter().any(|x| x.shadowed) {
        println!(
            "NAME@ID: created apart (during a partition) with a name another network had first"
        );
    }
    if n.networks.iter().any(|x| x.vlan_taken) {
        println!(
            "VLAN!: created apart with a VLAN id an older network has; it cannot be used: \
             remove it and create it again"
        );
    }
}

pub fn json(n: &Networks) -> Value {
    json!(
        n.networks
            .iter()
            .map(|x| json!({
                "name": x.name,
                "shown_as": shown(x),
                "subnet": x.subnet,
                "id": x.id,
                "creator": x.creator,
                "created_ms": x.created_ms,
                "shadowed": x.shadowed,
                "vlan": x.vlan,
                "vlan_taken": x.vlan_taken,
            }))
            .collect::<Vec<_>>()
    )
}
