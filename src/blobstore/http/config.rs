//! The network file of the `walrus-http` backend: a TOML file with `backend = "walrus-http"`
//! that names the publishers and aggregators to use and a Walrus `client_config.yaml` from
//! which the network's own facts are read (system and staking objects, shard count, Sui full
//! nodes). Those facts are never written into our code: testnet is redeployed from time to
//! time, and the Walrus tools' own config file is where users already keep them.
//!
//! ```toml
//! backend = "walrus-http"
//! walrus_config = "client_config.yaml"   # relative to this file
//! context = "testnet"                     # only for a multi-context client_config.yaml
//! publishers = ["https://publisher.example"]
//! aggregators = ["https://aggregator-1.example", "https://aggregator-2.example"]
//! publisher_auth_token_file = "publisher.token"
//! ```
//!
//! Every other key ([`KEYS`]) is optional. Unknown keys and bad values are errors naming the
//! file, the key and what is allowed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::encoding::{EncodingConfig, EncodingError, MAX_N_SHARDS, MIN_N_SHARDS};
use crate::sui::ObjectId;

/// The value of `backend` that selects this backend.
pub const BACKEND: &str = "walrus-http";

/// The public publishers refuse bodies above 10 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 << 20;
/// A store takes a publisher an encode, a registration, uploads to every shard and a
/// certification; large blobs on a busy network take minutes (Walrus's own client allows 5).
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 300;
/// One aggregator request; past it the next aggregator is asked.
pub const DEFAULT_READ_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// How long a put waits for the Sui full node to show a certification the publisher reported
/// (full nodes lag the validators by a moment).
pub const DEFAULT_SUI_WAIT_SECS: u64 = 20;

/// Every key of the network file: name, default, meaning.
pub const KEYS: &[(&str, &str, &str)] = &[
    ("backend", "required", "\"walrus-http\""),
    (
        "walrus_config",
        "required",
        "path to a Walrus client_config.yaml (system_object, staking_object, n_shards, rpc_urls)",
    ),
    (
        "context",
        "the file's default_context",
        "which context of a multi-context client_config.yaml to use",
    ),
    (
        "publishers",
        "required",
        "publisher URLs (http:// or https://), tried in turn",
    ),
    (
        "aggregators",
        "required",
        "aggregator URLs (http:// or https://), tried in turn",
    ),
    (
        "publisher_auth_token_file",
        "none",
        "file holding a token sent as `Authorization: Bearer <token>` to the publishers",
    ),
    (
        "sui_rpc",
        "the first of rpc_urls",
        "Sui full node URL to check certifications with",
    ),
    (
        "max_body_bytes",
        "10485760 (10 MiB)",
        "largest blob sent to a publisher in one request",
    ),
    (
        "request_timeout_secs",
        "300",
        "seconds one store request to a publisher may take (1 to 3600)",
    ),
    (
        "read_timeout_secs",
        "30",
        "seconds one read from an aggregator may take before the next is asked (1 to 600)",
    ),
    (
        "connect_timeout_secs",
        "10",
        "seconds to connect to a publisher or aggregator (1 to 300)",
    ),
    (
        "sui_wait_secs",
        "20",
        "seconds a store waits for Sui to show the certification (0 to 600)",
    ),
];

/// Errors loading a `walrus-http` network file.
#[derive(Debug, thiserror::Error)]
pub enum WalrusHttpConfigError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("network file {path}, key `{key}`: {value} is not allowed; {allowed}")]
    Invalid {
        path: String,
        key: &'static str,
        value: String,
        allowed: String,
    },
    #[error("Walrus client config {walrus_config} (named by `walrus_config` in {path}): {message}")]
    WalrusConfig {
        path: String,
        walrus_config: String,
        message: String,
    },
}

