//! The `walrus-http` backend against the TEST-ONLY stand-in publisher and aggregators
//! (`tests/standin`), over real HTTP on loopback, with Sui in memory (`MemorySui`): round
//! trips, and every lie or failure of a publisher or an aggregator caught, reported clearly
//! and never returned as data.

mod standin;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use standin::{AggregatorFault, Faults, PublisherAnswer, StandIn, StandInOptions};
use walrusfs::blobstore::{
    BlobStore, BlobStoreError, PutOptions, WalrusHttpConfig, WalrusHttpStore,
};
use walrusfs::encoding::{BlobId, EncodingConfig};
use walrusfs::sui::{MemorySui, SuiReader};

/// Short timeouts: every wait in these tests is bounded by them.
const FAST: &str = "read_timeout_secs = 1\nrequest_timeout_secs = 10\nconnect_timeout_secs = 1\nsui_wait_secs = 0\n";

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    standin: StandIn,
    sui: Arc<MemorySui>,
    store: WalrusHttpStore,
    config: WalrusHttpConfig,
}

async fn setup_with(aggregators: usize, extra: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let sui = Arc::new(MemorySui::new(1));
    let mut options = StandInOptions::new(sui.clone());
    options.aggregators = aggregators;
    let standin = StandIn::start(&dir, options).await.unwrap();
    let net = dir.join("net.toml");
    // The Sui URL is only written into the client config: these tests read Sui in memory.
    standin
        .write_network_file_with(&net, "http://127.0.0.1:9", extra)
        .unwrap();
    let config = WalrusHttpConfig::load(&net).unwrap();
    let store = WalrusHttpStore::new(config.clone(), sui.clone()).unwrap();
    Setup {
        _tmp: tmp,
        dir,
        standin,
        sui,
        store,
        config,
    }
}

