//! The control socket of a running mount: how `walrusfs status` and `walrusfs flush` talk to
//! the `walrusfs mount` process serving a drive.
//!
//! **Where it is.** The mount listens on `DATA_DIR/drive/control.sock` (mode 0600, so only
//! the mount's user and root may connect; removed when the mount stops). A Unix socket path
//! holds at most 107 bytes: for a data directory too long for that, the socket is
//! `$TMPDIR/walrusfs-control-HASH.sock` instead, `HASH` being the first 16 hex digits of the
//! BLAKE3 of the data directory's canonical path, so both sides compute the same name.
//!
//! **Finding it from a mount point.** A walrusfs mount's source (the first column of
//! `/proc/self/mounts`, what `df` and `findmnt` show) is its canonical data directory, and
//! its type is `fuse.walrusfs` (or plain `fuse` when root mounts without fusermount3: then a
//! source that holds `drive/meta.db` marks it). So a mount point leads to the data directory, and that to the
//! socket, with no registry file that could go stale: the kernel's mount table is the
//! registry. A data directory whose path holds a comma, whitespace or a backslash cannot be
//! passed as a FUSE `fsname`; such mounts show the source `walrusfs`, and `status`/`flush`
//! need `--data-dir`.
//!
//! **Protocol.** Newline-delimited JSON over the stream, one request per line, answered by
//! one or more reply lines ([`Request`], [`Reply`]). `status` answers one `status` line;
//! `flush` answers a `progress` line about every 250 ms and then `flushed` (or `error`).
//! Several requests may follow one another on one connection.

mod server;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use server::{ControlServer, MountContext, NetworkSource};

/// Version of the [`Status`] layout; bumped only when a field changes meaning or goes away
/// (new fields may appear at any time).
pub const STATUS_VERSION: u32 = 1;

/// Default for "blobs nearing their end epoch": blobs ending within this many epochs.
pub const DEFAULT_EXPIRING_WITHIN: u64 = 2;

/// The name under `DATA_DIR/drive/`.
const SOCKET_NAME: &str = "control.sock";

/// Longest request or reply line accepted.
const MAX_LINE: usize = 1 << 20;

/// Errors of the control socket, client and server side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "{mountpoint} is not a walrusfs mount (no walrusfs entry for it in /proc/self/mounts); \
         mount it with `walrusfs mount {mountpoint}`, or pass --data-dir DIR"
    )]
    NotMounted { mountpoint: String },
    #[error(
        "no walrusfs drive is mounted here (no walrusfs entry in /proc/self/mounts); \
         start one with `walrusfs mount MOUNTPOINT`, or pass a MOUNTPOINT or --data-dir DIR"
    )]
    NoMounts,
    #[error(
        "the walrusfs mount on {mountpoint} does not show its data directory (its source is \
         `{source_name}`); pass --data-dir DIR"
    )]
    UnknownDataDir {
        mountpoint: String,
        source_name: String,
    },
    #[error(
        "cannot reach the mount of the drive in {data_dir} through {socket}: {source}; is it \
         mounted (`walrusfs mount`), and are you its user or root?"
    )]
    Connect {
        data_dir: String,
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on the control socket {socket}: {source}")]
    Bind {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {socket}: {source}")]
    Io {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the mount closed the control connection {socket} before answering (did it stop?)")]
    Closed { socket: String },
    #[error("timed out after {secs} s waiting for the mount to answer on {socket}")]
    TimedOut { socket: String, secs: u64 },
    #[error(
        "the mount answered something this walrusfs does not understand ({0}); are the mount and this command the same version?"
    )]
    Protocol(String),
    /// The mount carried the request out and reports a failure.
    #[error("{0}")]
    Remote(String),
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// What the mount is doing.
    Status {
        /// Count blobs whose end epoch is at most the current epoch plus this.
        #[serde(default = "default_expiring_within")]
        expiring_within: u64,
    },
    /// Wait until every pending upload is certified.
    Flush,
}

fn default_expiring_within() -> u64 {
    DEFAULT_EXPIRING_WITHIN
}

/// A reply line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Status {
        status: Box<Status>,
    },
    /// Sent while a flush waits: what is still pending.
    Progress {
        pending: Pending,
    },
    /// The flush is done: nothing is pending.
    Flushed {
        elapsed_secs: f64,
    },
    Error {
        message: String,
    },
}

