//! A member that lies, for tests: `rogue-member TARGET PASSWORD_FILE STATE_DIR VICTIM HOLD_S`.
//!
//! It holds the password, so it joins TARGET like any meshd (TLS, hello, SPAKE2), and its own
//! entry is signed with its own identity key (kept in STATE_DIR). Once it has heard VICTIM's
//! entry it sends, one message each:
//!
//! 1. VICTIM's entry with a higher version, its links replaced by one to us and its addresses
//!    dropped, keeping VICTIM's old signature;
//! 2. the same, signed with our key;
//! 3. VICTIM's entry at version `u64::MAX`;
//! 4. our own entry at version `u64::MAX` (validly signed);
//! 5. our own entry claiming the flood id as short id (validly signed);
//! 6. our own entry claiming VICTIM's short id (validly signed);
//! 7. our own entry with 1000 links and a 100 kB name (validly signed);
//!
//! and finally a valid entry of its own named `rogue-done` (the positive control: when honest
//! peers list `rogue-done`, everything before it on the stream was processed). It prints one
//! JSON line saying what it sent, and stays connected HOLD_S seconds.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use mesh::{agent::Session, auth::AuthMode, entry_sign::EntrySigner, identity::Identity};
use mesh_gossip::{EntryAuth, PeerEntry, PeerId, SHORT_ID_FLOOD, short_id_candidate};
use mesh_proto::v1::{GossipMessage, Link, Update, gossip_message};

fn update(entries: Vec<PeerEntry>) -> GossipMessage {
    GossipMessage {
        kind: Some(gossip_message::Kind::Update(Update { entries })),
    }
}

async fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, password_file, state_dir, victim_name, hold] = args.as_slice() else {
        bail!("usage: rogue-member TARGET PASSWORD_FILE STATE_DIR VICTIM HOLD_S");
    };
    let hold: u64 = hold.parse().context("HOLD_S")?;
    // As meshd reads it: the first line, trimmed.
    let text = std::fs::read_to_string(password_file).context("reading the password file")?;
    let password = text.lines().next().unwrap_or("").trim().as_bytes().to_vec();
    let ident = Identity::load_or_create(std::path::Path::new(state_dir))?;
    let signer = Arc::new(EntrySigner::new(&ident.cert, &ident.private_key())?);
    let me = ident.id;
    let mut session = Session::join(
        me,
        "rogue".into(),
        AuthMode::Password(password),
        vec![ident.cert.clone()],
        ident.private_key(),
        target,
    )
    .await?;

    // What the member tells a new neighbour: everything it knows, the victim included.
    let deadline = Instant::now() + Duration::from_secs(20);
    let victim = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, session.recv_gossip())
            .await
            .context("VICTIM's entry did not arrive")??;
        if let Some(gossip_message::Kind::Update(u)) = msg.kind
            && let Some(v) = u.entries.into_iter().find(|e| &e.name == victim_name)
        {
            break v;
        }
    };

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let sign = |mut e: PeerEntry| {
        signer.sign(&mut e);
        e
    };
    let own = PeerEntry {
        id: me.0,
        name: "rogue".into(),
        version: now,
        links: vec![Link {
            peer: session.peer.0,
            observed_addr: String::new(),
            datapath_down: false,
        }],
        addresses: vec![],
        short_id: short_id_candidate(me, 0),
        signature: None,
        networks: Vec::new(),
        networks_in_use: Vec::new(),
        rings: Vec::new(),
        wants_space: Vec::new(),
    };
    let mut forged = PeerEntry {
        version: victim.version + 1,
        links: vec![Link {
            peer: me.0,
            observed_addr: String::new(),
            datapath_down: false,
        }],
        addresses: vec![],
        ..victim.clone()
    };
    let attacks: Vec<(&str, PeerEntry)> = vec![
        ("forged_keeping_victims_signature", forged.clone()),
        ("forged_signed_by_us", {
            signer.sign(&mut forged);
            forged.clone()
        }),
        (
            "victim_at_max_version",
            PeerEntry {
                version: u64::MAX,
                ..victim.clone()
            },
        ),
        (
            "own_at_max_version",
            sign(PeerEntry {
                version: u64::MAX,
                ..own.clone()
            }),
        ),
        (
            "own_with_flood_id",
            sign(PeerEntry {
                short_id: SHORT_ID_FLOOD,
                ..own.clone()
            }),
        ),
        (
            "own_with_victims_short_id",
            sign(PeerEntry {
                short_id: victim.short_id,
                ..own.clone()
            }),
        ),
        (
            "own_oversize",
            sign(PeerEntry {
                name: "x".repeat(100_000),
                links: (0..1000u64)
                    .map(|p| Link {
                        peer: p,
                        observed_addr: "198.18.0.1:1".into(),
                        datapath_down: false,
                    })
                    .collect(),
                ..own.clone()
            }),
        ),
    ];
    let mut sent = Vec::new();
    for (what, entry) in attacks {
        session.send_gossip(update(vec![entry])).await?;
        sent.push(format!("\"{what}\""));
    }
    let done = sign(PeerEntry {
        name: "rogue-done".into(),
        version: now + 1,
        ..own
    });
    session.send_gossip(update(vec![done])).await?;
    println!(
        "{{\"me\":\"{}\",\"victim\":\"{}\",\"sent\":[{}]}}",
        me,
        PeerId(victim.id),
        sent.join(",")
    );
    // Stay a member (the peer keeps the link while the connection lives); drain its gossip.
    let until = Instant::now() + Duration::from_secs(hold);
    while let Ok(r) = tokio::time::timeout(
        until.saturating_duration_since(Instant::now()),
        session.recv_gossip(),
    )
    .await
    {
        r?;
    }
    session.close(b"rogue done").await;
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("rogue-member: {e:#}");
        std::process::exit(1);
    }
}
