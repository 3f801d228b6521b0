//! Storage-node tests: real HTTP against nodes on 127.0.0.1 (ephemeral ports) over a real
//! `EmbeddedLedger` in a temporary directory, plus a no-panic test feeding random bytes to
//! every decoder through the router.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tower::ServiceExt as _;

use super::*;
use crate::encoding::{
    BlobId, BlobMetadataWithId, EncodedBlob, EncodingConfig, EncodingType, Sliver, SliverType,
    pair_to_shard,
};
use crate::ledger::{BlobObject, EmbeddedLedger, Genesis, Ledger, LedgerParams};
use crate::protocol::{
    ApiSuccess, BlobPersistenceType, Committee, ConfirmationAggregator, ProtocolError,
    ProtocolKeyPair, SignedMessage, StorageConfirmation, test_committee,
};

const N_SHARDS: u16 = 13;
/// Four nodes over 13 shards.
const WEIGHTS: [u16; 4] = [4, 3, 3, 3];

struct Net {
    dir: tempfile::TempDir,
    ledger: EmbeddedLedger,
    ledger_path: PathBuf,
    committee: Committee,
    keys: Vec<ProtocolKeyPair>,
    nodes: Vec<Option<RunningNode>>,
    http: reqwest::Client,
}

fn node_config(dir: &Path, i: usize, ledger_path: &Path, faults: Faults) -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join(format!("node{i}")),
        key_file: dir.join(format!("node{i}.key")),
        ledger: LedgerConfig::Embedded {
            path: ledger_path.to_path_buf(),
        },
        node_id: None,
        node_index: None,
        limits: Limits::default(),
        faults,
    }
}

impl Net {
    async fn start(faults: impl Fn(usize) -> Faults) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let (committee, keys) = test_committee(0, &WEIGHTS);
        assert_eq!(committee.n_shards(), N_SHARDS);
        let ledger_path = dir.path().join("ledger.sqlite");
        let ledger = EmbeddedLedger::create(
            &ledger_path,
            &Genesis::new(committee.clone(), LedgerParams::default()),
        )
        .unwrap();
        let mut net = Net {
            dir,
            ledger,
            ledger_path,
            committee,
            keys,
            nodes: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        for i in 0..WEIGHTS.len() {
            let mut config = net.config(i, faults(i));
            // Exercise all three ways a node finds itself in the committee.
            match i {
                0 => config.node_id = Some(net.committee.members()[0].node_id),
                1 => config.node_index = Some(1),
                _ => {}
            }
            write_key_file(&config.key_file, &net.keys[i]).unwrap();
            net.nodes
                .push(Some(RunningNode::start(config).await.unwrap()));
        }
        net
    }

    fn config(&self, i: usize, faults: Faults) -> NodeConfig {
        node_config(self.dir.path(), i, &self.ledger_path, faults)
    }

    fn url(&self, i: usize) -> String {
        self.nodes[i].as_ref().unwrap().url()
    }

    /// The member holding the shard of `pair`.
    fn owner(&self, blob_id: &BlobId, pair: u16) -> usize {
        let shard = pair_to_shard(pair, N_SHARDS, blob_id);
        usize::from(self.committee.shard_owner(shard).unwrap())
    }

    fn register(&self, metadata: &BlobMetadataWithId, deletable: bool, epochs: u32) -> BlobObject {
        let len = metadata.metadata.unencoded_length();
        let size = EncodingConfig::new(N_SHARDS)
            .unwrap()
            .encoded_blob_length(len)
            .unwrap();
        let storage = self.ledger.reserve_space(size, epochs).unwrap();
        self.ledger
            .register_blob(
                storage.id,
                metadata.blob_id,
                metadata.metadata.root_hash(),
                len,
                EncodingType::RS2,
                deletable,
            )
            .unwrap()
    }

    async fn put_metadata(&self, i: usize, m: &BlobMetadataWithId) -> (u16, Vec<u8>) {
        let body = bcs::to_bytes(&m.metadata).unwrap();
        put(
            &self.http,
            &format!("{}/v1/blobs/{}/metadata", self.url(i), m.blob_id),
            body,
        )
        .await
    }

    async fn put_sliver(&self, i: usize, id: &BlobId, pair: u16, s: &Sliver) -> (u16, Vec<u8>) {
        put(
            &self.http,
            &sliver_url(&self.url(i), id, pair, s.sliver_type),
            s.to_bcs(),
        )
        .await
    }

    /// Stores the metadata on every node and each sliver pair on its owner.
    async fn upload_all(&self, encoded: &EncodedBlob) {
        let id = encoded.metadata.blob_id;
        for i in 0..self.nodes.len() {
            let (code, body) = self.put_metadata(i, &encoded.metadata).await;
            assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
        }
        for pair in 0..N_SHARDS {
            let owner = self.owner(&id, pair);
            for s in [
                encoded.primary_sliver(usize::from(pair)),
                encoded.secondary_sliver(usize::from(pair)),
            ] {
                let (code, body) = self.put_sliver(owner, &id, pair, &s).await;
                assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
            }
        }
    }

