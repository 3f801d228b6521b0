//! Reference-model test through a real mount: random operations (seeded) are applied both to
//! the FUSE mount and to a plain directory on the local disk, and every result (value or
//! errno) must agree; whole trees (kinds, content, sizes, modes, link counts, hard-link
//! structure, symlink targets, xattrs) are compared periodically. Unmount/remount (sometimes
//! with the local cache deleted, so that content comes from the storage nodes) and SIGKILL/
//! remount are injected along the way.
//!
//! Durability across SIGKILL is close-to-open: before a kill every handle is either closed or
//! fsynced (and then abandoned), so everything in the model must survive the kill.
//!
//! `WALRUSFS_MODEL_OPS` (operations per seed, default 2000), `WALRUSFS_MODEL_SEEDS` (number of
//! seeds, default 2) and `WALRUSFS_MODEL_SEED` (run this one seed only) size the run;
//! `WALRUSFS_MODEL_CHECK_EVERY` (default 250) is how often whole trees are compared.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::ffi::CString;
use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::FromRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::Mount;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

type Res<T> = Result<T, i32>;

const NAMES: &[&str] = &["a", "b", "c", "d", "e"];
const MAX_DEPTH: usize = 3;
const MAX_HANDLES: usize = 6;
const XATTRS: &[&str] = &["user.x", "user.y", "user.z"];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn err(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn last_err<T>() -> Res<T> {
    Err(err(std::io::Error::last_os_error()))
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check(rc: libc::c_int) -> Res<()> {
    if rc < 0 { last_err() } else { Ok(()) }
}

fn sys_open(p: &Path, flags: i32, mode: u32) -> Res<File> {
    let c = cpath(p);
    // SAFETY: a valid C string; the descriptor is owned by the File.
    // O_NONBLOCK: opening a FIFO must not wait for a peer.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NONBLOCK, mode) };
    if fd < 0 {
        return last_err();
    }
    // SAFETY: fd was just opened and nobody else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn sys_rename(a: &Path, b: &Path, flags: u32) -> Res<()> {
    let (a, b) = (cpath(a), cpath(b));
    // SAFETY: valid C strings.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    })
}

fn sys_setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> Res<()> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid C strings and buffer.
    check(unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

fn sys_removexattr(p: &Path, name: &str) -> Res<()> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid C strings.
    check(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) })
}

fn sys_getxattr(p: &Path, name: &str, follow: bool) -> Res<Vec<u8>> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 70_000];
    // SAFETY: valid C strings and buffer.
    let len = unsafe {
        if follow {
            libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    if len < 0 {
        return last_err();
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// The `user.` xattr names, sorted.
fn sys_listxattr(p: &Path, follow: bool) -> Res<Vec<String>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 70_000];
    // SAFETY: valid C string and buffer.
    let len = unsafe {
        if follow {
            libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    if len < 0 {
        return last_err();
    }
    let mut names: Vec<String> = buf[..len as usize]
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user."))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn sys_utimens(p: &Path, atime: (i64, i64), mtime: (i64, i64), follow: bool) -> Res<()> {
    let c = cpath(p);
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
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: valid C string and two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), flags) })
}

fn sys_truncate(p: &Path, len: u64) -> Res<()> {
    let c = cpath(p);
    // SAFETY: valid C string.
    check(unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) })
}

fn read_at_full(f: &File, off: u64, len: usize) -> Res<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) => return Err(err(e)),
        }
    }
    buf.truncate(done);
    Ok(buf)
}

/// What a stat says that both trees must agree on.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Stat {
    kind: u32,
    perm: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    /// Not for directories (ext4 reports its block size).
    size: Option<u64>,
}

fn stat_of(m: &fs::Metadata) -> Stat {
    let kind = m.mode() & libc::S_IFMT;
    Stat {
        kind,
        perm: m.mode() & 0o7777,
        nlink: m.nlink(),
        uid: m.uid(),
        gid: m.gid(),
        size: (kind != libc::S_IFDIR).then_some(m.size()),
    }
}

/// One entry of a tree, as compared.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    stat: Stat,
    content: Option<(usize, blake3::Hash)>,
    target: Option<PathBuf>,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Relative paths and kinds of everything under `root`, without following symlinks.
