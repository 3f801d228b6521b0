//! Property tests of the RS2 encoding layer: decoding from any sufficient set of primary
//! slivers, rejection of corrupt slivers and metadata, byte-range mapping and BCS round trips.
//!
//! Blob contents come from a seed (plus a shape: random, all zeros, sparse, random prefix then
//! zeros) so that cases of a few hundred KB stay cheap to generate and to shrink; the zero
//! shapes matter because the encoder short-cuts all-zero rows and columns. Per-case choices
//! (which slivers, which bit) are drawn from a second seed. A failing case prints its
//! `(n, len, shape, seed, pick)` and proptest stores it under `tests/proptest-regressions/`.
//! The default case counts take a few seconds; `PROPTEST_CASES=3000` runs a deeper pass (about
//! two minutes on two cores).

use std::collections::BTreeSet;
use std::ops::Range;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use walrusfs::encoding::{
    BlobMetadataWithId, EncodedBlob, EncodingConfig, EncodingError, Sliver, SliverDefect,
    SliverType,
};

/// `default` cases, or `PROPTEST_CASES` (scaled: a tenth of it for the n = 100 test) for a
/// deeper run, e.g. `PROPTEST_CASES=5000 cargo test --test encoding_props`.
fn config_with_cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .map_or(default, |c| if default < 100 { (c / 10).max(1) } else { c });
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Shape {
    Random,
    Zeros,
    /// Zeros with a handful of random non-zero bytes.
    Sparse,
    /// Random bytes for a random prefix, zeros after it.
    RandomThenZeros,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        6 => Just(Shape::Random),
        1 => Just(Shape::Zeros),
        2 => Just(Shape::Sparse),
        2 => Just(Shape::RandomThenZeros),
    ]
}

fn small_n() -> impl Strategy<Value = u16> {
    prop_oneof![Just(4u16), Just(7), Just(10), Just(13)]
}

/// Blob lengths: the edge cases 0 and 1, tiny, small, and up to 300 KB.
fn blob_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(0usize),
        1 => Just(1usize),
        2 => 2..=64usize,
        3 => 65..=8192usize,
        3 => 8193..=300_000usize,
    ]
}

fn make_blob(len: usize, shape: Shape, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_b10b);
    let mut blob = vec![0u8; len];
    match shape {
        Shape::Random => rng.fill_bytes(&mut blob),
        Shape::Zeros => {}
        Shape::Sparse => {
            if len > 0 {
                for _ in 0..rng.random_range(1..=8) {
                    let at = rng.random_range(0..len);
                    blob[at] = rng.random_range(1..=255);
                }
            }
        }
        Shape::RandomThenZeros => {
            let prefix = rng.random_range(0..=len);
            rng.fill_bytes(&mut blob[..prefix]);
        }
    }
    blob
}

fn config(n: u16) -> EncodingConfig {
    EncodingConfig::new(n).expect("valid shard count")
}

/// n − 2f: the number of distinct primary slivers decoding needs.
fn k(config: &EncodingConfig) -> usize {
    usize::from(config.n_primary_source_symbols())
}

struct Case {
    config: EncodingConfig,
    blob: Vec<u8>,
    enc: EncodedBlob,
    rng: StdRng,
}

fn case(n: u16, len: usize, shape: Shape, seed: u64, pick: u64) -> Case {
    let config = config(n);
    let len = len.min(config.max_blob_size() as usize);
    let blob = make_blob(len, shape, seed);
    let enc = config.encode(&blob).expect("encode");
    Case {
        config,
        blob,
        enc,
        rng: StdRng::seed_from_u64(pick),
    }
}

fn primaries(enc: &EncodedBlob, indices: impl IntoIterator<Item = usize>) -> Vec<Sliver> {
    indices.into_iter().map(|i| enc.primary_sliver(i)).collect()
}

/// `count` distinct indices out of `0..n`, in random order.
fn sample(rng: &mut StdRng, n: usize, count: usize) -> Vec<usize> {
    rand::seq::index::sample(rng, n, count).into_vec()
}

