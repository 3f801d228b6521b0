//! Errors of the storage node, and the one place where they become HTTP responses.
//!
//! Every error response carries the storage-node API's `Status` JSON (AIP-193, as walrus-core's
//! `api::errors::Status`): `{"error": {"code", "status", "message", "details": [ErrorInfo]}}`.
//! The `(code, status)` pairs are the ones Walrus clients accept (400 `INVALID_ARGUMENT` or
//! `FAILED_PRECONDITION`, 404 `NOT_FOUND`, 500 `INTERNAL`, 503 `UNAVAILABLE`), plus 413 for
//! bodies over the limit, which is what a Walrus node's body limit answers too.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::encoding::{BlobId, EncodingError, SliverType};
use crate::ledger::LedgerError;
use crate::protocol::{Epoch, ObjectId, ProtocolError};

use super::api::{ErrorDetail, ErrorInfo, ErrorStatus, ErrorStatusBody, STORAGE_NODE_ERROR_DOMAIN};

/// Why the node could not start from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid node configuration {path}: {reason}")]
    Parse { path: PathBuf, reason: String },

    #[error("invalid node configuration: {reason}")]
    Invalid { reason: String },

    #[error("key file {path} does not hold a BLS12-381 protocol key")]
    Key {
        path: PathBuf,
        #[source]
        source: ProtocolError,
    },

    #[error("cannot open the ledger at {path}")]
    Ledger {
        path: PathBuf,
        #[source]
        source: LedgerError,
    },
}

/// A failure of the node's own disk storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("stored {what} at {path} is unreadable: {reason}")]
    Corrupt {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// Everything that can go wrong with a request or with starting and running the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error("cannot listen on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),

    // ---- malformed requests (400 INVALID_ARGUMENT) --------------------------------------
    #[error("invalid request parameter: {reason}")]
    InvalidParameter { reason: String },

    #[error(
        "sliver pair index {index} is out of range: the system has {n_shards} shards, so pair indices are 0..{n_shards}"
    )]
    PairIndexOutOfRange { index: u32, n_shards: u16 },

    #[error(
        "expected a request body with `Content-Type: application/octet-stream`, got `{content_type}`"
    )]
    UnsupportedContentType { content_type: String },

    #[error("cannot read the request body: {reason}")]
    BadBody { reason: String },

    #[error("the request body of {what} is not valid BCS")]
    MalformedBody {
        what: &'static str,
        #[source]
        source: EncodingError,
    },

    #[error("the metadata in the body is for blob {body}, but the path names blob {path}")]
    MetadataBlobIdMismatch { path: BlobId, body: BlobId },

    #[error("the metadata does not belong to blob {blob_id}")]
    InvalidMetadata {
        blob_id: BlobId,
        #[source]
        source: EncodingError,
    },

    #[error(
        "the {sliver_type} sliver in the body has index {sliver_index}, which is not part of sliver pair {pair} named in the path (n = {n_shards})"
    )]
    SliverIndexMismatch {
        sliver_type: SliverType,
        sliver_index: u16,
        pair: u16,
        n_shards: u16,
    },

    #[error("the sliver failed verification against the stored metadata of blob {blob_id}")]
    InvalidSliver {
        blob_id: BlobId,
        #[source]
        source: EncodingError,
    },

    // ---- wrong state of the system (400 FAILED_PRECONDITION) ----------------------------
    #[error("blob {blob_id} is not registered on the ledger; register it before uploading")]
    NotRegistered { blob_id: BlobId },

    #[error(
        "blob {blob_id} has expired: its registrations ended by epoch {end_epoch}, and the current epoch is {epoch}"
    )]
    Expired {
        blob_id: BlobId,
        end_epoch: Epoch,
        epoch: Epoch,
    },

    #[error(
        "blob {blob_id} has no live permanent registration; only deletable ones (ask for a deletable confirmation with the object ID)"
    )]
    NoPermanentRegistration { blob_id: BlobId },

    #[error("blob {blob_id} has no live deletable registration with object ID {object_id}")]
    NoDeletableRegistration {
        blob_id: BlobId,
        object_id: ObjectId,
    },

    #[error("this node is not a member of the committee of epoch {epoch}")]
    NotInCommittee { epoch: Epoch },

    #[error(
        "sliver pair {pair} of blob {blob_id} belongs to shard {shard}, which is not assigned to this node in epoch {epoch}"
    )]
    ShardNotAssigned {
        blob_id: BlobId,
        pair: u16,
        shard: u16,
        epoch: Epoch,
    },

    #[error("the metadata of blob {blob_id} must be stored on this node before its slivers")]
    MetadataRequired { blob_id: BlobId },

    #[error(
        "this node does not yet hold all slivers of blob {blob_id} for its shards in epoch {epoch}: {missing} missing (first: {first}); finish uploading and retry"
    )]
    NotFullyStored {
        blob_id: BlobId,
        epoch: Epoch,
        missing: usize,
        first: String,
    },

    // ---- absent resources (404 NOT_FOUND) -----------------------------------------------
    #[error("blob {blob_id} is not available on this node: {reason}")]
    BlobNotAvailable { blob_id: BlobId, reason: String },

    #[error("this node does not hold the metadata of blob {blob_id}")]
    MetadataNotFound { blob_id: BlobId },

    #[error("this node does not hold the {sliver_type} sliver of pair {pair} of blob {blob_id}")]
    SliverNotFound {
        blob_id: BlobId,
        pair: u16,
        sliver_type: SliverType,
    },

    #[error("no such endpoint: {method} {path}")]
    NoRoute { method: String, path: String },

    // ---- limits ------------------------------------------------------------------------
    #[error("the request body exceeds this endpoint's limit of {limit} bytes")]
    BodyTooLarge { limit: usize },

    // ---- the node's own failures (5xx) --------------------------------------------------
    #[error("the ledger is unavailable")]
    Ledger(#[from] LedgerError),

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("internal error: {reason}")]
    Internal { reason: String },
}

