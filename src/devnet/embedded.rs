//! [`EmbeddedNetwork`]: a devnet whose storage nodes run inside this process, the network
//! `walrusfs mount` uses when it is given no `--network`.
//!
//! The directory is an ordinary devnet directory (see the module documentation of `devnet`):
//! created by [`Devnet::create`] on first use, then reopened on every later one, so blobs stored
//! in one run are read in the next. Only the way nodes run differs: here each is a
//! [`RunningNode`] task of this process instead of a `walrusfs node` child process.
//!
//! Invariants:
//! - at most one process runs a devnet directory's nodes: this process holds an exclusive lock
//!   on `embedded.lock` (with its PID inside, for messages) while the network is open, refuses
//!   to open a devnet whose nodes run as separate processes (their `pid` files), and
//!   [`Devnet::start_node`] and [`Devnet::down`] refuse while the lock is held;
//! - embedded nodes write no `pid` file, so `walrusfs devnet stop-node` can never signal the
//!   process that embeds them;
//! - node ports are part of the committee on the ledger, fixed when the devnet is created; a
//!   port taken by another program at start is reported as [`DevnetError::PortInUse`].

use std::fs;
use std::io::{Read as _, Seek as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tracing::{info, warn};

use super::{Devnet, DevnetError, DevnetParams, LedgerFileConfig, NetworkFile, io};
use crate::client::{Client, ClientConfig};
use crate::ledger::{EmbeddedLedger, Ledger};
use crate::node::{NodeConfig, NodeError, RunningNode, ServiceHealthInfo};
use crate::protocol::ApiSuccess;

/// The lock file that marks a devnet directory as run by one process.
pub(super) const LOCK_FILE: &str = "embedded.lock";

/// How long a started node may take to answer its first health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Time limit of one health request.
const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Where devnets (embedded or of node processes) put their nodes' ports when the parameters
/// leave the choice to us
/// (`base_port = 0`): below Linux's ephemeral range (32768–60999 by default), from which the
/// kernel picks the local ports of outgoing connections and of `bind(0)`. A port in that range is free when the
/// devnet is created but may be held by some connection when the network is reopened later;
/// since ports are fixed in the committee, that would keep the node from starting.
const PORT_FLOOR: u16 = 10_000;
const PORT_CEILING: u16 = 32_768;

impl DevnetParams {
    /// The network `walrusfs mount` creates when it is given no `--network`: the same as
    /// `walrusfs devnet up`'s defaults, 7 nodes, 100 shards and 1-day epochs.
    ///
    /// - 100 shards allow blobs of up to 149 MB, plenty for packing files, at a fixed cost per
    ///   blob the drive can pay (its metadata and uploads grow with `n²` and `n`). Measured in
    ///   process through [`crate::blobstore::WalrusStore`] on 2 shared cores: a put takes
    ///   about 130 ms for 1 KiB to 64 KiB, 160 ms for 1 MiB and 0.7 s for 16 MiB; reading 4 KiB
    ///   takes 1.5 to 3.5 ms. 10 shards (4 nodes) put small blobs in 16 ms but cap blobs at
    ///   1.8 MB; 21 shards take 50 ms and cap them at 8.8 MB; 1000 shards (mainnet's) take
    ///   over 1 s per put and bill 66 MB for a 1 KiB blob. Since the drive packs small files
    ///   into a blob, the fixed cost is paid per blob, not per file.
    /// - 7 nodes tolerate 2 failed nodes (f = 33 of 100 shards in blocks of 14 or 15), as on a
    ///   real network, so the drive's reads and writes exercise the same quorum paths; all of
    ///   them run in this process, so more nodes only cost more HTTP and ledger calls.
    /// - 1-day epochs match Walrus testnet, so the drive's lease and extension logic sees
    ///   realistic lifetimes.
    /// - Ports are picked at creation from a block of free ones below the ephemeral port range
    ///   and then fixed in the committee (see [`EmbeddedNetwork::open_or_create`]).
    pub fn embedded_default() -> Self {
        Self {
            nodes: 7,
            shards: 100,
            epoch_duration: Some(Duration::from_secs(24 * 3600)),
            base_port: 0,
        }
    }
}

/// One node of an [`EmbeddedNetwork`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedNode {
    /// Index in the committee and under `nodes/`.
    pub index: usize,
    /// Where its REST API listens.
    pub address: SocketAddr,
    /// Its directory (`node.toml`, `key`, `data/`).
    pub dir: PathBuf,
}