/// What `walrusfs status --json` prints. Field names are stable (see [`STATUS_VERSION`]);
/// byte counts are bytes, ages seconds, epochs the network's epoch numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: u32,
    pub mountpoint: PathBuf,
    pub data_dir: PathBuf,
    /// PID of the mount process.
    pub pid: u32,
    pub uptime_secs: u64,
    pub read_only: bool,
    pub network: NetworkStatus,
    /// Files and directories in the drive, and the sum of file sizes.
    pub files: FilesStatus,
    pub pending: Pending,
    pub certified: CertifiedStatus,
    /// `None` when the current epoch is unknown (the network did not answer).
    pub expiring: Option<ExpiringStatus>,
    /// Blobs holding file data that are at risk: expired, or within the renewal margin and
    /// not extended yet; with the files using them. Empty when all is well or the epoch is
    /// unknown.
    #[serde(default)]
    pub at_risk: Vec<AtRiskBlob>,
    pub cache: CacheStatus,
    /// Storage nodes run by this mount (embedded network); empty for a network file.
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// `embedded` (nodes run inside the mount) or `file` (a network.toml given with
    /// --network).
    pub kind: String,
    /// The devnet directory (embedded) or the network file.
    pub path: PathBuf,
    /// The blob-store backend (`walrus`).
    pub backend: String,
    /// The ledger's current epoch; `None` when the ledger did not answer (see
    /// `epoch_error`).
    pub epoch: Option<u64>,
    pub epoch_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesStatus {
    /// Inodes: files, directories, symlinks and others.
    pub count: u64,
    pub bytes: u64,
}

/// Uploads waiting: closed (or fsynced) files whose content is not certified yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub files: u64,
    pub bytes: u64,
    /// How long the oldest has waited; `None` when nothing is pending.
    pub oldest_age_secs: Option<f64>,
}

/// Blobs the drive stored (each certified on the network when recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedStatus {
    pub blobs: u64,
    /// Unencoded bytes.
    pub bytes: u64,
    /// What the network stores for them (slivers and metadata over all shards).
    pub encoded_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiringStatus {
    /// Blobs whose end epoch is at most `epoch + within_epochs`.
    pub within_epochs: u64,
    pub blobs: u64,
    pub bytes: u64,
    pub first_end_epoch: Option<u64>,
}

/// One blob at risk (see [`Status::at_risk`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtRiskBlob {
    pub blob_id: String,
    pub end_epoch: u64,
    /// Already expired: the parts of files it held read as EIO.
    pub expired: bool,
    /// Bytes of files it holds.
    pub bytes: u64,
    /// How many files use it.
    pub file_count: u64,
    /// Paths (from the drive's root) of some of them.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheStatus {
    /// Local disk used by `cache/files` and `cache/extents` (allocated blocks).
    pub bytes: u64,
    /// Local disk used by staged files (`staging/`).
    pub staging_bytes: u64,
    /// Reads since the mount started, by where they were served from.
    pub reads: ReadsStatus,
    /// Share of reads served locally (staging, file cache, extent cache); `None` before the
    /// first read.
    pub hit_rate: Option<f64>,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadsStatus {
    pub staging: u64,
    pub file_cache: u64,
    pub extent_cache: u64,
    pub network: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub index: usize,
    pub address: String,
    pub healthy: bool,
    /// `active`, or why the node is not healthy.
    pub detail: String,
}

/// Where the control socket of the drive in `data_dir` (canonical) is; see the module
/// documentation.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    let path = data_dir.join("drive").join(SOCKET_NAME);
    // sun_path is 108 bytes including the terminating NUL.
    if path.as_os_str().len() <= 107 {
        return path;
    }
    let hash = blake3::hash(data_dir.as_os_str().as_encoded_bytes());
    let hex = hash.to_hex();
    std::env::temp_dir().join(format!("walrusfs-control-{}.sock", &hex.as_str()[..16]))
}

/// One FUSE entry of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount's source: its data directory, or `walrusfs` (see the module documentation).
    pub source: String,
    pub mountpoint: PathBuf,
    /// `fuse.walrusfs` when mounted through fusermount3; `fuse` when root mounts directly
    /// (the kernel then records no subtype).
    pub fstype: String,
}

impl MountEntry {
    /// Whether this is a walrusfs mount: of type `fuse.walrusfs`, or of type `fuse` with the
    /// source `walrusfs` or a source that is a drive's data directory.
    pub fn is_walrusfs(&self) -> bool {
        self.fstype == "fuse.walrusfs"
            || (self.fstype == "fuse"
                && (self.source == "walrusfs"
                    || self
                        .data_dir()
                        .is_some_and(|d| d.join("drive").join("meta.db").is_file())))
    }

