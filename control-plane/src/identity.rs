//! A node's identity: an Ed25519 key pair kept in the state dir, the self-signed certificate
//! TLS presents for it, and the peer id derived from its public key.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use mesh_gossip::PeerId;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

pub const IDENTITY_FILE: &str = "identity.key";

/// The key pair and what is derived from it.
pub struct Identity {
    pub id: PeerId,
    key_pkcs8: Vec<u8>,
    pub cert: CertificateDer<'static>,
}

impl Identity {
    /// Loads the key from `<state_dir>/identity.key`, creating it (mode 0600) on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity> {
        let path = state_dir.join(IDENTITY_FILE);
        let key = match fs::read_to_string(&path) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem).with_context(|| {
                format!(
                    "{} is not a valid key; move it away to create a new identity",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .context("generating the identity key")?;
                write_private(&path, key.serialize_pem().as_bytes())?;
                key
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let id = peer_id_of_spki(&key.public_key_der());
        let cert = rcgen::CertificateParams::new(vec!["mesh".to_string()])
            .context("certificate parameters")?
            .self_signed(&key)
            .context("self-signing the identity certificate")?;
        Ok(Identity {
            id,
            key_pkcs8: key.serialize_der(),
            cert: cert.der().clone(),
        })
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// The peer id for a public key: the first 8 bytes of SHA-256 over its SubjectPublicKeyInfo.
pub fn peer_id_of_spki(spki_der: &[u8]) -> PeerId {
    let h = Sha256::digest(spki_der);
    PeerId(u64::from_be_bytes(
        h[..8].try_into().expect("SHA-256 is 32 bytes"),
    ))
}

/// The peer id of the holder of a certificate's key.
pub fn peer_id_of_cert(cert: &CertificateDer<'_>) -> Result<PeerId> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| anyhow::anyhow!("peer certificate does not parse: {e:?}"))?;
    Ok(peer_id_of_spki(parsed.subject_public_key_info().as_ref()))
}

/// Writes `bytes` to `path` with mode 0600, atomically (temp file, fsync, rename): a crash or a
/// full disk leaves either the old file or none, never half a key.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes, 0o600)
}

pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("path without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        bail!(
            "writing {}: {e} (is the disk full or read-only?)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_once_and_stable() {
        let dir = std::env::temp_dir().join(format!("mesh-identity-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let a = Identity::load_or_create(&dir).unwrap();
        let b = Identity::load_or_create(&dir).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(peer_id_of_cert(&a.cert).unwrap(), a.id);
        let mode = fs::metadata(dir.join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }
}
