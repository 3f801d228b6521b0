//! Signed messages of `walrus-spec/msg_formats.txt`, byte-exact with walrus-core and the Move
//! contract.
//!
//! Every message is `intent_type u8 || intent_version u8 (0) || app_id u8 (3) || epoch u32 LE ||
//! body`, BCS-encoded without a length prefix for the body. Decoding is done by hand rather
//! than through serde so each mismatch gets its own error.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::encoding::BlobId;

use super::bls::{PUBLIC_KEY_LENGTH, ProtocolKeyPair, PublicKey, Signature};
use super::{Epoch, ObjectId, ProtocolError};

/// Intent types (`msg_formats.txt`; same numbering as `messages.move`).
pub mod intent_type {
    pub const PROOF_OF_POSSESSION: u8 = 0;
    pub const BLOB_CERT: u8 = 1;
    pub const INVALID_BLOB_ID: u8 = 2;
    pub const SYNC_SHARD: u8 = 3;
    pub const DENY_LIST_UPDATE: u8 = 4;
    pub const DENY_LIST_BLOB_DELETED: u8 = 5;
    pub const PROTOCOL_VERSION: u8 = 6;
}

/// The only intent version defined so far.
pub const INTENT_VERSION: u8 = 0;
/// The app ID of Walrus storage messages.
pub const STORAGE_APP_ID: u8 = 3;
/// Bytes of the header: 3 intent bytes and the epoch.
pub const HEADER_LENGTH: usize = 3 + 4;

/// The header every signed message starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    pub intent_type: u8,
    pub intent_version: u8,
    pub app_id: u8,
    pub epoch: Epoch,
}

impl MessageHeader {
    /// A storage-app header of the current version.
    pub fn storage(intent_type: u8, epoch: Epoch) -> Self {
        Self {
            intent_type,
            intent_version: INTENT_VERSION,
            app_id: STORAGE_APP_ID,
            epoch,
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LENGTH] {
        let mut out = [0u8; HEADER_LENGTH];
        out[0] = self.intent_type;
        out[1] = self.intent_version;
        out[2] = self.app_id;
        out[3..].copy_from_slice(&self.epoch.to_le_bytes());
        out
    }

    /// Splits a message into its header and body, checking only that the header is complete.
    pub fn split(message: &[u8]) -> Result<(Self, &[u8]), ProtocolError> {
        let Some((head, body)) = message.split_first_chunk::<HEADER_LENGTH>() else {
            return Err(ProtocolError::MessageDecode {
                reason: format!(
                    "{} bytes is shorter than the {HEADER_LENGTH}-byte header",
                    message.len()
                ),
            });
        };
        let header = Self {
            intent_type: head[0],
            intent_version: head[1],
            app_id: head[2],
            epoch: u32::from_le_bytes([head[3], head[4], head[5], head[6]]),
        };
        Ok((header, body))
    }

    /// Checks intent type, version and app ID, in that order (as the Move contract does).
    pub fn check_intent(&self, expected_type: u8) -> Result<(), ProtocolError> {
        if self.intent_type != expected_type {
            return Err(ProtocolError::WrongIntentType {
                expected: expected_type,
                actual: self.intent_type,
            });
        }
        if self.intent_version != INTENT_VERSION {
            return Err(ProtocolError::WrongIntentVersion {
                expected: INTENT_VERSION,
                actual: self.intent_version,
            });
        }
        if self.app_id != STORAGE_APP_ID {
            return Err(ProtocolError::WrongAppId {
                expected: STORAGE_APP_ID,
                actual: self.app_id,
            });
        }
        Ok(())
    }
}

/// Whether a blob is permanent or deletable; deletable blobs name their `Blob` object.
///
/// BCS: `0` for permanent; `1` followed by the 32-byte object ID for deletable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobPersistenceType {
    Permanent,
    Deletable { object_id: ObjectId },
}

impl BlobPersistenceType {
    pub fn is_deletable(&self) -> bool {
        matches!(self, Self::Deletable { .. })
    }
}

impl fmt::Display for BlobPersistenceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Permanent => f.write_str("permanent"),
            Self::Deletable { object_id } => write!(f, "deletable (object {object_id})"),
        }
    }
}

/// Whether bytes after a complete message body are an error.
///
/// Confirmations from nodes are parsed strictly (walrus-core's BCS decoding rejects trailing
/// bytes, and a strict parse makes equal contents mean equal bytes, which aggregation needs).
/// The Move contract deliberately ignores trailing bytes of certified messages "for
/// extensibility", so the ledger parses certificates leniently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailingBytes {
    Reject,
    Allow,
}

