//! The local cache under a byte budget, and the prefetcher for sequential readers.
//!
//! **Budget.** `cache/files/INO.GEN` (a clean file's content kept after upload) and
//! `cache/extents/HASH` (extents fetched from the network) together stay under
//! [`DriveConfig::cache_budget`](super::DriveConfig::cache_budget) bytes of allocated disk
//! space. An in-memory index knows every entry's size and keeps them in least-recently-used
//! order; inserting an entry evicts from the cold end until the cache fits again, and the drive
//! does the same at start after scanning both folders. Everything in `cache/` is a copy of
//! certified extents, so an entry can go at any moment: a reader holding the open file cache
//! handle (`Live::cache_file`) keeps reading the unlinked inode, and the next open reads the
//! extents; an extent gone from disk is fetched again. Staging files (`staging/`, the only
//! copy of data not yet uploaded) are not in the cache and never evicted.
//!
//! Last use survives remounts without a database write per read: it is the entry's mtime,
//! set at most once a minute per entry while in use (one `futimens`) and for every entry used
//! since at a clean shutdown; the start-up scan orders entries by it.
//!
//! **Prefetch.** Each open handle reading a clean file from its extents has a stream: a read
//! that starts within [`SEQ_TOLERANCE`] of where the previous one ended (or at offset 0 for
//! the first) is sequential. Each time a sequential reader enters a new extent, its window
//! doubles (1, 2, 4, … up to [`MAX_WINDOW`] extents) and the extents within the window ahead
//! are fetched in the background through `extent_bytes` (so they share the one fetch per
//! extent with readers, land in the hot LRU and the extent cache, and are verified as any
//! read). A random read drops the window to nothing. One global budget
//! ([`DriveConfig::prefetch_budget`](super::DriveConfig::prefetch_budget)) bounds the bytes of
//! prefetches in flight across all streams; when it is used up, prefetching waits for later
//! reads instead of queueing.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use lru::LruCache;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::meta::{Extent, Ino, now_ms};
use super::{Drive, lock};

/// Default cache budget: a tenth of the local filesystem, at most this.
pub const DEFAULT_CACHE_MAX: u64 = 8 << 30;

/// Default memory for prefetches in flight, all readers together.
pub const DEFAULT_PREFETCH_BUDGET: u64 = 256 << 20;

/// Largest prefetch window, in extents. Kept below the hot LRU's capacity (48 MiB: 12
/// extents of 4 MiB) so that what one reader prefetches is still in memory when it gets there.
pub const MAX_WINDOW: u32 = 8;

/// How far from where the previous read ended a read may start and still count as
/// sequential (the kernel sends a readahead window as several requests, and they are served
/// concurrently, so they arrive slightly out of order). At most one extent.
pub const SEQ_TOLERANCE: u64 = 2 << 20;

/// Last use is written to an entry's mtime at most this often while it is in use.
const PERSIST_EVERY_MS: u64 = 60_000;

/// One cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Key {
    /// `cache/files/INO.GEN`.
    File(Ino, u64),
    /// `cache/extents/HASH`.
    Extent([u8; 32]),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    bytes: u64,
    used_ms: u64,
    /// Last use as written to the file's mtime.
    persisted_ms: u64,
}

struct Index {
    /// Least recently used first.
    lru: LruCache<Key, Entry>,
    /// Generations of each inode in the file cache.
    gens: HashMap<Ino, Vec<u64>>,
    bytes: u64,
}

impl Index {
    fn insert(&mut self, key: Key, e: Entry) {
        if let Some(old) = self.lru.put(key, e) {
            self.bytes = self.bytes.saturating_sub(old.bytes);
        } else if let Key::File(ino, g) = key {
            self.gens.entry(ino).or_default().push(g);
        }
        self.bytes += e.bytes;
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let e = self.lru.pop(key)?;
        self.bytes = self.bytes.saturating_sub(e.bytes);
        self.unlink_gen(key);
        Some(e)
    }

