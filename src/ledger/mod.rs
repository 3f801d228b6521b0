//! The ledger: Walrus's on-chain state (epochs, committees, storage resources, blob objects,
//! events) behind one trait.
//!
//! `EmbeddedLedger` keeps the semantics of the Walrus system contract
//! (`contracts/walrus/sources/system/`: `system_state_inner.move`, `blob.move`,
//! `storage_resource.move`, `bls_aggregate.move`) in a local SQLite database, for offline use,
//! devnets and tests. A Sui-backed implementation can follow behind the same trait.
//!
//! The trait is synchronous with `&self` methods; implementations serialise access internally.
//! Async callers should run calls on a blocking thread (`spawn_blocking`): each state change
//! waits for an fsync.

mod clock;
mod embedded;
mod error;
mod schema;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::encoding::{BlobId, EncodingType, Node};
use crate::protocol::{BlobPersistenceType, Committee, ConfirmationCertificate, Epoch, ObjectId};

pub use clock::{Clock, ManualClock, SystemClock};
pub use embedded::{EmbeddedLedger, Genesis, OpenMode};
pub use error::LedgerError;

/// Walrus prices storage per unit of 1 MiB of encoded size (`BYTES_PER_UNIT_SIZE`).
pub const BYTES_PER_UNIT_SIZE: u64 = 1024 * 1024;

/// The contract's upper bound on `max_epochs_ahead` (`MAX_MAX_EPOCHS_AHEAD`).
pub const MAX_MAX_EPOCHS_AHEAD: u32 = 1000;

/// A reservation of `size` bytes of encoded storage for epochs `start_epoch..end_epoch`
/// (end exclusive), like the contract's `Storage` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StorageResource {
    pub id: ObjectId,
    pub start_epoch: Epoch,
    pub end_epoch: Epoch,
    pub size: u64,
}

/// A registered blob, like the contract's `Blob` object. Several objects may exist for one blob
/// ID (different owners, periods or persistence types).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobObject {
    pub object_id: ObjectId,
    pub blob_id: BlobId,
    pub registered_epoch: Epoch,
    /// The epoch the blob was first certified in.
    pub certified_epoch: Option<Epoch>,
    /// Unencoded size in bytes.
    pub size: u64,
    pub encoding_type: EncodingType,
    pub deletable: bool,
    /// The storage the blob occupies; its end epoch is the blob's.
    pub storage: StorageResource,
}

impl BlobObject {
    /// The first epoch the blob is no longer stored in.
    pub fn end_epoch(&self) -> Epoch {
        self.storage.end_epoch
    }

    pub fn is_certified(&self) -> bool {
        self.certified_epoch.is_some()
    }

    /// Whether the blob has expired by `current_epoch`: its end epoch is not after it.
    pub fn is_expired(&self, current_epoch: Epoch) -> bool {
        self.storage.end_epoch <= current_epoch
    }

    /// The persistence type its storage confirmations and certificate must name.
    pub fn persistence_type(&self) -> BlobPersistenceType {
        if self.deletable {
            BlobPersistenceType::Deletable {
                object_id: self.object_id,
            }
        } else {
            BlobPersistenceType::Permanent
        }
    }
}

/// Events, as the contract emits them (`events.move`). Storage nodes follow them.
///
/// Stored as BCS: new variants must be appended, never inserted, so stored events keep
/// decoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerEvent {
    BlobRegistered {
        epoch: Epoch,
        blob_id: BlobId,
        size: u64,
        encoding_type: EncodingType,
        end_epoch: Epoch,
        deletable: bool,
        object_id: ObjectId,
    },
    /// Emitted on certification and on every extension (`is_extension`); `epoch` is the epoch
    /// of the first certification in both cases, as in `blob::emit_certified`.
    BlobCertified {
        epoch: Epoch,
        blob_id: BlobId,
        end_epoch: Epoch,
        deletable: bool,
        object_id: ObjectId,
        is_extension: bool,
    },
    BlobDeleted {
        epoch: Epoch,
        blob_id: BlobId,
        end_epoch: Epoch,
        object_id: ObjectId,
        was_certified: bool,
    },
    /// The ledger moved to `epoch`. When the clock skipped epochs (the ledger was not used for a
    /// while) only the epoch finally reached is announced.
    EpochChangeStart { epoch: Epoch },
}

/// Counts of live deletable blob objects for a blob ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeletableCounts {
    pub count_deletable_total: u32,
    pub count_deletable_certified: u32,
}

/// What the ledger says about a blob ID, the way a storage node's `/status` endpoint reports
/// it (`BlobStatus` in `storage_openapi.yaml`). Expired objects are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobStatus {
    Nonexistent,
    /// At least one live permanent object. If some permanent object is certified, `end_epoch`
    /// is the latest end epoch among certified permanent objects and `is_certified` is true;
    /// otherwise it is the latest among registered ones.
    Permanent {
        end_epoch: Epoch,
        is_certified: bool,
        /// Sequence number of the event that set this status (registration or certification).
        status_event: u64,
        deletable_counts: DeletableCounts,
        initial_certified_epoch: Option<Epoch>,
    },
    /// Only deletable objects are live.
    Deletable {
        initial_certified_epoch: Option<Epoch>,
        deletable_counts: DeletableCounts,
    },
}

impl BlobStatus {
    /// Whether some live object for the blob ID is certified.
    pub fn is_certified(&self) -> bool {
        match self {
            Self::Nonexistent => false,
            Self::Permanent {
                is_certified,
                deletable_counts,
                ..
            } => *is_certified || deletable_counts.count_deletable_certified > 0,
            Self::Deletable {
                deletable_counts, ..
            } => deletable_counts.count_deletable_certified > 0,
        }
    }
}

