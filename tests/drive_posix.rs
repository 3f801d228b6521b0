//! POSIX conformance of the drive through a real FUSE mount: every operation the drive
//! supports, with its error cases, each test on its own mount (`tests/common`).
//!
//! Where the kernel answers for the filesystem (permission checks with `default_permissions`,
//! `link` to a directory, a directory moved into itself), the test still checks what a program
//! sees, since that is the contract.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Mount;

// ---- harness ---------------------------------------------------------------------------

struct Env {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    mnt: PathBuf,
}

impl Env {
    fn mount(&self) -> Mount {
        Mount::start(&self.data, &self.mnt, &[])
    }

    /// Unmounts (all uploads finish first) and mounts again.
    fn remount(&self, m: Mount) -> Mount {
        m.unmount();
        self.mount()
    }

    /// Unmounts, drops every local copy of file content, and mounts again: what is read next
    /// comes from the storage nodes.
    fn remount_cold(&self, m: Mount) -> Mount {
        m.unmount();
        assert_eq!(
            common::pending_uploads(&self.data),
            0,
            "uploads left pending"
        );
        let cache = self.data.join("drive/cache");
        fs::remove_dir_all(&cache).unwrap();
        self.mount()
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.data.join("drive").join("meta.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
    }

    fn query_u64(&self, sql: &str, ino: u64) -> u64 {
        self.db().query_row(sql, [ino], |r| r.get(0)).unwrap()
    }

    /// Whether the inode has an upload queued.
    fn upload_pending(&self, ino: u64) -> bool {
        self.query_u64("SELECT COUNT(*) FROM uploads WHERE ino = ?1", ino) > 0
    }

    fn inode_exists(&self, ino: u64) -> bool {
        self.query_u64("SELECT COUNT(*) FROM inodes WHERE ino = ?1", ino) > 0
    }
}

fn setup() -> (Env, Mount) {
    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        data: tmp.path().join("data"),
        mnt: tmp.path().join("mnt"),
        _tmp: tmp,
    };
    let m = env.mount();
    (env, m)
}

fn cs(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// The errno of a failed call.
fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no errno in {e}")),
    }
}

/// 0, or the errno of a libc call that returned -1.
fn rc(ret: libc::c_int) -> i32 {
    if ret == -1 {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    } else {
        0
    }
}

/// Deterministic pseudo-random bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

fn mtime(m: &fs::Metadata) -> (i64, i64) {
    (m.mtime(), m.mtime_nsec())
}

fn ctime(m: &fs::Metadata) -> (i64, i64) {
    (m.ctime(), m.ctime_nsec())
}

/// Polls `f` for up to 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> i32 {
    let (a, b) = (cs(from), cs(to));
    // SAFETY: valid C strings.
    rc(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    })
}

/// Runs `script` with `sh` as user and group 65534 (nobody); returns (success, stderr).
fn as_nobody(script: &str) -> (bool, String) {
    use std::os::unix::process::CommandExt as _;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

// ---- files: create, open, read, write ------------------------------------------------------

#[test]
fn write_and_read_at_any_offset() {
    let (env, m) = setup();
    let p = m.path("f");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    let mut model: Vec<u8> = Vec::new();
    let extent = 4 << 20;
    // Overlapping, out of order, across an extent boundary, and one far out.
    let writes: [(u64, usize, u64); 6] = [
        (0, 100, 1),
        (50, 200, 2),
        (1_000_000, 5000, 3),
        (3, 1, 4),
        (extent - 10, 20, 5),
        (9_000_000, 300_000, 6),
    ];
    for (off, len, seed) in writes {
        let bytes = pattern(len, seed);
        f.write_all_at(&bytes, off).unwrap();
        let end = off as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&bytes);
        // Read back through the same descriptor at once.
        let mut back = vec![0; len];
        f.read_exact_at(&mut back, off).unwrap();
        assert_eq!(back, bytes);
    }
    assert_eq!(f.metadata().unwrap().len(), model.len() as u64);
    let check = |path: &Path, model: &[u8]| {
        assert_eq!(fs::read(path).unwrap(), model);
        let g = File::open(path).unwrap();
        for (off, len) in [
            (0u64, 10usize),
            (45, 300),
            (extent - 100, 200),
            (999_999, 10),
        ] {
            let mut buf = vec![0; len];
            g.read_exact_at(&mut buf, off).unwrap();
            assert_eq!(buf, model[off as usize..off as usize + len], "at {off}");
        }
        // Past the end: nothing.
        let mut buf = [0u8; 10];
        assert_eq!(g.read_at(&mut buf, model.len() as u64 + 5).unwrap(), 0);
        assert_eq!(g.read_at(&mut buf, model.len() as u64 - 3).unwrap(), 3);
    };
    check(&p, &model);
    drop(f);
    check(&p, &model);
    let m = env.remount_cold(m);
    check(&m.path("f"), &model);
    // Overwrite in the middle of a clean file: the rest is fetched, not lost.
    let f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    f.write_all_at(b"MIDDLE", 4_000_000).unwrap();
    drop(f);
    model[4_000_000..4_000_006].copy_from_slice(b"MIDDLE");
    check(&m.path("f"), &model);
    let m = env.remount_cold(m);
    check(&m.path("f"), &model);
    m.unmount();
}

#[test]
fn create_and_open_errors() {
    let (_env, m) = setup();
    fs::write(m.path("f"), b"x").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    let excl = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("f"));
    assert_eq!(errno(excl), libc::EEXIST);
    assert_eq!(errno(File::open(m.path("missing"))), libc::ENOENT);
    assert_eq!(errno(File::create(m.path("missing/x"))), libc::ENOENT);
    assert_eq!(errno(File::create(m.path("f/x"))), libc::ENOTDIR);
    assert_eq!(
        errno(OpenOptions::new().write(true).open(m.path("d"))),
        libc::EISDIR
    );
    assert_eq!(
        errno(File::create(m.path(&"n".repeat(256)))),
        libc::ENAMETOOLONG
    );
    // 255 bytes is fine.
    let long = "n".repeat(255);
    fs::write(m.path(&long), b"long").unwrap();
    assert_eq!(fs::read(m.path(&long)).unwrap(), b"long");
    // Writing through a read-only descriptor.
    let mut ro = File::open(m.path("f")).unwrap();
    assert_eq!(errno(ro.write(b"y")), libc::EBADF);
    // O_CREAT without O_EXCL opens the existing file; O_TRUNC empties it.
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("f"))
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 0);
    drop(f);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"");
    // Mode of a new file: requested bits less the umask.
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(m.path("moded"))
        .unwrap();
    assert_eq!(
        f.metadata().unwrap().permissions().mode() & 0o7777,
        0o640 & !umask()
    );
    drop((f, ro));
    m.unmount();
}

#[test]
fn append_mode_writes_at_the_end() {
    let (env, m) = setup();
    let p = m.path("log");
    fs::write(&p, b"abc").unwrap();
    let open = || OpenOptions::new().append(true).open(&p).unwrap();
    let (mut a, mut b) = (open(), open());
    a.write_all(b"111").unwrap();
    b.write_all(b"22").unwrap();
    a.write_all(b"3").unwrap();
    // pwrite with O_APPEND appends too (Linux).
    b.write_all_at(b"Z", 0).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"abc111223Z");
    drop((a, b));
    // Append to a clean file after a remount.
    let m = env.remount_cold(m);
    let mut a = OpenOptions::new().append(true).open(m.path("log")).unwrap();
    a.write_all(b"-more").unwrap();
    drop(a);
    assert_eq!(fs::read(m.path("log")).unwrap(), b"abc111223Z-more");
    let m = env.remount(m);
    assert_eq!(fs::read(m.path("log")).unwrap(), b"abc111223Z-more");
    m.unmount();
}

