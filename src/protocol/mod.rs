//! Walrus wire protocol: BLS12-381 keys and signatures, signed messages
//! (`walrus-spec/msg_formats.txt`), storage confirmations, certificates and committees.
//!
//! Byte-exact with walrus-core (`messages.rs`, `messages/*.rs`) and the Move system contract
//! (`messages.move`, `bls_aggregate.move`):
//! - `bls`: min-pk BLS (48-byte keys, 96-byte signatures), validated at parse time;
//! - `messages`: intent header, `BlobPersistenceType`, confirmations, `SignedMessage` and the
//!   storage-node API's `StorageConfirmation` JSON;
//! - `committee`: members with shard weights, quorum (`3w ≥ 2n + 1`) and validity
//!   (`3w ≥ n + 1`) rules, certificate verification in both signer forms;
//! - `certificate`: `ConfirmationCertificate`, the contract's signer bitmap, and the
//!   aggregator that turns confirmations into a certificate.

mod bls;
mod certificate;
mod committee;
mod error;
mod messages;
mod object_id;

pub use bls::{
    BLS_DST, PUBLIC_KEY_LENGTH, ProtocolKeyPair, PublicKey, SECRET_KEY_LENGTH, SIGNATURE_LENGTH,
    Signature,
};
pub use certificate::{
    BitmapCertificate, ConfirmationAggregator, ConfirmationCertificate, aggregate_confirmations,
    bitmap_to_signers, signers_to_bitmap,
};
pub use committee::{Committee, CommitteeMember, RequiredWeight};
pub use error::ProtocolError;
pub use messages::{
    ApiSuccess, ApiSuccessBody, BlobPersistenceType, ConfirmationMessage, HEADER_LENGTH,
    INTENT_VERSION, MessageHeader, STORAGE_APP_ID, SignedMessage, StorageConfirmation,
    TrailingBytes, intent_type, proof_of_possession_message, sign_proof_of_possession,
    verify_proof_of_possession,
};
pub use object_id::{ObjectId, ObjectIdParseError};

/// A Walrus storage epoch.
pub type Epoch = u32;

#[cfg(test)]
pub(crate) use committee::tests::{test_committee, test_committee_with_seed};