async fn setup(aggregators: usize) -> Setup {
    setup_with(aggregators, FAST).await
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn blob_id(bytes: &[u8]) -> BlobId {
    EncodingConfig::new(10).unwrap().blob_id(bytes).unwrap()
}

const DELETABLE: PutOptions = PutOptions {
    epochs: 3,
    deletable: true,
};
const PERMANENT: PutOptions = PutOptions {
    epochs: 3,
    deletable: false,
};

#[tokio::test]
async fn round_trip_of_several_sizes_and_ranges() {
    let s = setup(2).await;
    assert_eq!(s.store.kind(), "walrus-http");
    // 10 shards: the RS2 maximum is below the 10 MiB body limit.
    assert_eq!(s.store.max_blob_size().await.unwrap(), 1_834_952);
    for (len, seed) in [
        (0usize, 0u8),
        (1, 1),
        (1000, 2),
        (65_537, 3),
        (1_000_000, 4),
    ] {
        let bytes = data(len, seed);
        let stored = s.store.put(bytes.clone(), DELETABLE).await.unwrap();
        assert_eq!(stored.blob_id, blob_id(&bytes), "{len}");
        assert_eq!(stored.size, len as u64);
        assert_eq!(
            stored.encoded_size,
            EncodingConfig::new(10)
                .unwrap()
                .encoded_blob_length(len as u64)
                .unwrap()
        );
        assert_eq!(stored.end_epoch, 1 + 3);
        assert!(stored.deletable);
        assert_eq!(
            stored.owner.as_deref(),
            Some(s.standin.publisher_url.as_str())
        );
        let object = s.sui.blob_object(stored.object_id.unwrap()).await.unwrap();
        assert_eq!(object.blob_id, stored.blob_id);
        let n = len as u64;
        let mut ranges = vec![0..n, 0..0];
        if n > 0 {
            ranges.extend([0..1, n - 1..n, n / 3..n / 2 + 1]);
        }
        for r in ranges {
            let got = s.store.get(stored.blob_id, r.clone()).await.unwrap();
            assert_eq!(got, bytes[r.start as usize..r.end as usize], "{len} {r:?}");
        }
    }
    let q = s.standin.publisher_requests();
    assert_eq!(q.len(), 5);
    assert!(q.iter().all(|r| r.query == "epochs=3"), "{q:?}");
    assert!(q.iter().all(|r| r.authorization.is_none()));
}

#[tokio::test]
async fn permanent_blobs_and_stores_of_a_certified_blob_are_checked_too() {
    let s = setup(1).await;
    let bytes = data(5000, 9);
    // Permanent: `permanent=true`, and the object is not deletable.
    let p = s.store.put(bytes.clone(), PERMANENT).await.unwrap();
    assert!(!p.deletable);
    assert_eq!(
        s.standin.publisher_requests()[0].query,
        "epochs=3&permanent=true"
    );
    // The same bytes again: the publisher answers alreadyCertified with the event of the
    // permanent blob, which Sui confirms.
    let again = s.store.put(bytes.clone(), DELETABLE).await.unwrap();
    assert_eq!(again.blob_id, p.blob_id);
    assert_eq!(again.object_id, p.object_id);
    assert!(!again.deletable);
    // A deletable blob stored twice: alreadyCertified with the object, read from Sui.
    let other = data(7000, 10);
    let d = s.store.put(other.clone(), DELETABLE).await.unwrap();
    let d2 = s.store.put(other, DELETABLE).await.unwrap();
    assert_eq!(d, d2);
    // Each was one request: nothing was stored twice.
    assert_eq!(s.standin.publisher_requests().len(), 4);
}

#[tokio::test]
async fn wrong_blob_id_from_the_publisher_fails_the_put() {
    let s = setup(1).await;
    s.standin.update_faults(|f| f.wrong_blob_id = true);
    let bytes = data(3000, 1);
    let err = s.store.put(bytes.clone(), DELETABLE).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BlobStoreError::Failed(_)), "{err:?}");
    assert!(msg.contains(&blob_id(&bytes).to_string()), "{msg}");
    assert!(
        msg.contains("answered blob ID") && msg.contains("not counted as stored"),
        "{msg}"
    );
    // A lying publisher is asked once per put, not again and again.
    assert_eq!(s.standin.publisher_requests().len(), 1);
}

#[tokio::test]
async fn uncertified_or_short_blob_objects_fail_the_put() {
    let s = setup(1).await;
    s.standin.update_faults(|f| f.uncertified = true);
    let err = s.store.put(data(100, 1), DELETABLE).await.unwrap_err();
    assert!(
        matches!(&err, BlobStoreError::Failed(m) if m.contains("is not certified")),
        "{err:?}"
    );
    s.standin.set_faults(Faults {
        short_end_epoch: true,
        ..Faults::default()
    });
    let err = s.store.put(data(100, 2), DELETABLE).await.unwrap_err();
    assert!(
        matches!(&err, BlobStoreError::Failed(m) if m.contains("is stored until epoch 3, short of the 4")),
        "{err:?}"
    );
    // A deletable object where a permanent blob was asked for.
    s.standin.set_faults(Faults::default());
    let bytes = data(100, 3);
    s.store.put(bytes.clone(), DELETABLE).await.unwrap();
    s.standin
        .update_faults(|f| f.answer = PublisherAnswer::Normal);
    // The publisher would answer alreadyCertified with the deletable object only for a
    // deletable request, so it stores a new permanent one: checked and accepted.
    let p = s.store.put(bytes, PERMANENT).await.unwrap();
    assert!(!p.deletable);
}

