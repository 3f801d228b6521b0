//! Tests of packing over a `MemoryStore` counting puts: wait-to-fill, group commit of
//! concurrent fsyncs, and what they cost in blobs.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::blobstore::MemoryStore;
use crate::encoding::BlobId;

const KIB: u64 = 1024;

fn config(dir: &Path) -> DriveConfig {
    let mut c = DriveConfig::new(dir);
    c.max_pack = 1024 * KIB;
    c.extent_size = 64 * KIB;
    c
}

fn store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(10).expect("10 shards is a valid encoding"))
}

async fn start(config: DriveConfig, store: &Arc<MemoryStore>) -> Drive {
    Drive::start(config, store.clone() as Arc<dyn BlobStore>)
        .await
        .expect("drive starts")
}

fn pattern(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn create(d: &Drive, name: &str) -> (Ino, u64) {
    let (i, fh) = d
        .create(
            Caller::ROOT,
            ROOT,
            OsStr::new(name),
            0o644,
            0o022,
            libc::O_RDWR,
        )
        .await
        .expect("create");
    (i.ino, fh)
}

async fn write_file(d: &Drive, name: &str, bytes: &[u8]) -> Ino {
    let (ino, fh) = create(d, name).await;
    d.write(fh, 0, bytes).await.expect("write");
    d.flush(fh).await.expect("flush");
    d.release(fh).await.expect("release");
    // The closer's work, at once (it runs 10 ms after a release otherwise).
    d.commit_closed().await.expect("commit closed");
    ino
}

fn blob_of(d: &Drive, ino: Ino) -> Option<BlobId> {
    d.read_db(|c| meta::extents(c, ino))
        .expect("extents")
        .first()
        .map(|e| e.blob_id)
}

fn pending(d: &Drive) -> u64 {
    d.pending().expect("pending").0
}

async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Files closed one after another, 50 ms apart (slower than the old fixed linger), wait for
/// each other: all of them land in one blob, one put.
#[tokio::test(flavor = "multi_thread")]
async fn files_closed_in_a_slow_burst_fill_one_blob() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    let mut c = config(dir.path());
    c.pack_linger = Duration::from_millis(400);
    c.pack_max_wait = Duration::from_secs(20);
    let d = start(c, &s).await;
    let mut inos = Vec::new();
    for i in 0..20 {
        inos.push(write_file(&d, &format!("f{i}"), &pattern(10 * KIB, i)).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("uploads", Duration::from_secs(20), || pending(&d) == 0).await;
    assert_eq!(s.stats().puts, 1, "one blob for the whole burst");
    let first = blob_of(&d, inos[0]);
    assert!(first.is_some());
    for &ino in &inos {
        assert_eq!(blob_of(&d, ino), first);
    }
    d.shutdown(Duration::ZERO).await;
}

/// Wait-to-fill is bounded: files closed without pause never wait much longer than
/// `pack_max_wait`, and once a blob's worth is pending it goes at once.
#[tokio::test(flavor = "multi_thread")]
async fn wait_to_fill_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    let mut c = config(dir.path());
    c.pack_linger = Duration::from_secs(10);
    c.pack_max_wait = Duration::from_millis(700);
    let d = start(c, &s).await;
    let t = Instant::now();
    write_file(&d, "a", &pattern(10 * KIB, 1)).await;
    eventually(
        "upload after pack_max_wait",
        Duration::from_secs(10),
        || pending(&d) == 0,
    )
    .await;
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    // A full blob's worth goes without waiting.
    let mut c2 = config(&dir.path().join("2"));
    c2.pack_linger = Duration::from_secs(30);
    c2.pack_max_wait = Duration::from_secs(30);
    let s2 = store();
    let d2 = start(c2, &s2).await;
    let t = Instant::now();
    for i in 0..4 {
        write_file(&d2, &format!("big{i}"), &pattern(256 * KIB, i)).await;
    }
    eventually("a full blob", Duration::from_secs(10), || pending(&d2) == 0).await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(s2.stats().puts, 1);
    d.shutdown(Duration::ZERO).await;
    d2.shutdown(Duration::ZERO).await;
}

/// An fsync never waits for a blob to fill: it returns long before `pack_linger`, and
/// files closed before it ride in the same blob.
#[tokio::test(flavor = "multi_thread")]
async fn fsync_is_not_delayed_by_wait_to_fill() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    let mut c = config(dir.path());
    c.pack_linger = Duration::from_secs(30);
    c.pack_max_wait = Duration::from_secs(60);
    let d = start(c, &s).await;
    let closed = write_file(&d, "closed", &pattern(10 * KIB, 1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.stats().puts, 0, "still waiting to fill");
    let (ino, fh) = create(&d, "synced").await;
    d.write(fh, 0, &pattern(10 * KIB, 2)).await.unwrap();
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), d.fsync(fh))
        .await
        .expect("fsync is not held back")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(s.stats().puts, 1);
    assert_eq!(blob_of(&d, ino), blob_of(&d, closed));
    d.release(fh).await.unwrap();
    d.shutdown(Duration::ZERO).await;
}

/// Many threads fsyncing their own open files at once share one blob and one
/// certification (group commit), not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fsyncs_share_one_blob() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    let mut c = config(dir.path());
    c.pack_linger = Duration::from_secs(30);
    c.pack_max_wait = Duration::from_secs(60);
    let d = start(c, &s).await;
    const N: u64 = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(N as usize));
    let mut tasks = Vec::new();
    for i in 0..N {
        let (d, barrier) = (d.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let (ino, fh) = create(&d, &format!("f{i}")).await;
            d.write(fh, 0, &pattern(8 * KIB, i)).await.unwrap();
            barrier.wait().await;
            d.fsync(fh).await.unwrap();
            d.release(fh).await.unwrap();
            ino
        }));
    }
    let mut inos = Vec::new();
    for t in tasks {
        inos.push(t.await.unwrap());
    }
    let stats = s.stats();
    assert!(
        stats.puts <= 2,
        "{N} concurrent fsyncs made {} puts (at most one straggler round allowed)",
        stats.puts
    );
    let mut blobs: Vec<BlobId> = inos.iter().filter_map(|&i| blob_of(&d, i)).collect();
    assert_eq!(blobs.len(), N as usize);
    blobs.sort_by_key(|b| b.0);
    blobs.dedup();
    assert_eq!(blobs.len() as u64, stats.puts);
    d.shutdown(Duration::ZERO).await;
}