/// A storage node's statement that it holds all slivers of a blob for its shards in `epoch`
/// (intent `BLOB_CERT`). walrus-core calls it `Confirmation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmationMessage {
    pub epoch: Epoch,
    pub blob_id: BlobId,
    pub blob_type: BlobPersistenceType,
}

impl ConfirmationMessage {
    pub fn new(epoch: Epoch, blob_id: BlobId, blob_type: BlobPersistenceType) -> Self {
        Self {
            epoch,
            blob_id,
            blob_type,
        }
    }

    /// The exact bytes that are signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LENGTH + 32 + 1 + 32);
        out.extend_from_slice(
            &MessageHeader::storage(intent_type::BLOB_CERT, self.epoch).to_bytes(),
        );
        out.extend_from_slice(self.blob_id.as_bytes());
        match self.blob_type {
            BlobPersistenceType::Permanent => out.push(0),
            BlobPersistenceType::Deletable { object_id } => {
                out.push(1);
                out.extend_from_slice(object_id.as_bytes());
            }
        }
        out
    }

    /// Parses a confirmation, checking the intent (type, version, app ID) but not the epoch or
    /// contents, which the caller compares with what it expects.
    pub fn decode(bytes: &[u8], trailing: TrailingBytes) -> Result<Self, ProtocolError> {
        let (header, body) = MessageHeader::split(bytes)?;
        header.check_intent(intent_type::BLOB_CERT)?;
        let decode_err = |reason: String| ProtocolError::MessageDecode { reason };
        let Some((blob_id, rest)) = body.split_first_chunk::<{ BlobId::LENGTH }>() else {
            return Err(decode_err(format!(
                "body of {} bytes is too short for a blob ID",
                body.len()
            )));
        };
        let (blob_type, rest) = match rest.split_first() {
            Some((0, rest)) => (BlobPersistenceType::Permanent, rest),
            Some((1, rest)) => {
                let Some((object_id, rest)) = rest.split_first_chunk::<{ ObjectId::LENGTH }>()
                else {
                    return Err(decode_err(
                        "deletable persistence type without a complete object ID".into(),
                    ));
                };
                (
                    BlobPersistenceType::Deletable {
                        object_id: ObjectId(*object_id),
                    },
                    rest,
                )
            }
            Some((tag, _)) => {
                return Err(decode_err(format!(
                    "unknown blob persistence type {tag} (0 = permanent, 1 = deletable)"
                )));
            }
            None => return Err(decode_err("missing blob persistence type".into())),
        };
        if trailing == TrailingBytes::Reject && !rest.is_empty() {
            return Err(decode_err(format!(
                "{} unexpected bytes after the message",
                rest.len()
            )));
        }
        Ok(Self {
            epoch: header.epoch,
            blob_id: BlobId(*blob_id),
            blob_type,
        })
    }

    /// Signs this confirmation with a storage node's key.
    pub fn sign(&self, key: &ProtocolKeyPair) -> SignedMessage {
        SignedMessage::sign(key, self.to_bytes())
    }
}

/// A message signed by one storage node (walrus-core `SignedMessage<T>`).
///
/// BCS: `serialized_message` as a length-prefixed byte vector, then the 96 signature bytes.
/// JSON (the storage-node API): `{"serializedMessage": base64, "signature": base64}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedMessage {
    #[serde(with = "base64_if_readable")]
    pub serialized_message: Vec<u8>,
    pub signature: Signature,
}

impl SignedMessage {
    pub fn sign(key: &ProtocolKeyPair, serialized_message: Vec<u8>) -> Self {
        let signature = key.sign(&serialized_message);
        Self {
            serialized_message,
            signature,
        }
    }

    pub fn verify_signature(&self, public_key: &PublicKey) -> Result<(), ProtocolError> {
        public_key.verify(&self.serialized_message, &self.signature)
    }

