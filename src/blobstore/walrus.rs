//! [`WalrusStore`]: the blob store over our own Walrus client ([`crate::client::Client`]), i.e.
//! storage nodes and a ledger (the embedded devnet or any network file).
//!
//! - `put` returns once the blob is certified. Uploads to nodes that had not answered by then
//!   (the store's stragglers) go on in a background task for at most
//!   [`DEFAULT_STRAGGLER_GRACE`], so that every node gets its slivers without a slow node
//!   holding up the caller; [`WalrusStore::finish_background_uploads`] waits for them (before
//!   a shutdown).
//! - Errors are sorted by what the caller can do: a network that cannot do it now (too few
//!   confirmations or slivers, nodes unreachable, a busy ledger, an epoch change mid-store) is
//!   [`BlobStoreError::Unavailable`]; a blob the ledger does not show as certified and live is
//!   [`BlobStoreError::NotFound`]; anything else, invalid input included, is
//!   [`BlobStoreError::Failed`].

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{BlobStore, BlobStoreError, PutOptions, StoredBlob};
use crate::client::{Client, ClientError, StoreOptions};
use crate::encoding::{BlobId, EncodingConfig, EncodingError};
use crate::ledger::{BlobObject, LedgerError};

/// How long uploads to slow nodes may go on after a put returned before they are abandoned.
/// Generous: nothing waits for them, and each node that misses its slivers weakens the blob
/// for good (our nodes do not recover slivers from each other).
pub const DEFAULT_STRAGGLER_GRACE: Duration = Duration::from_secs(120);

/// Blobs under this size are encoded without waiting for earlier uploads: their encoding is
/// small next to a large one's.
const SMALL_BLOB: u64 = 8 << 20;

/// The blob store over a Walrus network; see the module documentation.
pub struct WalrusStore {
    client: Client,
    /// The committee's encoding; the shard count of a Walrus system never changes.
    encoding: OnceCell<EncodingConfig>,
    straggler_grace: Duration,
    /// Tasks that finish the uploads of earlier puts.
    background: Mutex<Vec<JoinHandle<()>>>,
    /// The uploads those tasks wait for, to cut them short.
    straggler_aborts: Mutex<Vec<tokio::task::AbortHandle>>,
    /// How long the last put took.
    last_put: Mutex<Option<Duration>>,
}

impl std::fmt::Debug for WalrusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalrusStore")
            .field("encoding", &self.encoding.get())
            .field("straggler_grace", &self.straggler_grace)
            .finish_non_exhaustive()
    }
}

