//! What a storage node does, independent of HTTP: check requests against the ledger, verify
//! uploads, keep them on disk, and sign storage confirmations.
//!
//! The ledger and the disk are reached through blocking calls, run on tokio's blocking
//! threads. A sliver upload's checks against the disk, its verification (one Reed–Solomon
//! encoding and `n` hashes) and its write run as one job on the node's own verification
//! threads ([`crate::workers`], one per core), whose scratch buffers stay warm, so that
//! uploads cannot starve the rest of the node.
//!
//! Every request reads the blob's registrations and the current epoch from the ledger afresh
//! (one read). What cannot change is kept in memory: the node's shards per epoch (a committee
//! never changes once its epoch has begun) and the verified metadata of recent blobs (a
//! metadata file is written once and never changes).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::encoding::merkle::blake2b256;
use crate::encoding::{
    BlobId, BlobMetadata, BlobMetadataWithId, EncodingConfig, EncodingError, Node, Sliver,
    SliverDefect, SliverType, pair_to_shard, shard_to_pair,
};
use crate::ledger::{BlobObject, Ledger, LedgerError};
use crate::protocol::{
    BlobPersistenceType, Committee, CommitteeMember, ConfirmationMessage, Epoch, ObjectId,
    ProtocolKeyPair, PublicKey, StorageConfirmation,
};
use crate::workers::Workers;

use super::api::{
    ApiBlobStatus, EventProgress, OwnedShardStatus, ServiceHealthInfo, ShardHealthInfo,
    ShardStatus, ShardStatusDetail, ShardStatusSummary,
};
use super::config::{EffectiveLimits, Faults, NodeConfig};
use super::error::{NodeError, StoreError};
use super::received::ReceivedSliver;
use super::store::SliverStore;

/// How often a confirmation request that waits for a registration asks the ledger again.
const REGISTRATION_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How many blobs' verified metadata the node keeps in memory (at most 256 KiB each, at
/// 4096 shards): uploads of a blob's slivers and reads of them all need it.
const METADATA_CACHE_ENTRIES: usize = 32;

/// This node's shards in an epoch (`None`: not in that committee).
type EpochShards = (Epoch, Option<Arc<[u16]>>);

/// How the node finds itself in a committee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeIdentity {
    /// By node ID (stable across epochs).
    NodeId(ObjectId),
    /// By index in the member list (only for committees that never change).
    Index(u16),
    /// By the public key of the node's protocol key.
    PublicKey,
}

/// A storage node: its ledger, its disk, its key.
pub struct StorageNode {
    ledger: Arc<dyn Ledger>,
    store: Arc<SliverStore>,
    /// The node's protocol key, as registered in the committee.
    key: ProtocolKeyPair,
    /// The key confirmations are signed with: `key`, unless the `wrong_signing_key` fault is on.
    signing_key: ProtocolKeyPair,
    identity: NodeIdentity,
    encoding: EncodingConfig,
    limits: EffectiveLimits,
    faults: Faults,
    started: Instant,
    /// Sliver uploads' verifications and writes, one per core at a time.
    verifiers: Workers,
    /// This node's shards in the most recent epoch seen (`None`: not in that committee).
    shards: Mutex<Option<EpochShards>>,
    /// Verified metadata of recently used blobs, least recently used first.
    metadata_cache: Mutex<VecDeque<Arc<BlobMetadataWithId>>>,
}

impl std::fmt::Debug for StorageNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageNode")
            .field("public_key", self.key.public())
            .field("identity", &self.identity)
            .field("n_shards", &self.encoding.n_shards())
            .field("data_dir", &self.store.root())
            .field("faults", &self.faults)
            .finish()
    }
}

/// What the ledger says about one blob and this node, read once per request.
#[derive(Debug)]
struct BlobView {
    epoch: Epoch,
    /// This node's shards in `epoch`; `None` if it is not in the committee.
    shards: Option<Arc<[u16]>>,
    /// Registrations of the blob that have not expired.
    live: Vec<BlobObject>,
    /// The latest end epoch over all registrations (live or not), if there are any.
    latest_end: Option<Epoch>,
}

