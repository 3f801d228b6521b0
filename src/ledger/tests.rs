//! Tests of the embedded ledger: every contract rule, persistence, and crash safety.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

use super::*;
use crate::encoding::merkle::blake2b256;
use crate::encoding::{BlobId, EncodingConfig, EncodingType, Node};
use crate::protocol::{
    BlobPersistenceType, Committee, ConfirmationCertificate, ConfirmationMessage, ObjectId,
    ProtocolError, ProtocolKeyPair, test_committee, test_committee_with_seed,
};

const HOUR_MS: u64 = 3_600_000;
const GENESIS_MS: u64 = 1_700_000_000_000;
const MIB: u64 = 1024 * 1024;

struct Fixture {
    ledger: EmbeddedLedger,
    keys: Vec<ProtocolKeyPair>,
    committee: Committee,
    clock: Arc<ManualClock>,
    dir: TempDir,
}

impl Fixture {
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("ledger.db")
    }

    fn epoch(&self) -> u32 {
        self.ledger.current_epoch().unwrap()
    }

    fn reopen(self) -> Self {
        let path = self.path();
        let Fixture {
            ledger,
            keys,
            committee,
            clock,
            dir,
        } = self;
        drop(ledger);
        let ledger = EmbeddedLedger::open_with(&path, OpenMode::Open, clock.clone()).unwrap();
        Fixture {
            ledger,
            keys,
            committee,
            clock,
            dir,
        }
    }

    /// Reserves enough storage for `test_blob(i)` and registers it.
    fn register(&self, i: u64, deletable: bool, epochs: u32) -> BlobObject {
        let (root, blob_id, size) = test_blob(i);
        let storage = self.ledger.reserve_space(MIB, epochs).unwrap();
        self.ledger
            .register_blob(
                storage.id,
                blob_id,
                root,
                size,
                EncodingType::RS2,
                deletable,
            )
            .unwrap()
    }

    /// A quorum certificate (members 0, 1, 2 of 4) for `blob` in the current epoch.
    fn certificate(&self, blob: &BlobObject) -> ConfirmationCertificate {
        let msg = ConfirmationMessage::new(self.epoch(), blob.blob_id, blob.persistence_type());
        certificate(&self.keys, &[0, 1, 2], &msg)
    }

    fn certify(&self, blob: &BlobObject) -> BlobObject {
        self.ledger
            .certify_blob(blob.object_id, &self.certificate(blob))
            .unwrap()
    }

    fn events(&self) -> Vec<LedgerEvent> {
        self.ledger
            .events_since(0, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }
}

fn genesis(committee: Committee) -> Genesis {
    Genesis {
        committee,
        params: LedgerParams {
            epoch_duration: Some(Duration::from_millis(HOUR_MS)),
            max_epochs_ahead: 10,
            storage_price_per_unit_size: 100,
            write_price_per_unit_size: 20,
        },
        initial_balance: Some(1_000_000),
        genesis_unix_ms: Some(GENESIS_MS),
    }
}

/// 4 members with one shard each (n = 4: quorum 3, validity 2), starting in epoch 1.
fn fixture() -> Fixture {
    let (committee, keys) = test_committee(1, &[1, 1, 1, 1]);
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(GENESIS_MS));
    let ledger = EmbeddedLedger::open_with(
        dir.path().join("ledger.db"),
        OpenMode::Create(&genesis(committee.clone())),
        clock.clone(),
    )
    .unwrap();
    Fixture {
        ledger,
        keys,
        committee,
        clock,
        dir,
    }
}

fn test_blob(i: u64) -> (Node, BlobId, u64) {
    let root = Node::Digest(blake2b256(&i.to_le_bytes()));
    let size = 1000 + i % 100;
    (
        root,
        BlobId::from_root(&root, EncodingType::RS2, size),
        size,
    )
}

/// The protocol error a certificate was rejected with; panics on any other outcome.
fn cert_error<T: std::fmt::Debug>(result: Result<T, LedgerError>) -> ProtocolError {
    match result {
        Err(LedgerError::Certificate(e)) => *e,
        other => panic!("expected a rejected certificate, got {other:?}"),
    }
}

fn certificate(
    keys: &[ProtocolKeyPair],
    signers: &[u16],
    msg: &ConfirmationMessage,
) -> ConfirmationCertificate {
    let signed: Vec<_> = signers
        .iter()
        .map(|&i| msg.sign(&keys[usize::from(i)]))
        .collect();
    ConfirmationCertificate::from_signed_messages(signers.to_vec(), &signed).unwrap()
}

#[test]
fn ledger_is_send_sync_and_object_safe() {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<EmbeddedLedger>();
    assert_send_sync::<dyn Ledger>();
    let f = fixture();
    let shared: Arc<dyn Ledger> = Arc::new(f.ledger);
    assert_eq!(shared.current_epoch().unwrap(), 1);
}

