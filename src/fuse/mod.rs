//! The FUSE adapter: turns kernel requests into calls on [`Drive`] and its answers into
//! replies. Nothing else lives here.
//!
//! Every request starts in the session thread that read it and, if it has to wait (a read
//! that fetches slivers, an fsync that waits for certification, a contended lock), goes on as
//! a task on the drive's tokio runtime and replies from there, so a session thread never
//! waits on the network. The kernel serializes what POSIX needs serialized (writes to
//! one file, operations on one directory entry), so running requests concurrently is safe.
//!
//! Locks (`fcntl`, `flock`) are left to the kernel: a filesystem that does not implement
//! them gets the kernel's local locking, which is exact for a drive mounted once.

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use crate::drive::{
    Caller, Drive, FsError, Inode, Kind, RenameMode, SetAttr, Time, TimeSet, XattrMode,
};

/// How long the kernel may cache attributes and names. Every change goes through this
/// mount, so the kernel's cache is never stale for long; one second bounds the damage if
/// the data directory is ever changed behind the mount's back.
const TTL: Duration = Duration::from_secs(1);

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// Readahead the mount asks for: asked of the kernel at init (which caps it at the BDI's
/// readahead, 128 KiB by default) and set as the BDI's `read_ahead_kb` after mounting
/// where that file is writable (root) — see [`raise_readahead`].
pub const MAX_READAHEAD: u32 = 4 << 20;

/// Raises the readahead of the FUSE connection mounted on `mountpoint` to
/// [`MAX_READAHEAD`] through `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb` (FUSE mounts get
/// 128 KiB). Returns the value now in effect (KiB), or why it could not be set (not root,
/// no sysfs): then the kernel's default stays.
pub fn raise_readahead(mountpoint: &Path) -> Result<u64, String> {
    // The device number comes from mountinfo: a stat of the mount point from the process
    // that serves it, before its session runs, would wait for itself.
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let want_point = mountpoint.to_string_lossy();
    // Fields: ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...; the last such mount is on top.
    let dev = info
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(4) == Some(&want_point.as_ref()) {
                f.get(2).map(|d| d.to_string())
            } else {
                None
            }
        })
        .ok_or_else(|| format!("{} is not in /proc/self/mountinfo", mountpoint.display()))?;
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    let want = u64::from(MAX_READAHEAD / 1024);
    let now: u64 = std::fs::read_to_string(&path)
        .map_err(|e| format!("{path}: {e}"))?
        .trim()
        .parse()
        .map_err(|_| format!("{path}: not a number"))?;
    if now >= want {
        return Ok(now);
    }
    std::fs::write(&path, want.to_string()).map_err(|e| format!("{path}: {e}"))?;
    Ok(want)
}

/// Told about every request once it is answered: its operation name (`lookup`, `read`, …)
/// and how long it took. The metrics endpoint implements it.
pub trait OpHook: Send + Sync + 'static {
    fn observe(&self, op: &'static str, elapsed: Duration);
}

/// The FUSE filesystem over a drive.
pub struct WalrusFuse {
    drive: Drive,
    rt: Handle,
    hook: Option<std::sync::Arc<dyn OpHook>>,
    writeback_cache: bool,
}

impl WalrusFuse {
    pub fn new(drive: Drive, rt: Handle) -> Self {
        Self {
            drive,
            rt,
            hook: None,
            writeback_cache: false,
        }
    }

    /// Asks the kernel for its writeback cache (`FUSE_WRITEBACK_CACHE`): writes land in the
    /// page cache and reach the drive later, in large requests, at the latest when the file
    /// is closed (the kernel flushes before `flush`) or fsynced (before `fsync`). The kernel
    /// then keeps the file size and times itself and handles `O_APPEND`; it may read pages
    /// through a write-only handle, which the drive allows. Ignored on read-only mounts.
    pub fn with_writeback_cache(mut self, on: bool) -> Self {
        self.writeback_cache = on && !self.drive.config().read_only;
        self
    }

