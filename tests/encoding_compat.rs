//! Byte-exactness against the reference implementation.
//!
//! walrusfs re-implements Walrus RS2 ("RedStuff") encoding; storage nodes and the ledger only
//! accept it if every blob ID, metadata root and sliver is bit-for-bit what MystenLabs'
//! walrus-core produces. This test feeds a few hundred blobs (edge and random lengths, random
//! contents from a printed, overridable seed) through both our encoder and
//! `@mysten/walrus-wasm` (walrus-core compiled to WASM, pinned in `tests/oracle/package.json`)
//! and compares blob IDs, root hashes and the BCS bytes of every primary and secondary sliver.
//!
//! Needs `node` and `npm` on PATH; the oracle package is installed on first run with `npm ci`.
//! Reproduce a failure with `WALRUSFS_COMPAT_SEED=<seed> cargo test --test encoding_compat`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use walrusfs::encoding::{BlobId, EncodingConfig};

const SEED_ENV: &str = "WALRUSFS_COMPAT_SEED";
const MIB: u64 = 1024 * 1024;

/// walrus-core's RS2 `max_symbol_size()` (`u16::MAX - 1`, symbols are 2-byte aligned).
const MAX_SYMBOL_SIZE: u64 = u16::MAX as u64 - 1;

#[test]
fn encoding_matches_walrus_core() {
    let seed = seed();
    println!("encoding_compat: seed {seed} (rerun with {SEED_ENV}={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let cases = plan(&mut rng);

    let work = tempfile::tempdir().expect("create temp dir");
    let input = work.path().join("blob.bin");
    let output = work.path().join("slivers.bin");
    let mut oracle = Oracle::spawn();

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut rejected_by_both = 0;
    for case in &cases {
        let blob = case.contents(&mut rng);
        std::fs::write(&input, &blob).expect("write blob for the oracle");
        // A previous case's slivers must never be mistaken for this one's.
        let _ = std::fs::remove_file(&output);
        oracle.request(case.n, &input, &output, case.slivers);
        // Encode on our side while the oracle works on the same blob in its own process.
        let ours = Ours::compute(case, &blob);
        let theirs = oracle.response();
        match compare(case, &ours, &theirs, &output) {
            Ok(Verdict::Match) => {}
            Ok(Verdict::BothRejected) => rejected_by_both += 1,
            Err(why) => {
                let report = format!(
                    "MISMATCH n={} len={} ({}) slivers={} seed={seed}: {why}",
                    case.n, case.len, case.label, case.slivers
                );
                println!("{report}");
                failures.push(report);
            }
        }
    }
    drop(oracle);

    let with_slivers = cases.iter().filter(|c| c.slivers).count();
    println!(
        "encoding_compat: {} blobs ({} with all slivers compared, {} too large for both), \
         {} mismatches, {:.1?}",
        cases.len(),
        with_slivers,
        rejected_by_both,
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {} blobs differ from walrus-core (seed {seed}; rerun with {SEED_ENV}={seed}):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Guards the test's own base64, which is independent of the crate under test on purpose.
#[test]
fn url_safe_base64_helper_matches_rfc4648() {
    assert_eq!(base64_url_no_pad(b""), "");
    assert_eq!(base64_url_no_pad(b"f"), "Zg");
    assert_eq!(base64_url_no_pad(b"fo"), "Zm8");
    assert_eq!(base64_url_no_pad(b"foo"), "Zm9v");
    assert_eq!(base64_url_no_pad(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64_url_no_pad(&[0xfb, 0xff]), "-_8");
}

fn seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={value:?} is not a u64")),
        Err(_) => rand::random(),
    }
}

// ---------------------------------------------------------------------------------------------
// Which blobs to try.

/// The RS2 source matrix shape for `n` shards, derived here from the Walrus spec rather than
/// taken from the crate under test: `k_p = n − 2f` rows (primary source symbols) by
/// `k_s = n − f` columns (secondary source symbols), `f = ⌊(n − 1)/3⌋`.
#[derive(Clone, Copy)]
struct Shape {
    k_p: u64,
    k_s: u64,
}

impl Shape {
    fn new(n: u16) -> Self {
        let (n64, f) = (u64::from(n), u64::from((n - 1) / 3));
        Self {
            k_p: n64 - 2 * f,
            k_s: n64 - f,
        }
    }

    /// Source symbols per blob; the symbol size steps every this many bytes (then rounds up
    /// to even).
    fn symbols(self) -> u64 {
        self.k_p * self.k_s
    }

    fn max_blob_size(self) -> u64 {
        self.symbols() * MAX_SYMBOL_SIZE
    }

    fn symbol_size(self, len: u64) -> u64 {
        len.max(1).div_ceil(self.symbols()).next_multiple_of(2)
    }
}

#[derive(Clone, Copy)]
enum Fill {
    Random,
    Constant(u8),
}

struct Case {
    n: u16,
    len: u64,
    fill: Fill,
    /// Whether to fully encode and compare slivers, or compare metadata only (which goes
    /// through the separate `compute_metadata` path on both sides).
    slivers: bool,
    label: String,
}

impl Case {
    fn contents(&self, rng: &mut StdRng) -> Vec<u8> {
        let len = usize::try_from(self.len).expect("blob length fits in usize");
        match self.fill {
            Fill::Random => {
                let mut blob = vec![0; len];
                rng.fill_bytes(&mut blob);
                blob
            }
            Fill::Constant(byte) => vec![byte; len],
        }
    }
}

/// The smaller shard counts and the largest blob to try at each (`u64::MAX`: up to
/// max_blob_size and one byte beyond). n = 1000 is planned separately in [`plan_n1000`].
const SMALL_N: [(u16, u64); 4] = [(4, u64::MAX), (7, u64::MAX), (10, u64::MAX), (100, 3 * MIB)];
const CASES_PER_SMALL_N: usize = 50;

fn plan(rng: &mut StdRng) -> Vec<Case> {
    let mut cases = Vec::new();
    for (n, cap) in SMALL_N {
        cases.extend(plan_for(rng, n, cap));
    }
    cases.extend(plan_n1000(rng));
    assert!(cases.len() >= 200, "plan shrank to {} cases", cases.len());
    cases
}

/// Lengths collected for one n, without repeats.
struct Lengths {
    shape: Shape,
    cap: u64,
    seen: HashSet<u64>,
    list: Vec<(u64, String)>,
}

impl Lengths {
    fn new(shape: Shape, cap: u64) -> Self {
        Self {
            shape,
            cap,
            seen: HashSet::new(),
            list: Vec::new(),
        }
    }

    fn add(&mut self, len: u64, label: impl Into<String>) {
        if len <= self.cap && self.seen.insert(len) {
            self.list.push((len, label.into()));
        }
    }

    /// `len − 1`, `len`, `len + 1`.
    fn around(&mut self, len: u64, label: &str) {
        for (delta, sign) in [(-1i64, " -1"), (0, ""), (1, " +1")] {
            if let Some(l) = len.checked_add_signed(delta) {
                self.add(l, format!("{label}{sign}"));
            }
        }
    }

    /// Lengths that end exactly on, just before and just after a full source row (one primary
    /// sliver's worth of data, `k_s · symbol_size`) for symbol size `s`, at a few row counts
    /// that actually produce symbol size `s`.
    fn row_boundaries(&mut self, rng: &mut StdRng, s: u64) {
        let Shape { k_p, k_s, .. } = self.shape;
        // Symbol size is `s` for lengths in ((s − 2)·k_p·k_s, s·k_p·k_s].
        let min_rows = ((s - 2) * k_p / s + 1).max(1);
        let mut rows = vec![min_rows, k_p.saturating_sub(1).max(min_rows)];
        if min_rows < k_p {
            rows.push(rng.random_range(min_rows..k_p));
        }
        for r in rows {
            let len = r * k_s * s;
            if self.shape.symbol_size(len) == s {
                self.around(len, &format!("{r} rows × symbol size {s}"));
            }
        }
    }

    /// Uniform over the bit length, then uniform within it: spreads lengths over all scales.
    fn random(&mut self, rng: &mut StdRng) {
        let top = self.cap.min(self.shape.max_blob_size());
        let bits = rng.random_range(1..=u64::BITS - top.leading_zeros());
        let low = 1u64 << (bits - 1);
        let high = ((1u64 << bits) - 1).min(top);
        self.add(rng.random_range(low..=high), "random");
    }
}

fn plan_for(rng: &mut StdRng, n: u16, cap: u64) -> Vec<Case> {
    let shape = Shape::new(n);
    let max = shape.max_blob_size();
    let mut lengths = Lengths::new(shape, cap);

    for len in 0..=3 {
        lengths.add(len, "tiny");
    }
    // Symbol-size steps: multiples of k_p·k_s (odd multiples round up to the same even size,
    // even-plus-one multiples move to the next), up to the largest symbol size. Where that
    // fits under the cap, this includes max_blob_size, which must be accepted, and one byte
    // more, which both sides must reject.
    let k = shape.symbols();
    let top_multiple = (cap.min(max) / k).clamp(5, MAX_SYMBOL_SIZE - 2);
    let mut multiples = vec![1, 2, 3, 4, MAX_SYMBOL_SIZE - 1, MAX_SYMBOL_SIZE];
    multiples.push(rng.random_range(5..=top_multiple));
    for m in multiples {
        lengths.around(m * k, &format!("{m}·k_p·k_s"));
    }
    // Sliver (source row) boundaries at the smallest symbol sizes and a random one.
    let max_s = shape.symbol_size(cap.min(max));
    let random_s = rng
        .random_range(3..=max_s.max(3))
        .next_multiple_of(2)
        .min(max_s);
    for s in [2, 4, random_s] {
        if s <= max_s {
            lengths.row_boundaries(rng, s);
        }
    }
    // Two slots are left for the constant-content blobs below.
    while lengths.list.len() < CASES_PER_SMALL_N - 2 {
        lengths.random(rng);
    }

    let mut cases = to_cases(n, lengths.list);
    // Contents with no entropy at all, in case anything keys off data (it must not).
    let len = rng.random_range(1..=cap.min(max).min(MIB));
    for byte in [0x00, 0xff] {
        cases.push(Case {
            n,
            len,
            fill: Fill::Constant(byte),
            slivers: true,
            label: format!("constant 0x{byte:02x}"),
        });
    }
    cases
}

/// n = 1000 (the Walrus mainnet shard count). Each oracle call there costs ~3 s whatever the
/// size (walrus-core's per-symbol overhead dominates in WASM), so this is a dozen hand-picked
/// blobs of at most 2 MiB.
fn plan_n1000(rng: &mut StdRng) -> Vec<Case> {
    let shape = Shape::new(1000);
    let (k, k_s) = (shape.symbols(), shape.k_s);
    let mut lengths = Lengths::new(shape, 2 * MIB);
    lengths.add(0, "empty");
    lengths.add(1, "tiny");
    lengths.around(k_s * 2, "1 row × symbol size 2");
    lengths.around(k, "1·k_p·k_s");
    lengths.add(2 * k + 1, "2·k_p·k_s +1 (symbol size 4)");
    lengths.add(200 * k_s * 4 + 1, "200 rows × symbol size 4 +1");
    lengths.add(2 * MIB, "2 MiB");
    while lengths.list.len() < 12 {
        lengths.random(rng);
    }
    to_cases(1000, lengths.list)
}

/// Every fourth blob takes the metadata-only path; the rest are fully encoded.
fn to_cases(n: u16, lengths: Vec<(u64, String)>) -> Vec<Case> {
    lengths
        .into_iter()
        .enumerate()
        .map(|(i, (len, label))| Case {
            n,
            len,
            fill: Fill::Random,
            slivers: i % 4 != 3,
            label,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The two sides.

struct Ours {
    blob_id: BlobId,
    root_hash: [u8; 32],
    /// Present when fully encoded.
    slivers: Option<Slivers>,
    /// The blob-ID-only path, when it disagrees with the full encoding.
    path_disagreement: Option<String>,
}

impl Ours {
    fn compute(case: &Case, blob: &[u8]) -> Result<Self, String> {
        let config = EncodingConfig::new(case.n).map_err(|e| e.to_string())?;
        let meta = config.compute_metadata(blob).map_err(|e| e.to_string())?;
        if !case.slivers {
            return Ok(Self {
                blob_id: meta.blob_id,
                root_hash: meta.metadata.root_hash().bytes(),
                slivers: None,
                path_disagreement: None,
            });
        }
        let encoded = config.encode(blob).map_err(|e| e.to_string())?;
        let pairs = encoded.n_pairs();
        let slivers = Slivers {
            primary: (0..pairs).map(|i| encoded.primary_bcs(i)).collect(),
            secondary: (0..pairs).map(|i| encoded.secondary_bcs(i)).collect(),
        };
        let path_disagreement = (meta.blob_id != encoded.metadata.blob_id).then(|| {
            format!(
                "compute_metadata gives blob ID {} but encode gives {}",
                meta.blob_id, encoded.metadata.blob_id
            )
        });
        Ok(Self {
            blob_id: encoded.metadata.blob_id,
            root_hash: encoded.metadata.metadata.root_hash().bytes(),
            slivers: Some(slivers),
            path_disagreement,
        })
    }
}

/// BCS `SliverData` of every sliver, indexed by sliver pair.
struct Slivers {
    primary: Vec<Vec<u8>>,
    secondary: Vec<Vec<u8>>,
}

struct Theirs {
    blob_id: [u8; 32],
    root_hash: [u8; 32],
    length: u64,
}

enum Verdict {
    Match,
    BothRejected,
}

fn compare(
    case: &Case,
    ours: &Result<Ours, String>,
    theirs: &Result<Theirs, String>,
    sliver_file: &Path,
) -> Result<Verdict, String> {
    let (ours, theirs) = match (ours, theirs) {
        (Ok(ours), Ok(theirs)) => (ours, theirs),
        (Err(_), Err(_)) if case.len > Shape::new(case.n).max_blob_size() => {
            return Ok(Verdict::BothRejected);
        }
        (Err(ours), Err(theirs)) => {
            return Err(format!(
                "both reject a blob within max_blob_size: ours {ours}; theirs {theirs}"
            ));
        }
        (Err(e), Ok(_)) => return Err(format!("we reject the blob ({e}), walrus-core accepts it")),
        (Ok(_), Err(e)) => return Err(format!("walrus-core rejects the blob ({e}), we accept it")),
    };
    let mut problems = Vec::new();
    if theirs.length != case.len {
        problems.push(format!("oracle reports length {}", theirs.length));
    }
    if ours.blob_id.0 != theirs.blob_id {
        problems.push(format!(
            "blob ID: ours {} theirs {}",
            hex(&ours.blob_id.0),
            hex(&theirs.blob_id)
        ));
    }
    let expected_display = base64_url_no_pad(&theirs.blob_id);
    if ours.blob_id.to_string() != expected_display {
        problems.push(format!(
            "blob ID display: ours {} expected {expected_display}",
            ours.blob_id
        ));
    }
    if ours.root_hash != theirs.root_hash {
        problems.push(format!(
            "root hash: ours {} theirs {}",
            hex(&ours.root_hash),
            hex(&theirs.root_hash)
        ));
    }
    problems.extend(ours.path_disagreement.clone());
    if let Some(ours) = &ours.slivers {
        let theirs = read_sliver_file(sliver_file, case.n)?;
        problems.extend(compare_slivers("primary", &ours.primary, &theirs.primary));
        problems.extend(compare_slivers(
            "secondary",
            &ours.secondary,
            &theirs.secondary,
        ));
    }
    if problems.is_empty() {
        Ok(Verdict::Match)
    } else {
        Err(problems.join("; "))
    }
}

/// Reports the first differing pair, where in its BCS bytes it differs, and how many differ.
fn compare_slivers(kind: &str, ours: &[Vec<u8>], theirs: &[Vec<u8>]) -> Option<String> {
    if ours.len() != theirs.len() {
        return Some(format!(
            "{kind}: we produce {} slivers, walrus-core {}",
            ours.len(),
            theirs.len()
        ));
    }
    let differing: Vec<usize> = (0..ours.len()).filter(|&i| ours[i] != theirs[i]).collect();
    let &first = differing.first()?;
    let (a, b) = (&ours[first], &theirs[first]);
    let offset = a
        .iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let mut report = format!(
        "{kind} slivers differ in {} of {} pairs; first at pair {first}: BCS lengths ours {} theirs {}, \
         first differing byte at offset {offset}",
        differing.len(),
        ours.len(),
        a.len(),
        b.len()
    );
    let window = |v: &[u8]| hex(&v[offset.min(v.len())..(offset + 8).min(v.len())]);
    let _ = write!(report, " (ours {} theirs {})", window(a), window(b));
    Some(report)
}

/// Primary then secondary slivers, each prefixed by its u32 little-endian length.
fn read_sliver_file(path: &Path, n: u16) -> Result<Slivers, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading oracle slivers: {e}"))?;
    let mut rest = bytes.as_slice();
    let mut records = Vec::with_capacity(2 * usize::from(n));
    while !rest.is_empty() {
        let Some((prefix, tail)) = rest.split_first_chunk::<4>() else {
            return Err("oracle sliver file ends inside a length prefix".into());
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if tail.len() < len {
            return Err("oracle sliver file ends inside a sliver".into());
        }
        records.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    if records.len() != 2 * usize::from(n) {
        return Err(format!(
            "oracle wrote {} slivers, expected {}",
            records.len(),
            2 * n
        ));
    }
    let secondary = records.split_off(usize::from(n));
    Ok(Slivers {
        primary: records,
        secondary,
    })
}

// ---------------------------------------------------------------------------------------------
// The oracle process.

/// One `node tests/oracle/oracle.cjs` for the whole test: WASM start-up and the per-n
/// encoder tables are paid once.
struct Oracle {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Oracle {
    fn spawn() -> Self {
        let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "oracle"]
            .iter()
            .collect();
        require_tool("node");
        ensure_installed(&dir);
        let mut child = Command::new("node")
            .arg(dir.join("oracle.cjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node tests/oracle/oracle.cjs");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("oracle stdout is piped"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn request(&mut self, n: u16, input: &Path, output: &Path, slivers: bool) {
        let line = serde_json::json!({
            "n": n,
            "input": utf8(input),
            "output": utf8(output),
            "slivers": slivers,
        });
        let stdin = self.stdin.as_mut().expect("oracle stdin is open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("send request to the oracle (did node exit?)");
    }

    fn response(&mut self) -> Result<Theirs, String> {
        let mut line = String::new();
        let read = self
            .stdout
            .read_line(&mut line)
            .expect("read oracle response");
        assert!(
            read > 0,
            "the oracle exited unexpectedly (see its stderr above)"
        );
        let value: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("oracle sent invalid JSON {line:?}: {e}"));
        if let Some(error) = value.get("error") {
            return Err(error.as_str().unwrap_or("(non-string error)").to_owned());
        }
        let digest = |field: &str| {
            value[field]
                .as_str()
                .and_then(parse_hex32)
                .unwrap_or_else(|| panic!("oracle response lacks a 32-byte hex {field}: {line}"))
        };
        Ok(Theirs {
            blob_id: digest("blob_id"),
            root_hash: digest("root_hash"),
            length: value["length"]
                .as_u64()
                .unwrap_or_else(|| panic!("oracle response lacks a u64 length: {line}")),
        })
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        // Closing stdin ends the oracle's read loop, so it exits on its own.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn require_tool(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{tool}` is not on PATH: tests/encoding_compat.rs compares our encoder with \
         @mysten/walrus-wasm and needs Node.js (≥ 18) and npm installed"
    );
}

/// Installs the pinned oracle package from `package-lock.json` if it is not there yet.
fn ensure_installed(dir: &Path) {
    if dir.join("node_modules/@mysten/walrus-wasm").is_dir() {
        return;
    }
    require_tool("npm");
    println!(
        "encoding_compat: installing the oracle with `npm ci` in {}",
        dir.display()
    );
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("run npm ci");
    assert!(
        status.success(),
        "`npm ci` in {} failed: {status}",
        dir.display()
    );
}

fn utf8(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("temp path {} is not UTF-8", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Small encoders, written out here so the test does not trust the crate it checks.

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// RFC 4648 §5 (URL- and filename-safe alphabet), no padding: how Walrus prints blob IDs.
fn base64_url_no_pad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        // A chunk of k bytes carries k + 1 significant sextets.
        for i in 0..=chunk.len() {
            out.push(char::from(
                ALPHABET[(group >> (18 - 6 * i) & 0x3f) as usize],
            ));
        }
    }
    out
}
