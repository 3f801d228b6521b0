//! `walrusfs devnet ...`: a local network of storage nodes and an embedded ledger.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;

use crate::devnet::{Devnet, DevnetParams};
use crate::ledger::{EmbeddedLedger, Ledger as _};

/// Where devnets live unless `--dir` says otherwise.
pub fn default_dir() -> PathBuf {
    data_home().join("walrusfs").join("devnet")
}

fn data_home() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
}

#[derive(Debug, clap::Args)]
pub struct DirArg {
    /// The devnet's directory [default: $XDG_DATA_HOME/walrusfs/devnet].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl DirArg {
    fn devnet(&self) -> Devnet {
        Devnet::new(self.dir.clone().unwrap_or_else(default_dir))
    }
}

#[derive(Debug, Subcommand)]
pub enum DevnetCommand {
    /// Create a devnet (keys, committee, ledger) and start its storage nodes in the background.
    ///
    /// Writes DIR/network.toml for `--network` of the blob and mount commands. The number of
    /// shards sets the largest blob (about 1.8 MB at 10 shards, 149 MB at 100, 13.6 GiB at
    /// 1000) and the fixed cost of each blob, which grows with its square: 100, the default,
    /// stores 1 KiB in milliseconds and still takes blobs of 149 MB.
    Up {
        #[command(flatten)]
        dir: DirArg,
        /// Storage node processes to run.
        #[arg(long, default_value_t = 7)]
        nodes: usize,
        /// Shards of the committee, spread evenly over the nodes (4 to 4096).
        #[arg(long, default_value_t = 100)]
        shards: u16,
        /// Length of an epoch, e.g. `1h`, `30m`, `24h` (blobs are stored for whole epochs).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        epoch_duration: Duration,
        /// First TCP port on 127.0.0.1 (node i listens on PORT + i); 0 picks free ports.
        #[arg(long, default_value_t = 0)]
        base_port: u16,
    },
    /// Show each node: pid, address, shards and health.
    Status {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Stop one node (SIGTERM, then SIGKILL after 5 s). Its data stays.
    StopNode {
        /// Node index, as listed by `devnet status`.
        index: usize,
        #[command(flatten)]
        dir: DirArg,
        /// Kill at once with SIGKILL, as a crash would.
        #[arg(long)]
        kill: bool,
    },
    /// Start one stopped node again.
    StartNode {
        index: usize,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Stop every node. With --purge, also delete the devnet directory and all it stores.
    Down {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        purge: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 10m, 1h or 2d"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{s}` is not a duration like 30s, 10m, 1h or 2d")),
    };
    if secs == 0 {
        return Err("the epoch duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn run(cmd: DevnetCommand) -> anyhow::Result<()> {
    match cmd {
        DevnetCommand::Up {
            dir,
            nodes,
            shards,
            epoch_duration,
            base_port,
        } => {
            let devnet = dir.devnet();
            devnet.create(&DevnetParams {
                nodes,
                shards,
                epoch_duration: Some(epoch_duration),
                base_port,
            })?;
            for i in 0..nodes {
                devnet.start_node(i)?;
            }
            let rt = runtime()?;
            let pb = super::progress::bar(nodes as u64, "starting storage nodes");
            rt.block_on(async {
                for i in 0..nodes {
                    devnet.wait_healthy(i, Duration::from_secs(20)).await?;
                    pb.inc(1);
                }
                pb.finish_and_clear();
                Ok::<_, anyhow::Error>(())
            })?;
            println!(
                "devnet up: {nodes} storage nodes, {shards} shards, epochs of {}",
                humantime(epoch_duration)
            );
            println!("network file: {}", devnet.network_file().display());
            println!(
                "try: walrusfs blob put FILE --network {}",
                devnet.network_file().display()
            );
        }
        DevnetCommand::Status { dir } => {
            let devnet = dir.devnet();
            let nodes = devnet.nodes()?;
            let ledger = EmbeddedLedger::open(devnet.ledger_path())?;
            let committee = ledger.committee()?;
            let info = ledger.epoch_info()?;
            println!(
                "epoch {} · {} shards · {} nodes · ledger {}",
                info.epoch,
                committee.n_shards(),
                nodes.len(),
                devnet.ledger_path().display()
            );
            // Nodes embedded in a `walrusfs mount` have no pid files; they answer all the same.
            let embedded = devnet.embedded_owner();
            if let Some(pid) = &embedded {
                println!("nodes run inside walrusfs process {pid} (embedded network)");
            }
            println!(
                "{:<5} {:<8} {:<22} {:<12} health",
                "node", "pid", "address", "shards"
            );
            let rt = runtime()?;
            for n in nodes {
                let addr = devnet.node_address(n.index)?;
                let shards = committee
                    .member(n.index as u16)
                    .map(|m| shard_ranges(&m.shard_ids))
                    .unwrap_or_default();
                let pid = n.running_pid();
                let health = if pid.is_none() && embedded.is_none() {
                    "stopped".to_string()
                } else {
                    rt.block_on(async {
                        match devnet
                            .wait_healthy(n.index, Duration::from_millis(800))
                            .await
                        {
                            Ok(()) => "healthy".to_string(),
                            Err(_) => "not answering".to_string(),
                        }
                    })
                };
                println!(
                    "{:<5} {:<8} {:<22} {:<12} {health}",
                    n.index,
                    pid.map(|p| p.to_string())
                        .or_else(|| embedded.clone())
                        .unwrap_or_else(|| "-".into()),
                    addr,
                    shards
                );
            }
        }
        DevnetCommand::StopNode { index, dir, kill } => {
            let devnet = dir.devnet();
            let was = if kill {
                devnet.kill_node(index)?
            } else {
                devnet.stop_node(index, Duration::from_secs(5))?
            };
            println!(
                "node {index} {}",
                if was { "stopped" } else { "was not running" }
            );
        }
        DevnetCommand::StartNode { index, dir } => {
            let devnet = dir.devnet();
            let pid = devnet.start_node(index)?;
            runtime()?.block_on(devnet.wait_healthy(index, Duration::from_secs(20)))?;
            println!("node {index} running (pid {pid})");
        }
        DevnetCommand::Down { dir, purge } => {
            let devnet = dir.devnet();
            let n = devnet.down(purge)?;
            println!(
                "stopped {n} node(s){}",
                if purge {
                    "; devnet directory deleted"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `0-13,20` style list of shard indices.
fn shard_ranges(shards: &[u16]) -> String {
    let mut v: Vec<u16> = shards.to_vec();
    v.sort_unstable();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}
