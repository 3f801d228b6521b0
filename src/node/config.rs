//! The storage node's configuration file (TOML) and its key file.
//!
//! ```toml
//! listen = "127.0.0.1:9100"        # host:port of the REST API; port 0 = pick a free one
//! data_dir = "node0"                # slivers and metadata live here
//! key_file = "node0.key"            # BLS12-381 protocol key, walrus-core's base64 form
//! node_id = "0x…"                   # optional: the committee member this node is (else: by key)
//! # node_index = 0                  # optional alternative to node_id: index in the committee
//!
//! [ledger]
//! kind = "embedded"                 # the only kind so far; a network ledger (`url`) will follow
//! path = "ledger.sqlite"
//!
//! [limits]                          # all optional
//! max_sliver_body_bytes = 1048576   # default: the largest sliver n shards allow, plus slack
//! max_metadata_body_bytes = 65536   # default: metadata of n shards, plus slack
//! max_confirmation_wait_ms = 10000  # cap on `wait_for_registration` long polls
//!
//! [faults]                          # TEST ONLY: make the node misbehave (see `Faults`)
//! corrupt_slivers = false
//! ```
//!
//! Relative paths are resolved against the directory of the configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use crate::encoding::{EncodingConfig, MAX_SYMBOL_SIZE};
use crate::ledger::{EmbeddedLedger, Ledger};
use crate::protocol::{ObjectId, ProtocolKeyPair};

use super::error::ConfigError;

/// Bytes added to the largest possible sliver body before a request is refused as too large:
/// room for the BCS framing and for clients that round up.
pub const SLIVER_BODY_SLACK: usize = 64 * 1024;
/// Bytes added to the largest possible metadata body.
pub const METADATA_BODY_SLACK: usize = 4 * 1024;
/// Default cap on how long a confirmation request may wait for the blob's registration.
pub const DEFAULT_MAX_CONFIRMATION_WAIT_MS: u64 = 10_000;

/// A storage node's configuration, as read from its TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the REST API listens.
    pub listen: SocketAddr,
    /// Directory holding the node's slivers and metadata (created if missing).
    pub data_dir: PathBuf,
    /// File with the node's BLS12-381 protocol secret key (`ProtocolKeyPair::to_walrus_base64`).
    pub key_file: PathBuf,
    /// The ledger the node consults for registrations, epochs and its shards.
    pub ledger: LedgerConfig,
    /// The node's ID in the committee. Without it (and without `node_index`), the node finds
    /// itself in each epoch's committee by its public key.
    #[serde(default, deserialize_with = "deserialize_object_id")]
    pub node_id: Option<ObjectId>,
    /// The node's index in the committee member list; an alternative to `node_id` for devnets
    /// whose committee never changes.
    #[serde(default)]
    pub node_index: Option<u16>,
    #[serde(default)]
    pub limits: Limits,
    /// TEST ONLY fault injection; everything off by default.
    #[serde(default)]
    pub faults: Faults,
}

/// Which ledger the node follows. An enum so that a network-served ledger (`kind = "url"`) can
/// be added for the devnet without changing existing configuration files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LedgerConfig {
    /// The embedded ledger's SQLite database, opened in the node's own process. It must exist
    /// already (created from a genesis by the devnet tooling or a test).
    Embedded { path: PathBuf },
}

impl LedgerConfig {
    /// Opens the configured ledger.
    pub fn open(&self) -> Result<Arc<dyn Ledger>, ConfigError> {
        match self {
            LedgerConfig::Embedded { path } => {
                let ledger = EmbeddedLedger::open(path).map_err(|source| ConfigError::Ledger {
                    path: path.clone(),
                    source,
                })?;
                Ok(Arc::new(ledger))
            }
        }
    }
}

/// Request limits. Every field is optional; defaults derive from the system's shard count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_sliver_body_bytes: Option<usize>,
    pub max_metadata_body_bytes: Option<usize>,
    pub max_confirmation_wait_ms: Option<u64>,
}

