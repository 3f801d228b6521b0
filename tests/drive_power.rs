//! Power loss at random moments: the drive's data directory (metadata, staging, cache, and the
//! embedded network's ledger and node stores) sits on `lazyfs` (a test FUSE layer that keeps
//! only what a completed fsync covered, see `tests/lazyfs/mod.rs`). Each round mounts walrusfs,
//! runs a workload (create, write, fsync, rename over, unlink), SIGKILLs the mount at a
//! crash point, then "cuts the power" (the lazy layer drops everything not synced) and mounts
//! again. After each crash:
//! - the drive mounts cleanly;
//! - every file whose fsync returned (and that the workload did not touch afterwards) is
//!   there, byte for byte;
//! - no file holds bytes it never held: each file's content is a prefix (in practice: all or
//!   nothing) of a version written to that name or to a file renamed onto it;
//! - what the remount shows is itself durable: the next crash may lose later changes only.
//!
//! Crash points rotate between three kinds: a random moment; as soon as the ledger shows a
//! registration not yet certified (mid-upload: slivers and confirmations in flight); as soon
//! as the ledger shows a new certification (mid-certify: certified on the network, not yet
//! recorded by the drive). `WALRUSFS_POWER_POINTS` (default 20) and `WALRUSFS_POWER_SEED`
//! change the run.

mod lazyfs;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EXE: &str = env!("CARGO_BIN_EXE_walrusfs");
const DIRS: usize = 4;

/// Version `v` of a file: its first 8 bytes are `v`, then bytes that depend on `v`.
fn version_bytes(v: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&v.to_le_bytes());
    let mut x = v.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x >> 24) as u8);
    }
    out.truncate(len);
    out
}

/// What the workload did, as far as the checks need it.
#[derive(Default)]
struct Model {
    /// Every version that may be at a name (written there, or renamed onto it), with its
    /// length.
    candidates: BTreeMap<String, BTreeSet<(u64, usize)>>,
    /// Names whose content must survive: fsynced (or seen after the last recovery) and not
    /// touched since.
    must: BTreeMap<String, (u64, usize)>,
    next_version: u64,
    next_name: u64,
    /// Names that exist now, as the workload believes.
    live: BTreeSet<String>,
    fsyncs: u64,
}

fn abs(mnt: &Path, name: &str) -> PathBuf {
    mnt.join(name)
}

/// One step of the workload; returns false once the mount is gone.
fn step(rng: &mut StdRng, mnt: &Path, model: &Mutex<Model>) -> bool {
    let op = rng.random_range(0..100);
    let len = match rng.random_range(0..20) {
        0 => 0,
        1 => rng.random_range(100_000..300_000),
        2..=6 => rng.random_range(1..64),
        _ => rng.random_range(64..40_000),
    };
    let fsync = rng.random_bool(0.3);
    let r = if op < 55 || model.lock().unwrap().live.is_empty() {
        // A new file, written in pieces, maybe fsynced, closed.
        let (name, v) = {
            let mut m = model.lock().unwrap();
            let name = format!("d{}/f{}", rng.random_range(0..DIRS), m.next_name);
            m.next_name += 1;
            let v = m.next_version;
            m.next_version += 1;
            m.candidates
                .entry(name.clone())
                .or_default()
                .insert((v, len));
            m.live.insert(name.clone());
            (name, v)
        };
        write_version(mnt, &name, v, len, fsync, model)
    } else if op < 80 {
        // Replace an existing file atomically: write a temporary file, rename it over.
        let (target, tmp, v) = {
            let mut m = model.lock().unwrap();
            let idx = rng.random_range(0..m.live.len());
            let target = m.live.iter().nth(idx).cloned().unwrap();
            let dir = target.split('/').next().unwrap().to_string();
            let tmp = format!("{dir}/t{}", m.next_name);
            m.next_name += 1;
            let v = m.next_version;
            m.next_version += 1;
            m.candidates
                .entry(tmp.clone())
                .or_default()
                .insert((v, len));
            (target, tmp, v)
        };
        write_version(mnt, &tmp, v, len, fsync, model).and_then(|()| {
            {
                let mut m = model.lock().unwrap();
                m.candidates
                    .entry(target.clone())
                    .or_default()
                    .insert((v, len));
                m.must.remove(&target);
                m.must.remove(&tmp);
            }
            fs::rename(abs(mnt, &tmp), abs(mnt, &target))?;
            let mut m = model.lock().unwrap();
            m.live.remove(&tmp);
            m.live.insert(target.clone());
            if fsync {
                // The fsync came before the rename: the rename itself may be lost, so the
                // target is not a must; fsync the target now to make it one.
                drop(m);
                let f = fs::File::open(abs(mnt, &target))?;
                f.sync_all()?;
                let mut m = model.lock().unwrap();
                m.must.insert(target.clone(), (v, len));
                m.fsyncs += 1;
            }
            Ok(())
        })
    } else {
        // Unlink.
        let name = {
            let mut m = model.lock().unwrap();
            let idx = rng.random_range(0..m.live.len());
            let name = m.live.iter().nth(idx).cloned().unwrap();
            m.must.remove(&name);
            name
        };
        fs::remove_file(abs(mnt, &name)).map(|()| {
            model.lock().unwrap().live.remove(&name);
        })
    };
    r.is_ok()
}

