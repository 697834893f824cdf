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
        let key = match read_private(&path) {
            Ok(pem) => key_from_pem(&pem).with_context(|| {
                format!(
                    "{} is not a valid key; move it away to create a new identity",
                    path.display()
                )
            })?,
            Err(e)
                if e.downcast_ref::<std::io::Error>().map(|e| e.kind())
                    == Some(std::io::ErrorKind::NotFound) =>
            {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
                    .context("generating the identity key")?;
                write_private(&path, key.serialize_pem().as_bytes())?;
                key
            }
            Err(e) => return Err(e),
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

/// The identity key in `identity.key`'s PEM text.
pub fn key_from_pem(pem: &str) -> Result<rcgen::KeyPair> {
    Ok(rcgen::KeyPair::from_pem(pem)?)
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

/// Reads a file only its owner may read: a private key that others can read is refused (as
/// ssh does) rather than used, and a symlink in its place is not followed.
fn read_private(path: &Path) -> Result<String> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            let kind = e.kind();
            anyhow::Error::new(std::io::Error::new(
                kind,
                format!("reading {}: {e}", path.display()),
            ))
        })?;
    let mode = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable or writable by other users (mode {:o}); it holds this node's \
             private key: run `chmod 600 {}` (and check who read it)",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(text)
}

/// Opens a new temporary file beside `name` in `dir`: an unpredictable name, created
/// exclusively (`O_EXCL`) and never through a symlink (`O_NOFOLLOW`), so nothing another user
/// planted in the directory is written through or truncated.
fn create_temp(dir: &Path, name: &str, mode: u32) -> std::io::Result<(PathBuf, fs::File)> {
    loop {
        let mut nonce = [0u8; 8];
        // SAFETY: getrandom writes at most the 8 bytes of our buffer.
        let got = unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), nonce.len(), 0) };
        if got != nonce.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
        let tmp = dir.join(format!(".{name}.{:016x}.tmp", u64::from_ne_bytes(nonce)));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("path without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let (tmp, mut f) = create_temp(dir, name, mode).map_err(|e| {
        anyhow::anyhow!(
            "writing {}: {e} (is the disk full or read-only?)",
            path.display()
        )
    })?;
    let result = (|| -> std::io::Result<()> {
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

    fn scratch(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mesh-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_key_others_can_read_is_refused_with_what_to_do() {
        let dir = scratch("identity-mode");
        Identity::load_or_create(&dir).unwrap();
        let key = dir.join(IDENTITY_FILE);
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", Identity::load_or_create(&dir).err().unwrap());
        assert!(
            err.contains("mode 644") && err.contains("chmod 600"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_files_are_not_written_through_planted_links() {
        let dir = scratch("state-links");
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        // What the old fixed temp name would have followed.
        std::os::unix::fs::symlink(&victim, dir.join(".peers.json.tmp")).unwrap();
        write_atomic(&dir.join("peers.json"), b"[]", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(dir.join("peers.json")).unwrap(), b"[]");
        let mode = fs::metadata(dir.join("peers.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temp file is left, and the planted link is untouched.
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        // A symlink where the identity key should be is not followed.
        std::os::unix::fs::symlink(&victim, dir.join(IDENTITY_FILE)).unwrap();
        let err = format!("{:#}", Identity::load_or_create(&dir).err().unwrap());
        assert!(err.contains(IDENTITY_FILE), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

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