#[test]
fn create_open_and_schema_version() {
    let f = fixture();
    let path = f.path();
    // Creating over an existing ledger, or opening a missing one, fails.
    assert!(matches!(
        EmbeddedLedger::create(&path, &genesis(f.committee.clone())),
        Err(LedgerError::AlreadyInitialized { .. })
    ));
    assert!(matches!(
        EmbeddedLedger::open(f.dir.path().join("missing.db")),
        Err(LedgerError::NotInitialized { .. })
    ));
    drop(f.ledger);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // A database from a newer build is refused rather than misread.
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(conn);
    assert!(matches!(
        EmbeddedLedger::open(&path),
        Err(LedgerError::SchemaTooNew {
            found: 99,
            supported: 1
        })
    ));
}

#[test]
fn invalid_genesis_is_rejected() {
    let (committee, _) = test_committee(1, &[1, 1, 1, 1]);
    let dir = tempfile::tempdir().unwrap();
    for max in [0, MAX_MAX_EPOCHS_AHEAD + 1] {
        let mut g = genesis(committee.clone());
        g.params.max_epochs_ahead = max;
        assert!(matches!(
            EmbeddedLedger::create(dir.path().join(format!("g{max}.db")), &g),
            Err(LedgerError::InvalidGenesis { .. })
        ));
    }
    let mut g = genesis(committee);
    g.params.epoch_duration = Some(Duration::ZERO);
    assert!(matches!(
        EmbeddedLedger::create(dir.path().join("zero.db"), &g),
        Err(LedgerError::InvalidGenesis { .. })
    ));
}

#[test]
fn state_survives_reopening() {
    let f = fixture();
    let a = f.register(1, false, 5);
    let a = f.certify(&a);
    let a = f.ledger.extend_blob(a.object_id, 2).unwrap();
    let b = f.register(2, true, 3);
    let freed = f.ledger.delete_blob(b.object_id).unwrap();
    f.ledger.advance_epoch().unwrap();
    let events = f.events();
    let account = f.ledger.account().unwrap();
    let status = f.ledger.blob_status(a.blob_id).unwrap();

    let f = f.reopen();
    assert_eq!(f.epoch(), 2);
    assert_eq!(
        f.ledger.blob_by_object_id(a.object_id).unwrap(),
        Some(a.clone())
    );
    assert_eq!(f.ledger.blob_by_object_id(b.object_id).unwrap(), None);
    assert_eq!(f.ledger.storage_resource(freed.id).unwrap(), Some(freed));
    assert_eq!(f.events(), events);
    assert_eq!(f.ledger.account().unwrap(), account);
    assert_eq!(f.ledger.blob_status(a.blob_id).unwrap(), status);
    assert_eq!(f.ledger.committee().unwrap(), f.committee.with_epoch(2));
    f.ledger.verify_integrity().unwrap();
    // New objects after reopening do not reuse IDs.
    let c = f.register(3, false, 2);
    assert_ne!(c.object_id, a.object_id);
    assert_ne!(c.storage.id, freed.id);
}

#[test]
fn epoch_clock_follows_wall_clock_and_manual_advance() {
    let f = fixture();
    assert_eq!(f.epoch(), 1);
    f.clock.advance(Duration::from_millis(HOUR_MS - 1));
    assert_eq!(f.epoch(), 1);
    f.clock.advance(Duration::from_millis(1));
    assert_eq!(f.epoch(), 2);
    let info = f.ledger.epoch_info().unwrap();
    assert_eq!(info.epoch_start_unix_ms, GENESIS_MS + HOUR_MS);
    assert_eq!(info.next_epoch_unix_ms(), Some(GENESIS_MS + 2 * HOUR_MS));
    assert_eq!(info.n_shards, 4);
    // A long pause is one jump, announced once.
    f.clock.advance(Duration::from_millis(5 * HOUR_MS + 10));
    assert_eq!(f.epoch(), 7);
    let changes: Vec<_> = f
        .events()
        .into_iter()
        .filter_map(|e| match e {
            LedgerEvent::EpochChangeStart { epoch } => Some(epoch),
            _ => None,
        })
        .collect();
    assert_eq!(changes, vec![2, 7]);
    // A manual advance restarts the clock from now.
    assert_eq!(f.ledger.advance_epoch().unwrap(), 8);
    let now = f.clock.now_unix_ms();
    assert_eq!(f.ledger.epoch_info().unwrap().epoch_start_unix_ms, now);
    f.clock.advance(Duration::from_millis(HOUR_MS - 1));
    assert_eq!(f.epoch(), 8);
    // A clock that goes backwards changes nothing.
    f.clock.set(GENESIS_MS);
    assert_eq!(f.epoch(), 8);
}