fn flip_random_bit(rng: &mut StdRng, bytes: &mut [u8]) -> usize {
    let bit = rng.random_range(0..bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
    bit
}

fn expect_mismatch(result: Result<(), EncodingError>, sliver_type: SliverType, index: u16) {
    assert_eq!(
        result,
        Err(EncodingError::InvalidSliver {
            sliver_type,
            index,
            reason: SliverDefect::HashMismatch
        })
    );
}

fn decode_both(c: &Case, slivers: &[Sliver]) -> [Result<Vec<u8>, EncodingError>; 2] {
    let meta = &c.enc.metadata.metadata;
    [
        c.config.decode_verified(meta, slivers.to_vec()),
        c.config.verify_and_decode(meta, slivers.to_vec()),
    ]
}

fn assert_decodes(c: &Case, slivers: &[Sliver]) -> Result<(), TestCaseError> {
    for (which, got) in ["decode_verified", "verify_and_decode"]
        .into_iter()
        .zip(decode_both(c, slivers))
    {
        match got {
            Ok(bytes) => prop_assert!(
                bytes == c.blob,
                "{which} returned {} bytes that differ from the {}-byte blob",
                bytes.len(),
                c.blob.len()
            ),
            Err(e) => prop_assert!(false, "{which} failed: {e}"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding, consistency and decoding
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config_with_cases(256))]

    /// Every sliver the encoder emits verifies against its own metadata (an independent
    /// recomputation of each Merkle root, without the encoder's zero short-cuts), the metadata
    /// verifies and matches `compute_metadata`, and any n − 2f primary slivers decode the blob.
    #[test]
    fn decodes_from_any_k_primary_slivers(
        n in small_n(), len in blob_len(), shape in shape(), seed: u64, pick: u64,
    ) {
        let mut c = case(n, len, shape, seed, pick);
        let meta = &c.enc.metadata;
        prop_assert_eq!(meta.metadata.unencoded_length(), c.blob.len() as u64);
        prop_assert_eq!(meta.verify(&c.config), Ok(()));
        prop_assert_eq!(&c.config.compute_metadata(&c.blob).unwrap(), meta);
        prop_assert_eq!(c.enc.n_pairs(), usize::from(n));
        for pair in 0..c.enc.n_pairs() {
            prop_assert_eq!(c.enc.primary_sliver(pair).verify(&c.config, &meta.metadata), Ok(()));
            prop_assert_eq!(
                c.enc.secondary_sliver(pair).verify(&c.config, &meta.metadata),
                Ok(())
            );
        }

        let chosen = sample(&mut c.rng, usize::from(n), k(&c.config));
        let slivers = primaries(&c.enc, chosen);
        assert_decodes(&c, &slivers)?;
    }

    /// More than n − 2f slivers, duplicates, and secondary slivers (real ones, and forged
    /// "secondary" slivers shaped like missing primary ones) change nothing.
    #[test]
    fn decodes_from_supersets_with_duplicates_and_secondaries(
        n in small_n(), len in blob_len(), shape in shape(), seed: u64, pick: u64,
    ) {
        let mut c = case(n, len, shape, seed, pick);
        let n = usize::from(n);
        let count = c.rng.random_range(k(&c.config)..=n);
        let chosen = sample(&mut c.rng, n, count);
        let mut slivers = primaries(&c.enc, chosen.iter().copied());
        for _ in 0..c.rng.random_range(0..=n) {
            let dup = slivers[c.rng.random_range(0..count)].clone();
            slivers.push(dup);
        }
        for _ in 0..c.rng.random_range(0..=n) {
            slivers.push(c.enc.secondary_sliver(c.rng.random_range(0..n)));
        }
        let missing: Vec<usize> = (0..n).filter(|i| !chosen.contains(i)).collect();
        for &i in &missing {
            let mut forged = c.enc.primary_sliver(i);
            forged.sliver_type = SliverType::Secondary;
            c.rng.fill_bytes(&mut forged.data);
            slivers.push(forged);
        }
        slivers.shuffle(&mut c.rng);
        assert_decodes(&c, &slivers)?;
    }

    /// With fewer than n − 2f distinct primary slivers (however many duplicates and secondary
    /// slivers come along), both decoders report `NotEnoughSlivers` with the right counts.
    #[test]
    fn fewer_than_k_slivers_is_not_enough(
        n in small_n(), len in blob_len(), shape in shape(), seed: u64, pick: u64,
    ) {
        let mut c = case(n, len, shape, seed, pick);
        let n = usize::from(n);
        let need = k(&c.config);
        let have = c.rng.random_range(0..need);
        let chosen = sample(&mut c.rng, n, have);
        let mut slivers = primaries(&c.enc, chosen.iter().copied());
        if have > 0 {
            for _ in 0..c.rng.random_range(0..=n) {
                let dup = slivers[c.rng.random_range(0..have)].clone();
                slivers.push(dup);
            }
        }
        for pair in 0..n {
            if c.rng.random_bool(0.5) {
                slivers.push(c.enc.secondary_sliver(pair));
            }
        }
        slivers.shuffle(&mut c.rng);
        for got in decode_both(&c, &slivers) {
            prop_assert_eq!(got, Err(EncodingError::NotEnoughSlivers { have, need }));
        }
    }

    /// `verify_and_decode` drops corrupt slivers (flipped bits, wrong index, length, symbol size
    /// or type), even corrupt copies of good slivers, and decodes exactly from the good ones as
    /// long as n − 2f distinct good ones remain.
    #[test]
    fn verify_and_decode_skips_corrupt_slivers(
        n in small_n(), len in blob_len(), shape in shape(), seed: u64, pick: u64,
    ) {
        let mut c = case(n, len, shape, seed, pick);
        let n = usize::from(n);
        let need = k(&c.config);
        let good = c.rng.random_range(need..=n);
        let order = sample(&mut c.rng, n, n);
        let mut slivers = primaries(&c.enc, order[..good].iter().copied());
        // Corrupt versions of the slivers left out and of some of the good ones.
        let mut victims: Vec<usize> = order[good..].to_vec();
        for _ in 0..c.rng.random_range(0..=good) {
            victims.push(order[c.rng.random_range(0..good)]);
        }
        for i in victims {
            let mut s = c.enc.primary_sliver(i);
            match c.rng.random_range(0..6) {
                0 => {
                    flip_random_bit(&mut c.rng, &mut s.data);
                }
                1 => s.index = (s.index + c.rng.random_range(1..n as u16)) % n as u16,
                2 => s.symbol_size += 2,
                3 => {
                    let sym = usize::from(s.symbol_size);
                    s.data.truncate(s.data.len() - sym);
                }
                4 => s.data.extend(std::iter::repeat_n(0x55, usize::from(s.symbol_size))),
                _ => s.sliver_type = SliverType::Secondary,
            }
            slivers.push(s);
        }
        slivers.shuffle(&mut c.rng);
        let got = c.config.verify_and_decode(&c.enc.metadata.metadata, slivers);
        prop_assert!(got.as_ref() == Ok(&c.blob), "verify_and_decode: {:?}", got.map(|b| b.len()));
    }

    /// Corrupt slivers do not count towards the n − 2f needed.
    #[test]
    fn corrupt_slivers_do_not_count(
        n in small_n(), len in blob_len(), shape in shape(), seed: u64, pick: u64,
    ) {
        let mut c = case(n, len, shape, seed, pick);
        let n = usize::from(n);
        let need = k(&c.config);
        let have = c.rng.random_range(0..need);
        let order = sample(&mut c.rng, n, n);
        let mut slivers = primaries(&c.enc, order[..have].iter().copied());
        for &i in &order[have..] {
            let mut s = c.enc.primary_sliver(i);
            flip_random_bit(&mut c.rng, &mut s.data);
            slivers.push(s);
        }
        slivers.shuffle(&mut c.rng);
        let got = c.config.verify_and_decode(&c.enc.metadata.metadata, slivers);
        prop_assert_eq!(got, Err(EncodingError::NotEnoughSlivers { have, need }));
    }
}

// ---------------------------------------------------------------------------------------------
// Sliver verification
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config_with_cases(256))]

    /// One flipped bit anywhere in a sliver's data is a hash mismatch.
    #[test]
    fn flipped_bit_is_hash_mismatch(
        n in small_n(), len in blob_len(), shape in shape(), seed: u64, pick: u64,
    ) {
        let mut c = case(n, len, shape, seed, pick);
        let meta = &c.enc.metadata.metadata;
        for _ in 0..4 {
            let pair = c.rng.random_range(0..usize::from(n));
            let mut s = if c.rng.random_bool(0.5) {
                c.enc.primary_sliver(pair)
            } else {
                c.enc.secondary_sliver(pair)
            };
            prop_assert_eq!(s.verify(&c.config, meta), Ok(()));
            flip_random_bit(&mut c.rng, &mut s.data);
            expect_mismatch(s.verify(&c.config, meta), s.sliver_type, s.index);
        }
    }

    /// Wrong index, length, symbol size or type give the matching defect; a sliver moved to
    /// another index is a hash mismatch unless the two slivers happen to be identical.
    #[test]
    fn malformed_slivers_give_matching_defect(
        n in small_n(), len in blob_len(), shape in shape(), seed: u64, pick: u64,
    ) {
        let mut c = case(n, len, shape, seed, pick);
        let meta = &c.enc.metadata.metadata;
        let nn = usize::from(n);
        let s_size = c.enc.symbol_size();
        let pair = c.rng.random_range(0..nn);
        for good in [c.enc.primary_sliver(pair), c.enc.secondary_sliver(pair)] {
            let ty = good.sliver_type;
            let defect = |s: &Sliver, reason: SliverDefect| -> Result<(), EncodingError> {
                Err(EncodingError::InvalidSliver { sliver_type: ty, index: s.index, reason })
            };

            let mut s = good.clone();
            s.index = c.rng.random_range(n..=u16::MAX);
            prop_assert_eq!(s.verify(&c.config, meta), defect(&s, SliverDefect::IndexTooLarge));

            let expected = good.data.len();
            let mut s = good.clone();
            let symbols = c.rng.random_range(1..=3usize);
            if c.rng.random_bool(0.5) {
                s.data.extend(std::iter::repeat_n(0, symbols * usize::from(s_size)));
            } else {
                let cut = (symbols * usize::from(s_size)).min(expected);
                s.data.truncate(expected - cut);
            }
            let actual = s.data.len();
            prop_assert_eq!(
                s.verify(&c.config, meta),
                defect(&s, SliverDefect::WrongLength { actual, expected })
            );

            let mut s = good.clone();
            let wrong = loop {
                let w = c.rng.random_range(0..=u16::MAX);
                if w != s_size {
                    break w;
                }
            };
            s.symbol_size = wrong;
            prop_assert_eq!(
                s.verify(&c.config, meta),
                defect(&s, SliverDefect::WrongSymbolSize { actual: wrong, expected: s_size })
            );

            // Labelled as the other type: the lengths of the two types always differ.
            let mut s = good.clone();
            s.sliver_type = match ty {
                SliverType::Primary => SliverType::Secondary,
                SliverType::Secondary => SliverType::Primary,
            };
            let other_len = c.config.sliver_len(s.sliver_type, c.blob.len() as u64).unwrap();
            prop_assert_eq!(
                s.verify(&c.config, meta),
                Err(EncodingError::InvalidSliver {
                    sliver_type: s.sliver_type,
                    index: s.index,
                    reason: SliverDefect::WrongLength { actual: expected, expected: other_len },
                })
            );

            // Moved to another (valid) index.
            let to = (good.index + c.rng.random_range(1..n)) % n;
            let mut s = good.clone();
            s.index = to;
            let at_to = match ty {
                SliverType::Primary => c.enc.primary_data(usize::from(to)),
                SliverType::Secondary => c.enc.secondary_data(usize::from(to)),
            };
            if at_to == good.data {
                prop_assert_eq!(s.verify(&c.config, meta), Ok(()));
            } else {
                expect_mismatch(s.verify(&c.config, meta), ty, to);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata
// ---------------------------------------------------------------------------------------------

/// A flipped bit in BCS metadata never yields metadata that verifies: it either does not parse
/// or does not hash to its blob ID (or is otherwise invalid). What parses re-serialises to the
/// same bytes (BCS is canonical).
fn check_flipped_metadata(
    config: &EncodingConfig,
    bytes: &[u8],
    bit: usize,
) -> Result<(), TestCaseError> {
    let mut bad = bytes.to_vec();
    bad[bit / 8] ^= 1 << (bit % 8);
    if let Ok(m) = BlobMetadataWithId::from_bcs(&bad) {
        prop_assert!(
            m.to_bcs() == bad,
            "bit {bit}: parsed metadata re-serialises differently"
        );
        prop_assert!(
            m.verify(config).is_err(),
            "bit {bit} of {} flipped, yet the metadata verifies",
            bytes.len()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config_with_cases(256))]

    #[test]
    fn metadata_bit_flips_never_verify(
        n in small_n(), len in blob_len(), shape in shape(), seed: u64, pick: u64,
    ) {
        let cfg = config(n);
        let len = len.min(cfg.max_blob_size() as usize);
        let meta = cfg.compute_metadata(&make_blob(len, shape, seed)).unwrap();
        let bytes = meta.to_bcs();
        prop_assert_eq!(&BlobMetadataWithId::from_bcs(&bytes).unwrap(), &meta);
        let mut rng = StdRng::seed_from_u64(pick);
        for _ in 0..32 {
            let bit = rng.random_range(0..bytes.len() * 8);
            check_flipped_metadata(&cfg, &bytes, bit)?;
        }
        // Truncated or extended metadata does not parse.
        let cut = rng.random_range(0..bytes.len());
        prop_assert!(BlobMetadataWithId::from_bcs(&bytes[..cut]).is_err());
        let mut longer = bytes.clone();
        longer.push(rng.random());
        prop_assert!(BlobMetadataWithId::from_bcs(&longer).is_err());
        // Valid metadata for one committee size is rejected by another.
        let other = n + 1;
        prop_assert_eq!(
            meta.verify(&config(other)),
            Err(EncodingError::WrongShardCount { actual: usize::from(n), expected: usize::from(other) })
        );
    }
}

/// Every single bit of the metadata, for a few blobs and small committees.
#[test]
fn metadata_every_bit_flip_fails() {
    for (n, len) in [(4u16, 0usize), (4, 1), (4, 1000), (7, 77_777), (10, 5)] {
        let config = config(n);
        let meta = config
            .compute_metadata(&make_blob(len, Shape::Random, len as u64))
            .unwrap();
        let bytes = meta.to_bcs();
        for bit in 0..bytes.len() * 8 {
            check_flipped_metadata(&config, &bytes, bit).unwrap();
        }
        for cut in 0..bytes.len() {
            assert!(
                BlobMetadataWithId::from_bcs(&bytes[..cut]).is_err(),
                "n={n} cut={cut}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Range reads
// ---------------------------------------------------------------------------------------------

fn check_range(c: &Case, range: Range<u64>) -> Result<(), TestCaseError> {
    let parts = c
        .config
        .primary_slivers_for_range(c.blob.len() as u64, range.clone())
        .map_err(|e| TestCaseError::fail(format!("{range:?}: {e}")))?;
    let mut out = Vec::new();
    let mut at = range.start;
    for p in &parts {
        prop_assert!(
            usize::from(p.sliver) < k(&c.config),
            "{p:?} is not systematic"
        );
        prop_assert_eq!(p.in_blob.start, at);
        prop_assert!(p.in_blob.end > p.in_blob.start, "empty part {:?}", p);
        prop_assert_eq!(p.in_sliver.len() as u64, p.in_blob.end - p.in_blob.start);
        at = p.in_blob.end;
        let sliver = c.enc.primary_sliver(usize::from(p.sliver));
        prop_assert!(
            p.in_sliver.end <= sliver.data.len(),
            "{p:?} overruns the sliver"
        );
        out.extend_from_slice(&sliver.data[p.in_sliver.clone()]);
    }
    prop_assert_eq!(at, range.end);
    let expected = &c.blob[range.start as usize..range.end as usize];
    prop_assert!(
        out == expected,
        "range {range:?} of a {}-byte blob",
        c.blob.len()
    );
    Ok(())
}

proptest! {
    #![proptest_config(config_with_cases(256))]

    #[test]
    fn range_reads_match_the_blob(
        n in small_n(), len in blob_len(), shape in shape(), seed: u64, pick: u64,
    ) {
        let mut c = case(n, len, shape, seed, pick);
        let len = c.blob.len() as u64;
        check_range(&c, 0..len)?;
        check_range(&c, len..len)?;
        check_range(&c, 0..0)?;
        let row = c.config.sliver_len(SliverType::Primary, len).unwrap() as u64;
        for _ in 0..16 {
            let start = c.rng.random_range(0..=len);
            let end = c.rng.random_range(start..=len);
            check_range(&c, start..end)?;
            // Ranges starting or ending next to a row (= systematic sliver) boundary.
            let b = row * c.rng.random_range(0..=len / row);
            let lo = b.saturating_sub(c.rng.random_range(0..=2)).min(len);
            let hi = (b + c.rng.random_range(0..=2)).min(len);
            check_range(&c, lo..hi)?;
        }

        for _ in 0..8 {
            let (start, end) = if c.rng.random_bool(0.5) {
                // Ends past the blob.
                let end = c.rng.random_range(len + 1..=len + 1 + row * 2);
                (c.rng.random_range(0..=end), end)
            } else if len > 0 {
                // Start after end.
                let end = c.rng.random_range(0..len);
                (c.rng.random_range(end + 1..=len), end)
            } else {
                (1, 0)
            };
            let got = c.config.primary_slivers_for_range(len, start..end);
            prop_assert_eq!(got, Err(EncodingError::RangeOutOfBounds { start, end, len }));
        }
        let far = c.config.primary_slivers_for_range(len, u64::MAX - 1..u64::MAX);
        prop_assert_eq!(
            far,
            Err(EncodingError::RangeOutOfBounds { start: u64::MAX - 1, end: u64::MAX, len })
        );
    }
}

// ---------------------------------------------------------------------------------------------
// BCS
// ---------------------------------------------------------------------------------------------

/// walrus-core's `SliverData` as plain serde types (a `&[u8]` is a BCS byte vector).
#[derive(serde::Serialize)]
struct WireSymbols<'a> {
    data: &'a [u8],
    symbol_size: u16,
}

#[derive(serde::Serialize)]
struct WireSliver<'a> {
    symbols: WireSymbols<'a>,
    index: u16,
}

fn check_sliver_bcs(s: &Sliver) -> Result<(), TestCaseError> {
    let bytes = s.to_bcs();
    let reference = bcs::to_bytes(&WireSliver {
        symbols: WireSymbols {
            data: &s.data,
            symbol_size: s.symbol_size,
        },
        index: s.index,
    })
    .unwrap();
    prop_assert!(bytes == reference, "{s:?}: differs from the bcs crate");
    prop_assert_eq!(&Sliver::from_bcs(&bytes, s.sliver_type).unwrap(), s);
    Ok(())
}

proptest! {
    #![proptest_config(config_with_cases(256))]

    /// Slivers and metadata of encoded blobs survive BCS; sliver BCS is the bcs crate's.
    #[test]
    fn encoded_slivers_and_metadata_round_trip(
        n in small_n(), len in blob_len(), shape in shape(), seed: u64,
    ) {
        let c = case(n, len, shape, seed, 0);
        let enc = std::sync::Arc::new(c.enc);
        let joined = |pieces: Vec<bytes::Bytes>| pieces.concat();
        for pair in 0..enc.n_pairs() {
            let p = enc.primary_sliver(pair);
            prop_assert_eq!(p.to_bcs(), enc.primary_bcs(pair));
            prop_assert_eq!(p.to_bcs(), joined(enc.sliver_bcs_pieces(pair, SliverType::Primary)));
            check_sliver_bcs(&p)?;
            let s = enc.secondary_sliver(pair);
            prop_assert_eq!(s.to_bcs(), enc.secondary_bcs(pair));
            prop_assert_eq!(s.to_bcs(), joined(enc.sliver_bcs_pieces(pair, SliverType::Secondary)));
            check_sliver_bcs(&s)?;
        }
        let meta = &enc.metadata;
        let bytes = meta.to_bcs();
        prop_assert_eq!(&bytes, &bcs::to_bytes(meta).unwrap());
        prop_assert_eq!(&BlobMetadataWithId::from_bcs(&bytes).unwrap(), meta);
    }

    /// Arbitrary well-formed slivers round-trip (including ULEB128 lengths of 1 to 3 bytes);
    /// truncated, extended or ill-sized ones are rejected.
    #[test]
    fn arbitrary_slivers_round_trip(
        symbol_size in prop_oneof![1u16..=8, 9u16..=u16::MAX],
        symbols in prop_oneof![0usize..=4, 0usize..=300],
        index: u16,
        secondary: bool,
        seed: u64,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let len = (usize::from(symbol_size) * symbols).min(300_000) / usize::from(symbol_size)
            * usize::from(symbol_size);
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        let sliver_type = if secondary { SliverType::Secondary } else { SliverType::Primary };
        let s = Sliver { sliver_type, index, symbol_size, data };
        check_sliver_bcs(&s)?;
        let bytes = s.to_bcs();
        let cut = rng.random_range(0..bytes.len());
        prop_assert!(Sliver::from_bcs(&bytes[..cut], sliver_type).is_err());
        let mut longer = bytes.clone();
        longer.push(rng.random());
        prop_assert!(Sliver::from_bcs(&longer, sliver_type).is_err());
        // Symbol size 0, or one that does not divide the length.
        let tail = bytes.len() - 4;
        let mut bad = bytes.clone();
        bad[tail..tail + 2].copy_from_slice(&0u16.to_le_bytes());
        prop_assert!(Sliver::from_bcs(&bad, sliver_type).is_err());
        if len > 0 {
            let wrong = loop {
                let w = rng.random_range(1..=u16::MAX);
                if len % usize::from(w) != 0 {
                    break w;
                }
            };
            bad[tail..tail + 2].copy_from_slice(&wrong.to_le_bytes());
            prop_assert!(Sliver::from_bcs(&bad, sliver_type).is_err());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A large committee (n = 100), few cases
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config_with_cases(12))]

    #[test]
    fn hundred_shards(len in blob_len(), shape in shape(), seed: u64, pick: u64) {
        let mut c = case(100, len, shape, seed, pick);
        let need = k(&c.config);
        prop_assert_eq!(need, 34);
        prop_assert_eq!(c.enc.metadata.verify(&c.config), Ok(()));

        // Exactly n − 2f random primaries, plus duplicates and secondaries.
        let chosen = sample(&mut c.rng, 100, need);
        let mut slivers = primaries(&c.enc, chosen.iter().copied());
        assert_decodes(&c, &slivers)?;
        for _ in 0..10 {
            slivers.push(c.enc.secondary_sliver(c.rng.random_range(0..100)));
            slivers.push(slivers[c.rng.random_range(0..need)].clone());
        }
        slivers.shuffle(&mut c.rng);
        assert_decodes(&c, &slivers)?;

        // One fewer distinct primary is not enough.
        let short = primaries(&c.enc, chosen[1..].iter().copied());
        for got in decode_both(&c, &short) {
            prop_assert_eq!(got, Err(EncodingError::NotEnoughSlivers { have: need - 1, need }));
        }

        // All the non-systematic slivers plus a few corrupt ones.
        let distinct: BTreeSet<usize> = (need..100).collect();
        let mut slivers = primaries(&c.enc, distinct);
        for _ in 0..5 {
            let mut s = c.enc.primary_sliver(c.rng.random_range(0..need));
            flip_random_bit(&mut c.rng, &mut s.data);
            slivers.push(s);
        }
        slivers.shuffle(&mut c.rng);
        let got = c.config.verify_and_decode(&c.enc.metadata.metadata, slivers);
        prop_assert!(got.as_ref() == Ok(&c.blob));

        let meta = &c.enc.metadata.metadata;
        for _ in 0..3 {
            let pair = c.rng.random_range(0..100);
            for mut s in [c.enc.primary_sliver(pair), c.enc.secondary_sliver(pair)] {
                prop_assert_eq!(s.verify(&c.config, meta), Ok(()));
                flip_random_bit(&mut c.rng, &mut s.data);
                expect_mismatch(s.verify(&c.config, meta), s.sliver_type, s.index);
            }
        }

        let len = c.blob.len() as u64;
        for _ in 0..8 {
            let start = c.rng.random_range(0..=len);
            let end = c.rng.random_range(start..=len);
            check_range(&c, start..end)?;
        }
    }
}