/// The network file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    backend: String,
    walrus_config: PathBuf,
    context: Option<String>,
    publishers: Vec<String>,
    aggregators: Vec<String>,
    publisher_auth_token_file: Option<PathBuf>,
    sui_rpc: Option<String>,
    max_body_bytes: Option<u64>,
    request_timeout_secs: Option<u64>,
    read_timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    sui_wait_secs: Option<u64>,
}

/// A loaded and checked `walrus-http` network file.
#[derive(Clone, PartialEq, Eq)]
pub struct WalrusHttpConfig {
    /// The network file it came from.
    pub path: PathBuf,
    /// The Walrus client config it names (absolute or relative to the working directory).
    pub walrus_config: PathBuf,
    /// The context used, for a multi-context client config.
    pub context: Option<String>,
    pub system_object: ObjectId,
    pub staking_object: ObjectId,
    pub n_shards: u16,
    /// The Sui full node to check certifications with.
    pub sui_rpc: String,
    /// Publisher base URLs, without a trailing slash.
    pub publishers: Vec<String>,
    /// Aggregator base URLs, without a trailing slash.
    pub aggregators: Vec<String>,
    /// The bearer token for the publishers (the file's contents, trimmed).
    pub publisher_auth_token: Option<String>,
    pub max_body_bytes: u64,
    pub request_timeout: Duration,
    pub read_timeout: Duration,
    pub connect_timeout: Duration,
    pub sui_wait: Duration,
}

impl std::fmt::Debug for WalrusHttpConfig {
    // By hand, so that the token never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalrusHttpConfig")
            .field("path", &self.path)
            .field("walrus_config", &self.walrus_config)
            .field("context", &self.context)
            .field("n_shards", &self.n_shards)
            .field("sui_rpc", &self.sui_rpc)
            .field("publishers", &self.publishers)
            .field("aggregators", &self.aggregators)
            .field(
                "publisher_auth_token",
                &self.publisher_auth_token.as_ref().map(|_| "<set>"),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("sui_wait", &self.sui_wait)
            .finish_non_exhaustive()
    }
}

/// The `backend` a network file asks for, if it names one (our devnet's `network.toml` has
/// no such key: it is the `walrus` backend).
pub fn network_file_backend(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    table.get("backend")?.as_str().map(str::to_string)
}

/// Whether a network file's text selects the `walrus-http` backend.
pub fn is_walrus_http_network_file(text: &str) -> bool {
    network_file_backend(text).as_deref() == Some(BACKEND)
}