/// The general class of an error, as the API's `status` string and HTTP code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiStatusCode {
    InvalidArgument,
    FailedPrecondition,
    NotFound,
    PayloadTooLarge,
    Internal,
    Unavailable,
}

impl ApiStatusCode {
    pub fn http(self) -> StatusCode {
        match self {
            Self::InvalidArgument | Self::FailedPrecondition => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::NotFound => "NOT_FOUND",
            Self::PayloadTooLarge => "SIZE_EXCEEDED",
            Self::Internal => "INTERNAL",
            Self::Unavailable => "UNAVAILABLE",
        }
    }
}

impl NodeError {
    /// The API status class and the machine-readable reason of this error.
    pub fn classify(&self) -> (ApiStatusCode, &'static str) {
        use ApiStatusCode::*;
        match self {
            Self::InvalidParameter { .. } => (InvalidArgument, "INVALID_PARAMETER"),
            Self::PairIndexOutOfRange { .. } => (InvalidArgument, "SLIVER_PAIR_INDEX_OUT_OF_RANGE"),
            Self::UnsupportedContentType { .. } => (InvalidArgument, "INVALID_CONTENT_TYPE"),
            Self::BadBody { .. } => (InvalidArgument, "INVALID_BODY"),
            Self::MalformedBody { .. } => (InvalidArgument, "INVALID_BCS"),
            Self::MetadataBlobIdMismatch { .. } => (InvalidArgument, "BLOB_ID_MISMATCH"),
            Self::InvalidMetadata { .. } => (InvalidArgument, "INVALID_METADATA"),
            Self::SliverIndexMismatch { .. } => (InvalidArgument, "SLIVER_INDEX_MISMATCH"),
            Self::InvalidSliver { .. } => (InvalidArgument, "INVALID_SLIVER"),
            Self::NotRegistered { .. } => (FailedPrecondition, "NOT_REGISTERED"),
            Self::Expired { .. } => (FailedPrecondition, "BLOB_EXPIRED"),
            Self::NoPermanentRegistration { .. } => (FailedPrecondition, "NOT_REGISTERED"),
            Self::NoDeletableRegistration { .. } => (FailedPrecondition, "NOT_REGISTERED"),
            Self::NotInCommittee { .. } => (FailedPrecondition, "NOT_IN_COMMITTEE"),
            Self::ShardNotAssigned { .. } => (FailedPrecondition, "SHARD_NOT_ASSIGNED"),
            Self::MetadataRequired { .. } => (FailedPrecondition, "MISSING_METADATA"),
            Self::NotFullyStored { .. } => (FailedPrecondition, "NOT_FULLY_STORED"),
            Self::BlobNotAvailable { .. } => (NotFound, "BLOB_NOT_AVAILABLE"),
            Self::MetadataNotFound { .. } => (NotFound, "METADATA_NOT_FOUND"),
            Self::SliverNotFound { .. } => (NotFound, "SLIVER_NOT_FOUND"),
            Self::NoRoute { .. } => (NotFound, "NO_SUCH_ENDPOINT"),
            Self::BodyTooLarge { .. } => (PayloadTooLarge, "BODY_TOO_LARGE"),
            Self::Ledger(_) => (Unavailable, "LEDGER_UNAVAILABLE"),
            Self::Store(_) => (Internal, "STORAGE_FAILURE"),
            Self::Config(_) | Self::Bind { .. } | Self::Serve(_) | Self::Internal { .. } => {
                (Internal, "INTERNAL")
            }
        }
    }

