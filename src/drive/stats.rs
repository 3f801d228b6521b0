//! Figures about a running drive for `walrusfs status` and the metrics endpoint: where reads
//! were served from, bytes read and written, blobs nearing their end epoch, cache size.
//!
//! Counters are plain relaxed atomics bumped on the read and write paths; they only ever grow
//! and are reset when the drive stops.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Drive;
use super::error::FsResult;

/// Where a read was served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadSource {
    /// The staging file of a file being written or waiting for upload.
    Staging,
    /// The file cache (`cache/files`): a clean file's content kept after upload.
    FileCache,
    /// One extent from the extent cache (`cache/extents`).
    ExtentCache,
    /// One extent fetched from the network.
    Network,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    staging: AtomicU64,
    file_cache: AtomicU64,
    extent_cache: AtomicU64,
    network: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl Counters {
    pub(super) fn read_from(&self, source: ReadSource) {
        let c = match source {
            ReadSource::Staging => &self.staging,
            ReadSource::FileCache => &self.file_cache,
            ReadSource::ExtentCache => &self.extent_cache,
            ReadSource::Network => &self.network,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn bytes_read(&self, n: usize) {
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn bytes_written(&self, n: usize) {
        self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Reads and bytes since the drive started. A read of a clean file counts once per extent
/// it touches (each extent comes from the extent cache or the network).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    pub staging: u64,
    pub file_cache: u64,
    pub extent_cache: u64,
    pub network: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl ReadCounts {
    /// The share of reads served locally (staging, file cache, extent cache); `None` before
    /// the first read.
    pub fn hit_rate(&self) -> Option<f64> {
        let local = self.staging + self.file_cache + self.extent_cache;
        let total = local + self.network;
        (total > 0).then(|| local as f64 / total as f64)
    }
}

/// Blobs of the drive whose end epoch is at or before some epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expiring {
    pub blobs: u64,
    pub bytes: u64,
    /// The earliest end epoch among them.
    pub first_end_epoch: Option<u64>,
}

/// A blob holding file data that is at risk: its storage ends within the renewal margin and
/// was not extended yet (the network refused, or the drive was not mounted), or it has
/// already expired (the files using it read as EIO where it held their bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtRisk {
    pub blob_id: crate::encoding::BlobId,
    pub end_epoch: u64,
    pub expired: bool,
    /// Bytes of files it holds.
    pub live_bytes: u64,
    /// Some paths of files using it (at most the limit asked for), relative to the root.
    pub files: Vec<String>,
    /// How many files use it in all.
    pub file_count: u64,
}

/// A path of `ino` from the drive's root (`/dir/name`), by its directory entries; `None` for
/// an inode no entry names (unlinked while open).
pub(super) fn path_of(c: &rusqlite::Connection, ino: super::Ino) -> FsResult<Option<String>> {
    use rusqlite::OptionalExtension as _;
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut at = ino;
    // Depth is bounded by the directory tree; the bound only guards against a damaged one.
    for _ in 0..4096 {
        if at == super::ROOT {
            let mut out = Vec::new();
            for p in parts.iter().rev() {
                out.push(b'/');
                out.extend_from_slice(p);
            }
            if out.is_empty() {
                out.push(b'/');
            }
            return Ok(Some(String::from_utf8_lossy(&out).into_owned()));
        }
        let Some((parent, name)) = c
            .prepare_cached("SELECT parent, name FROM dentries WHERE ino = ?1 LIMIT 1")?
            .query_row([at], |r| Ok((r.get::<_, u64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .optional()?
        else {
            return Ok(None);
        };
        parts.push(name);
        at = parent;
    }
    Ok(None)
}

/// Paths of up to `limit` files whose extents point into `blob_id`.
pub(super) fn files_using(
    c: &rusqlite::Connection,
    blob_id: &crate::encoding::BlobId,
    limit: usize,
) -> FsResult<Vec<String>> {
    let inos: Vec<super::Ino> = c
        .prepare_cached(
            "SELECT DISTINCT ino FROM extents WHERE blob_id = ?1 ORDER BY ino LIMIT ?2",
        )?
        .query_map(
            rusqlite::params![&blob_id.0[..], i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for ino in inos {
        out.push(path_of(c, ino)?.unwrap_or_else(|| format!("(unlinked inode {ino})")));
    }
    Ok(out)
}

impl Drive {
    /// Blobs holding file data at risk at `epoch` (see [`AtRisk`]): end epoch at most
    /// `epoch + margin` (the uploader extends those; one still there was not extended), or
    /// expired. Up to `limit` blobs, earliest end first, each with up to `limit` paths.
    pub fn blobs_at_risk(&self, epoch: u64, margin: u64, limit: usize) -> FsResult<Vec<AtRisk>> {
        let by = i64::try_from(epoch.saturating_add(margin)).unwrap_or(i64::MAX);
        self.read_db(|c| {
            let rows: Vec<(Vec<u8>, u64, u64, u64)> = c
                .prepare_cached(
                    "SELECT b.blob_id, b.end_epoch, SUM(e.len), COUNT(DISTINCT e.ino)
                     FROM blobs b JOIN extents e ON e.blob_id = b.blob_id
                     WHERE b.end_epoch <= ?1
                     GROUP BY b.blob_id ORDER BY b.end_epoch LIMIT ?2",
                )?
                .query_map(
                    rusqlite::params![by, i64::try_from(limit).unwrap_or(i64::MAX)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::new();
            for (id, end_epoch, live_bytes, file_count) in rows {
                let Ok(id) = <[u8; 32]>::try_from(id) else {
                    continue;
                };
                let blob_id = crate::encoding::BlobId(id);
                out.push(AtRisk {
                    blob_id,
                    end_epoch,
                    expired: end_epoch <= epoch,
                    live_bytes,
                    files: files_using(c, &blob_id, limit)?,
                    file_count,
                });
            }
            Ok(out)
        })
    }

    /// Reads and bytes since the drive started.
    pub fn read_counts(&self) -> ReadCounts {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReadCounts {
            staging: get(&c.staging),
            file_cache: get(&c.file_cache),
            extent_cache: get(&c.extent_cache),
            network: get(&c.network),
            bytes_read: get(&c.bytes_read),
            bytes_written: get(&c.bytes_written),
        }
    }

    /// Blobs this drive stored whose end epoch is `epoch` or earlier (they stop being stored
    /// when that epoch begins).
    pub fn blobs_ending_by(&self, epoch: u64) -> FsResult<Expiring> {
        let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
        self.read_db(|c| {
            let (blobs, bytes, first): (u64, u64, Option<u64>) = c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(end_epoch) FROM blobs
                 WHERE end_epoch <= ?1",
                [epoch],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok(Expiring {
                blobs,
                bytes,
                first_end_epoch: first,
            })
        })
    }

    /// Bytes the caches (`cache/files` and `cache/extents`) take on the local disk
    /// (allocated blocks, so sparse files count what they really use), from the cache's
    /// index (`cache.rs`): no directory scan.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_counts().bytes
    }

    /// Bytes the caches may take before the least recently used entries are evicted.
    pub fn cache_budget(&self) -> u64 {
        self.cache_counts().budget
    }

    /// Bytes staged files take on the local disk.
    pub fn staging_bytes(&self) -> u64 {
        dir_bytes(&self.inner.staging_dir)
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_rate_counts_local_reads() {
        assert_eq!(ReadCounts::default().hit_rate(), None);
        let c = ReadCounts {
            staging: 1,
            file_cache: 1,
            extent_cache: 1,
            network: 1,
            ..Default::default()
        };
        assert_eq!(c.hit_rate(), Some(0.75));
    }
}
