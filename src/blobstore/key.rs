//! [`DriveKey`]: the secret that encrypts a drive's blobs, and its file `DATA_DIR/drive/key`.
//!
//! Every Walrus blob is public, so the key is the whole of the drive's confidentiality: whoever
//! holds it reads every blob the drive ever stored, and whoever loses it loses the drive. The
//! file is treated like an ssh private key:
//! - created once, at the first mount, with mode 0600, written to a temporary file (`O_EXCL`,
//!   0600 from the start so no other user can open it even for a moment), synced, and linked
//!   into place only if no key is there yet (a second process creating a key at the same
//!   moment cannot replace the first one's), then the directory is synced;
//! - refused on load when group or others may read or write it;
//! - kept in the same text form that `walrusfs key export` prints (one line,
//!   `walrusfs-key-v1:` and base64url of the 32 key bytes and a 4-byte checksum), so the file,
//!   an exported copy and a pasted copy are one format, and a typo or a damaged file is
//!   detected rather than silently giving a different drive.
//!
//! [`KeyId`] is a short public fingerprint for logs and the drive's `blobs.key_id` column: it
//! names a key without revealing it.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::{Zeroize as _, Zeroizing};

/// Length of a drive key in bytes.
pub const KEY_LEN: usize = 32;

/// Prefix of the text form; the `v1` changes if the encoding of the text ever does.
const TEXT_PREFIX: &str = "walrusfs-key-v1:";
const CHECKSUM_LEN: usize = 4;
/// Contexts for BLAKE3's key derivation: fixed, unique to their use, never reused.
const CHECKSUM_CONTEXT: &str = "walrusfs 2025-06 drive key text checksum v1";
const KEY_ID_CONTEXT: &str = "walrusfs 2025-06 drive key id v1";

/// Errors of loading, storing and parsing drive keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the drive key file {} can be read or written by other users (mode {mode:04o}); \
         anyone who can read it can read every file of the drive. Fix it with \
         `chmod 600 {}` (and consider the key exposed if others really had access)",
        path.display(), path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("not a walrusfs drive key: {0}")]
    Malformed(String),
    #[error(
        "the drive key's checksum does not match: it was mistyped, cut short or damaged \
         (compare it character by character with the exported copy)"
    )]
    Checksum,
    #[error(
        "{} already holds a different drive key ({existing}, not {new}); blobs written with \
         it would become unreadable if it were replaced. Export it first \
         (`walrusfs key export`) if you may need it, then repeat with --force",
        path.display()
    )]
    WouldReplace {
        path: PathBuf,
        existing: KeyId,
        new: KeyId,
    },
    #[error("no randomness from the operating system to create a drive key: {0}")]
    Random(String),
}

/// A short public fingerprint of a [`DriveKey`]: 8 bytes derived from the key, shown as 16
/// hex digits. It cannot be turned back into the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The 32-byte secret of a drive. Wiped from memory when dropped; never printed by `Debug`.
pub struct DriveKey {
    bytes: [u8; KEY_LEN],
}

impl Drop for DriveKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for DriveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DriveKey({}, secret not shown)", self.id())
    }
}

impl PartialEq for DriveKey {
    fn eq(&self, other: &Self) -> bool {
        // Not constant-time: keys are compared only on import, where no attacker times it.
        self.bytes == other.bytes
    }
}

impl Eq for DriveKey {}

