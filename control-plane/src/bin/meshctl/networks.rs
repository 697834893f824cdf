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
    println!("{:<40} {:<18} {:<16} CREATED BY", "NETWORK", "SUBNET", "ID");
    for x in &n.networks {
        println!(
            "{:<40} {:<18} {:<16} {}",
            shown(x),
            x.subnet,
            if x.id.is_empty() { "-" } else { &x.id },
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
            }))
            .collect::<Vec<_>>()
    )
}
