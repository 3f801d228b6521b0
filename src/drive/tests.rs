//! Tests of the drive core over a `MemoryStore` (no FUSE): uploads, packing, remounts,
//! failures, corruption, garbage collection and the POSIX corner cases of open files.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::blobstore::MemoryStore;
use crate::encoding::BlobId;

const KIB: u64 = 1024;

fn config(dir: &Path) -> DriveConfig {
    let mut c = DriveConfig::new(dir);
    c.max_pack = 256 * KIB;
    c.extent_size = 64 * KIB;
    c.pack_linger = Duration::from_millis(10);
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

/// Stops the drive as an unmount does (no grace) and waits until its uploader let go of it,
/// so another `Drive::start` on the same directory is alone.
async fn stop(drive: Drive) {
    drive.shutdown(Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Arc::strong_count(&drive.inner) > 1 {
        assert!(Instant::now() < deadline, "uploader did not stop");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Deterministic bytes, different per `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
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

async fn create(d: &Drive, parent: Ino, name: &str) -> (Ino, u64) {
    let (i, fh) = d
        .create(Caller::ROOT, parent, os(name), 0o644, 0o022, libc::O_RDWR)
        .await
        .expect("create");
    (i.ino, fh)
}

async fn write_all(d: &Drive, fh: u64, mut off: u64, bytes: &[u8]) {
    for chunk in bytes.chunks(100_000) {
        let n = d.write(fh, off, chunk).await.expect("write");
        assert_eq!(n as usize, chunk.len());
        off += chunk.len() as u64;
    }
}

/// Creates `name` with `bytes` and closes it (flush + release, as close(2) does).
async fn write_file(d: &Drive, parent: Ino, name: &str, bytes: &[u8]) -> Ino {
    let (ino, fh) = create(d, parent, name).await;
    write_all(d, fh, 0, bytes).await;
    d.flush(fh).await.expect("flush");
    d.release(fh).await.expect("release");
    ino
}

async fn read_fh(d: &Drive, fh: u64, size: u64) -> FsResult<Vec<u8>> {
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let chunk = d.read(fh, out.len() as u64, 131_072).await?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn read_file(d: &Drive, ino: Ino) -> FsResult<Vec<u8>> {
    let size = d.getattr(ino).await?.size;
    let fh = d.open(ino, libc::O_RDONLY).await?;
    let out = read_fh(d, fh, size).await;
    d.release(fh).await?;
    out
}

async fn lookup_ino(d: &Drive, parent: Ino, name: &str) -> Ino {
    d.lookup(parent, os(name)).await.expect("lookup").ino
}

fn extents(d: &Drive, ino: Ino) -> Vec<Extent> {
    d.read_db(|c| meta::extents(c, ino)).expect("extents")
}

fn blobs_of(d: &Drive, ino: Ino) -> Vec<BlobId> {
    let mut ids: Vec<BlobId> = extents(d, ino).iter().map(|e| e.blob_id).collect();
    ids.dedup();
    ids
}

fn remove_cache(dir: &Path) {
    std::fs::remove_dir_all(dir.join("cache")).expect("remove cache");
}

/// Waits until `f` holds (the uploader's garbage collection runs between rounds).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether any blob in `store` contains `needle`.
async fn store_holds(store: &MemoryStore, needle: &[u8]) -> bool {
    for id in store.blob_ids() {
        let size = store.stored(&id).map_or(0, |b| b.size);
        let data = store.get(id, 0..size).await.expect("get whole blob");
        if data.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

fn staging_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("staging"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn close_uploads_and_records_extents() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let content = pattern(200 * KIB as usize, 1);
    let ino = write_file(&d, ROOT, "f", &content).await;
    d.wait_idle().await.unwrap();

    let i = d.getattr(ino).await.unwrap();
    assert_eq!(i.size, content.len() as u64);
    assert!(i.data_gen > 0);
    assert_eq!(i.uploaded_gen, i.data_gen);
    assert!(!i.staged, "an uploaded, closed file is clean");
    assert_eq!(d.pending().unwrap().0, 0);

    // 64 KiB extents covering the file, each matching the stored bytes.
    let ext = extents(&d, ino);
    assert_eq!(ext.len(), 4);
    let mut off = 0;
    for e in &ext {
        assert_eq!(e.file_off, off);
        let want = &content[off as usize..(off + e.len) as usize];
        assert_eq!(*blake3::hash(want).as_bytes(), e.hash);
        let got = store
            .get(e.blob_id, e.blob_off..e.blob_off + e.len)
            .await
            .unwrap();
        assert_eq!(got, want);
        off += e.len;
    }
    assert_eq!(off, content.len() as u64);
    assert!(ext.iter().all(|e| e.len <= 64 * KIB));
    assert_eq!(read_file(&d, ino).await.unwrap(), content);
    assert!(
        tmp.path()
            .join(format!("cache/files/{ino}.{}", i.uploaded_gen))
            .exists(),
        "the staging file becomes the file cache"
    );
    assert!(staging_files(tmp.path()).is_empty());
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fsync_returns_once_certified_while_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let (ino, fh) = create(&d, ROOT, "f").await;
    write_all(&d, fh, 0, b"first").await;
    d.fsync(fh).await.unwrap();
    let i = d.getattr(ino).await.unwrap();
    assert_eq!(i.uploaded_gen, i.data_gen);
    assert!(i.staged, "still open: stays staged");
    assert_eq!(store.stats().bytes_put, 5);
    // More writes through the same handle, fsynced again.
    write_all(&d, fh, 5, b" second").await;
    d.fsync(fh).await.unwrap();
    let ext = extents(&d, ino);
    assert_eq!(ext.len(), 1);
    assert_eq!(ext[0].len, 12);
    // fsync with nothing new returns at once.
    d.fsync(fh).await.unwrap();
    d.flush(fh).await.unwrap();
    d.release(fh).await.unwrap();
    d.wait_idle().await.unwrap();
    assert!(!d.getattr(ino).await.unwrap().staged);
    assert_eq!(read_file(&d, ino).await.unwrap(), b"first second");
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn remount_reads_back_from_the_store_without_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let dir = d
        .mkdir(Caller::ROOT, ROOT, os("dir"), 0o755, 0o022)
        .await
        .unwrap()
        .ino;
    let files: Vec<(Ino, &str, Vec<u8>)> = vec![
        (dir, "empty", Vec::new()),
        (dir, "small", b"hello".to_vec()),
        (ROOT, "medium", pattern(100_000, 2)),
        (ROOT, "large", pattern(700_000, 3)),
    ];
    for (p, name, content) in &files {
        write_file(&d, *p, name, content).await;
    }
    d.symlink(Caller::ROOT, dir, os("link"), Path::new("../medium"))
        .await
        .unwrap();
    d.setxattr(
        lookup_ino(&d, ROOT, "medium").await,
        os("user.k"),
        b"v",
        XattrMode::Any,
    )
    .await
    .unwrap();
    d.wait_idle().await.unwrap();
    stop(d).await;
    remove_cache(tmp.path());

    let gets_before = store.stats().gets;
    let d = start(config(tmp.path()), &store).await;
    let dir = lookup_ino(&d, ROOT, "dir").await;
    for (p, name, content) in &files {
        let p = if *p == ROOT { ROOT } else { dir };
        let ino = lookup_ino(&d, p, name).await;
        assert_eq!(&read_file(&d, ino).await.unwrap(), content, "{name}");
    }
    assert!(store.stats().gets > gets_before, "read from the store");
    let link = lookup_ino(&d, dir, "link").await;
    assert_eq!(d.readlink(link).await.unwrap(), b"../medium");
    let medium = lookup_ino(&d, ROOT, "medium").await;
    assert_eq!(d.getxattr(medium, os("user.k")).await.unwrap(), b"v");
    // A second read is served from the extent cache.
    let gets = store.stats().gets;
    assert_eq!(read_file(&d, medium).await.unwrap(), files[2].2);
    assert_eq!(store.stats().gets, gets);

    // Overwrite part of a clean file whose content is only on the network: the rest is
    // fetched into staging first.
    remove_cache(tmp.path());
    std::fs::create_dir_all(tmp.path().join("cache/extents")).unwrap();
    std::fs::create_dir_all(tmp.path().join("cache/files")).unwrap();
    let large = lookup_ino(&d, ROOT, "large").await;
    let fh = d.open(large, libc::O_WRONLY).await.unwrap();
    write_all(&d, fh, 300_000, b"patched").await;
    d.flush(fh).await.unwrap();
    d.release(fh).await.unwrap();
    let mut want = files[3].2.clone();
    want[300_000..300_007].copy_from_slice(b"patched");
    d.wait_idle().await.unwrap();
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(read_file(&d, large).await.unwrap(), want);
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_puts_are_retried_and_fsync_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    store.fail_next_puts(2);
    let (ino, fh) = create(&d, ROOT, "f").await;
    let content = pattern(50_000, 4);
    write_all(&d, fh, 0, &content).await;
    tokio::time::timeout(Duration::from_secs(30), d.fsync(fh))
        .await
        .expect("fsync finishes")
        .expect("fsync succeeds after transient failures");
    assert_eq!(store.stats().injected_failures, 2);
    let i = d.getattr(ino).await.unwrap();
    assert_eq!(i.uploaded_gen, i.data_gen);
    d.release(fh).await.unwrap();

    // The same for a file that is only closed.
    store.fail_next_puts(1);
    let ino2 = write_file(&d, ROOT, "g", &pattern(10_000, 5)).await;
    tokio::time::timeout(Duration::from_secs(30), d.wait_idle())
        .await
        .expect("uploads finish")
        .unwrap();
    assert_eq!(store.stats().injected_failures, 3);
    let i = d.getattr(ino2).await.unwrap();
    assert_eq!(i.uploaded_gen, i.data_gen);
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(read_file(&d, ino).await.unwrap(), content);
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_blob_reads_as_eio_never_wrong_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let content = pattern(150_000, 6);
    let ino = write_file(&d, ROOT, "f", &content).await;
    d.wait_idle().await.unwrap();
    let ext = extents(&d, ino);
    assert_eq!(ext.len(), 3);
    stop(d).await;
    remove_cache(tmp.path());

    // Flip a byte inside the second extent.
    assert!(store.corrupt(&ext[1].blob_id, ext[1].blob_off + 10));
    let d = start(config(tmp.path()), &store).await;
    let fh = d.open(ino, libc::O_RDONLY).await.unwrap();
    // The first extent is fine.
    assert_eq!(d.read(fh, 0, 4096).await.unwrap(), &content[..4096]);
    // The second is refused, whichever way it is read.
    for (off, len) in [
        (ext[1].file_off, 100),
        (ext[1].file_off + 10, 1),
        (0, 150_000),
    ] {
        let e = d.read(fh, off, len).await.expect_err("corrupt extent");
        assert_eq!(e.errno(), libc::EIO, "{e}");
        assert!(matches!(e, FsError::Corrupt { .. }), "{e}");
    }
    d.release(fh).await.unwrap();
    // Nothing bad was cached, and writing into the file (which stages it) fails too rather
    // than keeping wrong bytes.
    let fh = d.open(ino, libc::O_WRONLY).await.unwrap();
    let e = d
        .write(fh, 0, b"x")
        .await
        .expect_err("staging needs all extents");
    assert_eq!(e.errno(), libc::EIO);
    d.release(fh).await.unwrap();
    assert_eq!(d.getattr(ino).await.unwrap().size, content.len() as u64);

    // Repair the byte: the file reads correctly again.
    assert!(store.corrupt(&ext[1].blob_id, ext[1].blob_off + 10));
    assert_eq!(read_file(&d, ino).await.unwrap(), content);
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_gets_are_eio_and_later_reads_work() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let content = pattern(10_000, 7);
    let ino = write_file(&d, ROOT, "f", &content).await;
    d.wait_idle().await.unwrap();
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    store.fail_next_gets(1);
    let e = read_file(&d, ino).await.expect_err("get fails");
    assert_eq!(e.errno(), libc::EIO);
    assert_eq!(read_file(&d, ino).await.unwrap(), content);
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overwritten_and_deleted_before_upload_are_not_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let mut c = config(tmp.path());
    // Long enough that everything below happens before the uploader's first round.
    c.pack_linger = Duration::from_millis(500);
    let d = start(c, &store).await;
    let v1 = pattern(20_000, 8);
    let v2 = pattern(30_000, 9);
    let gone = pattern(40_000, 10);
    let ino = write_file(&d, ROOT, "f", &v1).await;
    let fh = d.open(ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
    write_all(&d, fh, 0, &v2).await;
    d.flush(fh).await.unwrap();
    d.release(fh).await.unwrap();
    write_file(&d, ROOT, "gone", &gone).await;
    d.unlink(ROOT, os("gone")).await.unwrap();
    d.wait_idle().await.unwrap();

    assert_eq!(store.stats().bytes_put, v2.len() as u64);
    assert!(store_holds(&store, &v2[..64]).await);
    assert!(!store_holds(&store, &v1[..64]).await);
    assert!(!store_holds(&store, &gone[..64]).await);
    assert_eq!(read_file(&d, ino).await.unwrap(), v2);
    assert!(staging_files(tmp.path()).is_empty());
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_blobs_are_deleted_from_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let ino = write_file(&d, ROOT, "f", &pattern(30_000, 11)).await;
    let other = write_file(&d, ROOT, "other", &pattern(30_000, 12)).await;
    let del = write_file(&d, ROOT, "del", &pattern(30_000, 13)).await;
    d.wait_idle().await.unwrap();
    let old = blobs_of(&d, ino);
    let del_blobs = blobs_of(&d, del);
    assert!(old.iter().chain(&del_blobs).all(|b| store.contains(b)));

    // Overwrite: the old blob goes unless another file still uses it.
    let fh = d.open(ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
    write_all(&d, fh, 0, &pattern(25_000, 14)).await;
    d.flush(fh).await.unwrap();
    d.release(fh).await.unwrap();
    d.unlink(ROOT, os("del")).await.unwrap();
    d.wait_idle().await.unwrap();
    let new = blobs_of(&d, ino);
    assert_ne!(new, old);
    let still_used: Vec<BlobId> = blobs_of(&d, other);
    for b in old.iter().chain(&del_blobs) {
        if still_used.contains(b) {
            continue;
        }
        eventually("old blob deleted", || !store.contains(b)).await;
    }
    for b in new.iter().chain(&still_used) {
        assert!(store.contains(b), "live blob deleted");
    }
    assert_eq!(
        read_file(&d, other).await.unwrap(),
        pattern(30_000, 12),
        "a file sharing a blob with a deleted one keeps its data"
    );
    // Deleting everything empties the store.
    d.unlink(ROOT, os("f")).await.unwrap();
    d.unlink(ROOT, os("other")).await.unwrap();
    eventually("all blobs deleted", || store.blob_ids().is_empty()).await;
    let blobs_left: u64 = d
        .read_db(|c| Ok(c.query_row("SELECT COUNT(*) FROM blobs", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(blobs_left, 0);
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn small_files_closed_together_share_a_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let mut c = config(tmp.path());
    c.pack_linger = Duration::from_millis(300);
    let d = start(c, &store).await;
    let mut handles = Vec::new();
    for k in 0..8u64 {
        let (ino, fh) = create(&d, ROOT, &format!("f{k}")).await;
        write_all(&d, fh, 0, &pattern(1000 + k as usize * 100, 20 + k)).await;
        handles.push((ino, fh));
    }
    for (_, fh) in &handles {
        d.flush(*fh).await.unwrap();
        d.release(*fh).await.unwrap();
    }
    d.wait_idle().await.unwrap();
    assert_eq!(store.stats().puts, 1, "one blob for all");
    let blob = blobs_of(&d, handles[0].0);
    assert_eq!(blob.len(), 1);
    for (k, (ino, _)) in handles.iter().enumerate() {
        assert_eq!(blobs_of(&d, *ino), blob);
        let want = pattern(1000 + k * 100, 20 + k as u64);
        assert_eq!(read_file(&d, *ino).await.unwrap(), want);
    }
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    for (k, (ino, _)) in handles.iter().enumerate() {
        let want = pattern(1000 + k * 100, 20 + k as u64);
        assert_eq!(read_file(&d, *ino).await.unwrap(), want);
    }
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_larger_than_a_pack_spans_several_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let content = pattern(1_000_000, 30);
    let ino = write_file(&d, ROOT, "big", &content).await;
    d.wait_idle().await.unwrap();
    let blobs = blobs_of(&d, ino);
    assert!(blobs.len() >= 4, "{} blobs", blobs.len());
    for b in &blobs {
        assert!(store.stored(b).unwrap().size <= 256 * KIB);
    }
    // The backend's own maximum counts too.
    store.set_max_blob_size(100_000);
    let ino2 = write_file(&d, ROOT, "big2", &pattern(300_000, 31)).await;
    d.wait_idle().await.unwrap();
    let blobs2 = blobs_of(&d, ino2);
    assert!(blobs2.len() >= 3);
    for b in &blobs2 {
        assert!(store.stored(b).unwrap().size <= 100_000);
    }
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(read_file(&d, ino).await.unwrap(), content);
    assert_eq!(read_file(&d, ino2).await.unwrap(), pattern(300_000, 31));
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sparse_files_upload_only_their_data() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let (ino, fh) = create(&d, ROOT, "sparse").await;
    let far = 50 << 20;
    write_all(&d, fh, 0, b"head").await;
    write_all(&d, fh, far, b"tail").await;
    d.flush(fh).await.unwrap();
    d.release(fh).await.unwrap();
    // Extended by truncate: all hole.
    let (hole, fh) = create(&d, ROOT, "hole").await;
    d.setattr(
        hole,
        SetAttr {
            size: Some(10 << 20),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    d.release(fh).await.unwrap();
    d.wait_idle().await.unwrap();

    assert!(
        store.stats().bytes_put <= 2 * 4096 + 100,
        "{:?}",
        store.stats()
    );
    assert_eq!(extents(&d, ino).len(), 2);
    assert!(extents(&d, hole).is_empty());
    assert_eq!(d.getattr(ino).await.unwrap().size, far + 4);
    assert_eq!(d.getattr(hole).await.unwrap().size, 10 << 20);
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    let fh = d.open(ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(d.read(fh, 0, 4).await.unwrap(), b"head");
    assert_eq!(d.read(fh, far, 100).await.unwrap(), b"tail");
    let mid = d.read(fh, far / 2, 100_000).await.unwrap();
    assert_eq!(mid.len(), 100_000);
    assert!(mid.iter().all(|&b| b == 0));
    let edge = d.read(fh, far - 2, 6).await.unwrap();
    assert_eq!(edge, b"\0\0tail");
    d.release(fh).await.unwrap();
    let fh = d.open(hole, libc::O_RDONLY).await.unwrap();
    let z = d.read(fh, 5 << 20, 1000).await.unwrap();
    assert_eq!(z, vec![0; 1000]);
    d.release(fh).await.unwrap();
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncate_shrinks_and_grows() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let content = pattern(200_000, 40);
    let ino = write_file(&d, ROOT, "f", &content).await;
    d.wait_idle().await.unwrap();
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    let set = |size| SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    // Shrink a clean file whose content is only on the network, then grow it again: the
    // grown part reads as zeros, not as the old bytes.
    d.setattr(ino, set(70_000)).await.unwrap();
    d.setattr(ino, set(150_000)).await.unwrap();
    let mut want = content[..70_000].to_vec();
    want.resize(150_000, 0);
    assert_eq!(read_file(&d, ino).await.unwrap(), want);
    d.wait_idle().await.unwrap();
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(read_file(&d, ino).await.unwrap(), want);
    d.setattr(ino, set(0)).await.unwrap();
    assert_eq!(read_file(&d, ino).await.unwrap(), b"");
    d.wait_idle().await.unwrap();
    assert!(extents(&d, ino).is_empty());
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unlinked_open_file_keeps_its_data_until_release() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let content = pattern(100_000, 50);
    let ino = write_file(&d, ROOT, "f", &content).await;
    d.wait_idle().await.unwrap();
    let blobs = blobs_of(&d, ino);

    let rfh = d.open(ino, libc::O_RDONLY).await.unwrap();
    let wfh = d.open(ino, libc::O_RDWR).await.unwrap();
    d.unlink(ROOT, os("f")).await.unwrap();
    assert!(matches!(
        d.lookup(ROOT, os("f")).await,
        Err(FsError::NotFound)
    ));
    assert_eq!(d.getattr(ino).await.unwrap().nlink, 0);
    assert_eq!(read_fh(&d, rfh, 100_000).await.unwrap(), content);
    // Still writable through an open handle, and readable through the other.
    write_all(&d, wfh, 0, b"changed").await;
    d.flush(wfh).await.unwrap();
    d.release(wfh).await.unwrap();
    assert_eq!(d.read(rfh, 0, 7).await.unwrap(), b"changed");
    // A new file of the same name is another file.
    let new = write_file(&d, ROOT, "f", b"new").await;
    assert_ne!(new, ino);
    assert_eq!(read_fh(&d, rfh, 100_000).await.unwrap()[7..], content[7..]);
    d.release(rfh).await.unwrap();
    assert!(matches!(d.getattr(ino).await, Err(FsError::NotFound)));
    assert!(!staging_files(tmp.path()).contains(&ino.to_string()));
    for b in &blobs {
        eventually("blob of the unlinked file deleted", || !store.contains(b)).await;
    }
    d.wait_idle().await.unwrap();
    assert_eq!(read_file(&d, new).await.unwrap(), b"new");
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unlinked_open_file_is_removed_at_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let uploaded = write_file(&d, ROOT, "uploaded", &pattern(50_000, 60)).await;
    d.wait_idle().await.unwrap();
    let blobs = blobs_of(&d, uploaded);
    let _keep = d.open(uploaded, libc::O_RDONLY).await.unwrap();
    // One more, written and never closed.
    let (staged, fh) = create(&d, ROOT, "staged").await;
    write_all(&d, fh, 0, b"abc").await;
    d.unlink(ROOT, os("uploaded")).await.unwrap();
    d.unlink(ROOT, os("staged")).await.unwrap();
    assert!(staging_files(tmp.path()).contains(&staged.to_string()));
    // The drive stops with both still open (a crash, or an unmount with open files).
    stop(d).await;

    let d = start(config(tmp.path()), &store).await;
    for ino in [uploaded, staged] {
        assert!(matches!(d.getattr(ino).await, Err(FsError::NotFound)));
    }
    assert!(d.read_db(meta::orphans).unwrap().is_empty());
    assert!(staging_files(tmp.path()).is_empty());
    let cached: Vec<_> = std::fs::read_dir(tmp.path().join("cache/files"))
        .unwrap()
        .flatten()
        .collect();
    assert!(cached.is_empty(), "{cached:?}");
    for b in &blobs {
        eventually("orphan's blob deleted", || !store.contains(b)).await;
    }
    d.wait_idle().await.unwrap();
    assert_eq!(
        store.stats().bytes_put,
        50_000,
        "the unclosed file is never stored"
    );
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unclosed_writes_are_uploaded_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let (ino, fh) = create(&d, ROOT, "f").await;
    write_all(&d, fh, 0, b"never closed").await;
    // The mount stops without a release (killed).
    stop(d).await;
    let d = start(config(tmp.path()), &store).await;
    d.wait_idle().await.unwrap();
    let i = d.getattr(ino).await.unwrap();
    assert_eq!(i.uploaded_gen, i.data_gen);
    assert!(!i.staged);
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(read_file(&d, ino).await.unwrap(), b"never closed");
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_during_upload_are_not_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let mut c = config(tmp.path());
    c.pack_linger = Duration::ZERO;
    let d = start(c, &store).await;
    let (ino, fh) = create(&d, ROOT, "f").await;
    let mut want = Vec::new();
    for k in 0..200u64 {
        let chunk = pattern(3000, 100 + k);
        write_all(&d, fh, want.len() as u64, &chunk).await;
        want.extend_from_slice(&chunk);
        if k % 7 == 0 {
            // Hand it to the uploader while more writes follow.
            d.flush(fh).await.unwrap();
        }
        if k % 50 == 49 {
            d.fsync(fh).await.unwrap();
        }
    }
    d.flush(fh).await.unwrap();
    d.release(fh).await.unwrap();
    d.wait_idle().await.unwrap();
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(read_file(&d, ino).await.unwrap(), want);
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rename_variants() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let c = Caller::ROOT;
    let a = d.mkdir(c, ROOT, os("a"), 0o755, 0).await.unwrap().ino;
    let b = d.mkdir(c, ROOT, os("b"), 0o755, 0).await.unwrap().ino;
    let f1 = write_file(&d, a, "f1", b"one").await;
    let f2 = write_file(&d, b, "f2", b"two").await;
    d.wait_idle().await.unwrap();
    let f2_blobs = blobs_of(&d, f2);

    // Plain move across directories.
    d.rename(a, os("f1"), b, os("g"), RenameMode::Replace)
        .await
        .unwrap();
    assert!(matches!(
        d.lookup(a, os("f1")).await,
        Err(FsError::NotFound)
    ));
    assert_eq!(lookup_ino(&d, b, "g").await, f1);

    // NoReplace onto an existing name.
    let e = d
        .rename(b, os("g"), b, os("f2"), RenameMode::NoReplace)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::EEXIST);
    // NoReplace onto a free name works.
    d.rename(b, os("g"), a, os("f1"), RenameMode::NoReplace)
        .await
        .unwrap();

    // Replace an existing file: its inode (not open) is deleted, its blob collected.
    d.rename(a, os("f1"), b, os("f2"), RenameMode::Replace)
        .await
        .unwrap();
    assert_eq!(lookup_ino(&d, b, "f2").await, f1);
    assert!(matches!(d.getattr(f2).await, Err(FsError::NotFound)));
    for bl in &f2_blobs {
        if !blobs_of(&d, f1).contains(bl) {
            eventually("replaced file's blob deleted", || !store.contains(bl)).await;
        }
    }

    // Exchange a file and a directory across directories: link counts follow.
    let sub = d.mkdir(c, a, os("sub"), 0o755, 0).await.unwrap().ino;
    assert_eq!(d.getattr(a).await.unwrap().nlink, 3);
    assert_eq!(d.getattr(b).await.unwrap().nlink, 2);
    d.rename(a, os("sub"), b, os("f2"), RenameMode::Exchange)
        .await
        .unwrap();
    assert_eq!(lookup_ino(&d, a, "sub").await, f1);
    assert_eq!(lookup_ino(&d, b, "f2").await, sub);
    assert_eq!(d.getattr(a).await.unwrap().nlink, 2);
    assert_eq!(d.getattr(b).await.unwrap().nlink, 3);
    assert_eq!(d.getattr(sub).await.unwrap().parent, Some(b));
    let dotdot = d.lookup(sub, os("..")).await.unwrap().ino;
    assert_eq!(dotdot, b);
    // Exchange with a missing target.
    let e = d
        .rename(a, os("sub"), a, os("nothing"), RenameMode::Exchange)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);

    // Directories: into itself, over a non-empty one, file over directory and back.
    let e = d
        .rename(b, os("f2"), sub, os("x"), RenameMode::Replace)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    let full = d.mkdir(c, ROOT, os("full"), 0o755, 0).await.unwrap().ino;
    write_file(&d, full, "x", b"").await;
    let e = d
        .rename(b, os("f2"), ROOT, os("full"), RenameMode::Replace)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::ENOTEMPTY);
    let e = d
        .rename(a, os("sub"), ROOT, os("full"), RenameMode::Replace)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::EISDIR);
    let e = d
        .rename(ROOT, os("full"), a, os("sub"), RenameMode::Replace)
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::ENOTDIR);
    // Directory over an empty directory.
    let empty = d.mkdir(c, ROOT, os("empty"), 0o755, 0).await.unwrap().ino;
    let root_links = d.getattr(ROOT).await.unwrap().nlink;
    d.rename(b, os("f2"), ROOT, os("empty"), RenameMode::Replace)
        .await
        .unwrap();
    assert!(matches!(d.getattr(empty).await, Err(FsError::NotFound)));
    assert_eq!(lookup_ino(&d, ROOT, "empty").await, sub);
    assert_eq!(d.getattr(ROOT).await.unwrap().nlink, root_links);
    assert_eq!(d.getattr(b).await.unwrap().nlink, 2);
    assert_eq!(d.getattr(sub).await.unwrap().parent, Some(ROOT));

    // Two names of one inode: renaming one onto the other does nothing.
    d.link(f1, a, os("hard")).await.unwrap();
    d.rename(a, os("hard"), a, os("sub"), RenameMode::Replace)
        .await
        .unwrap();
    assert_eq!(lookup_ino(&d, a, "hard").await, f1);
    assert_eq!(lookup_ino(&d, a, "sub").await, f1);
    assert_eq!(d.getattr(f1).await.unwrap().nlink, 2);

    // Replacing a file that is open keeps its data for the open handle.
    let victim = write_file(&d, a, "victim", b"victim data").await;
    let fh = d.open(victim, libc::O_RDONLY).await.unwrap();
    d.rename(a, os("hard"), a, os("victim"), RenameMode::Replace)
        .await
        .unwrap();
    assert_eq!(d.getattr(victim).await.unwrap().nlink, 0);
    assert_eq!(d.read(fh, 0, 100).await.unwrap(), b"victim data");
    d.release(fh).await.unwrap();
    assert!(matches!(d.getattr(victim).await, Err(FsError::NotFound)));
    assert_eq!(d.getattr(f1).await.unwrap().nlink, 2);
    assert_eq!(read_file(&d, f1).await.unwrap(), b"one");

    // Everything survives a remount.
    d.wait_idle().await.unwrap();
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(lookup_ino(&d, a, "victim").await, f1);
    assert_eq!(lookup_ino(&d, a, "sub").await, f1);
    assert_eq!(lookup_ino(&d, ROOT, "empty").await, sub);
    assert_eq!(read_file(&d, f1).await.unwrap(), b"one");
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hard_links_share_content() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let ino = write_file(&d, ROOT, "a", b"shared").await;
    let l = d.link(ino, ROOT, os("b")).await.unwrap();
    assert_eq!(l.ino, ino);
    assert_eq!(l.nlink, 2);
    let fh = d.open(ino, libc::O_WRONLY).await.unwrap();
    write_all(&d, fh, 0, b"SH").await;
    d.flush(fh).await.unwrap();
    d.release(fh).await.unwrap();
    d.unlink(ROOT, os("a")).await.unwrap();
    let b = lookup_ino(&d, ROOT, "b").await;
    assert_eq!(read_file(&d, b).await.unwrap(), b"SHared");
    assert_eq!(d.getattr(b).await.unwrap().nlink, 1);
    // Directories cannot be linked.
    let dir = d
        .mkdir(Caller::ROOT, ROOT, os("d"), 0o755, 0)
        .await
        .unwrap();
    let e = d.link(dir.ino, ROOT, os("d2")).await.unwrap_err();
    assert_eq!(e.errno(), libc::EPERM);
    d.wait_idle().await.unwrap();
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_files_and_reuse_of_a_dying_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let content = pattern(5000, 70);
    let a = write_file(&d, ROOT, "a", &content).await;
    d.wait_idle().await.unwrap();
    let blob = blobs_of(&d, a);
    // Delete it and write the same bytes again at once: same blob ID, which must survive.
    d.unlink(ROOT, os("a")).await.unwrap();
    let b = write_file(&d, ROOT, "b", &content).await;
    d.wait_idle().await.unwrap();
    // Give garbage collection a few rounds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = blobs_of(&d, b);
    for id in &now {
        assert!(store.contains(id), "a referenced blob was deleted");
    }
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(read_file(&d, b).await.unwrap(), content);
    let _ = blob;
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_and_attributes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let c = Caller::ROOT;
    let dir = d.mkdir(c, ROOT, os("d"), 0o750, 0o022).await.unwrap();
    assert_eq!(dir.perm, 0o750);
    assert_eq!(
        d.mkdir(c, ROOT, os("d"), 0o755, 0)
            .await
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    write_file(&d, dir.ino, "f", b"x").await;
    assert_eq!(
        d.rmdir(ROOT, os("d")).await.unwrap_err().errno(),
        libc::ENOTEMPTY
    );
    assert_eq!(
        d.unlink(ROOT, os("d")).await.unwrap_err().errno(),
        libc::EISDIR
    );
    assert_eq!(
        d.rmdir(dir.ino, os("f")).await.unwrap_err().errno(),
        libc::ENOTDIR
    );
    let names: Vec<Vec<u8>> = d
        .readdir(dir.ino, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec![b".".to_vec(), b"..".to_vec(), b"f".to_vec()]);
    let f = lookup_ino(&d, dir.ino, "f").await;
    let t = Time {
        sec: 1_000_000_000,
        nsec: 123,
    };
    let i = d
        .setattr(
            f,
            SetAttr {
                mode: Some(0o600),
                mtime: Some(TimeSet::At(t)),
                atime: Some(TimeSet::At(t)),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((i.perm, i.mtime, i.atime), (0o600, t, t));
    d.setxattr(f, os("user.a"), b"1", XattrMode::Create)
        .await
        .unwrap();
    assert_eq!(
        d.setxattr(f, os("user.a"), b"2", XattrMode::Create)
            .await
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    assert_eq!(
        d.setxattr(f, os("user.b"), b"2", XattrMode::Replace)
            .await
            .unwrap_err()
            .errno(),
        libc::ENODATA
    );
    d.setxattr(f, os("user.b"), b"", XattrMode::Any)
        .await
        .unwrap();
    assert_eq!(d.listxattr(f).await.unwrap(), b"user.a\0user.b\0");
    d.removexattr(f, os("user.a")).await.unwrap();
    assert_eq!(
        d.removexattr(f, os("user.a")).await.unwrap_err().errno(),
        libc::ENODATA
    );
    d.unlink(dir.ino, os("f")).await.unwrap();
    d.rmdir(ROOT, os("d")).await.unwrap();
    assert_eq!(d.getattr(ROOT).await.unwrap().nlink, 2);
    d.wait_idle().await.unwrap();
    stop(d).await;
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(d.readdir(ROOT, 0, 100).await.unwrap().len(), 2);
    stop(d).await;
}

fn cached_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("cache/files"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Marks `ino` staged behind the drive's back (the drive must be stopped).
fn force_staged(dir: &Path, ino: Ino) {
    let c = rusqlite::Connection::open(dir.join("meta.db")).unwrap();
    c.execute("UPDATE inodes SET staged = 1 WHERE ino = ?1", [ino])
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_inside_unstaging_is_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let content = pattern(80_000, 80);
    let ino = write_file(&d, ROOT, "f", &content).await;
    let other = pattern(1000, 81);
    write_file(&d, ROOT, "other", &other).await;
    d.wait_idle().await.unwrap();
    stop(d).await;

    // As if killed after the staging file became the file cache but before the database
    // said so: staged, with no staging file.
    force_staged(tmp.path(), ino);
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(read_file(&d, ino).await.unwrap(), content);
    let (later, fh) = create(&d, ROOT, "later").await;
    write_all(&d, fh, 0, b"later").await;
    d.release(fh).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), d.wait_idle())
        .await
        .expect("the upload queue is not blocked")
        .unwrap();
    let i = d.getattr(later).await.unwrap();
    assert_eq!(i.uploaded_gen, i.data_gen);
    stop(d).await;

    // The same without any local copy: the extents hold the content.
    force_staged(tmp.path(), ino);
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(read_file(&d, ino).await.unwrap(), content);
    tokio::time::timeout(Duration::from_secs(20), d.wait_idle())
        .await
        .expect("the upload queue is not blocked")
        .unwrap();
    assert!(!d.getattr(ino).await.unwrap().staged);
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overwriting_a_file_drops_its_old_file_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let ino = write_file(&d, ROOT, "f", &pattern(10_000, 90)).await;
    d.wait_idle().await.unwrap();
    assert_eq!(cached_files(tmp.path()).len(), 1);
    for k in 0..3 {
        let fh = d.open(ino, libc::O_WRONLY | libc::O_TRUNC).await.unwrap();
        write_all(&d, fh, 0, &pattern(5000, 91 + k)).await;
        d.flush(fh).await.unwrap();
        d.release(fh).await.unwrap();
        d.wait_idle().await.unwrap();
    }
    let i = d.getattr(ino).await.unwrap();
    assert_eq!(
        cached_files(tmp.path()),
        vec![format!("{ino}.{}", i.uploaded_gen)]
    );
    assert_eq!(read_file(&d, ino).await.unwrap(), pattern(5000, 93));
    stop(d).await;
}

/// Tasks writing, truncating, fsyncing, renaming and reading their own files at once, with
/// the uploader working under them; what each task last wrote must be what the drive holds,
/// also when read back from the store alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_the_uploader_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let mut c = config(tmp.path());
    c.pack_linger = Duration::from_millis(1);
    let d = start(c, &store).await;
    const TASKS: u64 = 6;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let mut want: Vec<Vec<u8>> = vec![Vec::new(); 3];
            let mut x = t + 1;
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let names: Vec<String> = (0..3).map(|k| format!("t{t}f{k}")).collect();
            for n in &names {
                write_file(&d, ROOT, n, b"").await;
            }
            for round in 0..60u64 {
                let k = next(3) as usize;
                let ino = lookup_ino(&d, ROOT, &names[k]).await;
                let fh = d.open(ino, libc::O_RDWR).await.unwrap();
                for _ in 0..1 + next(4) {
                    let off = next(want[k].len() as u64 + 1 + 70_000);
                    let bytes = pattern(1 + next(90_000) as usize, t * 1000 + round);
                    write_all(&d, fh, off, &bytes).await;
                    let end = off as usize + bytes.len();
                    if want[k].len() < end {
                        want[k].resize(end, 0);
                    }
                    want[k][off as usize..end].copy_from_slice(&bytes);
                }
                match next(5) {
                    0 => {
                        let size = next(want[k].len() as u64 + 1);
                        d.setattr(
                            ino,
                            SetAttr {
                                size: Some(size),
                                ..SetAttr::default()
                            },
                        )
                        .await
                        .unwrap();
                        want[k].truncate(size as usize);
                    }
                    1 => d.fsync(fh).await.unwrap(),
                    _ => {}
                }
                let got = read_fh(&d, fh, want[k].len() as u64).await.unwrap();
                assert!(
                    got == want[k],
                    "task {t} file {k} round {round}: read back differs"
                );
                d.flush(fh).await.unwrap();
                d.release(fh).await.unwrap();
                if next(4) == 0 {
                    // Swap two of the task's files by name.
                    let j = (k + 1) % 3;
                    d.rename(
                        ROOT,
                        os(&names[k]),
                        ROOT,
                        os(&names[j]),
                        RenameMode::Exchange,
                    )
                    .await
                    .unwrap();
                    want.swap(k, j);
                }
                tokio::task::yield_now().await;
            }
            (names, want)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await.unwrap());
    }
    d.wait_idle().await.unwrap();
    for (names, want) in &all {
        for (n, w) in names.iter().zip(want) {
            let ino = lookup_ino(&d, ROOT, n).await;
            // `flush` promises this: everything written before it is uploaded.
            let i = d.getattr(ino).await.unwrap();
            assert_eq!(i.uploaded_gen, i.data_gen, "{n} not uploaded at idle");
            assert!(read_file(&d, ino).await.unwrap() == *w, "{n} differs");
        }
    }
    // Every pin was given back: no inode's in-memory state outlives its users.
    eventually("no inode left pinned", || lock(&d.inner.live).is_empty()).await;
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    for (names, want) in &all {
        for (n, w) in names.iter().zip(want) {
            let ino = lookup_ino(&d, ROOT, n).await;
            let i = d.getattr(ino).await.unwrap();
            assert_eq!(i.uploaded_gen, i.data_gen, "{n} not uploaded");
            assert!(!i.staged, "{n} still staged");
            assert!(
                read_file(&d, ino).await.unwrap() == *w,
                "{n} differs from the store"
            );
        }
    }
    stop(d).await;
}

/// The uploader keeps a file pinned from taking it to committing it. A file closed, reopened
/// and rewritten while its upload is in flight is then one live file to the writer and the
/// uploader, so the commit sees the new writes. (It once was two: the commit took the old
/// content for the current one, moved the staging file, new writes and all, into the cache
/// and dropped the queued upload of the new writes, which were lost with the cache.)
#[tokio::test(flavor = "multi_thread")]
async fn a_file_rewritten_while_its_upload_is_in_flight_keeps_the_new_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::new(10).unwrap());
    let d = start(config(tmp.path()), &store).await;
    store.hold_puts();
    let ino = write_file(&d, ROOT, "f", b"first").await;
    eventually("the upload of f to start", || store.waiting_puts() == 1).await;
    let fh = d.open(ino, libc::O_RDWR).await.unwrap();
    write_all(&d, fh, 0, b"second").await;
    d.flush(fh).await.unwrap();
    d.release(fh).await.unwrap();
    // Keep the closer off the new writes for a while (it passes over a file whose lock is
    // taken), so that the first upload commits before they are queued.
    let live = d.pin(ino);
    let reading = live.data.read().await;
    store.release_puts();
    eventually("the first put to finish", || store.stats().puts == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(reading);
    d.unpin(ino);
    d.wait_idle().await.unwrap();
    let i = d.getattr(ino).await.unwrap();
    assert_eq!(
        i.uploaded_gen, i.data_gen,
        "the new writes are not uploaded"
    );
    assert_eq!(read_file(&d, ino).await.unwrap(), b"second");
    stop(d).await;
    remove_cache(tmp.path());
    let d = start(config(tmp.path()), &store).await;
    assert_eq!(read_file(&d, ino).await.unwrap(), b"second");
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sizes_and_times_of_writes_reach_the_database_at_close_and_before_setattr() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let (ino, fh) = create(&d, ROOT, "f").await;
    write_all(&d, fh, 0, &pattern(10_000, 1)).await;
    // Writes are seen at once, though not yet in the database.
    assert_eq!(d.getattr(ino).await.unwrap().size, 10_000);
    assert_eq!(lookup_ino(&d, ROOT, "f").await, ino);
    assert_eq!(d.lookup(ROOT, os("f")).await.unwrap().size, 10_000);
    let in_db = |d: &Drive| d.read_db(|c| meta::inode(c, ino)).unwrap();
    assert_eq!(in_db(&d).size, 0);
    // An explicit mtime after writes (cp -p, tar, rsync do this before close) wins.
    let old = Time {
        sec: 1_000_000,
        nsec: 5,
    };
    let i = d
        .setattr(
            ino,
            SetAttr {
                mtime: Some(TimeSet::At(old)),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((i.size, i.mtime), (10_000, old));
    let i = d.getattr(ino).await.unwrap();
    assert_eq!((i.size, i.mtime), (10_000, old));
    // Times alone on a file being written stay with its pending size (the writeback cache
    // sends them before every close); anything else settles first.
    let i = d
        .setattr(
            ino,
            SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((i.size, i.mtime, i.perm), (10_000, old, 0o600));
    assert_eq!((in_db(&d).size, in_db(&d).mtime), (10_000, old));
    // A later write moves it on again; close records it.
    write_all(&d, fh, 20_000, b"tail").await;
    let i = d.getattr(ino).await.unwrap();
    assert_eq!(i.size, 20_004);
    assert!(i.mtime > old);
    d.release(fh).await.unwrap();
    // The closer queues it (within CLOSE_GROUP); run it now.
    d.commit_closed().await.unwrap();
    assert_eq!(in_db(&d).size, 20_004);
    assert_eq!(in_db(&d).mtime, i.mtime);
    // Truncate after writes keeps the truncated size.
    let fh = d.open(ino, libc::O_WRONLY).await.unwrap();
    write_all(&d, fh, 30_000, b"more").await;
    let i = d
        .setattr(
            ino,
            SetAttr {
                size: Some(5),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(i.size, 5);
    d.release(fh).await.unwrap();
    d.wait_idle().await.unwrap();
    assert_eq!(read_file(&d, ino).await.unwrap(), pattern(10_000, 1)[..5]);
    // Times set after the last write (as `cp -p` does before close) reach the database at
    // close.
    let fh = d.open(ino, libc::O_WRONLY).await.unwrap();
    write_all(&d, fh, 5, b"x").await;
    d.setattr(
        ino,
        SetAttr {
            mtime: Some(TimeSet::At(old)),
            ..SetAttr::default()
        },
    )
    .await
    .unwrap();
    d.release(fh).await.unwrap();
    d.commit_closed().await.unwrap();
    assert_eq!((in_db(&d).size, in_db(&d).mtime), (6, old));
    stop(d).await;
}

/// With the writeback cache the kernel keeps a regular file's ctime and sends it after a
/// link (its clock is coarse and behind ours): what it sends last is what `stat` showed, so
/// it is what the database keeps, whether it comes while the file's close is still to be
/// queued or after.
#[tokio::test(flavor = "multi_thread")]
async fn the_kernels_ctime_after_a_link_is_kept_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store();
    let d = start(config(tmp.path()), &store).await;
    let in_db = |d: &Drive, ino| d.read_db(|c| meta::inode(c, ino)).unwrap();
    for queued_first in [false, true] {
        let name = if queued_first { "queued" } else { "pending" };
        let (ino, fh) = create(&d, ROOT, name).await;
        write_all(&d, fh, 0, b"data").await;
        d.release(fh).await.unwrap();
        if queued_first {
            d.commit_closed().await.unwrap();
        }
        let linked = format!("{name}-link");
        d.link(ino, ROOT, os(&linked)).await.unwrap();
        let ours = in_db(&d, ino).ctime;
        let kernels = Time {
            sec: ours.sec - 1,
            nsec: 7,
        };
        d.setattr(
            ino,
            SetAttr {
                ctime: Some(kernels),
                ..SetAttr::default()
            },
        )
        .await
        .unwrap();
        d.commit_closed().await.unwrap();
        assert_eq!(d.getattr(ino).await.unwrap().ctime, kernels, "{name}");
        assert_eq!(in_db(&d, ino).ctime, kernels, "{name}");
        assert_eq!(in_db(&d, ino).size, 4, "{name}");
    }
    stop(d).await;
}

/// Closes as the kernel sends them now (release, no flush): the closer queues them in one
/// transaction, the sealer syncs them (one syncfs for 8 or more on a local disk, one
/// fdatasync each otherwise) and records the hash of exactly what each file holds.
#[tokio::test]
async fn closes_without_flush_are_queued_together_and_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    // Nothing uploads meanwhile: sealing is for files not uploaded yet.
    c.pack_linger = Duration::from_secs(600);
    c.pack_max_wait = Duration::from_secs(600);
    c.max_pack = 64 << 20;
    let s = store();
    let d = start(c, &s).await;
    for (group, count) in [("many", 12usize), ("few", 2)] {
        let dir_ino = d
            .mkdir(Caller::ROOT, ROOT, os(group), 0o755, 0)
            .await
            .unwrap()
            .ino;
        let mut files = Vec::new();
        for k in 0..count {
            let (ino, fh) = create(&d, dir_ino, &format!("f{k}")).await;
            let bytes = pattern(1000 + k * 300, k as u64 + 7);
            write_all(&d, fh, 0, &bytes).await;
            d.release(fh).await.unwrap();
            files.push((ino, bytes));
        }
        d.commit_closed().await.unwrap();
        d.seal_pending().await.unwrap();
        for (ino, bytes) in &files {
            let i = d.read_db(|c| meta::inode(c, *ino)).unwrap();
            assert_eq!(i.size, bytes.len() as u64, "{group}: size queued at close");
            assert!(i.data_gen >= 1, "{group}: close bumped the generation");
            let queued = d.read_db(|c| meta::queued_upload(c, *ino)).unwrap();
            assert_eq!(
                queued.map(|q| q.data_gen),
                Some(i.data_gen),
                "{group}: queued"
            );
            let rec = d.read_db(|c| durable::test_record(c, *ino)).unwrap();
            assert_eq!(rec.0, i.data_gen, "{group}: sealed generation");
            assert_eq!(rec.1, bytes.len() as u64, "{group}: sealed size");
            assert_eq!(
                rec.2.as_deref(),
                Some(&blake3::hash(bytes).as_bytes()[..]),
                "{group}: sealed hash"
            );
            assert_eq!(read_file(&d, *ino).await.unwrap(), *bytes);
        }
    }
    stop(d).await;
}

/// A release the closer has not handled yet is queued by an unmount, and by `wait_idle`.
#[tokio::test]
async fn unqueued_closes_are_queued_at_stop_and_by_wait_idle() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    let d = start(config(dir.path()), &s).await;
    let (a, fh) = create(&d, ROOT, "a").await;
    write_all(&d, fh, 0, &pattern(5000, 1)).await;
    d.release(fh).await.unwrap();
    d.wait_idle().await.unwrap();
    let i = d.read_db(|c| meta::inode(c, a)).unwrap();
    assert_eq!(
        (i.size, i.uploaded_gen >= 1),
        (5000, true),
        "uploaded by wait_idle"
    );
    let (b, fh) = create(&d, ROOT, "b").await;
    write_all(&d, fh, 0, &pattern(7000, 2)).await;
    d.release(fh).await.unwrap();
    stop(d).await;
    let d = start(config(dir.path()), &s).await;
    let i = d.read_db(|c| meta::inode(c, b)).unwrap();
    assert_eq!(i.size, 7000);
    assert_eq!(read_file(&d, b).await.unwrap(), pattern(7000, 2));
    assert_eq!(read_file(&d, a).await.unwrap(), pattern(5000, 1));
    stop(d).await;
}

/// A staging file no staged inode owns (its creating transaction never committed) is removed
/// at the next start; staged files' own are kept.
#[tokio::test]
async fn orphan_staging_files_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = store();
    let mut c = config(dir.path());
    c.pack_linger = Duration::from_secs(600);
    c.pack_max_wait = Duration::from_secs(600);
    let d = start(c.clone(), &s).await;
    let (a, fh) = create(&d, ROOT, "a").await;
    write_all(&d, fh, 0, b"kept").await;
    d.release(fh).await.unwrap();
    stop(d).await;
    let staging = dir.path().join("staging");
    fs::write(staging.join("987654"), b"orphan").unwrap();
    let d = start(c, &s).await;
    assert!(
        !staging.join("987654").exists(),
        "orphan staging file removed"
    );
    assert!(
        staging.join(a.to_string()).exists(),
        "a staged file keeps its own"
    );
    assert_eq!(read_file(&d, a).await.unwrap(), b"kept");
    stop(d).await;
}
