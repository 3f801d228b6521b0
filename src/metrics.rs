//! The optional Prometheus endpoint of a mount (`--metrics-addr`, config key
//! `metrics_addr`): `GET /metrics` in the text exposition format.
//!
//! - FUSE requests by operation: `walrusfs_fuse_requests_total{op}` and the latency
//!   histogram `walrusfs_fuse_request_duration_seconds{op}` (fed by [`OpHook`]);
//! - bytes through the mount: `walrusfs_read_bytes_total`, `walrusfs_written_bytes_total`;
//!   reads by where they were served from: `walrusfs_reads_total{source}` (`staging`,
//!   `file_cache`, `extent_cache`, `network`);
//! - the upload queue: `walrusfs_pending_files`, `walrusfs_pending_bytes`,
//!   `walrusfs_pending_oldest_age_seconds`;
//! - stored blobs: `walrusfs_certified_blobs`, `walrusfs_certified_bytes`,
//!   `walrusfs_certified_encoded_bytes`;
//! - local disk: `walrusfs_cache_bytes`, `walrusfs_staging_bytes`;
//! - the embedded network's nodes: `walrusfs_node_up{node,address}` and
//!   `walrusfs_node_health_failures_total{node,address}` (failed health checks, one per scrape
//!   while a node is down); `walrusfs_ledger_epoch`.
//!
//! Everything except the FUSE figures is read from the drive when scraped.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::control::MountContext;
use crate::drive::ReadCounts;
use crate::fuse::OpHook;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot serve metrics on {addr}: {source}; pick another address with --metrics-addr \
         or the config key metrics_addr"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
    address: String,
}

type U64Gauge = Gauge<u64, AtomicU64>;
type F64Gauge = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 50 µs to about 13 s.
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
}

