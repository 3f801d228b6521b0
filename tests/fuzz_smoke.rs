//! The fuzz targets' checks (`fuzz/checks.rs`) on a few thousand inputs each, under plain
//! `cargo test`, so the untrusted-input parsers are exercised without nightly or cargo-fuzz.
//!
//! Inputs are random bytes, valid encodings of the fixtures (genuine slivers, metadata and
//! blob IDs), well-framed random values (so parsing succeeds and verification is reached), and
//! mutations of all of these. The seed is printed; rerun a failure with
//! `WALRUSFS_FUZZ_SMOKE_SEED=<seed> cargo test --test fuzz_smoke`.

#[path = "../fuzz/checks.rs"]
mod checks;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use walrusfs::encoding::{
    BlobId, BlobMetadata, BlobMetadataWithId, Node, Sliver, SliverPairMetadata, SliverType,
};

const SEED_ENV: &str = "WALRUSFS_FUZZ_SMOKE_SEED";

fn rng(salt: u64) -> StdRng {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("fuzz_smoke: seed {seed} (rerun with {SEED_ENV}={seed})");
    StdRng::seed_from_u64(seed ^ salt)
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..=max);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// One to four byte-level mutations of the kinds libFuzzer applies.
fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let bit = rng.random_range(0..len * 8);
                v[bit / 8] ^= 1 << (bit % 8);
            }
            1 if len > 0 => {
                let at = rng.random_range(0..len);
                v[at] = rng.random();
            }
            2 if len > 0 => {
                let at = rng.random_range(0..len);
                v[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.random_range(0..5)];
            }
            3 => {
                let at = rng.random_range(0..=len);
                v.insert(at, rng.random());
            }
            4 if len > 0 => {
                v.remove(rng.random_range(0..len));
            }
            5 => v.truncate(rng.random_range(0..=len)),
            6 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 16));
                let chunk = v[a..b].to_vec();
                let at = rng.random_range(0..=v.len());
                v.splice(at..at, chunk);
            }
            7 if len > 1 => {
                let (a, b) = (rng.random_range(0..len), rng.random_range(0..len));
                v.swap(a, b);
            }
            _ => {
                let extra = random_bytes(rng, 8);
                v.extend(extra);
            }
        }
    }
    v
}

fn sliver_types() -> [SliverType; 2] {
    [SliverType::Primary, SliverType::Secondary]
}

#[test]
fn sliver_bcs_smoke() {
    let mut rng = rng(1);
    let mut valid: Vec<Vec<u8>> = Vec::new();
    for f in checks::fixtures() {
        for t in sliver_types() {
            for pair in 0..f.n() {
                valid.push(f.sliver(t, pair).to_bcs());
            }
        }
    }
    // Every genuine sliver passes all checks (and verifies against its own fixture).
    for v in &valid {
        checks::sliver_bcs(v);
    }
    let mut run = 0;
    for _ in 0..1000 {
        checks::sliver_bcs(&random_bytes(&mut rng, 64));
        run += 1;
    }
    for _ in 0..6000 {
        let base = &valid[rng.random_range(0..valid.len())];
        checks::sliver_bcs(&mutate(&mut rng, base));
        run += 1;
    }
    // Well-framed slivers of fixture-like shapes with random contents, index and symbol size.
    for _ in 0..1000 {
        let symbol_size = if rng.random_bool(0.7) {
            4
        } else {
            rng.random_range(1..=64)
        };
        let symbols = [2, 3, 4, 7, rng.random_range(0..40)][rng.random_range(0..5)];
        let mut data = vec![0u8; symbol_size * symbols];
        rng.fill_bytes(&mut data);
        let s = Sliver {
            sliver_type: SliverType::Primary,
            index: if rng.random_bool(0.8) {
                rng.random_range(0..12)
            } else {
                rng.random()
            },
            symbol_size: symbol_size as u16,
            data,
        };
        checks::sliver_bcs(&s.to_bcs());
        run += 1;
    }
    // Genuine data under a different index (another pair's slot).
    for f in checks::fixtures() {
        for t in sliver_types() {
            for pair in 0..f.n() {
                let mut s = f.sliver(t, pair);
                s.index = rng.random_range(0..f.n() as u16 + 2);
                checks::sliver_bcs(&s.to_bcs());
                run += 1;
            }
        }
    }
    assert!(run > 8000);
}