impl WalrusStore {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            encoding: OnceCell::new(),
            straggler_grace: DEFAULT_STRAGGLER_GRACE,
            background: Mutex::new(Vec::new()),
            straggler_aborts: Mutex::new(Vec::new()),
            last_put: Mutex::new(None),
        }
    }

    /// Sets how long uploads to slow nodes go on after a put returned.
    pub fn with_straggler_grace(mut self, grace: Duration) -> Self {
        self.straggler_grace = grace;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Puts whose uploads to slow nodes are still going on.
    pub fn background_uploads(&self) -> usize {
        let mut tasks = self.lock_background();
        tasks.retain(|t| !t.is_finished());
        tasks.len()
    }

    /// Waits up to `timeout` for the uploads to slow nodes that earlier puts left running;
    /// returns whether all of them finished (those that did not go on in the background).
    pub async fn finish_background_uploads(&self, timeout: Duration) -> bool {
        let tasks = std::mem::take(&mut *self.lock_background());
        let mut pending: Vec<JoinHandle<()>> = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                pending.push(task);
            }
        }
        let all = pending.is_empty();
        self.lock_background().extend(pending);
        all
    }

    /// Before a blob of `size` bytes is gathered or encoded, lets the uploads an earlier put
    /// left to slow nodes finish, for at most as long as that put took (and at least half a
    /// second), and cuts short those still running then. An encoded blob is 3.5 times its
    /// size, and those uploads hold it: a mount gathered and encoded its next 64 MiB blob
    /// while the last one's stragglers still held theirs, which took its peak memory past
    /// 512 MiB. A node cut short lacks that blob's slivers, as if it had been down (the
    /// certificate has a quorum without it).
    async fn one_encoded_blob_at_a_time(&self, size: u64) {
        if size < SMALL_BLOB {
            return;
        }
        let last = *self.last_put.lock().unwrap_or_else(PoisonError::into_inner);
        let limit = last.unwrap_or_default().max(Duration::from_millis(500));
        if self.finish_background_uploads(limit).await {
            return;
        }
        let aborts = std::mem::take(
            &mut *self
                .straggler_aborts
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let cut = aborts.iter().filter(|a| !a.is_finished()).count();
        for a in aborts {
            a.abort();
        }
        if cut > 0 {
            warn!(
                nodes = cut,
                waited = ?limit,
                "uploads of an earlier blob to slow nodes cut short, to keep one encoded blob in memory"
            );
        }
    }

    fn lock_background(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        // A list of handles cannot be left half-changed by a panic.
        self.background
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn encoding(&self) -> Result<EncodingConfig, BlobStoreError> {
        self.encoding
            .get_or_try_init(|| self.client.encoding_config())
            .await
            .copied()
            .map_err(|e| map_client_error(e, None))
    }

    /// Lets the uploads of `stragglers` finish within the grace period, in the background.
    fn finish_in_background(&self, blob_id: BlobId, stragglers: Vec<JoinHandle<()>>) {
        let aborts: Vec<_> = stragglers.iter().map(JoinHandle::abort_handle).collect();
        {
            let mut all = self
                .straggler_aborts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            all.retain(|a| !a.is_finished());
            all.extend(aborts.iter().cloned());
        }
        let grace = self.straggler_grace;
        let task = tokio::spawn(async move {
            let n = stragglers.len();
            if tokio::time::timeout(grace, join_all(stragglers))
                .await
                .is_err()
            {
                warn!(%blob_id, nodes = n, ?grace, "uploads to slow nodes did not finish in time; abandoned");
                for a in aborts {
                    a.abort();
                }
            } else {
                debug!(%blob_id, nodes = n, "uploads to slow nodes finished");
            }
        });
        let mut tasks = self.lock_background();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

fn stored_blob(config: &EncodingConfig, object: &BlobObject) -> StoredBlob {
    StoredBlob {
        blob_id: object.blob_id,
        object_id: Some(object.object_id.0),
        owner: None,
        size: object.size,
        // The object records only its storage's size, which may be larger than the blob needs
        // (reused storage); the encoded length fails only for sizes no blob can have.
        encoded_size: config
            .encoded_blob_length(object.size)
            .unwrap_or(object.storage.size),
        end_epoch: u64::from(object.end_epoch()),
        deletable: object.deletable,
    }
}

/// Sorts a client error by what the caller can do; `blob_id` is the blob asked about, if any.
fn map_client_error(e: ClientError, blob_id: Option<BlobId>) -> BlobStoreError {
    let not_found = |e: ClientError| match blob_id {
        Some(blob_id) => BlobStoreError::NotFound { blob_id },
        None => BlobStoreError::Failed(e.to_string()),
    };
    match e {
        ClientError::NotEnoughConfirmations { .. }
        | ClientError::NoMetadata { .. }
        | ClientError::NotEnoughSlivers { .. } => BlobStoreError::Unavailable(e.to_string()),
        ClientError::BlobNotFound { .. }
        | ClientError::BlobExpired { .. }
        | ClientError::BlobNotCertified { .. }
        | ClientError::NoSuchObject { .. } => not_found(e),
        ClientError::Encoding(EncodingError::RangeOutOfBounds { start, end, len }) => match blob_id
        {
            Some(blob_id) => BlobStoreError::BadRange {
                blob_id,
                start,
                end,
                len,
            },
            None => BlobStoreError::Failed(e.to_string()),
        },
        ClientError::Encoding(EncodingError::BlobTooLarge { len, max, .. }) => {
            BlobStoreError::TooLarge { size: len, max }
        }
        ClientError::Ledger(ref l) => match ledger_error_kind(l) {
            Kind::Transient => BlobStoreError::Unavailable(e.to_string()),
            Kind::Gone => not_found(e),
            Kind::Final => BlobStoreError::Failed(e.to_string()),
        },
        ClientError::Encoding(_)
        | ClientError::Protocol(_)
        | ClientError::Task(_)
        | ClientError::Output(_) => BlobStoreError::Failed(e.to_string()),
    }
}

enum Kind {
    Transient,
    Gone,
    Final,
}

fn ledger_error_kind(e: &LedgerError) -> Kind {
    use rusqlite::ErrorCode;
    match e {
        // Another process held the database longer than the busy timeout.
        LedgerError::Database(rusqlite::Error::SqliteFailure(f, _))
            if matches!(
                f.code,
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull
            ) =>
        {
            Kind::Transient
        }
        // The epoch changed between the confirmations and the certificate: storing again
        // collects confirmations for the new epoch.
        LedgerError::CertificateEpoch { .. } => Kind::Transient,
        // The blob expired or was deleted between reading its objects and acting on them.
        LedgerError::Expired { .. }
        | LedgerError::NotCertified(_)
        | LedgerError::BlobNotFound(_) => Kind::Gone,
        _ => Kind::Final,
    }
}

#[async_trait::async_trait]
impl BlobStore for WalrusStore {
    fn kind(&self) -> &'static str {
        "walrus"
    }

    async fn max_blob_size(&self) -> Result<u64, BlobStoreError> {
        Ok(self.encoding().await?.max_blob_size())
    }

    async fn put(&self, data: Vec<u8>, options: PutOptions) -> Result<StoredBlob, BlobStoreError> {
        let config = self.encoding().await?;
        let size = data.len() as u64;
        let max = config.max_blob_size();
        if size > max {
            return Err(BlobStoreError::TooLarge { size, max });
        }
        if options.epochs == 0 {
            // The client would return a live blob for 0 epochs instead of refusing, as the
            // ledger does and `MemoryStore` does.
            return Err(BlobStoreError::Failed(
                "a blob must be stored for at least 1 epoch".into(),
            ));
        }
        self.one_encoded_blob_at_a_time(size).await;
        let started = std::time::Instant::now();
        let mut outcome = self
            .client
            .store(
                data,
                StoreOptions {
                    epochs: options.epochs,
                    deletable: options.deletable,
                },
            )
            .await
            .map_err(|e| map_client_error(e, None))?;
        *self.last_put.lock().unwrap_or_else(PoisonError::into_inner) = Some(started.elapsed());
        let stragglers = std::mem::take(&mut outcome.stragglers);
        if !stragglers.is_empty() {
            self.finish_in_background(outcome.blob_id, stragglers);
        }
        Ok(stored_blob(&config, &outcome.object))
    }

    async fn get(&self, blob_id: BlobId, range: Range<u64>) -> Result<Vec<u8>, BlobStoreError> {
        let (data, stats) = self
            .client
            .read(blob_id, Some(range))
            .await
            .map_err(|e| map_client_error(e, Some(blob_id)))?;
        if !stats.failures.is_empty() {
            debug!(%blob_id, decoded = stats.decoded, failures = ?stats.failures, "read around failed nodes");
        }
        Ok(data)
    }

    async fn delete(&self, blob_id: BlobId) -> Result<(), BlobStoreError> {
        let e = match self.client.delete(blob_id).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        match map_client_error(e, Some(blob_id)) {
            BlobStoreError::NotFound { .. } => {}
            other => return Err(other),
        }
        // No live deletable object: the blob is gone (fine) or permanent (not deletable).
        let (_, objects, epoch) = self
            .client
            .status(blob_id)
            .await
            .map_err(|e| map_client_error(e, Some(blob_id)))?;
        match objects
            .iter()
            .filter(|o| !o.is_expired(epoch))
            .max_by_key(|o| o.end_epoch())
        {
            Some(o) => Err(BlobStoreError::Failed(format!(
                "blob {blob_id} is stored as permanent (object {}) and cannot be deleted before it expires at epoch {}",
                o.object_id,
                o.end_epoch()
            ))),
            None => Ok(()),
        }
    }

    async fn extend(&self, blob_id: BlobId, epochs: u32) -> Result<u64, BlobStoreError> {
        let objects = self
            .client
            .extend(blob_id, epochs)
            .await
            .map_err(|e| map_client_error(e, Some(blob_id)))?;
        objects
            .iter()
            .map(|o| u64::from(o.end_epoch()))
            .max()
            .ok_or(BlobStoreError::NotFound { blob_id })
    }

    async fn current_epoch(&self) -> Result<u64, BlobStoreError> {
        let ledger = Arc::clone(self.client.ledger());
        // The embedded ledger does SQLite I/O: off the async threads.
        tokio::task::spawn_blocking(move || ledger.current_epoch())
            .await
            .map_err(|e| BlobStoreError::Failed(format!("ledger task failed: {e}")))?
            .map(u64::from)
            .map_err(|e| map_client_error(ClientError::Ledger(e), None))
    }

    async fn settle_before_large_put(&self) {
        self.one_encoded_blob_at_a_time(u64::MAX).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devnet::{DevnetParams, EmbeddedNetwork};

    fn data(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed).rotate_left(7) as u8)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn walrus_store_over_in_process_nodes() {
        let tmp = tempfile::tempdir().unwrap();
        let net = EmbeddedNetwork::open_or_create(
            &tmp.path().join("net"),
            &DevnetParams {
                nodes: 4,
                shards: 10,
                epoch_duration: None,
                base_port: 0,
            },
        )
        .await
        .unwrap();
        let walrus = WalrusStore::new(net.client().clone());
        let store: &dyn BlobStore = &walrus;
        assert_eq!(store.kind(), "walrus");
        let config = EncodingConfig::new(10).unwrap();
        assert_eq!(store.max_blob_size().await.unwrap(), config.max_blob_size());
        assert_eq!(store.current_epoch().await.unwrap(), 0);

        let blob = data(400_000, 1);
        let stored = store
            .put(
                blob.clone(),
                PutOptions {
                    epochs: 2,
                    deletable: true,
                },
            )
            .await
            .unwrap();
        let id = stored.blob_id;
        assert_eq!(id, config.blob_id(&blob).unwrap());
        assert_eq!(stored.size, 400_000);
        assert_eq!(
            stored.encoded_size,
            config.encoded_blob_length(400_000).unwrap()
        );
        assert_eq!((stored.end_epoch, stored.deletable), (2, true));
        assert!(stored.object_id.is_some() && stored.owner.is_none());

        assert_eq!(store.get(id, 0..400_000).await.unwrap(), blob);
        // A row of the source matrix holds (n − f) · symbol size bytes: this range spans rows.
        assert_eq!(
            store.get(id, 123_456..300_001).await.unwrap(),
            blob[123_456..300_001]
        );
        assert!(store.get(id, 7..7).await.unwrap().is_empty());
        assert!(matches!(
            store.get(id, 399_000..400_001).await,
            Err(BlobStoreError::BadRange {
                len: 400_000,
                end: 400_001,
                ..
            })
        ));
        let unknown = config.blob_id(b"never stored").unwrap();
        let err = store.get(unknown, 0..1).await.unwrap_err();
        assert!(
            matches!(err, BlobStoreError::NotFound { blob_id } if blob_id == unknown),
            "{err}"
        );
        assert!(matches!(
            store.extend(unknown, 1).await,
            Err(BlobStoreError::NotFound { .. })
        ));

        assert_eq!(store.extend(id, 3).await.unwrap(), 5);
        assert!(matches!(
            store.extend(id, 1000).await,
            Err(BlobStoreError::Failed(_))
        ));
        assert!(matches!(
            store
                .put(
                    data(10, 2),
                    PutOptions {
                        epochs: 0,
                        deletable: true
                    }
                )
                .await,
            Err(BlobStoreError::Failed(_))
        ));
        let max = config.max_blob_size();
        assert!(matches!(
            store
                .put(
                    vec![0; max as usize + 1],
                    PutOptions {
                        epochs: 1,
                        deletable: true
                    }
                )
                .await,
            Err(BlobStoreError::TooLarge { .. })
        ));

        store.delete(id).await.unwrap();
        assert!(matches!(
            store.get(id, 0..1).await,
            Err(BlobStoreError::NotFound { .. })
        ));
        // Deleting what is gone (and what never was) is fine.
        store.delete(id).await.unwrap();
        store.delete(unknown).await.unwrap();

        let permanent = store
            .put(
                data(5000, 3),
                PutOptions {
                    epochs: 1,
                    deletable: false,
                },
            )
            .await
            .unwrap();
        assert!(!permanent.deletable);
        assert!(matches!(
            store.delete(permanent.blob_id).await,
            Err(BlobStoreError::Failed(_))
        ));
        assert_eq!(
            store.get(permanent.blob_id, 0..5000).await.unwrap(),
            data(5000, 3)
        );
        // Expiry: the blob is gone once its end epoch is reached.
        net.ledger().advance_epoch().unwrap();
        assert_eq!(store.current_epoch().await.unwrap(), 1);
        assert!(matches!(
            store.get(permanent.blob_id, 0..1).await,
            Err(BlobStoreError::NotFound { .. })
        ));
        store.delete(permanent.blob_id).await.unwrap();

        assert!(
            walrus
                .finish_background_uploads(Duration::from_secs(1))
                .await
        );
        assert_eq!(walrus.background_uploads(), 0);
        net.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn put_returns_at_the_quorum_and_a_slow_node_catches_up_in_the_background() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let params = DevnetParams {
            nodes: 4,
            shards: 10,
            epoch_duration: None,
            base_port: 0,
        };
        crate::devnet::Devnet::new(&dir).create(&params).unwrap();
        // Node 3 (3 of 10 shards) answers every request 500 ms late; the other 7 shards make
        // a quorum, so it is a straggler of every put.
        let config = dir.join("nodes/3/node.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, format!("{text}\n[faults]\ndelay_ms = 500\n")).unwrap();
        let net = EmbeddedNetwork::open_or_create(&dir, &params)
            .await
            .unwrap();
        let options = PutOptions {
            epochs: 1,
            deletable: true,
        };

        let store = WalrusStore::new(net.client().clone());
        let stored = store.put(data(50_000, 4), options).await.unwrap();
        assert_eq!(store.background_uploads(), 1);
        assert!(
            store
                .finish_background_uploads(Duration::from_secs(20))
                .await
        );
        assert_eq!(store.background_uploads(), 0);
        assert_eq!(
            store.get(stored.blob_id, 0..50_000).await.unwrap(),
            data(50_000, 4)
        );

        // With a short grace the slow node's uploads are abandoned, not awaited.
        let store =
            WalrusStore::new(net.client().clone()).with_straggler_grace(Duration::from_millis(100));
        store.put(data(50_000, 5), options).await.unwrap();
        let started = std::time::Instant::now();
        assert!(
            store
                .finish_background_uploads(Duration::from_secs(20))
                .await
        );
        assert!(started.elapsed() < Duration::from_millis(1400));

        // Before a large blob is gathered, the store waits for the last put's stragglers at
        // most about as long as that put took, then cuts them short: one encoded blob in
        // memory at a time.
        let store = WalrusStore::new(net.client().clone());
        let started = std::time::Instant::now();
        store.put(data(60_000, 6), options).await.unwrap();
        let put_took = started.elapsed();
        assert_eq!(store.background_uploads(), 1, "put took {put_took:?}");
        let started = std::time::Instant::now();
        store.settle_before_large_put().await;
        let waited = started.elapsed();
        assert!(
            waited < put_took.max(Duration::from_millis(500)) + Duration::from_secs(1),
            "waited {waited:?} after a put of {put_took:?}"
        );
        assert!(
            store
                .finish_background_uploads(Duration::from_secs(1))
                .await,
            "the slow node's uploads were neither finished nor cut short"
        );
        net.shutdown().await.unwrap();
    }

    #[test]
    fn client_errors_sort_by_what_the_caller_can_do() {
        let id = EncodingConfig::new(10).unwrap().blob_id(b"x").unwrap();
        let transient = [
            ClientError::NotEnoughConfirmations {
                blob_id: id,
                weight: 3,
                needed: 7,
                n_shards: 10,
                failures: vec!["node-1: refused".into()],
            },
            ClientError::NoMetadata {
                blob_id: id,
                failures: Vec::new(),
            },
            ClientError::NotEnoughSlivers {
                blob_id: id,
                valid: 1,
                needed: 4,
                failures: Vec::new(),
            },
            ClientError::Ledger(LedgerError::CertificateEpoch {
                certificate_epoch: 1,
                current_epoch: 2,
            }),
        ];
        for e in transient {
            let text = e.to_string();
            let mapped = map_client_error(e, Some(id));
            assert!(mapped.is_transient(), "{text} -> {mapped:?}");
            assert_eq!(mapped.to_string(), text);
        }
        for e in [
            ClientError::BlobNotFound { blob_id: id },
            ClientError::BlobNotCertified { blob_id: id },
            ClientError::BlobExpired {
                blob_id: id,
                end_epoch: 1,
                current: 2,
            },
        ] {
            assert!(matches!(
                map_client_error(e, Some(id)),
                BlobStoreError::NotFound { blob_id } if blob_id == id
            ));
        }
        for e in [
            ClientError::Ledger(LedgerError::InvalidEpochsAhead { epochs: 0, max: 53 }),
            ClientError::Ledger(LedgerError::InsufficientBalance {
                needed: 2,
                available: 1,
            }),
            ClientError::Task("panicked".into()),
        ] {
            assert!(matches!(
                map_client_error(e, Some(id)),
                BlobStoreError::Failed(_)
            ));
        }
        assert!(matches!(
            map_client_error(
                ClientError::Encoding(EncodingError::BlobTooLarge {
                    len: 5,
                    max: 4,
                    n_shards: 10
                }),
                None
            ),
            BlobStoreError::TooLarge { size: 5, max: 4 }
        ));
    }
}