/// What a node's health endpoint says.
#[derive(Debug, Clone)]
pub enum NodeHealth {
    /// The node answered `/v1/health` (`node_status` is `Active` when it is in the committee).
    Answering(Box<ServiceHealthInfo>),
    /// It did not answer in time or answered with an error.
    NotAnswering { reason: String },
}

impl NodeHealth {
    pub fn is_healthy(&self) -> bool {
        matches!(self, NodeHealth::Answering(info) if info.node_status == "Active")
    }
}

/// An exclusive lock on a devnet directory's `embedded.lock`, released when dropped (or when
/// the process dies: the kernel drops `flock` locks with the file descriptor).
#[derive(Debug)]
struct DirLock {
    _file: fs::File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<Self, DevnetError> {
        let path = dir.join(LOCK_FILE);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(DevnetError::InUse {
                    dir: dir.display().to_string(),
                    pid: read_pid(&mut file),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
        }
        // Truncated only once locked, so a holder's PID is never wiped by a failed attempt.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.flush())
            .map_err(io(&path))?;
        Ok(Self { _file: file })
    }
}

fn read_pid(file: &mut fs::File) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    match text.trim() {
        "" => "unknown".into(),
        pid => pid.chars().take(20).collect(),
    }
}

/// The PID recorded in `dir`'s lock file if some process holds the lock now.
pub(super) fn embedded_lock_holder(dir: &Path) -> Option<String> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .open(dir.join(LOCK_FILE))
        .ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(fs::TryLockError::WouldBlock) => Some(read_pid(&mut file)),
        Err(fs::TryLockError::Error(_)) => None,
    }
}

struct Running {
    node: EmbeddedNode,
    server: RunningNode,
}

/// A devnet whose storage nodes run in this process; see the module documentation.
///
/// Must be opened and used inside a tokio runtime: the nodes are tasks of it (a multi-threaded
/// runtime keeps them answering while other tasks compute).
/// Call [`EmbeddedNetwork::shutdown`] to stop the nodes in order; dropping the network stops
/// them too, without waiting for requests in flight.
pub struct EmbeddedNetwork {
    devnet: Devnet,
    nodes: Vec<Running>,
    ledger: Arc<dyn Ledger>,
    client: Client,
    http: reqwest::Client,
    // Declared last: released only after the nodes and the ledger are dropped.
    _lock: DirLock,
}

impl std::fmt::Debug for EmbeddedNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedNetwork")
            .field("dir", &self.devnet.dir)
            .field("nodes", &self.nodes())
            .finish_non_exhaustive()
    }
}

