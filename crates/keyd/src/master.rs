//! The master key that encrypts signing secrets at rest (AES-256-GCM), kept outside the
//! database: a file (mode 0600) or the `TOLLGATE_MASTER_KEYS` environment variable.
//!
//! The format is one key per line, `<version>:<64 hex digits>`; `#` starts a comment. The
//! highest version encrypts; every listed version decrypts. Rotation adds a version and
//! re-encrypts every stored secret under it (`tollgate-keyd rotate-master-key`, or at startup
//! whenever rows under an older version are found).

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::error::{Error, Result};
use crate::files::{read_private, write_private};
use crate::secrets::random_bytes;

/// A secret encrypted under one master-key version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub version: u32,
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
}

/// The master keys by version. `Debug` shows only the versions.
#[derive(Clone)]
pub struct MasterKeys {
    keys: Vec<(u32, [u8; 32])>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let versions: Vec<u32> = self.keys.iter().map(|(v, _)| *v).collect();
        write!(f, "MasterKeys(versions {versions:?}, <redacted>)")
    }
}

/// Additional authenticated data: binds a ciphertext to its key id, so rows cannot be swapped.
fn aad(key_id: &str, version: u32) -> Vec<u8> {
    format!("tollgate.signing.v1|{key_id}|{version}").into_bytes()
}

impl MasterKeys {
    /// Parses the key-file format.
    pub fn parse(text: &str) -> Result<Self> {
        let mut keys: Vec<(u32, [u8; 32])> = Vec::new();
        for (n, line) in text.split(['\n', ',']).enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| Error::Internal(format!("master key entry {}: {why}", n + 1));
            let (version, hex_key) = line.split_once(':').ok_or_else(|| bad("expected <version>:<hex>"))?;
            let version: u32 = version.trim().parse().map_err(|_| bad("version is not a number"))?;
            if version == 0 {
                return Err(bad("versions start at 1"));
            }
            let bytes = hex::decode(hex_key.trim()).map_err(|_| bad("key is not hex"))?;
            let key: [u8; 32] = bytes.try_into().map_err(|_| bad("key must be 32 bytes (64 hex digits)"))?;
            if keys.iter().any(|(v, _)| *v == version) {
                return Err(bad("version listed twice"));
            }
            keys.push((version, key));
        }
        if keys.is_empty() {
            return Err(Error::Internal("master key: no keys given".to_owned()));
        }
        keys.sort_by_key(|(v, _)| *v);
        Ok(Self { keys })
    }

    /// Serializes to the key-file format.
    pub fn to_text(&self) -> String {
        let mut out =
            String::from("# Tollgate master keys: <version>:<hex>. The highest version encrypts.\n");
        for (version, key) in &self.keys {
            out.push_str(&format!("{version}:{}\n", hex::encode(key)));
        }
        out
    }

    /// Reads the key file (made private if others can read it), creating it with one fresh key
    /// (version 1, mode 0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match read_private(path)? {
            Some(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| {
                    Error::Internal(format!("master key file {} is not UTF-8", path.display()))
                })?;
                Self::parse(&text)
                    .map_err(|e| Error::Internal(format!("master key file {}: {e}", path.display())))
            }
            None => {
                let keys = Self { keys: vec![(1, random_bytes::<32>()?)] };
                write_private(path, keys.to_text().as_bytes())?;
                tracing::info!(path = %path.display(), "generated a new master key");
                Ok(keys)
            }
        }
    }

    /// The version that encrypts.
    pub fn current_version(&self) -> u32 {
        self.keys.last().map_or(0, |(v, _)| *v)
    }

    /// A new set with one more version (a fresh random key) that becomes current.
    pub fn with_new_version(&self) -> Result<Self> {
        let mut keys = self.keys.clone();
        keys.push((self.current_version() + 1, random_bytes::<32>()?));
        Ok(Self { keys })
    }

    fn cipher(&self, version: u32) -> Result<Aes256Gcm> {
        let (_, key) = self
            .keys
            .iter()
            .find(|(v, _)| *v == version)
            .ok_or_else(|| Error::Internal(format!("master key version {version} is not configured")))?;
        Aes256Gcm::new_from_slice(key).map_err(|e| Error::internal("master key", e))
    }

    /// Encrypts a secret of `key_id` under the current version.
    pub fn seal(&self, key_id: &str, plaintext: &[u8]) -> Result<Sealed> {
        let version = self.current_version();
        let nonce = random_bytes::<12>()?;
        let ciphertext = self
            .cipher(version)?
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &aad(key_id, version) })
            .map_err(|_| Error::Internal("encrypting a signing secret failed".to_owned()))?;
        Ok(Sealed { version, nonce, ciphertext })
    }

    /// Decrypts a secret of `key_id`.
    pub fn open(&self, key_id: &str, sealed: &Sealed) -> Result<Vec<u8>> {
        self.cipher(sealed.version)?
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload { msg: &sealed.ciphertext, aad: &aad(key_id, sealed.version) },
            )
            .map_err(|_| Error::Internal(format!("signing secret of {key_id} does not decrypt")))
    }

    /// Writes the key set to `path` whole or not at all (mode 0600).
    pub fn store(&self, path: &Path) -> Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = std::path::PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, self.to_text().as_bytes())?;
        std::fs::rename(&tmp, path).map_err(|e| Error::internal(&format!("replacing {}", path.display()), e))
    }
}

