//! Streamed reads: a range handed to a sink piece by piece, in order, as its slivers arrive
//! and verify, through a few reused sliver buffers.
//!
//! [`Client::read`] returns the range in one buffer, which is what the drive wants (an
//! extent at a time). A `blob get` of a whole blob does not need the blob in memory at
//! once: streamed, its memory stays at a dozen slivers whatever the blob's size, the output
//! is written while later slivers are still on the wire, and the sliver requests go out
//! while the metadata is still being fetched (a sliver is only verified once the metadata
//! is). The fresh memory of a whole-blob buffer was, with its page faults and zeroing,
//! about a tenth of a 64 MiB get's CPU time.
//!
//! Only the fast path streams: the systematic slivers of the range, each from the node that
//! holds it. On the first failure or late answer, what is left of the range is read with
//! [`Client::read`], which fetches other slivers and decodes around slow or lying nodes.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{Instrument, debug, info_span};

use super::read::{DECODE_BYTES_PER_SEC, no_node, prefer_huge_pages, verify_off_thread};
use super::{Client, ClientError, NodeError, ReadStats};
use crate::encoding::{BlobId, BlobMetadataWithId, EncodingConfig, SliverType, SliverView};

/// Sliver buffers beyond the requests in flight: two being verified, and room for slivers
/// that arrived before an earlier one and wait for it to be written.
const SPARE_BUFFERS: usize = 4;

/// Where a streamed read writes: consecutive pieces of the range, in order.
pub type Sink<'a> = dyn FnMut(&[u8]) -> std::io::Result<()> + 'a;

/// A sliver request's outcome: which wanted sliver, how long the transfer took, and the
/// buffer with the sliver's symbols (unverified), their symbol size and the node's URL.
type Receive = std::pin::Pin<
    Box<dyn Future<Output = (usize, Duration, BytesMut, Result<(u16, String), NodeError>)> + Send>,
>;
type Verify = std::pin::Pin<Box<dyn Future<Output = (usize, Result<BytesMut, NodeError>)> + Send>>;

impl Client {
    /// Reads `range` (the whole blob if `None`) of a certified blob, verified, into `sink`
    /// in order. Returns what the read took; on an error, `sink` may have received a
    /// verified prefix of the range.
    pub async fn read_streaming(
        &self,
        blob_id: BlobId,
        range: Option<Range<u64>>,
        sink: &mut Sink<'_>,
    ) -> Result<ReadStats, ClientError> {
        let span = info_span!("read_streaming", %blob_id);
        self.read_streaming_inner(blob_id, range, sink)
            .instrument(span)
            .await
    }