impl WalrusHttpConfig {
    /// Loads and checks a network file and the Walrus client config it names. Relative paths
    /// in the file are relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, WalrusHttpConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WalrusHttpConfigError::Read {
            what: "network file",
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Like [`Self::load`], from text already read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, WalrusHttpConfigError> {
        let shown = path.display().to_string();
        let raw: RawFile = toml::from_str(text).map_err(|e| WalrusHttpConfigError::Parse {
            path: shown.clone(),
            message: format!(
                "{}; keys: {}",
                e.message(),
                KEYS.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
            ),
        })?;
        let invalid =
            |key: &'static str, value: String, allowed: &str| WalrusHttpConfigError::Invalid {
                path: shown.clone(),
                key,
                value,
                allowed: allowed.to_string(),
            };
        if raw.backend != BACKEND {
            return Err(invalid(
                "backend",
                format!("{:?}", raw.backend),
                "this file is read by the walrus-http backend, so it must say backend = \"walrus-http\"",
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.to_path_buf()
            }
        };
        let publishers =
            urls(&raw.publishers).map_err(|v| invalid("publishers", v, URL_ALLOWED))?;
        let aggregators =
            urls(&raw.aggregators).map_err(|v| invalid("aggregators", v, URL_ALLOWED))?;

        let publisher_auth_token = match &raw.publisher_auth_token_file {
            None => None,
            Some(p) => {
                let p = resolve(p);
                let token =
                    std::fs::read_to_string(&p).map_err(|source| WalrusHttpConfigError::Read {
                        what: "publisher_auth_token_file",
                        path: p.display().to_string(),
                        source,
                    })?;
                let token = token.trim().to_string();
                if token.is_empty() || token.contains(char::is_whitespace) {
                    return Err(invalid(
                        "publisher_auth_token_file",
                        p.display().to_string(),
                        "the file must hold one token (no spaces) and nothing else",
                    ));
                }
                Some(token)
            }
        };

        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return Err(invalid(
                "max_body_bytes",
                "0".into(),
                "use a number of bytes of at least 1 (the public publishers take 10485760)",
            ));
        }
        let secs = |key: &'static str, v: Option<u64>, default: u64, min: u64, max: u64| {
            let v = v.unwrap_or(default);
            if (min..=max).contains(&v) {
                Ok(Duration::from_secs(v))
            } else {
                Err(invalid(
                    key,
                    v.to_string(),
                    &format!("use {min} to {max} seconds"),
                ))
            }
        };
        let request_timeout = secs(
            "request_timeout_secs",
            raw.request_timeout_secs,
            DEFAULT_REQUEST_TIMEOUT_SECS,
            1,
            3600,
        )?;
        let read_timeout = secs(
            "read_timeout_secs",
            raw.read_timeout_secs,
            DEFAULT_READ_TIMEOUT_SECS,
            1,
            600,
        )?;
        let connect_timeout = secs(
            "connect_timeout_secs",
            raw.connect_timeout_secs,
            DEFAULT_CONNECT_TIMEOUT_SECS,
            1,
            300,
        )?;
        let sui_wait = secs(
            "sui_wait_secs",
            raw.sui_wait_secs,
            DEFAULT_SUI_WAIT_SECS,
            0,
            600,
        )?;

        let walrus_config = resolve(&raw.walrus_config);
        let walrus = WalrusClientConfig::load(&walrus_config, raw.context.as_deref()).map_err(
            |message| WalrusHttpConfigError::WalrusConfig {
                path: shown.clone(),
                walrus_config: walrus_config.display().to_string(),
                message,
            },
        )?;
        let sui_rpc = match &raw.sui_rpc {
            Some(u) => one_url(u).map_err(|v| invalid("sui_rpc", v, URL_ALLOWED))?,
            None => walrus.rpc_urls.first().cloned().ok_or_else(|| {
                WalrusHttpConfigError::WalrusConfig {
                    path: shown.clone(),
                    walrus_config: walrus_config.display().to_string(),
                    message: "`rpc_urls` is empty or missing; add a Sui full node there \
                              (e.g. rpc_urls: [https://fullnode.testnet.sui.io:443]) or set \
                              `sui_rpc` in the network file"
                        .into(),
                }
            })?,
        };
        Ok(Self {
            path: path.to_path_buf(),
            walrus_config,
            context: walrus.context,
            system_object: walrus.system_object,
            staking_object: walrus.staking_object,
            n_shards: walrus.n_shards,
            sui_rpc,
            publishers,
            aggregators,
            publisher_auth_token,
            max_body_bytes,
            request_timeout,
            read_timeout,
            connect_timeout,
            sui_wait,
        })
    }

    /// The RS2 parameters of this network (`n_shards` was checked on load; this fails only
    /// for a config changed by hand).
    pub fn encoding(&self) -> Result<EncodingConfig, EncodingError> {
        EncodingConfig::new(self.n_shards)
    }

    /// The largest blob this backend stores: the body limit, or the largest blob RS2 encodes
    /// at this shard count, whichever is smaller.
    pub fn max_blob_size(&self) -> Result<u64, EncodingError> {
        Ok(self.max_body_bytes.min(self.encoding()?.max_blob_size()))
    }
}

const URL_ALLOWED: &str = "give a non-empty list of http:// or https:// URLs, e.g. [\"https://publisher.walrus-testnet.walrus.space\"]";

fn urls(list: &[String]) -> Result<Vec<String>, String> {
    if list.is_empty() {
        return Err("an empty list".into());
    }
    list.iter().map(|u| one_url(u)).collect()
}

