//! Times the encoding layer on one input and prints one JSON object per operation.
//!
//! Used by `scripts/bench-encoding` (which runs the same inputs through walrus-core compiled to
//! WASM and prints ratios) and handy on its own for profiling:
//!
//! ```sh
//! cargo build --release --example bench_encoding
//! target/release/examples/bench_encoding --n 1000 --size 64MiB --ops decode --runs 5
//! perf record -g target/release/examples/bench_encoding --n 1000 --size 64MiB --ops id --runs 20
//! ```
//!
//! Options: `--n N` (shards, default 1000), `--size BYTES` (suffixes KiB/MiB/GiB, default 1MiB)
//! or `--input FILE` (its bytes are the blob), `--runs R` (default 5), `--ops LIST` (comma
//! separated, default `id,encode,encode-bcs,decode`; also `verify`, `read`, `all`).
//!
//! Every operation is first run once untimed (a warm-up that also sizes the runs): a run repeats
//! the operation until it takes at least 50 ms, and the reported time is the median over `R`
//! runs of the time per operation. A warm-up longer than one second counts as the first run.
//! Throughput is in MB/s (10⁶ bytes per second) of the bytes named in `bytes`: the blob for
//! `blob_id`, `encode`, `encode_bcs`, `decode_recovery`; the sliver for `verify_*`; the bytes
//! read for `read_*`.
//!
//! Operations:
//! - `id` → `blob_id`: `compute_metadata` (all symbol hashes, blob ID; no slivers kept).
//! - `encode` → `encode`: `encode` (slivers kept compactly in the `EncodedBlob`).
//! - `encode-bcs` → `encode_bcs`: `encode`, then every primary and secondary sliver as BCS
//!   bytes, which is what walrus-wasm's `encode` produces.
//! - `decode` → `decode_recovery`: parse the BCS of the `n − 2f` primary slivers with the
//!   highest indices (mostly recovery slivers, the worst case) and `decode_verified` them, as
//!   walrus-wasm's `decode` does from BCS buffers.
//! - `verify` → `verify_primary`, `verify_secondary`: `Sliver::verify` of primary sliver
//!   `n − 1` and the secondary sliver of pair 0.
//! - `read` → `read_all`, `read_1mib`: the whole blob and a 1 MiB range at a pseudo-random
//!   offset, copied out of the systematic primary slivers via `primary_slivers_for_range`.

use std::time::{Duration, Instant};

use walrusfs::encoding::{EncodedBlob, EncodingConfig, Sliver, SliverType};

const MIN_RUN: Duration = Duration::from_millis(50);
const WARM_UP_COUNTS: Duration = Duration::from_secs(1);

struct Args {
    n: u16,
    size: usize,
    input: Option<String>,
    runs: usize,
    ops: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_encoding [--n N] [--size BYTES[KiB|MiB|GiB] | --input FILE] [--runs R] \
         [--ops id,encode,encode-bcs,decode,verify,read|all]"
    );
    std::process::exit(2)
}

fn parse_size(s: &str) -> Option<usize> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let unit = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return None,
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

fn parse_args() -> Args {
    let mut args = Args {
        n: 1000,
        size: 1 << 20,
        input: None,
        runs: 5,
        ops: ["id", "encode", "encode-bcs", "decode"]
            .map(String::from)
            .to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--n" => args.n = value.parse().unwrap_or_else(|_| usage()),
            "--size" => args.size = parse_size(&value).unwrap_or_else(|| usage()),
            "--input" => args.input = Some(value),
            "--runs" => args.runs = value.parse::<usize>().unwrap_or_else(|_| usage()).max(1),
            "--ops" => args.ops = value.split(',').map(str::to_owned).collect(),
            _ => usage(),
        }
    }
    if args.ops.iter().any(|o| o == "all") {
        args.ops = ["id", "encode", "encode-bcs", "decode", "verify", "read"]
            .map(String::from)
            .to_vec();
    }
    args
}

/// Deterministic incompressible bytes (splitmix64), so runs without `--input` are repeatable.
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Median seconds per call of `op` over `runs` runs (see the module docs), and the min and max.
fn time<T>(runs: usize, mut op: impl FnMut() -> T) -> (f64, f64, f64) {
    let start = Instant::now();
    std::hint::black_box(op());
    let warm_up = start.elapsed();
    let iters = (MIN_RUN.as_secs_f64() / warm_up.as_secs_f64().max(1e-9))
        .ceil()
        .max(1.0) as u32;
    let mut samples = Vec::with_capacity(runs);
    if warm_up >= WARM_UP_COUNTS {
        samples.push(warm_up.as_secs_f64());
    }
    while samples.len() < runs {
        let start = Instant::now();
        for _ in 0..iters {
            std::hint::black_box(op());
        }
        samples.push(start.elapsed().as_secs_f64() / f64::from(iters));
    }
    samples.sort_by(f64::total_cmp);
    (
        samples[samples.len() / 2],
        samples[0],
        samples[samples.len() - 1],
    )
}