    fn unlink_gen(&mut self, key: &Key) {
        if let Key::File(ino, g) = key
            && let Some(v) = self.gens.get_mut(ino)
        {
            v.retain(|x| x != g);
            if v.is_empty() {
                self.gens.remove(ino);
            }
        }
    }

    /// Takes entries from the cold end until the rest fits `budget`.
    fn victims(&mut self, budget: u64) -> Vec<(Key, u64)> {
        let mut out = Vec::new();
        while self.bytes > budget {
            let Some((key, e)) = self.lru.pop_lru() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(e.bytes);
            self.unlink_gen(&key);
            out.push((key, e.bytes));
        }
        out
    }
}

/// The byte budget of `cache/` and its index.
pub(super) struct DiskCache {
    budget: u64,
    index: Mutex<Index>,
    evictions: AtomicU64,
    evicted_bytes: AtomicU64,
}

impl DiskCache {
    pub(super) fn new(budget: u64) -> Self {
        Self {
            budget,
            index: Mutex::new(Index {
                lru: LruCache::unbounded(),
                gens: HashMap::new(),
                bytes: 0,
            }),
            evictions: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
        }
    }
}

/// The budget a drive gets when its configuration names none: a tenth of the filesystem
/// holding `dir`, at most [`DEFAULT_CACHE_MAX`].
pub fn default_cache_budget(dir: &Path) -> u64 {
    fs_size(dir).map_or(DEFAULT_CACHE_MAX, |s| (s / 10).min(DEFAULT_CACHE_MAX))
}

fn fs_size(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_blocks.saturating_mul(s.f_frsize))
}

fn mtime_ms(m: &fs::Metadata) -> u64 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn set_mtime(path: &Path, ms: u64) -> io::Result<()> {
    File::open(path)?.set_modified(UNIX_EPOCH + Duration::from_millis(ms))
}

fn parse_hash(name: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(name).ok().map(|h| *h.as_bytes())
}

fn parse_file_key(name: &str) -> Option<Key> {
    let (ino, g) = name.split_once('.')?;
    Some(Key::File(ino.parse().ok()?, g.parse().ok()?))
}

/// Figures about the local cache, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Allocated bytes of `cache/files` and `cache/extents`.
    pub bytes: u64,
    /// What they may take.
    pub budget: u64,
    /// Entries (files and extents).
    pub entries: u64,
    /// Entries evicted since the drive started, and their bytes.
    pub evictions: u64,
    pub evicted_bytes: u64,
    /// Extents fetched ahead of sequential readers.
    pub prefetched: u64,
}

impl Drive {
    pub(super) fn cache_path(&self, key: &Key) -> PathBuf {
        match key {
            Key::File(ino, g) => self.file_cache_path(*ino, *g),
            Key::Extent(h) => self.extent_cache_path(h),
        }
    }

    /// Builds the index from `cache/` (half-written extents are removed). Runs at start;
    /// `cache_enforce` follows once recovery took back any file cache entry that is really a
    /// staging file.
    pub(super) fn cache_load(&self) {
        let mut found = Vec::new();
        for (dir, files) in [
            (&self.inner.files_cache, true),
            (&self.inner.extents_cache, false),
        ] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                let key = if files {
                    parse_file_key(&name)
                } else {
                    parse_hash(&name).map(Key::Extent)
                };
                let Some(key) = key else {
                    if name.ends_with(".tmp") {
                        let _ = fs::remove_file(e.path());
                    }
                    continue;
                };
                if let Ok(m) = e.metadata()
                    && m.is_file()
                {
                    found.push((mtime_ms(&m), key, m.blocks() * 512));
                }
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        {
            let mut index = lock(&self.inner.cache.index);
            for (t, key, bytes) in found {
                index.insert(
                    key,
                    Entry {
                        bytes,
                        used_ms: t,
                        persisted_ms: t,
                    },
                );
            }
        }
        let c = self.cache_counts();
        info!(
            bytes = c.bytes,
            entries = c.entries,
            budget = c.budget,
            "local cache"
        );
    }

