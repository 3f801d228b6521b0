//! Criterion benchmarks of the encoding layer.
//!
//! ```sh
//! cargo bench --bench encoding                    # everything (several minutes)
//! cargo bench --bench encoding -- --quick         # one short estimate per benchmark
//! cargo bench --bench encoding -- blob_id/1000    # a filter (regex over the IDs below)
//! cargo bench --bench encoding -- --list          # the IDs
//! ```
//!
//! A filter matches anywhere in an ID, so `blob_id/10` also selects n = 100 and 1000; use
//! `blob_id/10/` for n = 10 alone.
//!
//! Benchmark IDs are `group/n/size[/what]`:
//! - `blob_id/{n}/{size}`: `compute_metadata` (every symbol hash and the blob ID, no slivers).
//! - `encode/{n}/{size}`: `encode`, slivers kept in the `EncodedBlob`.
//!
//!   Both over n ∈ {10, 100, 1000} × {1 KiB, 1 MiB, 64 MiB, 128 MiB}, where the size fits n
//!   (n = 10 holds at most 1,834,952 bytes); throughput is blob bytes.
//! - `verify_sliver/1000/64MiB/{primary,secondary}`: `Sliver::verify` of primary sliver `n − 1`
//!   and the secondary sliver of pair 0; throughput is sliver bytes.
//! - `decode_recovery/{100,1000}/64MiB`: `decode_verified` from the `n − 2f` primary slivers
//!   with the highest indices (mostly recovery slivers, the worst case); throughput is blob bytes.
//! - `systematic_read/1000/64MiB/{all,1MiB}`: the whole blob, and 1 MiB at a pseudo-random
//!   offset, copied out of verified systematic primary slivers via `primary_slivers_for_range`
//!   into a caller's buffer; throughput is bytes read.
//!
//! Inputs are deterministic pseudo-random bytes. Encoded fixtures are built once, lazily, the
//! first time a benchmark that needs them runs, so filtered runs do not pay for them.

use std::cell::OnceCell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main, measurement::WallTime,
};
use walrusfs::encoding::{EncodedBlob, EncodingConfig, Sliver, SliverType};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const SIZES: [(usize, &str); 4] = [
    (KIB, "1KiB"),
    (MIB, "1MiB"),
    (64 * MIB, "64MiB"),
    (128 * MIB, "128MiB"),
];
const SHARDS: [u16; 3] = [10, 100, 1000];

/// Deterministic incompressible bytes (splitmix64).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn config(n: u16) -> EncodingConfig {
    EncodingConfig::new(n).expect("valid shard count")
}

/// Settings for benchmarks whose single iteration may take up to a second or two: few
/// samples, one iteration per sample for large inputs.
fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat);
}

/// The largest input, built on first use; smaller inputs are its prefixes.
struct Input(OnceCell<Vec<u8>>);

impl Input {
    fn get(&self, len: usize) -> &[u8] {
        &self.0.get_or_init(|| pseudo_random(SIZES[3].0, 0x5eed))[..len]
    }
}

fn grid(c: &mut Criterion, input: &Input, name: &str, op: fn(&EncodingConfig, &[u8])) {
    let mut group = c.benchmark_group(name);
    configure(&mut group);
    for n in SHARDS {
        let config = config(n);
        for (len, label) in SIZES {
            if len as u64 > config.max_blob_size() {
                continue;
            }
            group.throughput(Throughput::Bytes(len as u64));
            group.bench_function(format!("{n}/{label}"), |b| {
                let data = input.get(len);
                b.iter(|| op(&config, black_box(data)));
            });
        }
    }
    group.finish();
}

fn blob_id_and_encode(c: &mut Criterion) {
    let input = Input(OnceCell::new());
    grid(c, &input, "blob_id", |config, data| {
        black_box(config.compute_metadata(data).expect("blob ID"));
    });
    grid(c, &input, "encode", |config, data| {
        black_box(config.encode(data).expect("encode"));
    });
}

/// A 64 MiB blob encoded with `n` shards.
struct Encoded {
    config: EncodingConfig,
    data: Vec<u8>,
    blob: EncodedBlob,
    /// The `n − 2f` primary slivers with the highest indices (checked to decode to `data`).
    high: OnceCell<Vec<Sliver>>,
    /// The systematic primary slivers `0..n − 2f`, verified.
    systematic: OnceCell<Vec<Sliver>>,
}