    async fn confirmation(&self, i: usize, id: &BlobId, object: Option<&str>) -> (u16, Vec<u8>) {
        let url = match object {
            None => format!("{}/v1/blobs/{id}/confirmation/permanent", self.url(i)),
            Some(o) => format!("{}/v1/blobs/{id}/confirmation/deletable/{o}", self.url(i)),
        };
        get(&self.http, &url).await
    }

    async fn shutdown(&mut self) {
        for node in self.nodes.iter_mut() {
            if let Some(n) = node.take() {
                n.shutdown().await.unwrap();
            }
        }
    }
}

fn sliver_url(base: &str, id: &BlobId, pair: u16, t: SliverType) -> String {
    format!("{base}/v1/blobs/{id}/slivers/{pair}/{t}")
}

async fn put(http: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let r = http.put(url).body(body).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let r = http.get(url).send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

/// The `reason` of a `Status` error body, checking the body's shape on the way.
fn reason(code: u16, body: &[u8]) -> String {
    let status: ErrorStatus = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not a Status body ({e}): {}", String::from_utf8_lossy(body)));
    assert_eq!(status.error.code, code);
    assert!(!status.error.message.is_empty());
    status.reason().unwrap().to_string()
}

fn signed_confirmation(body: &[u8]) -> SignedMessage {
    serde_json::from_slice::<ApiSuccess<StorageConfirmation>>(body)
        .unwrap()
        .success
        .data
        .into_signed()
}

fn test_blob(len: usize, seed: u64) -> EncodedBlob {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    EncodingConfig::new(N_SHARDS)
        .unwrap()
        .encode(&data)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_read_back_confirm_and_certify() {
    let mut net = Net::start(|_| Faults::default()).await;
    let encoded = test_blob(10_000, 1);
    let id = encoded.metadata.blob_id;
    let blob = net.register(&encoded.metadata, false, 5);
    net.upload_all(&encoded).await;

    // Uploading the same things again is "already stored".
    let (code, _) = net.put_metadata(0, &encoded.metadata).await;
    assert_eq!(code, 200);
    let owner = net.owner(&id, 0);
    let (code, _) = net
        .put_sliver(owner, &id, 0, &encoded.primary_sliver(0))
        .await;
    assert_eq!(code, 200);

    // Every sliver reads back byte for byte from its owner; metadata from every node.
    let config = EncodingConfig::new(N_SHARDS).unwrap();
    for pair in 0..N_SHARDS {
        let owner = net.owner(&id, pair);
        for (t, expected) in [
            (
                SliverType::Primary,
                encoded.primary_sliver(usize::from(pair)),
            ),
            (
                SliverType::Secondary,
                encoded.secondary_sliver(usize::from(pair)),
            ),
        ] {
            let (code, body) = get(&net.http, &sliver_url(&net.url(owner), &id, pair, t)).await;
            assert_eq!(code, 200);
            let s = Sliver::from_bcs(&body, t).unwrap();
            s.verify(&config, &encoded.metadata.metadata).unwrap();
            assert_eq!(s, expected);
        }
    }
    for i in 0..4 {
        let (code, body) = get(&net.http, &format!("{}/v1/blobs/{id}/metadata", net.url(i))).await;
        assert_eq!(code, 200);
        let m = BlobMetadataWithId::from_bcs(&body).unwrap();
        m.verify(&config).unwrap();
        assert_eq!(m, encoded.metadata);
    }

    // Every node confirms; each confirmation verifies under its key; together they certify.
    let mut aggregator =
        ConfirmationAggregator::new(&net.committee, id, BlobPersistenceType::Permanent);
    for i in 0..4 {
        let (code, body) = net.confirmation(i, &id, None).await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let signed = signed_confirmation(&body);
        signed
            .verify_confirmation(net.keys[i].public(), 0, id, BlobPersistenceType::Permanent)
            .unwrap();
        aggregator.add(i as u16, &signed).unwrap();
    }
    let certificate = aggregator.finish().unwrap();
    let certified = net
        .ledger
        .certify_blob(blob.object_id, &certificate)
        .unwrap();
    assert_eq!(certified.certified_epoch, Some(0));

    // The status endpoint reflects the certification, in the running nodes' JSON shape.
    let (code, body) = get(&net.http, &format!("{}/v1/blobs/{id}/status", net.url(0))).await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["success"]["code"], 200);
    let p = &v["success"]["data"]["permanent"];
    assert_eq!(p["isCertified"], true);
    assert_eq!(p["endEpoch"], 5);
    assert_eq!(p["initialCertifiedEpoch"], 0);
    assert!(p["statusEvent"]["txDigest"].is_string());
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_only_after_all_slivers() {
    let mut net = Net::start(|_| Faults::default()).await;
    let encoded = test_blob(3_000, 2);
    let id = encoded.metadata.blob_id;
    net.register(&encoded.metadata, false, 3);
    let node = 1;
    let mine: Vec<u16> = (0..N_SHARDS)
        .filter(|&p| net.owner(&id, p) == node)
        .collect();
    assert_eq!(mine.len(), 3);

    let expect_not_stored = |code: u16, body: &[u8]| {
        assert_eq!(code, 400);
        assert_eq!(reason(code, body), "NOT_FULLY_STORED");
    };
    let (code, body) = net.confirmation(node, &id, None).await;
    expect_not_stored(code, &body);
    net.put_metadata(node, &encoded.metadata).await;
    // All primaries and all secondaries but the last: still no confirmation.
    for (k, &pair) in mine.iter().enumerate() {
        let (code, _) = net
            .put_sliver(node, &id, pair, &encoded.primary_sliver(usize::from(pair)))
            .await;
        assert_eq!(code, 201);
        let (code, body) = net.confirmation(node, &id, None).await;
        expect_not_stored(code, &body);
        if k + 1 < mine.len() {
            let s = encoded.secondary_sliver(usize::from(pair));
            assert_eq!(net.put_sliver(node, &id, pair, &s).await.0, 201);
            let (code, body) = net.confirmation(node, &id, None).await;
            expect_not_stored(code, &body);
        }
    }
    let last = *mine.last().unwrap();
    let s = encoded.secondary_sliver(usize::from(last));
    assert_eq!(net.put_sliver(node, &id, last, &s).await.0, 201);
    let (code, body) = net.confirmation(node, &id, None).await;
    assert_eq!(code, 200);
    signed_confirmation(&body)
        .verify_confirmation(
            net.keys[node].public(),
            0,
            id,
            BlobPersistenceType::Permanent,
        )
        .unwrap();
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletable_confirmations_name_the_object() {
    let mut net = Net::start(|_| Faults::default()).await;
    let encoded = test_blob(500, 3);
    let id = encoded.metadata.blob_id;
    let blob = net.register(&encoded.metadata, true, 3);
    net.upload_all(&encoded).await;
    let object = blob.object_id.to_string();
    let persistence = BlobPersistenceType::Deletable {
        object_id: blob.object_id,
    };
    for i in 0..4 {
        let (code, body) = net.confirmation(i, &id, Some(&object)).await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        signed_confirmation(&body)
            .verify_confirmation(net.keys[i].public(), 0, id, persistence)
            .unwrap();
    }
    // Only a deletable registration exists: no permanent confirmation; another object: none.
    let (code, body) = net.confirmation(0, &id, None).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "NOT_REGISTERED")
    );
    let (code, body) = net.confirmation(0, &id, Some("0x1234")).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "NOT_REGISTERED")
    );
    let (code, body) = net.confirmation(0, &id, Some("not-an-id")).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "INVALID_PARAMETER")
    );
    // After deletion the blob is gone for this node.
    net.ledger.delete_blob(blob.object_id).unwrap();
    let (code, body) = net.confirmation(0, &id, Some(&object)).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "NOT_REGISTERED")
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_with_status_json() {
    let mut net = Net::start(|_| Faults::default()).await;
    let encoded = test_blob(1_000, 4);
    let id = encoded.metadata.blob_id;
    net.register(&encoded.metadata, false, 3);
    let base = net.url(0);
    let http = &net.http;

    let (code, body) = put(
        http,
        &format!("{base}/v1/blobs/{id}/metadata"),
        vec![1, 2, 3],
    )
    .await;
    assert_eq!((code, reason(code, &body).as_str()), (400, "INVALID_BCS"));
    let (code, body) = put(
        http,
        &sliver_url(&base, &id, 0, SliverType::Primary),
        vec![0xff; 7],
    )
    .await;
    assert_eq!((code, reason(code, &body).as_str()), (400, "INVALID_BCS"));
    let (code, body) = put(
        http,
        &format!("{base}/v1/blobs/not-a-blob-id/metadata"),
        vec![],
    )
    .await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "INVALID_PARAMETER")
    );
    let (code, body) = get(http, &format!("{base}/v1/blobs/{id}/slivers/0/tertiary")).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "INVALID_PARAMETER")
    );
    let (code, body) = get(http, &format!("{base}/v1/blobs/{id}/slivers/-1/primary")).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "INVALID_PARAMETER")
    );
    let (code, body) = get(http, &sliver_url(&base, &id, N_SHARDS, SliverType::Primary)).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "SLIVER_PAIR_INDEX_OUT_OF_RANGE")
    );
    let (code, body) = get(http, &format!("{base}/v1/nothing/here")).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (404, "NO_SUCH_ENDPOINT")
    );

    // Metadata for another blob than the path names.
    let other = test_blob(1_000, 5);
    let (code, body) = put(
        http,
        &format!("{base}/v1/blobs/{id}/metadata"),
        bcs::to_bytes(&other.metadata.metadata).unwrap(),
    )
    .await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "INVALID_METADATA")
    );
    let (code, body) = put(
        http,
        &format!("{base}/v1/blobs/{id}/metadata"),
        other.metadata.to_bcs(),
    )
    .await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "BLOB_ID_MISMATCH")
    );
    // JSON is not BCS.
    let r = http
        .put(format!("{base}/v1/blobs/{id}/metadata"))
        .header("content-type", "application/json")
        .body(bcs::to_bytes(&encoded.metadata.metadata).unwrap())
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    assert_eq!(
        (code, reason(code, &r.bytes().await.unwrap()).as_str()),
        (400, "INVALID_CONTENT_TYPE")
    );
    // `BlobMetadataWithId` for the right blob is accepted as well as `BlobMetadata`.
    let (code, _) = put(
        http,
        &format!("{base}/v1/blobs/{id}/metadata"),
        encoded.metadata.to_bcs(),
    )
    .await;
    assert_eq!(code, 201);

    // Sliver whose index does not belong to the pair in the path.
    let pair = (0..N_SHARDS).find(|&p| net.owner(&id, p) == 0).unwrap();
    let other_pair = (pair + 1) % N_SHARDS;
    let s = encoded.primary_sliver(usize::from(other_pair));
    let (code, body) = put(
        http,
        &sliver_url(&base, &id, pair, SliverType::Primary),
        s.to_bcs(),
    )
    .await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "SLIVER_INDEX_MISMATCH")
    );
    // Secondary slivers are paired in reverse: secondary index n-1-p belongs to pair p.
    let s = encoded.primary_sliver(usize::from(pair));
    let (code, body) = put(
        http,
        &sliver_url(&base, &id, pair, SliverType::Secondary),
        s.to_bcs(),
    )
    .await;
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&body));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_shard_is_rejected_both_ways() {
    let mut net = Net::start(|_| Faults::default()).await;
    let encoded = test_blob(2_000, 6);
    let id = encoded.metadata.blob_id;
    net.register(&encoded.metadata, false, 3);
    net.upload_all(&encoded).await;
    let pair = (0..N_SHARDS).find(|&p| net.owner(&id, p) != 2).unwrap();
    let s = encoded.primary_sliver(usize::from(pair));
    let (code, body) = net.put_sliver(2, &id, pair, &s).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "SHARD_NOT_ASSIGNED")
    );
    let (code, body) = get(
        &net.http,
        &sliver_url(&net.url(2), &id, pair, SliverType::Primary),
    )
    .await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "SHARD_NOT_ASSIGNED")
    );
    assert!(!net.nodes[2].as_ref().unwrap().node().store().has_sliver(
        &id,
        pair,
        SliverType::Primary
    ));
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_sliver_is_rejected_and_not_stored() {
    let mut net = Net::start(|_| Faults::default()).await;
    let encoded = test_blob(4_000, 7);
    let id = encoded.metadata.blob_id;
    net.register(&encoded.metadata, false, 3);
    let pair = 5;
    let owner = net.owner(&id, pair);
    let good = encoded.secondary_sliver(usize::from(pair));
    let mut bad = good.clone();
    bad.data[3] ^= 0x40;

    // Without metadata, no sliver is accepted.
    let (code, body) = net.put_sliver(owner, &id, pair, &good).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "MISSING_METADATA")
    );
    assert_eq!(net.put_metadata(owner, &encoded.metadata).await.0, 201);

    let (code, body) = net.put_sliver(owner, &id, pair, &bad).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "INVALID_SLIVER")
    );
    let url = sliver_url(&net.url(owner), &id, pair, SliverType::Secondary);
    let (code, body) = get(&net.http, &url).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (404, "SLIVER_NOT_FOUND")
    );
    // Wrong length and wrong symbol size are caught too.
    let mut short = good.clone();
    short
        .data
        .truncate(good.data.len() - usize::from(good.symbol_size));
    assert_eq!(net.put_sliver(owner, &id, pair, &short).await.0, 400);

    assert_eq!(net.put_sliver(owner, &id, pair, &good).await.0, 201);
    let (code, body) = get(&net.http, &url).await;
    assert_eq!(code, 200);
    assert_eq!(body, good.to_bcs());
    // A different sliver for a stored one is invalid, not "already stored"; the stored stays.
    let (code, body) = net.put_sliver(owner, &id, pair, &bad).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "INVALID_SLIVER")
    );
    assert_eq!(get(&net.http, &url).await.1, good.to_bcs());
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let mut net = Net::start(|_| Faults::default()).await;
    let encoded = test_blob(100, 8);
    let id = encoded.metadata.blob_id;
    net.register(&encoded.metadata, false, 3);
    let limits = net.nodes[0].as_ref().unwrap().node().limits();
    let base = net.url(0);
    let (code, body) = put(
        &net.http,
        &sliver_url(&base, &id, 0, SliverType::Primary),
        vec![0u8; limits.max_sliver_body_bytes + 1],
    )
    .await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (413, "BODY_TOO_LARGE")
    );
    let (code, body) = put(
        &net.http,
        &format!("{base}/v1/blobs/{id}/metadata"),
        vec![0u8; limits.max_metadata_body_bytes + 1],
    )
    .await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (413, "BODY_TOO_LARGE")
    );
    net.shutdown().await;
}