/// Checks a base URL and drops a trailing slash, so that paths can be appended.
fn one_url(u: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(u).map_err(|e| format!("{u:?} ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("{u:?}"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{u:?} (a base URL has no query or fragment)"));
    }
    Ok(u.trim_end_matches('/').to_string())
}

/// What we read from a Walrus `client_config.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WalrusClientConfig {
    pub context: Option<String>,
    pub system_object: ObjectId,
    pub staking_object: ObjectId,
    pub n_shards: u16,
    pub rpc_urls: Vec<String>,
}

impl WalrusClientConfig {
    fn load(path: &Path, context: Option<&str>) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        Self::parse(&text, context)
    }

    /// Parses the single-context form (keys at the top) or the multi-context form
    /// (`contexts: {name: {...}}` and `default_context`).
    pub(crate) fn parse(text: &str, context: Option<&str>) -> Result<Self, String> {
        let doc: Value =
            serde_saphyr::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
        let Value::Object(top) = &doc else {
            return Err("not a YAML mapping of keys".into());
        };
        let (chosen, section) = match top.get("contexts") {
            Some(Value::Object(contexts)) => {
                let names = contexts.keys().cloned().collect::<Vec<_>>().join(", ");
                let name = match context {
                    Some(c) => c.to_string(),
                    None => top
                        .get("default_context")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| {
                            format!(
                                "it has several contexts ({names}) and no `default_context`; \
                                 choose one with `context = \"NAME\"` in the network file"
                            )
                        })?,
                };
                let section = contexts.get(&name).ok_or_else(|| {
                    format!("it has no context `{name}`; its contexts are: {names}")
                })?;
                (Some(name), section)
            }
            Some(_) => return Err("`contexts` must be a mapping of context names".into()),
            None => {
                if let Some(c) = context {
                    return Err(format!(
                        "the network file asks for context `{c}`, but this file has a single \
                         context (no `contexts:` key); remove `context` from the network file"
                    ));
                }
                (None, &doc)
            }
        };
        let in_ctx = |key: &str| match &chosen {
            Some(c) => format!("`{key}` (in context `{c}`)"),
            None => format!("`{key}`"),
        };
        let object = |key: &str| -> Result<ObjectId, String> {
            // YAML reads a short `0x1` as the number 1; take it back as hex.
            let v = section
                .get(key)
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => n.as_u64().map(|n| format!("0x{n:x}")),
                    _ => None,
                })
                .ok_or_else(|| {
                    format!(
                        "{} is missing; copy it from the network's published client_config.yaml",
                        in_ctx(key)
                    )
                })?;
            parse_object_id(&v).ok_or_else(|| {
                format!(
                    "{} = {v:?} is not a Sui object ID (0x and up to 64 hex digits)",
                    in_ctx(key)
                )
            })
        };
        let system_object = object("system_object")?;
        let staking_object = object("staking_object")?;
        let n_shards = match section.get("n_shards") {
            None | Some(Value::Null) => {
                return Err(format!(
                    "{} is missing; add the network's shard count (1000 on testnet and mainnet)",
                    in_ctx("n_shards")
                ));
            }
            Some(v) => v
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| (MIN_N_SHARDS..=MAX_N_SHARDS).contains(n))
                .ok_or_else(|| {
                    format!(
                        "{} = {v} is not allowed; use {MIN_N_SHARDS} to {MAX_N_SHARDS}",
                        in_ctx("n_shards")
                    )
                })?,
        };
        let rpc_urls = match section.get("rpc_urls") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|u| {
                    u.as_str()
                        .ok_or_else(|| format!("{} holds {u}, not a URL", in_ctx("rpc_urls")))
                        .and_then(|s| {
                            one_url(s).map_err(|v| {
                                format!("{} holds {v}, not an http(s) URL", in_ctx("rpc_urls"))
                            })
                        })
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(format!(
                    "{} = {v} is not a list of URLs",
                    in_ctx("rpc_urls")
                ));
            }
        };
        Ok(Self {
            context: chosen,
            system_object,
            staking_object,
            n_shards,
            rpc_urls,
        })
    }
}