#[test]
fn truncate_grows_and_shrinks() {
    let (env, m) = setup();
    let p = m.path("t");
    let data = pattern(10_000, 7);
    fs::write(&p, &data).unwrap();
    let before = fs::metadata(&p).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // By path.
    File::options().write(true).open(&p).unwrap(); // no-op open
    let c = cs(&p);
    // SAFETY: a valid C string.
    assert_eq!(rc(unsafe { libc::truncate(c.as_ptr(), 100) }), 0);
    let after = fs::metadata(&p).unwrap();
    assert_eq!(after.len(), 100);
    assert!(mtime(&after) > mtime(&before), "truncate changes mtime");
    assert!(ctime(&after) > ctime(&before), "truncate changes ctime");
    assert_eq!(fs::read(&p).unwrap(), data[..100]);
    // SAFETY: as above.
    assert_eq!(rc(unsafe { libc::truncate(c.as_ptr(), 5000) }), 0);
    let mut want = data[..100].to_vec();
    want.resize(5000, 0);
    assert_eq!(fs::read(&p).unwrap(), want, "grown part reads as zeros");
    // Through a descriptor.
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.set_len(50).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 50);
    f.set_len(70).unwrap();
    let mut buf = vec![0; 70];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf[..50], data[..50]);
    assert_eq!(
        buf[50..],
        [0; 20],
        "no stale bytes come back after shrink and grow"
    );
    f.set_len(0).unwrap();
    f.write_all_at(b"x", 0).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"x");
    // A read-only descriptor cannot truncate.
    let ro = File::open(&p).unwrap();
    assert!(matches!(errno(ro.set_len(0)), libc::EINVAL | libc::EBADF));
    drop(ro);
    // Errors by path.
    fs::create_dir(m.path("d")).unwrap();
    let d = cs(&m.path("d"));
    // SAFETY: valid C strings.
    assert_eq!(rc(unsafe { libc::truncate(d.as_ptr(), 0) }), libc::EISDIR);
    let missing = cs(&m.path("missing"));
    // SAFETY: as above.
    assert_eq!(
        rc(unsafe { libc::truncate(missing.as_ptr(), 0) }),
        libc::ENOENT
    );
    // SAFETY: as above.
    assert_eq!(rc(unsafe { libc::truncate(c.as_ptr(), -1) }), libc::EINVAL);

    // Truncating a clean file (content only on the network) keeps the prefix.
    fs::write(m.path("clean"), &data).unwrap();
    let m = env.remount_cold(m);
    let c = cs(&m.path("clean"));
    // SAFETY: as above.
    assert_eq!(rc(unsafe { libc::truncate(c.as_ptr(), 3000) }), 0);
    // SAFETY: as above.
    assert_eq!(rc(unsafe { libc::truncate(c.as_ptr(), 6000) }), 0);
    let mut want = data[..3000].to_vec();
    want.resize(6000, 0);
    assert_eq!(fs::read(m.path("clean")).unwrap(), want);
    let m = env.remount_cold(m);
    assert_eq!(fs::read(m.path("clean")).unwrap(), want);
    assert_eq!(fs::read(m.path("t")).unwrap(), b"x");
    m.unmount();
}

#[test]
fn sparse_files_read_holes_as_zeros() {
    let (env, m) = setup();
    let p = m.path("sparse");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    let hole = 10u64 << 20;
    // Seek past the end and write.
    assert_eq!(f.seek(SeekFrom::Start(hole)).unwrap(), hole);
    f.write_all(b"tail").unwrap();
    f.write_all_at(b"head", 0).unwrap();
    // Seeking past the end alone changes nothing.
    f.seek(SeekFrom::End(100)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(f.read(&mut buf).unwrap(), 0);
    assert_eq!(f.metadata().unwrap().len(), hole + 4);
    let check = |path: &Path| {
        let got = fs::read(path).unwrap();
        assert_eq!(got.len() as u64, hole + 4);
        assert_eq!(&got[..4], b"head");
        assert!(
            got[4..hole as usize].iter().all(|&b| b == 0),
            "hole is zeros"
        );
        assert_eq!(&got[hole as usize..], b"tail");
    };
    check(&p);
    f.sync_all().unwrap();
    drop(f);
    // Holes are not stored: the extents hold the data only.
    let stored = env.query_u64(
        "SELECT COALESCE(SUM(len), 0) FROM extents WHERE ino = ?1",
        ino(&p),
    );
    assert!(
        stored < 1 << 20,
        "{stored} bytes stored for 8 bytes of data"
    );
    let m = env.remount_cold(m);
    check(&m.path("sparse"));
    // Grow with ftruncate, then write beyond: all holes.
    let f = OpenOptions::new()
        .write(true)
        .open(m.path("sparse"))
        .unwrap();
    f.set_len(hole * 2).unwrap();
    f.write_all_at(b"end", hole * 3).unwrap();
    drop(f);
    let got = fs::read(m.path("sparse")).unwrap();
    assert_eq!(got.len() as u64, hole * 3 + 3);
    assert!(
        got[hole as usize + 4..(hole * 3) as usize]
            .iter()
            .all(|&b| b == 0)
    );
    assert_eq!(&got[(hole * 3) as usize..], b"end");
    m.unmount();
}

#[test]
fn file_larger_than_one_blob_survives_remount() {
    let (env, m) = setup();
    let p = m.path("big");
    let len = 70usize << 20;
    let data = pattern(len, 42);
    let started = Instant::now();
    let mut f = File::create(&p).unwrap();
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
    eprintln!("70 MiB written and certified in {:?}", started.elapsed());
    drop(f);
    let i = ino(&p);
    let blobs = env.query_u64(
        "SELECT COUNT(DISTINCT blob_id) FROM extents WHERE ino = ?1",
        i,
    );
    assert!(blobs >= 2, "a 70 MiB file must span blobs, got {blobs}");
    let m = env.remount_cold(m);
    let started = Instant::now();
    let back = fs::read(m.path("big")).unwrap();
    eprintln!("70 MiB read from the network in {:?}", started.elapsed());
    assert_eq!(back.len(), len);
    assert!(
        blake3::hash(&back) == blake3::hash(&data),
        "content differs"
    );
    // A read across the blob boundary.
    let f = File::open(m.path("big")).unwrap();
    let mut buf = vec![0; 4096];
    f.read_exact_at(&mut buf, (64 << 20) - 2048).unwrap();
    assert_eq!(buf, data[(64 << 20) - 2048..(64 << 20) + 2048]);
    drop(f);
    m.unmount();
}

// ---- directories ---------------------------------------------------------------------------

#[test]
fn mkdir_and_rmdir_errors() {
    let (env, m) = setup();
    let root_links = fs::metadata(&m.mnt).unwrap().nlink();
    assert_eq!(root_links, 2);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("f"), b"").unwrap();
    assert_eq!(fs::metadata(&m.mnt).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 2);
    assert_eq!(errno(fs::create_dir(m.path("d"))), libc::EEXIST);
    assert_eq!(errno(fs::create_dir(m.path("f"))), libc::EEXIST);
    assert_eq!(errno(fs::create_dir(m.path("missing/x"))), libc::ENOENT);
    assert_eq!(errno(fs::create_dir(m.path("f/x"))), libc::ENOTDIR);
    fs::create_dir(m.path("d/sub")).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 3);
    assert_eq!(errno(fs::remove_dir(m.path("d"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_dir(m.path("f"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_dir(m.path("missing"))), libc::ENOENT);
    assert_eq!(errno(fs::remove_file(m.path("d"))), libc::EISDIR);
    assert_eq!(errno(fs::remove_dir(m.path("d/."))), libc::EINVAL);
    assert_eq!(errno(fs::remove_dir(m.path("d/sub/.."))), libc::ENOTEMPTY);
    // Mode of a new directory.
    let c = cs(&m.path("moded"));
    // SAFETY: a valid C string.
    assert_eq!(rc(unsafe { libc::mkdir(c.as_ptr(), 0o750) }), 0);
    assert_eq!(
        fs::metadata(m.path("moded")).unwrap().permissions().mode() & 0o7777,
        0o750 & !umask()
    );
    fs::remove_dir(m.path("moded")).unwrap();
    fs::remove_dir(m.path("d/sub")).unwrap();
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 2);
    let m = env.remount(m);
    assert_eq!(fs::metadata(&m.mnt).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 2);
    fs::remove_dir(m.path("d")).unwrap();
    assert_eq!(fs::metadata(&m.mnt).unwrap().nlink(), 2);
    assert_eq!(errno(fs::metadata(m.path("d"))), libc::ENOENT);
    m.unmount();
}

#[test]
fn readdir_lists_many_entries_once() {
    let (env, m) = setup();
    let dir = m.path("many");
    fs::create_dir(&dir).unwrap();
    let n = 10_000;
    let started = Instant::now();
    let mut want = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("entry-{i:05}-{}", "x".repeat(i % 40));
        if i.is_multiple_of(1000) {
            fs::create_dir(dir.join(&name)).unwrap();
        } else {
            File::create(dir.join(&name)).unwrap();
        }
        want.push(name);
    }
    eprintln!("{n} entries created in {:?}", started.elapsed());
    want.sort();
    let list = |dir: &Path| {
        let mut got = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let is_dir = e.file_type().unwrap().is_dir();
            let idx: usize = name[6..11].parse().unwrap();
            assert_eq!(is_dir, idx.is_multiple_of(1000), "type of {name}");
            got.push(name);
        }
        let count = got.len();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), count, "duplicate entries");
        got
    };
    assert_eq!(list(&dir), want);
    let m = env.remount(m);
    let dir = m.path("many");
    assert_eq!(list(&dir), want);
    // Delete every third entry, then list again.
    for (i, name) in want.iter().enumerate() {
        if i.is_multiple_of(3) {
            let p = dir.join(name);
            if p.is_dir() {
                fs::remove_dir(p).unwrap();
            } else {
                fs::remove_file(p).unwrap();
            }
        }
    }
    let rest: Vec<String> = want
        .iter()
        .enumerate()
        .filter(|(i, _)| !i.is_multiple_of(3))
        .map(|(_, n)| n.clone())
        .collect();
    assert_eq!(list(&dir), rest);
    // "." and ".." are there too (readdir(3) sees them; std hides them).
    let out = run(Command::new("ls").arg("-a").arg(&dir));
    assert!(out.lines().any(|l| l == "."));
    assert!(out.lines().any(|l| l == ".."));
    assert_eq!(out.lines().count(), rest.len() + 2);
    m.unmount();
}

