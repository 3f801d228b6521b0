//! Errors of the protocol layer: each names the check that failed and the values involved.

use crate::encoding::BlobId;

use super::{BlobPersistenceType, Epoch};

/// Why a key, signature, signed message, certificate or committee was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error(
        "invalid BLS12-381 public key: {reason} (expected 48 bytes of a compressed G1 point in the prime-order subgroup, not the identity)"
    )]
    InvalidPublicKey { reason: String },

    #[error(
        "invalid BLS12-381 signature encoding: {reason} (expected 96 bytes of a compressed G2 point in the prime-order subgroup)"
    )]
    InvalidSignature { reason: String },

    #[error("invalid BLS12-381 secret key: {reason}")]
    InvalidSecretKey { reason: String },

    #[error("the BLS signature does not verify for this message and public key")]
    SignatureVerification,

    #[error("cannot aggregate an empty set of {what}")]
    EmptyAggregate { what: &'static str },

    #[error("the operating system's random number generator failed: {reason}")]
    Randomness { reason: String },

    #[error("cannot decode the signed message: {reason}")]
    MessageDecode { reason: String },

    #[error("the message has intent type {actual}, expected {expected}")]
    WrongIntentType { expected: u8, actual: u8 },

    #[error("the message has intent version {actual}, expected {expected}")]
    WrongIntentVersion { expected: u8, actual: u8 },

    #[error("the message has app ID {actual}, expected {expected} (Walrus storage)")]
    WrongAppId { expected: u8, actual: u8 },

    #[error("the message was signed in epoch {actual}, expected epoch {expected}")]
    EpochMismatch { expected: Epoch, actual: Epoch },

    #[error("the message confirms blob {actual}, expected blob {expected}")]
    BlobIdMismatch { expected: BlobId, actual: BlobId },

    #[error("the message confirms a {actual} blob, expected a {expected} blob")]
    PersistenceMismatch {
        expected: BlobPersistenceType,
        actual: BlobPersistenceType,
    },

    #[error("the signed messages to aggregate differ; a certificate covers exactly one message")]
    MessageMismatch,

    #[error("signer index {index} is out of range: the committee has {n_members} members")]
    SignerOutOfRange { index: u16, n_members: usize },

    #[error("signer {index} appears more than once")]
    DuplicateSigner { index: u16 },

    #[error("the certificate has no signers")]
    NoSigners,

    #[error("invalid signers bitmap: {reason}")]
    InvalidBitmap { reason: String },

    #[error("signers hold {weight} of {n_shards} shards, below the required {required} ({kind})")]
    NotEnoughWeight {
        weight: u32,
        required: u32,
        n_shards: u16,
        kind: &'static str,
    },

    #[error("invalid committee: {reason}")]
    InvalidCommittee { reason: String },

    #[error("the committee is for epoch {committee}, but epoch {expected} was expected")]
    CommitteeEpoch { expected: Epoch, committee: Epoch },
}