#[test]
fn manual_only_epochs() {
    let (committee, _) = test_committee(3, &[1, 1, 1, 1]);
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(GENESIS_MS));
    let mut g = genesis(committee);
    g.params.epoch_duration = None;
    let ledger =
        EmbeddedLedger::open_with(dir.path().join("l.db"), OpenMode::Create(&g), clock.clone())
            .unwrap();
    clock.advance(Duration::from_secs(1_000_000));
    assert_eq!(ledger.current_epoch().unwrap(), 3);
    assert_eq!(ledger.epoch_info().unwrap().next_epoch_unix_ms(), None);
    assert_eq!(ledger.advance_epoch().unwrap(), 4);
}

#[test]
fn committees_change_per_epoch() {
    let f = fixture();
    let (next, next_keys) = test_committee_with_seed(3, &[2, 2], 7);
    // Wrong shard count, or an epoch that is not in the future: rejected.
    let (wrong_n, _) = test_committee(3, &[1, 1, 1, 1, 1]);
    assert!(matches!(
        f.ledger.set_next_committee(wrong_n),
        Err(LedgerError::InvalidCommittee { .. })
    ));
    assert!(matches!(
        f.ledger.set_next_committee(next.with_epoch(1)),
        Err(LedgerError::InvalidCommittee { .. })
    ));
    f.ledger.set_next_committee(next.clone()).unwrap();
    assert_eq!(f.ledger.committee_for_epoch(0).unwrap(), None);
    assert_eq!(
        f.ledger.committee_for_epoch(2).unwrap(),
        Some(f.committee.with_epoch(2))
    );
    assert_eq!(f.ledger.committee_for_epoch(3).unwrap(), Some(next.clone()));

    let blob = f.register(1, false, 5);
    f.ledger.advance_epoch().unwrap(); // 2: old committee carries over
    assert_eq!(f.ledger.committee().unwrap(), f.committee.with_epoch(2));
    f.ledger.advance_epoch().unwrap(); // 3: the new committee
    assert_eq!(f.ledger.committee().unwrap(), next);
    assert_eq!(
        f.ledger.committee_for_epoch(9).unwrap(),
        Some(next.with_epoch(9))
    );

    // The old committee's keys no longer certify, even for the current epoch.
    let msg = ConfirmationMessage::new(3, blob.blob_id, BlobPersistenceType::Permanent);
    let old = certificate(&f.keys, &[0, 1], &msg);
    assert!(matches!(
        cert_error(f.ledger.certify_blob(blob.object_id, &old)),
        ProtocolError::SignatureVerification
    ));
    // The new committee's quorum needs both members (3·2 < 2·4 + 1).
    let half = certificate(&next_keys, &[0], &msg);
    assert!(matches!(
        cert_error(f.ledger.certify_blob(blob.object_id, &half)),
        ProtocolError::NotEnoughWeight { .. }
    ));
    let full = certificate(&next_keys, &[0, 1], &msg);
    let certified = f.ledger.certify_blob(blob.object_id, &full).unwrap();
    assert_eq!(certified.certified_epoch, Some(3));
}

#[test]
fn reserve_space_rules_and_accounting() {
    let f = fixture();
    assert!(matches!(
        f.ledger.reserve_space(MIB, 0),
        Err(LedgerError::InvalidEpochsAhead { epochs: 0, max: 10 })
    ));
    assert!(matches!(
        f.ledger.reserve_space(MIB, 11),
        Err(LedgerError::InvalidEpochsAhead {
            epochs: 11,
            max: 10
        })
    ));
    assert!(matches!(
        f.ledger.reserve_space(0, 1),
        Err(LedgerError::InvalidResourceSize)
    ));
    let s = f.ledger.reserve_space(MIB + 1, 10).unwrap();
    assert_eq!((s.start_epoch, s.end_epoch, s.size), (1, 11, MIB + 1));
    assert_eq!(f.ledger.storage_resource(s.id).unwrap(), Some(s));
    // 2 units × 10 epochs × 100.
    let account = f.ledger.account().unwrap();
    assert_eq!(account.spent, 2_000);
    assert_eq!(account.balance, Some(998_000));
    // More than the balance: rejected, and nothing is charged.
    assert!(matches!(
        f.ledger.reserve_space(1000 * MIB, 10),
        Err(LedgerError::InsufficientBalance {
            needed: 1_000_000,
            available: 998_000
        })
    ));
    assert_eq!(f.ledger.account().unwrap(), account);
    f.ledger.verify_integrity().unwrap();
}

