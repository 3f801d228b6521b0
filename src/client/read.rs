//! The read pipeline.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{Instrument, debug, info_span, warn};

use super::{Client, ClientError, NodeApi, NodeError};
use crate::encoding::{
    BlobId, BlobMetadataWithId, EncodingConfig, Sliver, SliverType, pair_to_shard,
};
use crate::ledger::BlobStatus;
use crate::protocol::Committee;

/// What a read took.
#[derive(Debug, Clone, Default)]
pub struct ReadStats {
    /// Primary slivers received and verified.
    pub slivers_verified: usize,
    /// Whether the range had to be decoded (some systematic sliver was slow, missing or bad).
    pub decoded: bool,
    /// Nodes that failed or lied, with what they did.
    pub failures: Vec<String>,
}

/// What reads keep between calls: verified metadata (one round trip and a Merkle check saved
/// per read of a known blob) and the last verified primary slivers (a reader going through a
/// blob in ranges smaller than a sliver would otherwise fetch and verify each sliver again for
/// every range it overlaps). Both are immutable for a blob ID, so they never go stale.
pub(super) struct ReadCache {
    metadata: std::sync::Mutex<lru::LruCache<BlobId, Arc<BlobMetadataWithId>>>,
    slivers: std::sync::Mutex<lru::LruCache<(BlobId, u16), Arc<Sliver>>>,
}

/// Verified metadata kept: at most 4096 × 64 bytes each (n = 4096).
const METADATA_CACHE_ENTRIES: usize = 64;
/// Verified primary slivers kept: a few MB each at the devnet's 100 shards.
const SLIVER_CACHE_ENTRIES: usize = 16;