    async fn read_streaming_inner(
        &self,
        blob_id: BlobId,
        range: Option<Range<u64>>,
        sink: &mut Sink<'_>,
    ) -> Result<ReadStats, ClientError> {
        let t0 = Instant::now();
        rayon::spawn(crate::encoding::prepare_codec);
        let len = self.readable_len(blob_id).await?;
        let committee = self.committee().await?;
        let config = EncodingConfig::new(committee.n_shards())?;
        let range = range.unwrap_or(0..len);
        let needed = config.primary_slivers_for_range(len, range.clone())?;
        let mut stats = ReadStats::default();
        if needed.is_empty() {
            return Ok(stats);
        }
        let sliver_len = config.sliver_len(SliverType::Primary, len)?;
        let symbol_size = config.symbol_size(len)?;
        debug!(elapsed = ?t0.elapsed(), slivers = needed.len(), "ledger read");

        // The metadata is fetched while the first slivers are on the wire.
        let cached = self.cached_metadata(&blob_id);
        let known = cached.is_some();
        let mut metadata: Option<Arc<BlobMetadataWithId>> = cached;
        let (committee_ref, config_ref) = (&committee, &config);
        // Polled only while `metadata` is `None`, so never when it was cached.
        let mut metadata_fetch = std::pin::pin!(async move {
            if known {
                None
            } else {
                Some(
                    self.fetch_metadata(committee_ref, config_ref, blob_id)
                        .await,
                )
            }
        });

        let pipeline = self.config.read_pipeline.max(1);
        let n_buffers = (pipeline + SPARE_BUFFERS).min(needed.len());
        // Two buffers at once, the rest once their pages are mapped (see `populate_apart`).
        let (mut pool, mut more_buffers) = {
            let mut all = BytesMut::zeroed(n_buffers * sliver_len);
            prefer_huge_pages(&mut all);
            let rest = all.split_off(n_buffers.min(FIRST_BUFFERS) * sliver_len);
            let first: Vec<BytesMut> =
                std::iter::from_fn(|| (!all.is_empty()).then(|| all.split_to(sliver_len)))
                    .collect();
            (first, populate_apart(rest))
        };
        let mut all_buffers = false;

        let mut receiving: FuturesUnordered<Receive> = FuturesUnordered::new();
        let mut verifying: FuturesUnordered<Verify> = FuturesUnordered::new();
        // Received before the metadata was there: verified once it is.
        let mut unverified: Vec<(usize, String, BytesMut)> = Vec::new();
        // Verified, waiting for the slivers before them to be written.
        let mut ready: BTreeMap<usize, BytesMut> = BTreeMap::new();
        let mut next_request = 0usize;
        let mut next_write = 0usize;
        let mut written = 0u64;
        let mut transfers: Vec<Duration> = Vec::new();
        let decode_time = Duration::from_secs_f64(len as f64 / DECODE_BYTES_PER_SEC);

        // Why the fast path stopped before the end of the range (a node failed, lied or was
        // late): the rest is then read with hedging and decoding.
        let detour: Option<String> = loop {
            // Write what is verified and next in line; its buffer serves the next request.
            while let Some(buf) = ready.remove(&next_write) {
                let piece = &buf[needed[next_write].in_sliver.clone()];
                sink(piece).map_err(ClientError::Output)?;
                written += piece.len() as u64;
                next_write += 1;
                pool.push(buf);
            }
            if next_write == needed.len() {
                break None;
            }
            if let Some(md) = &metadata {
                for (i, url, buf) in unverified.drain(..) {
                    let pair = needed[i].sliver;
                    verifying.push(self.verify_piece(
                        config,
                        md.clone(),
                        i,
                        pair,
                        url,
                        symbol_size,
                        buf,
                    ));
                }
            }
            while receiving.len() < pipeline
                && next_request < needed.len()
                && let Some(buf) = pool.pop()
            {
                receiving.push(self.receive_piece(
                    &committee,
                    blob_id,
                    next_request,
                    needed[next_request].sliver,
                    buf,
                ));
                next_request += 1;
            }
            let delay = self.late_after(&mut transfers, decode_time);
            let event = tokio::time::timeout(delay, async {
                tokio::select! {
                    rest = &mut more_buffers, if !all_buffers => Event::Buffers(rest),
                    md = &mut metadata_fetch, if metadata.is_none() => Event::Metadata(md),
                    Some(r) = receiving.next() => Event::Received(r),
                    Some(v) = verifying.next() => Event::Verified(v),
                }
            })
            .await;
            match event {
                Err(_) => break Some("a node is late".into()),
                Ok(Event::Buffers(rest)) => {
                    all_buffers = true;
                    let mut rest = rest.unwrap_or_default();
                    while !rest.is_empty() {
                        pool.push(rest.split_to(sliver_len));
                    }
                }
                Ok(Event::Metadata(md)) => match md {
                    Some(Ok(m)) => {
                        let m = Arc::new(m);
                        self.remember_metadata(blob_id, m.clone());
                        debug!(elapsed = ?t0.elapsed(), "metadata verified");
                        metadata = Some(m);
                    }
                    Some(Err(e)) => return Err(e),
                    None => {}
                },
                Ok(Event::Received((i, transfer, buf, result))) => match result {
                    Ok((size, url)) if size == symbol_size => {
                        transfers.push(transfer);
                        unverified.push((i, url, buf));
                    }
                    Ok((size, _)) => {
                        break Some(format!(
                            "sliver {} has symbols of {size} bytes, not {symbol_size}",
                            needed[i].sliver
                        ));
                    }
                    Err(e) => {
                        stats.failures.push(e.to_string());
                        break Some(e.to_string());
                    }
                },
                Ok(Event::Verified((i, result))) => match result {
                    Ok(buf) => {
                        stats.slivers_verified += 1;
                        ready.insert(i, buf);
                    }
                    Err(e) => {
                        stats.failures.push(e.to_string());
                        break Some(e.to_string());
                    }
                },
            }
        };
        match detour {
            None => {
                debug!(elapsed = ?t0.elapsed(), "range written");
                Ok(stats)
            }
            Some(why) => {
                debug!(%why, written, "reading the rest with hedging and decoding");
                // Requests in flight are dropped (and cancelled) here.
                drop((receiving, verifying));
                let rest = range.start + written..range.end;
                let (data, more) = self.read(blob_id, Some(rest)).await?;
                sink(&data).map_err(ClientError::Output)?;
                stats.slivers_verified += more.slivers_verified;
                stats.decoded = more.decoded;
                stats.failures.extend(more.failures);
                Ok(stats)
            }
        }
    }

