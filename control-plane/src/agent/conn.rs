//! One control connection: the handshake (hello, then the password check), then pumping gossip
//! frames between the QUIC stream and the agent.

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow, bail};
use mesh_gossip::PeerId;
use mesh_proto::v1::{AuthKind, GossipMessage, Hello, PeerFrame, peer_frame};
use tokio::sync::mpsc;

use super::{Event, wire};
use crate::{
    auth::{AuthMode, DATA_EXPORTER_LABEL, EXPORTER_LABEL, Pake},
    identity,
};

/// The control protocol's version. 2: gossip entries are signed by their owners
/// (`PeerEntry.signature`); a version-1 peer's unsigned entries would all be refused, so the
/// two do not connect at all and say why. 3: entries carry the networks their owner created
/// (a version-2 peer would drop the field and find the signature wrong), and heartbeat-flagged
/// frames with a hop limit above 1 are data-path echoes (`meshctl ping`), which a version-2
/// peer would read as heartbeats.
pub const PROTOCOL: u32 = 3;

/// Application close codes, so the other side can say why it was refused.
pub mod close {
    pub const AUTH_FAILED: u32 = 1;
    pub const AUTH_MISMATCH: u32 = 2;
    pub const PROTOCOL: u32 = 3;
    pub const DUPLICATE: u32 = 4;
    pub const SHUTDOWN: u32 = 5;
    pub const SELF: u32 = 6;
    pub const FORGOTTEN: u32 = 7;
}

/// What both ends of a connection need to know about this node.
pub struct Local {
    pub id: PeerId,
    pub name: String,
    pub listen_port: u16,
    pub auth: AuthMode,
    /// This node runs the kernel datapath (told to peers in the hello).
    pub kernel_datapath: bool,
    /// Peers seen at addresses inside these may get plaintext links (`--trusted-subnets`).
    pub trusted_subnets: Vec<ipnet::IpNet>,
    /// Our data path's UDP port, told to peers in the hello.
    pub data_port: u16,
    /// We seal with AES-256-GCM where the peer does too (told in the hello; `--cipher`).
    pub offers_aes: bool,
}

impl Local {
    /// Whether a peer seen at `ip` is inside our trusted subnets.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_subnets.iter().any(|n| n.contains(&ip))
    }
}

/// A refusal that should be reported as an authentication problem (not retried quietly).
#[derive(Debug)]
pub struct AuthRefused(pub String);

impl std::fmt::Display for AuthRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthRefused {}

/// An authenticated connection, ready for gossip.
pub struct Established {
    pub peer: PeerId,
    pub hello: Hello,
    /// The data path's secret for this link; none when the mesh runs without authentication.
    /// Moved into the data path when the link is added; wiped when dropped.
    pub data_secret: Option<crate::switch::seal::LinkSecret>,
    /// What the link's data frames are sealed with, when they are.
    pub cipher: crate::switch::seal::Cipher,
    pub i_dialed: bool,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

fn refuse(conn: &quinn::Connection, code: u32, why: &str) -> anyhow::Error {
    conn.close(code.into(), why.as_bytes());
    anyhow!(AuthRefused(why.to_owned()))
}

/// Explains a connection closed by the other side in words (for logs and `meshctl peers`).
pub fn describe_close(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason);
            format!("peer closed the connection: {reason}")
        }
        quinn::ConnectionError::TimedOut => "no response (timed out)".into(),
        other => other.to_string(),
    }
}