impl DriveKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<DriveKey, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(DriveKey { bytes })
    }

    /// A key from its raw bytes (tests, and keys read from elsewhere).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> DriveKey {
        DriveKey { bytes }
    }

    /// The raw secret, for deriving per-blob keys.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// The key's public fingerprint.
    pub fn id(&self) -> KeyId {
        let d = Zeroizing::new(blake3::derive_key(KEY_ID_CONTEXT, &self.bytes));
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        KeyId(id)
    }

    /// Where a drive keeps its key: `DRIVE_DIR/key` (`DRIVE_DIR` is `DATA_DIR/drive`).
    pub fn path_in(drive_dir: &Path) -> PathBuf {
        drive_dir.join("key")
    }

    /// The text form: `walrusfs-key-v1:` then base64url (no padding) of the key and a 4-byte
    /// checksum. Anyone holding it can read the drive.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN + CHECKSUM_LEN]);
        raw[..KEY_LEN].copy_from_slice(&self.bytes);
        raw[KEY_LEN..].copy_from_slice(&checksum(&self.bytes));
        let mut out = Zeroizing::new(String::with_capacity(TEXT_PREFIX.len() + 48));
        out.push_str(TEXT_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&raw[..], &mut out);
        out
    }

    /// Parses the text form. Blank lines and lines starting with `#` are skipped, as is
    /// whitespace around the key, so a file written by `key export -o` (which starts with a
    /// comment) or a pasted line with a newline both parse.
    pub fn from_text(text: &str) -> Result<DriveKey, KeyError> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines
            .next()
            .ok_or_else(|| KeyError::Malformed("the text is empty".into()))?;
        if lines.next().is_some() {
            return Err(KeyError::Malformed(
                "more than one line of text; a key is a single line starting with \
                 `walrusfs-key-v1:`"
                    .into(),
            ));
        }
        let Some(body) = line.strip_prefix(TEXT_PREFIX) else {
            if line.starts_with("walrusfs-key-") {
                return Err(KeyError::Malformed(
                    "it was written by a newer walrusfs (unknown key format version); \
                     upgrade walrusfs to import it"
                        .into(),
                ));
            }
            return Err(KeyError::Malformed(
                "a key starts with `walrusfs-key-v1:` (as printed by `walrusfs key export`)".into(),
            ));
        };
        let raw = Zeroizing::new(URL_SAFE_NO_PAD.decode(body).map_err(|e| {
            KeyError::Malformed(format!(
                "the part after `{TEXT_PREFIX}` is not valid base64url ({e}); it was \
                 probably mistyped or cut"
            ))
        })?);
        if raw.len() != KEY_LEN + CHECKSUM_LEN {
            return Err(KeyError::Malformed(format!(
                "the key has {} characters after `{TEXT_PREFIX}`, not 48; it was probably \
                 cut short or has extra characters",
                body.len()
            )));
        }
        let mut bytes = [0u8; KEY_LEN];
        bytes.copy_from_slice(&raw[..KEY_LEN]);
        let key = DriveKey { bytes };
        if raw[KEY_LEN..] != checksum(&key.bytes) {
            return Err(KeyError::Checksum);
        }
        Ok(key)
    }

    /// Loads the key at `path`, refusing a file other users may access.
    pub fn load(path: &Path) -> Result<DriveKey, KeyError> {
        let io_err = |what| {
            let path = path.to_path_buf();
            move |source| KeyError::Io { what, path, source }
        };
        let file = File::open(path).map_err(io_err("cannot open the drive key file"))?;
        let mode = file
            .metadata()
            .map_err(io_err("cannot inspect the drive key file"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let text = Zeroizing::new(
            io::read_to_string(file).map_err(io_err("cannot read the drive key file"))?,
        );
        DriveKey::from_text(&text).map_err(|e| match e {
            KeyError::Malformed(m) => KeyError::Malformed(format!("{}: {m}", path.display())),
            KeyError::Checksum => KeyError::Malformed(format!(
                "{}: the checksum does not match, the file is damaged",
                path.display()
            )),
            other => other,
        })
    }

    /// Loads the key at `path`, or creates one there if there is none. Returns the key and
    /// whether it was created now (the mount logs that, with advice to export it).
    pub fn load_or_create(path: &Path) -> Result<(DriveKey, bool), KeyError> {
        match DriveKey::load(path) {
            Ok(key) => return Ok((key, false)),
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let key = DriveKey::generate()?;
        match key.write_new(path) {
            Ok(()) => Ok((key, true)),
            // Another process created one first: theirs is the drive's key.
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                Ok((DriveKey::load(path)?, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Installs this key at `path` (`walrusfs key import`). An existing identical key is left
    /// as it is. A different existing key, or a file that is not a usable key, is replaced only
    /// with `force`; the replaced file is kept beside it as `key.replaced-ID` (or
    /// `key.replaced-unreadable-TIME`), so a mistaken import can be undone.
    pub fn install(&self, path: &Path, force: bool) -> Result<Installed, KeyError> {
        let existing = match DriveKey::load(path) {
            Ok(k) => Some(Ok(k)),
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(e)),
        };
        match existing {
            None => match self.write_new(path) {
                Ok(()) => Ok(Installed::New),
                Err(KeyError::Io { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    // Created between our look and our write: judge that one.
                    self.install(path, force)
                }
                Err(e) => Err(e),
            },
            Some(Ok(old)) if old == *self => Ok(Installed::Unchanged),
            Some(Ok(old)) if !force => Err(KeyError::WouldReplace {
                path: path.to_path_buf(),
                existing: old.id(),
                new: self.id(),
            }),
            Some(Err(e)) if !force => Err(e),
            Some(old) => {
                let suffix = match &old {
                    Ok(k) => format!("replaced-{}", k.id()),
                    Err(_) => format!("replaced-unreadable-{}", unix_now_secs()),
                };
                let backup = path.with_extension(suffix);
                // The old key stays reachable under its new name, and `path` always holds a
                // whole key (the old or the new one), whenever this process may die.
                let _ = fs::remove_file(&backup);
                fs::hard_link(path, &backup).map_err(|source| KeyError::Io {
                    what: "cannot keep the old drive key as",
                    path: backup.clone(),
                    source,
                })?;
                self.write_file(path, true)?;
                Ok(Installed::Replaced { backup })
            }
        }
    }

    /// Writes the key to `path`, which must not exist (see [`Self::write_file`]).
    fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        self.write_file(path, false)
    }

    /// Writes the key to `path` atomically: a temporary file created with `O_EXCL` and mode
    /// 0600, synced, then renamed over `path` if `replace`, else hard-linked to it (which
    /// fails rather than replaces if `path` appeared meanwhile); then the directory synced.
    fn write_file(&self, path: &Path, replace: bool) -> Result<(), KeyError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(|source| KeyError::Io {
            what: "cannot create the directory for the drive key",
            path: dir.clone(),
            source,
        })?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let io_err = |what, p: &Path| {
            let path = p.to_path_buf();
            move |source| KeyError::Io { what, path, source }
        };
        // A temporary file left by a crashed run of this same process id is stale.
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("cannot create", &tmp))?;
            // The umask cannot widen 0600, but a pre-existing ACL default could: be explicit.
            f.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io_err("cannot set mode 0600 on", &tmp))?;
            let mut text = self.to_text();
            text.push('\n');
            f.write_all(text.as_bytes())
                .map_err(io_err("cannot write", &tmp))?;
            f.sync_all().map_err(io_err("cannot sync", &tmp))?;
            if replace {
                fs::rename(&tmp, path).map_err(io_err("cannot replace the drive key file", path))
            } else {
                fs::hard_link(&tmp, path).map_err(io_err("cannot create the drive key file", path))
            }
        })();
        let _ = fs::remove_file(&tmp);
        result?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("cannot sync the directory", &dir))
    }
}

