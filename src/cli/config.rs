//! The configuration file of `walrusfs mount`: one TOML file whose every key is optional and
//! has a documented default ([`KEYS`], the README's "Configuration" section). Command-line
//! flags override it.
//!
//! Location: `--config FILE`, else `$XDG_CONFIG_HOME/walrusfs/config.toml` (or
//! `~/.config/walrusfs/config.toml`). A missing default file means all defaults; a missing
//! `--config` file is an error. Unknown keys and bad values are errors naming the file, the
//! key and what is allowed. Relative paths in the file are relative to the file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Every key: name, default, meaning. The README's "Configuration" section lists the same
/// (a test checks that it names every key).
pub const KEYS: &[(&str, &str, &str)] = &[
    (
        "data_dir",
        "$XDG_DATA_HOME/walrusfs (~/.local/share/walrusfs)",
        "metadata, staged writes, cache and the embedded network",
    ),
    (
        "network",
        "none: the embedded network",
        "a network.toml to store blobs on instead",
    ),
    (
        "epochs",
        "5 (50 on the embedded network)",
        "epochs each blob is stored for (1 to 1000); renewed while mounted",
    ),
    (
        "sync_on_close",
        "false",
        "close(2) waits until the file is certified",
    ),
    ("read_only", "false", "mount read-only"),
    (
        "allow_other",
        "false",
        "let other users in (root mounts always do)",
    ),
    (
        "upload_grace",
        "30",
        "seconds an unmount waits for pending uploads (0 to 86400)",
    ),
    (
        "max_pack",
        "\"64MiB\"",
        "largest blob the drive packs files into (64KiB to 16GiB)",
    ),
    (
        "pack_wait",
        "30",
        "seconds a closed file may wait for others to fill its blob (0 to 600; never delays fsync)",
    ),
    (
        "writeback_cache",
        "true",
        "kernel writeback cache for read-write mounts (writes reach the drive in large batches)",
    ),
    (
        "log",
        "\"warn\"",
        "log filter, RUST_LOG syntax (RUST_LOG overrides it)",
    ),
    (
        "metrics_addr",
        "none: no metrics",
        "serve Prometheus metrics on this address, e.g. 127.0.0.1:9464",
    ),
];

/// Defaults, in one place.
pub const DEFAULT_EPOCHS: u32 = 5;
/// Epochs per blob on the embedded network: the ledger's `max_epochs_ahead` (53) less the
/// renewal margin.
pub const DEFAULT_EMBEDDED_EPOCHS: u32 = 50;
pub const DEFAULT_UPLOAD_GRACE: u64 = 30;
pub const DEFAULT_MAX_PACK: u64 = 64 << 20;
pub const DEFAULT_PACK_WAIT: u64 = 30;
pub const DEFAULT_LOG: &str = "warn";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} does not exist; create it (keys: {keys}) or leave out --config")]
    NotFound { path: String, keys: String },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}, key `{key}`: {value} is not allowed; {allowed}")]
    Invalid {
        path: String,
        key: &'static str,
        value: String,
        allowed: String,
    },
}

/// A size in bytes: an integer, or a string with a unit (`64MiB`, `512KiB`, `1GiB`, `10MB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || {
            format!(
                "`{s}` is not a size: use bytes (67108864) or a number with B, KiB, MiB, GiB, KB, MB or GB (64MiB)"
            )
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mul: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mul).map(ByteSize).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a size: bytes as an integer, or a string such as \"64MiB\"",
            )
        })? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// The file as written: every key optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub network: Option<PathBuf>,
    pub epochs: Option<u32>,
    pub sync_on_close: Option<bool>,
    pub read_only: Option<bool>,
    pub allow_other: Option<bool>,
    pub upload_grace: Option<u64>,
    pub max_pack: Option<ByteSize>,
    pub pack_wait: Option<u64>,
    pub writeback_cache: Option<bool>,
    pub log: Option<String>,
    pub metrics_addr: Option<String>,
}

/// A loaded and checked configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// The file it came from, if any.
    pub path: Option<PathBuf>,
    pub file: ConfigFile,
    /// `metrics_addr`, parsed.
    pub metrics_addr: Option<SocketAddr>,
}

/// `$XDG_CONFIG_HOME/walrusfs/config.toml`, or `~/.config/walrusfs/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("walrusfs").join("config.toml"))
}

