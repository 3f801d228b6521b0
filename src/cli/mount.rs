//! `walrusfs mount` and `walrusfs umount`.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tracing::{debug, info, warn};

use super::config::{
    ByteSize, Config, DEFAULT_EMBEDDED_EPOCHS, DEFAULT_EPOCHS, DEFAULT_MAX_PACK, DEFAULT_PACK_WAIT,
    DEFAULT_UPLOAD_GRACE,
};
use super::notify::notify;
use crate::blobstore::http::is_walrus_http_network_file;
use crate::blobstore::{
    BlobStore, DriveKey, EncryptedStore, FRAMING, WalrusHttpConfig, WalrusHttpStore, WalrusStore,
};
use crate::client::{Client, ClientConfig};
use crate::control::{ControlServer, MountContext, NetworkSource};
use crate::devnet::{DevnetParams, EmbeddedNetwork, NetworkFile};
use crate::drive::{Drive, DriveConfig};
use crate::fuse::WalrusFuse;
use crate::metrics::{Metrics, MetricsServer};
use crate::sui::GrpcSuiReader;

/// Environment variable through which `--daemon` hands the child the pipe it reports
/// readiness on.
const READY_FD_ENV: &str = "WALRUSFS_READY_FD";

/// For tests only: the epoch length, in seconds, of an embedded network created by this
/// mount (read only when the network is first created; the ledger keeps it for good).
/// Lets a test run a drive across many epochs in a minute; not a setting for real use.
const DEVNET_EPOCH_SECS_ENV: &str = "WALRUSFS_DEVNET_EPOCH_SECS";

#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct MountArgs {
    /// Where to mount the drive (an existing, empty directory).
    pub mountpoint: PathBuf,
    /// Read settings from this TOML file (every key is optional; flags given here win)
    /// [default: $XDG_CONFIG_HOME/walrusfs/config.toml, or ~/.config/walrusfs/config.toml,
    /// if it exists]. The README's "Configuration" section lists the keys.
    #[arg(long, value_name = "FILE", env = "WALRUSFS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the drive keeps its metadata, staged writes, cache and (without --network) its
    /// embedded network [default: $XDG_DATA_HOME/walrusfs, or ~/.local/share/walrusfs].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store blobs on the network described by this file (a network.toml as written by
    /// `walrusfs devnet up`) instead of the embedded network run inside the mount.
    #[arg(long, value_name = "FILE")]
    pub network: Option<PathBuf>,
    /// Return once the drive is mounted and keep serving it in the background (logs go to
    /// DATA_DIR/mount.log).
    #[arg(long)]
    pub daemon: bool,
    /// Mount read-only: nothing is written, nothing uploaded.
    #[arg(long)]
    pub read_only: bool,
    /// Make close(2) wait until the file's content is certified on the network, as fsync
    /// does (slower; for tools that never fsync).
    #[arg(long)]
    pub sync_on_close: bool,
    /// Epochs each blob is stored for, 1 to 1000; blobs a file uses are renewed while the
    /// drive is mounted [default: 5; 50 on the embedded network].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub epochs: Option<u32>,
    /// Let other users access the drive (root mounts always allow it, with the kernel
    /// checking permissions).
    #[arg(long)]
    pub allow_other: bool,
    /// On unmount, wait up to this many seconds for pending uploads before stopping (what
    /// is left stays queued and resumes at the next mount) [default: 30].
    #[arg(long, value_name = "SECS")]
    pub upload_grace: Option<u64>,
    /// Largest blob files are packed into, e.g. 64MiB (the network's limit applies too)
    /// [default: 64MiB].
    #[arg(long, value_name = "SIZE")]
    pub max_pack: Option<String>,
    /// Seconds a closed file may wait for others to fill its blob while less than a blob's
    /// worth is pending, 0 to 600 (fsync, flush and unmount never wait) [default: 30].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=600))]
    pub pack_wait: Option<u64>,
    /// Use the kernel's writeback cache on read-write mounts (the default): writes are
    /// gathered in the page cache and reach the drive in large batches, at the latest at
    /// close or fsync. A full local disk is then reported by fsync or close rather than by
    /// write(2).
    #[arg(long, overrides_with = "no_writeback_cache")]
    pub writeback_cache: bool,
    /// Send every write(2) to the drive as it happens, so that a full local disk fails the
    /// write itself (slower, above all for small writes; overrides a config file).
    #[arg(long)]
    pub no_writeback_cache: bool,
    /// On a walrus-http network (Walrus testnet/mainnet through a publisher): store file
    /// contents unencrypted, readable by anyone who learns a blob ID (for datasets meant to
    /// be shared). Without it such drives are encrypted with a key kept in the data
    /// directory; see `walrusfs key export`. Chosen when the drive is created.
    #[arg(long)]
    pub public: bool,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464) at /metrics
    /// [default: no metrics].
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
}