    /// Checks that this is a valid storage confirmation from the node with `public_key` for
    /// `blob_id` with `blob_type` in `epoch`, and returns it.
    ///
    /// Cheap checks come first and the signature last, as walrus-core does: intent, epoch, blob
    /// ID, persistence type, then the pairing.
    pub fn verify_confirmation(
        &self,
        public_key: &PublicKey,
        epoch: Epoch,
        blob_id: BlobId,
        blob_type: BlobPersistenceType,
    ) -> Result<ConfirmationMessage, ProtocolError> {
        let message = ConfirmationMessage::decode(&self.serialized_message, TrailingBytes::Reject)?;
        if message.epoch != epoch {
            return Err(ProtocolError::EpochMismatch {
                expected: epoch,
                actual: message.epoch,
            });
        }
        if message.blob_id != blob_id {
            return Err(ProtocolError::BlobIdMismatch {
                expected: blob_id,
                actual: message.blob_id,
            });
        }
        if message.blob_type != blob_type {
            return Err(ProtocolError::PersistenceMismatch {
                expected: blob_type,
                actual: message.blob_type,
            });
        }
        self.verify_signature(public_key)?;
        Ok(message)
    }
}

/// What a storage node's confirmation endpoint returns (walrus-core `StorageConfirmation`).
///
/// JSON: `{"signed": {"serializedMessage": ..., "signature": ...}}`; BCS: variant index 0 then
/// the signed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StorageConfirmation {
    Signed(SignedMessage),
}

impl StorageConfirmation {
    pub fn signed(&self) -> &SignedMessage {
        match self {
            Self::Signed(m) => m,
        }
    }

    pub fn into_signed(self) -> SignedMessage {
        match self {
            Self::Signed(m) => m,
        }
    }
}

/// The success envelope of the storage-node REST API: `{"success": {"code": 200, "data": T}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiSuccess<T> {
    pub success: ApiSuccessBody<T>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiSuccessBody<T> {
    pub code: u16,
    pub data: T,
}

impl<T> ApiSuccess<T> {
    pub fn ok(data: T) -> Self {
        Self {
            success: ApiSuccessBody { code: 200, data },
        }
    }
}

/// The proof-of-possession message (intent 0): body = Sui address (32 bytes) || public key (48).
///
/// Registering a key with such a proof is what makes summing committee keys safe against
/// rogue-key attacks.
pub fn proof_of_possession_message(
    epoch: Epoch,
    sui_address: &[u8; 32],
    public_key: &PublicKey,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LENGTH + 32 + PUBLIC_KEY_LENGTH);
    out.extend_from_slice(
        &MessageHeader::storage(intent_type::PROOF_OF_POSSESSION, epoch).to_bytes(),
    );
    out.extend_from_slice(sui_address);
    out.extend_from_slice(public_key.as_bytes());
    out
}

/// Signs a proof of possession of `key` for `sui_address`.
pub fn sign_proof_of_possession(
    key: &ProtocolKeyPair,
    epoch: Epoch,
    sui_address: &[u8; 32],
) -> SignedMessage {
    SignedMessage::sign(
        key,
        proof_of_possession_message(epoch, sui_address, key.public()),
    )
}

/// Checks a proof of possession of `public_key` for `sui_address` made in `epoch`.
pub fn verify_proof_of_possession(
    proof: &SignedMessage,
    public_key: &PublicKey,
    epoch: Epoch,
    sui_address: &[u8; 32],
) -> Result<(), ProtocolError> {
    let (header, _) = MessageHeader::split(&proof.serialized_message)?;
    header.check_intent(intent_type::PROOF_OF_POSSESSION)?;
    if header.epoch != epoch {
        return Err(ProtocolError::EpochMismatch {
            expected: epoch,
            actual: header.epoch,
        });
    }
    if proof.serialized_message != proof_of_possession_message(epoch, sui_address, public_key) {
        return Err(ProtocolError::MessageDecode {
            reason: "the proof of possession is for another address or key".into(),
        });
    }
    proof.verify_signature(public_key)
}

