//! An outsider flooding meshd's control port, for tests: `quic-flood TARGET SLOTS SECONDS
//! BIG_HELLOS`. SLOTS tasks each open a QUIC connection (TLS completes: in password mode anyone
//! may get that far), never authenticate, and open a new one when meshd closes theirs, for
//! SECONDS. BIG_HELLOS of them also announce a maximal hello frame (8 MiB) and push bytes at
//! it. Prints one line: `attempts=A connected=C refused=R` (refused: the QUIC handshake
//! itself was turned away or timed out).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mesh::auth::AuthMode;

#[derive(Default)]
struct Stats {
    attempts: AtomicU64,
    connected: AtomicU64,
    refused: AtomicU64,
}

async fn slot(
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    target: SocketAddr,
    until: Instant,
    big_hello: bool,
    stats: Arc<Stats>,
) {
    while Instant::now() < until {
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let connecting = match endpoint.connect_with(client.clone(), target, "mesh") {
            Ok(c) => c,
            Err(_) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let conn = match tokio::time::timeout(Duration::from_secs(3), connecting).await {
            Ok(Ok(c)) => c,
            _ => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        stats.connected.fetch_add(1, Ordering::Relaxed);
        if big_hello && let Ok((mut send, _recv)) = conn.open_bi().await {
            // A varint length of 8 MiB, then as many bytes as flow control lets through.
            let _ = send.write_all(&[0x80, 0x80, 0x80, 0x04]).await;
            let junk = vec![0x5a_u8; 64 * 1024];
            while Instant::now() < until {
                let write = tokio::time::timeout(Duration::from_secs(1), send.write_all(&junk));
                if !matches!(write.await, Ok(Ok(()))) {
                    break;
                }
            }
        }
        let remaining = until.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(remaining, conn.closed()).await;
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 5,
        "usage: quic-flood TARGET SLOTS SECONDS BIG_HELLOS"
    );
    let target: SocketAddr = args[1].parse()?;
    let slots: usize = args[2].parse()?;
    let seconds: u64 = args[3].parse()?;
    let big: usize = args[4].parse()?;
    // A throwaway identity: the flood is an outsider that completes TLS and stops there.
    let dir = std::env::temp_dir().join(format!("quic-flood-{}", std::process::id()));
    let id = mesh::identity::Identity::load_or_create(&dir)?;
    let client = mesh::auth::client_config(
        &AuthMode::Password(b"not the password".to_vec()),
        vec![id.cert.clone()],
        id.private_key(),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stats = Arc::new(Stats::default());
    rt.block_on(async {
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
        let until = Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..slots)
            .map(|i| {
                tokio::spawn(slot(
                    endpoint.clone(),
                    client.clone(),
                    target,
                    until,
                    i < big,
                    stats.clone(),
                ))
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        anyhow::Ok(())
    })?;
    println!(
        "attempts={} connected={} refused={}",
        stats.attempts.load(Ordering::Relaxed),
        stats.connected.load(Ordering::Relaxed),
        stats.refused.load(Ordering::Relaxed)
    );
    Ok(())
}