fn report(args: &Args, op: &str, bytes: usize, (median, min, max): (f64, f64, f64), extra: &str) {
    println!(
        "{{\"impl\":\"ours\",\"op\":\"{op}\",\"n\":{},\"size\":{},\"runs\":{},\"bytes\":{bytes},\
         \"median_s\":{median},\"min_s\":{min},\"max_s\":{max},\"mb_s\":{}{extra}}}",
        args.n,
        args.size,
        args.runs,
        bytes as f64 / median / 1e6,
    );
}

fn main() {
    let mut args = parse_args();
    let data = match &args.input {
        Some(path) => std::fs::read(path).unwrap_or_else(|e| {
            eprintln!("bench_encoding: cannot read {path}: {e}");
            std::process::exit(1)
        }),
        None => pseudo_random(args.size, 0x5eed),
    };
    args.size = data.len();
    let config = EncodingConfig::new(args.n).unwrap_or_else(|e| {
        eprintln!("bench_encoding: {e}");
        std::process::exit(2)
    });
    if data.len() as u64 > config.max_blob_size() {
        eprintln!(
            "bench_encoding: {} bytes exceed the maximum blob size {} for n = {}",
            data.len(),
            config.max_blob_size(),
            args.n
        );
        std::process::exit(2);
    }
    let n = config.n_shards_usize();
    let k = usize::from(config.n_primary_source_symbols());
    // Encoded once, untimed, for the operations that start from slivers.
    let mut encoded: Option<EncodedBlob> = None;
    let encode_once = || config.encode(&data).expect("encode");

    for op in args.ops.clone() {
        match op.as_str() {
            "id" => {
                let id = config.compute_metadata(&data).expect("blob id").blob_id;
                let t = time(args.runs, || {
                    config.compute_metadata(&data).expect("blob id")
                });
                let extra = format!(",\"blob_id\":\"{}\"", hex(id.as_bytes()));
                report(&args, "blob_id", data.len(), t, &extra);
            }
            "encode" => {
                let t = time(args.runs, || config.encode(&data).expect("encode"));
                let blob = encoded.get_or_insert_with(encode_once);
                let extra = format!(",\"blob_id\":\"{}\"", hex(blob.metadata.blob_id.as_bytes()));
                report(&args, "encode", data.len(), t, &extra);
            }
            "encode-bcs" => {
                let t = time(args.runs, || {
                    let blob = config.encode(&data).expect("encode");
                    let primary: Vec<Vec<u8>> = (0..n).map(|p| blob.primary_bcs(p)).collect();
                    let secondary: Vec<Vec<u8>> = (0..n).map(|p| blob.secondary_bcs(p)).collect();
                    (blob.metadata, primary, secondary)
                });
                report(&args, "encode_bcs", data.len(), t, "");
            }
            "decode" => {
                let blob = encoded.get_or_insert_with(encode_once);
                let bcs: Vec<Vec<u8>> = (n - k..n).map(|p| blob.primary_bcs(p)).collect();
                let metadata = &blob.metadata.metadata;
                let decode = || {
                    let slivers = bcs
                        .iter()
                        .map(|b| Sliver::from_bcs(b, SliverType::Primary).expect("sliver BCS"));
                    config.decode_verified(metadata, slivers).expect("decode")
                };
                assert!(decode() == data, "decoded blob differs from the input");
                let t = time(args.runs, decode);
                report(&args, "decode_recovery", data.len(), t, "");
            }
            "verify" => {
                let blob = encoded.get_or_insert_with(encode_once);
                let metadata = &blob.metadata.metadata;
                for (name, sliver) in [
                    ("verify_primary", blob.primary_sliver(n - 1)),
                    ("verify_secondary", blob.secondary_sliver(0)),
                ] {
                    sliver.verify(&config, metadata).expect("verify");
                    let t = time(args.runs, || {
                        sliver.verify(&config, metadata).expect("verify")
                    });
                    report(&args, name, sliver.data.len(), t, "");
                }
            }
            "read" => {
                let blob = encoded.get_or_insert_with(encode_once);
                let slivers: Vec<Sliver> = (0..k).map(|p| blob.primary_sliver(p)).collect();
                for s in &slivers {
                    s.verify(&config, &blob.metadata.metadata).expect("verify");
                }
                let len = data.len() as u64;
                let mut out = vec![0u8; data.len()];
                let span = (1u64 << 20).min(len);
                let offset = u64::from_le_bytes(pseudo_random(8, len)[..].try_into().unwrap())
                    % (len - span + 1);
                for (name, range) in [("read_all", 0..len), ("read_1mib", offset..offset + span)] {
                    let bytes = (range.end - range.start) as usize;
                    let read = |out: &mut [u8]| {
                        let ranges = config
                            .primary_slivers_for_range(len, range.clone())
                            .expect("range");
                        for r in ranges {
                            let at = (r.in_blob.start - range.start) as usize;
                            let piece = &slivers[usize::from(r.sliver)].data[r.in_sliver];
                            out[at..at + piece.len()].copy_from_slice(piece);
                        }
                    };
                    read(&mut out);
                    let want = &data[range.start as usize..range.end as usize];
                    assert!(out[..bytes] == *want, "read bytes differ from the input");
                    let t = time(args.runs, || read(&mut out));
                    report(&args, name, bytes, t, "");
                }
            }
            _ => usage(),
        }
    }
}