    /// Reports every request to `hook`.
    pub fn with_hook(mut self, hook: std::sync::Arc<dyn OpHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Runs a request: first right here in the session thread, up to its first wait; if it
    /// has to wait (a lock held by another request, the network, the blocking pool), it
    /// continues as a task on the runtime and replies from there. Most metadata requests
    /// and writes to staging never wait, and answering them here saves the hand-off to a
    /// runtime thread, which is most of their cost; a session thread never waits on the
    /// network.
    fn spawn<F>(&self, f: impl FnOnce(Drive) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let mut fut = Box::pin(f(self.drive.clone()));
        let polled = {
            // Tokio timers and the blocking pool need the runtime's context, even here.
            let _rt = self.rt.enter();
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            fut.as_mut().poll(&mut cx)
        };
        let hook = self.hook.clone().map(|h| (h, op_name::<F>()));
        if polled.is_ready() {
            if let Some((hook, op)) = hook {
                hook.observe(op, started.elapsed());
            }
            return;
        }
        // Spawning polls it again at once, with a real waker this time.
        self.rt.spawn(async move {
            fut.await;
            if let Some((hook, op)) = hook {
                hook.observe(op, started.elapsed());
            }
        });
    }
}

/// The `Filesystem` method a request future was made in, from its type name
/// (`<walrusfs::fuse::WalrusFuse as fuser::Filesystem>::read::{{closure}}…`), so that
/// `spawn` needs no name from its callers; `other` if the name has another shape (a unit
/// test checks it has this one).
fn op_name<F>() -> &'static str {
    std::any::type_name::<F>()
        .split("Filesystem>::")
        .nth(1)
        .and_then(|rest| rest.split("::").next())
        .filter(|op| !op.is_empty() && !op.contains(['<', '{']))
        .unwrap_or("other")
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn errno(op: &str, e: &FsError) -> Errno {
    if e.is_routine() {
        debug!(op, error = %e);
    } else {
        warn!(op, error = %e, "operation failed");
    }
    Errno::from_i32(e.errno())
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn attr(i: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(i.ino),
        size: i.size,
        blocks: i.size.div_ceil(512),
        atime: i.atime.to_system(),
        mtime: i.mtime.to_system(),
        ctime: i.ctime.to_system(),
        crtime: i.crtime.to_system(),
        kind: file_type(i.kind),
        perm: (i.perm & 0o7777) as u16,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(time_from_kernel(t)),
    }
}

/// A time the kernel sent, as fuser 0.18 hands it over. For a kernel time `(sec, nsec)` with
/// `sec < 0`, fuser gives `UNIX_EPOCH - (-sec s + nsec ns)` where the time is
/// `sec s + nsec ns` (`-100 s + 0.25 s` arrives as -100.25 s); undo that here. Times at or
/// after the epoch arrive unchanged.
fn time_from_kernel(t: std::time::SystemTime) -> Time {
    match std::time::UNIX_EPOCH.duration_since(t) {
        Ok(before) if !before.is_zero() => Time {
            sec: -i64::try_from(before.as_secs()).unwrap_or(i64::MAX),
            nsec: before.subsec_nanos(),
        },
        _ => Time::from_system(t),
    }
}

fn reply_entry(reply: ReplyEntry, op: &str, r: Result<Inode, FsError>) {
    match r {
        Ok(i) => reply.entry(&TTL, &attr(&i), Generation(0)),
        Err(e) => reply.error(errno(op, &e)),
    }
}

fn reply_empty(reply: ReplyEmpty, op: &str, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, &e)),
    }
}

fn reply_xattr(reply: ReplyXattr, op: &str, size: u32, r: Result<Vec<u8>, FsError>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(op, &e)),
    }
}