#[tokio::test]
async fn a_short_already_certified_answer_is_stored_again_with_force() {
    let s = setup(1).await;
    s.standin
        .update_faults(|f| f.answer = PublisherAnswer::AlreadyCertifiedShort);
    let stored = s.store.put(data(2000, 5), DELETABLE).await.unwrap();
    assert_eq!(stored.end_epoch, 4);
    let q = s.standin.publisher_requests();
    assert_eq!(q.len(), 2, "{q:?}");
    assert_eq!(q[1].query, "epochs=3&force=true");
    // The object of a deletable blob: enough for a deletable store, not for a permanent one.
    s.standin
        .update_faults(|f| f.answer = PublisherAnswer::AlreadyCertifiedObject);
    let stored = s.store.put(data(2000, 7), DELETABLE).await.unwrap();
    assert!(stored.deletable);
    assert_eq!(s.standin.publisher_requests().len(), 3);
    let stored = s.store.put(data(2000, 8), PERMANENT).await.unwrap();
    assert!(!stored.deletable);
    let q = s.standin.publisher_requests();
    assert_eq!(q.len(), 5, "{q:?}");
    assert_eq!(q[4].query, "epochs=3&force=true&permanent=true");
    // A plain alreadyCertified event that lasts long enough is accepted as it is.
    s.standin
        .update_faults(|f| f.answer = PublisherAnswer::AlreadyCertifiedEvent);
    let stored = s.store.put(data(2000, 6), PERMANENT).await.unwrap();
    assert!(!stored.deletable && stored.end_epoch == 4);
    assert_eq!(s.standin.publisher_requests().len(), 6);
}

#[tokio::test]
async fn marked_invalid_and_error_answers() {
    let s = setup(1).await;
    s.standin
        .update_faults(|f| f.answer = PublisherAnswer::MarkedInvalid);
    let err = s.store.put(data(100, 1), DELETABLE).await.unwrap_err();
    assert!(
        matches!(&err, BlobStoreError::Failed(m) if m.contains("marked blob") && m.contains("invalid")),
        "{err:?}"
    );
    s.standin
        .update_faults(|f| f.answer = PublisherAnswer::Error);
    let t = Instant::now();
    let err = s.store.put(data(100, 2), DELETABLE).await.unwrap_err();
    // Retried (3 attempts with backoff), then reported as transient with the message.
    assert!(err.is_transient(), "{err:?}");
    assert!(
        err.to_string()
            .contains("failed in phase `certify`: stand-in publisher: injected store failure"),
        "{err}"
    );
    assert_eq!(s.standin.publisher_requests().len(), 1 + 3);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn snake_case_answers_are_accepted() {
    let s = setup(1).await;
    s.standin.update_faults(|f| f.snake_case = true);
    let a = s.store.put(data(100, 1), DELETABLE).await.unwrap();
    let again = s.store.put(data(100, 1), DELETABLE).await.unwrap();
    assert_eq!(a, again);
    s.standin
        .update_faults(|f| f.answer = PublisherAnswer::AlreadyCertifiedEvent);
    s.store.put(data(100, 2), PERMANENT).await.unwrap();
}

#[tokio::test]
async fn publisher_token_is_sent_and_its_absence_explained() {
    let s = setup(1).await;
    s.standin
        .update_faults(|f| f.require_token = Some("t0ken".into()));
    let err = s.store.put(data(100, 1), DELETABLE).await.unwrap_err();
    let msg = err.to_string();
    assert!(!err.is_transient());
    assert!(
        msg.contains("401")
            && msg.contains("publisher_auth_token_file")
            && msg.contains("Mainnet has no public publisher"),
        "{msg}"
    );
    std::fs::write(s.dir.join("token"), "t0ken\n").unwrap();
    let with = setup_with_token(&s, "token").await;
    with.put(data(100, 1), DELETABLE).await.unwrap();
    let q = s.standin.publisher_requests();
    assert_eq!(
        q.last().unwrap().authorization.as_deref(),
        Some("Bearer t0ken")
    );
}

async fn setup_with_token(s: &Setup, token_file: &str) -> WalrusHttpStore {
    let net = s.dir.join("net-token.toml");
    s.standin
        .write_network_file_with(
            &net,
            "http://127.0.0.1:9",
            &format!("{FAST}publisher_auth_token_file = \"{token_file}\"\n"),
        )
        .unwrap();
    WalrusHttpStore::new(WalrusHttpConfig::load(&net).unwrap(), s.sui.clone()).unwrap()
}

#[tokio::test]
async fn body_limit_of_the_publisher_names_max_body_bytes() {
    let s = setup(1).await;
    s.standin.update_faults(|f| f.body_limit = Some(1000));
    s.store.put(data(1000, 1), DELETABLE).await.unwrap();
    let err = s.store.put(data(1001, 1), DELETABLE).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("413") && msg.contains("max_body_bytes"),
        "{msg}"
    );
    // Our own limit: refused before any request.
    let before = s.standin.publisher_requests().len();
    let err = s
        .store
        .put(vec![0; 1_834_953], DELETABLE)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        BlobStoreError::TooLarge {
            size: 1_834_953,
            max: 1_834_952
        }
    ));
    assert_eq!(s.standin.publisher_requests().len(), before);
}