impl MountArgs {
    pub fn new(mountpoint: PathBuf) -> Self {
        Self {
            mountpoint,
            ..Default::default()
        }
    }

    /// The command line that runs this mount in the foreground (`--daemon` left out).
    fn to_argv(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["mount".into(), self.mountpoint.clone().into()];
        let mut opt = |flag: &str, value: Option<OsString>| {
            if let Some(value) = value {
                v.push(flag.into());
                v.push(value);
            }
        };
        opt("--config", self.config.clone().map(Into::into));
        opt("--data-dir", self.data_dir.clone().map(Into::into));
        opt("--network", self.network.clone().map(Into::into));
        opt("--epochs", self.epochs.map(|e| e.to_string().into()));
        opt(
            "--upload-grace",
            self.upload_grace.map(|e| e.to_string().into()),
        );
        opt("--max-pack", self.max_pack.clone().map(Into::into));
        opt("--pack-wait", self.pack_wait.map(|e| e.to_string().into()));
        opt("--metrics-addr", self.metrics_addr.clone().map(Into::into));
        for (on, flag) in [
            (self.read_only, "--read-only"),
            (self.sync_on_close, "--sync-on-close"),
            (self.allow_other, "--allow-other"),
            (self.writeback_cache, "--writeback-cache"),
            (self.no_writeback_cache, "--no-writeback-cache"),
            (self.public, "--public"),
        ] {
            if on {
                v.push(flag.into());
            }
        }
        v
    }
}

/// What a mount runs with: flags over the config file over defaults.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    mountpoint: PathBuf,
    data_dir: PathBuf,
    network: Option<PathBuf>,
    read_only: bool,
    sync_on_close: bool,
    allow_other: bool,
    epochs: u32,
    upload_grace: u64,
    max_pack: u64,
    pack_wait: u64,
    writeback_cache: bool,
    public: bool,
    metrics_addr: Option<SocketAddr>,
    log: Option<String>,
}

fn settings(args: &MountArgs, config: &Config) -> anyhow::Result<Settings> {
    let f = &config.file;
    let max_pack = match &args.max_pack {
        Some(s) => {
            let b = ByteSize::parse(s)
                .map_err(|e| anyhow::anyhow!("--max-pack: {e}"))?
                .0;
            if !((64 << 10)..=(16 << 30)).contains(&b) {
                bail!("--max-pack {s}: use 64KiB to 16GiB");
            }
            b
        }
        None => f.max_pack.map_or(DEFAULT_MAX_PACK, |b| b.0),
    };
    let metrics_addr = match &args.metrics_addr {
        Some(a) if a.is_empty() => None,
        Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
            anyhow::anyhow!("--metrics-addr {a}: use IP:PORT such as 127.0.0.1:9464")
        })?),
        None => config.metrics_addr,
    };
    let network = args.network.clone().or_else(|| f.network.clone());
    // The embedded network costs nothing to store on, and an unmounted drive renews nothing:
    // keep its blobs for the most epochs the ledger sells (~7 weeks of 1-day epochs).
    let default_epochs = if network.is_some() {
        DEFAULT_EPOCHS
    } else {
        DEFAULT_EMBEDDED_EPOCHS
    };
    Ok(Settings {
        mountpoint: args.mountpoint.clone(),
        data_dir: args
            .data_dir
            .clone()
            .or_else(|| f.data_dir.clone())
            .unwrap_or_else(default_data_dir),
        network,
        read_only: args.read_only || f.read_only.unwrap_or(false),
        sync_on_close: args.sync_on_close || f.sync_on_close.unwrap_or(false),
        allow_other: args.allow_other || f.allow_other.unwrap_or(false),
        epochs: args.epochs.or(f.epochs).unwrap_or(default_epochs),
        upload_grace: args
            .upload_grace
            .or(f.upload_grace)
            .unwrap_or(DEFAULT_UPLOAD_GRACE),
        max_pack,
        pack_wait: args.pack_wait.or(f.pack_wait).unwrap_or(DEFAULT_PACK_WAIT),
        writeback_cache: args.writeback_cache
            || (!args.no_writeback_cache && f.writeback_cache.unwrap_or(true)),
        public: args.public,
        metrics_addr,
        log: f.log.clone(),
    })
}