impl Config {
    /// Loads `explicit` (which must exist), else the default file if it exists, else
    /// nothing (all defaults).
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match explicit {
            Some(p) => {
                if !p.exists() {
                    return Err(ConfigError::NotFound {
                        path: p.display().to_string(),
                        keys: KEYS.iter().map(|k| k.0).collect::<Vec<_>>().join(", "),
                    });
                }
                p.to_path_buf()
            }
            None => match default_path() {
                Some(p) if p.exists() => p,
                _ => return Ok(Config::default()),
            },
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    /// Parses and checks `text`, read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let mut file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: format!("{e}").trim_end().to_owned(),
        })?;
        let invalid = |key: &'static str, value: String, allowed: &str| ConfigError::Invalid {
            path: shown.clone(),
            key,
            value,
            allowed: allowed.to_owned(),
        };
        if let Some(e) = file.epochs
            && !(1..=1000).contains(&e)
        {
            return Err(invalid(
                "epochs",
                e.to_string(),
                "blobs are stored for 1 to 1000 epochs",
            ));
        }
        if let Some(g) = file.upload_grace
            && g > 86_400
        {
            return Err(invalid(
                "upload_grace",
                g.to_string(),
                "use 0 to 86400 seconds (pending uploads are never dropped: they resume at the next mount)",
            ));
        }
        if let Some(ByteSize(b)) = file.max_pack
            && !((64 << 10)..=(16 << 30)).contains(&b)
        {
            return Err(invalid(
                "max_pack",
                format!("{b} bytes"),
                "use 64KiB to 16GiB",
            ));
        }
        if let Some(w) = file.pack_wait
            && w > 600
        {
            return Err(invalid("pack_wait", w.to_string(), "use 0 to 600 seconds"));
        }
        if let Some(l) = &file.log
            && let Err(e) = tracing_subscriber::EnvFilter::try_new(l)
        {
            return Err(invalid(
                "log",
                format!("\"{l}\""),
                &format!(
                    "use a RUST_LOG filter such as \"warn\", \"info\" or \"walrusfs=debug,warn\" ({e})"
                ),
            ));
        }
        let metrics_addr = match file.metrics_addr.as_deref() {
            None | Some("") => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics_addr",
                    format!("\"{a}\""),
                    "use IP:PORT such as \"127.0.0.1:9464\", or leave it out for no metrics",
                )
            })?),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut file.data_dir, &mut file.network]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(Config {
            path: Some(path.to_path_buf()),
            file,
            metrics_addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/walrusfs/config.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.file, ConfigFile::default());
        assert_eq!(c.metrics_addr, None);
    }

    #[test]
    fn every_key_parses() {
        let c = parse(
            r#"
            data_dir = "drive"
            network = "/srv/net/network.toml"
            epochs = 10
            sync_on_close = true
            read_only = false
            allow_other = true
            upload_grace = 120
            max_pack = "16MiB"
            log = "walrusfs=debug,warn"
            metrics_addr = "127.0.0.1:9464"
            "#,
        )
        .unwrap();
        assert_eq!(c.file.data_dir, Some(PathBuf::from("/etc/walrusfs/drive")));
        assert_eq!(c.file.epochs, Some(10));
        assert_eq!(c.file.max_pack, Some(ByteSize(16 << 20)));
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            parse("max_pack = 1048576").unwrap().file.max_pack,
            Some(ByteSize(1 << 20))
        );
    }

    #[test]
    fn unknown_key_names_file_key_and_allowed_keys() {
        let e = parse("epochz = 3").unwrap_err().to_string();
        assert!(e.contains("/etc/walrusfs/config.toml"), "{e}");
        assert!(e.contains("epochz"), "{e}");
        assert!(e.contains("epochs") && e.contains("metrics_addr"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_what_is_allowed() {
        let e = parse("epochs = \"many\"").unwrap_err().to_string();
        assert!(e.contains("epochs") && e.contains("u32"), "{e}");
        let e = parse("epochs = 0").unwrap_err().to_string();
        assert!(e.contains("`epochs`") && e.contains("1 to 1000"), "{e}");
        let e = parse("max_pack = \"64 megs\"").unwrap_err().to_string();
        assert!(e.contains("max_pack") && e.contains("MiB"), "{e}");
        let e = parse("max_pack = 10").unwrap_err().to_string();
        assert!(
            e.contains("`max_pack`") && e.contains("64KiB to 16GiB"),
            "{e}"
        );
        let e = parse("metrics_addr = \"localhost\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`metrics_addr`") && e.contains("IP:PORT"), "{e}");
        let e = parse("log = \"walrusfs=loud\"").unwrap_err().to_string();
        assert!(e.contains("`log`") && e.contains("RUST_LOG"), "{e}");
        let e = parse("upload_grace = -1").unwrap_err().to_string();
        assert!(e.contains("upload_grace"), "{e}");
        let e = parse("read_only = yes").unwrap_err().to_string();
        assert!(e.contains("/etc/walrusfs/config.toml"), "{e}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_naming_it() {
        let e = Config::load(Some(Path::new("/nonexistent/walrusfs.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/walrusfs.toml") && e.contains("does not exist"));
    }

    #[test]
    fn readme_documents_every_key() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Configuration")
            .nth(1)
            .expect("README has a Configuration section");
        for (key, default, _) in KEYS {
            assert!(
                section.contains(&format!("`{key}`")),
                "README lacks `{key}`"
            );
            let _ = default;
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64MiB"), Ok(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("10MB"), Ok(ByteSize(10_000_000)));
        assert_eq!(ByteSize::parse("512"), Ok(ByteSize(512)));
        assert!(ByteSize::parse("1.5GiB").is_err());
        assert!(ByteSize::parse("99999999999GiB").is_err());
    }
}