/// What [`DriveKey::install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// There was no key; this one is installed.
    New,
    /// The same key was already installed.
    Unchanged,
    /// Another key (or an unusable file) was there and was moved to `backup`.
    Replaced { backup: PathBuf },
}

fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn checksum(key: &[u8; KEY_LEN]) -> [u8; CHECKSUM_LEN] {
    let d = Zeroizing::new(blake3::derive_key(CHECKSUM_CONTEXT, key));
    let mut c = [0u8; CHECKSUM_LEN];
    c.copy_from_slice(&d[..CHECKSUM_LEN]);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn created_once_with_mode_0600_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = DriveKey::path_in(&dir.path().join("drive"));
        let (key, created) = DriveKey::load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(mode(&path), 0o600);
        let (again, created) = DriveKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again, key);
        assert_eq!(again.id(), key.id());
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key")]);
        // Two drives get two keys.
        let other = DriveKey::load_or_create(&dir.path().join("other/key"))
            .unwrap()
            .0;
        assert_ne!(other, key);
        assert_ne!(other.id(), key.id());
    }

    #[test]
    fn refuses_a_key_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        DriveKey::load_or_create(&path).unwrap();
        for bad in [0o644, 0o640, 0o604, 0o620, 0o602] {
            fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
            let e = DriveKey::load(&path).unwrap_err();
            assert!(
                matches!(e, KeyError::Permissions { mode, .. } if mode == bad),
                "{e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("chmod 600") && msg.contains(&format!("{bad:04o}")),
                "{msg}"
            );
            // Nor does load_or_create paper over it with a new key.
            assert!(matches!(
                DriveKey::load_or_create(&path),
                Err(KeyError::Permissions { .. })
            ));
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        DriveKey::load(&path).unwrap();
    }

    #[test]
    fn text_round_trip_and_shape() {
        let key = DriveKey::from_bytes([7; KEY_LEN]);
        let text = key.to_text();
        assert!(text.starts_with("walrusfs-key-v1:"));
        assert_eq!(text.len(), "walrusfs-key-v1:".len() + 48);
        assert_eq!(DriveKey::from_text(&text).unwrap(), key);
        assert_eq!(
            DriveKey::from_text(&format!("# a comment\n\n  {}\n", &*text)).unwrap(),
            key
        );
        // Debug never shows the secret.
        let dbg = format!("{key:?}");
        assert!(!dbg.contains(&text[16..]) && dbg.contains(&key.id().to_string()));
        assert_eq!(key.id().to_string().len(), 16);
    }

    #[test]
    fn every_single_character_typo_is_rejected() {
        let key = DriveKey::from_bytes(*b"0123456789abcdef0123456789abcdef");
        let text = key.to_text();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let body = TEXT_PREFIX.len();
        for i in body..text.len() {
            for &c in alphabet {
                if c == text.as_bytes()[i] {
                    continue;
                }
                let mut typo = text.as_bytes().to_vec();
                typo[i] = c;
                let typo = String::from_utf8(typo).unwrap();
                // 36 bytes are exactly 48 characters of 6 bits: no character is padding, so
                // every change alters the bytes and the checksum catches it.
                assert!(DriveKey::from_text(&typo).is_err(), "{i} {}", c as char);
            }
        }
        // Swapped neighbours, a dropped and an added character.
        let mut swapped = text.as_bytes().to_vec();
        swapped.swap(body + 3, body + 4);
        if swapped != text.as_bytes() {
            assert!(DriveKey::from_text(std::str::from_utf8(&swapped).unwrap()).is_err());
        }
        assert!(matches!(
            DriveKey::from_text(&text[..text.len() - 1]),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            DriveKey::from_text(&format!("{}A", &*text)),
            Err(KeyError::Malformed(_))
        ));
        // A changed character that still decodes is caught by the checksum.
        let mut typo = text.as_bytes().to_vec();
        typo[body] = if typo[body] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            DriveKey::from_text(std::str::from_utf8(&typo).unwrap()),
            Err(KeyError::Checksum)
        ));
        for bad in ["", "\n# only a comment\n", "walrusfs-key-v2:abc", "hello"] {
            assert!(
                matches!(DriveKey::from_text(bad), Err(KeyError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn install_refuses_to_replace_a_different_key_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drive/key");
        let a = DriveKey::from_bytes([1; KEY_LEN]);
        let b = DriveKey::from_bytes([2; KEY_LEN]);
        assert_eq!(a.install(&path, false).unwrap(), Installed::New);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(a.install(&path, false).unwrap(), Installed::Unchanged);
        let e = b.install(&path, false).unwrap_err();
        assert!(matches!(e, KeyError::WouldReplace { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&a.id().to_string()) && msg.contains("--force"),
            "{msg}"
        );
        assert_eq!(DriveKey::load(&path).unwrap(), a);

        let Installed::Replaced { backup } = b.install(&path, true).unwrap() else {
            panic!("not replaced")
        };
        assert_eq!(DriveKey::load(&path).unwrap(), b);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(DriveKey::load(&backup).unwrap(), a);
        assert!(backup.to_string_lossy().ends_with(&a.id().to_string()));
    }

    #[test]
    fn install_over_a_broken_file_needs_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, "garbage\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let key = DriveKey::from_bytes([3; KEY_LEN]);
        assert!(matches!(
            key.install(&path, false),
            Err(KeyError::Malformed(_))
        ));
        assert!(matches!(
            key.install(&path, true),
            Ok(Installed::Replaced { .. })
        ));
        assert_eq!(DriveKey::load(&path).unwrap(), key);
    }

    #[test]
    fn export_import_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = DriveKey::load_or_create(&dir.path().join("a/key")).unwrap();
        let exported = dir.path().join("exported");
        fs::write(&exported, format!("# comment\n{}\n", &*key.to_text())).unwrap();
        let imported = DriveKey::from_text(&fs::read_to_string(&exported).unwrap()).unwrap();
        let target = dir.path().join("b/key");
        assert_eq!(imported.install(&target, false).unwrap(), Installed::New);
        assert_eq!(DriveKey::load(&target).unwrap(), key);
    }
}
