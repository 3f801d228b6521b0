//! The network client: store and read pipelines over storage nodes and the ledger.
//!
//! Store: encode → register on the ledger → upload metadata and sliver pairs to every node in
//! parallel → collect and verify storage confirmations → aggregate once a quorum by shard weight
//! is in → certify on the ledger. Slow nodes never hold up a store once the quorum is in; their
//! uploads finish in the background, best effort.
//!
//! Read: metadata from any node, verified against the blob ID; then only the primary slivers
//! that cover the requested range (the systematic fast path), verified one by one; when a node
//! is slow, missing or lying, more primary slivers are fetched elsewhere and the range decoded.

mod error;
pub mod node_api;
mod plain_get;
mod read;
mod store;
mod stream;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use error::{ClientError, NodeError};
pub use node_api::NodeApi;
pub use read::ReadStats;
pub use store::{StoreOptions, StoreOutcome};
pub use stream::Sink;

use crate::encoding::{BlobId, EncodingConfig};
use crate::ledger::{BlobObject, BlobStatus, Ledger};
use crate::protocol::{Committee, Epoch};

/// Tunables of the client, with defaults that suit a loopback devnet and a WAN alike.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base timeout of one request to a node (larger bodies get proportionally more).
    pub request_timeout: Duration,
    /// Connection timeout: a node that does not accept within this is treated as down.
    pub connect_timeout: Duration,
    /// Floor of the hedging delay for reads: after max(this, 2× the fastest response) the
    /// client also asks other nodes for slivers it can decode from.
    pub hedge_floor: Duration,
    /// Slivers fetched at once during a read that fetches extra slivers to decode from.
    pub read_concurrency: usize,
    /// Slivers fetched at once during a read of intact systematic slivers: enough to keep the
    /// nodes and the wire busy while received slivers are verified, few enough that slivers
    /// arrive one after another (so verification overlaps the transfer) instead of all at
    /// the end.
    pub read_pipeline: usize,
    /// Sliver bodies in flight per node during a store, in bytes (each body is made when
    /// its upload starts)...
    pub upload_bytes_per_node: usize,
    /// ...but at least this many uploads per node (enough to keep a node's verification
    /// busy while the next body arrives).
    pub min_uploads_per_node: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            hedge_floor: Duration::from_millis(500),
            read_concurrency: 64,
            read_pipeline: 8,
            upload_bytes_per_node: 8 << 20,
            min_uploads_per_node: 4,
        }
    }
}

/// A client of one network: its ledger and the storage nodes of the current committee.
#[derive(Clone)]
pub struct Client {
    ledger: Arc<dyn Ledger>,
    /// For `http://` nodes: built without TLS roots (loading the system's root certificates
    /// took 25 ms of every CLI command).
    http: reqwest::Client,
    /// For `https://` nodes, built with the platform's roots when first needed.
    https: Arc<OnceLock<reqwest::Client>>,
    config: ClientConfig,
    cache: Arc<read::ReadCache>,
    /// Idle connections of sliver reads from `http://` nodes.
    plain: Arc<plain_get::Pool>,
}

/// The HTTP client for nodes; `tls_roots`: with the platform's root certificates (needed
/// only for `https://` nodes).
fn http_client(config: &ClientConfig, tls_roots: bool) -> Result<reqwest::Client, ClientError> {
    let builder = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .pool_max_idle_per_host(16);
    let builder = if tls_roots {
        builder
    } else {
        builder.tls_certs_only(std::iter::empty())
    };
    builder
        .build()
        .map_err(|e| ClientError::Task(format!("cannot build HTTP client: {e}")))
}

impl Client {
    pub fn new(ledger: Arc<dyn Ledger>, config: ClientConfig) -> Result<Self, ClientError> {
        let http = http_client(&config, false)?;
        Ok(Self {
            ledger,
            http,
            https: Arc::new(OnceLock::new()),
            config,
            cache: Arc::new(read::ReadCache::default()),
            plain: Arc::new(plain_get::Pool::default()),
        })
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Runs a ledger call off the async threads (the embedded ledger does SQLite I/O).
    async fn ledger_call<T, F>(&self, f: F) -> Result<T, ClientError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Ledger) -> Result<T, crate::ledger::LedgerError> + Send + 'static,
    {
        let ledger = self.ledger.clone();
        Ok(tokio::task::spawn_blocking(move || f(ledger.as_ref())).await??)
    }

    async fn committee(&self) -> Result<Arc<Committee>, ClientError> {
        Ok(Arc::new(self.ledger_call(|l| l.committee()).await?))
    }

    fn node(&self, committee: &Committee, member: u16) -> Option<NodeApi> {
        committee.member(member).map(|m| {
            let http = if m.network_address.starts_with("https://") {
                self.https
                    .get_or_init(|| {
                        http_client(&self.config, true).unwrap_or_else(|e| {
                            // Without roots, TLS connections fail with a clear error.
                            tracing::warn!("{e}; HTTPS nodes cannot be verified");
                            self.http.clone()
                        })
                    })
                    .clone()
            } else {
                self.http.clone()
            };
            NodeApi::new(http, &m.network_address, self.config.request_timeout)
                .with_plain_gets(self.plain.clone(), self.config.connect_timeout)
        })
    }

    /// The encoding parameters of the current committee.
    pub async fn encoding_config(&self) -> Result<EncodingConfig, ClientError> {
        let committee = self.committee().await?;
        Ok(EncodingConfig::new(committee.n_shards())?)
    }

    /// Certification status of a blob as the ledger records it.
    pub async fn status(
        &self,
        blob_id: BlobId,
    ) -> Result<(BlobStatus, Vec<BlobObject>, Epoch), ClientError> {
        self.ledger_call(move |l| {
            Ok((
                l.blob_status(blob_id)?,
                l.blobs_by_blob_id(blob_id)?,
                l.current_epoch()?,
            ))
        })
        .await
    }

    /// Deletes every deletable blob object of `blob_id`; returns how many were deleted.
    pub async fn delete(&self, blob_id: BlobId) -> Result<usize, ClientError> {
        let n = self
            .ledger_call(move |l| {
                let epoch = l.current_epoch()?;
                let mut n = 0;
                for b in l.blobs_by_blob_id(blob_id)? {
                    if b.deletable && !b.is_expired(epoch) {
                        l.delete_blob(b.object_id)?;
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await?;
        if n == 0 {
            return Err(ClientError::NoSuchObject {
                blob_id,
                what: "live deletable",
                action: "delete",
            });
        }
        Ok(n)
    }

    /// Extends every certified, unexpired blob object of `blob_id` by `epochs`.
    pub async fn extend(
        &self,
        blob_id: BlobId,
        epochs: u32,
    ) -> Result<Vec<BlobObject>, ClientError> {
        let extended = self
            .ledger_call(move |l| {
                let epoch = l.current_epoch()?;
                let mut out = Vec::new();
                for b in l.blobs_by_blob_id(blob_id)? {
                    if b.is_certified() && !b.is_expired(epoch) {
                        out.push(l.extend_blob(b.object_id, epochs)?);
                    }
                }
                Ok(out)
            })
            .await?;
        if extended.is_empty() {
            return Err(ClientError::NoSuchObject {
                blob_id,
                what: "certified, unexpired",
                action: "extend",
            });
        }
        Ok(extended)
    }
}
