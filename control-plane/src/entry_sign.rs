//! Gossip entries signed with the node's own key: the Ed25519 identity key in password and
//! insecure mode, the CA-issued key in certificate mode (whatever TLS presents). The peer id is
//! derived from that key's public half (`identity::peer_id_of_spki`), so an entry carries the
//! public key, and a receiver checks that it hashes to the entry's id before it checks the
//! signature: no member can make a version of another member's entry that others accept.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mesh_gossip::{EntryAuth, sign::signed_message};
use mesh_proto::v1::{EntrySignature, PeerEntry};
use rustls::{
    SignatureScheme,
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer},
    sign::SigningKey,
};

use crate::identity::peer_id_of_spki;

/// Schemes an entry may be signed with: TLS 1.3's, which are what a mesh key can do.
const SCHEMES: [SignatureScheme; 4] = [
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
];

pub struct EntrySigner {
    key: Arc<dyn SigningKey>,
    scheme: SignatureScheme,
    /// Our SubjectPublicKeyInfo, as the peer id is derived from it.
    public_key: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for EntrySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntrySigner({:?})", self.scheme)
    }
}

impl EntrySigner {
    /// A signer for the key TLS presents: `cert` is the node's (end-entity) certificate, `key`
    /// its private key.
    pub fn new(cert: &CertificateDer<'_>, key: &PrivateKeyDer<'_>) -> Result<EntrySigner> {
        let provider = rustls::crypto::ring::default_provider();
        let key = provider
            .key_provider
            .load_private_key(key.clone_key())
            .context("loading the node's key to sign gossip with")?;
        let Some(scheme) = key.choose_scheme(&SCHEMES).map(|s| s.scheme()) else {
            bail!(
                "the node's key ({:?}) cannot sign with a TLS 1.3 scheme (Ed25519, ECDSA P-256 \
                 or P-384, RSA-PSS)",
                key.algorithm()
            );
        };
        let public_key = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| anyhow::anyhow!("the node's certificate does not parse: {e:?}"))?
            .subject_public_key_info()
            .as_ref()
            .to_vec();
        if let Some(own) = key.public_key()
            && peer_id_of_spki(own.as_ref()) != peer_id_of_spki(&public_key)
        {
            bail!("the private key does not belong to the node's certificate (--cert, --key)");
        }
        let signer = EntrySigner {
            key,
            scheme,
            public_key,
            algorithms: provider.signature_verification_algorithms,
        };
        // Prove the pair works once, so a bad key fails at start and not on every entry.
        let mut probe = PeerEntry {
            id: peer_id_of_spki(&signer.public_key).0,
            ..PeerEntry::default()
        };
        signer.sign(&mut probe);
        if !signer.verify(&probe) {
            bail!(
                "a gossip entry signed with the node's key does not verify against its certificate"
            );
        }
        Ok(signer)
    }
}

impl EntryAuth for EntrySigner {
    fn sign(&self, entry: &mut PeerEntry) {
        let signer = self
            .key
            .choose_scheme(&[self.scheme])
            .expect("the scheme was chosen from this key");
        // ring's signers fail only on a broken key, which `new` ruled out.
        let value = signer
            .sign(&signed_message(entry))
            .expect("signing with a key that signed before");
        entry.signature = Some(EntrySignature {
            public_key: self.public_key.clone(),
            scheme: u32::from(u16::from(self.scheme)),
            value,
        });
    }