#[tokio::test]
async fn an_unreachable_publisher_is_skipped() {
    let s = setup(1).await;
    let mut config = s.config.clone();
    // A port nobody listens on, first in the list.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    config.publishers.insert(0, dead);
    let store = WalrusHttpStore::new(config, s.sui.clone()).unwrap();
    for i in 0..3 {
        store.put(data(100, i), DELETABLE).await.unwrap();
    }
    assert_eq!(s.standin.publisher_requests().len(), 3);
}

#[tokio::test]
async fn request_bodies_can_be_captured() {
    let s = setup(1).await;
    let capture = s.dir.join("capture");
    s.standin
        .update_faults(|f| f.capture_dir = Some(capture.clone()));
    let bytes = b"plain words the encryption test looks for".to_vec();
    s.store.put(bytes.clone(), DELETABLE).await.unwrap();
    let files: Vec<_> = std::fs::read_dir(&capture).unwrap().collect();
    assert_eq!(files.len(), 1);
    assert_eq!(
        std::fs::read(files[0].as_ref().unwrap().path()).unwrap(),
        bytes
    );
}

#[tokio::test]
async fn failing_lying_and_rangeless_aggregators_are_worked_around() {
    let s = setup(3).await;
    let bytes = data(50_000, 7);
    let id = s.store.put(bytes.clone(), DELETABLE).await.unwrap().blob_id;
    for faults in [
        vec![
            AggregatorFault::Fail,
            AggregatorFault::ShortBody,
            AggregatorFault::None,
        ],
        vec![AggregatorFault::IgnoreRange; 3],
        vec![
            AggregatorFault::ShortBody,
            AggregatorFault::IgnoreRange,
            AggregatorFault::Fail,
        ],
    ] {
        s.standin.update_faults(|f| f.aggregators = faults.clone());
        for r in [0..50_000u64, 10..20, 49_999..50_000] {
            let got = s.store.get(id, r.clone()).await.unwrap();
            assert_eq!(
                got,
                bytes[r.start as usize..r.end as usize],
                "{faults:?} {r:?}"
            );
        }
    }
    // Only aggregators that get the length wrong or fail: the read fails, naming each.
    s.standin.update_faults(|f| {
        f.aggregators = vec![
            AggregatorFault::ShortBody,
            AggregatorFault::ShortBody,
            AggregatorFault::Fail,
        ]
    });
    let err = s.store.get(id, 100..200).await.unwrap_err();
    let msg = err.to_string();
    assert!(err.is_transient(), "{err:?}");
    assert!(
        msg.contains("sent 99 bytes for a range of 100") && msg.contains("500"),
        "{msg}"
    );
}