impl Default for ReadCache {
    fn default() -> Self {
        let n = |v: usize| std::num::NonZeroUsize::new(v).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            metadata: std::sync::Mutex::new(lru::LruCache::new(n(METADATA_CACHE_ENTRIES))),
            slivers: std::sync::Mutex::new(lru::LruCache::new(n(SLIVER_CACHE_ENTRIES))),
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Fetch = std::pin::Pin<Box<dyn Future<Output = (u16, Result<Sliver, NodeError>)> + Send>>;
type MetadataFetch =
    std::pin::Pin<Box<dyn Future<Output = (String, Result<BlobMetadataWithId, NodeError>)> + Send>>;

fn metadata_fetch(api: NodeApi, blob_id: BlobId) -> MetadataFetch {
    Box::pin(async move { (api.url().to_string(), api.get_metadata(&blob_id).await) })
}

impl Client {
    fn sliver_node(&self, committee: &Committee, pair: u16, blob_id: &BlobId) -> Option<NodeApi> {
        let shard = pair_to_shard(pair, committee.n_shards(), blob_id);
        committee
            .shard_owner(shard)
            .and_then(|m| self.node(committee, m))
    }

    /// Fetches primary sliver `pair` and verifies it against the (verified) metadata.
    fn fetch_sliver(
        &self,
        committee: &Committee,
        config: EncodingConfig,
        metadata: Arc<BlobMetadataWithId>,
        pair: u16,
    ) -> Fetch {
        let blob_id = metadata.blob_id;
        let api = self.sliver_node(committee, pair, &blob_id);
        Box::pin(async move {
            let Some(api) = api else {
                return (
                    pair,
                    Err(NodeError::Malformed {
                        url: "<committee>".into(),
                        reason: format!("no node holds the shard of sliver pair {pair}"),
                    }),
                );
            };
            let len = config
                .sliver_len(SliverType::Primary, metadata.metadata.unencoded_length())
                .unwrap_or(0);
            let result = async {
                let sliver = api
                    .get_sliver(&blob_id, pair, SliverType::Primary, len)
                    .await?;
                if sliver.index != pair {
                    return Err(NodeError::Malformed {
                        url: api.url().to_string(),
                        reason: format!("asked for sliver {pair}, got sliver {}", sliver.index),
                    });
                }
                let url = api.url().to_string();
                // Verification re-encodes the sliver: CPU work, off the async threads.
                tokio::task::spawn_blocking(move || {
                    sliver
                        .verify(&config, &metadata.metadata)
                        .map(|()| sliver)
                        .map_err(|source| NodeError::Invalid { url, source })
                })
                .await
                .unwrap_or_else(|e| {
                    Err(NodeError::Malformed {
                        url: api.url().to_string(),
                        reason: e.to_string(),
                    })
                })
            }
            .await;
            (pair, result)
        })
    }

    /// Metadata from the first node that returns metadata matching the blob ID; asks one node
    /// at a time, moving on when one fails or is slower than the hedging delay.
    async fn fetch_metadata(
        &self,
        committee: &Committee,
        config: &EncodingConfig,
        blob_id: BlobId,
    ) -> Result<BlobMetadataWithId, ClientError> {
        let n_members = committee.n_members() as u16;
        // Start at a blob-dependent node so that readers spread over the committee.
        let first = (blob_id.bytes_mod(usize::from(n_members.max(1)))) as u16;
        let mut order: VecDeque<u16> = (0..n_members).map(|i| (first + i) % n_members).collect();
        let mut pending: FuturesUnordered<MetadataFetch> = FuturesUnordered::new();
        let mut failures = Vec::new();
        loop {
            if pending.is_empty() {
                let Some(m) = order.pop_front() else {
                    return Err(ClientError::NoMetadata { blob_id, failures });
                };
                if let Some(api) = self.node(committee, m) {
                    pending.push(metadata_fetch(api, blob_id));
                }
                continue;
            }
            tokio::select! {
                Some((url, r)) = pending.next() => match r {
                    Ok(m) if m.blob_id == blob_id => match m.verify(config) {
                        Ok(()) => return Ok(m),
                        Err(e) => {
                            warn!(%url, "metadata failed verification: {e}");
                            failures.push(format!("{url}: {e}"));
                        }
                    },
                    Ok(m) => failures.push(format!("{url}: metadata for another blob {}", m.blob_id)),
                    Err(e) => failures.push(e.to_string()),
                },
                _ = tokio::time::sleep(self.config.hedge_floor) => {
                    // Slow: ask the next node as well, keep waiting for both.
                    if let Some(m) = order.pop_front()
                        && let Some(api) = self.node(committee, m)
                    {
                        pending.push(metadata_fetch(api, blob_id));
                    }
                }
            }
        }
    }

    /// Reads `range` (the whole blob if `None`) of a certified blob, verified.
    pub async fn read(
        &self,
        blob_id: BlobId,
        range: Option<Range<u64>>,
    ) -> Result<(Vec<u8>, ReadStats), ClientError> {
        let span = info_span!("read", %blob_id);
        self.read_inner(blob_id, range).instrument(span).await
    }

    async fn read_inner(
        &self,
        blob_id: BlobId,
        range: Option<Range<u64>>,
    ) -> Result<(Vec<u8>, ReadStats), ClientError> {
        let t0 = Instant::now();
        let (status, objects, epoch) = self.status(blob_id).await?;
        match status {
            BlobStatus::Nonexistent => return Err(ClientError::BlobNotFound { blob_id }),
            s if !s.is_certified() => return Err(ClientError::BlobNotCertified { blob_id }),
            _ => {}
        }
        if let Some(end) = objects
            .iter()
            .filter(|o| o.is_certified())
            .map(|o| o.end_epoch())
            .max()
            && end <= epoch
        {
            return Err(ClientError::BlobExpired {
                blob_id,
                end_epoch: end,
                current: epoch,
            });
        }
        let committee = self.committee().await?;
        let config = EncodingConfig::new(committee.n_shards())?;
        debug!(elapsed = ?t0.elapsed(), "ledger: certified, committee read");
        let cached = lock(&self.cache.metadata).get(&blob_id).cloned();
        let metadata = match cached {
            Some(m) => m,
            None => {
                let m = Arc::new(self.fetch_metadata(&committee, &config, blob_id).await?);
                lock(&self.cache.metadata).put(blob_id, m.clone());
                m
            }
        };
        debug!(elapsed = ?t0.elapsed(), "metadata verified");
        let len = metadata.metadata.unencoded_length();
        let range = range.unwrap_or(0..len);
        let needed = config.primary_slivers_for_range(len, range.clone())?;
        let mut stats = ReadStats::default();
        if needed.is_empty() {
            return Ok((Vec::new(), stats));
        }
        let k = usize::from(config.n_primary_source_symbols());
        let n = committee.n_shards();
        let wanted: HashSet<u16> = needed.iter().map(|r| r.sliver).collect();
        let mut got: BTreeMap<u16, Arc<Sliver>> = BTreeMap::new();
        {
            let mut cache = lock(&self.cache.slivers);
            for &p in &wanted {
                if let Some(s) = cache.get(&(blob_id, p)) {
                    got.insert(p, s.clone());
                }
            }
        }

        let mut pending: FuturesUnordered<Fetch> = wanted
            .iter()
            .filter(|p| !got.contains_key(p))
            .map(|&p| self.fetch_sliver(&committee, config, metadata.clone(), p))
            .collect();
        // Further slivers to decode from if the wanted ones do not all arrive in time:
        // systematic ones first (each is a row that needs no computing), then recovery ones.
        let mut spare: VecDeque<u16> = (0..n).filter(|p| !wanted.contains(p)).collect();
        let mut failed = 0usize;
        let mut fallback = false;
        let start = Instant::now();
        let mut hedge_at = start + self.config.hedge_floor.max(self.config.request_timeout);

        loop {
            if wanted.iter().all(|p| got.contains_key(p)) {
                let mut out = Vec::with_capacity((range.end - range.start) as usize);
                debug!(elapsed = ?t0.elapsed(), slivers = got.len(), "slivers verified");
                for r in &needed {
                    out.extend_from_slice(&got[&r.sliver].data[r.in_sliver.clone()]);
                }
                debug!(elapsed = ?t0.elapsed(), "range assembled");
                stats.slivers_verified = got.len();
                return Ok((out, stats));
            }
            if got.len() >= k {
                debug!(
                    slivers = got.len(),
                    "decoding the blob from primary slivers"
                );
                let slivers: Vec<Sliver> = got
                    .into_values()
                    .map(|s| Arc::try_unwrap(s).unwrap_or_else(|s| (*s).clone()))
                    .collect();
                stats.slivers_verified = slivers.len();
                stats.decoded = true;
                let md = metadata.clone();
                let blob = tokio::task::spawn_blocking(move || {
                    config.decode_verified(&md.metadata, slivers)
                })
                .await??;
                return Ok((
                    blob[range.start as usize..range.end as usize].to_vec(),
                    stats,
                ));
            }
            if fallback {
                // Keep enough fetches in flight to reach k verified slivers.
                while pending.len() + got.len() < k + failed.min(k / 4)
                    && pending.len() < self.config.read_concurrency
                {
                    let Some(p) = spare.pop_front() else { break };
                    pending.push(self.fetch_sliver(&committee, config, metadata.clone(), p));
                }
            }
            if pending.is_empty() {
                return Err(ClientError::NotEnoughSlivers {
                    blob_id,
                    valid: got.len(),
                    needed: k,
                    failures: stats.failures,
                });
            }
            tokio::select! {
                Some((pair, result)) = pending.next() => match result {
                    Ok(sliver) => {
                        if got.is_empty() && !fallback {
                            // Hedge once the wanted slivers take twice as long as the first one.
                            hedge_at = Instant::now().max(start + 2 * start.elapsed()).max(start + self.config.hedge_floor);
                        }
                        let sliver = Arc::new(sliver);
                        if wanted.contains(&pair) {
                            lock(&self.cache.slivers).put((blob_id, pair), sliver.clone());
                        }
                        got.insert(pair, sliver);
                    }
                    Err(e) => {
                        if matches!(e, NodeError::Invalid { .. } | NodeError::Malformed { .. }) {
                            warn!(pair, "bad sliver: {e}");
                        } else {
                            debug!(pair, "sliver fetch failed: {e}");
                        }
                        stats.failures.push(e.to_string());
                        failed += 1;
                        fallback = true;
                    }
                },
                _ = tokio::time::sleep_until(hedge_at.into()), if !fallback => {
                    debug!("wanted slivers are slow; fetching others to decode from");
                    fallback = true;
                }
            }
        }
    }
}
