//! Compaction of packed blobs: when files sharing a blob are deleted or rewritten, the blob
//! keeps its full size (and cost) for the bytes still referenced. A blob whose live share
//! falls below `DriveConfig::compact_threshold` has its live extents re-packed into a new
//! blob (with other such blobs, up to `max_pack`); the extents are repointed in one
//! transaction that checks each is still what was copied, and the old blob, no longer
//! referenced, goes to `dead_blobs` and is deleted by the uploader.
//!
//! Runs in the uploader's task (`upload.rs`), so it never races an upload commit or the
//! deletion of dead blobs. Extents keep their BLAKE3 hash, so cached copies stay valid and a
//! reader that looked up the old extent gets the same bytes from the cache.

use std::collections::HashMap;

use tracing::{debug, info};

use super::Drive;
use super::error::FsResult;
use super::meta::{self, Extent, Ino};
use crate::encoding::BlobId;

/// A blob worth compacting.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    blob_id: BlobId,
    size: u64,
    live: u64,
}

/// An extent to move: who references it and where its bytes are now.
#[derive(Debug, Clone)]
struct Moving {
    ino: Ino,
    extent: Extent,
}

impl Drive {
    /// Blobs of ours whose live bytes are below the threshold share of their size, least
    /// live first.
    fn compaction_candidates(&self) -> FsResult<Vec<Candidate>> {
        let threshold = self.inner.config.compact_threshold;
        self.read_db(|c| {
            // Identical content in several files points at the same bytes: count them once.
            let mut stmt = c.prepare_cached(
                "SELECT b.blob_id, b.size, SUM(x.len) FROM blobs b JOIN
                    (SELECT DISTINCT blob_id, blob_off, len FROM extents) x
                    ON x.blob_id = b.blob_id
                 WHERE b.owner IS NULL AND b.size > 0
                 GROUP BY b.blob_id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, u64>(1)?,
                    r.get::<_, u64>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, size, live) = row?;
                let Ok(id) = <[u8; 32]>::try_from(id) else {
                    continue;
                };
                if (live as f64) < threshold * size as f64 {
                    out.push(Candidate {
                        blob_id: BlobId(id),
                        size,
                        live,
                    });
                }
            }
            out.sort_by_key(|c| c.live);
            Ok(out)
        })
    }

    /// Compacts one group of blobs whose live share is below the threshold into one new
    /// blob. Returns whether it did (more may be due).
    pub(super) async fn compact_once(&self) -> FsResult<bool> {
        let candidates = self.compaction_candidates()?;
        if candidates.is_empty() {
            return Ok(false);
        }
        let max = self
            .inner
            .config
            .max_pack
            .min(self.inner.store.max_blob_size().await?)
            .max(1);
        let mut group = Vec::new();
        let mut live = 0u64;
        for c in candidates {
            if !group.is_empty() && live.saturating_add(c.live) > max {
                break;
            }
            if c.live > max {
                // A blob larger than the pack size now (max_pack lowered): its extents fit
                // no single new blob; leave it.
                continue;
            }
            live += c.live;
            group.push(c);
        }
        if group.is_empty() {
            return Ok(false);
        }
        let old: Vec<BlobId> = group.iter().map(|c| c.blob_id).collect();
        let moving: Vec<Moving> = self.read_db(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT ino, file_off, len, blob_id, blob_off, hash FROM extents
                 WHERE blob_id = ?1 ORDER BY blob_off, ino, file_off",
            )?;
            let mut out = Vec::new();
            for id in &old {
                let rows = stmt.query_map([&id.0[..]], |r| {
                    let hash: Vec<u8> = r.get(5)?;
                    Ok((r.get::<_, Ino>(0)?, r.get(1)?, r.get(2)?, r.get(4)?, hash))
                })?;
                for row in rows {
                    let (ino, file_off, len, blob_off, hash) = row?;
                    let Ok(hash) = <[u8; 32]>::try_from(hash) else {
                        continue;
                    };
                    out.push(Moving {
                        ino,
                        extent: Extent {
                            file_off,
                            len,
                            blob_id: *id,
                            blob_off,
                            hash,
                        },
                    });
                }
            }
            Ok(out)
        })?;
        // Copy each distinct extent once, verified (by its hash) on the way.
        let mut buf: Vec<u8> = Vec::with_capacity(usize::try_from(live).unwrap_or(0));
        let mut placed: HashMap<(BlobId, u64, u64, [u8; 32]), u64> = HashMap::new();
        for m in &moving {
            let e = &m.extent;
            let key = (e.blob_id, e.blob_off, e.len, e.hash);
            if placed.contains_key(&key) {
                continue;
            }
            let bytes = self.extent_bytes(m.ino, e).await?;
            placed.insert(key, buf.len() as u64);
            buf.extend_from_slice(&bytes);
        }
        if buf.is_empty() {
            return Ok(false);
        }
        let new_size = buf.len() as u64;
        let stored = self.store_blob(buf).await?;
        let new_id = stored.blob_id;
        let moved = self.txn(|tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE extents SET blob_id = ?1, blob_off = ?2
                 WHERE ino = ?3 AND file_off = ?4 AND len = ?5 AND blob_id = ?6
                   AND blob_off = ?7 AND hash = ?8",
            )?;
            let mut moved = 0usize;
            for m in &moving {
                let e = &m.extent;
                let Some(&at) = placed.get(&(e.blob_id, e.blob_off, e.len, e.hash)) else {
                    continue;
                };
                // An extent changed or deleted since it was copied is left alone.
                moved += stmt.execute(rusqlite::params![
                    &new_id.0[..],
                    at,
                    m.ino,
                    e.file_off,
                    e.len,
                    &e.blob_id.0[..],
                    e.blob_off,
                    &e.hash[..]
                ])?;
            }
            let mut check = old.clone();
            check.push(new_id);
            meta::mark_dead_if_unreferenced(tx, &check)?;
            if moved > 0 {
                tx.prepare_cached("DELETE FROM dead_blobs WHERE blob_id = ?1")?
                    .execute([&new_id.0[..]])?;
            }
            Ok(moved)
        })?;
        let old_bytes: u64 = group.iter().map(|c| c.size).sum();
        info!(
            blobs = group.len(),
            old_bytes,
            new_blob = %new_id,
            new_bytes = new_size,
            extents = moved,
            "compacted blobs with little live data"
        );
        debug!(old = ?old, "compacted blobs queued for deletion");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::super::*;
    use crate::blobstore::MemoryStore;
    use crate::encoding::BlobId;

    const KIB: usize = 1024;

    fn config(dir: &std::path::Path) -> DriveConfig {
        let mut c = DriveConfig::new(dir);
        c.max_pack = 256 * KIB as u64;
        c.extent_size = 64 * KIB as u64;
        c.pack_linger = Duration::from_millis(10);
        c.compact_interval = Duration::ZERO;
        c
    }

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

    async fn write_file(d: &Drive, name: &str, bytes: &[u8]) -> Ino {
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
            .unwrap();
        d.write(fh, 0, bytes).await.unwrap();
        d.flush(fh).await.unwrap();
        d.release(fh).await.unwrap();
        i.ino
    }

    async fn read_all(d: &Drive, ino: Ino) -> Vec<u8> {
        let size = d.getattr(ino).await.unwrap().size;
        let fh = d.open(ino, libc::O_RDONLY).await.unwrap();
        let mut out = Vec::new();
        while (out.len() as u64) < size {
            let c = d.read(fh, out.len() as u64, 65_536).await.unwrap();
            if c.is_empty() {
                break;
            }
            out.extend_from_slice(&c);
        }
        d.release(fh).await.unwrap();
        out
    }

    fn blobs_of(d: &Drive, ino: Ino) -> Vec<BlobId> {
        let mut v: Vec<BlobId> = d
            .read_db(|c| meta::extents(c, ino))
            .unwrap()
            .iter()
            .map(|e| e.blob_id)
            .collect();
        v.dedup();
        v
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Four files share a blob; three are deleted. The blob (25% live) is compacted: the
    /// survivor moves to a new, smaller blob, the old one is deleted from the store, and the
    /// survivor reads back the same bytes, also after a remount with no cache.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_mostly_dead_blob_is_compacted_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new(10).unwrap());
        let mut cfg = config(dir.path());
        // No compaction until the files are in place.
        cfg.compact_threshold = 0.0;
        let d = Drive::start(cfg, store.clone() as Arc<dyn BlobStore>)
            .await
            .unwrap();
        let data: Vec<Vec<u8>> = (0..4).map(|i| pattern(40 * KIB, i)).collect();
        let mut inos = Vec::new();
        for (i, b) in data.iter().enumerate() {
            inos.push(write_file(&d, &format!("f{i}"), b).await);
        }
        d.wait_idle().await.unwrap();
        let old = blobs_of(&d, inos[0]);
        assert_eq!(old.len(), 1);
        for &ino in &inos {
            assert_eq!(blobs_of(&d, ino), old, "the four files share one blob");
        }
        for i in 1..4 {
            d.unlink(ROOT, OsStr::new(&format!("f{i}"))).await.unwrap();
        }
        d.shutdown(Duration::ZERO).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Arc::strong_count(&d.inner) > 1 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(d);

        let puts_before = store.stats().puts;
        let d = Drive::start(config(dir.path()), store.clone() as Arc<dyn BlobStore>)
            .await
            .unwrap();
        let survivor = inos[0];
        eventually("compaction", || blobs_of(&d, survivor) != old).await;
        let new = blobs_of(&d, survivor);
        assert_eq!(new.len(), 1);
        eventually("the old blob deleted", || !store.contains(&old[0])).await;
        assert_eq!(store.stats().puts, puts_before + 1, "one new blob");
        let size = store.stored(&new[0]).unwrap().size;
        assert_eq!(size, 40 * KIB as u64, "only the live bytes were re-packed");
        assert_eq!(read_all(&d, survivor).await, data[0]);
        // Nothing more to do: a fully live blob is left alone.
        assert!(!d.compact_once().await.unwrap());
        d.shutdown(Duration::ZERO).await;
        while Arc::strong_count(&d.inner) > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(d);
        std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
        let d = Drive::start(config(dir.path()), store.clone() as Arc<dyn BlobStore>)
            .await
            .unwrap();
        assert_eq!(
            read_all(&d, survivor).await,
            data[0],
            "read from the new blob"
        );
        d.shutdown(Duration::ZERO).await;
    }

    /// Blobs above the threshold stay, and a blob nothing references is left to the
    /// garbage collector, not compacted.
    #[tokio::test(flavor = "multi_thread")]
    async fn live_blobs_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryStore::new(10).unwrap());
        let mut cfg = config(dir.path());
        cfg.compact_threshold = 0.0;
        let d = Drive::start(cfg, store.clone() as Arc<dyn BlobStore>)
            .await
            .unwrap();
        let a = write_file(&d, "a", &pattern(60 * KIB, 1)).await;
        let b = write_file(&d, "b", &pattern(40 * KIB, 2)).await;
        d.wait_idle().await.unwrap();
        assert_eq!(blobs_of(&d, a), blobs_of(&d, b));
        // 60% live after deleting b: above the 50% threshold.
        d.unlink(ROOT, OsStr::new("b")).await.unwrap();
        assert!(d.compaction_candidates().unwrap().is_empty());
        // Rewrite a (new content, new blob) and drop below: the old blob is dead, not
        // a candidate (nothing live to move).
        let fh = d.open(a, libc::O_RDWR | libc::O_TRUNC).await.unwrap();
        d.setattr(
            a,
            SetAttr {
                size: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        d.write(fh, 0, &pattern(10 * KIB, 3)).await.unwrap();
        d.fsync(fh).await.unwrap();
        d.release(fh).await.unwrap();
        assert!(d.compaction_candidates().unwrap().is_empty());
        assert_eq!(read_all(&d, a).await, pattern(10 * KIB, 3));
        d.shutdown(Duration::ZERO).await;
    }
}
