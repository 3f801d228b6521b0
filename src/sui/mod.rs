//! Reading Walrus state from Sui: blob objects, certification events and the current epoch.
//!
//! The `walrus-http` backend never takes a publisher's word that a blob is stored: it reads
//! the blob's Sui object (or the `BlobCertified` event the publisher points at) and checks the
//! blob ID, the certification and the end epoch itself. [`SuiReader`] is what it needs from
//! Sui; the full-node implementation talks gRPC through the sui-rust-sdk crates.
//! [`MemorySui`] keeps the same answers in memory, for unit tests of the layers above.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::encoding::BlobId;

pub mod grpc;
pub mod layout;

pub use grpc::GrpcSuiReader;

/// A Sui object ID (32 bytes).
pub type ObjectId = [u8; 32];

/// A `walrus::storage_resource::Storage` object: paid storage for `[start_epoch, end_epoch)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageResource {
    pub object_id: ObjectId,
    pub start_epoch: u32,
    pub end_epoch: u32,
    pub storage_size: u64,
}

/// A `walrus::blob::Blob` object as stored on Sui.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobObject {
    pub object_id: ObjectId,
    pub registered_epoch: u32,
    pub blob_id: BlobId,
    /// Unencoded size in bytes.
    pub size: u64,
    pub encoding_type: u8,
    /// `None` until a certificate was accepted for this object.
    pub certified_epoch: Option<u32>,
    pub storage: StorageResource,
    pub deletable: bool,
}

/// A `walrus::events::BlobCertified` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobCertifiedEvent {
    pub epoch: u32,
    pub blob_id: BlobId,
    pub end_epoch: u32,
    pub deletable: bool,
    pub object_id: ObjectId,
    pub is_extension: bool,
}

/// Errors reading from Sui.
#[derive(Debug, thiserror::Error)]
pub enum SuiError {
    /// The object, transaction or event does not exist.
    #[error("not found on Sui: {0}")]
    NotFound(String),
    /// It exists but is not what we asked for (wrong Move type, undecodable contents).
    #[error("unexpected answer from Sui: {0}")]
    Invalid(String),
    /// The full node could not answer now; retrying later may succeed.
    #[error("Sui full node unavailable: {0}")]
    Unavailable(String),
}

/// What the `walrus-http` backend reads from Sui. Every method may be called from many tasks.
#[async_trait::async_trait]
pub trait SuiReader: Send + Sync + 'static {
    /// The `Blob` object with this ID.
    async fn blob_object(&self, object_id: ObjectId) -> Result<BlobObject, SuiError>;

    /// The `BlobCertified` event number `event_seq` of transaction `tx_digest` (base58).
    async fn certified_event(
        &self,
        tx_digest: &str,
        event_seq: u64,
    ) -> Result<BlobCertifiedEvent, SuiError>;

    /// The current Walrus epoch.
    async fn current_epoch(&self) -> Result<u32, SuiError>;
}

/// An in-memory [`SuiReader`] for unit tests of the layers above.
#[derive(Default)]
pub struct MemorySui {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    epoch: u32,
    objects: HashMap<ObjectId, BlobObject>,
    events: HashMap<(String, u64), BlobCertifiedEvent>,
}

impl MemorySui {
    pub fn new(epoch: u32) -> Self {
        let sui = Self::default();
        sui.set_epoch(epoch);
        sui
    }

    pub fn set_epoch(&self, epoch: u32) {
        self.lock().epoch = epoch;
    }

    pub fn insert_blob(&self, blob: BlobObject) {
        self.lock().objects.insert(blob.object_id, blob);
    }

    pub fn insert_event(&self, tx_digest: &str, event_seq: u64, event: BlobCertifiedEvent) {
        self.lock()
            .events
            .insert((tx_digest.to_string(), event_seq), event);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding this lock leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl SuiReader for MemorySui {
    async fn blob_object(&self, object_id: ObjectId) -> Result<BlobObject, SuiError> {
        self.lock()
            .objects
            .get(&object_id)
            .cloned()
            .ok_or_else(|| SuiError::NotFound(format!("object 0x{}", hex(&object_id))))
    }

    async fn certified_event(
        &self,
        tx_digest: &str,
        event_seq: u64,
    ) -> Result<BlobCertifiedEvent, SuiError> {
        self.lock()
            .events
            .get(&(tx_digest.to_string(), event_seq))
            .cloned()
            .ok_or_else(|| SuiError::NotFound(format!("event {event_seq} of {tx_digest}")))
    }

    async fn current_epoch(&self) -> Result<u32, SuiError> {
        Ok(self.lock().epoch)
    }
}

/// Lower-case hex of bytes, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
