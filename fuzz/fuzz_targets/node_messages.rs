//! What clients and nodes parse from each other besides slivers and metadata: storage
//! confirmations (JSON, as the node API returns them, and BCS), confirmation messages, bare
//! `BlobMetadata` (the body of a metadata PUT), object IDs and error bodies. None may panic, and
//! nothing that parses may pass verification under a key that did not sign it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrusfs::encoding::{BlobId, BlobMetadata};
use walrusfs::protocol::{
    ApiSuccess, BlobPersistenceType, ConfirmationMessage, ObjectId, ProtocolKeyPair, SignedMessage,
    StorageConfirmation, TrailingBytes,
};

fuzz_target!(|data: &[u8]| {
    // A key that signed nothing in this input.
    let key = ProtocolKeyPair::from_seed(&[7u8; 32]).expect("fixed seed");
    let check = |m: &SignedMessage| {
        for t in [
            BlobPersistenceType::Permanent,
            BlobPersistenceType::Deletable {
                object_id: ObjectId([1; 32]),
            },
        ] {
            // Only a signature by `key` over exactly this message can verify; the input
            // cannot contain one (the fuzzer does not know the secret key).
            assert!(
                m.verify_confirmation(key.public(), 0, BlobId([0; 32]), t)
                    .is_err()
            );
        }
    };
    if let Ok(c) = serde_json::from_slice::<ApiSuccess<StorageConfirmation>>(data) {
        check(c.success.data.signed());
    }
    if let Ok(m) = bcs::from_bytes::<SignedMessage>(data) {
        check(&m);
        assert_eq!(bcs::to_bytes(&m).ok().as_deref(), Some(data));
    }
    let _ = ConfirmationMessage::decode(data, TrailingBytes::Reject);
    let _ = ConfirmationMessage::decode(data, TrailingBytes::Allow);
    if let Ok(m) = bcs::from_bytes::<BlobMetadata>(data) {
        let _ = m.compute_blob_id();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = s.parse::<ObjectId>() {
            assert_eq!(id.to_string().parse::<ObjectId>().ok(), Some(id));
        }
        let _ = serde_json::from_str::<serde_json::Value>(s);
    }
});