/// Byte vectors as base64 strings in JSON and as ordinary BCS vectors otherwise, like
/// walrus-core's `IfIsHumanReadable<Base64>`.
mod base64_if_readable {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&STANDARD.encode(bytes))
        } else {
            // BCS writes a ULEB128 length then the bytes, the same as for `Vec<u8>`.
            s.serialize_bytes(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            STANDARD
                .decode(s.as_bytes())
                .map_err(serde::de::Error::custom)
        } else {
            Vec::<u8>::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: Epoch = 21;
    const BLOB_ID: BlobId = BlobId([7; 32]);

    fn key(i: u8) -> ProtocolKeyPair {
        ProtocolKeyPair::from_seed(&[i; 32]).unwrap()
    }

    #[test]
    fn permanent_confirmation_layout_matches_walrus_core() {
        let bytes =
            ConfirmationMessage::new(EPOCH, BLOB_ID, BlobPersistenceType::Permanent).to_bytes();
        assert_eq!(bytes[..3], [1, 0, 3]);
        assert_eq!(bytes[3..7], EPOCH.to_le_bytes());
        assert_eq!(bytes[7..39], [7; 32]);
        assert_eq!(bytes[39..], [0]);
        // The same bytes as BCS of the equivalent serde structure.
        let derived = bcs::to_bytes(&(
            (1u8, 0u8, 3u8),
            EPOCH,
            BLOB_ID,
            BlobPersistenceType::Permanent,
        ))
        .unwrap();
        assert_eq!(bytes, derived);
    }

    #[test]
    fn deletable_confirmation_layout_matches_walrus_core() {
        let object_id = ObjectId([42; 32]);
        let blob_type = BlobPersistenceType::Deletable { object_id };
        let bytes = ConfirmationMessage::new(EPOCH, BLOB_ID, blob_type).to_bytes();
        assert_eq!(bytes[..3], [1, 0, 3]);
        assert_eq!(bytes[39], 1);
        assert_eq!(bytes[40..], [42; 32]);
        assert_eq!(bytes.len(), 72);
        assert_eq!(bcs::to_bytes(&blob_type).unwrap(), bytes[39..]);
        assert_eq!(
            bcs::from_bytes::<BlobPersistenceType>(&bytes[39..]).unwrap(),
            blob_type
        );
    }

    #[test]
    fn decode_round_trip_and_intent_errors() {
        let msg = ConfirmationMessage::new(
            EPOCH,
            BLOB_ID,
            BlobPersistenceType::Deletable {
                object_id: ObjectId([1; 32]),
            },
        );
        let bytes = msg.to_bytes();
        assert_eq!(
            ConfirmationMessage::decode(&bytes, TrailingBytes::Reject).unwrap(),
            msg
        );

        let mut b = bytes.clone();
        b[0] = 2;
        assert_eq!(
            ConfirmationMessage::decode(&b, TrailingBytes::Reject),
            Err(ProtocolError::WrongIntentType {
                expected: 1,
                actual: 2
            })
        );
        let mut b = bytes.clone();
        b[1] = 99;
        assert_eq!(
            ConfirmationMessage::decode(&b, TrailingBytes::Reject),
            Err(ProtocolError::WrongIntentVersion {
                expected: 0,
                actual: 99
            })
        );
        let mut b = bytes.clone();
        b[2] = 44;
        assert_eq!(
            ConfirmationMessage::decode(&b, TrailingBytes::Reject),
            Err(ProtocolError::WrongAppId {
                expected: 3,
                actual: 44
            })
        );
        let mut b = bytes.clone();
        b[39] = 2;
        assert!(matches!(
            ConfirmationMessage::decode(&b, TrailingBytes::Reject),
            Err(ProtocolError::MessageDecode { .. })
        ));
        for len in [0, 6, 7, 38, 39, 40, 71] {
            assert!(
                matches!(
                    ConfirmationMessage::decode(&bytes[..len], TrailingBytes::Allow),
                    Err(ProtocolError::MessageDecode { .. })
                ),
                "truncated to {len}"
            );
        }
        let mut b = bytes.clone();
        b.push(0);
        assert!(matches!(
            ConfirmationMessage::decode(&b, TrailingBytes::Reject),
            Err(ProtocolError::MessageDecode { .. })
        ));
        assert_eq!(
            ConfirmationMessage::decode(&b, TrailingBytes::Allow).unwrap(),
            msg
        );
    }

    #[test]
    fn verify_confirmation_checks_everything() {
        let node = key(1);
        let permanent = BlobPersistenceType::Permanent;
        let signed = ConfirmationMessage::new(EPOCH, BLOB_ID, permanent).sign(&node);
        let ok = signed
            .verify_confirmation(node.public(), EPOCH, BLOB_ID, permanent)
            .unwrap();
        assert_eq!(ok.blob_id, BLOB_ID);

        // Wrong key.
        assert_eq!(
            signed.verify_confirmation(key(2).public(), EPOCH, BLOB_ID, permanent),
            Err(ProtocolError::SignatureVerification)
        );
        // Wrong epoch.
        assert_eq!(
            signed.verify_confirmation(node.public(), EPOCH + 1, BLOB_ID, permanent),
            Err(ProtocolError::EpochMismatch {
                expected: EPOCH + 1,
                actual: EPOCH
            })
        );
        // Wrong blob ID.
        let other = BlobId([8; 32]);
        assert_eq!(
            signed.verify_confirmation(node.public(), EPOCH, other, permanent),
            Err(ProtocolError::BlobIdMismatch {
                expected: other,
                actual: BLOB_ID
            })
        );
        // Wrong persistence type.
        let deletable = BlobPersistenceType::Deletable {
            object_id: ObjectId([3; 32]),
        };
        assert_eq!(
            signed.verify_confirmation(node.public(), EPOCH, BLOB_ID, deletable),
            Err(ProtocolError::PersistenceMismatch {
                expected: deletable,
                actual: permanent
            })
        );
        // Tampered message: a confirmation for another blob with the original signature.
        let mut tampered = signed.clone();
        tampered.serialized_message = ConfirmationMessage::new(EPOCH, other, permanent).to_bytes();
        assert_eq!(
            tampered.verify_confirmation(node.public(), EPOCH, other, permanent),
            Err(ProtocolError::SignatureVerification)
        );
        // Tampered signature: another valid signature by the same key over other bytes.
        let mut tampered = signed.clone();
        tampered.signature = node.sign(b"something else");
        assert_eq!(
            tampered.verify_confirmation(node.public(), EPOCH, BLOB_ID, permanent),
            Err(ProtocolError::SignatureVerification)
        );
    }

    #[test]
    fn signed_message_bcs_and_json_shapes() {
        let node = key(1);
        let signed =
            ConfirmationMessage::new(EPOCH, BLOB_ID, BlobPersistenceType::Permanent).sign(&node);
        // BCS: ULEB128 length (40) + message + 96 signature bytes, no prefix on the signature.
        let bcs_bytes = bcs::to_bytes(&signed).unwrap();
        assert_eq!(bcs_bytes.len(), 1 + 40 + 96);
        assert_eq!(bcs_bytes[0], 40);
        assert_eq!(bcs_bytes[1..41], signed.serialized_message[..]);
        assert_eq!(bcs_bytes[41..], signed.signature.to_bytes());
        assert_eq!(
            bcs::from_bytes::<SignedMessage>(&bcs_bytes).unwrap(),
            signed
        );

        // The enum wrapper: variant 0, then the signed message.
        let wrapped = StorageConfirmation::Signed(signed.clone());
        let bcs_wrapped = bcs::to_bytes(&wrapped).unwrap();
        assert_eq!(bcs_wrapped[0], 0);
        assert_eq!(bcs_wrapped[1..], bcs_bytes[..]);

        // JSON exactly as `ApiSuccess_StorageConfirmation` in storage_openapi.yaml.
        let json = serde_json::to_value(ApiSuccess::ok(wrapped.clone())).unwrap();
        let expected = serde_json::json!({
            "success": {
                "code": 200,
                "data": {
                    "signed": {
                        "serializedMessage": STANDARD.encode(&signed.serialized_message),
                        "signature": STANDARD.encode(signed.signature.to_bytes()),
                    }
                }
            }
        });
        assert_eq!(json, expected);
        let back: ApiSuccess<StorageConfirmation> = serde_json::from_value(expected).unwrap();
        assert_eq!(back.success.data, wrapped);
    }

    #[test]
    fn json_with_invalid_signature_is_rejected() {
        let json = serde_json::json!({
            "signed": {
                "serializedMessage": STANDARD.encode([1u8, 0, 3]),
                "signature": STANDARD.encode([0xffu8; 96]),
            }
        });
        assert!(serde_json::from_value::<StorageConfirmation>(json).is_err());
    }

    #[test]
    fn proof_of_possession() {
        let node = key(1);
        let addr = [5u8; 32];
        let pop = sign_proof_of_possession(&node, EPOCH, &addr);
        assert_eq!(pop.serialized_message.len(), 7 + 32 + 48);
        assert_eq!(pop.serialized_message[0], intent_type::PROOF_OF_POSSESSION);
        verify_proof_of_possession(&pop, node.public(), EPOCH, &addr).unwrap();
        assert!(verify_proof_of_possession(&pop, node.public(), EPOCH, &[6; 32]).is_err());
        assert!(verify_proof_of_possession(&pop, key(2).public(), EPOCH, &addr).is_err());
        assert!(verify_proof_of_possession(&pop, node.public(), EPOCH + 1, &addr).is_err());
    }
}