fn random_node(rng: &mut StdRng) -> Node {
    if rng.random_bool(0.05) {
        Node::Empty
    } else {
        let mut d = [0u8; 32];
        rng.fill_bytes(&mut d);
        Node::Digest(d)
    }
}

#[test]
fn metadata_bcs_smoke() {
    let mut rng = rng(2);
    let valid: Vec<Vec<u8>> = checks::fixtures()
        .iter()
        .map(|f| f.encoded.metadata.to_bcs())
        .collect();
    for v in &valid {
        checks::metadata_bcs(v);
    }
    for _ in 0..1000 {
        checks::metadata_bcs(&random_bytes(&mut rng, 400));
    }
    for _ in 0..6000 {
        let base = &valid[rng.random_range(0..valid.len())];
        checks::metadata_bcs(&mutate(&mut rng, base));
    }
    // Well-formed metadata with random hashes, lengths and blob IDs, self-consistent or not.
    for _ in 0..1000 {
        let n = [0, 1, 3, 4, 5, 9, 10, 11, rng.random_range(0..40)][rng.random_range(0..9)];
        let hashes = (0..n)
            .map(|_| SliverPairMetadata {
                primary_hash: random_node(&mut rng),
                secondary_hash: random_node(&mut rng),
            })
            .collect();
        let len = match rng.random_range(0..4) {
            0 => rng.random_range(0..1000),
            1 => rng.random_range(0..3_000_000),
            2 => u64::MAX - rng.random_range(0..3),
            _ => rng.random(),
        };
        let metadata = BlobMetadata::new(len, hashes);
        let blob_id = if rng.random_bool(0.5) {
            metadata.compute_blob_id()
        } else {
            let mut id = [0u8; 32];
            rng.fill_bytes(&mut id);
            BlobId(id)
        };
        let bytes = BlobMetadataWithId { blob_id, metadata }.to_bcs();
        checks::metadata_bcs(&bytes);
        checks::metadata_bcs(&mutate(&mut rng, &bytes));
    }
}

#[test]
fn blob_id_parse_smoke() {
    let mut rng = rng(3);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=";
    for _ in 0..1000 {
        checks::blob_id_parse(&random_bytes(&mut rng, 64));
    }
    for _ in 0..2000 {
        // Base64-ish strings around the right length.
        let len = rng.random_range(38..=48);
        let s: Vec<u8> = (0..len)
            .map(|_| {
                let pool = if rng.random_bool(0.95) {
                    64
                } else {
                    ALPHABET.len()
                };
                ALPHABET[rng.random_range(0..pool)]
            })
            .collect();
        checks::blob_id_parse(&s);
    }
    for _ in 0..2000 {
        // Valid IDs, mutated at the byte level and at the character level.
        let mut id = [0u8; 32];
        rng.fill_bytes(&mut id);
        let shown = BlobId(id).to_string().into_bytes();
        checks::blob_id_parse(&shown);
        checks::blob_id_parse(&mutate(&mut rng, &shown));
        let mut s = shown.clone();
        let at = rng.random_range(0..s.len());
        s[at] = ALPHABET[rng.random_range(0..ALPHABET.len())];
        checks::blob_id_parse(&s);
        let mut s: String = String::from_utf8(shown).unwrap();
        let at = rng.random_range(0..=s.len());
        s.insert(at, ['é', '€', '\0', ' ', '='][rng.random_range(0..5)]);
        checks::blob_id_parse(s.as_bytes());
    }
}
