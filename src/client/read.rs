//! The read pipeline.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{Instrument, debug, info_span, warn};

use super::{Client, ClientError, NodeApi, NodeError};
use crate::encoding::{
    BlobId, BlobMetadataWithId, EncodingConfig, EncodingError, Sliver, SliverRange, SliverType,
    SliverView, pair_to_shard,
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

/// How fast a blob is decoded from primary slivers, roughly (`examples/bench_encoding --ops
/// decode`: about 100 MB/s on one core at n = 1000, whether one row is missing or most are),
/// to weigh hedging against waiting.
pub(super) const DECODE_BYTES_PER_SEC: f64 = 1e8;

/// A blob's primary sliver.
type SliverKey = (BlobId, u16);

/// What reads keep between calls: verified metadata (one round trip and a Merkle check saved
/// per read of a known blob) and the last verified primary slivers (a reader going through a
/// blob in ranges smaller than a sliver would otherwise fetch and verify each sliver again for
/// every range it overlaps). Both are immutable for a blob ID, so they never go stale.
pub(super) struct ReadCache {
    metadata: std::sync::Mutex<lru::LruCache<BlobId, Arc<BlobMetadataWithId>>>,
    /// Symbols of verified primary slivers.
    slivers: std::sync::Mutex<SliverCache>,
}

/// Verified metadata kept: at most 4096 × 64 bytes each (n = 4096).
const METADATA_CACHE_ENTRIES: usize = 64;
/// Verified primary slivers kept, in bytes: 8 slivers at the devnet's 100 shards. Bounded by
/// bytes, not entries: a sliver of a large blob is up to 41 MB at 1000 shards.
const SLIVER_CACHE_BYTES: usize = 16 << 20;

/// The last verified primary slivers, least recently used first out, under
/// [`SLIVER_CACHE_BYTES`].
pub(super) struct SliverCache {
    lru: lru::LruCache<SliverKey, Arc<[u8]>>,
    bytes: usize,
}

impl SliverCache {
    fn get(&mut self, key: &SliverKey) -> Option<&Arc<[u8]>> {
        self.lru.get(key)
    }

    fn put(&mut self, key: SliverKey, sliver: Arc<[u8]>) {
        if sliver.len() > SLIVER_CACHE_BYTES {
            return;
        }
        self.bytes += sliver.len();
        if let Some(old) = self.lru.put(key, sliver) {
            self.bytes -= old.len();
        }
        while self.bytes > SLIVER_CACHE_BYTES {
            let Some((_, old)) = self.lru.pop_lru() else {
                break;
            };
            self.bytes -= old.len();
        }
    }
}

impl Default for ReadCache {
    fn default() -> Self {
        let n = |v: usize| std::num::NonZeroUsize::new(v).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            metadata: std::sync::Mutex::new(lru::LruCache::new(n(METADATA_CACHE_ENTRIES))),
            slivers: std::sync::Mutex::new(SliverCache {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A finished sliver request: the sliver pair, how long the transfer took (without waiting for
/// and doing the verification), and the verified sliver or what went wrong.
struct Fetched {
    pair: u16,
    transfer: Duration,
    result: Result<Received, NodeError>,
}

/// A verified primary sliver.
enum Received {
    /// A wanted sliver, received and verified in its place in the blob's buffer.
    InPlace(BytesMut),
    /// Any other sliver (to decode from).
    Owned(Sliver),
}

type Fetch = std::pin::Pin<Box<dyn Future<Output = Fetched> + Send>>;
type MetadataFetch =
    std::pin::Pin<Box<dyn Future<Output = (String, Result<BlobMetadataWithId, NodeError>)> + Send>>;

fn metadata_fetch(api: NodeApi, blob_id: BlobId) -> MetadataFetch {
    Box::pin(async move { (api.url().to_string(), api.get_metadata(&blob_id).await) })
}

/// Runs a sliver verification on rayon's pool: one thread per core, so verifications never
/// outnumber the cores (more would only evict each other's few MB of working set from the
/// caches), and the same few threads reuse their verification buffers from sliver to sliver.
pub(super) async fn verify_off_thread<T: Send + 'static>(
    url: &str,
    verify: impl FnOnce() -> Result<T, EncodingError> + Send + 'static,
) -> Result<T, NodeError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        // A panic must not take rayon's pool (and the process) down: it becomes an error.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(verify));
        let _ = tx.send(result);
    });
    match rx.await {
        Ok(Ok(result)) => result.map_err(|source| NodeError::Invalid {
            url: url.to_string(),
            source,
        }),
        Ok(Err(_)) | Err(_) => Err(NodeError::Malformed {
            url: url.to_string(),
            reason: "sliver verification failed unexpectedly (a bug: see the log)".into(),
        }),
    }
}

/// Asks the kernel to back the 2 MiB-aligned part of `buf` with transparent huge pages. The
/// buffer a read receives slivers into is fresh memory, touched first when a sliver is copied
/// in: with 4 KiB pages that was a page fault (and a page to zero, charge and later unmap) per
/// 4 KiB, about a third of the client's CPU time for a 64 MiB blob. Only a hint: with THP
/// disabled, or no huge page free, the kernel uses small pages as before.
pub(super) fn prefer_huge_pages(buf: &mut [u8]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (buf.as_mut_ptr() as usize).next_multiple_of(HUGE);
        let end = (buf.as_mut_ptr() as usize + buf.len()) & !(HUGE - 1);
        if end > start {
            // SAFETY: the range lies inside `buf` (borrowed mutably, so no one else uses it);
            // MADV_HUGEPAGE changes how the kernel backs these pages, never their contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

pub(super) fn no_node(pair: u16) -> NodeError {
    NodeError::Malformed {
        url: "<committee>".into(),
        reason: format!("no node holds the shard of sliver pair {pair}"),
    }
}

impl Client {
    pub(super) fn sliver_node(
        &self,
        committee: &Committee,
        pair: u16,
        blob_id: &BlobId,
    ) -> Option<NodeApi> {
        let shard = pair_to_shard(pair, committee.n_shards(), blob_id);
        committee
            .shard_owner(shard)
            .and_then(|m| self.node(committee, m))
    }

    /// Fetches primary sliver `pair` into `piece` (its place in the blob's buffer, exactly one
    /// sliver long) and verifies it there against the (verified) metadata.
    fn fetch_sliver_into(
        &self,
        committee: &Committee,
        config: EncodingConfig,
        metadata: Arc<BlobMetadataWithId>,
        pair: u16,
        mut piece: BytesMut,
    ) -> Fetch {
        let blob_id = metadata.blob_id;
        let api = self.sliver_node(committee, pair, &blob_id);
        Box::pin(async move {
            let t = Instant::now();
            let Some(api) = api else {
                return Fetched {
                    pair,
                    transfer: t.elapsed(),
                    result: Err(no_node(pair)),
                };
            };
            let received = api
                .get_sliver_into(&blob_id, pair, SliverType::Primary, &mut piece)
                .await;
            let transfer = t.elapsed();
            let result = async {
                let (symbol_size, index) = received?;
                if index != pair {
                    return Err(NodeError::Malformed {
                        url: api.url().to_string(),
                        reason: format!("asked for sliver {pair}, got sliver {index}"),
                    });
                }
                verify_off_thread(api.url(), move || {
                    SliverView {
                        sliver_type: SliverType::Primary,
                        index,
                        symbol_size,
                        data: &piece,
                    }
                    .verify(&config, &metadata.metadata)
                    .map(|()| Received::InPlace(piece))
                })
                .await
            }
            .await;
            Fetched {
                pair,
                transfer,
                result,
            }
        })
    }

    /// Fetches primary sliver `pair` into a buffer of its own and verifies it against the
    /// (verified) metadata.
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
            let t = Instant::now();
            let Some(api) = api else {
                return Fetched {
                    pair,
                    transfer: t.elapsed(),
                    result: Err(no_node(pair)),
                };
            };
            let len = config
                .sliver_len(SliverType::Primary, metadata.metadata.unencoded_length())
                .unwrap_or(0);
            let received = api
                .get_sliver(&blob_id, pair, SliverType::Primary, len)
                .await;
            let transfer = t.elapsed();
            let result = async {
                let sliver = received?;
                if sliver.index != pair {
                    return Err(NodeError::Malformed {
                        url: api.url().to_string(),
                        reason: format!("asked for sliver {pair}, got sliver {}", sliver.index),
                    });
                }
                verify_off_thread(api.url(), move || {
                    sliver
                        .verify(&config, &metadata.metadata)
                        .map(|()| Received::Owned(sliver))
                })
                .await
            }
            .await;
            Fetched {
                pair,
                transfer,
                result,
            }
        })
    }

    /// Metadata from the first node that returns metadata matching the blob ID; asks one node
    /// at a time, moving on when one fails or is slower than the hedging delay.
    pub(super) async fn fetch_metadata(
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

    /// The unencoded length of a blob that can be read: certified and not expired, as the
    /// ledger says.
    pub(super) async fn readable_len(&self, blob_id: BlobId) -> Result<u64, ClientError> {
        let (status, objects, epoch) = self.status(blob_id).await?;
        match status {
            BlobStatus::Nonexistent => return Err(ClientError::BlobNotFound { blob_id }),
            s if !s.is_certified() => return Err(ClientError::BlobNotCertified { blob_id }),
            _ => {}
        }
        let certified = || objects.iter().filter(|o| o.is_certified());
        if let Some(end) = certified().map(|o| o.end_epoch()).max()
            && end <= epoch
        {
            return Err(ClientError::BlobExpired {
                blob_id,
                end_epoch: end,
                current: epoch,
            });
        }
        // Every object of one blob ID has the same size: the ID commits to it.
        certified()
            .map(|o| o.size)
            .next()
            .ok_or(ClientError::BlobNotCertified { blob_id })
    }

    pub(super) fn cached_metadata(&self, blob_id: &BlobId) -> Option<Arc<BlobMetadataWithId>> {
        lock(&self.cache.metadata).get(blob_id).cloned()
    }

    pub(super) fn remember_metadata(&self, blob_id: BlobId, m: Arc<BlobMetadataWithId>) {
        lock(&self.cache.metadata).put(blob_id, m);
    }

    /// Hedging: how long a sliver request may take before it is presumed lost. Four times
    /// the median of the `transfers` so far (the request timeout before any transfer
    /// finished), but no less than the hedging floor and `decode_time`, what decoding instead
    /// would take. The median, not the fastest: with requests pipelined, the first transfer
    /// has the wire to itself and later ones do not, and on a busy machine transfers vary a
    /// lot without any node being at fault.
    pub(super) fn late_after(&self, transfers: &mut [Duration], decode_time: Duration) -> Duration {
        if transfers.is_empty() {
            self.config.request_timeout
        } else {
            let mid = transfers.len() / 2;
            4 * *transfers.select_nth_unstable(mid).1
        }
        .max(self.config.hedge_floor)
        .max(decode_time)
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
        // The codec's tables take a few ms to build, once per process: built on another core
        // while the ledger and the metadata are read, not when the first sliver is verified.
        rayon::spawn(crate::encoding::prepare_codec);
        self.readable_len(blob_id).await?;
        let committee = self.committee().await?;
        let config = EncodingConfig::new(committee.n_shards())?;
        debug!(elapsed = ?t0.elapsed(), "ledger: certified, committee read");
        let metadata = match self.cached_metadata(&blob_id) {
            Some(m) => m,
            None => {
                let m = Arc::new(self.fetch_metadata(&committee, &config, blob_id).await?);
                self.remember_metadata(blob_id, m.clone());
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
        let sliver_len = config.sliver_len(SliverType::Primary, len)?;
        // The wanted slivers are consecutive rows of the blob: received side by side into one
        // buffer, in place, they are the range without any further copy.
        let first = needed[0].sliver;
        let wanted: Vec<u16> = needed.iter().map(|r| r.sliver).collect();
        let is_wanted = |p: u16| p >= first && usize::from(p - first) < wanted.len();
        let mut pieces: Vec<Option<BytesMut>> = Vec::with_capacity(wanted.len());
        {
            let mut rest = BytesMut::zeroed(wanted.len() * sliver_len);
            prefer_huge_pages(&mut rest);
            for _ in 1..wanted.len() {
                pieces.push(Some(rest.split_to(sliver_len)));
            }
            pieces.push(Some(rest));
        }
        // Slivers verified in place, by position in `wanted`.
        let mut done: Vec<Option<BytesMut>> = (0..wanted.len()).map(|_| None).collect();
        let mut n_done = 0usize;
        {
            let mut cache = lock(&self.cache.slivers);
            for (i, &p) in wanted.iter().enumerate() {
                if let Some(s) = cache.get(&(blob_id, p))
                    && s.len() == sliver_len
                    && let Some(mut piece) = pieces[i].take()
                {
                    piece.copy_from_slice(s);
                    done[i] = Some(piece);
                    n_done += 1;
                }
            }
        }
        // Verified slivers other than the wanted ones, to decode from.
        let mut extra: BTreeMap<u16, Sliver> = BTreeMap::new();
        let mut todo: VecDeque<u16> = wanted
            .iter()
            .enumerate()
            .filter(|(i, _)| pieces[*i].is_some())
            .map(|(_, &p)| p)
            .collect();
        // Further slivers to decode from if the wanted ones do not all arrive in time:
        // systematic ones first (each is a row that needs no computing), then recovery ones.
        let mut spare: VecDeque<u16> = (0..n).filter(|&p| !is_wanted(p)).collect();
        let mut pending: FuturesUnordered<Fetch> = FuturesUnordered::new();
        // Requests in flight and when they started; those older than the hedging delay are
        // presumed lost (a slow or stalled node) and replaced by spare slivers.
        let mut started: HashMap<u16, Instant> = HashMap::new();
        // Transfer times so far, to judge which requests are late.
        let mut transfers: Vec<Duration> = Vec::with_capacity(wanted.len());
        // Giving up on a late sliver means decoding the blob, which costs about ten seconds
        // per GiB: waiting that long for the sliver is no worse.
        let decode_time = Duration::from_secs_f64(len as f64 / DECODE_BYTES_PER_SEC);
        let mut failed = 0usize;
        let mut fallback = false;

        loop {
            if n_done == wanted.len() {
                debug!(elapsed = ?t0.elapsed(), slivers = n_done, "slivers verified");
                stats.slivers_verified = n_done;
                let out = self.assemble(blob_id, &needed, sliver_len, done, range);
                debug!(elapsed = ?t0.elapsed(), "range assembled");
                return Ok((out, stats));
            }
            if n_done + extra.len() >= k {
                debug!(
                    slivers = n_done + extra.len(),
                    "decoding the blob from primary slivers"
                );
                let mut slivers: Vec<Sliver> = extra.into_values().collect();
                for (i, piece) in done.into_iter().enumerate() {
                    if let Some(piece) = piece {
                        slivers.push(Sliver {
                            sliver_type: SliverType::Primary,
                            index: wanted[i],
                            symbol_size: config.symbol_size(len)?,
                            data: piece.to_vec(),
                        });
                    }
                }
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
            let now = Instant::now();
            let delay = self.late_after(&mut transfers, decode_time);
            let live = started.values().filter(|&&t| now < t + delay).count();
            if live < started.len() && !fallback {
                debug!("some slivers are slow; fetching others to decode from");
                fallback = true;
            }
            // The fast path keeps a few requests in flight, so that slivers arrive one after
            // another and are verified while the next ones are on the wire (all at once, they
            // would all arrive at the end and be verified only then).
            let limit = if fallback {
                self.config.read_concurrency
            } else {
                self.config.read_pipeline
            }
            .max(1);
            while pending.len() < limit
                && let Some(p) = todo.pop_front()
                && let Some(piece) = pieces[usize::from(p - first)].take()
            {
                started.insert(p, Instant::now());
                pending.push(self.fetch_sliver_into(
                    &committee,
                    config,
                    metadata.clone(),
                    p,
                    piece,
                ));
            }
            if fallback {
                // Keep enough live fetches to reach k verified slivers.
                let mut live = started.values().filter(|&&t| now < t + delay).count();
                while n_done + extra.len() + live + todo.len() < k + failed.min(k / 4)
                    && pending.len() < limit
                {
                    let Some(p) = spare.pop_front() else { break };
                    started.insert(p, Instant::now());
                    pending.push(self.fetch_sliver(&committee, config, metadata.clone(), p));
                    live += 1;
                }
            }
            if pending.is_empty() {
                return Err(ClientError::NotEnoughSlivers {
                    blob_id,
                    valid: n_done + extra.len(),
                    needed: k,
                    failures: stats.failures,
                });
            }
            // Wake up when the oldest request still presumed alive stops being so.
            let wake = started
                .values()
                .map(|&t| t + delay)
                .filter(|&t| t > now)
                .min();
            tokio::select! {
                Some(Fetched { pair, transfer, result }) = pending.next() => {
                    started.remove(&pair);
                    match result {
                        Ok(received) => {
                            transfers.push(transfer);
                            match received {
                                Received::InPlace(piece) => {
                                    done[usize::from(pair - first)] = Some(piece);
                                    n_done += 1;
                                }
                                Received::Owned(sliver) => {
                                    extra.insert(pair, sliver);
                                }
                            }
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
                    }
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(now + delay).into()), if wake.is_some() => {}
            }
        }
    }

    /// The range out of the wanted slivers, all verified in place in their shared buffer.
    /// Slivers the range uses only in part are kept in the cache: a reader going through the
    /// blob in ranges smaller than a sliver needs them again for the next range.
    fn assemble(
        &self,
        blob_id: BlobId,
        needed: &[SliverRange],
        sliver_len: usize,
        done: Vec<Option<BytesMut>>,
        range: Range<u64>,
    ) -> Vec<u8> {
        let mut whole: Option<BytesMut> = None;
        for (r, piece) in needed.iter().zip(done) {
            let Some(piece) = piece else { continue };
            if r.in_sliver.len() < sliver_len {
                lock(&self.cache.slivers).put((blob_id, r.sliver), Arc::from(&piece[..]));
            }
            match &mut whole {
                // Contiguous pieces of one allocation: joining them copies nothing.
                Some(w) => w.unsplit(piece),
                None => whole = Some(piece),
            }
        }
        let mut whole = whole.unwrap_or_default();
        let skip = needed.first().map_or(0, |r| r.in_sliver.start);
        let len = (range.end - range.start) as usize;
        if skip != 0 {
            // Moved to the front within the buffer, not copied into a new one: its pages are
            // touched already, a new buffer's would each cost a page fault.
            whole.copy_within(skip..skip + len, 0);
        }
        whole.truncate(len);
        // The buffer's only owner: the vector is taken over, not copied.
        let mut out = Vec::from(whole);
        // Parts of slivers beyond the range are not kept (glibc shrinks a block in place).
        out.shrink_to_fit();
        out
    }
}