    /// Values named in the message, for the `ErrorInfo` metadata.
    fn metadata(&self) -> BTreeMap<String, Value> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        match self {
            Self::PairIndexOutOfRange { index, n_shards } => {
                put("index", (*index).into());
                put("n_shards", (*n_shards).into());
            }
            Self::NotRegistered { blob_id }
            | Self::NoPermanentRegistration { blob_id }
            | Self::MetadataRequired { blob_id }
            | Self::MetadataNotFound { blob_id }
            | Self::BlobNotAvailable { blob_id, .. }
            | Self::InvalidMetadata { blob_id, .. }
            | Self::InvalidSliver { blob_id, .. } => put("blob_id", blob_id.to_string().into()),
            Self::Expired {
                blob_id,
                end_epoch,
                epoch,
            } => {
                put("blob_id", blob_id.to_string().into());
                put("end_epoch", (*end_epoch).into());
                put("epoch", (*epoch).into());
            }
            Self::NoDeletableRegistration { blob_id, object_id } => {
                put("blob_id", blob_id.to_string().into());
                put("object_id", object_id.to_string().into());
            }
            Self::NotInCommittee { epoch } => put("epoch", (*epoch).into()),
            Self::ShardNotAssigned {
                blob_id,
                pair,
                shard,
                epoch,
            } => {
                put("blob_id", blob_id.to_string().into());
                put("sliver_pair_index", (*pair).into());
                put("shard", (*shard).into());
                put("epoch", (*epoch).into());
            }
            Self::NotFullyStored {
                blob_id,
                epoch,
                missing,
                ..
            } => {
                put("blob_id", blob_id.to_string().into());
                put("epoch", (*epoch).into());
                put("missing", (*missing).into());
            }
            Self::SliverNotFound {
                blob_id,
                pair,
                sliver_type,
            } => {
                put("blob_id", blob_id.to_string().into());
                put("sliver_pair_index", (*pair).into());
                put("sliver_type", sliver_type.to_string().into());
            }
            Self::SliverIndexMismatch {
                sliver_type,
                sliver_index,
                pair,
                ..
            } => {
                put("sliver_type", sliver_type.to_string().into());
                put("sliver_index", (*sliver_index).into());
                put("sliver_pair_index", (*pair).into());
            }
            Self::BodyTooLarge { limit } => put("limit", (*limit).into()),
            _ => {}
        }
        m
    }

    /// The `Status` JSON body of this error.
    pub fn to_status(&self) -> ErrorStatus {
        let (code, reason) = self.classify();
        ErrorStatus {
            error: ErrorStatusBody {
                code: code.http().as_u16(),
                status: code.as_str().to_string(),
                message: message_with_causes(self),
                details: vec![ErrorDetail::ErrorInfo(ErrorInfo {
                    reason: reason.to_string(),
                    domain: STORAGE_NODE_ERROR_DOMAIN.to_string(),
                    metadata: self.metadata(),
                })],
            },
        }
    }
}

/// The error's message followed by those of its causes: what an HTTP client gets to read.
pub fn message_with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        message.push_str(": ");
        message.push_str(&e.to_string());
        cause = e.source();
    }
    message
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let (code, reason) = self.classify();
        let http = code.http();
        // Server-side failures are ours to fix and logged loudly; client mistakes only at
        // debug level, since any client can cause them at will.
        if http.is_server_error() {
            tracing::error!(reason, error = %message_with_causes(&self), "request failed");
        } else {
            tracing::debug!(reason, error = %message_with_causes(&self), "request rejected");
        }
        let mut response = (http, Json(self.to_status())).into_response();
        if http == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            // Refused before its body was read: the server drops the connection afterwards,
            // and a client that put it back in its pool would fail its next request on it.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}