/// The limits in force for a system of `n_shards` shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimits {
    pub max_sliver_body_bytes: usize,
    pub max_metadata_body_bytes: usize,
    pub max_confirmation_wait_ms: u64,
}

impl Limits {
    pub fn effective(&self, config: &EncodingConfig) -> EffectiveLimits {
        EffectiveLimits {
            max_sliver_body_bytes: self
                .max_sliver_body_bytes
                .unwrap_or_else(|| max_sliver_body(config)),
            max_metadata_body_bytes: self
                .max_metadata_body_bytes
                .unwrap_or_else(|| max_metadata_body(config)),
            max_confirmation_wait_ms: self
                .max_confirmation_wait_ms
                .unwrap_or(DEFAULT_MAX_CONFIRMATION_WAIT_MS),
        }
    }
}

/// The largest sliver body a correct client can send for `config`: a primary sliver (the longer
/// kind, `n − f` symbols) at the largest symbol size, its BCS framing, and slack.
pub fn max_sliver_body(config: &EncodingConfig) -> usize {
    let symbols = usize::from(config.n_secondary_source_symbols());
    // ULEB128 length (≤ 5 bytes) + symbol size (2) + index (2).
    symbols * usize::from(MAX_SYMBOL_SIZE) + 9 + SLIVER_BODY_SLACK
}

/// The largest metadata body for `config`: blob ID, version and encoding tags, length, the
/// vector length and `n` pairs of two `Node::Digest` hashes (1 + 32 bytes each), and slack.
pub fn max_metadata_body(config: &EncodingConfig) -> usize {
    32 + 1 + 1 + 8 + 5 + config.n_shards_usize() * 2 * 33 + METADATA_BODY_SLACK
}

/// TEST ONLY: make this node misbehave, for integration tests of "lying" and "stalled" nodes.
/// A production configuration leaves the whole section out; the node logs a warning at start
/// for every fault that is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// TEST ONLY: sliver GETs return the stored sliver with one data byte flipped (still valid
    /// BCS, fails verification against the metadata).
    #[serde(default)]
    pub corrupt_slivers: bool,
    /// TEST ONLY: metadata GETs return metadata with one hash byte flipped (still valid BCS,
    /// does not hash to the blob ID).
    #[serde(default)]
    pub corrupt_metadata: bool,
    /// TEST ONLY: confirmations are signed with a key other than the node's registered one, so
    /// they fail verification (the node still reports its real public key).
    #[serde(default)]
    pub wrong_signing_key: bool,
    /// TEST ONLY: accept connections and requests but never answer any of them.
    #[serde(default)]
    pub stall: bool,
    /// TEST ONLY: wait this many milliseconds before handling each request (a slow node).
    #[serde(default)]
    pub delay_ms: u64,
}

impl Faults {
    pub fn any(&self) -> bool {
        *self != Faults::default()
    }
}

impl NodeConfig {
    /// Reads and parses a configuration file; relative paths in it are resolved against the
    /// file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|e| match e {
            ConfigError::Parse { reason, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })
    }

    /// Parses configuration text; relative paths are resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            reason: e.to_string(),
        })?;
        if config.node_id.is_some() && config.node_index.is_some() {
            return Err(ConfigError::Invalid {
                reason: "set at most one of `node_id` and `node_index`".into(),
            });
        }
        config.data_dir = resolve(base_dir, &config.data_dir);
        config.key_file = resolve(base_dir, &config.key_file);
        match &mut config.ledger {
            LedgerConfig::Embedded { path } => *path = resolve(base_dir, path),
        }
        Ok(config)
    }

    /// Loads the protocol key named by `key_file`.
    pub fn load_key(&self) -> Result<ProtocolKeyPair, ConfigError> {
        read_key_file(&self.key_file)
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn deserialize_object_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ObjectId>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| s.parse::<ObjectId>().map_err(serde::de::Error::custom))
        .transpose()
}

