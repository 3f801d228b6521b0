//! A test-only FUSE filesystem that loses what was not synced, in the spirit of LazyFS
//! (github.com/dsrhaslab/lazyfs): a passthrough over a real directory (`STATE/live`) that
//! also keeps a *durable* image (`STATE/disk`) holding only what a completed fsync covered.
//! Every start rebuilds `live` from the durable image, so stopping the filesystem in any way
//! (unmount, or the process dying) and starting it again is a simulated power loss.
//!
//! The model (deliberately stricter than ext4, whose journal makes renames atomic and commits
//! every earlier metadata change with any later fsync):
//! - a file's content is durable as of its last `fsync`/`fdatasync` (through any descriptor);
//!   a file never synced comes back empty, whatever was written to it;
//! - a directory's entries are durable as of its last `fsync` (the names it then held, each
//!   pointing at the inode it then named); a directory never synced comes back empty. So a
//!   create, unlink or rename survives only if the directory it changed was synced after it;
//!   a rename between two directories of which only one was synced leaves the file in both
//!   or in neither;
//! - only regular files and directories are kept (sockets, FIFOs and symlinks are not);
//!   hard links are refused;
//! - sizes and times follow content; ownership and modes of rebuilt files are the defaults.
//!
//! Limits: writes are not torn within a file (a file is wholly at its last synced state),
//! there is no reordering of un-synced writes that *did* reach a real disk (a real disk may
//! persist some un-synced writes; here none survive), and `syncfs`/`sync` are not modelled
//! (the kernel sends them to FUSE filesystems as writes only, so they count for nothing).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, Write as _};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::fs::{
    DirBuilderExt as _, FileExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Dir,
    File,
    Other,
}

impl Kind {
    fn of(t: fs::FileType) -> Kind {
        if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        }
    }

    fn letter(self) -> char {
        match self {
            Kind::Dir => 'd',
            Kind::File => 'f',
            Kind::Other => 'o',
        }
    }
}

struct Node {
    /// Path relative to `live`; `None` once unlinked.
    path: Option<PathBuf>,
}

struct Open {
    id: u64,
    file: Arc<File>,
}

struct State {
    live: PathBuf,
    disk: PathBuf,
    nodes: HashMap<u64, Node>,
    by_path: HashMap<PathBuf, u64>,
    next_id: u64,
    opens: HashMap<u64, Open>,
    next_fh: u64,
    journal: File,
    next_obj: u64,
    /// Counts, for reports.
    fsyncs: u64,
    dir_fsyncs: u64,
}

/// The filesystem. Mount it with [`LazyFs::mount`].
pub struct LazyFs {
    st: Mutex<State>,
}

/// A mounted [`LazyFs`]; dropping it (or [`Mounted::crash`]) unmounts it, after which only
/// the durable image is left.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    pub mnt: PathBuf,
    pub state: PathBuf,
}

impl Mounted {
    /// Simulated power loss: unmounts (the kernel must hold nothing open on it: stop its users
    /// first) and forgets everything not synced. Mount again to see what survived.
    pub fn crash(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(s) = self.session.take()
            && s.umount_and_join().is_err()
        {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .status();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn file_type(t: fs::FileType) -> FileType {
    use std::os::unix::fs::FileTypeExt as _;
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else if t.is_socket() {
        FileType::Socket
    } else if t.is_fifo() {
        FileType::NamedPipe
    } else if t.is_char_device() {
        FileType::CharDevice
    } else if t.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    }
}

fn time(s: i64, ns: i64) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(ns as u64)
    }
}