impl Filesystem for WalrusFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // ACLs are checked by the kernel against the system.posix_acl_* xattrs we store.
        // No FUSE_ATOMIC_O_TRUNC: with it the kernel forgets a new file's attributes after
        // create(O_TRUNC) and asks for them again at the next stat (every `open(.., "w")`
        // of a new file pays a getattr); without it, truncating an existing file costs a
        // setattr instead of that getattr, and the setattr carries the kernel's clearing of
        // set-ID bits (FUSE_OPEN_KILL_SUIDGID, which fuser does not pass on, is not needed).
        // FUSE_DONT_MASK: the kernel leaves the umask to us (it would apply it before a
        // directory's default ACL could say otherwise).
        let wanted = InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DONT_MASK
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_BIG_WRITES
            // Attributes come with directory listings when the kernel sees them used (`ls
            // -l`, `find -size`): no lookup round trip per entry.
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            // We clear set-user-ID, set-group-ID and capabilities on unprivileged writes
            // and truncations (`Drive::kill_privileges`). In return the kernel marks the
            // superblock SB_NOSEC and stops asking for `security.capability` before every
            // write(2): one round trip fewer per write.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let wanted = if self.writeback_cache {
            wanted | InitFlags::FUSE_WRITEBACK_CACHE
        } else {
            wanted
        };
        let available = config.capabilities() & wanted;
        if let Err(missing) = config.add_capabilities(available) {
            debug!(?missing, "kernel lacks FUSE capabilities");
        }
        if self.writeback_cache {
            if available.contains(InitFlags::FUSE_WRITEBACK_CACHE) {
                info!("kernel writeback cache on");
            } else {
                warn!("the kernel has no FUSE writeback cache; writes go straight to the drive");
            }
        }
        let _ = config.set_max_write(MAX_WRITE);
        // The kernel takes the smaller of this and the mount's BDI readahead (128 KiB by
        // default); the mount raises the latter where it may (`cli/mount.rs`).
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        Ok(())
    }

    fn destroy(&mut self) {}

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.spawn(
            |d| async move { reply_entry(reply, "lookup", d.lookup(parent.0, &name).await) },
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(|d| async move {
            match d.getattr(ino.0).await {
                Ok(i) => reply.attr(&TTL, &attr(&i)),
                Err(e) => reply.error(errno("getattr", &e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(time_from_kernel),
            // Under FUSE_HANDLE_KILLPRIV_V2 the kernel flags these (FATTR_KILL_SUIDGID, which
            // fuser does not pass on) instead of sending the cleared mode: every chown of a
            // non-directory, and truncations by callers without CAP_FSETID, for which a
            // non-root caller stands here.
            kill_privileges: uid.is_some() || gid.is_some() || (size.is_some() && req.uid() != 0),
        };
        self.spawn(|d| async move {
            match d.setattr(ino.0, set).await {
                Ok(i) => reply.attr(&TTL, &attr(&i)),
                Err(e) => reply.error(errno("setattr", &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(|d| async move {
            match d.readlink(ino.0).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno("readlink", &e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (c, name) = (caller(req), name.to_owned());
        self.spawn(|d| async move {
            reply_entry(
                reply,
                "mknod",
                d.mknod(c, parent.0, &name, mode, umask, rdev).await,
            );
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (c, name) = (caller(req), name.to_owned());
        self.spawn(|d| async move {
            reply_entry(
                reply,
                "mkdir",
                d.mkdir(c, parent.0, &name, mode, umask).await,
            );
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn(
            |d| async move { reply_empty(reply, "unlink", d.unlink(parent.0, &name).await) },
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn(|d| async move { reply_empty(reply, "rmdir", d.rmdir(parent.0, &name).await) });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (c, name, target) = (caller(req), link_name.to_owned(), target.to_owned());
        self.spawn(|d| async move {
            reply_entry(
                reply,
                "symlink",
                d.symlink(c, parent.0, &name, &target).await,
            );
        });
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
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            // RENAME_WHITEOUT is for overlay filesystems.
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        };
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.spawn(|d| async move {
            reply_empty(
                reply,
                "rename",
                d.rename(parent.0, &name, newparent.0, &newname, mode).await,
            );
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = newname.to_owned();
        self.spawn(|d| async move {
            reply_entry(reply, "link", d.link(ino.0, newparent.0, &newname).await);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(|d| async move {
            match d.open(ino.0, flags.0).await {
                // Every change goes through this mount, so what the kernel cached for the
                // file is still right at the next open.
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => reply.error(errno("open", &e)),
            }
        });
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
        self.spawn(|d| async move {
            match d.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        self.spawn(|d| async move {
            if kill && let Err(e) = d.kill_privileges(ino.0).await {
                return reply.error(errno("write", &e));
            }
            match d.write(fh.0, offset, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno("write", &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Answered on every close, never `ENOSYS`: a flush that reaches us is the only proof
        // close(2) gets that its writeback was delivered. The kernel drops a writeback it
        // cannot send on an aborted connection (the mount process died) without an error,
        // and with flushes off such a close returned 0 for bytes we never received. The
        // answer costs one round trip; the upload is queued by the release (see
        // `Drive::flush`).
        self.spawn(|d| async move { reply_empty(reply, "flush", d.flush(fh.0).await) });
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
        self.spawn(|d| async move { reply_empty(reply, "release", d.release(fh.0).await) });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|d| async move { reply_empty(reply, "fsync", d.fsync(fh.0).await) });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(|d| async move {
            match d.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno("opendir", &e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.spawn(|d| async move {
            match d.readdir(ino.0, offset, 1024).await {
                Ok(entries) => {
                    for e in entries {
                        let name = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&e.name);
                        if reply.add(INodeNo(e.ino), e.offset, file_type(e.kind), name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno("readdir", &e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.spawn(|d| async move {
            match d.readdir_plus(ino.0, offset, 1024).await {
                Ok(entries) => {
                    for (e, i) in entries {
                        let name = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&e.name);
                        // The kernel takes a lookup reference on each entry but ".." and
                        // "."; the drive keeps no lookup counts, so nothing to record.
                        if reply.add(
                            INodeNo(e.ino),
                            e.offset,
                            name,
                            &TTL,
                            &attr(&i),
                            Generation(0),
                        ) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno("readdirplus", &e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.spawn(|d| async move { reply_empty(reply, "releasedir", d.releasedir(fh.0).await) });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are metadata transactions, committed as they happen; this makes
        // them durable (one WAL sync shared with concurrent callers).
        self.spawn(|d| async move { reply_empty(reply, "fsyncdir", d.sync_metadata().await) });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(|d| async move {
            match d.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
                ),
                Err(e) => reply.error(errno("statfs", &e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match flags {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => {
                reply.error(Errno::from_i32(libc::EINVAL));
                return;
            }
        };
        let (name, value) = (name.to_owned(), value.to_vec());
        self.spawn(|d| async move {
            reply_empty(
                reply,
                "setxattr",
                d.setxattr(ino.0, &name, &value, mode).await,
            );
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // Asked before every write(2): answered here, without a task and a database read,
        // while no file in the drive has file capabilities.
        if self.drive.no_file_capabilities(name) {
            reply.error(Errno::from_i32(libc::ENODATA));
            return;
        }
        let name = name.to_owned();
        self.spawn(|d| async move {
            reply_xattr(reply, "getxattr", size, d.getxattr(ino.0, &name).await);
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn(|d| async move {
            reply_xattr(reply, "listxattr", size, d.listxattr(ino.0).await);
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn(|d| async move {
            reply_empty(reply, "removexattr", d.removexattr(ino.0, &name).await);
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With `default_permissions` the kernel checks access itself; this only runs
        // without it, and then existence is what is left to check.
        self.spawn(|d| async move {
            reply_empty(reply, "access", d.getattr(ino.0).await.map(|_| ()));
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (c, name) = (caller(req), name.to_owned());
        self.spawn(|d| async move {
            match d.create(c, parent.0, &name, mode, umask, flags).await {
                Ok((i, fh)) => reply.created(
                    &TTL,
                    &attr(&i),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE,
                ),
                Err(e) => reply.error(errno("create", &e)),
            }
        });
    }
}

#[cfg(test)]
mod op_name_tests {
    struct Probe;
    trait Filesystem {
        fn lookup(&self) -> &'static str;
    }
    impl Filesystem for Probe {
        fn lookup(&self) -> &'static str {
            fn name<F: std::future::Future>(_: impl FnOnce(u8) -> F) -> &'static str {
                super::op_name::<F>()
            }
            name(|d| async move {
                let _ = d;
            })
        }
    }

    #[test]
    fn op_name_is_the_method_name() {
        assert_eq!(Probe.lookup(), "lookup");
        assert_eq!(super::op_name::<u8>(), "other");
    }
}