/// Sends `body` as a chunked PUT (no `Content-Length`) in pieces of `piece` bytes over a raw
/// connection; returns the status code.
async fn put_chunked(base: &str, path: &str, body: &[u8], piece: usize) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let authority = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(authority).await.unwrap();
    let mut request = format!(
        "PUT {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(piece) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // A refused body may be answered before all of it is sent.
    let _ = conn.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let head = String::from_utf8_lossy(&answer);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"))
}

/// Sliver bodies without `Content-Length` (chunked, in uneven pieces) are received, verified
/// and stored like any other, large ones written with `O_DIRECT` from the receive buffer, and
/// read back byte for byte; a truncated one is a framing error, an oversized one a 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_sliver_bodies_are_stored_exactly() {
    let mut net = Net::start(|_| Faults::default()).await;
    // Slivers of 100 KiB and more: past `DIRECT_MIN`.
    let encoded = test_blob(1 << 20, 21);
    let id = encoded.metadata.blob_id;
    net.register(&encoded.metadata, false, 3);
    let pair = N_SHARDS - 1;
    let owner = net.owner(&id, pair);
    let (code, body) = net.put_metadata(owner, &encoded.metadata).await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let base = net.url(owner);
    let path = |t| {
        sliver_url(&base, &id, pair, t)
            .trim_start_matches(&base)
            .to_string()
    };
    for (sliver, piece) in [
        (encoded.primary_sliver(usize::from(pair)), 1_000),
        (encoded.secondary_sliver(usize::from(pair)), 65_537),
    ] {
        let bcs = sliver.to_bcs();
        assert!(sliver.data.len() >= crate::direct_io::DIRECT_MIN);
        let url_path = path(sliver.sliver_type);
        assert_eq!(
            put_chunked(&base, &url_path, &bcs[..bcs.len() - 1], piece).await,
            400
        );
        assert_eq!(put_chunked(&base, &url_path, &bcs, piece).await, 201);
        assert_eq!(put_chunked(&base, &url_path, &bcs, piece).await, 200);
        let (code, stored) =
            get(&net.http, &sliver_url(&base, &id, pair, sliver.sliver_type)).await;
        assert_eq!((code, stored == bcs), (200, true));
    }
    let limit = net.nodes[owner]
        .as_ref()
        .unwrap()
        .node()
        .limits()
        .max_sliver_body_bytes;
    let oversized = vec![0u8; limit + 1];
    assert_eq!(
        put_chunked(&base, &path(SliverType::Primary), &oversized, 1 << 16).await,
        413
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_and_expired_blobs_are_refused() {
    let mut net = Net::start(|_| Faults::default()).await;
    let encoded = test_blob(1_500, 9);
    let id = encoded.metadata.blob_id;
    let base = net.url(0);

    let (code, body) = net.put_metadata(0, &encoded.metadata).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "NOT_REGISTERED")
    );
    let (code, body) = net.put_sliver(0, &id, 0, &encoded.primary_sliver(0)).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "NOT_REGISTERED")
    );
    let (code, body) = get(&net.http, &format!("{base}/v1/blobs/{id}/metadata")).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (404, "BLOB_NOT_AVAILABLE")
    );
    let (code, body) = net.confirmation(0, &id, None).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "NOT_REGISTERED")
    );
    let (code, body) = get(&net.http, &format!("{base}/v1/blobs/{id}/status")).await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["success"]["data"], "nonexistent");

    // A confirmation may wait for the registration, but not forever.
    let started = Instant::now();
    let url = format!(
        "{base}/v1/blobs/{id}/confirmation/permanent?wait_for_registration=true&wait_millis=300"
    );
    let (code, _) = get(&net.http, &url).await;
    assert_eq!(code, 400);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );

    // Registered for one epoch: accepted now, refused once the epoch is over.
    net.register(&encoded.metadata, false, 1);
    assert_eq!(net.put_metadata(0, &encoded.metadata).await.0, 201);
    net.ledger.advance_epoch().unwrap();
    let pair = (0..N_SHARDS).find(|&p| net.owner(&id, p) == 0).unwrap();
    let (code, body) = net
        .put_sliver(0, &id, pair, &encoded.primary_sliver(usize::from(pair)))
        .await;
    assert_eq!((code, reason(code, &body).as_str()), (400, "BLOB_EXPIRED"));
    let (code, body) = get(&net.http, &format!("{base}/v1/blobs/{id}/metadata")).await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (404, "BLOB_NOT_AVAILABLE")
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_on_the_same_data_dir_reads_back() {
    let mut net = Net::start(|_| Faults::default()).await;
    let encoded = test_blob(6_000, 10);
    let id = encoded.metadata.blob_id;
    net.register(&encoded.metadata, false, 3);
    net.upload_all(&encoded).await;
    let (code, before) = net.confirmation(3, &id, None).await;
    assert_eq!(code, 200);

    // Stop node 3 and start it again from its configuration file.
    net.nodes[3].take().unwrap().shutdown().await.unwrap();
    let config_path = net.dir.path().join("node3.toml");
    std::fs::write(
        &config_path,
        "listen = \"127.0.0.1:0\"\ndata_dir = \"node3\"\nkey_file = \"node3.key\"\n[ledger]\nkind = \"embedded\"\npath = \"ledger.sqlite\"\n",
    )
    .unwrap();
    let config = NodeConfig::load(&config_path).unwrap();
    net.nodes[3] = Some(RunningNode::start(config).await.unwrap());

    for pair in (0..N_SHARDS).filter(|&p| net.owner(&id, p) == 3) {
        let url = sliver_url(&net.url(3), &id, pair, SliverType::Primary);
        let (code, body) = get(&net.http, &url).await;
        assert_eq!(code, 200);
        assert_eq!(body, encoded.primary_bcs(usize::from(pair)));
    }
    let (code, body) = get(&net.http, &format!("{}/v1/blobs/{id}/metadata", net.url(3))).await;
    assert_eq!(code, 200);
    assert_eq!(body, encoded.metadata.to_bcs());
    let (code, after) = net.confirmation(3, &id, None).await;
    assert_eq!(code, 200);
    // BLS signatures are deterministic: the same statement, the same bytes.
    assert_eq!(before, after);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_key_epoch_and_shards() {
    let mut net = Net::start(|_| Faults::default()).await;
    let (code, body) = get(&net.http, &format!("{}/v1/health", net.url(1))).await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let d = &v["success"]["data"];
    assert_eq!(d["epoch"], 0);
    assert_eq!(d["nodeStatus"], "Active");
    assert_eq!(d["shardSummary"]["owned"], 3);
    assert_eq!(d["shardSummary"]["ownedShardStatus"]["ready"], 3);
    assert!(d["uptime"]["secs"].is_u64());
    assert_eq!(d["eventProgress"]["persisted"], 0);
    let info: ApiSuccess<ServiceHealthInfo> = serde_json::from_slice(&body).unwrap();
    assert_eq!(info.success.data.public_key, *net.keys[1].public());
    assert_eq!(
        info.success.data.owned_shards(),
        net.committee.members()[1].shard_ids
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_makes_nodes_lie_and_stall() {
    let mut net = Net::start(|i| match i {
        0 => Faults {
            corrupt_slivers: true,
            corrupt_metadata: true,
            ..Faults::default()
        },
        1 => Faults {
            wrong_signing_key: true,
            ..Faults::default()
        },
        2 => Faults {
            stall: true,
            ..Faults::default()
        },
        _ => Faults::default(),
    })
    .await;
    let encoded = test_blob(3_000, 11);
    let id = encoded.metadata.blob_id;
    net.register(&encoded.metadata, false, 3);
    let config = EncodingConfig::new(N_SHARDS).unwrap();
    for i in [0, 1, 3] {
        assert_eq!(net.put_metadata(i, &encoded.metadata).await.0, 201);
        for pair in (0..N_SHARDS).filter(|&p| net.owner(&id, p) == i) {
            for s in [
                encoded.primary_sliver(usize::from(pair)),
                encoded.secondary_sliver(usize::from(pair)),
            ] {
                assert_eq!(net.put_sliver(i, &id, pair, &s).await.0, 201);
            }
        }
    }

    // Node 0 lies about slivers and metadata: both still parse, neither verifies.
    let (_, body) = get(&net.http, &format!("{}/v1/blobs/{id}/metadata", net.url(0))).await;
    let m = BlobMetadataWithId::from_bcs(&body).unwrap();
    assert!(m.verify(&config).is_err());
    let pair = (0..N_SHARDS).find(|&p| net.owner(&id, p) == 0).unwrap();
    let (code, body) = get(
        &net.http,
        &sliver_url(&net.url(0), &id, pair, SliverType::Primary),
    )
    .await;
    assert_eq!(code, 200);
    let s = Sliver::from_bcs(&body, SliverType::Primary).unwrap();
    assert!(s.verify(&config, &encoded.metadata.metadata).is_err());

    // Node 1 signs with the wrong key.
    let (code, body) = net.confirmation(1, &id, None).await;
    assert_eq!(code, 200);
    assert_eq!(
        signed_confirmation(&body)
            .verify_confirmation(net.keys[1].public(), 0, id, BlobPersistenceType::Permanent)
            .unwrap_err(),
        ProtocolError::SignatureVerification
    );
    // Its health still shows the registered key.
    let (_, body) = get(&net.http, &format!("{}/v1/health", net.url(1))).await;
    let info: ApiSuccess<ServiceHealthInfo> = serde_json::from_slice(&body).unwrap();
    assert_eq!(info.success.data.public_key, *net.keys[1].public());

    // Node 2 accepts the connection and never answers.
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = quick
        .get(format!("{}/v1/health", net.url(2)))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");

    // Node 3 is honest.
    let (code, body) = net.confirmation(3, &id, None).await;
    assert_eq!(code, 200);
    signed_confirmation(&body)
        .verify_confirmation(net.keys[3].public(), 0, id, BlobPersistenceType::Permanent)
        .unwrap();
    net.shutdown().await;
}

/// Random and mutated bytes through every request decoder: never a panic, never a 5xx, never
/// a stored sliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_never_panic_or_store() {
    let dir = tempfile::tempdir().unwrap();
    let (committee, keys) = test_committee(0, &WEIGHTS);
    let ledger_path = dir.path().join("ledger.sqlite");
    let ledger = Arc::new(
        EmbeddedLedger::create(
            &ledger_path,
            &Genesis::new(committee.clone(), LedgerParams::default()),
        )
        .unwrap(),
    );
    let config = node_config(dir.path(), 0, &ledger_path, Faults::default());
    write_key_file(&config.key_file, &keys[0]).unwrap();
    let node = Arc::new(StorageNode::with_ledger(&config, ledger.clone()).unwrap());
    let app = router(node.clone());

    let encoded = test_blob(2_000, 12);
    let id = encoded.metadata.blob_id;
    let size = EncodingConfig::new(N_SHARDS)
        .unwrap()
        .encoded_blob_length(2_000)
        .unwrap();
    let storage = ledger.reserve_space(size, 3).unwrap();
    ledger
        .register_blob(
            storage.id,
            id,
            encoded.metadata.metadata.root_hash(),
            2_000,
            EncodingType::RS2,
            false,
        )
        .unwrap();
    node.store_metadata(id, encoded.metadata.metadata.clone())
        .await
        .unwrap();
    let mine: Vec<u16> = (0..N_SHARDS)
        .filter(|&p| {
            usize::from(
                committee
                    .shard_owner(pair_to_shard(p, N_SHARDS, &id))
                    .unwrap(),
            ) == 0
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(0xfeed);
    let random_bytes = |rng: &mut StdRng, max: usize| {
        let mut v = vec![0u8; rng.random_range(0..max)];
        rng.fill(&mut v[..]);
        v
    };
    let percent_encoded = |bytes: &[u8]| {
        bytes
            .iter()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
    };
    let types = ["primary", "secondary"];
    for round in 0..300 {
        let (method, uri, body) = match round % 6 {
            0 => (
                "PUT",
                format!("/v1/blobs/{id}/metadata"),
                random_bytes(&mut rng, 2_000),
            ),
            1 => {
                // Valid metadata with random bytes flipped or cut.
                let mut b = encoded.metadata.to_bcs();
                let at = rng.random_range(0..b.len());
                if rng.random() {
                    b[at] ^= 1 << rng.random_range(0..8);
                } else {
                    b.truncate(at);
                }
                ("PUT", format!("/v1/blobs/{id}/metadata"), b)
            }
            2 => {
                let pair = rng.random_range(0..N_SHARDS + 2);
                let t = types[rng.random_range(0..2)];
                (
                    "PUT",
                    format!("/v1/blobs/{id}/slivers/{pair}/{t}"),
                    random_bytes(&mut rng, 3_000),
                )
            }
            3 => {
                // A valid sliver of one of this node's pairs, mutated: bit flips anywhere
                // (data, symbol size, index), truncation, or extension.
                let pair = mine[rng.random_range(0..mine.len())];
                let t = rng.random_range(0..2);
                let s = if t == 0 {
                    encoded.primary_sliver(usize::from(pair))
                } else {
                    encoded.secondary_sliver(usize::from(pair))
                };
                let mut b = s.to_bcs();
                match rng.random_range(0..3) {
                    0 => {
                        let at = rng.random_range(0..b.len());
                        b[at] ^= 1 << rng.random_range(0..8);
                    }
                    1 => b.truncate(rng.random_range(0..b.len())),
                    _ => b.extend(random_bytes(&mut rng, 64).into_iter().chain([0])),
                }
                (
                    "PUT",
                    format!("/v1/blobs/{id}/slivers/{pair}/{}", types[t]),
                    b,
                )
            }
            4 => {
                let seg = percent_encoded(&random_bytes(&mut rng, 50));
                let uri = match rng.random_range(0..5) {
                    0 => format!("/v1/blobs/{seg}/metadata"),
                    1 => format!("/v1/blobs/{id}/slivers/{seg}/primary"),
                    2 => format!("/v1/blobs/{seg}/slivers/1/{seg}"),
                    3 => format!("/v1/blobs/{id}/confirmation/deletable/{seg}"),
                    _ => format!("/v1/blobs/{seg}/status"),
                };
                ("GET", uri, Vec::new())
            }
            _ => {
                let seg = percent_encoded(&random_bytes(&mut rng, 20));
                (
                    "GET",
                    format!("/v1/blobs/{id}/confirmation/permanent?wait_millis={seg}"),
                    Vec::new(),
                )
            }
        };
        let request = Request::builder()
            .method(method)
            .uri(&uri)
            .body(Body::from(body))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let code = response.status().as_u16();
        assert!(
            matches!(code, 200 | 400 | 404 | 413),
            "round {round}: {method} {uri} answered {code}"
        );
        if code >= 400 {
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            reason(code, &body);
        }
    }
    // Nothing but the metadata was ever stored.
    for &pair in &mine {
        for t in [SliverType::Primary, SliverType::Secondary] {
            assert!(!node.store().has_sliver(&id, pair, t), "pair {pair} {t}");
        }
    }
    let _ = keys;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_committee_stores_nothing() {
    let mut net = Net::start(|_| Faults::default()).await;
    let encoded = test_blob(800, 13);
    let id = encoded.metadata.blob_id;
    net.register(&encoded.metadata, false, 3);
    let config = net.config(9, Faults::default());
    write_key_file(
        &config.key_file,
        &ProtocolKeyPair::from_seed(&[99; 32]).unwrap(),
    )
    .unwrap();
    let outsider = RunningNode::start(config).await.unwrap();
    let base = outsider.url();

    let (_, body) = get(&net.http, &format!("{base}/v1/health")).await;
    let info: ApiSuccess<ServiceHealthInfo> = serde_json::from_slice(&body).unwrap();
    assert_eq!(info.success.data.node_status, "NotInCommittee");
    assert!(info.success.data.owned_shards().is_empty());

    let url = format!("{base}/v1/blobs/{id}/metadata");
    let body = bcs::to_bytes(&encoded.metadata.metadata).unwrap();
    assert_eq!(put(&net.http, &url, body).await.0, 201);
    let s = encoded.primary_sliver(0);
    let (code, body) = put(
        &net.http,
        &sliver_url(&base, &id, 0, SliverType::Primary),
        s.to_bcs(),
    )
    .await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "NOT_IN_COMMITTEE")
    );
    let (code, body) = get(
        &net.http,
        &format!("{base}/v1/blobs/{id}/confirmation/permanent"),
    )
    .await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "NOT_IN_COMMITTEE")
    );
    outsider.shutdown().await.unwrap();
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_follow_a_committee_change_at_the_epoch_change() {
    let mut net = Net::start(|_| Faults::default()).await;
    let encoded = test_blob(2_000, 14);
    let id = encoded.metadata.blob_id;
    net.register(&encoded.metadata, false, 5);
    assert_eq!(net.put_metadata(0, &encoded.metadata).await.0, 201);
    let mine = (0..N_SHARDS).find(|&p| net.owner(&id, p) == 0).unwrap();
    let theirs = (0..N_SHARDS).find(|&p| net.owner(&id, p) == 1).unwrap();
    // Epoch 0: node 0 learns its shards.
    let (code, body) = net
        .put_sliver(0, &id, mine, &encoded.primary_sliver(usize::from(mine)))
        .await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let (code, body) = net
        .put_sliver(0, &id, theirs, &encoded.primary_sliver(usize::from(theirs)))
        .await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "SHARD_NOT_ASSIGNED")
    );

    // Epoch 1: nodes 0 and 1 swap their shards.
    let mut members = net.committee.members().to_vec();
    let (a, b) = (members[0].shard_ids.clone(), members[1].shard_ids.clone());
    members[0].shard_ids = b;
    members[1].shard_ids = a;
    net.ledger
        .set_next_committee(Committee::new(1, N_SHARDS, members).unwrap())
        .unwrap();
    net.ledger.advance_epoch().unwrap();
    let (code, body) = net
        .put_sliver(0, &id, mine, &encoded.secondary_sliver(usize::from(mine)))
        .await;
    assert_eq!(
        (code, reason(code, &body).as_str()),
        (400, "SHARD_NOT_ASSIGNED")
    );
    let (code, body) = net
        .put_sliver(0, &id, theirs, &encoded.primary_sliver(usize::from(theirs)))
        .await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let (_, body) = get(&net.http, &format!("{}/v1/health", net.url(0))).await;
    let info: ApiSuccess<ServiceHealthInfo> = serde_json::from_slice(&body).unwrap();
    assert_eq!(info.success.data.epoch, 1);
    net.shutdown().await;
}