impl EmbeddedNetwork {
    /// Opens the devnet in `dir`, creating it with `params` if `dir` holds none (no
    /// `network.toml`; an existing devnet keeps its own parameters), and starts all its nodes
    /// in this process. Returns once every node answers its health check.
    ///
    /// With `params.base_port == 0` the nodes get a block of consecutive free ports below the
    /// ephemeral port range (see [`DevnetParams::embedded_default`]).
    ///
    /// Fails with [`DevnetError::InUse`] if another process runs this devnet in-process,
    /// [`DevnetError::RunningAsProcesses`] if its nodes run as `walrusfs node` processes, and
    /// [`DevnetError::PortInUse`] if a node's port is taken.
    pub async fn open_or_create(dir: &Path, params: &DevnetParams) -> Result<Self, DevnetError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lock = DirLock::acquire(dir)?;
        let devnet = Devnet::new(dir);
        if !devnet.network_file().exists() {
            let mut params = params.clone();
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || {
                if params.base_port == 0 {
                    match pick_base_port(params.nodes) {
                        Ok(base) => params.base_port = base,
                        // Ephemeral ports picked by `Devnet::create` still work, until some
                        // outgoing connection happens to hold one at a later start.
                        Err(e) => warn!("{e}; using ephemeral ports"),
                    }
                }
                info!(dir = %dir.display(), nodes = params.nodes, shards = params.shards, base_port = params.base_port, "creating the embedded devnet");
                Devnet::new(dir).create(&params)
            })
            .await
            .map_err(|e| DevnetError::Invalid(format!("creating the devnet panicked: {e}")))??;
        }
        let node_dirs = devnet.nodes()?;
        let running: Vec<String> = node_dirs
            .iter()
            .filter_map(|n| {
                n.running_pid()
                    .map(|pid| format!("{pid} (node {})", n.index))
            })
            .collect();
        if !running.is_empty() {
            return Err(DevnetError::RunningAsProcesses {
                dir: dir.display().to_string(),
                pids: running.join(", "),
            });
        }

        // The ledger and client first: what fails here leaves no node to stop.
        let network = NetworkFile::load(&devnet.network_file())?;
        let LedgerFileConfig::Embedded { path } = network.ledger;
        let ledger = tokio::task::spawn_blocking(move || EmbeddedLedger::open(path))
            .await
            .map_err(|e| DevnetError::Invalid(format!("opening the ledger panicked: {e}")))??;
        let ledger: Arc<dyn Ledger> = Arc::new(ledger);
        // The nodes live in this process: every sliver body in flight is held twice, by the
        // client and by the node parsing it, in the one process whose memory is budgeted.
        // Half the separate-process default: 342 against 426 MiB of peak while a mount
        // uploads small files (at that default, node processes took 0.85 s instead of
        // 0.72 s per 64 MiB blob).
        let config = ClientConfig {
            upload_bytes_per_node: 4 << 20,
            min_uploads_per_node: 2,
            ..ClientConfig::default()
        };
        let client =
            Client::new(ledger.clone(), config).map_err(|e| DevnetError::Client(Box::new(e)))?;

        let mut nodes: Vec<Running> = Vec::with_capacity(node_dirs.len());
        for n in node_dirs {
            match start_node(n.index, &n.dir).await {
                Ok(r) => nodes.push(r),
                Err(e) => {
                    stop_all(nodes).await;
                    return Err(e);
                }
            }
        }
        let http = reqwest::Client::new();
        for r in &nodes {
            if let Err(e) = wait_healthy(&http, &r.node).await {
                stop_all(nodes).await;
                return Err(e);
            }
        }

        info!(dir = %dir.display(), nodes = nodes.len(), "embedded devnet running");
        Ok(Self {
            devnet,
            nodes,
            ledger,
            client,
            http,
            _lock: lock,
        })
    }

    /// The devnet directory.
    pub fn dir(&self) -> &Path {
        &self.devnet.dir
    }

    /// The ledger (the devnet's `ledger.db`, opened in this process).
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// A client of this network.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `network.toml`: lets other processes use this network's ledger while this one runs the
    /// nodes (`walrusfs blob ... --network FILE`).
    pub fn network_file(&self) -> PathBuf {
        self.devnet.network_file()
    }

    /// The nodes, by index.
    pub fn nodes(&self) -> Vec<EmbeddedNode> {
        self.nodes.iter().map(|r| r.node.clone()).collect()
    }

    /// Asks every node's health endpoint, in parallel; by index.
    pub async fn node_health(&self) -> Vec<(EmbeddedNode, NodeHealth)> {
        join_all(self.nodes.iter().map(|r| async {
            let health = match health(&self.http, r.node.address).await {
                Ok(info) => NodeHealth::Answering(Box::new(info)),
                Err(reason) => NodeHealth::NotAnswering { reason },
            };
            (r.node.clone(), health)
        }))
        .await
    }

    /// Stops every node (letting requests in flight finish for a few seconds) and releases
    /// the devnet directory. Reports the first node that failed to stop cleanly; all are
    /// stopped regardless.
    pub async fn shutdown(self) -> Result<(), DevnetError> {
        let Self {
            devnet,
            nodes,
            ledger,
            client,
            http,
            _lock,
        } = self;
        drop((client, http));
        let results = join_all(nodes.into_iter().map(|r| async move {
            let index = r.node.index;
            let dir = r.node.dir.clone();
            r.server
                .shutdown()
                .await
                .map_err(|e| node_error(index, &dir, e))
        }))
        .await;
        drop(ledger);
        info!(dir = %devnet.dir.display(), "embedded devnet stopped");
        results.into_iter().collect()
    }
}