#[test]
fn register_blob_rules() {
    let f = fixture();
    let (root, blob_id, size) = test_blob(1);
    let rs2 = EncodingType::RS2;
    let encoded = EncodingConfig::new(4)
        .unwrap()
        .encoded_blob_length(size)
        .unwrap();

    // Unknown storage.
    assert!(matches!(
        f.ledger
            .register_blob(ObjectId([9; 32]), blob_id, root, size, rs2, false),
        Err(LedgerError::StorageNotFound(_))
    ));
    // Storage too small for the encoded size.
    let small = f.ledger.reserve_space(encoded - 1, 2).unwrap();
    assert!(matches!(
        f.ledger.register_blob(small.id, blob_id, root, size, rs2, false),
        Err(LedgerError::StorageTooSmall { encoded_size, .. }) if encoded_size == encoded
    ));
    // Mismatched root hash (the blob ID check covers it), or size.
    let storage = f.ledger.reserve_space(encoded, 2).unwrap();
    let (other_root, _, _) = test_blob(2);
    assert!(matches!(
        f.ledger.register_blob(storage.id, blob_id, other_root, size, rs2, false),
        Err(LedgerError::InvalidBlobId { given, .. }) if given == blob_id
    ));
    assert!(matches!(
        f.ledger
            .register_blob(storage.id, blob_id, root, size - 1, rs2, false),
        Err(LedgerError::InvalidBlobId { .. })
    ));
    // Success: exact-size storage suffices; the write price is charged; an event is emitted.
    let spent = f.ledger.account().unwrap().spent;
    let blob = f
        .ledger
        .register_blob(storage.id, blob_id, root, size, rs2, false)
        .unwrap();
    assert_eq!(f.ledger.account().unwrap().spent, spent + 20);
    assert_eq!(blob.registered_epoch, 1);
    assert_eq!(blob.certified_epoch, None);
    assert_eq!(blob.end_epoch(), 3);
    assert_eq!(blob.storage, storage);
    assert_eq!(
        f.events().last(),
        Some(&LedgerEvent::BlobRegistered {
            epoch: 1,
            blob_id,
            size,
            encoding_type: rs2,
            end_epoch: 3,
            deletable: false,
            object_id: blob.object_id,
        })
    );
    // The same storage cannot back a second blob.
    assert!(matches!(
        f.ledger.register_blob(storage.id, blob_id, root, size, rs2, true),
        Err(LedgerError::StorageInUse { blob: b, .. }) if b == blob.object_id
    ));
    // But the same blob ID can be registered again with other storage: several objects.
    let again = f.register(1, true, 4);
    assert_ne!(again.object_id, blob.object_id);
    let all = f.ledger.blobs_by_blob_id(blob_id).unwrap();
    assert_eq!(all, vec![blob.clone(), again]);
    // Storage whose period has passed cannot be used.
    let short = f.ledger.reserve_space(MIB, 1).unwrap();
    f.ledger.advance_epoch().unwrap();
    let (root3, id3, size3) = test_blob(3);
    assert!(matches!(
        f.ledger
            .register_blob(short.id, id3, root3, size3, rs2, false),
        Err(LedgerError::StorageEpochs {
            current_epoch: 2,
            end_epoch: 2,
            ..
        })
    ));
    f.ledger.verify_integrity().unwrap();
}

#[test]
fn certify_blob_success() {
    let f = fixture();
    let permanent = f.register(1, false, 3);
    let certified = f.certify(&permanent);
    assert_eq!(certified.certified_epoch, Some(1));
    assert_eq!(
        f.ledger.blob_by_object_id(permanent.object_id).unwrap(),
        Some(certified.clone())
    );
    assert_eq!(
        f.events().last(),
        Some(&LedgerEvent::BlobCertified {
            epoch: 1,
            blob_id: permanent.blob_id,
            end_epoch: 4,
            deletable: false,
            object_id: permanent.object_id,
            is_extension: false,
        })
    );
    // Deletable: the certificate names the object.
    let deletable = f.register(2, true, 3);
    let certified = f.certify(&deletable);
    assert!(certified.is_certified());
    // All four signers also work; so do bitmap-equivalent unordered indices.
    let third = f.register(3, false, 3);
    let msg = ConfirmationMessage::new(1, third.blob_id, BlobPersistenceType::Permanent);
    f.ledger
        .certify_blob(third.object_id, &certificate(&f.keys, &[3, 1, 0], &msg))
        .unwrap();
}