/// The epoch clock's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochInfo {
    pub epoch: Epoch,
    /// When the current epoch started, in ms since the Unix epoch.
    pub epoch_start_unix_ms: u64,
    /// `None` when epochs change only through `advance_epoch`.
    pub epoch_duration: Option<Duration>,
    pub n_shards: u16,
}

impl EpochInfo {
    /// When the next epoch starts by the clock, if epochs are timed.
    pub fn next_epoch_unix_ms(&self) -> Option<u64> {
        let duration = u64::try_from(self.epoch_duration?.as_millis()).ok()?;
        self.epoch_start_unix_ms.checked_add(duration)
    }
}

/// System parameters, fixed at genesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerParams {
    /// Length of an epoch by the wall clock; `None` = epochs change only by `advance_epoch`.
    pub epoch_duration: Option<Duration>,
    /// How many epochs ahead storage can be bought (`max_epochs_ahead`, ≤ 1000).
    pub max_epochs_ahead: u32,
    /// Price per `BYTES_PER_UNIT_SIZE` of encoded size per epoch of storage.
    pub storage_price_per_unit_size: u64,
    /// Price per `BYTES_PER_UNIT_SIZE` of encoded size, paid once at registration.
    pub write_price_per_unit_size: u64,
}

impl Default for LedgerParams {
    /// Mainnet-like: 53 epochs ahead at most; prices that make accounting visible in tests.
    fn default() -> Self {
        Self {
            epoch_duration: None,
            max_epochs_ahead: 53,
            storage_price_per_unit_size: 100,
            write_price_per_unit_size: 20,
        }
    }
}

/// What the single account of the embedded ledger has paid and has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// `None` = unlimited.
    pub balance: Option<u64>,
    /// Total paid for storage and writes so far.
    pub spent: u64,
}

/// The Walrus ledger: the system contract's state and operations.
///
/// Every state-changing method is atomic: it either happens completely (with its events) or
/// not at all. Every method first brings the epoch up to date with the clock.
pub trait Ledger: Send + Sync {
    /// The epoch clock's state (after catching up with the wall clock).
    fn epoch_info(&self) -> Result<EpochInfo, LedgerError>;

    fn current_epoch(&self) -> Result<Epoch, LedgerError> {
        Ok(self.epoch_info()?.epoch)
    }

    /// The committee of the current epoch.
    fn committee(&self) -> Result<Committee, LedgerError>;

    /// The committee of `epoch`: the one in force then, or for a future epoch the one scheduled
    /// now. `None` before genesis.
    fn committee_for_epoch(&self, epoch: Epoch) -> Result<Option<Committee>, LedgerError>;

    /// Schedules `committee` from its epoch on (which must be after the current one). Without a
    /// new committee, an epoch change keeps the previous one.
    fn set_next_committee(&self, committee: Committee) -> Result<(), LedgerError>;

    /// Moves to the next epoch now (tests and devnets); the clock restarts from now.
    fn advance_epoch(&self) -> Result<Epoch, LedgerError>;

    fn params(&self) -> Result<LedgerParams, LedgerError>;

    fn account(&self) -> Result<Account, LedgerError>;

    /// Buys `encoded_size` bytes of storage from the current epoch for `epochs_ahead` epochs.
    fn reserve_space(
        &self,
        encoded_size: u64,
        epochs_ahead: u32,
    ) -> Result<StorageResource, LedgerError>;

    /// A storage resource by ID (whether free or used by a blob).
    fn storage_resource(&self, id: ObjectId) -> Result<Option<StorageResource>, LedgerError>;

    /// Registers a blob on a free storage resource, which the blob object then owns.
    fn register_blob(
        &self,
        storage_id: ObjectId,
        blob_id: BlobId,
        root_hash: Node,
        unencoded_size: u64,
        encoding_type: EncodingType,
        deletable: bool,
    ) -> Result<BlobObject, LedgerError>;

    /// Certifies a registered blob with a quorum certificate of the current committee.
    fn certify_blob(
        &self,
        object_id: ObjectId,
        certificate: &ConfirmationCertificate,
    ) -> Result<BlobObject, LedgerError>;

    /// Extends a certified, unexpired blob by `extra_epochs`, paying for them.
    fn extend_blob(
        &self,
        object_id: ObjectId,
        extra_epochs: u32,
    ) -> Result<BlobObject, LedgerError>;

    /// Deletes a deletable, unexpired blob and returns its storage resource, free for reuse.
    fn delete_blob(&self, object_id: ObjectId) -> Result<StorageResource, LedgerError>;

    /// A blob object by ID; expired objects are returned too (check `is_expired`).
    fn blob_by_object_id(&self, object_id: ObjectId) -> Result<Option<BlobObject>, LedgerError>;

    /// All blob objects for a blob ID, expired ones included.
    fn blobs_by_blob_id(&self, blob_id: BlobId) -> Result<Vec<BlobObject>, LedgerError>;

    /// All blob objects for a blob ID (expired ones included) and the current epoch, for
    /// judging which are live. The epoch is never earlier than the state the objects were read
    /// from. The embedded ledger reads both in one transaction; this default makes two calls,
    /// objects first.
    fn blobs_with_epoch(&self, blob_id: BlobId) -> Result<(Vec<BlobObject>, Epoch), LedgerError> {
        let objects = self.blobs_by_blob_id(blob_id)?;
        Ok((objects, self.current_epoch()?))
    }

    /// The status of a blob ID over its live objects.
    fn blob_status(&self, blob_id: BlobId) -> Result<BlobStatus, LedgerError>;

    /// Up to `limit` events with sequence numbers greater than `cursor`, in order. Start with
    /// cursor 0; continue from the last sequence number returned.
    fn events_since(
        &self,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<(u64, LedgerEvent)>, LedgerError>;
}