fn node_error(index: usize, dir: &Path, source: NodeError) -> DevnetError {
    DevnetError::Node {
        index,
        dir: dir.display().to_string(),
        source: Box::new(source),
    }
}

async fn start_node(index: usize, dir: &Path) -> Result<Running, DevnetError> {
    let config_path = dir.join("node.toml");
    let config = NodeConfig::load(&config_path).map_err(|e| node_error(index, dir, e.into()))?;
    let listen = config.listen;
    match RunningNode::start(config).await {
        Ok(server) => Ok(Running {
            node: EmbeddedNode {
                index,
                address: server.local_addr(),
                dir: dir.to_path_buf(),
            },
            server,
        }),
        Err(NodeError::Bind { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse => {
            Err(DevnetError::PortInUse {
                port: listen.port(),
                index,
                dir: dir.display().to_string(),
            })
        }
        Err(e) => Err(node_error(index, dir, e)),
    }
}

async fn stop_all(nodes: Vec<Running>) {
    for r in join_all(nodes.into_iter().map(|r| r.server.shutdown())).await {
        if let Err(e) = r {
            warn!("stopping a node after a failed start: {e}");
        }
    }
}

async fn health(http: &reqwest::Client, addr: SocketAddr) -> Result<ServiceHealthInfo, String> {
    let response = http
        .get(format!("http://{addr}/v1/health"))
        .timeout(HEALTH_REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    serde_json::from_slice::<ApiSuccess<ServiceHealthInfo>>(&body)
        .map(|r| r.success.data)
        .map_err(|e| format!("malformed health response: {e}"))
}

async fn wait_healthy(http: &reqwest::Client, node: &EmbeddedNode) -> Result<(), DevnetError> {
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    loop {
        let reason = match health(http, node.address).await {
            Ok(info) if info.node_status == "Active" => return Ok(()),
            Ok(info) => format!("node status {}", info.node_status),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(DevnetError::EmbeddedNotHealthy {
                index: node.index,
                secs: HEALTH_TIMEOUT.as_secs(),
                reason,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first of `n` consecutive ports on 127.0.0.1 that are all free now, between
/// [`PORT_FLOOR`] and the ephemeral range (or [`PORT_CEILING`], whichever is lower).
pub(super) fn pick_base_port(n: usize) -> Result<u16, DevnetError> {
    let ceiling = ephemeral_floor().unwrap_or(PORT_CEILING).min(PORT_CEILING);
    let n16 = u16::try_from(n)
        .ok()
        .filter(|&n| n > 0 && n < ceiling.saturating_sub(PORT_FLOOR))
        .ok_or_else(|| DevnetError::Invalid(format!("cannot find {n} free ports for the nodes")))?;
    let span = ceiling - PORT_FLOOR - n16;
    for _ in 0..64 {
        let mut r = [0u8; 2];
        getrandom::fill(&mut r).map_err(|e| DevnetError::Invalid(format!("no randomness: {e}")))?;
        let base = PORT_FLOOR + u16::from_le_bytes(r) % span;
        // Held together, so that the whole block is free at one moment.
        let block: Result<Vec<TcpListener>, _> = (0..n16)
            .map(|i| TcpListener::bind(("127.0.0.1", base + i)))
            .collect();
        if block.is_ok() {
            return Ok(base);
        }
    }
    Err(DevnetError::Invalid(format!(
        "found no {n} consecutive free ports between {PORT_FLOOR} and {ceiling}; pass a base port"
    )))
}

/// The lowest ephemeral port, from `/proc/sys/net/ipv4/ip_local_port_range`.
fn ephemeral_floor() -> Option<u16> {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::StoreOptions;

    fn small() -> DevnetParams {
        DevnetParams {
            nodes: 4,
            shards: 10,
            epoch_duration: None,
            base_port: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_store_shutdown_reopen_read() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let net = EmbeddedNetwork::open_or_create(&dir, &small())
            .await
            .unwrap();
        assert!(net.network_file().exists());
        let nodes = net.nodes();
        assert_eq!(nodes.len(), 4);
        let ceiling = ephemeral_floor().unwrap_or(PORT_CEILING).min(PORT_CEILING);
        for n in &nodes {
            let port = n.address.port();
            if ceiling > PORT_FLOOR + 100 {
                assert!((PORT_FLOOR..ceiling).contains(&port), "{port}");
            }
            assert!(!n.dir.join("pid").exists());
        }
        let health = net.node_health().await;
        assert!(health.iter().all(|(_, h)| h.is_healthy()), "{health:?}");
        let total: usize = health
            .iter()
            .map(|(_, h)| match h {
                NodeHealth::Answering(info) => info.owned_shards().len(),
                NodeHealth::NotAnswering { .. } => 0,
            })
            .sum();
        assert_eq!(total, 10);

        let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let outcome = net
            .client()
            .store(blob.clone(), StoreOptions::default())
            .await
            .unwrap();
        let id = outcome.blob_id;
        let _ = tokio::time::timeout(Duration::from_secs(10), join_all(outcome.stragglers)).await;
        assert_eq!(net.client().read(id, None).await.unwrap().0, blob);
        assert_eq!(net.ledger().current_epoch().unwrap(), 0);
        net.shutdown().await.unwrap();

        let net = EmbeddedNetwork::open_or_create(&dir, &small())
            .await
            .unwrap();
        assert_eq!(
            net.nodes(),
            nodes,
            "same ports and directories after reopening"
        );
        let (part, _) = net.client().read(id, Some(1000..250_000)).await.unwrap();
        assert_eq!(part, blob[1000..250_000]);
        net.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn taken_port_is_named_and_nothing_stays_running() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let net = EmbeddedNetwork::open_or_create(&dir, &small())
            .await
            .unwrap();
        let nodes = net.nodes();
        net.shutdown().await.unwrap();

        let taken = nodes[2].address;
        let squatter = TcpListener::bind(taken).unwrap();
        let err = EmbeddedNetwork::open_or_create(&dir, &small())
            .await
            .unwrap_err();
        match &err {
            DevnetError::PortInUse { port, index, dir } => {
                assert_eq!((*port, *index), (taken.port(), 2));
                assert_eq!(dir, &nodes[2].dir.display().to_string());
            }
            other => panic!("expected PortInUse, got {other}"),
        }
        let message = err.to_string();
        assert!(message.contains(&taken.port().to_string()), "{message}");
        // Nodes 0 and 1 were started before the failure and must have been stopped again.
        for n in &nodes[..2] {
            assert!(
                TcpListener::bind(n.address).is_ok(),
                "{} still bound",
                n.address
            );
        }
        drop(squatter);
        let net = EmbeddedNetwork::open_or_create(&dir, &small())
            .await
            .unwrap();
        net.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_a_devnet_run_elsewhere() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let net = EmbeddedNetwork::open_or_create(&dir, &small())
            .await
            .unwrap();

        // A second opener (here: the same process, through another file description).
        let err = EmbeddedNetwork::open_or_create(&dir, &small())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, DevnetError::InUse { pid, .. } if *pid == std::process::id().to_string()),
            "{err}"
        );
        // The tools for node processes leave an embedded devnet alone.
        let devnet = Devnet::new(&dir);
        assert!(matches!(
            devnet.start_node(0),
            Err(DevnetError::EmbeddedElsewhere { .. })
        ));
        assert!(matches!(
            devnet.down(true),
            Err(DevnetError::EmbeddedElsewhere { .. })
        ));
        assert!(dir.join("network.toml").exists());
        net.shutdown().await.unwrap();

        // Node processes of `walrusfs devnet up`, seen through their pid files (this test
        // process stands in for a node process).
        fs::write(dir.join("nodes/1/pid"), std::process::id().to_string()).unwrap();
        let err = EmbeddedNetwork::open_or_create(&dir, &small())
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, DevnetError::RunningAsProcesses { .. })
                && message.contains("devnet down"),
            "{message}"
        );
    }

    #[test]
    fn embedded_default_is_devnet_up_default() {
        let p = DevnetParams::embedded_default();
        assert_eq!((p.nodes, p.shards, p.base_port), (7, 100, 0));
        assert_eq!(p.epoch_duration, Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn picked_ports_are_free_and_below_the_ephemeral_range() {
        let ceiling = ephemeral_floor().unwrap_or(PORT_CEILING).min(PORT_CEILING);
        if ceiling > PORT_FLOOR + 100 {
            let base = pick_base_port(7).unwrap();
            assert!(base >= PORT_FLOOR && base + 7 <= ceiling);
        }
    }
}
