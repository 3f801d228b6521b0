//! Errors of the network client. Each names the blob, node or step and what to do.

use crate::encoding::{BlobId, EncodingError};
use crate::ledger::LedgerError;
use crate::protocol::ProtocolError;

/// What went wrong talking to one storage node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} did not answer within {secs:.1} s")]
    Timeout { url: String, secs: f64 },
    #[error("{url} answered HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} sent a malformed response: {reason}")]
    Malformed { url: String, reason: String },
    #[error("{url} sent data that failed verification: {source}")]
    Invalid {
        url: String,
        #[source]
        source: EncodingError,
    },
    #[error("{url} sent an invalid storage confirmation: {source}")]
    BadConfirmation {
        url: String,
        #[source]
        source: ProtocolError,
    },
}

impl NodeError {
    /// 404: the node does not have it (as opposed to being broken or unreachable).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NodeError::Status { status: 404, .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Encoding(#[from] EncodingError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(
        "blob {blob_id} was not certified: storage confirmations from nodes holding {weight} of {n_shards} shards, but a quorum needs {needed}. Node errors: {}. Start the stopped nodes (see `walrusfs devnet status`) and store again; the registration is reused.",
        failures.join("; ")
    )]
    NotEnoughConfirmations {
        blob_id: BlobId,
        weight: u32,
        needed: u32,
        n_shards: u16,
        failures: Vec<String>,
    },
    #[error("blob {blob_id} is not stored on this network (the ledger has no record of it)")]
    BlobNotFound { blob_id: BlobId },
    #[error(
        "blob {blob_id} expired at the end of epoch {end_epoch}; the current epoch is {current}"
    )]
    BlobExpired {
        blob_id: BlobId,
        end_epoch: u32,
        current: u32,
    },
    #[error("blob {blob_id} is registered but not certified yet, so nodes need not hold it")]
    BlobNotCertified { blob_id: BlobId },
    #[error(
        "no storage node returned valid metadata for blob {blob_id}: {}",
        failures.join("; ")
    )]
    NoMetadata {
        blob_id: BlobId,
        failures: Vec<String>,
    },
    #[error(
        "could not read blob {blob_id}: {valid} valid primary slivers, {needed} needed. Node errors: {}",
        failures.join("; ")
    )]
    NotEnoughSlivers {
        blob_id: BlobId,
        valid: usize,
        needed: usize,
        failures: Vec<String>,
    },
    #[error("blob {blob_id} has no {what} blob object to {action}")]
    NoSuchObject {
        blob_id: BlobId,
        what: &'static str,
        action: &'static str,
    },
    #[error("internal task failed: {0}")]
    Task(String),
    /// Writing what was read failed (a full disk, a closed pipe).
    #[error("cannot write the bytes read: {0}")]
    Output(std::io::Error),
}

impl From<tokio::task::JoinError> for ClientError {
    fn from(e: tokio::task::JoinError) -> Self {
        ClientError::Task(e.to_string())
    }
}