/// The metrics of one mount.
pub struct Metrics {
    registry: Registry,
    ops: Family<OpLabels, Counter>,
    latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    reads: Family<SourceLabels, Counter>,
    read_bytes: Counter,
    written_bytes: Counter,
    pending_files: U64Gauge,
    pending_bytes: U64Gauge,
    pending_age: F64Gauge,
    certified_blobs: U64Gauge,
    certified_bytes: U64Gauge,
    certified_encoded: U64Gauge,
    cache_bytes: U64Gauge,
    staging_bytes: U64Gauge,
    epoch: U64Gauge,
    node_up: Family<NodeLabels, U64Gauge>,
    node_failures: Family<NodeLabels, Counter>,
    /// Drive counters as of the last scrape, to turn them into counter increments.
    last: Mutex<ReadCounts>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("walrusfs");
        let m = Metrics {
            ops: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            reads: Family::default(),
            read_bytes: Counter::default(),
            written_bytes: Counter::default(),
            pending_files: U64Gauge::default(),
            pending_bytes: U64Gauge::default(),
            pending_age: F64Gauge::default(),
            certified_blobs: U64Gauge::default(),
            certified_bytes: U64Gauge::default(),
            certified_encoded: U64Gauge::default(),
            cache_bytes: U64Gauge::default(),
            staging_bytes: U64Gauge::default(),
            epoch: U64Gauge::default(),
            node_up: Family::default(),
            node_failures: Family::default(),
            last: Mutex::new(ReadCounts::default()),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("fuse_requests", "FUSE requests answered", m.ops.clone());
        r.register(
            "fuse_request_duration_seconds",
            "Time from a FUSE request's arrival to its reply",
            m.latency.clone(),
        );
        r.register(
            "reads",
            "Reads by where they were served from (a read of a clean file counts once per extent)",
            m.reads.clone(),
        );
        r.register(
            "read_bytes",
            "Bytes read through the mount",
            m.read_bytes.clone(),
        );
        r.register(
            "written_bytes",
            "Bytes written through the mount",
            m.written_bytes.clone(),
        );
        r.register(
            "pending_files",
            "Files waiting for upload",
            m.pending_files.clone(),
        );
        r.register(
            "pending_bytes",
            "Bytes waiting for upload",
            m.pending_bytes.clone(),
        );
        r.register(
            "pending_oldest_age_seconds",
            "How long the oldest pending upload has waited",
            m.pending_age.clone(),
        );
        r.register(
            "certified_blobs",
            "Blobs the drive stored",
            m.certified_blobs.clone(),
        );
        r.register(
            "certified_bytes",
            "Unencoded bytes of the drive's blobs",
            m.certified_bytes.clone(),
        );
        r.register(
            "certified_encoded_bytes",
            "Bytes the network stores for the drive's blobs",
            m.certified_encoded.clone(),
        );
        r.register(
            "cache_bytes",
            "Local disk used by the file and extent caches",
            m.cache_bytes.clone(),
        );
        r.register(
            "staging_bytes",
            "Local disk used by staged files",
            m.staging_bytes.clone(),
        );
        r.register(
            "ledger_epoch",
            "The ledger's current epoch",
            m.epoch.clone(),
        );
        r.register(
            "node_up",
            "1 if the embedded storage node answers its health check",
            m.node_up.clone(),
        );
        r.register(
            "node_health_failures",
            "Failed health checks of embedded storage nodes",
            m.node_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Reads the drive's figures and renders every metric.
    pub async fn render(&self, ctx: &MountContext) -> String {
        if let Ok(p) = ctx.pending() {
            self.pending_files.set(p.files);
            self.pending_bytes.set(p.bytes);
            self.pending_age.set(p.oldest_age_secs.unwrap_or(0.0));
        }
        if let Ok(s) = ctx.drive.statfs().await {
            self.certified_blobs.set(s.totals.blobs);
            self.certified_bytes.set(s.totals.blob_bytes);
            self.certified_encoded.set(s.totals.encoded_bytes);
        }
        let d = ctx.drive.clone();
        if let Ok((cache, staging)) =
            tokio::task::spawn_blocking(move || (d.cache_bytes(), d.staging_bytes())).await
        {
            self.cache_bytes.set(cache);
            self.staging_bytes.set(staging);
        }
        if let Ok(e) = ctx.epoch().await {
            self.epoch.set(e);
        }
        let now = ctx.drive.read_counts();
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            let add = |source: &'static str, new: u64, old: u64| {
                self.reads
                    .get_or_create(&SourceLabels { source })
                    .inc_by(new.saturating_sub(old));
            };
            add("staging", now.staging, last.staging);
            add("file_cache", now.file_cache, last.file_cache);
            add("extent_cache", now.extent_cache, last.extent_cache);
            add("network", now.network, last.network);
            self.read_bytes
                .inc_by(now.bytes_read.saturating_sub(last.bytes_read));
            self.written_bytes
                .inc_by(now.bytes_written.saturating_sub(last.bytes_written));
            *last = now;
        }
        for n in ctx.nodes().await {
            let labels = NodeLabels {
                node: n.index.to_string(),
                address: n.address,
            };
            self.node_up
                .get_or_create(&labels)
                .set(u64::from(n.healthy));
            let failures = self.node_failures.get_or_create(&labels);
            if !n.healthy {
                failures.inc();
            }
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl OpHook for Metrics {
    fn observe(&self, op: &'static str, elapsed: Duration) {
        let labels = OpLabels { op };
        self.ops.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// A running metrics endpoint; stops when dropped or with [`MetricsServer::stop`].
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Serves `GET /metrics` on `addr` (must be called inside a tokio runtime).
    pub async fn start(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        ctx: Arc<MountContext>,
    ) -> Result<Self, MetricsError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let (metrics, ctx) = (metrics.clone(), ctx.clone());
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            metrics.render(&ctx).await,
                        )
                    }
                }),
            )
            .route(
                "/",
                axum::routing::get(|| async { "walrusfs metrics: GET /metrics\n" }),
            );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "metrics endpoint stopped");
            }
        });
        info!(%addr, "serving metrics on http://{addr}/metrics");
        Ok(Self {
            addr,
            stop: Some(tx),
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