#[test]
fn certify_blob_rejections() {
    let f = fixture();
    let blob = f.register(1, false, 3);
    let permanent = BlobPersistenceType::Permanent;
    let msg = ConfirmationMessage::new(1, blob.blob_id, permanent);
    let certify = |cert: &ConfirmationCertificate| f.ledger.certify_blob(blob.object_id, cert);

    // Forged: member 2's slot signed by a key outside the committee.
    let outsider = ProtocolKeyPair::from_seed(&[42; 32]).unwrap();
    let mut keys = f.keys.clone();
    keys[2] = outsider;
    assert!(matches!(
        cert_error(certify(&certificate(&keys, &[0, 1, 2], &msg))),
        ProtocolError::SignatureVerification
    ));
    // Under quorum: 2 of 4 shards.
    assert!(matches!(
        cert_error(certify(&certificate(&f.keys, &[0, 1], &msg))),
        ProtocolError::NotEnoughWeight {
            weight: 2,
            required: 3,
            ..
        }
    ));
    // Duplicate signer padding the weight.
    let mut dup = certificate(&f.keys, &[0, 1], &msg);
    dup.signers = vec![0, 1, 1];
    assert!(matches!(
        cert_error(certify(&dup)),
        ProtocolError::DuplicateSigner { index: 1 }
    ));
    // Signer index outside the committee.
    let mut out = certificate(&f.keys, &[0, 1, 2], &msg);
    out.signers = vec![0, 1, 7];
    assert!(matches!(
        cert_error(certify(&out)),
        ProtocolError::SignerOutOfRange { index: 7, .. }
    ));
    // Wrong epoch (a valid quorum signature over a message for the next epoch).
    let future = ConfirmationMessage::new(2, blob.blob_id, permanent);
    assert!(matches!(
        certify(&certificate(&f.keys, &[0, 1, 2], &future)),
        Err(LedgerError::CertificateEpoch {
            certificate_epoch: 2,
            current_epoch: 1
        })
    ));
    // Wrong blob ID in the message.
    let (_, other_id, _) = test_blob(99);
    let wrong_blob = ConfirmationMessage::new(1, other_id, permanent);
    assert!(matches!(
        certify(&certificate(&f.keys, &[0, 1, 2], &wrong_blob)),
        Err(LedgerError::CertificateBlobId { certificate, .. }) if certificate == other_id
    ));
    // Wrong persistence type: a deletable certificate for a permanent blob.
    let wrong_type = ConfirmationMessage::new(
        1,
        blob.blob_id,
        BlobPersistenceType::Deletable {
            object_id: blob.object_id,
        },
    );
    assert!(matches!(
        certify(&certificate(&f.keys, &[0, 1, 2], &wrong_type)),
        Err(LedgerError::CertificatePersistence {
            blob_deletable: false,
            certificate_deletable: true,
            ..
        })
    ));
    // Deletable blob, certificate naming another object.
    let deletable = f.register(2, true, 3);
    let other_object = ConfirmationMessage::new(
        1,
        deletable.blob_id,
        BlobPersistenceType::Deletable {
            object_id: blob.object_id,
        },
    );
    assert!(matches!(
        f.ledger.certify_blob(
            deletable.object_id,
            &certificate(&f.keys, &[0, 1, 2], &other_object)
        ),
        Err(LedgerError::CertificateObject { .. })
    ));
    // Tampered message under a valid aggregate signature.
    let mut tampered = certificate(&f.keys, &[0, 1, 2], &msg);
    tampered.serialized_message[10] ^= 1;
    assert!(matches!(
        cert_error(certify(&tampered)),
        ProtocolError::SignatureVerification
    ));
    // Not a BLOB_CERT message (intent type 2 = invalid blob ID), validly signed.
    let mut invalid_intent = msg.to_bytes();
    invalid_intent[0] = 2;
    let signed: Vec<_> = [0usize, 1, 2]
        .iter()
        .map(|&i| crate::protocol::SignedMessage::sign(&f.keys[i], invalid_intent.clone()))
        .collect();
    let cert = ConfirmationCertificate::from_signed_messages(vec![0, 1, 2], &signed).unwrap();
    assert!(matches!(
        cert_error(certify(&cert)),
        ProtocolError::WrongIntentType {
            expected: 1,
            actual: 2
        }
    ));
    // Unknown object.
    assert!(matches!(
        f.ledger
            .certify_blob(ObjectId([1; 32]), &certificate(&f.keys, &[0, 1, 2], &msg)),
        Err(LedgerError::BlobNotFound(_))
    ));
    // Nothing above changed the blob.
    assert_eq!(
        f.ledger.blob_by_object_id(blob.object_id).unwrap(),
        Some(blob.clone())
    );

    // Double certification is an error (`EAlreadyCertified`), not a no-op.
    certify(&certificate(&f.keys, &[0, 1, 2], &msg)).unwrap();
    assert!(matches!(
        certify(&certificate(&f.keys, &[1, 2, 3], &msg)),
        Err(LedgerError::AlreadyCertified {
            certified_epoch: 1,
            ..
        })
    ));
}

#[test]
fn certify_after_expiry_is_rejected() {
    let f = fixture();
    let blob = f.register(1, false, 1); // end epoch 2
    f.ledger.advance_epoch().unwrap();
    let msg = ConfirmationMessage::new(2, blob.blob_id, BlobPersistenceType::Permanent);
    assert!(matches!(
        f.ledger
            .certify_blob(blob.object_id, &certificate(&f.keys, &[0, 1, 2], &msg)),
        Err(LedgerError::Expired {
            end_epoch: 2,
            current_epoch: 2,
            ..
        })
    ));
}