fn walk(root: &Path) -> Vec<(String, u32)> {
    fn go(root: &Path, rel: &str, out: &mut Vec<(String, u32)>) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let mut names: Vec<String> = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) => panic!("read_dir {}: {e}", dir.display()),
        };
        names.sort();
        for n in names {
            let p = if rel.is_empty() {
                n.clone()
            } else {
                format!("{rel}/{n}")
            };
            let kind = fs::symlink_metadata(root.join(&p)).unwrap().mode() & libc::S_IFMT;
            out.push((p.clone(), kind));
            if kind == libc::S_IFDIR {
                go(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, "", &mut out);
    out
}

struct Handle {
    /// `None` once the mount it belonged to is gone.
    m: Option<File>,
    r: File,
    path: String,
    flags: i32,
}

struct World {
    seed: u64,
    rng: StdRng,
    data: PathBuf,
    mnt_dir: PathBuf,
    refd: PathBuf,
    mount: Option<Mount>,
    handles: Vec<Handle>,
    /// Entries of the reference tree (path, kind), refreshed after every change.
    tree: Vec<(String, u32)>,
    log: VecDeque<String>,
    step: usize,
    stats: BTreeMap<&'static str, (u64, u64)>,
    remounts: u64,
    kills: u64,
    cache_drops: u64,
}

impl World {
    fn mnt(&self) -> &Path {
        &self.mount.as_ref().unwrap().mnt
    }

    fn note(&mut self, s: String) {
        if self.log.len() == 60 {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{} {s}", self.step));
    }

    fn fail(&self, what: &str) -> ! {
        let log: Vec<&String> = self.log.iter().collect();
        let mount_log = self
            .mount
            .as_ref()
            .map(|m| m.log_text())
            .unwrap_or_default();
        let tail: String = mount_log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        let state = match &self.mount {
            Some(m) => tree_diff(&m.mnt, &self.refd).unwrap_or_else(|| "trees equal".into()),
            None => "not mounted".into(),
        };
        panic!(
            "seed {} step {}: {what}\nrecent operations:\n{}\nmount log (tail):\n{tail}\n\
             state of the trees now: {state}",
            self.seed,
            self.step,
            log.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    fn count(&mut self, op: &'static str, ok: bool) {
        let e = self.stats.entry(op).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    /// Runs `f` on the mount and on the reference; the results must agree.
    fn both<T: PartialEq + Debug>(
        &mut self,
        op: &'static str,
        desc: String,
        f: impl Fn(&Path) -> Res<T>,
    ) {
        self.note(desc.clone());
        let m = f(self.mnt());
        let r = f(&self.refd);
        if m != r {
            self.fail(&format!(
                "{desc}: results differ\n  mount:     {}\n  reference: {}",
                short(&m),
                short(&r)
            ));
        }
        self.count(op, r.is_ok());
    }

    /// Runs `f` on handle `h` of the mount and of the reference; the results must agree.
    fn both_h<T: PartialEq + Debug>(
        &mut self,
        op: &'static str,
        h: usize,
        desc: String,
        f: impl Fn(&File) -> Res<T>,
    ) {
        let desc = format!(
            "{desc} [h{h} {} {:#o}]",
            self.handles[h].path, self.handles[h].flags
        );
        self.note(desc.clone());
        let m = f(self.handles[h].m.as_ref().unwrap());
        let r = f(&self.handles[h].r);
        if m != r {
            self.fail(&format!(
                "{desc}: results differ\n  mount:     {}\n  reference: {}",
                short(&m),
                short(&r)
            ));
        }
        self.count(op, r.is_ok());
    }

    fn refresh(&mut self) {
        self.tree = walk(&self.refd);
    }

    fn dirs(&self) -> Vec<String> {
        let mut d = vec![String::new()];
        d.extend(
            self.tree
                .iter()
                .filter(|(p, k)| *k == libc::S_IFDIR && p.split('/').count() < MAX_DEPTH)
                .map(|(p, _)| p.clone()),
        );
        d
    }

    fn new_path(&mut self) -> String {
        let dirs = self.dirs();
        let d = &dirs[self.rng.random_range(0..dirs.len())];
        let n = NAMES[self.rng.random_range(0..NAMES.len())];
        if d.is_empty() {
            n.to_string()
        } else {
            format!("{d}/{n}")
        }
    }

    /// An existing path (of `kind` if given, when there is one) most of the time, else a
    /// random one.
    fn path(&mut self, kind: Option<u32>) -> String {
        let cands: Vec<&String> = self
            .tree
            .iter()
            .filter(|(_, k)| kind.is_none_or(|want| *k == want))
            .map(|(p, _)| p)
            .collect();
        if !cands.is_empty() && self.rng.random_bool(0.8) {
            return cands[self.rng.random_range(0..cands.len())].clone();
        }
        self.new_path()
    }

    fn offset(&mut self) -> u64 {
        match self.rng.random_range(0..10) {
            0..=5 => self.rng.random_range(0..64 << 10),
            6..=8 => self.rng.random_range(0..600 << 10),
            _ => self.rng.random_range(0..6 << 20),
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        let len = match self.rng.random_range(0..20) {
            0 => 0,
            1..=14 => self.rng.random_range(1..8 << 10),
            15..=18 => self.rng.random_range(1..100 << 10),
            _ => self.rng.random_range(1..1200 << 10),
        };
        let mut b = vec![0u8; len];
        if self.rng.random_bool(0.2) {
            // Runs of one byte: identical extents across files.
            b.fill(self.rng.random());
        } else {
            self.rng.fill_bytes(&mut b);
        }
        b
    }

    fn open_flags(&mut self) -> i32 {
        let acc = [libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR][self.rng.random_range(0..3)];
        let mut f = acc;
        if acc != libc::O_RDONLY {
            if self.rng.random_bool(0.15) {
                f |= libc::O_TRUNC;
            }
            if self.rng.random_bool(0.2) {
                f |= libc::O_APPEND;
            }
        }
        f
    }

    fn open_handle(&mut self, path: String, flags: i32, mode: u32) {
        let desc = format!("open {path} {flags:#o} {mode:#o}");
        self.note(desc.clone());
        let m = sys_open(&self.mnt().join(&path), flags, mode);
        let r = sys_open(&self.refd.join(&path), flags, mode);
        match (m, r) {
            (Ok(m), Ok(r)) => {
                self.count("open", true);
                if !r.metadata().unwrap().is_file() {
                    // Handles stay on regular files: the kernel opens FIFOs without asking
                    // the drive (which then cannot keep an unlinked one alive for fstat), and
                    // seeking in a directory is up to each filesystem.
                    return;
                }
                self.handles.push(Handle {
                    m: Some(m),
                    r,
                    path,
                    flags,
                });
            }
            (Err(a), Err(b)) if a == b => self.count("open", false),
            (m, r) => self.fail(&format!(
                "{desc}: results differ\n  mount:     {:?}\n  reference: {:?}",
                m.map(|_| ()),
                r.map(|_| ())
            )),
        }
        self.refresh();
    }

    fn close_handle(&mut self, h: usize) {
        let hd = self.handles.remove(h);
        self.note(format!("close h{h} {}", hd.path));
        drop(hd.m);
        drop(hd.r);
        self.count("close", true);
        self.refresh();
    }

    fn pick_handle(&mut self) -> Option<usize> {
        if self.handles.is_empty() {
            None
        } else {
            Some(self.rng.random_range(0..self.handles.len()))
        }
    }

    fn op(&mut self) {
        let choice = self.rng.random_range(0..100);
        // Operations on handles open one first when there is none.
        let needs_handle = (18..=49).contains(&choice) || (95..=97).contains(&choice);
        if (needs_handle && self.handles.is_empty()) || choice < 10 {
            if self.handles.len() >= MAX_HANDLES {
                let h = self.rng.random_range(0..self.handles.len());
                self.close_handle(h);
            }
            let path = if choice < 10 {
                self.new_path()
            } else {
                self.path(Some(libc::S_IFREG))
            };
            let mut flags = libc::O_CREAT | self.open_flags();
            if flags & libc::O_ACCMODE == libc::O_RDONLY {
                flags |= libc::O_RDWR;
            }
            if self.rng.random_bool(0.2) {
                flags |= libc::O_EXCL;
            }
            let mode = [0o644, 0o600, 0o755, 0o444][self.rng.random_range(0..4)];
            self.open_handle(path, flags, mode);
            return;
        }
        match choice {
            10..=17 => {
                if self.handles.len() >= MAX_HANDLES {
                    let h = self.rng.random_range(0..self.handles.len());
                    self.close_handle(h);
                }
                let path = self.path(Some(libc::S_IFREG));
                let flags = self.open_flags();
                self.open_handle(path, flags, 0);
            }
            18..=29 => {
                let h = self.pick_handle().unwrap();
                let off = self.offset();
                let data = self.bytes();
                let (len, hash) = (data.len(), blake3::hash(&data));
                self.both_h(
                    "pwrite",
                    h,
                    format!("pwrite {off} len {len} {}", &hash.to_hex()[..8]),
                    |f| f.write_all_at(&data, off).map_err(err),
                );
            }
            30..=35 => {
                let h = self.pick_handle().unwrap();
                let data = self.bytes();
                let (len, hash) = (data.len(), blake3::hash(&data));
                self.both_h(
                    "write",
                    h,
                    format!("write len {len} {}", &hash.to_hex()[..8]),
                    |mut f| f.write_all(&data).map_err(err),
                );
            }
            36..=41 => {
                let h = self.pick_handle().unwrap();
                let off = self.offset();
                let len = self.rng.random_range(0..200 << 10);
                self.both_h("pread", h, format!("pread {off} len {len}"), |f| {
                    read_at_full(f, off, len).map(|b| (b.len(), blake3::hash(&b)))
                });
            }
            42..=44 => {
                let len = self.offset();
                if self.rng.random_bool(0.5) {
                    let h = self.pick_handle().unwrap();
                    self.both_h("ftruncate", h, format!("ftruncate {len}"), |f| {
                        f.set_len(len).map_err(err)
                    });
                } else {
                    let p = self.path(Some(libc::S_IFREG));
                    self.both("truncate", format!("truncate {p} {len}"), |root| {
                        sys_truncate(&root.join(&p), len)
                    });
                }
            }
            45..=47 => {
                let h = self.pick_handle().unwrap();
                self.close_handle(h);
            }
            48..=49 => {
                let h = self.pick_handle().unwrap();
                self.both_h("fsync", h, "fsync".into(), |f| f.sync_all().map_err(err));
            }
            50..=53 => {
                let p = self.path(None);
                self.both("read", format!("read {p}"), |root| {
                    let mut f = sys_open(&root.join(&p), libc::O_RDONLY, 0)?;
                    let mut b = Vec::new();
                    f.read_to_end(&mut b).map_err(err)?;
                    Ok((b.len(), blake3::hash(&b)))
                });
            }
            54 if self.rng.random_bool(0.3) => {
                let p = self.new_path();
                self.both("mkfifo", format!("mkfifo {p}"), |root| {
                    let c = cpath(&root.join(&p));
                    // SAFETY: a valid C string.
                    check(unsafe { libc::mknod(c.as_ptr(), libc::S_IFIFO | 0o644, 0) })
                });
                self.refresh();
            }
            54..=57 => {
                let p = self.new_path();
                let mode = [0o755, 0o700, 0o2775, 0o777][self.rng.random_range(0..4)];
                self.both("mkdir", format!("mkdir {p} {mode:#o}"), |root| {
                    let c = cpath(&root.join(&p));
                    // SAFETY: a valid C string.
                    check(unsafe { libc::mkdir(c.as_ptr(), mode) })
                });
                self.refresh();
            }
            58..=60 => {
                let p = self.path(Some(libc::S_IFDIR));
                self.both("rmdir", format!("rmdir {p}"), |root| {
                    fs::remove_dir(root.join(&p)).map_err(err)
                });
                self.refresh();
            }
            61..=66 => {
                let a = self.path(None);
                let b = if self.rng.random_bool(0.6) {
                    self.path(None)
                } else {
                    self.new_path()
                };
                let flags = match self.rng.random_range(0..6) {
                    0 => libc::RENAME_NOREPLACE,
                    1 => libc::RENAME_EXCHANGE,
                    _ => 0,
                };
                self.both("rename", format!("rename {a} {b} flags {flags}"), |root| {
                    sys_rename(&root.join(&a), &root.join(&b), flags)
                });
                self.refresh();
            }
            67..=70 => {
                let p = self.path(None);
                self.both("unlink", format!("unlink {p}"), |root| {
                    fs::remove_file(root.join(&p)).map_err(err)
                });
                self.refresh();
            }
            71..=73 => {
                let a = self.path(None);
                let b = self.new_path();
                self.both("link", format!("link {a} {b}"), |root| {
                    fs::hard_link(root.join(&a), root.join(&b)).map_err(err)
                });
                self.refresh();
            }
            74..=76 => {
                let p = self.new_path();
                let target = match self.rng.random_range(0..4) {
                    // "..": only below the root, so that no path leads out of the trees.
                    0 if p.contains('/') => "../a".to_string(),
                    1 => "nowhere/x".to_string(),
                    _ => NAMES[self.rng.random_range(0..NAMES.len())].to_string(),
                };
                self.both("symlink", format!("symlink {p} -> {target}"), |root| {
                    std::os::unix::fs::symlink(&target, root.join(&p)).map_err(err)
                });
                self.refresh();
            }
            77 => {
                let p = self.path(Some(libc::S_IFLNK));
                self.both("readlink", format!("readlink {p}"), |root| {
                    fs::read_link(root.join(&p)).map_err(err)
                });
            }
            78..=80 => {
                let p = self.path(None);
                let mode = [0o644, 0o600, 0o755, 0o4755, 0o2755, 0o1777, 0o000, 0o444]
                    [self.rng.random_range(0..8)];
                self.both("chmod", format!("chmod {p} {mode:#o}"), |root| {
                    let c = cpath(&root.join(&p));
                    // SAFETY: a valid C string.
                    check(unsafe { libc::chmod(c.as_ptr(), mode) })
                });
            }
            81..=82 => {
                let p = self.path(None);
                let at = (
                    self.rng.random_range(0..2_000_000_000),
                    self.rng.random_range(0..1_000_000_000),
                );
                let mt = (
                    self.rng.random_range(0..2_000_000_000),
                    self.rng.random_range(0..1_000_000_000),
                );
                let follow = self.rng.random_bool(0.5);
                self.both(
                    "utimens",
                    format!("utimens {p} {at:?} {mt:?} follow {follow}"),
                    |root| {
                        let path = root.join(&p);
                        sys_utimens(&path, at, mt, follow)?;
                        let m = if follow {
                            fs::metadata(&path)
                        } else {
                            fs::symlink_metadata(&path)
                        }
                        .map_err(err)?;
                        Ok((m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec()))
                    },
                );
            }
            83..=86 => {
                let p = self.path(None);
                let name = XATTRS[self.rng.random_range(0..XATTRS.len())];
                let len = self.rng.random_range(0..100);
                let mut value = vec![0u8; len];
                self.rng.fill_bytes(&mut value);
                let flags =
                    [0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE][self.rng.random_range(0..4)];
                self.both(
                    "setxattr",
                    format!("setxattr {p} {name} len {len} flags {flags}"),
                    |root| sys_setxattr(&root.join(&p), name, &value, flags),
                );
            }
            87..=88 => {
                let p = self.path(None);
                let name = XATTRS[self.rng.random_range(0..XATTRS.len())];
                self.both("removexattr", format!("removexattr {p} {name}"), |root| {
                    sys_removexattr(&root.join(&p), name)
                });
            }
            89..=90 => {
                let p = self.path(None);
                let name = XATTRS[self.rng.random_range(0..XATTRS.len())];
                self.both("getxattr", format!("getxattr {p} {name}"), |root| {
                    sys_getxattr(&root.join(&p), name, true)
                });
                self.both("listxattr", format!("listxattr {p}"), |root| {
                    sys_listxattr(&root.join(&p), true)
                });
            }
            91..=94 => {
                let p = self.path(None);
                if self.rng.random_bool(0.5) {
                    self.both("lstat", format!("lstat {p}"), |root| {
                        fs::symlink_metadata(root.join(&p))
                            .map(|m| stat_of(&m))
                            .map_err(err)
                    });
                } else {
                    self.both("stat", format!("stat {p}"), |root| {
                        fs::metadata(root.join(&p))
                            .map(|m| stat_of(&m))
                            .map_err(err)
                    });
                }
            }
            95..=96 => {
                let h = self.pick_handle().unwrap();
                self.both_h("fstat", h, "fstat".into(), |f| {
                    f.metadata().map(|m| stat_of(&m)).map_err(err)
                });
            }
            97 => {
                let h = self.pick_handle().unwrap();
                let to = if self.rng.random_bool(0.5) {
                    SeekFrom::End(0)
                } else {
                    SeekFrom::Start(self.offset())
                };
                self.both_h("seek", h, format!("seek {to:?}"), |mut f| {
                    f.seek(to).map_err(err)
                });
            }
            _ => {
                // A whole file written and closed, as cp does.
                let p = self.new_path();
                let data = self.bytes();
                let (len, hash) = (data.len(), blake3::hash(&data));
                self.both(
                    "writefile",
                    format!("write file {p} len {len} {}", &hash.to_hex()[..8]),
                    |root| {
                        let mut f = sys_open(
                            &root.join(&p),
                            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                            0o644,
                        )?;
                        f.write_all(&data).map_err(err)?;
                        drop(f);
                        Ok(())
                    },
                );
                self.refresh();
            }
        }
    }

    /// Compares the whole trees.
    fn compare_trees(&mut self, why: &str) {
        let mnt = self.mnt().to_path_buf();
        if let Some(d) = tree_diff(&mnt, &self.refd) {
            self.fail(&format!("{why}: {d}"));
        }
        let rt_len = self.tree.len();
        // Open handles see the same content too.
        for h in 0..self.handles.len() {
            if self.handles[h].flags & libc::O_ACCMODE == libc::O_WRONLY {
                continue;
            }
            self.both_h("handle-content", h, "read whole handle".into(), |f| {
                let len = f.metadata().map_err(err)?.len() as usize;
                read_at_full(f, 0, len + 1).map(|b| (b.len(), blake3::hash(&b)))
            });
        }
        self.note(format!("trees equal ({why}, {rt_len} entries)"));
    }

    fn remount(&mut self) {
        let kill = self.rng.random_bool(0.5);
        if kill {
            // Close-to-open: every handle is closed or fsynced before the kill, so all of the
            // model must survive it.
            let mut h = 0;
            while h < self.handles.len() {
                if self.rng.random_bool(0.5) {
                    self.close_handle(h);
                } else {
                    self.both_h("fsync", h, "fsync before kill".into(), |f| {
                        f.sync_all().map_err(err)
                    });
                    h += 1;
                }
            }
            self.note("SIGKILL".into());
            self.mount.take().unwrap().kill();
            self.kills += 1;
            // Handles of the dead mount are gone; close the reference side too.
            for hd in self.handles.drain(..) {
                drop(hd.m);
                drop(hd.r);
            }
            self.mount = Some(Mount::start(&self.data, &self.mnt_dir, &[]));
        } else {
            while !self.handles.is_empty() {
                self.close_handle(0);
            }
            self.note("unmount".into());
            self.mount.take().unwrap().unmount();
            self.remounts += 1;
            let pending = common::pending_uploads(&self.data);
            if pending > 0 {
                eprintln!(
                    "seed {}: {pending} uploads pending after unmount",
                    self.seed
                );
            } else if self.rng.random_bool(0.7) {
                // Everything is on the network: read it back from there.
                fs::remove_dir_all(self.data.join("drive/cache")).unwrap();
                self.cache_drops += 1;
                self.note("cache deleted".into());
            }
            self.mount = Some(Mount::start(&self.data, &self.mnt_dir, &[]));
        }
        self.refresh();
        self.compare_trees(if kill {
            "after SIGKILL"
        } else {
            "after remount"
        });
    }
}

/// How the tree under `mnt` differs from the one under `refd`, if it does.
fn tree_diff(mnt: &Path, refd: &Path) -> Option<String> {
    let mt = walk(mnt);
    let rt = walk(refd);
    if mt != rt {
        let only_m: Vec<_> = mt.iter().filter(|e| !rt.contains(e)).collect();
        let only_r: Vec<_> = rt.iter().filter(|e| !mt.contains(e)).collect();
        return Some(format!(
            "trees differ\n  only on the mount: {only_m:?}\n  only in the reference: {only_r:?}"
        ));
    }
    let mut m_inos: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut r_inos: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (p, kind) in &rt {
        let a = entry(&mnt.join(p), *kind);
        let b = entry(&refd.join(p), *kind);
        if a != b {
            return Some(format!(
                "{p} differs\n  mount:     {a:?}\n  reference: {b:?}"
            ));
        }
        if *kind != libc::S_IFDIR {
            m_inos
                .entry(fs::symlink_metadata(mnt.join(p)).unwrap().ino())
                .or_default()
                .push(p.clone());
            r_inos
                .entry(fs::symlink_metadata(refd.join(p)).unwrap().ino())
                .or_default()
                .push(p.clone());
        }
    }
    let mut a: Vec<Vec<String>> = m_inos.into_values().collect();
    let mut b: Vec<Vec<String>> = r_inos.into_values().collect();
    a.sort();
    b.sort();
    if a != b {
        return Some(format!(
            "hard links differ\n  mount:     {a:?}\n  reference: {b:?}"
        ));
    }
    None
}

fn entry(p: &Path, kind: u32) -> Entry {
    let m = fs::symlink_metadata(p).unwrap();
    let content = (kind == libc::S_IFREG).then(|| {
        let mut f = File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        let mut b = Vec::new();
        f.read_to_end(&mut b)
            .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        (b.len(), blake3::hash(&b))
    });
    let target = (kind == libc::S_IFLNK).then(|| fs::read_link(p).unwrap());
    let xattrs = sys_listxattr(p, false)
        .unwrap_or_default()
        .into_iter()
        .map(|n| {
            let v = sys_getxattr(p, &n, false).unwrap_or_default();
            (n, v)
        })
        .collect();
    Entry {
        stat: stat_of(&m),
        content,
        target,
        xattrs,
    }
}

fn short<T: Debug>(v: &Res<T>) -> String {
    let s = format!("{v:?}");
    if s.len() > 300 {
        format!("{}…", &s[..300])
    } else {
        s
    }
}

fn run_seed(seed: u64, ops: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let base = if std::env::var_os("WALRUSFS_MODEL_KEEP").is_some() {
        // Kept for a look after a failure.
        let p = tmp.keep();
        eprintln!("seed {seed}: working in {}", p.display());
        p
    } else {
        tmp.path().to_path_buf()
    };
    let data = base.join("data");
    // Each root in a directory of its own: a symlink to "../a" moved to the root leads out of
    // its tree, and must not reach the same place from both.
    let mnt_dir = base.join("m/mnt");
    let refd = base.join("r/ref");
    fs::create_dir_all(&refd).unwrap();
    // The reference root gets the mount root's mode, so that stats of "." agree.
    fs::set_permissions(&refd, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mount = Mount::start(&data, &mnt_dir, &[]);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next_remount = rng.random_range(100..700);
    let mut w = World {
        seed,
        rng,
        data,
        mnt_dir,
        refd,
        mount: Some(mount),
        handles: Vec::new(),
        tree: Vec::new(),
        log: VecDeque::new(),
        step: 0,
        stats: BTreeMap::new(),
        remounts: 0,
        kills: 0,
        cache_drops: 0,
    };
    let start = Instant::now();
    let check_every = env_usize("WALRUSFS_MODEL_CHECK_EVERY", 250).max(1);
    for step in 0..ops {
        w.step = step;
        w.op();
        if step % check_every == check_every - 1 {
            w.compare_trees("periodic");
        }
        if step == next_remount {
            w.remount();
            next_remount = step + w.rng.random_range(300..1500);
        }
    }
    while !w.handles.is_empty() {
        w.close_handle(0);
    }
    w.compare_trees("end");
    // A last clean unmount waits for the uploads; then everything from the network.
    w.mount.take().unwrap().unmount();
    assert_eq!(
        common::pending_uploads(&w.data),
        0,
        "uploads left after unmount"
    );
    fs::remove_dir_all(w.data.join("drive/cache")).unwrap();
    w.mount = Some(Mount::start(&w.data, &w.mnt_dir, &[]));
    w.refresh();
    w.compare_trees("final, from the network");
    w.mount.take().unwrap().unmount();
    let ok: u64 = w.stats.values().map(|s| s.0).sum();
    let failed: u64 = w.stats.values().map(|s| s.1).sum();
    eprintln!(
        "seed {seed}: {ops} operations ({ok} succeeded, {failed} failed alike) in {:.1} s; \
         {} remounts, {} kills, {} cache drops; final tree {} entries",
        start.elapsed().as_secs_f64(),
        w.remounts,
        w.kills,
        w.cache_drops,
        w.tree.len()
    );
    eprintln!("  per operation (ok, error): {:?}", w.stats);
}

#[test]
fn mount_matches_a_local_directory() {
    let ops = env_usize("WALRUSFS_MODEL_OPS", 2000);
    let seeds: Vec<u64> = match std::env::var("WALRUSFS_MODEL_SEED") {
        Ok(s) => vec![s.parse().expect("WALRUSFS_MODEL_SEED is a number")],
        Err(_) => (1..=env_usize("WALRUSFS_MODEL_SEEDS", 2) as u64).collect(),
    };
    for seed in seeds {
        run_seed(seed, ops);
    }
}
