//! Errors of the ledger. Rule violations mirror the Move contract's abort codes (named in each
//! variant's doc) so the same client logic can handle the embedded ledger and Sui.

use crate::encoding::{BlobId, EncodingError};
use crate::protocol::{Epoch, ObjectId, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database {path}: {source}")]
    Open {
        path: String,
        // Boxed, like `Certificate`, to keep `LedgerError` (and errors that wrap it) small.
        #[source]
        source: Box<rusqlite::Error>,
    },

    #[error("ledger database error: {0}")]
    Database(#[from] rusqlite::Error),

    #[error("ledger database {path} has no ledger yet; create it with a genesis first")]
    NotInitialized { path: String },

    #[error("ledger database {path} already holds a ledger; open it instead of creating it")]
    AlreadyInitialized { path: String },

    #[error(
        "ledger database schema version {found} is newer than this build supports ({supported}); upgrade walrusfs"
    )]
    SchemaTooNew { found: i64, supported: i64 },

    #[error("corrupt ledger row ({what}): {reason}")]
    CorruptRow { what: &'static str, reason: String },

    #[error("invalid genesis: {reason}")]
    InvalidGenesis { reason: String },

    /// `EIncorrectCommittee`.
    #[error("invalid committee: {reason}")]
    InvalidCommittee { reason: String },

    /// `EInvalidEpochsAhead`.
    #[error(
        "{epochs} epochs is not allowed: the period must be 1..={max} epochs ahead of the current epoch"
    )]
    InvalidEpochsAhead { epochs: u64, max: u32 },

    /// `EInvalidResourceSize`.
    #[error("cannot reserve storage of size 0")]
    InvalidResourceSize,

    #[error("insufficient balance: the operation costs {needed} but only {available} is left")]
    InsufficientBalance { needed: u64, available: u64 },

    #[error("arithmetic overflow computing {what}")]
    Overflow { what: &'static str },

    #[error("no storage resource {0}")]
    StorageNotFound(ObjectId),

    #[error("storage resource {storage} is already used by blob object {blob}")]
    StorageInUse { storage: ObjectId, blob: ObjectId },

    /// `blob::EResourceBounds` at registration.
    #[error(
        "storage resource {storage} covers epochs {start_epoch}..{end_epoch}, which does not include the current epoch {current_epoch}"
    )]
    StorageEpochs {
        storage: ObjectId,
        start_epoch: Epoch,
        end_epoch: Epoch,
        current_epoch: Epoch,
    },

    /// `blob::EResourceSize`.
    #[error(
        "storage resource {storage} holds {storage_size} bytes, but the encoded blob needs {encoded_size}"
    )]
    StorageTooSmall {
        storage: ObjectId,
        storage_size: u64,
        encoded_size: u64,
    },

    /// `blob::EInvalidBlobId`: the blob ID is not derived from the root hash, size and encoding.
    #[error(
        "blob ID {given} does not match the root hash, size and encoding type, which give {derived}"
    )]
    InvalidBlobId { given: BlobId, derived: BlobId },

    #[error(transparent)]
    Encoding(#[from] EncodingError),

    #[error("no blob object {0}")]
    BlobNotFound(ObjectId),

    /// Signature, weight, bitmap, intent or message-format failures of a certificate.
    #[error("certificate rejected: {0}")]
    Certificate(Box<ProtocolError>),

    /// `EInvalidIdEpoch` / `messages::EIncorrectEpoch`.
    #[error(
        "the certificate is for epoch {certificate_epoch}, but the current epoch is {current_epoch}"
    )]
    CertificateEpoch {
        certificate_epoch: Epoch,
        current_epoch: Epoch,
    },

    /// `blob::EInvalidBlobId` at certification.
    #[error("the certificate is for blob {certificate}, but the blob object holds blob {blob}")]
    CertificateBlobId { blob: BlobId, certificate: BlobId },

    /// `blob::EInvalidBlobPersistenceType`.
    #[error(
        "the certificate is for a {} blob, but object {object_id} is {}",
        persistence_name(*.certificate_deletable),
        persistence_name(*.blob_deletable)
    )]
    CertificatePersistence {
        object_id: ObjectId,
        blob_deletable: bool,
        certificate_deletable: bool,
    },

    /// `blob::EInvalidBlobObject`.
    #[error("the certificate is for deletable blob object {certificate}, not {object_id}")]
    CertificateObject {
        object_id: ObjectId,
        certificate: ObjectId,
    },

    /// `blob::EAlreadyCertified`.
    #[error("blob object {object_id} was already certified in epoch {certified_epoch}")]
    AlreadyCertified {
        object_id: ObjectId,
        certified_epoch: Epoch,
    },

    /// `blob::ENotCertified`.
    #[error("blob object {0} is not certified")]
    NotCertified(ObjectId),

    /// `blob::EResourceBounds` after registration.
    #[error(
        "blob object {object_id} has expired: its end epoch {end_epoch} is not after the current epoch {current_epoch}"
    )]
    Expired {
        object_id: ObjectId,
        end_epoch: Epoch,
        current_epoch: Epoch,
    },

    /// `blob::EBlobNotDeletable`.
    #[error("blob object {0} is permanent and cannot be deleted")]
    NotDeletable(ObjectId),
}

fn persistence_name(deletable: bool) -> &'static str {
    if deletable { "deletable" } else { "permanent" }
}

impl From<ProtocolError> for LedgerError {
    fn from(e: ProtocolError) -> Self {
        Self::Certificate(Box::new(e))
    }
}
