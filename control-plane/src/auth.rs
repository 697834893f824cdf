//! Who may join: TLS configuration for the QUIC control connections, and the password check.
//!
//! - Password mode: TLS authenticates each side's *key* (self-signed certificates, the
//!   handshake signature is verified), and the password is checked afterwards with SPAKE2 over
//!   the encrypted connection, bound to this TLS session by the TLS exporter, followed by key
//!   confirmation. An eavesdropper sees nothing of the PAKE (it is inside TLS), and an active
//!   attacker gets one online guess per connection: nothing allows an offline dictionary attack.
//!   A man in the middle has two TLS sessions with different exporters, so the PAKE fails.
//! - Certificate mode: both sides present certificates issued by the mesh CA (checked by
//!   webpki; names are not checked, peers are dialled by address).
//! - Insecure: no authentication at all; only when the operator asked for it.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hmac::{Hmac, Mac};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity as PakeIdentity, Password, Spake2};

/// ALPN of the control protocol.
pub const ALPN: &[u8] = b"mesh/1";
/// Label for the TLS exporter that binds the PAKE to the TLS session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-mesh-spake2-v1";
/// Label for the TLS exporter the data path's keys are derived from.
pub const DATA_EXPORTER_LABEL: &[u8] = b"EXPORTER-mesh-data-v1";

/// How this node authenticates peers.
pub enum AuthMode {
    Password(Vec<u8>),
    Certificates {
        roots: Arc<RootCertStore>,
        chain: Vec<CertificateDer<'static>>,
    },
    Insecure,
}