fn attr(id: u64, m: &fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(id),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind: file_type(m.file_type()),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// The durable image as the journal describes it.
#[derive(Default)]
struct Image {
    dirs: HashMap<u64, Vec<(OsString, u64, Kind)>>,
    files: HashMap<u64, String>,
}

fn read_image(disk: &Path) -> std::io::Result<Option<Image>> {
    let f = match File::open(disk.join("journal")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut img = Image::default();
    let mut lines = std::io::BufReader::new(f).lines();
    while let Some(line) = lines.next() {
        let line = line?;
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["F", id, obj] => {
                img.files
                    .insert(id.parse().unwrap_or(0), (*obj).to_string());
            }
            ["D", id, n] => {
                let n: usize = n.parse().unwrap_or(0);
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let Some(l) = lines.next() else { break };
                    let l = l?;
                    let p: Vec<&str> = l.split(' ').collect();
                    if let [k, cid, name] = p.as_slice() {
                        let kind = match *k {
                            "d" => Kind::Dir,
                            "f" => Kind::File,
                            _ => Kind::Other,
                        };
                        entries.push((
                            OsString::from_vec(unhex(name)),
                            cid.parse().unwrap_or(0),
                            kind,
                        ));
                    }
                }
                img.dirs.insert(id.parse().unwrap_or(0), entries);
            }
            // A torn last record (the process died mid-append) ends the journal.
            _ => break,
        }
    }
    Ok(Some(img))
}

fn build(img: &Image, disk: &Path, id: u64, at: &Path, depth: usize) -> std::io::Result<()> {
    if depth > 64 {
        return Ok(());
    }
    for (name, cid, kind) in img.dirs.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
        let p = at.join(name);
        match kind {
            Kind::Dir => {
                fs::create_dir_all(&p)?;
                build(img, disk, *cid, &p, depth + 1)?;
            }
            Kind::File => match img.files.get(cid) {
                Some(obj) => {
                    fs::copy(disk.join("obj").join(obj), &p)?;
                }
                None => {
                    File::create(&p)?;
                }
            },
            Kind::Other => {}
        }
    }
    Ok(())
}

impl State {
    fn path(&self, id: u64) -> Result<PathBuf, Errno> {
        match self.nodes.get(&id) {
            Some(Node { path: Some(p) }) => Ok(self.live.join(p)),
            _ => Err(Errno::from_i32(libc::ENOENT)),
        }
    }

    fn rel(&self, id: u64) -> Result<PathBuf, Errno> {
        match self.nodes.get(&id) {
            Some(Node { path: Some(p) }) => Ok(p.clone()),
            _ => Err(Errno::from_i32(libc::ENOENT)),
        }
    }

    fn id_for(&mut self, rel: &Path) -> u64 {
        if let Some(id) = self.by_path.get(rel) {
            return *id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.nodes.insert(
            id,
            Node {
                path: Some(rel.to_path_buf()),
            },
        );
        self.by_path.insert(rel.to_path_buf(), id);
        id
    }

    fn forget_path(&mut self, rel: &Path) {
        if let Some(id) = self.by_path.remove(rel)
            && let Some(n) = self.nodes.get_mut(&id)
        {
            n.path = None;
        }
    }

    /// Paths at or below `from` move to `to`.
    fn move_paths(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(PathBuf, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        for (p, _) in &moved {
            self.by_path.remove(p);
        }
        for (p, id) in moved {
            let rest = p
                .strip_prefix(from)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let np = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            if let Some(n) = self.nodes.get_mut(&id) {
                n.path = Some(np.clone());
            }
            self.by_path.insert(np, id);
        }
    }

    fn log(&mut self, text: &str) -> std::io::Result<()> {
        self.journal.write_all(text.as_bytes())
    }

    fn snapshot_file(&mut self, id: u64, f: &File) -> std::io::Result<()> {
        let obj = format!("{}", self.next_obj);
        self.next_obj += 1;
        let dst = self.disk.join("obj").join(&obj);
        let mut out = File::create(&dst)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        loop {
            let n = f.read_at(&mut buf, off)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            off += n as u64;
        }
        self.log(&format!("F {id} {obj}\n"))
    }

    fn snapshot_dir(&mut self, id: u64) -> std::io::Result<()> {
        let rel = self
            .rel(id)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::ENOENT))?;
        let mut entries = Vec::new();
        for e in fs::read_dir(self.live.join(&rel))? {
            let e = e?;
            let kind = Kind::of(e.file_type()?);
            let cid = self.id_for(&rel.join(e.file_name()));
            entries.push((e.file_name(), cid, kind));
        }
        let mut text = format!("D {id} {}\n", entries.len());
        for (name, cid, kind) in entries {
            text.push_str(&format!(
                "{} {cid} {}\n",
                kind.letter(),
                hex(name.as_bytes())
            ));
        }
        self.log(&text)
    }