    fn verify(&self, entry: &PeerEntry) -> bool {
        let Some(sig) = &entry.signature else {
            return false;
        };
        if peer_id_of_spki(&sig.public_key).0 != entry.id {
            return false;
        }
        let Ok(code) = u16::try_from(sig.scheme) else {
            return false;
        };
        let scheme = SignatureScheme::from(code);
        if !SCHEMES.contains(&scheme) {
            return false;
        }
        let Some((_, algs)) = self.algorithms.mapping.iter().find(|(s, _)| *s == scheme) else {
            return false;
        };
        let spki = SubjectPublicKeyInfoDer::from(sig.public_key.as_slice());
        let Ok(key) = webpki::RawPublicKeyEntity::try_from(&spki) else {
            return false;
        };
        let msg = signed_message(entry);
        algs.iter()
            .any(|alg| key.verify_signature(*alg, &msg, &sig.value).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn node(label: &str) -> (Identity, EntrySigner) {
        let dir = std::env::temp_dir().join(format!("mesh-sign-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ident = Identity::load_or_create(&dir).unwrap();
        let signer = EntrySigner::new(&ident.cert, &ident.private_key()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (ident, signer)
    }

    #[test]
    fn only_the_owner_can_sign_its_entry() {
        let (a, sa) = node("a");
        let (b, sb) = node("b");
        let mut e = PeerEntry {
            id: a.id.0,
            name: "a".into(),
            version: 5,
            short_id: 1,
            ..PeerEntry::default()
        };
        sa.sign(&mut e);
        assert!(sb.verify(&e), "anyone can check it");
        assert!(sa.verify(&e));

        let mut changed = e.clone();
        changed.version = u64::MAX;
        assert!(!sb.verify(&changed), "a changed entry fails");

        let mut resigned = changed.clone();
        sb.sign(&mut resigned);
        assert!(!sa.verify(&resigned), "b's key does not hash to a's id");

        let mut as_b = changed.clone();
        as_b.id = b.id.0;
        sb.sign(&mut as_b);
        assert!(sa.verify(&as_b), "b may say the same about itself");

        let mut unsigned = e.clone();
        unsigned.signature = None;
        assert!(!sa.verify(&unsigned));

        let mut odd_scheme = e.clone();
        odd_scheme.signature.as_mut().unwrap().scheme = 0x0401; // RSA PKCS#1: not TLS 1.3's
        assert!(!sa.verify(&odd_scheme));
    }

    #[test]
    fn an_entry_signed_from_the_documented_format_alone_verifies() {
        // fuzz/corpus/peer_frame/gossip_update_signed was made by a few lines of Python
        // (`cryptography`'s Ed25519) from docs/wire-format.md, "Signed entries": another
        // implementation of the format, and the fuzzer's seed of a valid signature.
        use mesh_proto::{
            Message,
            v1::{PeerFrame, gossip_message, peer_frame},
        };
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/corpus/peer_frame/gossip_update_signed"
        );
        let frame = PeerFrame::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
        let Some(peer_frame::Kind::Gossip(g)) = frame.kind else {
            panic!("not gossip")
        };
        let Some(gossip_message::Kind::Update(u)) = g.kind else {
            panic!("not an update")
        };
        let (_, verifier) = node("doc");
        let mut e = u.entries[0].clone();
        assert!(verifier.verify(&e));
        e.name.push('!');
        assert!(!verifier.verify(&e));
    }

    #[test]
    fn certificate_mode_keys_sign_too() {
        // An ECDSA P-256 node certificate issued by a CA, as `--cert/--key` would give.
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = rcgen::CertificateParams::new(vec![]).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let pkcs8 = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signer = EntrySigner::new(cert.der(), &pkcs8).unwrap();
        let mut e = PeerEntry {
            id: crate::identity::peer_id_of_cert(cert.der()).unwrap().0,
            ..PeerEntry::default()
        };
        signer.sign(&mut e);
        assert!(signer.verify(&e));
        assert_eq!(
            e.signature.unwrap().scheme,
            u32::from(u16::from(SignatureScheme::ECDSA_NISTP256_SHA256))
        );
        // The wrong key for the certificate is refused at start, with what to check.
        let other = PrivateKeyDer::Pkcs8(
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .serialize_der()
                .into(),
        );
        let err = format!("{:#}", EntrySigner::new(cert.der(), &other).unwrap_err());
        assert!(err.contains("does not belong"), "{err}");
    }
}