impl AuthMode {
    pub fn describe(&self) -> &'static str {
        match self {
            AuthMode::Password(_) => "password",
            AuthMode::Certificates { .. } => "certificates",
            AuthMode::Insecure => "none (insecure)",
        }
    }

    pub fn kind(&self) -> mesh_proto::v1::AuthKind {
        use mesh_proto::v1::AuthKind;
        match self {
            AuthMode::Password(_) => AuthKind::AuthPassword,
            AuthMode::Certificates { .. } => AuthKind::AuthCertificates,
            AuthMode::Insecure => AuthKind::AuthNone,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Accepts any certificate, but still verifies that the peer holds its key (the handshake
/// signature). Used where trust comes from the PAKE, or where there is none by choice.
#[derive(Debug)]
struct AnyKey(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyKey {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used by mesh".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl ClientCertVerifier for AnyKey {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used by mesh".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The CA's verdict on a server certificate, minus the name check (peers are dialled by
/// address; the CA signature is what makes a node a member).
#[derive(Debug)]
struct CaSigned(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for CaSigned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// QUIC transport settings: keep-alives and an idle timeout short enough that a dead peer or
/// link is noticed within the 2 s the design promises. quinn restarts the idle timer on every
/// packet received and again on the first ack-eliciting packet sent after one (a keep-alive at
/// the latest), so a dead peer is noticed at most keep-alive + idle timeout = 1.4 s after the
/// last packet it sent. Losses do not end a connection early: an unanswered keep-alive is
/// probed again within tens of milliseconds (the loss-detection timer), so only about a second
/// without a single packet through does. Each keep-alive and its acknowledgement wake both
/// ends, on every link: at 200 ms they were most of an idle meshd's CPU (24 meshd in one lab,
/// 23 links each: 1.72% CPU each at 200 ms, 1.03% at 400 ms).
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_millis(400)));
    // One control stream per connection, and small buffers: what a connection that never
    // authenticates can make us hold is bounded (quinn's defaults allow 100 streams of
    // 1.25 MB). Gossip moves well within these.
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((256u32 * 1024).into());
    t.receive_window((512u32 * 1024).into());
    t.send_window(2 * 1024 * 1024);
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(std::time::Duration::from_millis(1000))
            .expect("small timeout is valid"),
    ));
    Arc::new(t)
}

/// Server (accepting) side configuration.
pub fn server_config(
    mode: &AuthMode,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ServerConfig> {
    let verifier: Arc<dyn ClientCertVerifier> = match mode {
        AuthMode::Certificates { roots, .. } => {
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .context("building the CA client verifier")?
        }
        _ => Arc::new(AnyKey(algorithms())),
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the node certificate and key do not match")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// Client (dialling) side configuration.
pub fn client_config(
    mode: &AuthMode,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<quinn::ClientConfig> {
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        AuthMode::Certificates { roots, .. } => Arc::new(CaSigned(
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .context("building the CA server verifier")?,
        )),
        _ => Arc::new(AnyKey(algorithms())),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .context("the node certificate and key do not match")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// Loads the CA, node certificate chain and key for certificate mode.
pub fn load_certificates(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(AuthMode, PrivateKeyDer<'static>)> {
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut roots = RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut read(ca)?.as_slice()) {
        roots
            .add(c.with_context(|| format!("{} is not PEM certificates", ca.display()))?)
            .with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("{} contains no certificate", ca.display());
    }
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not PEM certificates", cert.display()))?;
    if chain.is_empty() {
        bail!("{} contains no certificate", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .with_context(|| format!("{} is not a PEM private key", key.display()))?
        .with_context(|| format!("{} contains no private key", key.display()))?;
    Ok((
        AuthMode::Certificates {
            roots: Arc::new(roots),
            chain,
        },
        key,
    ))
}

/// One side of the password check.
pub struct Pake {
    state: Spake2<Ed25519Group>,
    exporter: [u8; 32],
}

type HmacSha256 = Hmac<Sha256>;

impl Pake {
    /// Starts the exchange; returns the message to send. `exporter` is the TLS exporter
    /// (EXPORTER_LABEL) of this connection, the same on both ends of one TLS session.
    pub fn start(password: &[u8], exporter: [u8; 32]) -> (Pake, Vec<u8>) {
        let (state, msg) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(password),
            &PakeIdentity::new(&exporter),
        );
        (Pake { state, exporter }, msg)
    }

    /// Finishes with the peer's message; returns the key and our confirmation to send.
    pub fn finish(self, theirs: &[u8], i_dialed: bool) -> Result<(Vec<u8>, Vec<u8>)> {
        let key = self
            .state
            .finish(theirs)
            .map_err(|e| anyhow::anyhow!("malformed PAKE message: {e:?}"))?;
        let confirm = confirmation(&key, &self.exporter, i_dialed);
        Ok((key, confirm))
    }

    /// Checks the peer's confirmation (computed with the opposite role).
    pub fn verify(key: &[u8], exporter: &[u8; 32], i_dialed: bool, theirs: &[u8]) -> bool {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(b"mesh pake confirm");
        mac.update(&[u8::from(!i_dialed)]);
        mac.update(exporter);
        mac.verify_slice(theirs).is_ok()
    }
}

/// The data path's link secret: the connection's data exporter, bound to the password when
/// there is one (so a TLS session alone, without the password check, yields nothing useful).
pub fn data_secret(exporter: &[u8; 32], pake_key: Option<&[u8]>) -> [u8; 32] {
    match pake_key {
        None => *exporter,
        Some(key) => {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(b"mesh data secret");
            mac.update(exporter);
            mac.finalize().into_bytes().into()
        }
    }
}

fn confirmation(key: &[u8], exporter: &[u8; 32], dialer: bool) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"mesh pake confirm");
    mac.update(&[u8::from(dialer)]);
    mac.update(exporter);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(pa: &[u8], pb: &[u8], ea: [u8; 32], eb: [u8; 32]) -> (bool, bool) {
        let (a, ma) = Pake::start(pa, ea);
        let (b, mb) = Pake::start(pb, eb);
        let (ka, ca) = a.finish(&mb, true).unwrap();
        let (kb, cb) = b.finish(&ma, false).unwrap();
        (
            Pake::verify(&ka, &ea, true, &cb),
            Pake::verify(&kb, &eb, false, &ca),
        )
    }

    #[test]
    fn same_password_same_session_confirms_both_ways() {
        assert_eq!(
            exchange(b"s3cret", b"s3cret", [7; 32], [7; 32]),
            (true, true)
        );
    }

    #[test]
    fn wrong_password_fails_on_both_sides() {
        assert_eq!(
            exchange(b"s3cret", b"guess", [7; 32], [7; 32]),
            (false, false)
        );
    }

    #[test]
    fn different_tls_sessions_fail_even_with_the_right_password() {
        // A man in the middle terminates two TLS sessions: the exporters differ.
        assert_eq!(
            exchange(b"s3cret", b"s3cret", [7; 32], [8; 32]),
            (false, false)
        );
    }

    #[test]
    fn a_replayed_confirmation_of_the_other_role_is_rejected() {
        let e = [1; 32];
        let (a, ma) = Pake::start(b"pw", e);
        let (b, mb) = Pake::start(b"pw", e);
        let (ka, ca) = a.finish(&mb, true).unwrap();
        let (_kb, _cb) = b.finish(&ma, false).unwrap();
        // Reflecting a's own confirmation back to it must not pass.
        assert!(!Pake::verify(&ka, &e, true, &ca));
    }
}
