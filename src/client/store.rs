//! The store pipeline.

use std::sync::Arc;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{Client, ClientError, NodeApi, NodeError};
use crate::encoding::{
    BlobId, EncodedBlob, EncodingConfig, EncodingType, SliverType, shard_to_pair,
};
use crate::ledger::BlobObject;
use crate::protocol::{ConfirmationAggregator, ObjectId, RequiredWeight, SignedMessage};

/// How to store a blob.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Epochs to keep the blob for, counted from the current epoch.
    pub epochs: u32,
    /// Deletable blobs (the default, as in Walrus since v1.33) can be deleted before they
    /// expire; permanent ones cannot.
    pub deletable: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            epochs: 1,
            deletable: true,
        }
    }
}

/// What a store achieved.
pub struct StoreOutcome {
    pub blob_id: BlobId,
    /// The certified blob object on the ledger.
    pub object: BlobObject,
    /// True when an existing certification was long enough and nothing was uploaded.
    pub already_certified: bool,
    /// Committee members whose confirmations formed the certificate (empty if nothing was
    /// uploaded).
    pub signers: Vec<u16>,
    /// Uploads to nodes that had not answered when the quorum was reached. They go on in the
    /// background; await them (with a time limit) to give every node its slivers.
    pub stragglers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for StoreOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOutcome")
            .field("blob_id", &self.blob_id)
            .field("object", &self.object)
            .field("already_certified", &self.already_certified)
            .field("stragglers", &self.stragglers.len())
            .finish()
    }
}

/// Sliver uploads in flight per node: at most this many (see `ClientConfig` for the rest).
const MAX_UPLOADS_PER_NODE: usize = 32;

/// Uploads the metadata and this node's sliver pairs, then asks for its confirmation.
async fn upload_to_node(
    api: NodeApi,
    encoded: Arc<EncodedBlob>,
    shards: Vec<u16>,
    object_id: Option<ObjectId>,
    (bytes_in_flight, min_in_flight): (usize, usize),
) -> Result<SignedMessage, NodeError> {
    let blob_id = encoded.metadata.blob_id;
    let n = encoded.n_pairs() as u16;
    retry(|| api.put_metadata(&encoded.metadata)).await?;
    let pairs: Vec<u16> = shards
        .iter()
        .map(|&s| shard_to_pair(s, n, &blob_id))
        .collect();
    // Small slivers: many at once (their cost is latency: an fsync each on the node); large
    // ones: enough to keep the node verifying while bounding the bodies in memory.
    let sliver_len = encoded.primary_bcs_len().max(1);
    let in_flight =
        (bytes_in_flight / sliver_len).clamp(min_in_flight.max(1), MAX_UPLOADS_PER_NODE);
    let mut todo = pairs
        .iter()
        .flat_map(|&pair| [(pair, SliverType::Primary), (pair, SliverType::Secondary)])
        .collect::<Vec<_>>()
        .into_iter();
    let mut uploads = FuturesUnordered::new();
    loop {
        while uploads.len() < in_flight
            && let Some((pair, sliver_type)) = todo.next()
        {
            uploads.push(upload_sliver(&api, &encoded, blob_id, pair, sliver_type));
        }
        match uploads.next().await {
            Some(r) => r?,
            None => break,
        }
    }
    retry(|| api.get_confirmation(&blob_id, object_id)).await
}

/// Uploads one sliver, its body borrowed from the encoded blob.
async fn upload_sliver(
    api: &NodeApi,
    encoded: &Arc<EncodedBlob>,
    blob_id: BlobId,
    pair: u16,
    sliver_type: SliverType,
) -> Result<(), NodeError> {
    let pieces = encoded.sliver_bcs_pieces(usize::from(pair), sliver_type);
    retry(|| api.put_sliver_bcs(&blob_id, pair, sliver_type, &pieces)).await
}

/// Retries transient failures (timeouts, 5xx) twice; a refused connection or a 4xx is final.
async fn retry<T, F, Fut>(mut f: F) -> Result<T, NodeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, NodeError>>,
{
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let transient = matches!(e, NodeError::Timeout { .. })
                    || matches!(e, NodeError::Status { status, .. } if status >= 500);
                attempt += 1;
                if !transient || attempt > 2 {
                    return Err(e);
                }
                tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}