impl Encoded {
    fn new(n: u16) -> Self {
        let config = config(n);
        let data = pseudo_random(64 * MIB, u64::from(n));
        let blob = config.encode(&data).expect("encode");
        Self {
            config,
            data,
            blob,
            high: OnceCell::new(),
            systematic: OnceCell::new(),
        }
    }

    fn k(&self) -> usize {
        usize::from(self.config.n_primary_source_symbols())
    }

    fn high(&self) -> &[Sliver] {
        self.high.get_or_init(|| {
            let n = self.config.n_shards_usize();
            let high: Vec<Sliver> = (n - self.k()..n)
                .map(|p| self.blob.primary_sliver(p))
                .collect();
            let decoded = self
                .config
                .decode_verified(&self.blob.metadata.metadata, high.clone())
                .expect("decode");
            assert!(decoded == self.data, "decoded blob differs from the input");
            high
        })
    }

    fn systematic(&self) -> &[Sliver] {
        self.systematic.get_or_init(|| {
            (0..self.k())
                .map(|p| {
                    let s = self.blob.primary_sliver(p);
                    s.verify(&self.config, &self.blob.metadata.metadata)
                        .expect("valid sliver");
                    s
                })
                .collect()
        })
    }
}

fn from_slivers(c: &mut Criterion) {
    let fixtures: [(u16, OnceCell<Encoded>); 2] = [(100, OnceCell::new()), (1000, OnceCell::new())];
    let fixture = |n: u16| {
        let (_, cell) = fixtures.iter().find(|(m, _)| *m == n).expect("fixture");
        cell.get_or_init(|| Encoded::new(n))
    };

    let mut group = c.benchmark_group("verify_sliver");
    configure(&mut group);
    group.sampling_mode(SamplingMode::Auto);
    let slivers: OnceCell<[Sliver; 2]> = OnceCell::new();
    for (i, what) in ["primary", "secondary"].into_iter().enumerate() {
        // Sliver lengths for the throughput, without encoding anything yet.
        let config = config(1000);
        let len = config
            .sliver_len(
                [SliverType::Primary, SliverType::Secondary][i],
                64 * MIB as u64,
            )
            .expect("sliver length");
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("1000/64MiB/{what}"), |b| {
            let f = fixture(1000);
            let n = f.config.n_shards_usize();
            let sliver = &slivers
                .get_or_init(|| [f.blob.primary_sliver(n - 1), f.blob.secondary_sliver(0)])[i];
            let metadata = &f.blob.metadata.metadata;
            b.iter(|| sliver.verify(&f.config, metadata).expect("valid sliver"));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("decode_recovery");
    configure(&mut group);
    group.throughput(Throughput::Bytes(64 * MIB as u64));
    for n in [100, 1000] {
        group.bench_function(format!("{n}/64MiB"), |b| {
            let f = fixture(n);
            let high = f.high();
            let metadata = &f.blob.metadata.metadata;
            b.iter_batched(
                || high.to_vec(),
                |slivers| f.config.decode_verified(metadata, slivers).expect("decode"),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();

    let mut group = c.benchmark_group("systematic_read");
    configure(&mut group);
    group.sampling_mode(SamplingMode::Auto);
    let len = 64 * MIB as u64;
    let offset =
        u64::from_le_bytes(pseudo_random(8, 7).try_into().expect("8 bytes")) % (len - MIB as u64);
    for (what, range) in [("all", 0..len), ("1MiB", offset..offset + MIB as u64)] {
        group.throughput(Throughput::Bytes(range.end - range.start));
        group.bench_function(format!("1000/64MiB/{what}"), |b| {
            let f = fixture(1000);
            let slivers = f.systematic();
            let mut out = vec![0u8; (range.end - range.start) as usize];
            let read = |out: &mut [u8]| {
                let pieces = f
                    .config
                    .primary_slivers_for_range(len, range.clone())
                    .expect("range in bounds");
                for p in pieces {
                    let at = (p.in_blob.start - range.start) as usize;
                    let piece = &slivers[usize::from(p.sliver)].data[p.in_sliver];
                    out[at..at + piece.len()].copy_from_slice(piece);
                }
            };
            read(&mut out);
            assert!(out[..] == f.data[range.start as usize..range.end as usize]);
            b.iter(|| read(black_box(&mut out)));
        });
    }
    group.finish();
}

criterion_group!(benches, blob_id_and_encode, from_slivers);
criterion_main!(benches);
