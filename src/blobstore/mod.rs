//! The blob-store trait: what the drive needs from a place that keeps immutable blobs, and
//! its backends.
//!
//! The drive sees blobs only through [`BlobStore`]: put a whole blob, read a byte range of
//! one, delete or extend it, ask for the current epoch. The trait is shaped so that every
//! backend fits without a schema change in the drive:
//! - `walrus` ([`WalrusStore`]): our own client over storage nodes and a ledger (the embedded
//!   devnet, or any network file);
//! - `walrus-http` ([`WalrusHttpStore`]): a publisher and aggregators over HTTP, every
//!   answer checked (blob IDs computed here, certifications read from Sui): blob-level put,
//!   ranged get, a per-backend maximum blob size, blob objects owned by the publisher's
//!   wallet ([`StoredBlob::owner`], hence [`BlobStoreError::NotOwner`] for delete/extend);
//! - encrypted blobs ([`EncryptedStore`], wrapping any of the above with a [`DriveKey`]).
//!
//! [`MemoryStore`] keeps blobs in memory, for unit tests of the layers above.

pub mod encrypted;
pub mod http;
pub mod key;
mod memory;
mod walrus;

use std::ops::Range;

pub use encrypted::{CryptError, EncryptedStore, FRAMING};
pub use http::{WalrusHttpConfig, WalrusHttpStore};
pub use key::{DriveKey, KeyError, KeyId};
pub use memory::MemoryStore;
pub use walrus::WalrusStore;

use crate::encoding::BlobId;

/// Errors of a blob store, by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    /// The blob is not stored (never was, expired, or deleted).
    #[error("blob {blob_id} is not stored (never certified, expired or deleted)")]
    NotFound { blob_id: BlobId },
    /// The blob is larger than this backend stores in one blob.
    #[error("a blob of {size} bytes exceeds this backend's maximum of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    /// The requested range lies outside the blob.
    #[error("range {start}..{end} is outside blob {blob_id} of {len} bytes")]
    BadRange {
        blob_id: BlobId,
        start: u64,
        end: u64,
        len: u64,
    },
    /// The network could not do it now; retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// The blob's ledger object belongs to someone else's wallet (a publisher's), so this
    /// backend cannot delete or extend it; the blob stays stored until its end epoch.
    #[error(
        "cannot {operation} blob {blob_id}: its Sui object belongs to the wallet of {owner}, and \
         this backend ({backend}) holds no wallet; the blob stays stored until its end epoch"
    )]
    NotOwner {
        operation: &'static str,
        blob_id: BlobId,
        owner: String,
        backend: &'static str,
    },
    /// Anything else; retrying will not help.
    #[error("{0}")]
    Failed(String),
}

impl BlobStoreError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, BlobStoreError::Unavailable(_))
    }
}

/// A blob as stored and certified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    pub blob_id: BlobId,
    /// The ledger object that holds the blob's storage (32 bytes on Sui); `None` when the
    /// backend does not tell (an aggregator-only read path).
    pub object_id: Option<[u8; 32]>,
    /// Who owns the blob object: `None` for our own key, else an address (a publisher's
    /// wallet). Only the owner can extend or delete.
    pub owner: Option<String>,
    /// Unencoded length in bytes: the bytes `get` addresses (for [`EncryptedStore`], the
    /// plaintext, not the ciphertext the network holds).
    pub size: u64,
    /// Length the network bills for (encoded slivers plus metadata, per shard summed).
    pub encoded_size: u64,
    /// The first epoch in which the blob is no longer stored.
    pub end_epoch: u64,
    pub deletable: bool,
}

/// How to store one blob.
#[derive(Debug, Clone, Copy)]
pub struct PutOptions {
    /// Epochs to keep the blob for, counted from the current one.
    pub epochs: u32,
    pub deletable: bool,
}

/// A place that keeps immutable blobs. Every method may be called from many tasks at once.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// A short name for logs and `status` ("walrus", "memory", …).
    fn kind(&self) -> &'static str;

    /// The largest blob this backend stores, in bytes.
    async fn max_blob_size(&self) -> Result<u64, BlobStoreError>;

    /// Stores `data` as one blob and returns once it is certified.
    async fn put(&self, data: Vec<u8>, options: PutOptions) -> Result<StoredBlob, BlobStoreError>;

    /// Reads `range` of a blob. Implementations verify what they read as far as the
    /// protocol allows (Walrus slivers against the blob ID); the drive verifies again against
    /// its own per-extent hashes.
    async fn get(&self, blob_id: BlobId, range: Range<u64>) -> Result<Vec<u8>, BlobStoreError>;

    /// Deletes a deletable blob (all our objects for it). Deleting a blob that is gone is not
    /// an error.
    async fn delete(&self, blob_id: BlobId) -> Result<(), BlobStoreError>;

    /// Extends a blob by `epochs`; returns the new end epoch.
    async fn extend(&self, blob_id: BlobId, epochs: u32) -> Result<u64, BlobStoreError>;

    /// The network's current epoch.
    async fn current_epoch(&self) -> Result<u64, BlobStoreError>;

    /// Before the caller gathers the data of a large blob: waits, for a bounded time, for
    /// work earlier puts left running in the background that holds much memory (uploads of
    /// an encoded blob to slow nodes), and cuts it short once the bound has passed. So that
    /// a mount holds one large blob at a time. Default: nothing to wait for.
    async fn settle_before_large_put(&self) {}
}