#[test]
fn expiry_at_end_epoch() {
    let f = fixture();
    let blob = f.register(1, false, 2); // epochs 1 and 2; end epoch 3
    let blob = f.certify(&blob);
    let deletable = f.register(1, true, 2);
    let deletable = f.certify(&deletable);
    f.ledger.advance_epoch().unwrap(); // 2: still stored
    assert!(!blob.is_expired(2));
    assert!(matches!(
        f.ledger.blob_status(blob.blob_id).unwrap(),
        BlobStatus::Permanent {
            end_epoch: 3,
            is_certified: true,
            ..
        }
    ));
    f.ledger.advance_epoch().unwrap(); // 3: expired
    assert!(blob.is_expired(3));
    assert_eq!(
        f.ledger.blob_status(blob.blob_id).unwrap(),
        BlobStatus::Nonexistent
    );
    // Still readable as an object, but expired; no more changes.
    let read = f.ledger.blob_by_object_id(blob.object_id).unwrap().unwrap();
    assert!(read.is_expired(f.epoch()));
    assert!(matches!(
        f.ledger.extend_blob(blob.object_id, 1),
        Err(LedgerError::Expired { .. })
    ));
    assert!(matches!(
        f.ledger.delete_blob(deletable.object_id),
        Err(LedgerError::Expired { .. })
    ));
}

#[test]
fn extend_blob_rules() {
    let f = fixture();
    let blob = f.register(1, false, 3); // end epoch 4
    assert!(matches!(
        f.ledger.extend_blob(blob.object_id, 1),
        Err(LedgerError::NotCertified(_))
    ));
    let blob = f.certify(&blob);
    f.ledger.advance_epoch().unwrap(); // 2
    assert!(matches!(
        f.ledger.extend_blob(blob.object_id, 0),
        Err(LedgerError::InvalidEpochsAhead { .. })
    ));
    // end offset (4 − 2) + 9 = 11 > 10.
    assert!(matches!(
        f.ledger.extend_blob(blob.object_id, 9),
        Err(LedgerError::InvalidEpochsAhead {
            epochs: 11,
            max: 10
        })
    ));
    let spent = f.ledger.account().unwrap().spent;
    let extended = f.ledger.extend_blob(blob.object_id, 8).unwrap();
    assert_eq!(extended.end_epoch(), 12);
    assert_eq!(extended.certified_epoch, Some(1));
    // 1 unit (1 MiB of storage) × 8 epochs × 100.
    assert_eq!(f.ledger.account().unwrap().spent, spent + 800);
    assert_eq!(
        f.events().last(),
        Some(&LedgerEvent::BlobCertified {
            epoch: 1,
            blob_id: blob.blob_id,
            end_epoch: 12,
            deletable: false,
            object_id: blob.object_id,
            is_extension: true,
        })
    );
    assert_eq!(
        f.ledger.blob_by_object_id(blob.object_id).unwrap(),
        Some(extended)
    );
    assert!(matches!(
        f.ledger.extend_blob(ObjectId([5; 32]), 1),
        Err(LedgerError::BlobNotFound(_))
    ));
}

#[test]
fn delete_blob_rules() {
    let f = fixture();
    let permanent = f.register(1, false, 3);
    assert!(matches!(
        f.ledger.delete_blob(permanent.object_id),
        Err(LedgerError::NotDeletable(_))
    ));
    let deletable = f.register(2, true, 3);
    let deletable = f.certify(&deletable);
    let storage = f.ledger.delete_blob(deletable.object_id).unwrap();
    assert_eq!(storage, deletable.storage);
    assert_eq!(
        f.ledger.blob_by_object_id(deletable.object_id).unwrap(),
        None
    );
    assert_eq!(
        f.events().last(),
        Some(&LedgerEvent::BlobDeleted {
            epoch: 1,
            blob_id: deletable.blob_id,
            end_epoch: 4,
            object_id: deletable.object_id,
            was_certified: true,
        })
    );
    assert!(matches!(
        f.ledger.delete_blob(deletable.object_id),
        Err(LedgerError::BlobNotFound(_))
    ));
    // The returned storage is free again and backs a new blob.
    let (root, blob_id, size) = test_blob(3);
    let reused = f
        .ledger
        .register_blob(storage.id, blob_id, root, size, EncodingType::RS2, false)
        .unwrap();
    assert_eq!(reused.storage, storage);
    f.ledger.verify_integrity().unwrap();
}