    /// Makes everything in `live` durable (after a rebuild): a fresh journal.
    fn snapshot_all(&mut self, rel: PathBuf) -> std::io::Result<()> {
        let id = self.id_for(&rel);
        let mut subdirs = Vec::new();
        for e in fs::read_dir(self.live.join(&rel))? {
            let e = e?;
            let child = rel.join(e.file_name());
            match Kind::of(e.file_type()?) {
                Kind::Dir => subdirs.push(child),
                Kind::File => {
                    let cid = self.id_for(&child);
                    let f = File::open(self.live.join(&child))?;
                    self.snapshot_file(cid, &f)?;
                }
                Kind::Other => {}
            }
        }
        for d in subdirs {
            self.snapshot_all(d)?;
        }
        self.snapshot_dir(id)
    }

    fn open_file(&self, fh: u64) -> Result<(u64, Arc<File>), Errno> {
        self.opens
            .get(&fh)
            .map(|o| (o.id, o.file.clone()))
            .ok_or(Errno::from_i32(libc::EBADF))
    }

    fn stat(&self, id: u64, fh: Option<u64>) -> Result<fs::Metadata, Errno> {
        if let Some(fh) = fh
            && let Some(o) = self.opens.get(&fh)
        {
            return o.file.metadata().map_err(|e| errno(&e));
        }
        match self.path(id) {
            Ok(p) => fs::symlink_metadata(p).map_err(|e| errno(&e)),
            Err(e) => self
                .opens
                .values()
                .find(|o| o.id == id)
                .map(|o| o.file.metadata().map_err(|e| errno(&e)))
                .unwrap_or(Err(e)),
        }
    }
}