// ---- rename --------------------------------------------------------------------------------

#[test]
fn rename_files_and_directories() {
    let (env, m) = setup();
    let p = |s: &str| m.path(s);
    fs::write(p("a"), b"A").unwrap();
    fs::write(p("b"), b"B").unwrap();
    fs::create_dir_all(p("d1/inner")).unwrap();
    fs::create_dir(p("d2")).unwrap();
    fs::create_dir(p("full")).unwrap();
    fs::write(p("full/x"), b"").unwrap();
    // A plain move, then onto itself (no-op).
    let a_ino = ino(&p("a"));
    fs::rename(p("a"), p("a2")).unwrap();
    assert_eq!(ino(&p("a2")), a_ino);
    assert_eq!(errno(fs::metadata(p("a"))), libc::ENOENT);
    fs::rename(p("a2"), p("a2")).unwrap();
    assert_eq!(fs::read(p("a2")).unwrap(), b"A");
    // Replacing a file; a descriptor open on the replaced file still reads it.
    let b_ino = ino(&p("b"));
    let mut held = File::open(p("b")).unwrap();
    fs::rename(p("a2"), p("b")).unwrap();
    assert_eq!(fs::read(p("b")).unwrap(), b"A");
    let mut old = String::new();
    held.read_to_string(&mut old).unwrap();
    assert_eq!(old, "B");
    assert_eq!(held.metadata().unwrap().nlink(), 0);
    drop(held);
    eventually("replaced inode deleted", || !env.inode_exists(b_ino));
    // Directories: into another directory, replacing an empty one.
    let root_links = fs::metadata(&m.mnt).unwrap().nlink();
    fs::rename(p("d1"), p("d2/moved")).unwrap();
    assert_eq!(fs::metadata(&m.mnt).unwrap().nlink(), root_links - 1);
    assert_eq!(fs::metadata(p("d2")).unwrap().nlink(), 3);
    assert_eq!(ino(&p("d2/moved/inner/..")), ino(&p("d2/moved")));
    fs::create_dir(p("empty")).unwrap();
    let empty_ino = ino(&p("empty"));
    fs::rename(p("d2/moved"), p("empty")).unwrap();
    assert!(p("empty/inner").is_dir());
    assert_eq!(fs::metadata(p("d2")).unwrap().nlink(), 2);
    eventually("replaced directory deleted", || {
        !env.inode_exists(empty_ino)
    });
    // Errors.
    assert_eq!(errno(fs::rename(p("empty"), p("full"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::rename(p("b"), p("full"))), libc::EISDIR);
    assert_eq!(errno(fs::rename(p("full"), p("b"))), libc::ENOTDIR);
    assert_eq!(
        errno(fs::rename(p("empty"), p("empty/inner/x"))),
        libc::EINVAL
    );
    assert_eq!(errno(fs::rename(p("missing"), p("x"))), libc::ENOENT);
    assert_eq!(errno(fs::rename(p("b"), p("missing/x"))), libc::ENOENT);
    assert_eq!(errno(fs::rename(p("b"), p("a2/x"))), libc::ENOENT);
    assert_eq!(
        errno(fs::rename(p("b"), p(&"n".repeat(256)))),
        libc::ENAMETOOLONG
    );
    // Hard links to one file: rename is a no-op, both names stay.
    fs::hard_link(p("b"), p("b-link")).unwrap();
    fs::rename(p("b"), p("b-link")).unwrap();
    assert!(p("b").exists() && p("b-link").exists());
    let m = env.remount(m);
    let p = |s: &str| m.path(s);
    assert_eq!(fs::read(p("b")).unwrap(), b"A");
    assert!(p("empty/inner").is_dir());
    assert_eq!(ino(&p("empty/inner/..")), ino(&p("empty")));
    assert_eq!(fs::metadata(p("d2")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(p("empty")).unwrap().nlink(), 3);
    assert_eq!(fs::metadata(p("b")).unwrap().nlink(), 2);
    m.unmount();
}

#[test]
fn rename_noreplace_and_exchange() {
    let (env, m) = setup();
    let p = |s: &str| m.path(s);
    fs::create_dir(p("a")).unwrap();
    fs::create_dir(p("b")).unwrap();
    fs::write(p("a/f"), b"file").unwrap();
    fs::create_dir(p("b/d")).unwrap();
    fs::write(p("b/d/inner"), b"inner").unwrap();
    fs::write(p("x"), b"X").unwrap();
    fs::write(p("y"), b"Y").unwrap();
    // RENAME_NOREPLACE.
    assert_eq!(
        renameat2(&p("x"), &p("y"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(fs::read(p("y")).unwrap(), b"Y");
    assert_eq!(renameat2(&p("x"), &p("z"), libc::RENAME_NOREPLACE), 0);
    assert_eq!(fs::read(p("z")).unwrap(), b"X");
    // RENAME_EXCHANGE of two files in one directory.
    assert_eq!(renameat2(&p("y"), &p("z"), libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read(p("y")).unwrap(), b"X");
    assert_eq!(fs::read(p("z")).unwrap(), b"Y");
    assert_eq!(
        renameat2(&p("y"), &p("missing"), libc::RENAME_EXCHANGE),
        libc::ENOENT
    );
    // A file and a directory across directories: link counts and ".." follow.
    let (a0, b0) = (
        fs::metadata(p("a")).unwrap().nlink(),
        fs::metadata(p("b")).unwrap().nlink(),
    );
    assert_eq!((a0, b0), (2, 3));
    let f_ino = ino(&p("a/f"));
    let d_ino = ino(&p("b/d"));
    assert_eq!(renameat2(&p("a/f"), &p("b/d"), libc::RENAME_EXCHANGE), 0);
    let check = |m: &Mount| {
        let p = |s: &str| m.path(s);
        assert!(p("a/f").is_dir());
        assert_eq!(ino(&p("a/f")), d_ino);
        assert_eq!(ino(&p("b/d")), f_ino);
        assert_eq!(fs::read(p("a/f/inner")).unwrap(), b"inner");
        assert_eq!(fs::read(p("b/d")).unwrap(), b"file");
        assert_eq!(fs::metadata(p("a")).unwrap().nlink(), 3);
        assert_eq!(fs::metadata(p("b")).unwrap().nlink(), 2);
        assert_eq!(ino(&p("a/f/..")), ino(&p("a")));
    };
    check(&m);
    // A directory with its own subdirectory: EINVAL.
    fs::create_dir(p("a/f/sub")).unwrap();
    assert_eq!(
        renameat2(&p("a/f"), &p("a/f/sub"), libc::RENAME_EXCHANGE),
        libc::EINVAL
    );
    fs::remove_dir(p("a/f/sub")).unwrap();
    // Both flags at once are invalid.
    assert_eq!(
        renameat2(
            &p("y"),
            &p("z"),
            libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE
        ),
        libc::EINVAL
    );
    let m = env.remount(m);
    check(&m);
    m.unmount();
}

// ---- unlink and rmdir of open files ------------------------------------------------------

#[test]
fn unlinked_open_file_stays_readable_until_close() {
    let (env, m) = setup();
    let p = m.path("f");
    let data = pattern(1 << 20, 3);
    fs::write(&p, &data).unwrap();
    let reader = File::open(&p).unwrap();
    let writer = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let i = ino(&p);
    fs::remove_file(&p).unwrap();
    assert_eq!(errno(fs::metadata(&p)), libc::ENOENT);
    let mut back = Vec::new();
    (&reader).read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(reader.metadata().unwrap().nlink(), 0);
    // Still writable, and changes show through the other descriptor.
    writer.write_all_at(b"changed", 10).unwrap();
    let mut buf = [0u8; 7];
    reader.read_exact_at(&mut buf, 10).unwrap();
    assert_eq!(&buf, b"changed");
    writer
        .set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    assert_eq!(
        reader.metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The name is free again.
    fs::write(&p, b"new").unwrap();
    assert_ne!(ino(&p), i);
    assert!(env.inode_exists(i));
    drop(writer);
    assert!(env.inode_exists(i), "still open for reading");
    drop(reader);
    eventually("unlinked inode deleted after the last close", || {
        !env.inode_exists(i)
    });
    assert!(!env.data.join(format!("drive/staging/{i}")).exists());
    assert_eq!(fs::read(&p).unwrap(), b"new");
    m.unmount();
}

#[test]
fn removed_open_directory_stays_usable_until_close() {
    let (env, m) = setup();
    let d = m.path("d");
    fs::create_dir(&d).unwrap();
    let i = ino(&d);
    let dir = File::open(&d).unwrap();
    fs::remove_dir(&d).unwrap();
    assert_eq!(errno(fs::metadata(&d)), libc::ENOENT);
    let st = dir.metadata().unwrap();
    assert!(st.is_dir());
    assert_eq!(st.nlink(), 0);
    // Nothing can be created in it.
    let name = CString::new("x").unwrap();
    // SAFETY: a valid descriptor and C string.
    let r = rc(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) });
    assert_eq!(r, libc::ENOENT);
    drop(dir);
    eventually("removed directory deleted after close", || {
        !env.inode_exists(i)
    });
    m.unmount();
}

// ---- links -------------------------------------------------------------------------------

#[test]
fn hard_links_share_the_inode() {
    let (env, m) = setup();
    let p = |s: &str| m.path(s);
    fs::write(p("f"), b"one").unwrap();
    fs::create_dir(p("d")).unwrap();
    let before = fs::metadata(p("f")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::hard_link(p("f"), p("g")).unwrap();
    fs::hard_link(p("f"), p("d/h")).unwrap();
    let st = fs::metadata(p("g")).unwrap();
    assert_eq!(st.ino(), before.ino());
    assert_eq!(st.nlink(), 3);
    assert!(ctime(&st) > ctime(&before), "link changes ctime");
    assert_eq!(fs::metadata(p("f")).unwrap().nlink(), 3);
    fs::write(p("d/h"), b"two").unwrap();
    assert_eq!(fs::read(p("f")).unwrap(), b"two");
    assert_eq!(errno(fs::hard_link(p("d"), p("dlink"))), libc::EPERM);
    assert_eq!(errno(fs::hard_link(p("f"), p("g"))), libc::EEXIST);
    assert_eq!(errno(fs::hard_link(p("missing"), p("x"))), libc::ENOENT);
    assert_eq!(errno(fs::hard_link(p("f"), p("missing/x"))), libc::ENOENT);
    fs::remove_file(p("f")).unwrap();
    assert_eq!(fs::metadata(p("g")).unwrap().nlink(), 2);
    let m = env.remount(m);
    let p = |s: &str| m.path(s);
    assert_eq!(fs::metadata(p("g")).unwrap().nlink(), 2);
    assert_eq!(ino(&p("g")), ino(&p("d/h")));
    assert_eq!(fs::read(p("g")).unwrap(), b"two");
    fs::remove_file(p("d/h")).unwrap();
    assert_eq!(fs::metadata(p("g")).unwrap().nlink(), 1);
    m.unmount();
}

#[test]
fn symlinks() {
    let (env, m) = setup();
    let p = |s: &str| m.path(s);
    fs::write(p("target"), b"content").unwrap();
    fs::create_dir(p("dir")).unwrap();
    std::os::unix::fs::symlink("target", p("l")).unwrap();
    std::os::unix::fs::symlink("dir", p("ldir")).unwrap();
    std::os::unix::fs::symlink("nowhere", p("dangling")).unwrap();
    let long = "t/".repeat(2000);
    std::os::unix::fs::symlink(&long, p("long")).unwrap();
    let check = |m: &Mount| {
        let p = |s: &str| m.path(s);
        assert_eq!(fs::read_link(p("l")).unwrap(), Path::new("target"));
        let st = fs::symlink_metadata(p("l")).unwrap();
        assert!(st.file_type().is_symlink());
        assert_eq!(st.len(), 6);
        assert_eq!(fs::read(p("l")).unwrap(), b"content");
        assert!(fs::metadata(p("l")).unwrap().is_file());
        assert!(p("ldir").is_dir());
        assert_eq!(errno(fs::metadata(p("dangling"))), libc::ENOENT);
        assert!(
            fs::symlink_metadata(p("dangling"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_link(p("long")).unwrap(), Path::new(&long));
        assert_eq!(errno(fs::read_link(p("target"))), libc::EINVAL);
    };
    check(&m);
    assert_eq!(errno(std::os::unix::fs::symlink("x", p("l"))), libc::EEXIST);
    let nofollow = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p("l"));
    assert_eq!(errno(nofollow), libc::ELOOP);
    // Writing through a dangling symlink creates its target.
    fs::write(p("dangling"), b"made").unwrap();
    assert_eq!(fs::read(p("nowhere")).unwrap(), b"made");
    fs::remove_file(p("nowhere")).unwrap();
    // Unlinking the link leaves the target.
    std::os::unix::fs::symlink("target", p("l2")).unwrap();
    fs::remove_file(p("l2")).unwrap();
    assert!(p("target").exists());
    let m = env.remount(m);
    check(&m);
    m.unmount();
}

// ---- attributes ----------------------------------------------------------------------------

fn utimens(path: &Path, atime: (i64, i64), mtime: (i64, i64), flags: i32) -> i32 {
    let c = cs(path);
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: a valid C string and two timespecs.
    rc(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), flags) })
}

#[test]
fn chmod_chown_and_utimensat_with_nanoseconds() {
    let (env, m) = setup();
    let p = |s: &str| m.path(s);
    fs::write(p("f"), b"x").unwrap();
    std::os::unix::fs::symlink("f", p("l")).unwrap();
    let st0 = fs::metadata(p("f")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::set_permissions(p("f"), fs::Permissions::from_mode(0o640)).unwrap();
    let st1 = fs::metadata(p("f")).unwrap();
    assert_eq!(st1.mode() & 0o7777, 0o640);
    assert!(ctime(&st1) > ctime(&st0), "chmod changes ctime");
    assert_eq!(mtime(&st1), mtime(&st0), "chmod leaves mtime");
    fs::set_permissions(p("f"), fs::Permissions::from_mode(0o4755)).unwrap();
    assert_eq!(fs::metadata(p("f")).unwrap().mode() & 0o7777, 0o4755);
    std::os::unix::fs::chown(p("f"), Some(1234), Some(5678)).unwrap();
    let st = fs::metadata(p("f")).unwrap();
    assert_eq!((st.uid(), st.gid()), (1234, 5678));
    // lchown changes the link, not its target.
    std::os::unix::fs::lchown(p("l"), Some(42), Some(43)).unwrap();
    let l = fs::symlink_metadata(p("l")).unwrap();
    assert_eq!((l.uid(), l.gid()), (42, 43));
    assert_eq!(fs::metadata(p("f")).unwrap().uid(), 1234);
    // fchmod through a descriptor.
    let f = File::open(p("f")).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .unwrap();
    drop(f);
    assert_eq!(fs::metadata(p("f")).unwrap().mode() & 0o7777, 0o600);
    // Times with nanoseconds, before 1970 too.
    assert_eq!(
        utimens(
            &p("f"),
            (1_000_000_000, 123_456_789),
            (-100, 250_000_000),
            0
        ),
        0
    );
    let st = fs::metadata(p("f")).unwrap();
    assert_eq!((st.atime(), st.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((st.mtime(), st.mtime_nsec()), (-100, 250_000_000));
    let before = ctime(&st);
    std::thread::sleep(Duration::from_millis(20));
    // UTIME_OMIT leaves atime; UTIME_NOW sets mtime to now.
    assert_eq!(
        utimens(&p("f"), (0, libc::UTIME_OMIT), (0, libc::UTIME_NOW), 0),
        0
    );
    let st = fs::metadata(p("f")).unwrap();
    assert_eq!((st.atime(), st.atime_nsec()), (1_000_000_000, 123_456_789));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (st.mtime() - now).abs() <= 5,
        "mtime {} vs now {now}",
        st.mtime()
    );
    assert!(ctime(&st) > before, "utimensat changes ctime");
    assert_eq!(
        utimens(&p("f"), (1_500_000_000, 1), (1_600_000_000, 999_999_999), 0),
        0
    );
    // On the symlink itself.
    assert_eq!(
        utimens(&p("l"), (7, 7), (8, 8), libc::AT_SYMLINK_NOFOLLOW),
        0
    );
    let check = |m: &Mount| {
        let st = fs::metadata(m.path("f")).unwrap();
        assert_eq!(st.mode() & 0o7777, 0o600);
        assert_eq!((st.uid(), st.gid()), (1234, 5678));
        assert_eq!((st.atime(), st.atime_nsec()), (1_500_000_000, 1));
        assert_eq!((st.mtime(), st.mtime_nsec()), (1_600_000_000, 999_999_999));
        let l = fs::symlink_metadata(m.path("l")).unwrap();
        assert_eq!((l.mtime(), l.mtime_nsec()), (8, 8));
        assert_eq!((l.uid(), l.gid()), (42, 43));
    };
    check(&m);
    let m = env.remount(m);
    check(&m);
    m.unmount();
}

fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> i32 {
    let (c, n) = (cs(path), CString::new(name).unwrap());
    // SAFETY: valid C strings and buffer.
    rc(unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// The value, or the errno; `size` is the buffer offered (None: ask for the size first).
fn getxattr(path: &Path, name: &str, size: Option<usize>) -> Result<Vec<u8>, i32> {
    let (c, n) = (cs(path), CString::new(name).unwrap());
    let size = match size {
        Some(s) => s,
        None => {
            // SAFETY: a NULL buffer of size 0 asks for the size.
            let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
            if r < 0 {
                return Err(rc(-1));
            }
            r as usize
        }
    };
    let mut buf = vec![0u8; size];
    // SAFETY: a buffer of `size` bytes.
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if r < 0 {
        return Err(rc(-1));
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn listxattr(path: &Path, size: Option<usize>) -> Result<Vec<String>, i32> {
    let c = cs(path);
    let size = match size {
        Some(s) => s,
        None => {
            // SAFETY: a NULL buffer of size 0 asks for the size.
            let r = unsafe { libc::listxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
            if r < 0 {
                return Err(rc(-1));
            }
            r as usize
        }
    };
    let mut buf = vec![0u8; size];
    // SAFETY: a buffer of `size` bytes.
    let r = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if r < 0 {
        return Err(rc(-1));
    }
    buf.truncate(r as usize);
    let mut names: Vec<String> = buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    names.sort();
    Ok(names)
}

fn removexattr(path: &Path, name: &str) -> i32 {
    let (c, n) = (cs(path), CString::new(name).unwrap());
    // SAFETY: valid C strings.
    rc(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) })
}

#[test]
fn xattrs() {
    let (env, m) = setup();
    let f = m.path("f");
    fs::write(&f, b"x").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    let st0 = fs::metadata(&f).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(setxattr(&f, "user.a", b"1", 0), 0);
    assert!(
        ctime(&fs::metadata(&f).unwrap()) > ctime(&st0),
        "setxattr changes ctime"
    );
    assert_eq!(setxattr(&f, "user.empty", b"", 0), 0);
    assert_eq!(setxattr(&f, "trusted.t", b"root only", 0), 0);
    assert_eq!(setxattr(&m.path("d"), "user.on-dir", b"yes", 0), 0);
    assert_eq!(getxattr(&f, "user.a", None).unwrap(), b"1");
    assert_eq!(getxattr(&f, "user.empty", None).unwrap(), b"");
    assert_eq!(getxattr(&f, "user.missing", None), Err(libc::ENODATA));
    // Flags.
    assert_eq!(
        setxattr(&f, "user.a", b"2", libc::XATTR_CREATE),
        libc::EEXIST
    );
    assert_eq!(
        setxattr(&f, "user.b", b"2", libc::XATTR_REPLACE),
        libc::ENODATA
    );
    assert_eq!(setxattr(&f, "user.a", b"22", libc::XATTR_REPLACE), 0);
    assert_eq!(setxattr(&f, "user.b", b"new", libc::XATTR_CREATE), 0);
    assert_eq!(getxattr(&f, "user.a", None).unwrap(), b"22");
    // Buffers too small.
    assert_eq!(getxattr(&f, "user.b", Some(2)), Err(libc::ERANGE));
    assert_eq!(listxattr(&f, Some(3)), Err(libc::ERANGE));
    // Large values: the VFS limit is 64 KiB.
    let big = pattern(65_536, 9);
    assert_eq!(setxattr(&f, "user.big", &big, 0), 0);
    assert_eq!(getxattr(&f, "user.big", None).unwrap(), big);
    assert_eq!(
        setxattr(&f, "user.too-big", &pattern(65_537, 1), 0),
        libc::E2BIG
    );
    // Namespaces: unknown ones are refused; user.* on a symlink is EPERM.
    assert_eq!(setxattr(&f, "bogus.x", b"1", 0), libc::EOPNOTSUPP);
    std::os::unix::fs::symlink("f", m.path("l")).unwrap();
    let c = cs(&m.path("l"));
    let n = CString::new("user.x").unwrap();
    // SAFETY: valid C strings.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    assert_eq!(rc(r), libc::EPERM);
    let names = ["trusted.t", "user.a", "user.b", "user.big", "user.empty"];
    assert_eq!(listxattr(&f, None).unwrap(), names);
    // Remove.
    assert_eq!(removexattr(&f, "user.empty"), 0);
    assert_eq!(removexattr(&f, "user.empty"), libc::ENODATA);
    assert_eq!(getxattr(&f, "user.empty", None), Err(libc::ENODATA));
    let check = |m: &Mount| {
        let f = m.path("f");
        assert_eq!(
            listxattr(&f, None).unwrap(),
            ["trusted.t", "user.a", "user.b", "user.big"]
        );
        assert_eq!(getxattr(&f, "user.a", None).unwrap(), b"22");
        assert_eq!(getxattr(&f, "user.big", None).unwrap(), big);
        assert_eq!(getxattr(&m.path("d"), "user.on-dir", None).unwrap(), b"yes");
    };
    check(&m);
    let m = env.remount(m);
    check(&m);
    // Attributes go with the inode: a rename keeps them, a hard link shares them.
    fs::rename(m.path("f"), m.path("f2")).unwrap();
    fs::hard_link(m.path("f2"), m.path("f3")).unwrap();
    assert_eq!(getxattr(&m.path("f3"), "user.b", None).unwrap(), b"new");
    m.unmount();
}

#[test]
fn posix_acls() {
    if !have("setfacl") || !have("getfacl") {
        eprintln!("setfacl/getfacl missing (scripts/setup installs the acl package); skipped");
        return;
    }
    let (env, m) = setup();
    // Let user 65534 reach the mount.
    fs::set_permissions(env.mnt.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let f = m.path("secret");
    fs::write(&f, b"for nobody").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let script = format!("cat '{}'", f.display());
    let (ok, err) = as_nobody(&script);
    assert!(!ok && err.contains("Permission denied"), "{err}");
    // An access ACL entry for the user grants it read.
    run(Command::new("setfacl").args(["-m", "u:65534:r"]).arg(&f));
    let acl = run(Command::new("getfacl").args(["-n", "-c"]).arg(&f));
    assert!(acl.contains("user:65534:r--"), "{acl}");
    assert!(acl.contains("mask::r--"), "{acl}");
    // The mode's group bits show the ACL mask.
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
    let (ok, err) = as_nobody(&script);
    assert!(ok, "read through the ACL failed: {err}");
    // chmod sets the mask: group bits 0 deny the named user again.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let acl = run(Command::new("getfacl").args(["-n", "-c"]).arg(&f));
    assert!(acl.contains("mask::---"), "{acl}");
    let (ok, err) = as_nobody(&script);
    assert!(!ok && err.contains("Permission denied"), "{err}");
    // Removing the ACL leaves the mode.
    run(Command::new("setfacl").arg("-b").arg(&f));
    assert_eq!(listxattr(&f, None).unwrap(), Vec::<String>::new());
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    // A minimal ACL is the mode: it sets the mode and is not stored.
    run(Command::new("setfacl")
        .args(["-m", "u::rw,g::r,o::r"])
        .arg(&f));
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o644);

    // Default ACLs are inherited by new files and directories, umask or not.
    let d = m.path("shared");
    fs::create_dir(&d).unwrap();
    run(Command::new("setfacl")
        .args(["-d", "-m", "u:65534:rwx,g::rwx,o::-"])
        .arg(&d));
    fs::write(d.join("new"), b"inherited").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    let acl = run(Command::new("getfacl")
        .args(["-n", "-c"])
        .arg(d.join("new")));
    assert!(acl.contains("user:65534:rwx\t#effective:rw-"), "{acl}");
    assert!(acl.contains("mask::rw-"), "{acl}");
    assert_eq!(
        fs::metadata(d.join("new")).unwrap().mode() & 0o777,
        0o660,
        "mode from the default ACL, not the umask"
    );
    let acl = run(Command::new("getfacl")
        .args(["-n", "-c"])
        .arg(d.join("sub")));
    assert!(acl.contains("default:user:65534:rwx"), "{acl}");
    assert!(acl.contains("user:65534:rwx"), "{acl}");
    assert_eq!(fs::metadata(d.join("sub")).unwrap().mode() & 0o777, 0o770);
    let script = format!("echo more >> '{}'", d.join("new").display());
    let (ok, err) = as_nobody(&script);
    assert!(ok, "write through the inherited ACL failed: {err}");
    // A default ACL on a file is refused.
    let out = Command::new("setfacl")
        .args(["-d", "-m", "u:65534:r"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let m = env.remount(m);
    let acl = run(Command::new("getfacl")
        .args(["-n", "-c"])
        .arg(m.path("shared/new")));
    assert!(acl.contains("user:65534:rwx\t#effective:rw-"), "{acl}");
    assert_eq!(fs::read(m.path("shared/new")).unwrap(), b"inheritedmore\n");
    m.unmount();
}

#[test]
fn statfs_reports_the_drive() {
    let (_env, m) = setup();
    let c = cs(&m.mnt);
    // SAFETY: zeroed statfs is a valid out-value.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and out-pointer.
    assert_eq!(rc(unsafe { libc::statfs(c.as_ptr(), &mut s) }), 0);
    assert_eq!(s.f_type, 0x6573_5546, "FUSE_SUPER_MAGIC");
    assert_eq!(s.f_bsize, 4096);
    assert_eq!(s.f_namelen, 255);
    assert!(s.f_blocks > 0 && s.f_blocks >= s.f_bfree && s.f_bfree >= s.f_bavail);
    assert!(s.f_files > 0 && s.f_ffree > 0);
    let before = s.f_blocks - s.f_bfree;
    fs::write(m.path("f"), vec![7u8; 1 << 20]).unwrap();
    // SAFETY: as above.
    assert_eq!(rc(unsafe { libc::statfs(c.as_ptr(), &mut s) }), 0);
    assert!(s.f_blocks - s.f_bfree >= before, "usage does not shrink");
    // statvfs through a file in the drive gives the same.
    let out = run(Command::new("stat")
        .args(["-f", "-c", "%T %S %l"])
        .arg(m.path("f")));
    let parts: Vec<&str> = out.split_whitespace().collect();
    assert!(parts[0].starts_with("fuse"), "{out}");
    assert_eq!(parts[1..], ["4096", "255"], "{out}");
    m.unmount();
}

// ---- durability ----------------------------------------------------------------------------

#[test]
fn fsync_returns_once_the_upload_is_certified() {
    let (env, m) = setup();
    // Another file stays pending the whole time: written, closed (queued) and at once opened
    // for writing again (well within the uploader's wait to fill a blob), so the uploader
    // leaves it queued.
    fs::write(m.path("held"), pattern(100_000, 1)).unwrap();
    let held = fs::OpenOptions::new()
        .write(true)
        .open(m.path("held"))
        .unwrap();
    let held_ino = ino(&m.path("held"));
    eventually("held file queued", || env.upload_pending(held_ino));

    for (name, data_only) in [("synced", false), ("datasynced", true)] {
        let f = File::create(m.path(name)).unwrap();
        f.write_all_at(&pattern(300_000, 2), 0).unwrap();
        if data_only {
            f.sync_data().unwrap();
        } else {
            f.sync_all().unwrap();
        }
        let i = ino(&m.path(name));
        assert!(
            !env.upload_pending(i),
            "{name}: upload still queued after fsync"
        );
        let (data_gen, uploaded_gen): (u64, u64) = env
            .db()
            .query_row(
                "SELECT data_gen, uploaded_gen FROM inodes WHERE ino = ?1",
                [i],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(
            data_gen > 0 && uploaded_gen == data_gen,
            "{name}: {data_gen} {uploaded_gen}"
        );
        let certified = env.query_u64(
            "SELECT COUNT(*) FROM extents e JOIN blobs b ON b.blob_id = e.blob_id
             WHERE e.ino = ?1",
            i,
        );
        assert!(certified > 0, "{name}: no extents in a stored blob");
        // A second fsync with nothing new returns at once.
        let t = Instant::now();
        f.sync_all().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
        // Written again after the fsync: the new content is what the next fsync waits for.
        f.write_all_at(b"again", 0).unwrap();
        f.sync_all().unwrap();
        assert!(!env.upload_pending(i));
        drop(f);
    }
    assert!(
        env.upload_pending(held_ino),
        "the held file was uploaded early"
    );
    assert!(common::pending_uploads(&env.data) >= 1);
    drop(held);
    eventually("everything uploaded after the last close", || {
        common::pending_uploads(&env.data) == 0
    });
    // Whatever was synced is on the network: a cold remount reads it from there.
    let m = env.remount_cold(m);
    let mut want = pattern(300_000, 2);
    want[..5].copy_from_slice(b"again");
    assert_eq!(fs::read(m.path("synced")).unwrap(), want);
    assert_eq!(fs::read(m.path("held")).unwrap(), pattern(100_000, 1));
    m.unmount();
}

// ---- locks ---------------------------------------------------------------------------------

fn flock_struct(ty: i32, start: i64, len: i64) -> libc::flock {
    // SAFETY: flock is plain data.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = ty as i16;
    l.l_whence = libc::SEEK_SET as i16;
    l.l_start = start;
    l.l_len = len;
    l
}

#[test]
fn posix_and_bsd_locks() {
    let (_env, m) = setup();
    let p = m.path("lockfile");
    fs::write(&p, vec![0u8; 100]).unwrap();
    let open = || OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let (a, b) = (open(), open());

    // Open file description locks: two descriptors conflict.
    let mut l = flock_struct(libc::F_WRLCK, 0, 0);
    // SAFETY: valid descriptors and lock structs.
    unsafe {
        assert_eq!(rc(libc::fcntl(a.as_raw_fd(), libc::F_OFD_SETLK, &l)), 0);
        assert_eq!(
            rc(libc::fcntl(b.as_raw_fd(), libc::F_OFD_SETLK, &l)),
            libc::EAGAIN
        );
        let mut q = flock_struct(libc::F_WRLCK, 0, 0);
        assert_eq!(rc(libc::fcntl(b.as_raw_fd(), libc::F_OFD_GETLK, &mut q)), 0);
        assert_eq!(q.l_type, libc::F_WRLCK as i16);
        l.l_type = libc::F_UNLCK as i16;
        assert_eq!(rc(libc::fcntl(a.as_raw_fd(), libc::F_OFD_SETLK, &l)), 0);
        l.l_type = libc::F_WRLCK as i16;
        assert_eq!(rc(libc::fcntl(b.as_raw_fd(), libc::F_OFD_SETLK, &l)), 0);
        l.l_type = libc::F_UNLCK as i16;
        assert_eq!(rc(libc::fcntl(b.as_raw_fd(), libc::F_OFD_SETLK, &l)), 0);
    }

    // Classic POSIX record locks between two processes.
    let l = flock_struct(libc::F_WRLCK, 0, 10);
    // SAFETY: as above.
    assert_eq!(
        rc(unsafe { libc::fcntl(a.as_raw_fd(), libc::F_SETLK, &l) }),
        0
    );
    let path = cs(&p);
    let parent = std::process::id() as i32;
    // SAFETY: the child only makes async-signal-safe calls and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: in the child; only raw system calls.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDWR);
            if fd < 0 {
                libc::_exit(10);
            }
            let conflict = flock_struct(libc::F_WRLCK, 5, 10);
            if libc::fcntl(fd, libc::F_SETLK, &conflict) != -1 {
                libc::_exit(11);
            }
            let mut q = flock_struct(libc::F_WRLCK, 0, 1);
            if libc::fcntl(fd, libc::F_GETLK, &mut q) != 0
                || q.l_type != libc::F_WRLCK as i16
                || q.l_pid != parent
            {
                libc::_exit(12);
            }
            let free = flock_struct(libc::F_WRLCK, 20, 10);
            if libc::fcntl(fd, libc::F_SETLK, &free) != 0 {
                libc::_exit(13);
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "POSIX lock check in the child"
    );

    // BSD flock: two descriptors conflict; another process sees the lock.
    // SAFETY: valid descriptors.
    unsafe {
        assert_eq!(rc(libc::flock(a.as_raw_fd(), libc::LOCK_EX)), 0);
        assert_eq!(
            rc(libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB)),
            libc::EWOULDBLOCK
        );
    }
    let other = Command::new("flock")
        .args(["-n", "-x"])
        .arg(&p)
        .arg("true")
        .status()
        .unwrap();
    assert!(!other.success(), "flock(1) got a lock that is held");
    // SAFETY: as above.
    unsafe {
        assert_eq!(rc(libc::flock(a.as_raw_fd(), libc::LOCK_UN)), 0);
        assert_eq!(rc(libc::flock(a.as_raw_fd(), libc::LOCK_SH)), 0);
        assert_eq!(
            rc(libc::flock(b.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB)),
            0
        );
    }
    drop((a, b));
    let other = Command::new("flock")
        .args(["-n", "-x"])
        .arg(&p)
        .arg("true")
        .status()
        .unwrap();
    assert!(other.success(), "lock not released by close");
    m.unmount();
}

// ---- mmap ----------------------------------------------------------------------------------

#[test]
fn mmap_read_and_shared_write() {
    let (env, m) = setup();
    let len = 3 * 4096 + 100;
    let data = pattern(len, 5);
    fs::write(m.path("r"), &data).unwrap();
    let f = File::open(m.path("r")).unwrap();
    // SAFETY: mapping a file we hold open; unmapped below.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        assert_eq!(std::slice::from_raw_parts(p as *const u8, len), &data[..]);
        libc::munmap(p, len);
    }
    drop(f);

    let w = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.path("w"))
        .unwrap();
    w.set_len(len as u64).unwrap();
    let new = pattern(len, 6);
    // SAFETY: as above; writes stay within the mapping.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            w.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(new.as_ptr(), p as *mut u8, len);
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
        libc::munmap(p, len);
    }
    assert_eq!(fs::read(m.path("w")).unwrap(), new, "read(2) after msync");
    let i = ino(&m.path("w"));
    assert!(
        !env.upload_pending(i),
        "msync(MS_SYNC) waits for the upload"
    );
    drop(w);
    let m = env.remount_cold(m);
    assert_eq!(fs::read(m.path("w")).unwrap(), new);
    assert_eq!(fs::read(m.path("r")).unwrap(), data);
    m.unmount();
}

// ---- permissions ---------------------------------------------------------------------------

#[test]
fn permission_checks_for_other_users() {
    let (env, m) = setup();
    fs::set_permissions(env.mnt.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let p = |s: &str| m.path(s).display().to_string();
    fs::write(m.path("secret"), b"root only").unwrap();
    fs::set_permissions(m.path("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(m.path("public"), b"everyone").unwrap();
    fs::set_permissions(m.path("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(m.path("ro")).unwrap();
    fs::set_permissions(m.path("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir(m.path("rw")).unwrap();
    fs::set_permissions(m.path("rw"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::create_dir(m.path("nox")).unwrap();
    fs::write(m.path("nox/f"), b"").unwrap();
    fs::set_permissions(m.path("nox"), fs::Permissions::from_mode(0o776)).unwrap();
    fs::create_dir(m.path("sticky")).unwrap();
    fs::set_permissions(m.path("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(m.path("sticky/roots"), b"").unwrap();

    let denied = |script: String, msg: &str| {
        let (ok, err) = as_nobody(&script);
        assert!(!ok && err.contains(msg), "{script}: {err}");
    };
    let allowed = |script: String| {
        let (ok, err) = as_nobody(&script);
        assert!(ok, "{script}: {err}");
    };
    denied(format!("cat {}", p("secret")), "Permission denied");
    allowed(format!("cat {} >/dev/null", p("public")));
    denied(format!("echo x >> {}", p("public")), "Permission denied");
    denied(format!("touch {}", p("ro/x")), "Permission denied");
    denied(format!("mkdir {}", p("ro/x")), "Permission denied");
    denied(format!("rm -f {}", p("public")), "Permission denied");
    denied(format!("cat {}", p("nox/f")), "Permission denied");
    denied(
        format!("chmod 777 {}", p("public")),
        "Operation not permitted",
    );
    denied(
        format!("rm -f {}", p("sticky/roots")),
        "Operation not permitted",
    );
    allowed(format!("echo mine > {}", p("rw/x")));
    allowed(format!("mkdir {}", p("rw/sub")));
    let st = fs::metadata(m.path("rw/x")).unwrap();
    assert_eq!(
        (st.uid(), st.gid()),
        (65534, 65534),
        "new file owned by its creator"
    );
    assert_eq!(fs::metadata(m.path("rw/sub")).unwrap().uid(), 65534);
    // The owner can chmod, and then gets what the mode says.
    allowed(format!(
        "chmod 000 {} && ! cat {} 2>/dev/null",
        p("rw/x"),
        p("rw/x")
    ));
    allowed(format!("echo mine > {}", p("sticky/own")));
    allowed(format!("rm {}", p("sticky/own")));
    // A set-group-ID directory passes its group on.
    fs::create_dir(m.path("rw/sgid")).unwrap();
    std::os::unix::fs::chown(m.path("rw/sgid"), None, Some(4242)).unwrap();
    fs::set_permissions(m.path("rw/sgid"), fs::Permissions::from_mode(0o2777)).unwrap();
    allowed(format!(
        "touch {} && mkdir {}",
        p("rw/sgid/f"),
        p("rw/sgid/d")
    ));
    assert_eq!(fs::metadata(m.path("rw/sgid/f")).unwrap().gid(), 4242);
    let d = fs::metadata(m.path("rw/sgid/d")).unwrap();
    assert_eq!(d.gid(), 4242);
    assert_ne!(
        d.mode() & 0o2000,
        0,
        "directories inherit the set-group-ID bit"
    );
    m.unmount();
}

// ---- stability and timestamps --------------------------------------------------------------

#[test]
fn inode_numbers_and_times_are_stable_across_remount() {
    let (env, m) = setup();
    let p = |s: &str| m.path(s);
    fs::create_dir(p("d")).unwrap();
    fs::write(p("d/f"), b"data").unwrap();
    fs::write(p("g"), b"").unwrap();
    fs::hard_link(p("d/f"), p("h")).unwrap();
    std::os::unix::fs::symlink("d/f", p("l")).unwrap();
    let names = ["", "d", "d/f", "g", "h", "l"];
    let snapshot = |m: &Mount| {
        names
            .iter()
            .map(|n| {
                let st = fs::symlink_metadata(m.path(n)).unwrap();
                (
                    st.ino(),
                    ctime(&st),
                    mtime(&st),
                    (st.atime(), st.atime_nsec()),
                    st.nlink(),
                    st.mode(),
                    st.len(),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = snapshot(&m);
    assert_eq!(before[0].0, 1, "the root is inode 1");
    let m = env.remount(m);
    assert_eq!(snapshot(&m), before);
    let m = env.remount_cold(m);
    assert_eq!(snapshot(&m), before);
    // Inode numbers are not reused after deletion.
    let max = before.iter().map(|s| s.0).max().unwrap();
    fs::remove_file(m.path("g")).unwrap();
    let m = env.remount(m);
    fs::write(m.path("new"), b"").unwrap();
    assert!(ino(&m.path("new")) > max);
    m.unmount();
}

#[test]
fn timestamps_follow_changes() {
    let (env, m) = setup();
    let pause = || std::thread::sleep(Duration::from_millis(15));
    let st = |p: &Path| fs::symlink_metadata(p).unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::create_dir(m.path("e")).unwrap();
    let d = m.path("d");
    let d0 = st(&d);
    pause();
    fs::write(d.join("f"), b"one").unwrap();
    let d1 = st(&d);
    assert!(
        mtime(&d1) > mtime(&d0) && ctime(&d1) > ctime(&d0),
        "create touches parent"
    );
    let f1 = st(&d.join("f"));
    pause();
    // Write: mtime and ctime move; a read does not.
    let f = OpenOptions::new().write(true).open(d.join("f")).unwrap();
    f.write_all_at(b"two", 3).unwrap();
    drop(f);
    let f2 = st(&d.join("f"));
    assert!(mtime(&f2) > mtime(&f1) && ctime(&f2) > ctime(&f1), "write");
    assert_eq!(
        mtime(&st(&d)),
        mtime(&d1),
        "writing a file leaves its directory"
    );
    pause();
    fs::read(d.join("f")).unwrap();
    assert_eq!(mtime(&st(&d.join("f"))), mtime(&f2), "read leaves mtime");
    // Rename: both directories and the file's ctime.
    let e0 = st(&m.path("e"));
    fs::rename(d.join("f"), m.path("e/f")).unwrap();
    let (d2, e1, f3) = (st(&d), st(&m.path("e")), st(&m.path("e/f")));
    assert!(mtime(&d2) > mtime(&d1), "rename touches the old parent");
    assert!(mtime(&e1) > mtime(&e0), "rename touches the new parent");
    assert!(ctime(&f3) > ctime(&f2), "rename changes the file's ctime");
    assert_eq!(mtime(&f3), mtime(&f2), "rename leaves the file's mtime");
    pause();
    // Unlink: parent mtime and ctime.
    fs::remove_file(m.path("e/f")).unwrap();
    let e2 = st(&m.path("e"));
    assert!(
        mtime(&e2) > mtime(&e1) && ctime(&e2) > ctime(&e1),
        "unlink touches parent"
    );
    pause();
    // mkdir and rmdir touch the parent too.
    fs::create_dir(d.join("sub")).unwrap();
    let d3 = st(&d);
    assert!(mtime(&d3) > mtime(&d2));
    pause();
    fs::remove_dir(d.join("sub")).unwrap();
    let d4 = st(&d);
    assert!(mtime(&d4) > mtime(&d3));
    // Times come back the same after a remount.
    let m = env.remount(m);
    assert_eq!(mtime(&st(&m.path("d"))), mtime(&d4));
    assert_eq!(ctime(&st(&m.path("e"))), ctime(&e2));
    m.unmount();
}

#[test]
fn files_beyond_4_gib() {
    let (env, m) = setup();
    let p = m.path("huge");
    // Data past the 32-bit boundary, with a hole below it: offsets must be 64-bit all the
    // way through (staging, extents, blob ranges).
    let at = (5u64 << 30) + 12_345;
    let data = pattern(3 << 20, 42);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    f.write_all_at(b"low", (4u64 << 30) - 1).unwrap();
    f.write_all_at(&data, at).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let check = |path: &Path| {
        let f = fs::File::open(path).unwrap();
        assert_eq!(f.metadata().unwrap().len(), at + data.len() as u64);
        let mut low = [0u8; 5];
        f.read_exact_at(&mut low, (4u64 << 30) - 2).unwrap();
        assert_eq!(&low, b"\0low\0");
        let mut got = vec![0u8; data.len()];
        f.read_exact_at(&mut got, at).unwrap();
        assert!(got == data, "data beyond 4 GiB reads back");
        let mut hole = vec![1u8; 4096];
        f.read_exact_at(&mut hole, (4u64 << 30) + 4096).unwrap();
        assert!(hole.iter().all(|&b| b == 0));
    };
    check(&p);
    let m = env.remount_cold(m);
    check(&m.path("huge"));
}

/// Writing or truncating a file as a user without CAP_FSETID clears set-user-ID, and
/// set-group-ID where group execution is on, as on a local filesystem (the mount handles
/// FUSE_HANDLE_KILLPRIV_V2, so the kernel leaves it to the drive); root keeps them.
#[test]
fn unprivileged_writes_clear_set_id_bits() {
    let (env, m) = setup();
    fs::set_permissions(env.mnt.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().mode() & 0o7777;
    let f = m.path("tool");
    fs::write(&f, b"#!/bin/sh\n").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6777)).unwrap();
    // Root writes: nothing cleared.
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"# root\n")
        .unwrap();
    assert_eq!(mode(&f), 0o6777);
    let (ok, err) = as_nobody(&format!("echo '# nobody' >> '{}'", f.display()));
    assert!(ok, "{err}");
    assert_eq!(
        mode(&f),
        0o0777,
        "suid and sgid (with g+x) cleared by the write"
    );
    assert_eq!(
        fs::read(&f).unwrap(),
        b"#!/bin/sh\n# root\n# nobody\n".to_vec()
    );

    // set-group-ID without group execution is mandatory locking, not privilege: kept.
    let g = m.path("locked");
    fs::write(&g, b"x").unwrap();
    fs::set_permissions(&g, fs::Permissions::from_mode(0o6766)).unwrap();
    let (ok, err) = as_nobody(&format!(": > '{}'", g.display()));
    assert!(ok, "{err}");
    assert_eq!(
        mode(&g),
        0o2766,
        "truncation clears suid, keeps sgid without g+x"
    );
    assert_eq!(fs::metadata(&g).unwrap().len(), 0);
    let m = env.remount(m);
    assert_eq!(mode(&m.path("tool")), 0o0777);
    assert_eq!(mode(&m.path("locked")), 0o2766);
}
