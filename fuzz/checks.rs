//! What the fuzz targets check, shared by `fuzz/fuzz_targets/*.rs` (libFuzzer, nightly) and
//! `tests/fuzz_smoke.rs` (random and mutated inputs under plain `cargo test`), both of which
//! include this file with `#[path]`.
//!
//! Each check takes arbitrary bytes and panics only on a real defect: a parser that panics,
//! accepts bytes it does not re-serialise identically, or lets something that is not the
//! genuine sliver or metadata verify.

#![allow(dead_code)]

use std::sync::OnceLock;

use walrusfs::encoding::{
    BlobId, BlobMetadataWithId, EncodedBlob, EncodingConfig, Sliver, SliverBcsReader, SliverType,
};

/// A small valid blob, encoded: the reference slivers and metadata are checked against.
pub struct Fixture {
    pub config: EncodingConfig,
    pub blob: Vec<u8>,
    pub encoded: EncodedBlob,
}

impl Fixture {
    fn new(n: u16, len: usize) -> Self {
        let config = EncodingConfig::new(n).expect("valid shard count");
        // Distinct, non-zero contents, so that no two slivers are alike.
        let blob: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        let encoded = config.encode(&blob).expect("encode fixture");
        Self {
            config,
            blob,
            encoded,
        }
    }

    pub fn n(&self) -> usize {
        self.config.n_shards_usize()
    }

    pub fn sliver(&self, sliver_type: SliverType, pair: usize) -> Sliver {
        match sliver_type {
            SliverType::Primary => self.encoded.primary_sliver(pair),
            SliverType::Secondary => self.encoded.secondary_sliver(pair),
        }
    }
}

/// n = 4 (symbol size 4, primary slivers of 12 bytes) and n = 10 (symbol size 4, 28 bytes).
pub fn fixtures() -> &'static [Fixture] {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| vec![Fixture::new(4, 20), Fixture::new(10, 100)])
}

const TYPES: [SliverType; 2] = [SliverType::Primary, SliverType::Secondary];

/// `Sliver::from_bcs` for both types: what parses re-serialises to the same bytes, verifying it
/// against the fixtures' metadata does not panic and succeeds only for the genuine sliver, and
/// decoding with it among genuine slivers neither panics nor (after verification) goes wrong.
pub fn sliver_bcs(data: &[u8]) {
    for sliver_type in TYPES {
        // The streaming parser the client uses on response bodies agrees with
        // `from_bcs` however the body is cut into chunks.
        let parsed = Sliver::from_bcs(data, sliver_type);
        let cuts = [
            data.first().map_or(0, |&b| usize::from(b)),
            data.last().map_or(0, |&b| usize::from(b) * 7),
        ];
        let mut reader = SliverBcsReader::new(sliver_type).reserve_at_most(1 << 20);
        let (a, b) = (cuts[0].min(data.len()), cuts[1].min(data.len()));
        let (a, b) = (a.min(b), a.max(b));
        let streamed = [&data[..a], &data[a..b], &data[b..]]
            .into_iter()
            .try_for_each(|chunk| reader.feed(chunk))
            .and_then(|()| reader.finish());
        assert_eq!(
            streamed.as_ref().ok(),
            parsed.as_ref().ok(),
            "SliverBcsReader and Sliver::from_bcs disagree (cut at {a} and {b})"
        );
        // The node's decoder of sliver PUT bodies (the body in a page-aligned buffer, the
        // symbols borrowed from it) agrees with `from_bcs` too, and keeps the bytes as sent.
        let mut aligned = walrusfs::direct_io::aligned_with_capacity(data.len());
        aligned.extend_from_slice(data);
        let received = walrusfs::node::ReceivedSliver::new(aligned, sliver_type);
        assert_eq!(
            received.as_ref().ok().map(|r| r.view().to_sliver()),
            parsed.as_ref().ok().cloned(),
            "ReceivedSliver and Sliver::from_bcs disagree"
        );
        if let Ok(received) = &received {
            assert_eq!(received.bcs(), data, "ReceivedSliver changed the bytes");
        }
        let Ok(sliver) = parsed else {
            continue;
        };
        assert_eq!(sliver.sliver_type, sliver_type);
        assert!(
            sliver.symbol_size > 0 && sliver.data.len() % usize::from(sliver.symbol_size) == 0,
            "accepted a sliver that is not whole symbols: {sliver:?}"
        );
        assert_eq!(sliver.to_bcs(), data, "sliver BCS does not round-trip");

        for f in fixtures() {
            let meta = &f.encoded.metadata.metadata;
            if sliver.verify(&f.config, meta).is_ok() {
                let pair = usize::from(sliver.pair_index(f.config.n_shards()));
                assert_eq!(
                    sliver,
                    f.sliver(sliver_type, pair),
                    "a sliver that is not the blob's passed verification"
                );
            }
            if sliver_type == SliverType::Primary {
                // The candidate first, then all genuine slivers but the last (so that no
                // Reed–Solomon decode is needed, which costs milliseconds): a candidate that
                // wrongly passed verification would take its index's place in the output.
                let genuine = (0..f.n() - 1).map(|i| f.sliver(sliver_type, i));
                let with_candidate: Vec<Sliver> =
                    std::iter::once(sliver.clone()).chain(genuine).collect();
                let decoded = f.config.verify_and_decode(meta, with_candidate.clone());
                assert_eq!(
                    decoded.as_ref(),
                    Ok(&f.blob),
                    "verify_and_decode went wrong"
                );
                // Unverified input to decode_verified may decode to garbage, but must not panic.
                let _ = f.config.decode_verified(meta, with_candidate);
            }
        }
    }
}