impl Client {
    /// Stores `data` as a blob and returns once it is certified on the ledger.
    pub async fn store(
        &self,
        data: Vec<u8>,
        opts: StoreOptions,
    ) -> Result<StoreOutcome, ClientError> {
        let committee = self.committee().await?;
        let config = EncodingConfig::new(committee.n_shards())?;
        let len = data.len() as u64;
        let encoded =
            Arc::new(tokio::task::spawn_blocking(move || config.encode_owned(data)).await??);
        let blob_id = encoded.metadata.blob_id;
        let span = info_span!("store", %blob_id, len);
        self.store_encoded(encoded, config, opts)
            .instrument(span)
            .await
    }

    async fn store_encoded(
        &self,
        encoded: Arc<EncodedBlob>,
        config: EncodingConfig,
        opts: StoreOptions,
    ) -> Result<StoreOutcome, ClientError> {
        let committee = self.committee().await?;
        let blob_id = encoded.metadata.blob_id;
        let len = encoded.metadata.metadata.unencoded_length();
        let (epoch, existing) = self
            .ledger_call(move |l| Ok((l.current_epoch()?, l.blobs_by_blob_id(blob_id)?)))
            .await?;
        let needed_end = epoch + opts.epochs;
        let live = |b: &&BlobObject| !b.is_expired(epoch) && b.end_epoch() >= needed_end;
        if let Some(b) = existing.iter().filter(live).find(|b| b.is_certified()) {
            info!(
                end_epoch = b.end_epoch(),
                "already certified for long enough; nothing uploaded"
            );
            return Ok(StoreOutcome {
                blob_id,
                object: b.clone(),
                already_certified: true,
                signers: Vec::new(),
                stragglers: Vec::new(),
            });
        }
        // A registration left by an earlier attempt (a crash, too many nodes down) is reused.
        let object = match existing
            .iter()
            .filter(live)
            .find(|b| !b.is_certified() && b.deletable == opts.deletable)
        {
            Some(b) => {
                debug!(object_id = %b.object_id, "reusing earlier registration");
                b.clone()
            }
            None => {
                let encoded_size = config.encoded_blob_length(len)?;
                let root = encoded.metadata.metadata.root_hash();
                let (epochs, deletable) = (opts.epochs, opts.deletable);
                self.ledger_call(move |l| {
                    let storage = l.reserve_space(encoded_size, epochs)?;
                    l.register_blob(storage.id, blob_id, root, len, EncodingType::RS2, deletable)
                })
                .await?
            }
        };
        let object_id = object.deletable.then_some(object.object_id);

        let (tx, mut rx) = mpsc::channel(committee.n_members().max(1));
        let mut handles = Vec::new();
        for (index, member) in committee.members().iter().enumerate() {
            let Some(api) = self.node(&committee, index as u16) else {
                continue;
            };
            let (encoded, tx, shards) = (encoded.clone(), tx.clone(), member.shard_ids.clone());
            let name = member.name.clone();
            let in_flight = (
                self.config.upload_bytes_per_node,
                self.config.min_uploads_per_node,
            );
            handles.push(tokio::spawn(
                async move {
                    let r = upload_to_node(api, encoded, shards, object_id, in_flight).await;
                    let _ = tx.send((index as u16, name, r)).await;
                }
                .instrument(info_span!("upload", node = index)),
            ));
        }
        drop(tx);

        let mut aggregator =
            ConfirmationAggregator::new(&committee, blob_id, object.persistence_type());
        let mut failures = Vec::new();
        while let Some((index, name, result)) = rx.recv().await {
            match result {
                Ok(signed) => match aggregator.add(index, &signed) {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        warn!(node = %name, "rejected storage confirmation: {e}");
                        failures.push(format!("{name}: {e}"));
                    }
                },
                Err(e) => {
                    debug!(node = %name, "upload failed: {e}");
                    failures.push(format!("{name}: {e}"));
                }
            }
        }
        if !aggregator.is_quorum() {
            return Err(ClientError::NotEnoughConfirmations {
                blob_id,
                weight: aggregator.weight(),
                needed: committee.threshold(RequiredWeight::Quorum),
                n_shards: committee.n_shards(),
                failures,
            });
        }
        let certificate = aggregator.finish()?;
        let signers = certificate.signers.clone();
        let object_id = object.object_id;
        let certified = self
            .ledger_call(move |l| l.certify_blob(object_id, &certificate))
            .await?;
        info!(end_epoch = certified.end_epoch(), "certified");
        let stragglers = handles.into_iter().filter(|h| !h.is_finished()).collect();
        Ok(StoreOutcome {
            blob_id,
            object: certified,
            already_certified: false,
            signers,
            stragglers,
        })
    }
}