#[tokio::test]
async fn wrong_bytes_of_the_right_length_are_left_to_the_drives_hashes() {
    // An aggregator cannot prove bytes against the blob ID (it sends no slivers). What
    // catches a lie of the right length is the drive: it checks every extent it reads
    // against the BLAKE3 hash in its metadata (`Drive::load_extent`), and fails the read with
    // EIO. This test shows the backend's part: the bytes are passed on as received.
    let s = setup(1).await;
    let bytes = data(4096, 3);
    let id = s.store.put(bytes.clone(), DELETABLE).await.unwrap().blob_id;
    s.standin
        .update_faults(|f| f.aggregators = vec![AggregatorFault::WrongBytes]);
    let got = s.store.get(id, 0..4096).await.unwrap();
    assert_eq!(got.len(), 4096);
    assert_ne!(blake3::hash(&got), blake3::hash(&bytes));
}

#[tokio::test]
async fn a_stalled_aggregator_costs_at_most_the_timeout() {
    let s = setup(2).await;
    let bytes = data(10_000, 4);
    let id = s.store.put(bytes.clone(), DELETABLE).await.unwrap().blob_id;
    s.standin.update_faults(|f| {
        f.aggregators = vec![
            AggregatorFault::Slow { ms: 10_000 },
            AggregatorFault::Slow { ms: 10_000 },
        ]
    });
    let t = Instant::now();
    let err = s.store.get(id, 0..10).await.unwrap_err();
    assert!(err.to_string().contains("no answer within 1s"), "{err}");
    assert!(
        t.elapsed() < Duration::from_millis(2 * 1000 + 800),
        "{:?}",
        t.elapsed()
    );
    // One stalls: every read is served by the other, and the stalled one, cooling down
    // after its time-out, is not waited for again.
    s.standin.update_faults(|f| {
        f.aggregators = vec![AggregatorFault::Slow { ms: 10_000 }, AggregatorFault::None]
    });
    let t = Instant::now();
    for _ in 0..6 {
        assert_eq!(s.store.get(id, 0..10).await.unwrap(), bytes[..10]);
    }
    assert!(
        t.elapsed() < Duration::from_millis(1000 + 800),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn reads_spread_over_aggregators() {
    let s = setup(3).await;
    let id = s.store.put(data(1000, 1), DELETABLE).await.unwrap().blob_id;
    for _ in 0..9 {
        s.store.get(id, 0..100).await.unwrap();
    }
    assert_eq!(s.standin.aggregator_hits(), [3, 3, 3]);
}

#[tokio::test]
async fn unknown_blobs_and_bad_ranges() {
    let s = setup(2).await;
    let unknown = blob_id(b"never stored");
    let err = s.store.get(unknown, 0..10).await.unwrap_err();
    assert!(
        matches!(err, BlobStoreError::NotFound { blob_id } if blob_id == unknown),
        "{err:?}"
    );
    let id = s.store.put(data(1000, 1), DELETABLE).await.unwrap().blob_id;
    let err = s.store.get(id, 990..1001).await.unwrap_err();
    assert!(
        matches!(
            err,
            BlobStoreError::BadRange {
                len: 1000,
                start: 990,
                end: 1001,
                ..
            }
        ),
        "{err:?}"
    );
    // One aggregator down and the other without the blob: not a definite "not found".
    s.standin
        .update_faults(|f| f.aggregators = vec![AggregatorFault::Fail]);
    let err = s.store.get(unknown, 0..10).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn delete_needs_the_publishers_wallet_and_extend_stores_again() {
    let s = setup(1).await;
    let id = s.store.put(data(10, 1), DELETABLE).await.unwrap().blob_id;
    let err = s.store.delete(id).await.unwrap_err();
    assert!(matches!(err, BlobStoreError::NotOwner { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("holds no wallet"), "{err}");
    assert_eq!(s.store.current_epoch().await.unwrap(), 1);
    s.standin.set_epoch(7);
    assert_eq!(s.store.current_epoch().await.unwrap(), 7);
    // Epochs count from the current one.
    assert_eq!(
        s.store.put(data(10, 2), DELETABLE).await.unwrap().end_epoch,
        10
    );
    // Extending reads the blob back, checks it hashes to its ID and stores it again: a
    // new object, checked on Sui, lasting 5 epochs from now.
    let before = s.standin.publisher_requests().len();
    assert_eq!(s.store.extend(id, 5).await.unwrap(), 12);
    assert!(s.standin.publisher_requests().len() > before);
    // An aggregator sending other bytes cannot make it store something else.
    s.standin
        .update_faults(|f| f.aggregators = vec![AggregatorFault::WrongBytes]);
    let err = s.store.extend(id, 5).await.unwrap_err();
    assert!(err.to_string().contains("sent bytes of blob"), "{err}");
}

#[tokio::test]
async fn faults_can_be_set_over_the_admin_endpoint() {
    let s = setup(1).await;
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{}/faults", s.standin.admin_url))
        .header("content-type", "application/json")
        .body(r#"{"wrong_blob_id": true, "aggregators": [{"slow": {"ms": 5}}]}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let f = s.standin.faults();
    assert!(f.wrong_blob_id);
    assert_eq!(f.aggregators, [AggregatorFault::Slow { ms: 5 }]);
    assert!(s.store.put(data(10, 1), DELETABLE).await.is_err());
}

/// The whole path: a drive over this backend, with every aggregator lying about the bytes
/// (right length, wrong content). The drive's per-extent BLAKE3 check refuses them (EIO,
/// `FsError::Corrupt`); once an honest aggregator answers, the file reads back intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_drive_over_walrus_http_refuses_wrong_bytes() {
    use std::ffi::OsStr;
    use walrusfs::drive::{Caller, Drive, DriveConfig, FsError, ROOT};

    let s = setup(2).await;
    let store: Arc<dyn BlobStore> =
        Arc::new(WalrusHttpStore::new(s.config.clone(), s.sui.clone()).unwrap());
    let data_dir = s.dir.join("drive");
    let mut config = DriveConfig::new(&data_dir);
    config.max_pack = 256 << 10;
    config.extent_size = 64 << 10;
    config.pack_linger = Duration::from_millis(10);
    let content = data(150_000, 8);

    let d = Drive::start(config.clone(), store.clone()).await.unwrap();
    let (inode, fh) = d
        .create(
            Caller::ROOT,
            ROOT,
            OsStr::new("f"),
            0o644,
            0o022,
            libc::O_RDWR,
        )
        .await
        .unwrap();
    let mut off = 0;
    for chunk in content.chunks(50_000) {
        d.write(fh, off, chunk).await.unwrap();
        off += chunk.len() as u64;
    }
    d.fsync(fh).await.unwrap();
    d.release(fh).await.unwrap();
    d.shutdown(Duration::ZERO).await;
    drop(d);
    // Read from the network again, not from the drive's cache.
    std::fs::remove_dir_all(data_dir.join("cache")).unwrap();
    s.standin.update_faults(|f| {
        f.aggregators = vec![AggregatorFault::WrongBytes, AggregatorFault::WrongBytes]
    });

    // The uploader of the stopped drive lets go of the data directory shortly.
    let deadline = Instant::now() + Duration::from_secs(20);
    let d = loop {
        match Drive::start(config.clone(), store.clone()).await {
            Ok(d) => break d,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("drive does not start again: {e}"),
        }
    };
    let fh = d.open(inode.ino, libc::O_RDONLY).await.unwrap();
    let e = d.read(fh, 0, 4096).await.unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert!(matches!(e, FsError::Corrupt { .. }), "{e}");
    s.standin.update_faults(|f| f.aggregators.clear());
    let mut got = Vec::new();
    while got.len() < content.len() {
        let chunk = d.read(fh, got.len() as u64, 131_072).await.unwrap();
        assert!(!chunk.is_empty());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, content);
    d.release(fh).await.unwrap();
    d.shutdown(Duration::ZERO).await;
}