#[test]
fn blob_status_summarises_live_objects() {
    let f = fixture();
    let (_, blob_id, _) = test_blob(1);
    assert_eq!(
        f.ledger.blob_status(blob_id).unwrap(),
        BlobStatus::Nonexistent
    );

    let d1 = f.register(1, true, 2);
    assert_eq!(
        f.ledger.blob_status(blob_id).unwrap(),
        BlobStatus::Deletable {
            initial_certified_epoch: None,
            deletable_counts: DeletableCounts {
                count_deletable_total: 1,
                count_deletable_certified: 0
            }
        }
    );
    f.certify(&d1);
    let status = f.ledger.blob_status(blob_id).unwrap();
    assert!(status.is_certified());

    let p1 = f.register(1, false, 5); // end 6
    let p2 = f.register(1, false, 8); // end 9, stays uncertified
    match f.ledger.blob_status(blob_id).unwrap() {
        BlobStatus::Permanent {
            end_epoch,
            is_certified,
            deletable_counts,
            initial_certified_epoch,
            ..
        } => {
            assert_eq!((end_epoch, is_certified), (9, false));
            assert_eq!(deletable_counts.count_deletable_certified, 1);
            assert_eq!(initial_certified_epoch, Some(1));
        }
        other => panic!("{other:?}"),
    }
    f.ledger.advance_epoch().unwrap(); // 2
    f.certify(&p1);
    // A certified permanent object wins over a later-ending uncertified one.
    let seq_of_certify = f
        .ledger
        .events_since(0, usize::MAX)
        .unwrap()
        .last()
        .unwrap()
        .0;
    assert_eq!(
        f.ledger.blob_status(blob_id).unwrap(),
        BlobStatus::Permanent {
            end_epoch: 6,
            is_certified: true,
            status_event: seq_of_certify,
            deletable_counts: DeletableCounts {
                count_deletable_total: 1,
                count_deletable_certified: 1
            },
            initial_certified_epoch: Some(1),
        }
    );
    // At epoch 3 the deletable one (end 3) has expired; counts drop.
    f.ledger.advance_epoch().unwrap();
    match f.ledger.blob_status(blob_id).unwrap() {
        BlobStatus::Permanent {
            deletable_counts,
            initial_certified_epoch,
            ..
        } => {
            assert_eq!(deletable_counts, DeletableCounts::default());
            assert_eq!(initial_certified_epoch, Some(2));
        }
        other => panic!("{other:?}"),
    }
    let _ = p2;
}

#[test]
fn events_since_pages_in_order() {
    let f = fixture();
    for i in 0..5 {
        f.register(i, false, 2);
    }
    let all = f.ledger.events_since(0, usize::MAX).unwrap();
    assert_eq!(all.len(), 5);
    let first = f.ledger.events_since(0, 2).unwrap();
    assert_eq!(first, all[..2]);
    let rest = f.ledger.events_since(first[1].0, 10).unwrap();
    assert_eq!(rest, all[2..]);
    assert!(f.ledger.events_since(all[4].0, 10).unwrap().is_empty());
}

// -------------------------------------------------------------------------------------------------
// Crash safety: a child process writes in a loop and is killed with SIGKILL.
// -------------------------------------------------------------------------------------------------

const CRASH_CHILD_ENV: &str = "WALRUSFS_LEDGER_CRASH_CHILD_DB";
const PROGRESS: &str = "CRASH-PROGRESS";

/// The child side of `survives_sigkill_mid_write`. Does nothing unless the parent set the
/// environment variable; then writes until killed.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    let ledger = EmbeddedLedger::open(&path).unwrap();
    let (_, keys) = test_committee(1, &[1, 1, 1, 1]);
    // Continue numbering after earlier rounds so blob contents vary.
    let start = ledger.events_since(0, usize::MAX).unwrap().len() as u64;
    let mut stdout = std::io::stdout();
    for n in 0u64.. {
        let i = start + n;
        let deletable = i % 2 == 1;
        let (root, blob_id, size) = test_blob(i);
        let storage = ledger.reserve_space(MIB, 3).unwrap();
        let blob = ledger
            .register_blob(
                storage.id,
                blob_id,
                root,
                size,
                EncodingType::RS2,
                deletable,
            )
            .unwrap();
        let epoch = ledger.current_epoch().unwrap();
        let msg = ConfirmationMessage::new(epoch, blob_id, blob.persistence_type());
        ledger
            .certify_blob(blob.object_id, &certificate(&keys, &[0, 1, 2], &msg))
            .unwrap();
        if i.is_multiple_of(3) && deletable {
            ledger.delete_blob(blob.object_id).unwrap();
        } else if i.is_multiple_of(5) && !deletable {
            ledger.extend_blob(blob.object_id, 2).unwrap();
        }
        writeln!(stdout, "{PROGRESS} {}", n + 1).unwrap();
        stdout.flush().unwrap();
    }
}

