//! A Walrus-compatible network on one machine: keys, committee, ledger and node processes.
//!
//! Layout of a devnet directory:
//! - `ledger.db`: the embedded ledger (SQLite). Nodes and clients open it directly: SQLite's
//!   locking makes every ledger transaction atomic across the processes of one machine, so no
//!   ledger server process is needed here (a served ledger fits behind the same trait once
//!   nodes live on several machines).
//! - `network.toml`: what clients need (`--network`): the ledger to use.
//! - `nodes/I/`: `node.toml`, `key` (BLS secret key, mode 0600), `data/`, `node.log`, `pid`.
//! - `embedded.lock`: locked while the nodes run inside one process ([`EmbeddedNetwork`]).

mod embedded;

pub use embedded::{EmbeddedNetwork, EmbeddedNode, NodeHealth};

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ledger::{EmbeddedLedger, Genesis, LedgerParams};
use crate::node::LedgerConfig;
use crate::protocol::{Committee, CommitteeMember, ObjectId, ProtocolKeyPair};

#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} already holds a devnet; use `walrusfs devnet down --dir {0} --purge` first or pick another --dir"
    )]
    Exists(String),
    #[error(
        "{0} holds no devnet (no network.toml); create one with `walrusfs devnet up --dir {0}`"
    )]
    Missing(String),
    #[error("node {0} does not exist in this devnet")]
    NoSuchNode(usize),
    #[error("invalid devnet parameters: {0}")]
    Invalid(String),
    #[error("node {index} did not become healthy within {secs} s; see {log}")]
    NotHealthy {
        index: usize,
        secs: u64,
        log: String,
    },
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(transparent)]
    Protocol(#[from] crate::protocol::ProtocolError),
    #[error("cannot write configuration: {0}")]
    Config(String),
    #[error(
        "port {port} of node {index} ({dir}) is in use by another program, so the node cannot start. The port is fixed in this devnet's committee: stop whatever listens on 127.0.0.1:{port} (`ss -ltnp 'sport = :{port}'` names it) and try again, or use a devnet in another directory"
    )]
    PortInUse {
        port: u16,
        index: usize,
        dir: String,
    },
    #[error(
        "the storage nodes of the devnet in {dir} run as separate processes (pid {pids}, from `walrusfs devnet up`), so this process will not start them a second time on the same data. Use that network with `--network {dir}/network.toml`, or stop it with `walrusfs devnet down --dir {dir}` and try again"
    )]
    RunningAsProcesses { dir: String, pids: String },
    #[error(
        "the devnet in {dir} is already running inside another walrusfs process (pid {pid}, e.g. a `walrusfs mount` without --network); stop that process first, or use that network with `--network {dir}/network.toml`"
    )]
    InUse { dir: String, pid: String },
    #[error(
        "the devnet in {dir} runs inside walrusfs process {pid} (e.g. a `walrusfs mount` without --network); stop that process before starting or removing its nodes"
    )]
    EmbeddedElsewhere { dir: String, pid: String },
    #[error("node {index} ({dir}) cannot run")]
    Node {
        index: usize,
        dir: String,
        #[source]
        source: Box<crate::node::NodeError>,
    },
    #[error("node {index} started but did not report healthy within {secs} s: {reason}")]
    EmbeddedNotHealthy {
        index: usize,
        secs: u64,
        reason: String,
    },
    #[error("cannot create the network client")]
    Client(#[source] Box<crate::client::ClientError>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevnetError + '_ {
    move |source| DevnetError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The client-side description of a network (`network.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    /// The ledger clients use, as in a node's configuration.
    pub ledger: LedgerFileConfig,
}

/// `[ledger]` of `network.toml`: `kind = "embedded"`, `path = "…/ledger.db"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LedgerFileConfig {
    Embedded { path: PathBuf },
}

impl NetworkFile {
    pub fn load(path: &Path) -> Result<Self, DevnetError> {
        let text = fs::read_to_string(path).map_err(io(path))?;
        let mut file: NetworkFile = toml::from_str(&text)
            .map_err(|e| DevnetError::Config(format!("{}: {e}", path.display())))?;
        // Relative paths are relative to the file, so a devnet directory can be moved.
        let base = path.parent().unwrap_or(Path::new("."));
        let LedgerFileConfig::Embedded { path: p } = &mut file.ledger;
        if p.is_relative() {
            *p = base.join(&*p);
        }
        Ok(file)
    }

    pub fn ledger_config(&self) -> LedgerConfig {
        match &self.ledger {
            LedgerFileConfig::Embedded { path } => LedgerConfig::Embedded { path: path.clone() },
        }
    }
}

/// Parameters of `devnet up`.
#[derive(Debug, Clone)]
pub struct DevnetParams {
    pub nodes: usize,
    pub shards: u16,
    pub epoch_duration: Option<Duration>,
    /// First port; 0 picks free ports.
    pub base_port: u16,
}

/// One node of a devnet directory.
#[derive(Debug, Clone)]
pub struct NodeDir {
    pub index: usize,
    pub dir: PathBuf,
}

impl NodeDir {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("node.toml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }
    pub fn pid_path(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// The node's process ID, if it runs (a zombie, exited but not yet reaped, does not).
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pid_path())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: kill(2) with signal 0 only performs permission and existence checks.
        let exists = unsafe { libc::kill(pid, 0) } == 0;
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false);
        (exists && !zombie).then_some(pid)
    }
}

/// A devnet directory.
pub struct Devnet {
    pub dir: PathBuf,
    /// The `walrusfs` executable that runs nodes (this process's own by default).
    exe: Option<PathBuf>,
}

fn random_object_id() -> Result<ObjectId, DevnetError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| DevnetError::Invalid(format!("no randomness: {e}")))?;
    Ok(ObjectId(b))
}