fn write_version(
    mnt: &Path,
    name: &str,
    v: u64,
    len: usize,
    fsync: bool,
    model: &Mutex<Model>,
) -> std::io::Result<()> {
    let bytes = version_bytes(v, len);
    let mut f = fs::File::create(abs(mnt, name))?;
    for chunk in bytes.chunks(16 << 10) {
        f.write_all(chunk)?;
    }
    if fsync {
        f.sync_all()?;
        let mut m = model.lock().unwrap();
        m.must.insert(name.to_string(), (v, len));
        m.fsyncs += 1;
    }
    drop(f);
    model.lock().unwrap().live.insert(name.to_string());
    Ok(())
}

/// Checks the remounted drive against the model, then makes what it shows the new baseline.
fn verify(mnt: &Path, model: &Mutex<Model>, round: usize) -> (usize, usize) {
    let mut m = model.lock().unwrap();
    let mut seen = BTreeMap::new();
    for d in 0..DIRS {
        let dir = mnt.join(format!("d{d}"));
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("round {round}: read_dir {}: {e}", dir.display()),
        };
        for e in entries {
            let e = e.unwrap();
            let name = format!("d{d}/{}", e.file_name().to_string_lossy());
            let got = fs::read(e.path())
                .unwrap_or_else(|err| panic!("round {round}: {name} unreadable: {err}"));
            let cands = m.candidates.get(&name).cloned().unwrap_or_default();
            let version = cands
                .iter()
                .find(|(v, len)| got.len() <= *len && version_bytes(*v, got.len()) == got)
                .copied();
            let Some((v, _)) = version else {
                panic!(
                    "round {round}: {name} holds {} bytes it never held (first bytes {:?}; \
                     versions written there: {cands:?})",
                    got.len(),
                    &got[..got.len().min(8)]
                );
            };
            seen.insert(name, (v, got.len()));
        }
    }
    let mut intact = 0;
    for (name, (v, len)) in &m.must {
        match seen.get(name) {
            Some(&(gv, glen)) if (gv == *v && glen == *len) || (*len == 0 && glen == 0) => {
                intact += 1
            }
            Some(got) => panic!(
                "round {round}: {name} was fsynced (or recovered) as version {v} of {len} \
                 bytes, holds version {} of {} bytes",
                got.0, got.1
            ),
            None => panic!(
                "round {round}: {name} was fsynced (or recovered) as version {v} of {len} \
                 bytes and is gone"
            ),
        }
    }
    // What the remount shows is durable (recovery syncs before serving).
    m.must = seen.clone();
    m.candidates = seen
        .iter()
        .map(|(n, vl)| (n.clone(), BTreeSet::from([*vl])))
        .collect();
    m.live = seen.keys().cloned().collect();
    (intact, seen.len())
}

fn is_mounted(mnt: &Path) -> bool {
    let want = mnt.to_string_lossy().to_string();
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
}

fn start_walrusfs(data: &Path, mnt: &Path, log: &Path) -> Child {
    let logf = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(EXE)
        .arg("mount")
        .arg(mnt)
        .arg("--data-dir")
        .arg(data)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !is_mounted(mnt) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "walrusfs mount exited ({status}):\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "mount not ready:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn kill(mut child: Child, mnt: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    if is_mounted(mnt) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
    }
}