/// `0x` and up to 64 hex digits (Sui drops leading zeros in some displays), left-padded.
pub(crate) fn parse_object_id(s: &str) -> Option<ObjectId> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded = format!("{hex:0>64}");
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&padded[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINGLE: &str = "\
system_object: 0xa2637d13d171b278eadfa8a3fbe8379b5e471e1f3739092e5243da17fc8090eb
staking_object: 0xca7cf321e47a1fc9bfd032abc31b253f5063521fd5b4c431f2cdd3fee1b4ec00
n_shards: 1000
max_epochs_ahead: 53
rpc_urls:
- https://fullnode.testnet.sui.io:443
communication_config:
  max_concurrent_writes: null
";

    const MULTI: &str = "\
contexts:
  testnet:
    system_object: 0x1
    staking_object: 0x2
    n_shards: 1000
    rpc_urls: [https://fullnode.testnet.sui.io:443]
  local:
    system_object: 0x3
    staking_object: 0x4
    n_shards: 10
    rpc_urls: [http://127.0.0.1:9000]
default_context: testnet
";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn network(extra: &str) -> String {
        format!(
            "backend = \"walrus-http\"\nwalrus_config = \"client_config.yaml\"\n\
             publishers = [\"http://127.0.0.1:1/\"]\naggregators = [\"http://127.0.0.1:2\", \"https://agg.example/x/\"]\n{extra}"
        )
    }

    #[test]
    fn single_context_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "client_config.yaml", SINGLE);
        let p = write(dir.path(), "net.toml", &network(""));
        let c = WalrusHttpConfig::load(&p).unwrap();
        assert_eq!(c.n_shards, 1000);
        assert_eq!(c.system_object[0], 0xa2);
        assert_eq!(c.staking_object[31], 0x00);
        assert_eq!(c.sui_rpc, "https://fullnode.testnet.sui.io:443");
        assert_eq!(c.publishers, ["http://127.0.0.1:1"]);
        assert_eq!(
            c.aggregators,
            ["http://127.0.0.1:2", "https://agg.example/x"]
        );
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.max_blob_size().unwrap(), DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.read_timeout, Duration::from_secs(30));
        assert_eq!(c.context, None);
        assert!(c.publisher_auth_token.is_none());
    }

    #[test]
    fn multi_context_default_and_chosen() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "client_config.yaml", MULTI);
        let p = write(dir.path(), "net.toml", &network(""));
        let c = WalrusHttpConfig::load(&p).unwrap();
        assert_eq!(c.context.as_deref(), Some("testnet"));
        assert_eq!(c.system_object[31], 1);
        let p = write(dir.path(), "net2.toml", &network("context = \"local\""));
        let c = WalrusHttpConfig::load(&p).unwrap();
        assert_eq!(c.n_shards, 10);
        assert_eq!(c.sui_rpc, "http://127.0.0.1:9000");
        // The RS2 maximum at 10 shards is below the body limit.
        assert_eq!(c.max_blob_size().unwrap(), 1_834_952);
        let p = write(dir.path(), "net3.toml", &network("context = \"mainnet\""));
        let e = WalrusHttpConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("no context `mainnet`") && e.contains("testnet"),
            "{e}"
        );
    }

    #[test]
    fn context_on_single_file_and_missing_default_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "client_config.yaml", SINGLE);
        let p = write(dir.path(), "net.toml", &network("context = \"testnet\""));
        let e = WalrusHttpConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("single context"), "{e}");
        let no_default = MULTI.replace("default_context: testnet\n", "");
        assert!(
            WalrusClientConfig::parse(&no_default, None)
                .unwrap_err()
                .contains("no `default_context`")
        );
    }

    #[test]
    fn errors_name_file_key_and_allowed_values() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "client_config.yaml", SINGLE);
        for (extra, key, hint) in [
            ("read_timeout_secs = 0", "read_timeout_secs", "1 to 600"),
            ("max_body_bytes = 0", "max_body_bytes", "at least 1"),
            ("sui_rpc = \"ftp://x\"", "sui_rpc", "http://"),
        ] {
            let p = write(dir.path(), "net.toml", &network(extra));
            let e = WalrusHttpConfig::load(&p).unwrap_err().to_string();
            assert!(
                e.contains("net.toml") && e.contains(key) && e.contains(hint),
                "{extra}: {e}"
            );
        }
        let p = write(
            dir.path(),
            "net.toml",
            &network("").replace("[\"http://127.0.0.1:1/\"]", "[]"),
        );
        let e = WalrusHttpConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("`publishers`") && e.contains("empty"), "{e}");
        let p = write(dir.path(), "net.toml", &network("colour = 1"));
        let e = WalrusHttpConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("colour") && e.contains("publishers"), "{e}");
        let p = write(
            dir.path(),
            "net.toml",
            &network("").replace("walrus-http", "walrus"),
        );
        let e = WalrusHttpConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("`backend`"), "{e}");
    }

    #[test]
    fn walrus_config_errors_name_the_key() {
        let missing_shards = SINGLE.replace("n_shards: 1000\n", "");
        let e = WalrusClientConfig::parse(&missing_shards, None).unwrap_err();
        assert!(e.contains("`n_shards`") && e.contains("1000"), "{e}");
        let bad_obj = SINGLE.replace("0xa2637d", "0xz2637d");
        let e = WalrusClientConfig::parse(&bad_obj, None).unwrap_err();
        assert!(e.contains("`system_object`"), "{e}");
        let e = WalrusClientConfig::parse(
            &MULTI.replace("n_shards: 10\n", "n_shards: 2\n"),
            Some("local"),
        )
        .unwrap_err();
        assert!(
            e.contains("in context `local`") && e.contains("4 to"),
            "{e}"
        );
        // No rpc_urls and no sui_rpc: the network file load says where to add one.
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "client_config.yaml",
            &SINGLE.replace("rpc_urls:\n- https://fullnode.testnet.sui.io:443\n", ""),
        );
        let p = write(dir.path(), "net.toml", &network(""));
        let e = WalrusHttpConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("rpc_urls") && e.contains("sui_rpc"), "{e}");
        let p = write(
            dir.path(),
            "net.toml",
            &network("sui_rpc = \"http://127.0.0.1:9\""),
        );
        assert_eq!(
            WalrusHttpConfig::load(&p).unwrap().sui_rpc,
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn token_file_is_read_and_hidden_from_debug() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "client_config.yaml", SINGLE);
        write(dir.path(), "tok", "s3cret\n");
        let p = write(
            dir.path(),
            "net.toml",
            &network("publisher_auth_token_file = \"tok\""),
        );
        let c = WalrusHttpConfig::load(&p).unwrap();
        assert_eq!(c.publisher_auth_token.as_deref(), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let p = write(
            dir.path(),
            "net.toml",
            &network("publisher_auth_token_file = \"missing\""),
        );
        let e = WalrusHttpConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("publisher_auth_token_file") && e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn backend_detection() {
        assert!(is_walrus_http_network_file(&network("")));
        // Our devnet's network.toml has no backend key.
        assert!(!is_walrus_http_network_file(
            "[ledger]\nkind = \"embedded\"\npath = \"ledger.db\"\n"
        ));
        assert!(!is_walrus_http_network_file("not toml ["));
        assert_eq!(
            network_file_backend("backend = \"other\""),
            Some("other".to_string())
        );
    }

    #[test]
    fn object_ids() {
        assert_eq!(parse_object_id("0x1").unwrap()[31], 1);
        assert!(parse_object_id("1").is_none());
        assert!(parse_object_id(&format!("0x{}", "0".repeat(65))).is_none());
    }
}