    /// The data directory, when the source names one.
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.source
            .starts_with('/')
            .then(|| PathBuf::from(&self.source))
    }
}

/// The fsname to mount a drive with, so that its mount entry leads back to `data_dir`:
/// the data directory itself unless it holds characters FUSE option lists cannot carry.
pub fn fsname_for(data_dir: &Path) -> String {
    match data_dir.to_str() {
        Some(s)
            if s.starts_with('/')
                && !s.contains([',', '\\', '"', '\''])
                && !s.chars().any(char::is_whitespace) =>
        {
            s.to_owned()
        }
        _ => "walrusfs".to_owned(),
    }
}

/// Undoes the octal escapes of `/proc/self/mounts` (`\040` for a space, and so on).
fn unescape_mounts_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = b.get(i + 1..i + 4)
            && oct.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = oct.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the FUSE entries (`fuse`, `fuse.walrusfs`) of a mount table in `/proc/self/mounts`
/// form.
pub fn parse_mounts(table: &str) -> Vec<MountEntry> {
    table
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (source, mnt, fstype) = (f.next()?, f.next()?, f.next()?);
            matches!(fstype, "fuse" | "fuse.walrusfs").then(|| MountEntry {
                source: unescape_mounts_field(source),
                mountpoint: PathBuf::from(unescape_mounts_field(mnt)),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// The walrusfs mounts visible to this process.
pub fn walrusfs_mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|t| parse_mounts(&t))
        .unwrap_or_default()
        .into_iter()
        .filter(MountEntry::is_walrusfs)
        .collect()
}

/// A drive to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub mountpoint: Option<PathBuf>,
    pub data_dir: PathBuf,
}

/// An absolute form of `p` without following a dead mount (`canonicalize` fails on one).
fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| std::path::absolute(p).unwrap_or(p.to_path_buf()))
}

/// The drives to talk to: the one in `data_dir` if given, else the one mounted on
/// `mountpoint`, else every walrusfs mount.
pub fn resolve(
    mountpoint: Option<&Path>,
    data_dir: Option<&Path>,
) -> Result<Vec<Target>, ControlError> {
    if let Some(d) = data_dir {
        return Ok(vec![Target {
            mountpoint: mountpoint.map(absolute),
            data_dir: absolute(d),
        }]);
    }
    let mounts = walrusfs_mounts();
    let pick = |m: &MountEntry| -> Result<Target, ControlError> {
        let data_dir = m.data_dir().ok_or_else(|| ControlError::UnknownDataDir {
            mountpoint: m.mountpoint.display().to_string(),
            source_name: m.source.clone(),
        })?;
        Ok(Target {
            mountpoint: Some(m.mountpoint.clone()),
            data_dir,
        })
    };
    match mountpoint {
        Some(mp) => {
            let want = absolute(mp);
            let m = mounts
                .iter()
                .rev()
                .find(|m| m.mountpoint == want)
                .ok_or_else(|| ControlError::NotMounted {
                    mountpoint: want.display().to_string(),
                })?;
            Ok(vec![pick(m)?])
        }
        None => {
            // Mounts that do not show their data directory are left out, unless no other is.
            let found: Vec<_> = mounts.iter().map(pick).collect();
            if found.iter().any(Result::is_ok) {
                return Ok(found.into_iter().flatten().collect());
            }
            match found.into_iter().next() {
                Some(Err(e)) => Err(e),
                _ => Err(ControlError::NoMounts),
            }
        }
    }
}

/// A connection to a mount's control socket (blocking; for the command line).
pub struct ControlClient {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    /// The time limit of the request in progress, for messages.
    waited: Duration,
}

impl ControlClient {
    /// Connects to the mount of the drive in `data_dir`.
    pub fn connect(data_dir: &Path) -> Result<Self, ControlError> {
        let socket = socket_path(data_dir);
        let stream = UnixStream::connect(&socket).map_err(|source| ControlError::Connect {
            data_dir: data_dir.display().to_string(),
            socket: socket.display().to_string(),
            source,
        })?;
        Ok(Self {
            socket,
            reader: BufReader::new(stream),
            waited: Duration::ZERO,
        })
    }