    /// Records a new entry (its file is in place) and evicts what no longer fits.
    pub(super) fn cache_add(&self, key: Key) {
        let Ok(m) = fs::metadata(self.cache_path(&key)) else {
            return;
        };
        let now = now_ms();
        lock(&self.inner.cache.index).insert(
            key,
            Entry {
                bytes: m.blocks() * 512,
                used_ms: now,
                persisted_ms: mtime_ms(&m).max(now),
            },
        );
        self.cache_enforce();
    }

    /// Marks an entry used now (cheap: in memory; its mtime at most once a minute).
    pub(super) fn cache_touch(&self, key: &Key) {
        let now = now_ms();
        let persist = {
            let mut index = lock(&self.inner.cache.index);
            match index.lru.get_mut(key) {
                Some(e) => {
                    e.used_ms = now;
                    let due = now.saturating_sub(e.persisted_ms) >= PERSIST_EVERY_MS;
                    if due {
                        e.persisted_ms = now;
                    }
                    due
                }
                None => false,
            }
        };
        if persist {
            let _ = set_mtime(&self.cache_path(key), now);
        }
    }

    /// Forgets an entry whose file was moved or removed by someone else.
    pub(super) fn cache_forget(&self, key: &Key) {
        lock(&self.inner.cache.index).remove(key);
    }

    /// Removes every file cache entry of `ino` (deleted).
    pub(super) fn cache_remove_files(&self, ino: Ino) {
        let gens = {
            let mut index = lock(&self.inner.cache.index);
            let gens = index.gens.get(&ino).cloned().unwrap_or_default();
            for g in &gens {
                index.remove(&Key::File(ino, *g));
            }
            gens
        };
        for g in gens {
            let _ = fs::remove_file(self.file_cache_path(ino, g));
        }
    }

    /// Evicts least recently used entries until the cache fits its budget.
    pub(super) fn cache_enforce(&self) {
        let victims = lock(&self.inner.cache.index).victims(self.inner.cache.budget);
        for (key, bytes) in victims {
            let path = self.cache_path(&key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "cannot evict a cache entry");
                    continue;
                }
            }
            self.inner.cache.evictions.fetch_add(1, Ordering::Relaxed);
            self.inner
                .cache
                .evicted_bytes
                .fetch_add(bytes, Ordering::Relaxed);
            debug!(path = %path.display(), bytes, "evicted from the cache");
        }
    }

    /// Writes the last use of every entry used since its mtime was last set (at shutdown).
    pub(super) fn cache_persist(&self) {
        let due: Vec<(Key, u64)> = {
            let mut index = lock(&self.inner.cache.index);
            index
                .lru
                .iter_mut()
                .filter(|(_, e)| e.used_ms > e.persisted_ms)
                .map(|(k, e)| {
                    e.persisted_ms = e.used_ms;
                    (*k, e.used_ms)
                })
                .collect()
        };
        for (key, ms) in due {
            let _ = set_mtime(&self.cache_path(&key), ms);
        }
    }

    /// Size, budget, evictions and prefetches of the local cache.
    pub fn cache_counts(&self) -> CacheCounts {
        let c = &self.inner.cache;
        let (bytes, entries) = {
            let index = lock(&c.index);
            (index.bytes, index.lru.len() as u64)
        };
        CacheCounts {
            bytes,
            budget: c.budget,
            entries,
            evictions: c.evictions.load(Ordering::Relaxed),
            evicted_bytes: c.evicted_bytes.load(Ordering::Relaxed),
            prefetched: self.inner.prefetch.issued.load(Ordering::Relaxed),
        }
    }
}

// ---- prefetch ------------------------------------------------------------------------------

/// Access pattern of one open handle.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Stream {
    reads: u64,
    /// Where the furthest sequential read ended.
    next: u64,
    /// Start of the extent the last read ended in.
    extent: Option<u64>,
    /// Extents to keep fetched ahead; 0: none (random access).
    window: u32,
    /// Prefetches were issued up to this file offset.
    ahead: u64,
}