impl Devnet {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            exe: None,
        }
    }

    /// Runs nodes with `exe` instead of this process's executable (for tests and embedders).
    pub fn with_exe(dir: impl Into<PathBuf>, exe: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            exe: Some(exe.into()),
        }
    }

    pub fn network_file(&self) -> PathBuf {
        self.dir.join("network.toml")
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.dir.join("ledger.db")
    }

    pub fn nodes(&self) -> Result<Vec<NodeDir>, DevnetError> {
        if !self.network_file().exists() {
            return Err(DevnetError::Missing(self.dir.display().to_string()));
        }
        let mut out = Vec::new();
        for i in 0.. {
            let dir = self.dir.join("nodes").join(i.to_string());
            if !dir.exists() {
                break;
            }
            out.push(NodeDir { index: i, dir });
        }
        Ok(out)
    }

    pub fn node(&self, index: usize) -> Result<NodeDir, DevnetError> {
        self.nodes()?
            .into_iter()
            .find(|n| n.index == index)
            .ok_or(DevnetError::NoSuchNode(index))
    }

    /// Creates keys, committee, ledger and node configurations (does not start nodes).
    pub fn create(&self, p: &DevnetParams) -> Result<(), DevnetError> {
        if p.nodes == 0 || p.nodes > usize::from(p.shards) {
            return Err(DevnetError::Invalid(format!(
                "{} nodes for {} shards: need 1 to {} nodes",
                p.nodes, p.shards, p.shards
            )));
        }
        crate::encoding::EncodingConfig::new(p.shards)
            .map_err(|e| DevnetError::Invalid(e.to_string()))?;
        if self.network_file().exists() || self.ledger_path().exists() {
            return Err(DevnetError::Exists(self.dir.display().to_string()));
        }
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let dir = fs::canonicalize(&self.dir).map_err(io(&self.dir))?;
        let ledger_path = dir.join("ledger.db");
        let mut members = Vec::new();
        let mut node_files = Vec::new();
        // One block of consecutive ports below the ephemeral range, as the embedded devnet's:
        // ports from `bind(0)` came from that range, where a concurrently created devnet (tests
        // run in parallel) or an outgoing connection could get the same port before the node
        // bound it, and the other devnet's node then answered for ours.
        let base_port = if p.base_port == 0 {
            embedded::pick_base_port(p.nodes)?
        } else {
            p.base_port
        };
        for i in 0..p.nodes {
            let node_dir = dir.join("nodes").join(i.to_string());
            fs::create_dir_all(node_dir.join("data")).map_err(io(&node_dir))?;
            let key = ProtocolKeyPair::generate()?;
            let key_path = node_dir.join("key");
            fs::write(&key_path, key.to_walrus_base64()).map_err(io(&key_path))?;
            fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))
                .map_err(io(&key_path))?;
            let port = base_port + i as u16;
            let listen = SocketAddr::from(([127, 0, 0, 1], port));
            // Shards in contiguous blocks, sizes differing by at most one.
            let n = usize::from(p.shards);
            let (lo, hi) = (i * n / p.nodes, (i + 1) * n / p.nodes);
            members.push(CommitteeMember {
                node_id: random_object_id()?,
                name: format!("node-{i}"),
                network_address: listen.to_string(),
                public_key: *key.public(),
                shard_ids: (lo as u16..hi as u16).collect(),
            });
            let config = format!(
                "# walrusfs storage node {i} of the devnet in {dir}\n\
                 listen = \"{listen}\"\n\
                 data_dir = \"data\"\n\
                 key_file = \"key\"\n\
                 node_index = {i}\n\n\
                 [ledger]\n\
                 kind = \"embedded\"\n\
                 path = {ledger}\n",
                dir = dir.display(),
                ledger = toml::Value::String(ledger_path.display().to_string()),
            );
            node_files.push((node_dir.join("node.toml"), config));
        }
        let committee = Committee::new(0, p.shards, members)?;
        let genesis = Genesis {
            committee,
            params: LedgerParams {
                epoch_duration: p.epoch_duration,
                ..LedgerParams::default()
            },
            initial_balance: None,
            genesis_unix_ms: None,
        };
        EmbeddedLedger::create(&ledger_path, &genesis)?;
        for (path, text) in node_files {
            fs::write(&path, text).map_err(io(&path))?;
        }
        let network = NetworkFile {
            ledger: LedgerFileConfig::Embedded { path: ledger_path },
        };
        let text = toml::to_string(&network).map_err(|e| DevnetError::Config(e.to_string()))?;
        // Everything durable before the network file, whose presence says the devnet exists:
        // a power loss must not leave a network file over missing keys or ledger.
        sync_tree(&dir).map_err(io(&dir))?;
        let nf = self.network_file();
        let tmp = nf.with_extension("toml.tmp");
        {
            let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
            std::io::Write::write_all(
                &mut f,
                format!(
                    "# walrusfs network file: pass it as --network to blob and mount commands\n{text}"
                )
                .as_bytes(),
            )
            .map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &nf).map_err(io(&nf))?;
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        if let Some(parent) = dir.parent() {
            let _ = fs::File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    /// Starts node `index` as a background process (its own process group, so it outlives the
    /// command that started it); returns its PID. A running node is left alone.
    pub fn start_node(&self, index: usize) -> Result<i32, DevnetError> {
        self.refuse_if_embedded()?;
        let node = self.node(index)?;
        if let Some(pid) = node.running_pid() {
            return Ok(pid);
        }
        let exe = match &self.exe {
            Some(e) => e.clone(),
            None => std::env::current_exe().map_err(io(Path::new("walrusfs")))?,
        };
        let log_path = node.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        let log2 = log.try_clone().map_err(io(&log_path))?;
        let child = Command::new(exe)
            .arg("node")
            .arg("--config")
            .arg(node.config_path())
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .process_group(0)
            .spawn()
            .map_err(io(&node.dir))?;
        let pid = child.id() as i32;
        let pid_path = node.pid_path();
        fs::write(&pid_path, pid.to_string()).map_err(io(&pid_path))?;
        Ok(pid)
    }

    /// Stops node `index`: SIGTERM, then SIGKILL after `grace`. Returns whether it was running.
    pub fn stop_node(&self, index: usize, grace: Duration) -> Result<bool, DevnetError> {
        let node = self.node(index)?;
        let Some(pid) = node.running_pid() else {
            let _ = fs::remove_file(node.pid_path());
            return Ok(false);
        };
        // SAFETY: plain kill(2) on a PID we started and just checked.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && node.running_pid().is_some() {
            reap(pid);
            std::thread::sleep(Duration::from_millis(20));
        }
        if node.running_pid().is_some() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid);
        }
        let _ = fs::remove_file(node.pid_path());
        Ok(true)
    }

    /// Kills node `index` with SIGKILL at once (fault injection).
    pub fn kill_node(&self, index: usize) -> Result<bool, DevnetError> {
        let node = self.node(index)?;
        let Some(pid) = node.running_pid() else {
            return Ok(false);
        };
        // SAFETY: plain kill(2) on a PID we started and just checked.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        reap(pid);
        let _ = fs::remove_file(node.pid_path());
        Ok(true)
    }

    /// Stops every node; with `purge`, deletes the directory too.
    pub fn down(&self, purge: bool) -> Result<usize, DevnetError> {
        self.refuse_if_embedded()?;
        let mut stopped = 0;
        for n in self.nodes()? {
            if self.stop_node(n.index, Duration::from_secs(5))? {
                stopped += 1;
            }
        }
        if purge {
            fs::remove_dir_all(&self.dir).map_err(io(&self.dir))?;
        }
        Ok(stopped)
    }

    /// The PID of the process that runs this devnet's nodes in-process, if one does.
    pub fn embedded_owner(&self) -> Option<String> {
        embedded::embedded_lock_holder(&self.dir)
    }

    fn refuse_if_embedded(&self) -> Result<(), DevnetError> {
        match self.embedded_owner() {
            Some(pid) => Err(DevnetError::EmbeddedElsewhere {
                dir: self.dir.display().to_string(),
                pid,
            }),
            None => Ok(()),
        }
    }

    /// Waits until node `index` answers `/v1/health`.
    pub async fn wait_healthy(&self, index: usize, timeout: Duration) -> Result<(), DevnetError> {
        let node = self.node(index)?;
        let addr = self.node_address(index)?;
        let http = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            let ok = http
                .get(format!("http://{addr}/v1/health"))
                .timeout(Duration::from_millis(500))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline || node.running_pid().is_none() {
                return Err(DevnetError::NotHealthy {
                    index,
                    secs: timeout.as_secs(),
                    log: node.log_path().display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The listen address in node `index`'s configuration.
    pub fn node_address(&self, index: usize) -> Result<String, DevnetError> {
        let node = self.node(index)?;
        let path = node.config_path();
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let v: toml::Table =
            toml::from_str(&text).map_err(|e| DevnetError::Config(e.to_string()))?;
        v.get("listen")
            .and_then(|l| l.as_str())
            .map(String::from)
            .ok_or_else(|| DevnetError::Config(format!("{} has no listen address", path.display())))
    }
}

/// Collects a child that exited, so that it does not linger as a zombie of this process.
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG on a PID; harmless if it is not our child.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// fsyncs every file and directory under `dir` (directories after their contents).
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            sync_tree(&e.path())?;
        } else if t.is_file() {
            fs::File::open(e.path())?.sync_all()?;
        }
    }
    fs::File::open(dir)?.sync_all()
}