/// Kills a writer mid-write (SIGKILL) several times; after each kill the database must open,
/// pass the integrity checks, keep everything the child reported as committed, and agree with
/// its own event log.
#[test]
fn survives_sigkill_mid_write() {
    let (committee, _) = test_committee(1, &[1, 1, 1, 1]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut g = genesis(committee);
    g.params.epoch_duration = None;
    g.initial_balance = Some(u64::MAX / 2);
    drop(EmbeddedLedger::create(&path, &g).unwrap());

    let exe = std::env::current_exe().unwrap();
    let mut reported_total = 0u64;
    for (round, target) in [3u64, 11, 25, 6].into_iter().enumerate() {
        let mut child = Command::new(&exe)
            .args([
                "ledger::tests::crash_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CRASH_CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix(PROGRESS)
                    && tx.send(n.trim().parse::<u64>().unwrap()).is_err()
                {
                    break;
                }
            }
        });
        let mut reported = 0;
        while reported < target {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(n) => reported = n,
                Err(e) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "round {round}: child stopped reporting ({e}); stderr:\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        // The child is already in its next iteration; a random pause of up to about one
        // iteration moves the kill to a random point in it (SIGKILL on Unix).
        let pause = rand::random_range(0..15_000u64);
        std::thread::sleep(Duration::from_micros(pause));
        child.kill().unwrap();
        child.wait().unwrap();
        // Anything reported after our last read also committed; count what we saw.
        while let Ok(n) = rx.try_recv() {
            reported = reported.max(n);
        }
        reported_total += reported;

        let ledger = EmbeddedLedger::open(&path).unwrap();
        ledger.verify_integrity().unwrap();
        check_event_log_matches_objects(&ledger, reported_total, round);
    }
}

fn check_event_log_matches_objects(ledger: &EmbeddedLedger, reported: u64, round: usize) {
    use std::collections::{HashMap, HashSet};
    let events = ledger.events_since(0, usize::MAX).unwrap();
    let mut registered = HashMap::new();
    let mut certified = HashSet::new();
    let mut deleted = HashSet::new();
    let mut ends = HashMap::new();
    for (_, e) in &events {
        match *e {
            LedgerEvent::BlobRegistered {
                object_id,
                blob_id,
                end_epoch,
                ..
            } => {
                registered.insert(object_id, blob_id);
                ends.insert(object_id, end_epoch);
            }
            LedgerEvent::BlobCertified {
                object_id,
                end_epoch,
                ..
            } => {
                certified.insert(object_id);
                ends.insert(object_id, end_epoch);
            }
            LedgerEvent::BlobDeleted { object_id, .. } => {
                deleted.insert(object_id);
            }
            LedgerEvent::EpochChangeStart { .. } => {}
        }
    }
    // Every iteration the child reported registered exactly one blob, so at least that many
    // registrations are durable (more if the kill hit after a commit but before the report).
    assert!(
        registered.len() as u64 >= reported,
        "round {round}: {} registrations, child reported {reported}",
        registered.len()
    );
    for (object_id, blob_id) in &registered {
        let blob = ledger.blob_by_object_id(*object_id).unwrap();
        if deleted.contains(object_id) {
            assert!(
                blob.is_none(),
                "round {round}: deleted {object_id} still exists"
            );
            continue;
        }
        let blob = blob.unwrap_or_else(|| panic!("round {round}: {object_id} has no object"));
        assert_eq!(&blob.blob_id, blob_id);
        assert_eq!(blob.is_certified(), certified.contains(object_id));
        assert_eq!(Some(&blob.end_epoch()), ends.get(object_id));
    }
}

/// Errors stay small so the layers above can wrap them without boxing (clippy's
/// `result_large_err` limit is 128 bytes).
#[test]
fn errors_are_small() {
    assert!(std::mem::size_of::<LedgerError>() <= 72);
    assert!(std::mem::size_of::<ProtocolError>() <= 72);
}

#[test]
fn blobs_with_epoch_reads_objects_and_epoch_together() {
    let f = fixture();
    let (_, blob_id, _) = test_blob(1);
    assert_eq!(f.ledger.blobs_with_epoch(blob_id).unwrap(), (Vec::new(), 1));
    let blob = f.register(1, true, 2);
    assert_eq!(
        f.ledger.blobs_with_epoch(blob_id).unwrap(),
        (vec![blob.clone()], 1)
    );
    f.ledger.advance_epoch().unwrap();
    // The clock reaching the next epoch: the read records the epoch change first.
    f.clock.advance(Duration::from_millis(HOUR_MS));
    let (objects, epoch) = f.ledger.blobs_with_epoch(blob_id).unwrap();
    // Expired objects are still listed; the epoch says they are.
    assert_eq!((objects, epoch), (vec![blob.clone()], 3));
    assert!(blob.is_expired(epoch));
    assert_eq!(
        f.events().last(),
        Some(&LedgerEvent::EpochChangeStart { epoch: 3 })
    );
    assert_eq!(
        f.ledger.blobs_with_epoch(blob_id).unwrap(),
        (f.ledger.blobs_by_blob_id(blob_id).unwrap(), f.epoch())
    );
}