/// `BlobMetadataWithId::from_bcs`: what parses re-serialises to the same bytes; `verify` for
/// n = 4 and 10 does not panic and passes only if the metadata hashes to its blob ID (for a
/// fixture's blob ID: only if it is that fixture's metadata); consumers of verified metadata
/// do not panic.
pub fn metadata_bcs(data: &[u8]) {
    let Ok(m) = BlobMetadataWithId::from_bcs(data) else {
        return;
    };
    assert_eq!(m.to_bcs(), data, "metadata BCS does not round-trip");
    for n in [4u16, 10] {
        let config = EncodingConfig::new(n).expect("valid shard count");
        let verified = m.verify(&config);
        let _ = verified.as_ref().map_err(|e| e.to_string());
        if verified.is_err() {
            continue;
        }
        assert_eq!(m.metadata.hashes().len(), usize::from(n));
        assert_eq!(m.metadata.compute_blob_id(), m.blob_id);
        let len = m.metadata.unencoded_length();
        assert!(len <= config.max_blob_size());
        let parts = config
            .primary_slivers_for_range(len, 0..len)
            .expect("whole-blob range of verified metadata");
        assert_eq!(parts.last().map_or(0, |p| p.in_blob.end), len);
        for f in fixtures().iter().filter(|f| f.config == config) {
            if m.blob_id == f.encoded.metadata.blob_id {
                assert_eq!(
                    m, f.encoded.metadata,
                    "different metadata with the fixture's ID"
                );
            }
            for sliver_type in TYPES {
                for pair in 0..f.n() {
                    let s = f.sliver(sliver_type, pair);
                    if s.verify(&config, &m.metadata).is_ok() {
                        assert_eq!(
                            m.metadata.hashes()[pair].hash(sliver_type),
                            f.encoded.metadata.metadata.hashes()[pair].hash(sliver_type)
                        );
                    }
                }
            }
            let all = (0..f.n()).map(|i| f.sliver(SliverType::Primary, i));
            if let Ok(bytes) = config.verify_and_decode(&m.metadata, all) {
                assert_eq!(bytes.len() as u64, len);
            }
        }
    }
}

/// `str::parse::<BlobId>` on UTF-8 input: accepted strings are exactly the Display form of
/// the parsed ID. Also: any 32 bytes, displayed, parse back to themselves.
pub fn blob_id_parse(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        match s.parse::<BlobId>() {
            Ok(id) => assert_eq!(id.to_string(), s, "accepted a non-canonical blob ID"),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    if let Some(bytes) = data.get(..BlobId::LENGTH) {
        let id = BlobId::try_from(bytes).expect("32 bytes");
        let shown = id.to_string();
        assert_eq!(shown.len(), 43);
        assert_eq!(
            shown.parse::<BlobId>(),
            Ok(id),
            "Display does not parse back"
        );
    }
}