impl Stream {
    /// Records a read of `[offset, end)` that ends in the extent starting at `extent_off`;
    /// returns the window (0: do not prefetch). `tolerance`: how far from the end of the
    /// previous read a sequential one may start.
    pub(super) fn observe(
        &mut self,
        offset: u64,
        end: u64,
        extent_off: u64,
        tolerance: u64,
        max: u32,
    ) -> u32 {
        let sequential = if self.reads == 0 {
            offset == 0
        } else {
            offset.abs_diff(self.next) <= tolerance
        };
        self.reads += 1;
        if !sequential {
            self.window = 0;
            self.ahead = 0;
            self.next = end;
            self.extent = Some(extent_off);
            return 0;
        }
        if self.window == 0 || self.extent != Some(extent_off) {
            self.window = self.window.saturating_mul(2).clamp(1, max.max(1));
            self.extent = Some(extent_off);
        }
        self.next = self.next.max(end);
        self.window
    }
}

pub(super) struct Prefetcher {
    /// Bytes of prefetches in flight, in KiB.
    budget: Arc<Semaphore>,
    budget_kib: u32,
    max_window: u32,
    streams: Mutex<HashMap<u64, Stream>>,
    issued: AtomicU64,
}

impl Prefetcher {
    pub(super) fn new(budget: u64, max_window: u32) -> Self {
        let kib = u32::try_from(budget / 1024)
            .unwrap_or(u32::MAX)
            .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
        Self {
            budget: Arc::new(Semaphore::new(kib as usize)),
            budget_kib: kib,
            max_window,
            streams: Mutex::new(HashMap::new()),
            issued: AtomicU64::new(0),
        }
    }

    /// The handle `fh` was closed.
    pub(super) fn forget(&self, fh: u64) {
        lock(&self.streams).remove(&fh);
    }

    #[cfg(test)]
    pub(super) fn window(&self, fh: u64) -> u32 {
        lock(&self.streams).get(&fh).map_or(0, |s| s.window)
    }
}