#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// The mount point to unmount.
    pub mountpoint: PathBuf,
    /// Detach now even if files are open (lazy unmount).
    #[arg(long)]
    pub lazy: bool,
}

pub fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("walrusfs")
}

pub fn run(args: MountArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let settings = settings(&args, &config)?;
    super::logging::init(settings.log.as_deref());
    if let Some(path) = &config.path {
        info!(config = %path.display(), "configuration loaded");
    }
    if args.daemon {
        return daemonize(&args, &settings);
    }
    let ready = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
        // SAFETY: the parent created this descriptor for us and nobody else owns it.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: removing our own environment variable before any thread reads it.
    unsafe { std::env::remove_var(READY_FD_ENV) };
    serve(&settings, ready)
}

/// Starts this program again in the foreground (the same mount without `--daemon`),
/// detached, and waits for it to report that the mount is ready (or why it is not).
fn daemonize(args: &MountArgs, settings: &Settings) -> anyhow::Result<()> {
    let data_dir = &settings.data_dir;
    fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let log_path = data_dir.join("mount.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open the log file {}", log_path.display()))?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create a pipe");
    }
    // SAFETY: both were just created by pipe2.
    let (read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let exe = std::env::current_exe().context("cannot find the walrusfs executable")?;
    let child_fd = write_end.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args.to_argv())
        .env(READY_FD_ENV, child_fd.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // The pipe's write end must survive exec in the child.
            let flags = libc::fcntl(child_fd, libc::F_GETFD);
            libc::fcntl(child_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let child = cmd.spawn().context("cannot start the mount process")?;
    drop(write_end);
    let mut answer = String::new();
    let _ = (&read_end).read_to_string(&mut answer);
    if answer.starts_with("ready") {
        println!(
            "walrusfs: {} mounted (pid {}; logs in {})",
            settings.mountpoint.display(),
            child.id(),
            log_path.display()
        );
        return Ok(());
    }
    let reason = answer.trim();
    if reason.is_empty() {
        bail!(
            "the mount process exited before the drive was ready; see {}",
            log_path.display()
        );
    }
    bail!("{reason}");
}

/// Whether `path` describes a `walrus-http` network (publisher + aggregators) rather than
/// a network of our own nodes.
fn is_http_network(path: &Path) -> bool {
    fs::read_to_string(path).is_ok_and(|t| is_walrus_http_network_file(&t))
}

/// The marker in the drive directory that records whether the drive's blobs are encrypted:
/// fixed when the drive is created, since blobs written one way cannot be read the other.
const ENCRYPTION_MARKER: &str = "encryption";

/// The blob store of a `walrus-http` network: publisher and aggregators checked against Sui,
/// encrypted with the drive key unless the drive is public.
fn http_store(path: &Path, drive_dir: &Path, public: bool) -> anyhow::Result<Arc<dyn BlobStore>> {
    let config = WalrusHttpConfig::load(path)?;
    let sui = GrpcSuiReader::new(&config.sui_rpc, config.system_object, config.staking_object)
        .with_context(|| format!("cannot use the Sui full node {}", config.sui_rpc))?;
    let http: Arc<dyn BlobStore> = Arc::new(WalrusHttpStore::new(config, Arc::new(sui))?);
    let marker = drive_dir.join(ENCRYPTION_MARKER);
    let recorded = fs::read_to_string(&marker).ok();
    let has_blobs = drive_has_blobs(drive_dir);
    let key_path = DriveKey::path_in(drive_dir);
    match recorded.as_deref().map(str::trim) {
        Some("public") if !public => bail!(
            "this drive was created with --public: its blobs are not encrypted; mount it with \
             --public (or use a new data directory for an encrypted drive)"
        ),
        Some(r) if r != "public" && public => bail!(
            "this drive is encrypted ({r}); it cannot be mounted --public (use a new data \
             directory for a public drive)"
        ),
        None if has_blobs => bail!(
            "the drive in {} holds blobs but does not record whether they are encrypted \
             ({} is missing); restore that file, or use a new data directory",
            drive_dir.display(),
            marker.display()
        ),
        _ => {}
    }
    if public {
        write_marker(&marker, "public")?;
        warn!(
            "public drive: file contents are stored unencrypted and anyone who learns a blob ID can read them"
        );
        return Ok(http);
    }
    if recorded.is_some() && !key_path.exists() {
        bail!(
            "the drive key {} is missing, and this drive's blobs are encrypted with it; \
             restore it with `walrusfs key import FILE --data-dir DIR` (a new key cannot read \
             them)",
            key_path.display()
        );
    }
    let (key, created) = DriveKey::load_or_create(&key_path)?;
    if created {
        warn!(key_id = %key.id(), path = %key_path.display(),
            "created this drive's encryption key; back it up now with `walrusfs key export` \
             (without it the drive cannot be read)");
    }
    write_marker(&marker, &format!("{FRAMING} {}", key.id()))?;
    Ok(Arc::new(EncryptedStore::new(http, key)))
}

fn write_marker(path: &Path, text: &str) -> anyhow::Result<()> {
    if fs::read_to_string(path).is_ok_and(|t| t.trim() == text) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{text}\n"))
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Whether the drive's metadata records any blob (a drive that has stored something).
fn drive_has_blobs(drive_dir: &Path) -> bool {
    let db = drive_dir.join("meta.db");
    if !db.exists() {
        return false;
    }
    rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row("SELECT EXISTS (SELECT 1 FROM blobs)", [], |r| r.get(0)))
        .unwrap_or(true)
}

/// Mounts, serves until unmounted, then stops cleanly.
fn serve(settings: &Settings, ready: Option<OwnedFd>) -> anyhow::Result<()> {
    bound_freed_memory();
    let mut ready = ready.map(File::from);
    let result = serve_inner(settings, &mut ready);
    if let (Err(e), Some(f)) = (&result, ready.as_mut()) {
        let _ = writeln!(f, "{e:#}");
    }
    result
}

/// Makes glibc's allocator give memory back instead of keeping it: a mount lives for days,
/// and its peak (VmHWM) must stay bounded while it encodes 64 MiB blobs and serves cold
/// reads. By default glibc raises its mmap threshold to the largest block freed so far (up
/// to 32 MiB), after which sliver buffers come from per-thread arenas that keep freed memory:
/// a 1 GiB upload then peaked at 750–930 MiB and a cold read at 516–545 MiB. A fixed
/// threshold of 4 MiB (buffers of a blob or more are mapped and unmapped whole) and two
/// arenas: 409–438 and 284–290 MiB, at the same throughput (measured with the in-process
/// devnet, 64 MiB blobs at 100 shards).
fn bound_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; glibc takes its own lock. Called
    // before the runtime's threads exist, so that they share the two arenas.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives freed memory back every few seconds (`malloc_trim`): blocks under the mmap
/// threshold freed in the middle of an arena stay resident otherwise, so one phase's peak
/// (a cold read, say) stayed in RSS under the next one's (an upload): 290 + 300 MiB in
/// `scripts/bench`. A trim takes about a millisecond.
async fn trim_freed_memory() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let t = std::time::Instant::now();
            // SAFETY: malloc_trim only returns free pages of glibc's heaps to the kernel;
            // glibc takes its own locks.
            let released = unsafe { libc::malloc_trim(0) };
            tracing::trace!(elapsed = ?t.elapsed(), released, "malloc_trim");
        }
    }
}