impl BlobView {
    /// The blob must have a live registration.
    fn require_live(&self, blob_id: BlobId) -> Result<(), NodeError> {
        match self.latest_end {
            None => Err(NodeError::NotRegistered { blob_id }),
            Some(end_epoch) if self.live.is_empty() => Err(NodeError::Expired {
                blob_id,
                end_epoch,
                epoch: self.epoch,
            }),
            Some(_) => Ok(()),
        }
    }

    /// For reads: a blob without live registration is simply not available (404).
    fn require_live_for_read(&self, blob_id: BlobId) -> Result<(), NodeError> {
        self.require_live(blob_id)
            .map_err(|e| NodeError::BlobNotAvailable {
                blob_id,
                reason: e.to_string(),
            })
    }

    fn shards(&self) -> Result<&[u16], NodeError> {
        self.shards
            .as_deref()
            .ok_or(NodeError::NotInCommittee { epoch: self.epoch })
    }
}

impl StorageNode {
    /// Opens the node described by `config`: its ledger, key and data directory. Blocks on
    /// disk I/O.
    pub fn open(config: &NodeConfig) -> Result<Self, NodeError> {
        let ledger = config.ledger.open()?;
        Self::with_ledger(config, ledger)
    }

    /// Like [`Self::open`], with a ledger the caller already has (tests, in-process devnets).
    pub fn with_ledger(config: &NodeConfig, ledger: Arc<dyn Ledger>) -> Result<Self, NodeError> {
        let key = config.load_key()?;
        let identity = match (config.node_id, config.node_index) {
            (Some(id), _) => NodeIdentity::NodeId(id),
            (None, Some(index)) => NodeIdentity::Index(index),
            (None, None) => NodeIdentity::PublicKey,
        };
        let info = ledger.epoch_info()?;
        let encoding = EncodingConfig::new(info.n_shards).map_err(|e| NodeError::Internal {
            reason: format!("the ledger's shard count is unusable: {e}"),
        })?;
        let store = SliverStore::open(&config.data_dir)?;
        let signing_key = if config.faults.wrong_signing_key {
            // Deterministic, so a test can predict it, and never the real key.
            let seed =
                blake2b256(&[b"walrusfs-fault-wrong-key".as_slice(), &key.secret_bytes()].concat());
            ProtocolKeyPair::from_seed(&seed).map_err(|e| NodeError::Internal {
                reason: format!("cannot derive the faulty signing key: {e}"),
            })?
        } else {
            key.clone()
        };
        if config.faults.any() {
            warn!(faults = ?config.faults, "TEST-ONLY FAULT INJECTION IS ON: this node misbehaves on purpose");
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let node = Self {
            ledger,
            store: Arc::new(store),
            signing_key,
            identity,
            encoding,
            limits: config.limits.effective(&encoding),
            faults: config.faults,
            started: Instant::now(),
            verifiers: Workers::new("verify", cores).map_err(|e| NodeError::Internal {
                reason: format!("cannot start the verification threads: {e}"),
            })?,
            shards: Mutex::new(None),
            metadata_cache: Mutex::new(VecDeque::with_capacity(METADATA_CACHE_ENTRIES)),
            key,
        };
        match node.ledger.committee() {
            Ok(c) => match node.my_member(&c) {
                Some(m) if m.public_key != *node.key.public() => warn!(
                    member = %m.name,
                    registered = %m.public_key,
                    ours = %node.key.public(),
                    "this node's key differs from the key the committee lists for it: its confirmations will not verify"
                ),
                Some(m) => {
                    info!(epoch = c.epoch(), member = %m.name, shards = ?m.shard_ids, "storage node opened")
                }
                None => {
                    warn!(epoch = c.epoch(), identity = ?node.identity, "this node is not in the current committee")
                }
            },
            Err(e) => warn!(error = %e, "cannot read the committee at start"),
        }
        Ok(node)
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public()
    }

    pub fn encoding(&self) -> &EncodingConfig {
        &self.encoding
    }

    pub fn limits(&self) -> EffectiveLimits {
        self.limits
    }

    pub fn faults(&self) -> Faults {
        self.faults
    }

    pub fn store(&self) -> &SliverStore {
        &self.store
    }

    fn my_member<'c>(&self, committee: &'c Committee) -> Option<&'c CommitteeMember> {
        match self.identity {
            NodeIdentity::NodeId(id) => committee
                .index_of_node(&id)
                .and_then(|i| committee.member(i)),
            NodeIdentity::Index(i) => committee.member(i),
            NodeIdentity::PublicKey => committee
                .index_of_key(self.key.public())
                .and_then(|i| committee.member(i)),
        }
    }

    /// Runs a ledger call on a blocking thread.
    async fn on_ledger<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Ledger) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || f(&*ledger))
            .await
            .map_err(join_error)?
            .map_err(NodeError::Ledger)
    }

    /// Runs a store call on a blocking thread.
    async fn on_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SliverStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(join_error)?
            .map_err(NodeError::Store)
    }

    /// This node's shards in `epoch`, if they are cached.
    fn cached_shards(&self) -> Option<EpochShards> {
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the blob's registrations and the current epoch (one ledger read), and the
    /// committee only if that epoch's shards are not cached yet. Expiry is judged by the later
    /// of the two epochs read, i.e. the more recent one.
    async fn blob_view(&self, blob_id: BlobId) -> Result<BlobView, NodeError> {
        let cached = self.cached_shards();
        let cached_epoch = cached.as_ref().map(|(e, _)| *e);
        let (objects, epoch, committee) = self
            .on_ledger(move |l| {
                let (objects, epoch) = l.blobs_with_epoch(blob_id)?;
                let committee = if cached_epoch == Some(epoch) {
                    None
                } else {
                    Some(l.committee()?)
                };
                Ok((objects, epoch, committee))
            })
            .await?;
        let (epoch, shards) = match committee {
            Some(committee) => {
                let shards: Option<Arc<[u16]>> = self
                    .my_member(&committee)
                    .map(|m| Arc::from(m.shard_ids.as_slice()));
                let epoch = committee.epoch().max(epoch);
                // A committee never changes once its epoch has begun.
                let mut slot = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
                if slot.as_ref().is_none_or(|(e, _)| *e <= committee.epoch()) {
                    *slot = Some((committee.epoch(), shards.clone()));
                }
                (epoch, shards)
            }
            // Only skipped when this epoch's shards are cached.
            None => (epoch, cached.and_then(|(_, shards)| shards)),
        };
        let latest_end = objects.iter().map(BlobObject::end_epoch).max();
        let live = objects
            .into_iter()
            .filter(|o| !o.is_expired(epoch))
            .collect();
        Ok(BlobView {
            epoch,
            shards,
            live,
            latest_end,
        })
    }

    /// Verified metadata of `blob_id` from the cache.
    fn cached_metadata(&self, blob_id: &BlobId) -> Option<Arc<BlobMetadataWithId>> {
        let mut cache = self
            .metadata_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let at = cache.iter().position(|m| m.blob_id == *blob_id)?;
        let entry = cache.remove(at)?;
        cache.push_back(entry.clone());
        Some(entry)
    }

    /// Remembers metadata that is verified and durably stored.
    fn cache_metadata(&self, metadata: Arc<BlobMetadataWithId>) {
        let mut cache = self
            .metadata_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if cache.iter().any(|m| m.blob_id == metadata.blob_id) {
            return;
        }
        if cache.len() >= METADATA_CACHE_ENTRIES {
            cache.pop_front();
        }
        cache.push_back(metadata);
    }

    /// The stored metadata of `blob_id` (from the cache, else from disk), if any.
    async fn stored_metadata(
        &self,
        blob_id: BlobId,
    ) -> Result<Option<Arc<BlobMetadataWithId>>, NodeError> {
        if let Some(m) = self.cached_metadata(&blob_id) {
            return Ok(Some(m));
        }
        let metadata = self
            .on_store(move |s| s.get_metadata(&blob_id))
            .await?
            .map(Arc::new);
        if let Some(m) = &metadata {
            self.cache_metadata(m.clone());
        }
        Ok(metadata)
    }

    fn check_pair_index(&self, pair: u32) -> Result<u16, NodeError> {
        let n_shards = self.encoding.n_shards();
        u16::try_from(pair)
            .ok()
            .filter(|&p| p < n_shards)
            .ok_or(NodeError::PairIndexOutOfRange {
                index: pair,
                n_shards,
            })
    }

    /// The shard of `pair` must be one of this node's in the view's epoch.
    fn check_shard(&self, view: &BlobView, blob_id: BlobId, pair: u16) -> Result<(), NodeError> {
        let shard = pair_to_shard(pair, self.encoding.n_shards(), &blob_id);
        if view.shards()?.contains(&shard) {
            Ok(())
        } else {
            Err(NodeError::ShardNotAssigned {
                blob_id,
                pair,
                shard,
                epoch: view.epoch,
            })
        }
    }

    /// Stores a blob's metadata after checking the blob is registered and live and that the
    /// metadata hashes to `blob_id`. Returns whether it was newly stored.
    pub async fn store_metadata(
        &self,
        blob_id: BlobId,
        metadata: BlobMetadata,
    ) -> Result<bool, NodeError> {
        let view = self.blob_view(blob_id).await?;
        view.require_live(blob_id)?;
        let metadata = BlobMetadataWithId { blob_id, metadata };
        // n hashes: cheap enough to run inline, and checked even when the metadata is stored
        // already, so that "already stored" is never the answer to invalid metadata.
        metadata
            .verify(&self.encoding)
            .map_err(|source| NodeError::InvalidMetadata { blob_id, source })?;
        if self.store.has_metadata(&blob_id) {
            return Ok(false);
        }
        let metadata = Arc::new(metadata);
        let to_store = metadata.clone();
        let stored = self.on_store(move |s| s.put_metadata(&to_store)).await?;
        if stored {
            info!("metadata stored");
        }
        // Verified, and durable now (by this call or an earlier one with the same bytes: only
        // one metadata hashes to a blob ID).
        self.cache_metadata(metadata);
        Ok(stored)
    }

    /// The BCS bytes (`BlobMetadataWithId`) of a blob's stored metadata.
    pub async fn metadata_bcs(&self, blob_id: BlobId) -> Result<Vec<u8>, NodeError> {
        let view = self.blob_view(blob_id).await?;
        view.require_live_for_read(blob_id)?;
        let metadata = self
            .stored_metadata(blob_id)
            .await?
            .ok_or(NodeError::MetadataNotFound { blob_id })?;
        if self.faults.corrupt_metadata {
            let mut metadata = (*metadata).clone();
            corrupt_metadata(&mut metadata);
            return Ok(metadata.to_bcs());
        }
        Ok(metadata.to_bcs())
    }

    /// Stores sliver `sliver` as part of pair `pair` of `blob_id` after checking: the index
    /// matches the pair, the blob is registered and live, the pair's shard is this node's, the
    /// metadata is here, and the sliver verifies against it. Returns whether it was newly
    /// stored.
    pub async fn store_sliver(
        &self,
        blob_id: BlobId,
        pair: u32,
        sliver: ReceivedSliver,
    ) -> Result<bool, NodeError> {
        let pair = self.check_pair_index(pair)?;
        let n_shards = self.encoding.n_shards();
        // Checked before `pair_index`, which assumes an index below n.
        let (sliver_type, index) = (sliver.sliver_type(), sliver.index());
        if index >= n_shards || sliver.view().pair_index(n_shards) != pair {
            return Err(NodeError::SliverIndexMismatch {
                sliver_type,
                sliver_index: index,
                pair,
                n_shards,
            });
        }
        let view = self.blob_view(blob_id).await?;
        view.require_live(blob_id)?;
        self.check_shard(&view, blob_id, pair)?;
        let metadata = self.cached_metadata(&blob_id);
        let (store, encoding) = (self.store.clone(), self.encoding);
        // Systematic primary slivers are what reads fetch: keep them in the page cache.
        let keep_cached =
            sliver_type == SliverType::Primary && pair < encoding.n_primary_source_symbols();
        // One job on the node's verification threads (one per core; their scratch buffers
        // stay warm, and uploads cannot starve the rest of the node): look for a stored copy
        // (and read the metadata if it is not cached), verify, write. One hand-over instead
        // of three: each costs a wake-up and a context switch or two, which add up to several
        // percent of a node's CPU on a busy machine.
        let (stored, loaded) = self
            .verifiers
            .run(move || {
                check_verify_store(
                    &store,
                    encoding,
                    blob_id,
                    pair,
                    sliver,
                    metadata,
                    keep_cached,
                )
            })
            .await
            // A panic (caught by the worker thread, which goes on) or a stopped pool.
            .map_err(|_| NodeError::Internal {
                reason: "sliver verification failed unexpectedly (a bug: see the log)".into(),
            })?;
        if let Some(m) = loaded {
            self.cache_metadata(m);
        }
        let stored = stored?;
        if stored {
            debug!("sliver stored");
        }
        Ok(stored)
    }

    /// The BCS bytes of a stored sliver of one of this node's shards.
    pub async fn sliver_bcs(
        &self,
        blob_id: BlobId,
        pair: u32,
        sliver_type: SliverType,
    ) -> Result<bytes::Bytes, NodeError> {
        let pair = self.check_pair_index(pair)?;
        let view = self.blob_view(blob_id).await?;
        view.require_live_for_read(blob_id)?;
        self.check_shard(&view, blob_id, pair)?;
        let bytes = self
            .on_store(move |s| s.get_sliver_bcs(&blob_id, pair, sliver_type))
            .await?
            .ok_or(NodeError::SliverNotFound {
                blob_id,
                pair,
                sliver_type,
            })?;
        if self.faults.corrupt_slivers {
            return corrupt_sliver(&bytes, sliver_type).map(Into::into);
        }
        Ok(bytes)
    }

    /// A signed storage confirmation for the current epoch, given only when the blob has a
    /// live registration of the requested persistence type and this node durably holds the
    /// metadata and both slivers of every pair its shards store.
    pub async fn confirmation(
        &self,
        blob_id: BlobId,
        persistence: BlobPersistenceType,
    ) -> Result<StorageConfirmation, NodeError> {
        let view = self.blob_view(blob_id).await?;
        view.require_live(blob_id)?;
        let registered = match persistence {
            BlobPersistenceType::Permanent => view.live.iter().any(|o| !o.deletable),
            BlobPersistenceType::Deletable { object_id } => view
                .live
                .iter()
                .any(|o| o.deletable && o.object_id == object_id),
        };
        if !registered {
            return Err(match persistence {
                BlobPersistenceType::Permanent => NodeError::NoPermanentRegistration { blob_id },
                BlobPersistenceType::Deletable { object_id } => {
                    NodeError::NoDeletableRegistration { blob_id, object_id }
                }
            });
        }
        let n_shards = self.encoding.n_shards();
        let pairs: Vec<u16> = view
            .shards()?
            .iter()
            .map(|&s| shard_to_pair(s, n_shards, &blob_id))
            .collect();
        let missing = self
            .on_store(move |s| {
                let missing = s.missing(&blob_id, &pairs);
                if missing.is_empty() {
                    // The slivers' names durable before the signature promises them.
                    s.sync_blob(&blob_id)?;
                }
                Ok(missing)
            })
            .await?;
        if let Some(first) = missing.first() {
            return Err(NodeError::NotFullyStored {
                blob_id,
                epoch: view.epoch,
                missing: missing.len(),
                first: first.clone(),
            });
        }
        let message = ConfirmationMessage::new(view.epoch, blob_id, persistence);
        debug!(epoch = view.epoch, %persistence, "storage confirmed");
        Ok(StorageConfirmation::Signed(message.sign(&self.signing_key)))
    }

    /// Like [`Self::confirmation`], but while the blob is not (yet) registered, asks the ledger
    /// again until `wait` (capped by `max_confirmation_wait_ms`) has passed.
    pub async fn confirmation_with_wait(
        &self,
        blob_id: BlobId,
        persistence: BlobPersistenceType,
        wait: Option<Duration>,
    ) -> Result<StorageConfirmation, NodeError> {
        let max = Duration::from_millis(self.limits.max_confirmation_wait_ms);
        let deadline = Instant::now() + wait.map_or(Duration::ZERO, |w| w.min(max));
        loop {
            match self.confirmation(blob_id, persistence).await {
                Err(
                    NodeError::NotRegistered { .. }
                    | NodeError::NoPermanentRegistration { .. }
                    | NodeError::NoDeletableRegistration { .. },
                ) if Instant::now() + REGISTRATION_POLL_INTERVAL <= deadline => {
                    tokio::time::sleep(REGISTRATION_POLL_INTERVAL).await;
                }
                other => return other,
            }
        }
    }

    /// The ledger's status of a blob.
    pub async fn blob_status(&self, blob_id: BlobId) -> Result<ApiBlobStatus, NodeError> {
        Ok(self
            .on_ledger(move |l| l.blob_status(blob_id))
            .await?
            .into())
    }

    /// Health information; answers even when the ledger cannot be read.
    pub async fn health(&self) -> ServiceHealthInfo {
        let (epoch, shards, status) = match self.on_ledger(|l| l.committee()).await {
            Ok(c) => match self.my_member(&c) {
                Some(m) => (c.epoch(), m.shard_ids.clone(), "Active"),
                None => (c.epoch(), Vec::new(), "NotInCommittee"),
            },
            Err(e) => {
                warn!(error = %e, "health: cannot read the committee");
                (0, Vec::new(), "LedgerUnavailable")
            }
        };
        let owned: Vec<ShardHealthInfo> = shards
            .iter()
            .map(|&shard| ShardHealthInfo {
                shard,
                status: ShardStatus::Ready,
            })
            .collect();
        ServiceHealthInfo {
            uptime: self.started.elapsed(),
            epoch,
            public_key: *self.key.public(),
            node_status: status.to_string(),
            event_progress: EventProgress::default(),
            shard_summary: ShardStatusSummary {
                owned: owned.len(),
                owned_shard_status: OwnedShardStatus {
                    ready: owned.len(),
                    ..OwnedShardStatus::default()
                },
                read_only: 0,
            },
            shard_detail: Some(ShardStatusDetail {
                owned,
                other: Vec::new(),
            }),
            latest_checkpoint_sequence_number: None,
        }
    }
}