impl Drive {
    /// Called by a read of `[offset, end)` through handle `fh` served from `extents` (the
    /// file's, in order): starts background fetches of the extents in its window ahead.
    pub(super) fn prefetch(&self, fh: u64, ino: Ino, extents: &[Extent], offset: u64, end: u64) {
        let p = &self.inner.prefetch;
        if p.max_window == 0 || p.budget_kib == 0 || end <= offset {
            return;
        }
        // The extent holding the read's last byte, or the first after it (a hole).
        let cur = extents.partition_point(|e| e.file_off + e.len < end);
        let Some(cur_off) = extents.get(cur).map(|e| e.file_off) else {
            return;
        };
        let mut streams = lock(&p.streams);
        let s = streams.entry(fh).or_default();
        let tolerance = SEQ_TOLERANCE.min(self.inner.config.extent_size);
        let window = s.observe(offset, end, cur_off, tolerance, p.max_window) as usize;
        if window == 0 {
            return;
        }
        let last = (cur + window).min(extents.len().saturating_sub(1));
        for e in extents.get(cur + 1..=last).unwrap_or(&[]) {
            if e.file_off + e.len <= s.ahead {
                continue;
            }
            if lock(&self.inner.hot).contains(&e.hash) {
                s.ahead = e.file_off + e.len;
                continue;
            }
            let kib = u32::try_from(e.len.div_ceil(1024))
                .unwrap_or(u32::MAX)
                .clamp(1, p.budget_kib);
            let Ok(permit) = p.budget.clone().try_acquire_many_owned(kib) else {
                // The budget is used up; later reads try again.
                break;
            };
            s.ahead = e.file_off + e.len;
            p.issued.fetch_add(1, Ordering::Relaxed);
            let (d, e) = (self.clone(), e.clone());
            tokio::spawn(async move {
                if let Err(err) = d.extent_bytes(ino, &e).await {
                    debug!(ino, offset = e.file_off, error = %err, "prefetch failed");
                }
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod cache_tests {
    use std::ffi::OsStr;
    use std::os::unix::fs::MetadataExt as _;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::super::{BlobStore, Caller, Drive, DriveConfig, FsResult, ROOT};
    use super::{Key, MAX_WINDOW, Stream};
    use crate::blobstore::MemoryStore;

    const KIB: u64 = 1024;
    const EXTENT: u64 = 64 * KIB;

    fn config(dir: &Path, budget: u64) -> DriveConfig {
        let mut c = DriveConfig::new(dir);
        c.max_pack = 4 << 20;
        c.extent_size = EXTENT;
        c.pack_linger = Duration::from_millis(10);
        c.cache_budget = Some(budget);
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

    async fn stop(drive: Drive) {
        drive.shutdown(Duration::ZERO).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Arc::strong_count(&drive.inner) > 1 {
            assert!(Instant::now() < deadline, "drive did not stop");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

    async fn create(d: &Drive, name: &str) -> (u64, u64) {
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

    async fn write_file(d: &Drive, name: &str, bytes: &[u8]) -> u64 {
        let (ino, fh) = create(d, name).await;
        for (n, chunk) in bytes.chunks(100_000).enumerate() {
            d.write(fh, (n * 100_000) as u64, chunk)
                .await
                .expect("write");
        }
        d.flush(fh).await.expect("flush");
        d.release(fh).await.expect("release");
        // The closer's work, at once (it runs 10 ms after a release otherwise).
        d.commit_closed().await.expect("commit closed");
        ino
    }

    async fn read_fh(d: &Drive, fh: u64, size: u64, chunk: u32) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let b = d.read(fh, out.len() as u64, chunk).await?;
            if b.is_empty() {
                break;
            }
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    async fn read_file(d: &Drive, ino: u64) -> Vec<u8> {
        let size = d.getattr(ino).await.expect("getattr").size;
        let fh = d.open(ino, libc::O_RDONLY).await.expect("open");
        let out = read_fh(d, fh, size, 128 * 1024).await.expect("read");
        d.release(fh).await.expect("release");
        out
    }

    /// Allocated bytes of `cache/` as the disk sees them.
    fn disk_bytes(dir: &Path) -> u64 {
        ["files", "extents"]
            .iter()
            .filter_map(|d| std::fs::read_dir(dir.join("cache").join(d)).ok())
            .flat_map(|r| r.flatten())
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }

    fn gets(store: &MemoryStore) -> u64 {
        store.stats().gets
    }

    /// Waits until every prefetch in flight is done.
    async fn prefetch_idle(d: &Drive) {
        let p = &d.inner.prefetch;
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.budget.available_permits() < p.budget_kib as usize {
            assert!(Instant::now() < deadline, "prefetches did not finish");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn window_grows_per_extent_and_drops_on_random_access() {
        const T: u64 = super::SEQ_TOLERANCE;
        let mut s = Stream::default();
        let e = 4 << 20;
        // First read at 0, then 1 MiB reads through extents 0, 1, 2, …
        let mut windows = Vec::new();
        let mut off = 0;
        for _ in 0..(8 * 4) {
            let end = off + (1 << 20);
            windows.push(s.observe(off, end, (end - 1) / e * e, T, MAX_WINDOW));
            off = end;
        }
        assert_eq!(
            windows[..5],
            [1, 1, 1, 1, 2],
            "doubles on entering extent 1"
        );
        let per_extent: Vec<u32> = windows.iter().step_by(4).copied().collect();
        assert_eq!(per_extent, [1, 2, 4, 8, 8, 8, 8, 8]);
        // A jump far away: random, nothing is prefetched.
        let far = 900 << 20;
        assert_eq!(s.observe(far, far + 4096, far, T, MAX_WINDOW), 0);
        assert_eq!(
            s.observe(10 << 20, (10 << 20) + 4096, 8 << 20, T, MAX_WINDOW),
            0
        );
        // Sequential again from there: starts over at one extent.
        let at = (10 << 20) + 4096;
        assert_eq!(s.observe(at, at + 4096, 8 << 20, T, MAX_WINDOW), 1);
        // Slightly out of order (concurrent kernel readahead) still counts as sequential.
        assert_eq!(s.observe(at + 8192, at + 12288, 8 << 20, T, MAX_WINDOW), 1);
        assert_eq!(s.observe(at + 4096, at + 8192, 8 << 20, T, MAX_WINDOW), 1);
        // A first read that does not start at 0 is not sequential.
        let mut r = Stream::default();
        assert_eq!(
            r.observe(5 << 20, (5 << 20) + 4096, 4 << 20, T, MAX_WINDOW),
            0
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn eviction_keeps_usage_under_the_budget() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let budget = 300 * KIB;
        let store = store();
        let d = start(config(tmp.path(), budget), &store).await;
        let mut files = Vec::new();
        for n in 0..8 {
            let bytes = pattern(100 * KIB, n);
            let ino = write_file(&d, &format!("f{n}"), &bytes).await;
            d.wait_idle().await.expect("uploaded");
            let c = d.cache_counts();
            assert!(c.bytes <= budget, "{c:?}");
            assert!(disk_bytes(tmp.path()) <= budget);
            files.push((ino, bytes));
        }
        let c = d.cache_counts();
        assert!(c.evictions > 0, "{c:?}");
        assert_eq!(c.budget, budget);
        // Reading everything back (file cache, extent cache or the store) stays under it too.
        for (ino, bytes) in &files {
            assert_eq!(&read_file(&d, *ino).await, bytes);
            assert!(d.cache_counts().bytes <= budget);
            assert!(disk_bytes(tmp.path()) <= budget);
        }
        stop(d).await;
        // A smaller budget at the next start is enforced at once.
        let d = start(config(tmp.path(), 100 * KIB), &store).await;
        assert!(d.cache_counts().bytes <= 100 * KIB);
        assert!(disk_bytes(tmp.path()) <= 100 * KIB);
        for (ino, bytes) in &files {
            assert_eq!(&read_file(&d, *ino).await, bytes);
        }
        stop(d).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn evicted_data_reads_back_from_the_store() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = store();
        // Room for two extents: a 5-extent file never stays in the file cache.
        let d = start(config(tmp.path(), 2 * EXTENT), &store).await;
        let bytes = pattern(5 * EXTENT - 1000, 7);
        let ino = write_file(&d, "big", &bytes).await;
        d.wait_idle().await.expect("uploaded");
        assert!(
            !d.file_cache_path(ino, 1).exists(),
            "larger than the budget"
        );
        // A reader that opened the file cache before its eviction keeps reading it.
        let small = pattern(EXTENT / 2, 8);
        let small_ino = write_file(&d, "small", &small).await;
        d.wait_idle().await.expect("uploaded");
        let fh = d.open(small_ino, libc::O_RDONLY).await.expect("open");
        assert_eq!(d.read(fh, 0, 10).await.expect("read"), small[..10]);
        let before = gets(&store);
        assert_eq!(read_file(&d, ino).await, bytes);
        assert!(
            gets(&store) >= before + 3,
            "evicted extents come from the store"
        );
        assert!(
            !d.file_cache_path(small_ino, 1).exists(),
            "evicted meanwhile"
        );
        let rest = read_fh(&d, fh, small.len() as u64, 4096)
            .await
            .expect("read");
        assert_eq!(rest, small);
        d.release(fh).await.expect("release");
        assert_eq!(read_file(&d, small_ino).await, small);
        // Remounted (nothing hot in memory): still right, from whatever is left.
        stop(d).await;
        let d = start(config(tmp.path(), 2 * EXTENT), &store).await;
        assert_eq!(read_file(&d, ino).await, bytes);
        assert_eq!(read_file(&d, small_ino).await, small);
        assert!(d.cache_counts().bytes <= 2 * EXTENT);
        stop(d).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn staging_files_are_never_evicted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = store();
        let d = start(config(tmp.path(), EXTENT), &store).await;
        // Open for writing: stays staged (not uploaded) however full the cache gets.
        let (ino, wfh) = create(&d, "staged").await;
        let staged = pattern(300 * KIB, 1);
        d.write(wfh, 0, &staged).await.expect("write");
        d.flush(wfh).await.expect("flush");
        let mut others = Vec::new();
        for n in 0..4 {
            let bytes = pattern(3 * EXTENT, 10 + n);
            others.push((write_file(&d, &format!("o{n}"), &bytes).await, bytes));
        }
        for (ino, bytes) in &others {
            let g = d.getattr(*ino).await.expect("getattr").data_gen;
            d.wait_uploaded(*ino, g).await.expect("uploaded");
            assert_eq!(&read_file(&d, *ino).await, bytes);
        }
        assert!(d.cache_counts().evictions > 0);
        assert!(d.cache_counts().bytes <= EXTENT);
        let path = d.staging_path(ino);
        assert_eq!(std::fs::read(&path).expect("staging file is there"), staged);
        let back = read_fh(&d, wfh, staged.len() as u64, 65536)
            .await
            .expect("read");
        assert_eq!(back, staged);
        d.release(wfh).await.expect("release");
        d.wait_idle().await.expect("uploaded");
        assert_eq!(read_file(&d, ino).await, staged);
        stop(d).await;
        // Stopped with a file written and never uploaded, then started with no room at all:
        // the staging file is left alone and uploaded.
        let d = start(config(tmp.path(), 1 << 20), &store).await;
        store.fail_next_puts(1000);
        let s2 = write_file(&d, "s2", &staged).await;
        stop(d).await;
        store.fail_next_puts(0);
        let d = start(config(tmp.path(), 0), &store).await;
        assert!(d.staging_path(s2).exists());
        assert_eq!(read_file(&d, s2).await, staged);
        d.wait_idle().await.expect("uploaded");
        assert_eq!(d.cache_counts().bytes, 0);
        assert_eq!(read_file(&d, s2).await, staged);
        stop(d).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn sequential_readers_are_prefetched_and_random_ones_are_not() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = store();
        let d = start(config(tmp.path(), 64 << 20), &store).await;
        let n = 24;
        let bytes = pattern(n * EXTENT, 3);
        let ino = write_file(&d, "seq", &bytes).await;
        d.wait_idle().await.expect("uploaded");
        stop(d).await;
        std::fs::remove_dir_all(tmp.path().join("cache")).expect("remove cache");
        let d = start(config(tmp.path(), 64 << 20), &store).await;
        let before = gets(&store);
        let fh = d.open(ino, libc::O_RDONLY).await.expect("open");
        let mut windows = Vec::new();
        let mut out = Vec::new();
        while (out.len() as u64) < n * EXTENT {
            let b = d.read(fh, out.len() as u64, 16 * 1024).await.expect("read");
            out.extend_from_slice(&b);
            windows.push(d.inner.prefetch.window(fh));
        }
        assert_eq!(out, bytes);
        assert_eq!(windows[0], 1);
        assert_eq!(windows.iter().max(), Some(&MAX_WINDOW), "{windows:?}");
        assert!(
            windows.windows(2).all(|w| w[1] >= w[0]),
            "only grows: {windows:?}"
        );
        prefetch_idle(&d).await;
        // Every extent fetched exactly once: prefetches and reads share fetches.
        assert_eq!(gets(&store) - before, n);
        assert!(d.cache_counts().prefetched >= n - 2);
        // A random read drops the window.
        d.read(fh, 3 * EXTENT + 5, 100).await.expect("read");
        assert_eq!(d.inner.prefetch.window(fh), 0);
        d.release(fh).await.expect("release");
        stop(d).await;

        // A random reader of a cold file fetches only what it reads.
        std::fs::remove_dir_all(tmp.path().join("cache")).expect("remove cache");
        let d = start(config(tmp.path(), 64 << 20), &store).await;
        let before = gets(&store);
        let fh = d.open(ino, libc::O_RDONLY).await.expect("open");
        for k in [17u64, 3, 11, 20, 6] {
            let off = (k * EXTENT + 777) as usize;
            let b = d.read(fh, off as u64, 4096).await.expect("read");
            assert_eq!(b, bytes[off..off + 4096]);
        }
        prefetch_idle(&d).await;
        assert_eq!(gets(&store) - before, 5);
        assert_eq!(d.inner.prefetch.window(fh), 0);
        d.release(fh).await.expect("release");
        stop(d).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_readers_of_one_extent_fetch_it_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = store();
        let d = start(config(tmp.path(), 64 << 20), &store).await;
        let one = pattern(EXTENT - 10, 5);
        let four = pattern(4 * EXTENT, 6);
        let one_ino = write_file(&d, "one", &one).await;
        let four_ino = write_file(&d, "four", &four).await;
        d.wait_idle().await.expect("uploaded");
        stop(d).await;
        std::fs::remove_dir_all(tmp.path().join("cache")).expect("remove cache");
        let d = start(config(tmp.path(), 64 << 20), &store).await;
        let before = gets(&store);
        let readers: Vec<_> = (0..8u64)
            .map(|k| {
                let d = d.clone();
                tokio::spawn(async move {
                    let fh = d.open(one_ino, libc::O_RDONLY).await.expect("open");
                    let b = d.read(fh, k * 100, 4096).await.expect("read");
                    d.release(fh).await.expect("release");
                    b
                })
            })
            .collect();
        for (k, r) in readers.into_iter().enumerate() {
            let b = r.await.expect("reader");
            assert_eq!(b, one[k * 100..k * 100 + 4096]);
        }
        assert_eq!(gets(&store) - before, 1);
        // Eight sequential readers of one file: each extent once, prefetched or not.
        let before = gets(&store);
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move {
                    let fh = d.open(four_ino, libc::O_RDONLY).await.expect("open");
                    let b = read_fh(&d, fh, 4 * EXTENT, 32 * 1024).await.expect("read");
                    d.release(fh).await.expect("release");
                    b
                })
            })
            .collect();
        for r in readers {
            assert_eq!(r.await.expect("reader"), four);
        }
        prefetch_idle(&d).await;
        assert_eq!(gets(&store) - before, 4);
        stop(d).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn least_recently_used_goes_first_across_remounts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = store();
        let d = start(config(tmp.path(), 64 << 20), &store).await;
        let mut inos = Vec::new();
        for n in 0..3 {
            inos.push(write_file(&d, &format!("f{n}"), &pattern(EXTENT, n)).await);
            d.wait_idle().await.expect("uploaded");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        // f0 is used last; f1 is now the least recently used.
        assert_eq!(read_file(&d, inos[0]).await, pattern(EXTENT, 0));
        let size = |ino| {
            std::fs::metadata(d.file_cache_path(ino, 1))
                .map(|m| m.blocks() * 512)
                .expect("cached")
        };
        let room = size(inos[0]) + size(inos[2]);
        assert!(d.cache_counts().bytes >= room + size(inos[1]));
        stop(d).await;
        let d = start(config(tmp.path(), room), &store).await;
        assert!(d.file_cache_path(inos[0], 1).exists());
        assert!(!d.file_cache_path(inos[1], 1).exists());
        assert!(d.file_cache_path(inos[2], 1).exists());
        assert_eq!(d.cache_counts().evictions, 1);
        // Deleting a file removes its cache entry through the index.
        d.unlink(ROOT, OsStr::new("f2")).await.expect("unlink");
        assert!(!d.file_cache_path(inos[2], 1).exists());
        let key = Key::File(inos[2], 1);
        assert!(
            super::super::lock(&d.inner.cache.index)
                .lru
                .peek(&key)
                .is_none()
        );
        stop(d).await;
    }
}