/// Reads a key file holding walrus-core's base64 form of a BLS12-381 secret key.
pub fn read_key_file(path: &Path) -> Result<ProtocolKeyPair, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    ProtocolKeyPair::from_walrus_base64(text.trim()).map_err(|source| ConfigError::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `key` to `path` in walrus-core's base64 form, readable by its owner only (devnets,
/// tests).
pub fn write_key_file(path: &Path, key: &ProtocolKeyPair) -> Result<(), ConfigError> {
    use std::io::Write as _;
    let io_err = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err)?;
    file.write_all(key.to_walrus_base64().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen = "127.0.0.1:0"
data_dir = "node0"
key_file = "/etc/node0.key"
node_id = "0x01"

[ledger]
kind = "embedded"
path = "ledger.sqlite"

[limits]
max_sliver_body_bytes = 1000

[faults]
corrupt_slivers = true
delay_ms = 5
"#;

    #[test]
    fn parses_the_documented_format_and_resolves_paths() {
        let c = NodeConfig::from_toml(EXAMPLE, Path::new("/cfg")).unwrap();
        assert_eq!(c.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/cfg/node0"));
        assert_eq!(c.key_file, PathBuf::from("/etc/node0.key"));
        assert_eq!(
            c.ledger,
            LedgerConfig::Embedded {
                path: "/cfg/ledger.sqlite".into()
            }
        );
        let mut id = [0u8; 32];
        id[31] = 1;
        assert_eq!(c.node_id, Some(ObjectId(id)));
        assert_eq!(c.limits.max_sliver_body_bytes, Some(1000));
        assert!(c.faults.corrupt_slivers && c.faults.any());
        assert_eq!(c.faults.delay_ms, 5);
        assert!(!c.faults.stall);
    }

    #[test]
    fn minimal_config_has_no_faults_and_derived_limits() {
        let text = "listen = \"0.0.0.0:9000\"\ndata_dir = \"d\"\nkey_file = \"k\"\n[ledger]\nkind = \"embedded\"\npath = \"l\"\n";
        let c = NodeConfig::from_toml(text, Path::new(".")).unwrap();
        assert!(!c.faults.any());
        let enc = EncodingConfig::new(13).unwrap();
        let l = c.limits.effective(&enc);
        // n = 13: f = 4, primary slivers have 9 symbols.
        assert_eq!(l.max_sliver_body_bytes, 9 * 65534 + 9 + SLIVER_BODY_SLACK);
        assert_eq!(
            l.max_metadata_body_bytes,
            47 + 13 * 66 + METADATA_BODY_SLACK
        );
        assert_eq!(l.max_confirmation_wait_ms, DEFAULT_MAX_CONFIRMATION_WAIT_MS);
    }

    #[test]
    fn rejects_unknown_fields_kinds_and_conflicts() {
        let base = "listen = \"0.0.0.0:9000\"\ndata_dir = \"d\"\nkey_file = \"k\"\n";
        for bad in [
            format!("{base}[ledger]\nkind = \"embedded\"\npath = \"l\"\ntypo = 1\n"),
            format!("{base}[ledger]\nkind = \"carrier-pigeon\"\n"),
            format!("{base}bogus = 1\n[ledger]\nkind = \"embedded\"\npath = \"l\"\n"),
            format!("{base}[ledger]\nkind = \"embedded\"\npath = \"l\"\n[faults]\ncorupt = true\n"),
            format!(
                "{base}node_id = \"0x1\"\nnode_index = 1\n[ledger]\nkind = \"embedded\"\npath = \"l\"\n"
            ),
            format!("{base}node_id = \"xyz\"\n[ledger]\nkind = \"embedded\"\npath = \"l\"\n"),
        ] {
            assert!(
                NodeConfig::from_toml(&bad, Path::new(".")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn key_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = ProtocolKeyPair::from_seed(&[3; 32]).unwrap();
        write_key_file(&path, &key).unwrap();
        assert_eq!(read_key_file(&path).unwrap().public(), key.public());
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(read_key_file(&path), Err(ConfigError::Key { .. })));
    }
}