fn serve_inner(args: &Settings, ready: &mut Option<File>) -> anyhow::Result<()> {
    let mountpoint = prepare_mountpoint(&args.mountpoint)?;
    fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let data_dir = fs::canonicalize(&args.data_dir)
        .with_context(|| format!("cannot resolve {}", args.data_dir.display()))?;
    let drive_dir = data_dir.join("drive");
    fs::create_dir_all(&drive_dir)
        .with_context(|| format!("cannot create {}", drive_dir.display()))?;
    let _lock = lock_data_dir(&drive_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("walrusfs")
        .build()
        .context("cannot start the async runtime")?;
    rt.spawn(trim_freed_memory());

    // Our own client leaves uploads to slow nodes running after a put; they get a moment at
    // unmount.
    let (store, walrus, network, source, epoch_duration) = rt.block_on(async {
        match &args.network {
            Some(path) if is_http_network(path) => {
                let store = http_store(path, &drive_dir, args.public)?;
                let source = NetworkSource::File { path: path.clone() };
                anyhow::Ok((store, None, None, source, None))
            }
            Some(path) => {
                let network = NetworkFile::load(path)?;
                let ledger = network.ledger_config().open().with_context(|| {
                    format!("cannot open the ledger named in {}", path.display())
                })?;
                let epoch_duration = ledger.params().ok().and_then(|p| p.epoch_duration);
                let client = Client::new(ledger, ClientConfig::default())?;
                let source = NetworkSource::File { path: path.clone() };
                let walrus = Arc::new(WalrusStore::new(client));
                anyhow::Ok((
                    walrus.clone() as Arc<dyn BlobStore>,
                    Some(walrus),
                    None,
                    source,
                    epoch_duration,
                ))
            }
            None => {
                let dir = data_dir.join("devnet");
                let network = EmbeddedNetwork::open_or_create(&dir, &embedded_params()?)
                    .await
                    .with_context(|| {
                        format!("cannot start the embedded network in {}", dir.display())
                    })?;
                let epoch_duration = network
                    .ledger()
                    .params()
                    .ok()
                    .and_then(|p| p.epoch_duration);
                let walrus = Arc::new(WalrusStore::new(network.client().clone()));
                Ok((
                    walrus.clone() as Arc<dyn BlobStore>,
                    Some(walrus),
                    Some(Arc::new(network)),
                    NetworkSource::Embedded { dir },
                    epoch_duration,
                ))
            }
        }
    })?;
    let mut config = DriveConfig::new(&drive_dir);
    config.read_only = args.read_only;
    config.sync_on_close = args.sync_on_close;
    config.epochs = args.epochs;
    config.max_pack = args.max_pack;
    config.pack_max_wait = Duration::from_secs(args.pack_wait);
    config.pack_linger = config.pack_linger.min(config.pack_max_wait);
    if let Some(d) = epoch_duration.filter(|d| !d.is_zero()) {
        // Look for blobs to extend several times an epoch, so that none slips past its end
        // between two looks however short epochs are.
        config.renew_interval = config
            .renew_interval
            .min(d / 4)
            .max(Duration::from_millis(200));
    }
    let drive = rt
        .block_on(Drive::start(config, store.clone()))
        .with_context(|| format!("cannot open the drive in {}", drive_dir.display()))?;

    let ctx = Arc::new(MountContext {
        drive: drive.clone(),
        mountpoint: mountpoint.clone(),
        data_dir: data_dir.clone(),
        network: source,
        embedded: network.clone(),
        started: std::time::Instant::now(),
    });
    let control = {
        let _guard = rt.enter();
        ControlServer::start(ctx.clone())?
    };
    let mut fs_impl = WalrusFuse::new(drive.clone(), rt.handle().clone())
        .with_writeback_cache(args.writeback_cache);
    let metrics_server = match args.metrics_addr {
        Some(addr) => {
            let metrics = Arc::new(Metrics::new());
            fs_impl = fs_impl.with_hook(metrics.clone());
            Some(rt.block_on(MetricsServer::start(addr, metrics, ctx.clone()))?)
        }
        None => None,
    };

    let mut options = vec![
        fuser::MountOption::FSName(crate::control::fsname_for(&data_dir)),
        fuser::MountOption::Subtype("walrusfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        if args.read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        options.push(fuser::MountOption::Suid);
    }
    let mut fuse_config = fuser::Config::default();
    fuse_config.mount_options = options;
    fuse_config.acl = if root || args.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    fuse_config.n_threads = Some(4);
    fuse_config.clone_fd = true;
    let mut session = fuser::Session::new(fs_impl, &mountpoint, &fuse_config).with_context(|| {
        format!(
            "cannot mount on {} (is /dev/fuse available and fuse3 installed? for --allow-other, \
             /etc/fuse.conf needs user_allow_other)",
            mountpoint.display()
        )
    })?;
    info!(
        mountpoint = %mountpoint.display(),
        data_dir = %data_dir.display(),
        control = %control.socket().display(),
        "mounted"
    );
    match crate::fuse::raise_readahead(&mountpoint) {
        Ok(kib) => info!(read_ahead_kb = kib, "readahead of the mount"),
        Err(why) => debug!(%why, "readahead left at the kernel's default"),
    }
    // Signal handlers go in before anyone is told the mount is ready, so that a stop right
    // after READY=1 unmounts cleanly instead of killing the process.
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _guard = rt.enter();
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    if let Some(mut f) = ready.take() {
        let _ = writeln!(f, "ready");
    }
    notify(&format!(
        "READY=1\nSTATUS=serving {} (data in {})",
        mountpoint.display(),
        data_dir.display()
    ));
    eprintln!(
        "walrusfs: {} mounted; stop with Ctrl-C or `walrusfs umount {}`",
        mountpoint.display(),
        mountpoint.display()
    );

    let mut unmounter = session.unmount_callable();
    rt.spawn(async move {
        let (Ok(mut int), Ok(mut term)) = signals else {
            warn!("cannot listen for SIGINT and SIGTERM; stop with `walrusfs umount`");
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        info!("signal received; unmounting");
        if let Err(e) = unmounter.unmount() {
            warn!(error = %e, "unmount failed; is a program still using the drive?");
        }
    });
    let served = session.run();
    let (files, bytes, _) = drive.pending().unwrap_or((0, 0, None));
    // Tell systemd how long the stop may take: the grace for uploads plus time to stop
    // the network, whatever TimeoutStopSec says.
    notify(&format!(
        "STOPPING=1\nSTATUS=unmounted; waiting up to {} s for {files} pending upload(s)\nEXTEND_TIMEOUT_USEC={}",
        args.upload_grace,
        (args.upload_grace + 30) * 1_000_000
    ));
    if files > 0 {
        eprintln!(
            "walrusfs: unmounted; waiting up to {} s for {files} pending upload(s) ({bytes} bytes)",
            args.upload_grace
        );
    }
    rt.block_on(async {
        drive.shutdown(Duration::from_secs(args.upload_grace)).await;
        if let Some(w) = &walrus {
            w.finish_background_uploads(Duration::from_secs(5)).await;
        }
        control.stop().await;
        if let Some(m) = metrics_server {
            m.stop().await;
        }
        drop(ctx);
        if let Some(n) = network {
            match Arc::try_unwrap(n) {
                Ok(n) => {
                    let _ = n.shutdown().await;
                }
                Err(_) => warn!("the embedded network is still in use; stopping it abruptly"),
            }
        }
    });
    let (files, _, _) = drive.pending().unwrap_or((0, 0, None));
    if files > 0 {
        eprintln!(
            "walrusfs: {files} upload(s) still pending; they stay in {} and resume at the next mount",
            drive_dir.display()
        );
    }
    served.with_context(|| format!("serving {} failed", mountpoint.display()))
}

/// The embedded network's parameters: [`DevnetParams::embedded_default`], with the epoch
/// length from `WALRUSFS_DEVNET_EPOCH_SECS` if set (for tests; used only when the network is
/// created).
fn embedded_params() -> anyhow::Result<DevnetParams> {
    let mut p = DevnetParams::embedded_default();
    if let Some(v) = std::env::var_os(DEVNET_EPOCH_SECS_ENV) {
        let secs: u64 = v
            .to_str()
            .and_then(|s| s.parse().ok())
            .filter(|&s| s > 0)
            .with_context(|| {
                format!("{DEVNET_EPOCH_SECS_ENV}={v:?}: use a whole number of seconds above 0")
            })?;
        p.epoch_duration = Some(Duration::from_secs(secs));
    }
    Ok(p)
}

/// Checks the mount point, clearing a stale mount left by a killed walrusfs.
fn prepare_mountpoint(path: &Path) -> anyhow::Result<PathBuf> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{} is not a directory", path.display()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            warn!(path = %path.display(), "clearing a stale mount left by an earlier walrusfs");
            unmount(path, true)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "mount point {} does not exist; create it with `mkdir -p {}`",
            path.display(),
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot use {}", path.display())),
    }
    fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// Holds an exclusive lock on the drive directory for the life of the mount: two mounts of
/// one drive would corrupt each other's view.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "the drive in {} is already mounted by another walrusfs process; unmount it first \
             (`walrusfs umount MOUNTPOINT`) or use another --data-dir",
            dir.display()
        );
    }
    Ok(f)
}

fn unmount(path: &Path, lazy: bool) -> anyhow::Result<()> {
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    match cmd.arg(path).status() {
        Ok(s) if s.success() => return Ok(()),
        Ok(_) | Err(_) => {}
    }
    // Without fusermount3 (or as root), unmount directly.
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .context("mount point contains a NUL byte")?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) {
            bail!(
                "{} is busy: a program still has files open there (see `fuser -vm {}`); \
                 close them, or use --lazy",
                path.display(),
                path.display()
            );
        }
        return Err(e).with_context(|| format!("cannot unmount {}", path.display()));
    }
    Ok(())
}

pub fn run_umount(args: UmountArgs) -> anyhow::Result<()> {
    unmount(&args.mountpoint, args.lazy)
}