/// Blobs registered and not certified, and blobs certified, on the ledger.
fn ledger_counts(ledger: &Path) -> Option<(u64, u64)> {
    let c =
        rusqlite::Connection::open_with_flags(ledger, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    c.busy_timeout(Duration::from_millis(200)).ok()?;
    c.query_row(
        "SELECT COALESCE(SUM(certified_epoch IS NULL), 0), COALESCE(SUM(certified_epoch IS NOT NULL), 0) FROM blobs",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Point {
    Random,
    MidUpload,
    MidCertify,
}

#[test]
fn fsynced_files_survive_power_loss_at_random_points() {
    let points: usize = std::env::var("WALRUSFS_POWER_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("WALRUSFS_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0005);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("lazy-state");
    let lazy_mnt = tmp.path().join("lazy");
    let mnt = tmp.path().join("mnt");
    let log = tmp.path().join("walrusfs.log");
    fs::create_dir_all(&mnt).unwrap();
    let mut lazy = lazyfs::LazyFs::mount(&state, &lazy_mnt).unwrap();
    let data = lazy_mnt.join("data");
    fs::create_dir(&data).unwrap();
    fs::File::open(&lazy_mnt).unwrap().sync_all().unwrap();
    let ledger = data.join("devnet").join("ledger.db");

    let mut rng = StdRng::seed_from_u64(seed);
    let model = Arc::new(Mutex::new(Model::default()));
    let mut kinds = BTreeMap::new();
    let mut report = Vec::new();
    let started = Instant::now();
    for round in 0..=points {
        let t_mount = Instant::now();
        let child = start_walrusfs(&data, &mnt, &log);
        let (intact, files) = verify(&mnt, &model, round);
        let t_mount = t_mount.elapsed();
        if round == points {
            // The last remount: everything checked, then a clean stop.
            report.push(format!("final: {files} files, {intact} kept as required"));
            let out = Command::new(EXE).arg("umount").arg(&mnt).output().unwrap();
            assert!(out.status.success(), "umount: {out:?}");
            let mut child = child;
            let status = child.wait().unwrap();
            assert!(status.success(), "mount exited with {status}");
            break;
        }
        // The directories (made again if a crash took them before anything synced them).
        for d in 0..DIRS {
            match fs::create_dir(mnt.join(format!("d{d}"))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("mkdir d{d}: {e}"),
            }
        }
        let kind = match round % 3 {
            1 => Point::MidUpload,
            2 => Point::MidCertify,
            _ => Point::Random,
        };
        let before = ledger_counts(&ledger).unwrap_or((0, 0));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (mnt, model, stop) = (mnt.clone(), model.clone(), stop.clone());
            let mut wrng = StdRng::seed_from_u64(rng.random());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && step(&mut wrng, &mnt, &model) {
                    n += 1;
                }
                n
            })
        };
        let t0 = Instant::now();
        // Random points: any moment up to 3 s. Targeted ones: the first registration (or
        // certification) after a random moment up to 2 s, so that the workload has run.
        let random_at = Duration::from_millis(rng.random_range(200..3000));
        let armed_at = Duration::from_millis(rng.random_range(300..2000));
        let limit = armed_at + Duration::from_secs(8);
        let mut hit = false;
        let mut base = before;
        loop {
            let el = t0.elapsed();
            let now = match kind {
                Point::Random => el >= random_at,
                Point::MidUpload | Point::MidCertify => {
                    let c = ledger_counts(&ledger).unwrap_or(base);
                    if el < armed_at {
                        base = c;
                        false
                    } else {
                        hit = if kind == Point::MidUpload {
                            c.0 > base.0
                        } else {
                            c.1 > base.1
                        };
                        base.0 = base.0.min(c.0);
                        hit || el >= limit
                    }
                }
            };
            if now {
                break;
            }
            std::thread::sleep(Duration::from_millis(if kind == Point::Random {
                10
            } else {
                2
            }));
        }
        let kind = if kind == Point::Random || hit {
            kind
        } else {
            Point::Random
        };
        kill(child, &mnt);
        stop.store(true, Ordering::Relaxed);
        let steps = worker.join().unwrap();
        *kinds.entry(kind).or_insert(0) += 1;
        let m = model.lock().unwrap();
        report.push(format!(
            "round {round}: crash {kind:?} after {:?}, {steps} steps, {} fsyncs so far, \
             {intact}/{} must-keep intact, {files} files seen at remount",
            t0.elapsed(),
            m.fsyncs,
            intact,
        ));
        drop(m);
        // The power goes: everything not synced is lost.
        let t_crash = Instant::now();
        lazy.crash();
        lazy = lazyfs::LazyFs::mount(&state, &lazy_mnt).unwrap();
        if let Some(l) = report.last_mut() {
            l.push_str(&format!(
                " (remount and checks {t_mount:.1?}, power cycle {:.1?})",
                t_crash.elapsed()
            ));
        }
    }
    drop(lazy);
    for l in &report {
        eprintln!("{l}");
    }
    eprintln!(
        "{points} crash points ({kinds:?}) in {:?}",
        started.elapsed()
    );
    assert!(
        kinds.get(&Point::MidUpload).copied().unwrap_or(0) > 0 || points < 3,
        "no crash landed mid-upload"
    );
    assert!(
        kinds.get(&Point::MidCertify).copied().unwrap_or(0) > 0 || points < 3,
        "no crash landed mid-certify"
    );
}
