//! The mount's side of the control socket: [`ControlServer`] answers requests from what a
//! [`MountContext`] knows about the running mount.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::{
    AtRiskBlob, CacheStatus, CertifiedStatus, ControlError, ExpiringStatus, FilesStatus, MAX_LINE,
    NetworkStatus, NodeStatus, Pending, ReadsStatus, Reply, Request, STATUS_VERSION, Status,
};
use crate::devnet::{EmbeddedNetwork, NodeHealth};
use crate::drive::{Drive, FsError};

/// How often a flush reports what is left.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Blobs at risk listed by `status`, and paths listed per blob.
const AT_RISK_LIMIT: usize = 20;

/// How long `status` waits for the ledger's epoch.
const EPOCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the mount stores its blobs.
#[derive(Debug, Clone)]
pub enum NetworkSource {
    /// The embedded network run inside the mount, in this devnet directory.
    Embedded { dir: PathBuf },
    /// A network file given with `--network`.
    File { path: PathBuf },
}

/// What a running mount knows about itself, shared by the control socket and the metrics
/// endpoint.
pub struct MountContext {
    pub drive: Drive,
    pub mountpoint: PathBuf,
    /// Canonical.
    pub data_dir: PathBuf,
    pub network: NetworkSource,
    /// The embedded network, for node health.
    pub embedded: Option<Arc<EmbeddedNetwork>>,
    pub started: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl MountContext {
    /// What is waiting for upload.
    pub fn pending(&self) -> Result<Pending, FsError> {
        let (files, bytes, oldest) = self.drive.pending()?;
        Ok(Pending {
            files,
            bytes,
            oldest_age_secs: oldest.map(|ms| now_ms().saturating_sub(ms) as f64 / 1000.0),
        })
    }

    /// The current epoch, or why it is unknown.
    pub async fn epoch(&self) -> Result<u64, String> {
        match tokio::time::timeout(EPOCH_TIMEOUT, self.drive.store().current_epoch()).await {
            Ok(Ok(e)) => Ok(e),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "the ledger did not answer within {} s",
                EPOCH_TIMEOUT.as_secs()
            )),
        }
    }

    /// Health of the embedded network's nodes (empty for a network file).
    pub async fn nodes(&self) -> Vec<NodeStatus> {
        let Some(net) = &self.embedded else {
            return Vec::new();
        };
        net.node_health()
            .await
            .into_iter()
            .map(|(node, health)| NodeStatus {
                index: node.index,
                address: node.address.to_string(),
                healthy: health.is_healthy(),
                detail: match health {
                    NodeHealth::Answering(info) if info.node_status == "Active" => "active".into(),
                    NodeHealth::Answering(info) => format!("status {}", info.node_status),
                    NodeHealth::NotAnswering { reason } => reason,
                },
            })
            .collect()
    }

    /// The full status report.
    pub async fn status(&self, expiring_within: u64) -> Result<Status, FsError> {
        let stat = self.drive.statfs().await?;
        let totals = stat.totals;
        let pending = self.pending()?;
        let epoch = self.epoch().await;
        let expiring = match &epoch {
            Ok(e) => {
                let x = self
                    .drive
                    .blobs_ending_by(e.saturating_add(expiring_within))?;
                Some(ExpiringStatus {
                    within_epochs: expiring_within,
                    blobs: x.blobs,
                    bytes: x.bytes,
                    first_end_epoch: x.first_end_epoch,
                })
            }
            Err(_) => None,
        };
        let at_risk = match &epoch {
            Ok(e) => self
                .drive
                .blobs_at_risk(*e, crate::drive::RENEW_MARGIN, AT_RISK_LIMIT)?
                .into_iter()
                .map(|r| AtRiskBlob {
                    blob_id: r.blob_id.to_string(),
                    end_epoch: r.end_epoch,
                    expired: r.expired,
                    bytes: r.live_bytes,
                    file_count: r.file_count,
                    files: r.files,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let d = self.drive.clone();
        let (cache_bytes, staging_bytes) =
            tokio::task::spawn_blocking(move || (d.cache_bytes(), d.staging_bytes()))
                .await
                .unwrap_or((0, 0));
        let reads = self.drive.read_counts();
        let (kind, path) = match &self.network {
            NetworkSource::Embedded { dir } => ("embedded", dir.clone()),
            NetworkSource::File { path } => ("file", path.clone()),
        };
        Ok(Status {
            version: STATUS_VERSION,
            mountpoint: self.mountpoint.clone(),
            data_dir: self.data_dir.clone(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            read_only: self.drive.config().read_only,
            network: NetworkStatus {
                kind: kind.into(),
                path,
                backend: self.drive.store().kind().into(),
                epoch: epoch.as_ref().ok().copied(),
                epoch_error: epoch.err(),
            },
            files: FilesStatus {
                count: totals.inodes,
                bytes: totals.bytes,
            },
            pending,
            certified: CertifiedStatus {
                blobs: totals.blobs,
                bytes: totals.blob_bytes,
                encoded_bytes: totals.encoded_bytes,
            },
            expiring,
            at_risk,
            cache: CacheStatus {
                bytes: cache_bytes,
                staging_bytes,
                reads: ReadsStatus {
                    staging: reads.staging,
                    file_cache: reads.file_cache,
                    extent_cache: reads.extent_cache,
                    network: reads.network,
                },
                hit_rate: reads.hit_rate(),
                bytes_read: reads.bytes_read,
                bytes_written: reads.bytes_written,
            },
            nodes: self.nodes().await,
        })
    }
}

/// The listening control socket of a mount. [`ControlServer::stop`] (or dropping it) stops
/// answering and removes the socket file.
pub struct ControlServer {
    socket: PathBuf,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listens on the control socket of `ctx.data_dir` (see the module documentation of
    /// `control`). Must be called inside a tokio runtime. A socket file left by a mount that
    /// died is replaced: the caller holds the drive's lock, so no live mount owns it.
    pub fn start(ctx: Arc<MountContext>) -> Result<Self, ControlError> {
        let socket = super::socket_path(&ctx.data_dir);
        let bind_err = |source| ControlError::Bind {
            socket: socket.display().to_string(),
            source,
        };
        // Bound under a temporary name and made 0600 before it is moved in place, so nobody
        // else can ever connect.
        let tmp = socket.with_file_name(format!(".c{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(bind_err)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, &socket))
            .and_then(|()| listener.set_nonblocking(true))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                bind_err(e)
            })?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(bind_err)?;
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, _)) => {
                            conns.spawn(serve_conn(stream, ctx.clone()));
                        }
                        Err(e) => {
                            warn!(error = %e, "control socket: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    _ = stop_rx.changed() => break,
                }
            }
            conns.abort_all();
            while conns.join_next().await.is_some() {}
        });
        info!(socket = %socket.display(), "control socket listening");
        Ok(Self {
            socket,
            stop,
            task: Some(task),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops answering (requests in progress are dropped) and removes the socket.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn serve_conn(stream: UnixStream, ctx: Arc<MountContext>) {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    loop {
        let mut line = String::new();
        let n = match (&mut reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                debug!(error = %e, "control connection: read failed");
                return;
            }
        };
        if n == 0 {
            return;
        }
        if !line.ends_with('\n') && n >= MAX_LINE {
            let _ = send(
                &mut w,
                &Reply::Error {
                    message: format!("request longer than {MAX_LINE} bytes"),
                },
            )
            .await;
            return;
        }
        let request: Request = match serde_json::from_str(line.trim()) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("bad request: {e}");
                if send(&mut w, &Reply::Error { message }).await.is_err() {
                    return;
                }
                continue;
            }
        };
        debug!(?request, "control request");
        let ok = match request {
            Request::Status { expiring_within } => {
                let reply = match ctx.status(expiring_within).await {
                    Ok(status) => Reply::Status {
                        status: Box::new(status),
                    },
                    Err(e) => Reply::Error {
                        message: format!("cannot read the drive's metadata: {e}"),
                    },
                };
                send(&mut w, &reply).await.is_ok()
            }
            Request::Flush => flush(&ctx, &mut w).await.is_ok(),
        };
        if !ok {
            return;
        }
    }
}

/// Waits for the upload queue to empty, reporting progress; fails only when the client is
/// gone.
async fn flush(
    ctx: &MountContext,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let started = Instant::now();
    let pending = match ctx.pending() {
        Ok(p) => p,
        Err(e) => {
            let message = format!("cannot read the upload queue: {e}");
            return send(w, &Reply::Error { message }).await;
        }
    };
    if ctx.drive.config().read_only && pending.files > 0 {
        let message = format!(
            "the drive is mounted read-only, so its {} pending upload(s) wait for the next \
             read-write mount",
            pending.files
        );
        return send(w, &Reply::Error { message }).await;
    }
    info!(
        files = pending.files,
        bytes = pending.bytes,
        "flush requested"
    );
    let idle = ctx.drive.wait_idle();
    tokio::pin!(idle);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tokio::select! {
            r = &mut idle => {
                let reply = match r {
                    Ok(()) => Reply::Flushed { elapsed_secs: started.elapsed().as_secs_f64() },
                    Err(e) => Reply::Error {
                        message: format!("the flush stopped: {e}; pending uploads stay queued"),
                    },
                };
                return send(w, &reply).await;
            }
            _ = tick.tick() => {
                if let Ok(pending) = ctx.pending() {
                    send(w, &Reply::Progress { pending }).await?;
                }
            }
        }
    }
}