/// Runs the handshake on a new connection. `dialer` is true on the side that opened it.
pub async fn handshake(
    conn: &quinn::Connection,
    dialer: bool,
    local: &Local,
) -> Result<Established> {
    let certs = conn
        .peer_identity()
        .and_then(|i| {
            i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .context("peer presented no certificate")?;
    let peer = identity::peer_id_of_cert(certs.first().context("empty certificate chain")?)?;
    if peer == local.id {
        conn.close(close::SELF.into(), b"connected to itself");
        bail!("this address is this node itself");
    }
    let (mut send, mut recv) = if dialer {
        conn.open_bi().await.context("opening the control stream")?
    } else {
        conn.accept_bi()
            .await
            .context("waiting for the control stream")?
    };
    let hello = Hello {
        protocol: PROTOCOL,
        name: local.name.clone(),
        auth: local.auth.kind() as i32,
        listen_port: local.listen_port.into(),
        kernel_datapath: local.kernel_datapath,
        trusts_you: local.trusts(conn.remote_address().ip()),
        data_port: local.data_port.into(),
        aes_256_gcm: local.offers_aes,
    };
    wire::write(&mut send, &frame(peer_frame::Kind::Hello(hello))).await?;
    let mut theirs = match wire::read_capped(&mut recv, wire::MAX_HANDSHAKE_FRAME)
        .await?
        .kind
    {
        Some(peer_frame::Kind::Hello(h)) => h,
        _ => {
            conn.close(close::PROTOCOL.into(), b"expected hello");
            bail!("peer did not start with a hello");
        }
    };
    // The name is the peer's own choice: it goes into logs and `meshctl` output escaped and
    // cut to size.
    theirs.name = crate::text::shown(&theirs.name);
    if theirs.protocol != PROTOCOL {
        return Err(refuse(
            conn,
            close::PROTOCOL,
            &format!("protocol version {} is not {PROTOCOL}", theirs.protocol),
        ));
    }
    if theirs.auth != local.auth.kind() as i32 {
        let kind = AuthKind::try_from(theirs.auth).map_or("unknown", |k| match k {
            AuthKind::AuthNone => "no authentication",
            AuthKind::AuthPassword => "a password",
            AuthKind::AuthCertificates => "certificates",
        });
        return Err(refuse(
            conn,
            close::AUTH_MISMATCH,
            &format!(
                "authentication mismatch: peer {} uses {kind}, this node uses {}",
                theirs.name,
                local.auth.describe()
            ),
        ));
    }
    let mut pake_key = None;
    if let AuthMode::Password(password) = &local.auth {
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| anyhow!("TLS exporter unavailable"))?;
        let (pake, msg) = Pake::start(password, exporter);
        wire::write(&mut send, &frame(peer_frame::Kind::Pake(msg))).await?;
        let their_msg = match wire::read_capped(&mut recv, wire::MAX_HANDSHAKE_FRAME)
            .await?
            .kind
        {
            Some(peer_frame::Kind::Pake(m)) => m,
            _ => return Err(refuse(conn, close::PROTOCOL, "expected a PAKE message")),
        };
        let (key, confirm) = pake.finish(&their_msg, dialer)?;
        wire::write(&mut send, &frame(peer_frame::Kind::PakeConfirm(confirm))).await?;
        let their_confirm = match wire::read_capped(&mut recv, wire::MAX_HANDSHAKE_FRAME)
            .await?
            .kind
        {
            Some(peer_frame::Kind::PakeConfirm(c)) => c,
            _ => return Err(refuse(conn, close::PROTOCOL, "expected a key confirmation")),
        };
        if !Pake::verify(&key, &exporter, dialer, &their_confirm) {
            return Err(refuse(
                conn,
                close::AUTH_FAILED,
                &format!(
                    "wrong password (peer {} failed the password check)",
                    theirs.name
                ),
            ));
        }
        pake_key = Some(key);
    }
    // Sealed unless both ends trust each other's address (the hellos are covered by the
    // authenticated handshake: a changed one fails the password check or the TLS one).
    let plaintext = local.trusts(conn.remote_address().ip()) && theirs.trusts_you;
    let data_secret = match local.auth {
        AuthMode::Insecure => None,
        _ if plaintext => None,
        _ => {
            let mut exporter = [0u8; 32];
            conn.export_keying_material(&mut exporter, DATA_EXPORTER_LABEL, b"")
                .map_err(|_| anyhow!("TLS exporter unavailable"))?;
            Some(crate::switch::seal::LinkSecret(crate::auth::data_secret(
                &exporter,
                pake_key.as_deref(),
            )))
        }
    };
    let cipher = crate::switch::seal::Cipher::for_link(local.offers_aes, theirs.aes_256_gcm);
    Ok(Established {
        peer,
        hello: theirs,
        data_secret,
        cipher,
        i_dialed: dialer,
        send,
        recv,
    })
}

fn frame(kind: peer_frame::Kind) -> PeerFrame {
    PeerFrame { kind: Some(kind) }
}

/// After the handshake: forwards received gossip to the agent and sends what the agent queues.
/// Returns when either side closes.
pub async fn pump(
    conn: quinn::Connection,
    est: Established,
    conn_id: u64,
    events: mpsc::UnboundedSender<Event>,
    mut outgoing: mpsc::UnboundedReceiver<GossipMessage>,
) {
    let Established {
        peer,
        mut send,
        mut recv,
        ..
    } = est;
    let reader_events = events.clone();
    let reader = async move {
        loop {
            match wire::read(&mut recv).await {
                Ok(PeerFrame {
                    kind: Some(peer_frame::Kind::Gossip(msg)),
                }) => {
                    if reader_events
                        .send(Event::Gossip { peer, conn_id, msg })
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Ok(_) => return Err(anyhow!("unexpected frame after the handshake")),
                Err(e) => return Err(e),
            }
        }
    };
    let writer = async move {
        while let Some(msg) = outgoing.recv().await {
            wire::write(&mut send, &frame(peer_frame::Kind::Gossip(msg))).await?;
        }
        Ok::<(), anyhow::Error>(())
    };
    let result = tokio::select! {
        r = reader => r,
        r = writer => r,
        e = conn.closed() => Err(anyhow!(describe_close(&e))),
    };
    let reason = match (result, conn.close_reason()) {
        (_, Some(e)) => describe_close(&e),
        (Err(e), None) => {
            conn.close(close::PROTOCOL.into(), b"protocol error");
            format!("{e:#}")
        }
        (Ok(()), None) => "closed".into(),
    };
    let _ = events.send(Event::Closed {
        peer,
        conn_id,
        reason,
    });
}

/// Resolves "host[:port]" (default port `default_port`) to one socket address.
pub async fn resolve(target: &str, default_port: u16) -> Result<SocketAddr> {
    let with_port = if target.parse::<SocketAddr>().is_ok() || has_port(target) {
        target.to_owned()
    } else {
        format!("{target}:{default_port}")
    };
    tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("cannot resolve {target:?}"))?
        .next()
        .with_context(|| format!("{target:?} resolves to no address"))
}

fn has_port(target: &str) -> bool {
    // "host:port" but not a bare IPv6 address.
    match target.rsplit_once(':') {
        Some((host, port)) => !host.contains(':') && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// Checks the syntax of a peer argument ("host", "host:port", "ip", "ip:port", "[v6]:port").
pub fn validate_target(target: &str) -> Result<()> {
    if target.is_empty() || target.contains(char::is_whitespace) {
        bail!("{target:?} is not a peer address; use host[:port]");
    }
    if target.parse::<SocketAddr>().is_ok() || target.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let host = match target.rsplit_once(':') {
        Some((h, p)) => {
            p.parse::<u16>()
                .map_err(|_| anyhow!("{target:?}: port {p:?} is not a number 0-65535"))?;
            h
        }
        None => target,
    };
    let ok = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !ok {
        bail!("{target:?} is not a peer address; use host[:port]");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_target;

    #[test]
    fn peer_arguments_are_checked() {
        for ok in [
            "198.18.0.2",
            "198.18.0.2:6783",
            "node-1",
            "node1.example:7000",
            "[fd00::1]:6783",
        ] {
            validate_target(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "a b", "host:port", "host:70000", "-:", "a..b", "::1]:x"] {
            assert!(validate_target(bad).is_err(), "{bad} accepted");
        }
    }
}