impl LazyFs {
    /// Starts over `state` (rebuilding `state/live` from the durable image `state/disk`, if
    /// any: whatever `live` held is discarded) and mounts on `mnt`.
    pub fn mount(state: &Path, mnt: &Path) -> std::io::Result<Mounted> {
        let live = state.join("live");
        let disk = state.join("disk");
        let image = read_image(&disk)?;
        if let Some(img) = &image {
            if live.exists() {
                fs::remove_dir_all(&live)?;
            }
            fs::create_dir_all(&live)?;
            build(img, &disk, ROOT, &live, 0)?;
        }
        fs::create_dir_all(&live)?;
        // A fresh image of what is now there: everything rebuilt is durable by definition.
        let fresh = state.join("disk.new");
        if fresh.exists() {
            fs::remove_dir_all(&fresh)?;
        }
        fs::create_dir_all(fresh.join("obj"))?;
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(fresh.join("journal"))?;
        let mut st = State {
            live: live.clone(),
            disk: fresh.clone(),
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next_id: ROOT,
            opens: HashMap::new(),
            next_fh: 1,
            journal,
            next_obj: 0,
            fsyncs: 0,
            dir_fsyncs: 0,
        };
        st.snapshot_all(PathBuf::new())?;
        if disk.exists() {
            fs::remove_dir_all(&disk)?;
        }
        fs::rename(&fresh, &disk)?;
        st.disk = disk;
        let fs_ = LazyFs { st: Mutex::new(st) };
        fs::create_dir_all(mnt)?;
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("lazyfs".into()),
            fuser::MountOption::RW,
        ];
        config.n_threads = Some(4);
        config.clone_fd = true;
        let session = fuser::Session::new(fs_, mnt, &config)?.spawn()?;
        Ok(Mounted {
            session: Some(session),
            mnt: mnt.to_path_buf(),
            state: state.to_path_buf(),
        })
    }

    fn entry(&self, parent: u64, name: &OsStr) -> Result<(u64, fs::Metadata), Errno> {
        let mut st = lock(&self.st);
        let rel = st.rel(parent)?.join(name);
        let m = fs::symlink_metadata(st.live.join(&rel)).map_err(|e| errno(&e))?;
        let id = st.id_for(&rel);
        Ok((id, m))
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.entry(parent.0, name) {
            Ok((id, m)) => reply.entry(&TTL, &attr(id, &m), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = lock(&self.st);
        match st.stat(ino.0, fh.map(|f| f.0)) {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let st = lock(&self.st);
        let r = (|| -> Result<fs::Metadata, Errno> {
            let id = ino.0;
            let open = fh.and_then(|f| st.opens.get(&f.0)).map(|o| o.file.clone());
            let path = st.path(id).ok();
            if let Some(size) = size {
                match (&open, &path) {
                    (Some(f), _) => f.set_len(size).map_err(|e| errno(&e))?,
                    (None, Some(p)) => OpenOptions::new()
                        .write(true)
                        .open(p)
                        .and_then(|f| f.set_len(size))
                        .map_err(|e| errno(&e))?,
                    (None, None) => return Err(Errno::from_i32(libc::ENOENT)),
                }
            }
            if let Some(p) = &path {
                if let Some(mode) = mode {
                    fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o7777))
                        .map_err(|e| errno(&e))?;
                }
                if uid.is_some() || gid.is_some() {
                    std::os::unix::fs::lchown(p, uid, gid).map_err(|e| errno(&e))?;
                }
                if atime.is_some() || mtime.is_some() {
                    let f = File::options()
                        .write(true)
                        .open(p)
                        .or_else(|_| File::open(p));
                    if let Ok(f) = f {
                        let mut times = fs::FileTimes::new();
                        let now = SystemTime::now();
                        if let Some(t) = atime {
                            times = times.set_accessed(match t {
                                TimeOrNow::Now => now,
                                TimeOrNow::SpecificTime(t) => t,
                            });
                        }
                        if let Some(t) = mtime {
                            times = times.set_modified(match t {
                                TimeOrNow::Now => now,
                                TimeOrNow::SpecificTime(t) => t,
                            });
                        }
                        let _ = f.set_times(times);
                    }
                }
            }
            st.stat(id, fh.map(|f| f.0))
        })();
        match r {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = (|| -> Result<(u64, fs::Metadata), Errno> {
            let mut st = lock(&self.st);
            let rel = st.rel(parent.0)?.join(name);
            let p = st.live.join(&rel);
            let c = std::ffi::CString::new(p.as_os_str().as_bytes())
                .map_err(|_| Errno::from_i32(libc::EINVAL))?;
            // SAFETY: a valid C string; mknod has no memory effects.
            if unsafe { libc::mknod(c.as_ptr(), mode & !umask, libc::dev_t::from(rdev)) } != 0 {
                return Err(errno(&std::io::Error::last_os_error()));
            }
            st.forget_path(&rel);
            let id = st.id_for(&rel);
            let m = fs::symlink_metadata(&p).map_err(|e| errno(&e))?;
            Ok((id, m))
        })();
        match r {
            Ok((id, m)) => reply.entry(&TTL, &attr(id, &m), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = (|| -> Result<(u64, fs::Metadata), Errno> {
            let mut st = lock(&self.st);
            let rel = st.rel(parent.0)?.join(name);
            let p = st.live.join(&rel);
            fs::DirBuilder::new()
                .mode(mode & !umask)
                .create(&p)
                .map_err(|e| errno(&e))?;
            st.forget_path(&rel);
            let id = st.id_for(&rel);
            let m = fs::symlink_metadata(&p).map_err(|e| errno(&e))?;
            Ok((id, m))
        })();
        match r {
            Ok((id, m)) => reply.entry(&TTL, &attr(id, &m), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = lock(&self.st);
        let r = st.rel(parent.0).and_then(|r| {
            let rel = r.join(name);
            fs::remove_file(st.live.join(&rel)).map_err(|e| errno(&e))?;
            st.forget_path(&rel);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = lock(&self.st);
        let r = st.rel(parent.0).and_then(|r| {
            let rel = r.join(name);
            fs::remove_dir(st.live.join(&rel)).map_err(|e| errno(&e))?;
            st.forget_path(&rel);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.st);
        let r = (|| -> Result<(), Errno> {
            let from = st.rel(parent.0)?.join(name);
            let to = st.rel(newparent.0)?.join(newname);
            let (a, b) = (st.live.join(&from), st.live.join(&to));
            let ca = std::ffi::CString::new(a.as_os_str().as_bytes())
                .map_err(|_| Errno::from_i32(libc::EINVAL))?;
            let cb = std::ffi::CString::new(b.as_os_str().as_bytes())
                .map_err(|_| Errno::from_i32(libc::EINVAL))?;
            // SAFETY: valid C strings; renameat2 has no memory effects.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    ca.as_ptr(),
                    libc::AT_FDCWD,
                    cb.as_ptr(),
                    flags.bits(),
                )
            };
            if rc != 0 {
                return Err(errno(&std::io::Error::last_os_error()));
            }
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                let tmp = PathBuf::from(format!("\0exchange{}", st.next_id));
                st.move_paths(&from, &tmp);
                st.move_paths(&to, &from);
                st.move_paths(&tmp, &to);
            } else {
                st.forget_path(&to);
                let below: Vec<PathBuf> = st
                    .by_path
                    .keys()
                    .filter(|p| p.starts_with(&to))
                    .cloned()
                    .collect();
                for p in below {
                    st.forget_path(&p);
                }
                st.move_paths(&from, &to);
            }
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EPERM));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = lock(&self.st);
        let r = st.path(ino.0).and_then(|p| {
            let acc = flags.0 & libc::O_ACCMODE;
            let f = OpenOptions::new()
                .read(acc != libc::O_WRONLY)
                .write(acc != libc::O_RDONLY)
                .truncate(flags.0 & libc::O_TRUNC != 0 && acc != libc::O_RDONLY)
                .open(&p)
                .map_err(|e| errno(&e))?;
            let fh = st.next_fh;
            st.next_fh += 1;
            st.opens.insert(
                fh,
                Open {
                    id: ino.0,
                    file: Arc::new(f),
                },
            );
            Ok(fh)
        });
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| -> Result<(u64, u64, fs::Metadata), Errno> {
            let mut st = lock(&self.st);
            let rel = st.rel(parent.0)?.join(name);
            let p = st.live.join(&rel);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(flags & libc::O_TRUNC != 0)
                .custom_flags(flags & libc::O_EXCL)
                .mode(mode & !umask)
                .open(&p)
                .map_err(|e| errno(&e))?;
            let m = f.metadata().map_err(|e| errno(&e))?;
            let id = st.id_for(&rel);
            let fh = st.next_fh;
            st.next_fh += 1;
            st.opens.insert(
                fh,
                Open {
                    id,
                    file: Arc::new(f),
                },
            );
            Ok((id, fh, m))
        })();
        match r {
            Ok((id, fh, m)) => reply.created(
                &TTL,
                &attr(id, &m),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let f = lock(&self.st).open_file(fh.0);
        match f {
            Ok((_, f)) => {
                let mut buf = vec![0u8; size as usize];
                let mut done = 0;
                while done < buf.len() {
                    match f.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) => return reply.error(errno(&e)),
                    }
                }
                reply.data(&buf[..done]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let f = lock(&self.st).open_file(fh.0);
        match f.and_then(|(_, f)| f.write_all_at(data, offset).map_err(|e| errno(&e))) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.st).opens.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.st);
        let _ = ino;
        let r = st.open_file(fh.0).and_then(|(id, f)| {
            st.fsyncs += 1;
            st.snapshot_file(id, &f).map_err(|e| errno(&e))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let st = lock(&self.st);
        match st.path(ino.0) {
            Ok(p) if p.is_dir() => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut st = lock(&self.st);
        let rel = match st.rel(ino.0) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let mut entries: BTreeMap<OsString, (u64, FileType)> = BTreeMap::new();
        match fs::read_dir(st.live.join(&rel)) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let Ok(t) = e.file_type() else { continue };
                    let id = st.id_for(&rel.join(e.file_name()));
                    entries.insert(e.file_name(), (id, file_type(t)));
                }
            }
            Err(e) => return reply.error(errno(&e)),
        }
        let mut all = vec![
            (OsString::from("."), (ino.0, FileType::Directory)),
            (OsString::from(".."), (ROOT, FileType::Directory)),
        ];
        all.extend(entries);
        for (i, (name, (id, t))) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(id), (i + 1) as u64, t, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.st);
        st.dir_fsyncs += 1;
        match st.snapshot_dir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let live = lock(&self.st).live.clone();
        let c = match std::ffi::CString::new(live.as_os_str().as_bytes()) {
            Ok(c) => c,
            Err(_) => return reply.error(Errno::from_i32(libc::EINVAL)),
        };
        // SAFETY: zeroed statvfs is a valid out-parameter.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid C string and out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return reply.error(errno(&std::io::Error::last_os_error()));
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        match lock(&self.st).path(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