/// Re-encrypts every stored secret that is not under the current version: signing secrets and
/// webhook endpoint secrets (current and previous). Returns how many.
pub fn reseal_all(store: &dyn crate::store::Store, keys: &MasterKeys) -> Result<usize> {
    let current = keys.current_version();
    let mut updates = Vec::new();
    for (key_id, sealed) in store.list_sealed()? {
        if sealed.version == current {
            continue;
        }
        let plain = keys.open(&key_id, &sealed)?;
        updates.push((key_id.clone(), sealed.version, keys.seal(&key_id, &plain)?));
    }
    let mut hooks = Vec::new();
    for secret in store.list_webhook_secrets()? {
        if secret.sealed.version == current {
            continue;
        }
        let plain = keys.open(&secret.webhook_id, &secret.sealed)?;
        let sealed = keys.seal(&secret.webhook_id, &plain)?;
        hooks.push((secret.webhook_id, secret.slot, secret.sealed.version, sealed));
    }
    Ok(store.reseal(&updates)? + store.reseal_webhook_secrets(&hooks)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_bound_to_key_id_and_version() {
        let keys = MasterKeys::parse(&format!("1:{}", "11".repeat(32))).unwrap();
        let sealed = keys.seal("key_a", b"secret").unwrap();
        assert_eq!(keys.open("key_a", &sealed).unwrap(), b"secret");
        assert!(keys.open("key_b", &sealed).is_err());
        let rotated = keys.with_new_version().unwrap();
        assert_eq!(rotated.current_version(), 2);
        assert_eq!(rotated.open("key_a", &sealed).unwrap(), b"secret");
        let resealed = rotated.seal("key_a", b"secret").unwrap();
        assert_eq!(resealed.version, 2);
        assert!(keys.open("key_a", &resealed).is_err());
        assert_eq!(MasterKeys::parse(&rotated.to_text()).unwrap().current_version(), 2);
    }

    /// Webhook secrets, the current and the previous one of a rotation, are re-encrypted too:
    /// afterwards a key set without the old version opens both.
    #[test]
    fn reseal_all_re_encrypts_webhook_secrets_current_and_previous() {
        use crate::store::Store;
        use crate::webhooks::{EventType, NewWebhook, SecretSlot};
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("keys.db")).unwrap();
        let ctx = crate::model::Ctx { actor: "test".into(), now: 1_000 };
        let v1 = MasterKeys::parse(&format!("1:{}", "11".repeat(32))).unwrap();
        let hook = NewWebhook {
            id: "wh_a".into(),
            url: "https://hooks.example.com/".into(),
            events: vec![EventType::KeyCreated],
            sealed: v1.seal("wh_a", b"first").unwrap(),
        };
        store.create_webhook(&ctx, hook).unwrap();
        store.rotate_webhook_secret(&ctx, "wh_a", v1.seal("wh_a", b"second").unwrap(), 9_999).unwrap();

        let v2 = v1.with_new_version().unwrap();
        assert_eq!(reseal_all(&store, &v2).unwrap(), 2);
        assert_eq!(reseal_all(&store, &v2).unwrap(), 0, "nothing left under version 1");
        let only_v2: String =
            v2.to_text().lines().filter(|l| !l.starts_with("1:")).collect::<Vec<_>>().join("\n");
        let only_v2 = MasterKeys::parse(&only_v2).unwrap();
        let opened: Vec<(SecretSlot, u32, Vec<u8>)> = store
            .list_webhook_secrets()
            .unwrap()
            .into_iter()
            .map(|s| (s.slot, s.sealed.version, only_v2.open("wh_a", &s.sealed).unwrap()))
            .collect();
        assert_eq!(
            opened,
            [(SecretSlot::Current, 2, b"second".to_vec()), (SecretSlot::Previous, 2, b"first".to_vec())]
        );
    }

    #[test]
    fn bad_key_files_are_rejected_and_debug_redacts() {
        assert!(MasterKeys::parse("").is_err());
        assert!(MasterKeys::parse("1:abcd").is_err());
        assert!(MasterKeys::parse(&format!("0:{}", "11".repeat(32))).is_err());
        let keys = MasterKeys::parse(&format!("3:{0}\n# note\n2:{0}", "ab".repeat(32))).unwrap();
        assert_eq!(keys.current_version(), 3);
        assert!(!format!("{keys:?}").contains("abab"));
    }
}