/// What [`stored_copy_or_metadata`] found.
enum Checked {
    /// A copy is stored already: `false` (not newly stored), or the upload differs from it.
    Stored(bool),
    /// Nothing stored yet: verify `sliver` against `metadata` (`loaded`: read from disk).
    Verify {
        sliver: ReceivedSliver,
        metadata: Arc<BlobMetadataWithId>,
        loaded: Option<Arc<BlobMetadataWithId>>,
    },
}

/// The blocking part of [`StorageNode::store_sliver`]: a stored copy, else verification
/// against the metadata (from the cache or, returned for the cache, the disk), then the write.
fn check_verify_store(
    store: &SliverStore,
    encoding: EncodingConfig,
    blob_id: BlobId,
    pair: u16,
    sliver: ReceivedSliver,
    metadata: Option<Arc<BlobMetadataWithId>>,
    keep_cached: bool,
) -> (Result<bool, NodeError>, Option<Arc<BlobMetadataWithId>>) {
    let (mut sliver, metadata, loaded) =
        match stored_copy_or_metadata(store, blob_id, pair, sliver, metadata) {
            Err(e) => return (Err(e), None),
            Ok(Checked::Stored(stored)) => return (Ok(stored), None),
            Ok(Checked::Verify {
                sliver,
                metadata,
                loaded,
            }) => (sliver, metadata, loaded),
        };
    if let Err(source) = sliver.view().verify(&encoding, &metadata.metadata) {
        return (Err(NodeError::InvalidSliver { blob_id, source }), loaded);
    }
    let sliver_type = sliver.sliver_type();
    let stored = store
        .put_sliver_bcs(
            &blob_id,
            pair,
            sliver_type,
            sliver.bcs_buffer(),
            keep_cached,
        )
        .map_err(NodeError::Store);
    (stored, loaded)
}