    fn io(&self) -> impl Fn(std::io::Error) -> ControlError + '_ {
        |source| ControlError::Io {
            socket: self.socket.display().to_string(),
            source,
        }
    }

    fn send(&mut self, req: &Request) -> Result<(), ControlError> {
        let mut line =
            serde_json::to_string(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
        line.push('\n');
        let socket = self.socket.display().to_string();
        self.reader
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(|source| ControlError::Io { socket, source })
    }

    /// Reads one reply, waiting at most until `deadline`.
    fn recv(&mut self, deadline: Instant) -> Result<Reply, ControlError> {
        let now = Instant::now();
        let left = deadline
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| self.timed_out())?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(self.io())?;
        let mut line = String::new();
        match (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
        {
            Ok(0) => Err(ControlError::Closed {
                socket: self.socket.display().to_string(),
            }),
            Ok(_) => serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(self.timed_out())
            }
            Err(e) => Err(self.io()(e)),
        }
    }

    fn timed_out(&self) -> ControlError {
        ControlError::TimedOut {
            socket: self.socket.display().to_string(),
            secs: self.waited.as_secs(),
        }
    }

    /// Asks for the mount's status.
    pub fn status(&mut self, expiring_within: u64) -> Result<Status, ControlError> {
        self.send(&Request::Status { expiring_within })?;
        self.waited = Duration::from_secs(30);
        match self.recv(Instant::now() + self.waited)? {
            Reply::Status { status } => Ok(*status),
            Reply::Error { message } => Err(ControlError::Remote(message)),
            other => Err(ControlError::Protocol(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Waits until nothing is pending, calling `progress` with what is left every time the
    /// mount reports it. `timeout` bounds the wait ([`ControlError::TimedOut`]).
    pub fn flush(
        &mut self,
        timeout: Option<Duration>,
        mut progress: impl FnMut(&Pending),
    ) -> Result<Duration, ControlError> {
        self.send(&Request::Flush)?;
        // Progress lines come every 250 ms; a long silence means the mount is stuck.
        let waited = timeout.unwrap_or(Duration::from_secs(100 * 365 * 86_400));
        self.waited = waited;
        let deadline = Instant::now() + waited;
        loop {
            match self.recv(deadline)? {
                Reply::Progress { pending } => progress(&pending),
                Reply::Flushed { elapsed_secs } => {
                    return Ok(Duration::from_secs_f64(elapsed_secs.max(0.0)));
                }
                Reply::Error { message } => return Err(ControlError::Remote(message)),
                other => {
                    return Err(ControlError::Protocol(format!(
                        "unexpected reply {other:?}"
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_entries_and_escapes() {
        let table = "proc /proc proc rw 0 0\n\
            /var/lib/walrusfs/mnt-a /mnt/a fuse.walrusfs rw,nosuid 0 0\n\
            walrusfs /mnt/with\\040space fuse.walrusfs rw 0 0\n\
            sshfs#x /mnt/b fuse.sshfs rw 0 0\n\
            /nonexistent/dir /mnt/c fuse rw 0 0\n";
        let m = parse_mounts(table);
        assert_eq!(m.len(), 3);
        assert!(m[0].is_walrusfs() && m[1].is_walrusfs() && !m[2].is_walrusfs());
        assert_eq!(
            m[0].data_dir(),
            Some(PathBuf::from("/var/lib/walrusfs/mnt-a"))
        );
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/a"));
        assert_eq!(m[1].mountpoint, PathBuf::from("/mnt/with space"));
        assert_eq!(m[1].data_dir(), None);
    }

    #[test]
    fn fsname_only_when_it_survives_option_lists() {
        assert_eq!(fsname_for(Path::new("/var/lib/x")), "/var/lib/x");
        assert_eq!(fsname_for(Path::new("/a,b")), "walrusfs");
        assert_eq!(fsname_for(Path::new("/a b")), "walrusfs");
        assert_eq!(fsname_for(Path::new("rel")), "walrusfs");
    }

    #[test]
    fn long_data_dirs_get_a_short_socket() {
        let short = socket_path(Path::new("/var/lib/walrusfs"));
        assert_eq!(short, PathBuf::from("/var/lib/walrusfs/drive/control.sock"));
        let long = PathBuf::from(format!("/{}", "d".repeat(120)));
        let p = socket_path(&long);
        assert!(p.as_os_str().len() < 108, "{}", p.display());
        assert_eq!(p, socket_path(&long));
    }

    #[test]
    fn requests_round_trip_and_reject_unknown_fields() {
        let r: Request = serde_json::from_str(r#"{"op":"status"}"#).unwrap();
        assert_eq!(
            r,
            Request::Status {
                expiring_within: DEFAULT_EXPIRING_WITHIN
            }
        );
        let r: Request = serde_json::from_str(r#"{"op":"flush"}"#).unwrap();
        assert_eq!(r, Request::Flush);
        assert!(serde_json::from_str::<Request>(r#"{"op":"status","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
    }
}