    /// Receives wanted sliver `i` (sliver `pair`) into `buf`, not yet verified.
    fn receive_piece(
        &self,
        committee: &crate::protocol::Committee,
        blob_id: BlobId,
        i: usize,
        pair: u16,
        mut buf: BytesMut,
    ) -> Receive {
        let api = self.sliver_node(committee, pair, &blob_id);
        Box::pin(async move {
            let t = Instant::now();
            let Some(api) = api else {
                return (i, t.elapsed(), buf, Err(no_node(pair)));
            };
            let result = api
                .get_sliver_into(&blob_id, pair, SliverType::Primary, &mut buf)
                .await
                .and_then(|(symbol_size, index)| {
                    if index == pair {
                        Ok((symbol_size, api.url().to_string()))
                    } else {
                        Err(NodeError::Malformed {
                            url: api.url().to_string(),
                            reason: format!("asked for sliver {pair}, got sliver {index}"),
                        })
                    }
                });
            (i, t.elapsed(), buf, result)
        })
    }

    /// Verifies wanted sliver `i` (sliver `pair`, from `url`), received into `buf`, against
    /// the metadata.
    #[allow(clippy::too_many_arguments)]
    fn verify_piece(
        &self,
        config: EncodingConfig,
        metadata: Arc<BlobMetadataWithId>,
        i: usize,
        pair: u16,
        url: String,
        symbol_size: u16,
        buf: BytesMut,
    ) -> Verify {
        Box::pin(async move {
            let result = verify_off_thread(&url, move || {
                SliverView {
                    sliver_type: SliverType::Primary,
                    index: pair,
                    symbol_size,
                    data: &buf,
                }
                .verify(&config, &metadata.metadata)
                .map(|()| buf)
            })
            .await;
            (i, result)
        })
    }
}

/// Buffers handed out before the rest of the pool is mapped: enough for the first requests.
const FIRST_BUFFERS: usize = 2;

/// Maps the pages of `buf` on one of rayon's threads and hands it back: the buffers are fresh
/// memory, whose pages (or huge pages, where the kernel has them) are zeroed at their first
/// write. Left to the first writes, that happens while the slivers stream in and both cores
/// are busy verifying and receiving; here it happens in the first milliseconds of the read,
/// while a core waits for the metadata and the first slivers. `MADV_POPULATE_WRITE` (Linux
/// 5.14) maps zero pages only, so the buffer's contents do not change; where it is refused,
/// the pages are mapped by the first writes as before. Resolves to an error only if the task
/// was lost (a panic in rayon's pool), which costs those buffers, not the read.
fn populate_apart(buf: BytesMut) -> tokio::sync::oneshot::Receiver<BytesMut> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        #[cfg(target_os = "linux")]
        {
            const MADV_POPULATE_WRITE: libc::c_int = 23;
            const PAGE: usize = 4096;
            let start = (buf.as_ptr() as usize).next_multiple_of(PAGE);
            let end = (buf.as_ptr() as usize + buf.len()) & !(PAGE - 1);
            if end > start {
                // SAFETY: the range lies inside `buf`, which this task owns; populating
                // pages for writing maps zero pages and never changes a byte's value.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE);
                }
            }
        }
        let _ = tx.send(buf);
    });
    rx
}

enum Event {
    Buffers(Result<BytesMut, tokio::sync::oneshot::error::RecvError>),
    Metadata(Option<Result<BlobMetadataWithId, ClientError>>),
    Received((usize, Duration, BytesMut, Result<(u16, String), NodeError>)),
    Verified((usize, Result<BytesMut, NodeError>)),
}