/// The blocking part of [`StorageNode::store_sliver`] before verification: a stored copy of
/// the sliver, else the metadata to verify it against (from the cache or the disk).
fn stored_copy_or_metadata(
    store: &SliverStore,
    blob_id: BlobId,
    pair: u16,
    sliver: ReceivedSliver,
    metadata: Option<Arc<BlobMetadataWithId>>,
) -> Result<Checked, NodeError> {
    let sliver_type = sliver.sliver_type();
    // The stored sliver was verified, and only one sliver matches the metadata's hash, so a
    // second upload is either the same bytes or invalid: no need to verify it again.
    if let Some(stored) = store
        .get_sliver_bcs(&blob_id, pair, sliver_type)
        .map_err(NodeError::Store)?
    {
        if stored[..] == *sliver.bcs() {
            return Ok(Checked::Stored(false));
        }
        return Err(NodeError::InvalidSliver {
            blob_id,
            source: EncodingError::InvalidSliver {
                sliver_type,
                index: sliver.index(),
                reason: SliverDefect::HashMismatch,
            },
        });
    }
    let (metadata, loaded) = match metadata {
        Some(m) => (m, None),
        None => {
            let m = Arc::new(
                store
                    .get_metadata(&blob_id)
                    .map_err(NodeError::Store)?
                    .ok_or(NodeError::MetadataRequired { blob_id })?,
            );
            (m.clone(), Some(m))
        }
    };
    Ok(Checked::Verify {
        sliver,
        metadata,
        loaded,
    })
}

fn join_error(e: tokio::task::JoinError) -> NodeError {
    NodeError::Internal {
        reason: format!("a blocking task failed: {e}"),
    }
}

/// Fault injection: flips one bit of the first hash, so the metadata still parses but no longer
/// hashes to its blob ID.
fn corrupt_metadata(metadata: &mut BlobMetadataWithId) {
    let BlobMetadata::V1(v1) = &mut metadata.metadata;
    if let Some(first) = v1.hashes.first_mut() {
        let mut bytes = first.primary_hash.bytes();
        bytes[0] ^= 1;
        first.primary_hash = Node::Digest(bytes);
    }
}

/// Fault injection: flips one bit of the first symbol byte, so the sliver still parses but
/// fails verification.
fn corrupt_sliver(bytes: &[u8], sliver_type: SliverType) -> Result<Vec<u8>, NodeError> {
    let mut sliver = Sliver::from_bcs(bytes, sliver_type).map_err(|e| {
        NodeError::Store(StoreError::Corrupt {
            what: "sliver",
            path: Default::default(),
            reason: e.to_string(),
        })
    })?;
    if let Some(b) = sliver.data.first_mut() {
        *b ^= 1;
    }
    Ok(sliver.to_bcs())
}
