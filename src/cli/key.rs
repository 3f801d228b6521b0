//! `walrusfs key ...`: back up and restore the key that encrypts a drive's blobs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use zeroize::Zeroizing;

use crate::blobstore::key::Installed;
use crate::blobstore::{DriveKey, KeyError};

/// A key file is one line; anything much larger is not one.
const MAX_KEY_FILE: u64 = 64 * 1024;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print the drive's encryption key as one line of text, so you can keep a copy.
    ///
    /// Every blob on Walrus is public: what keeps your files private is this key, which the
    /// drive creates at its first mount and keeps in DATA_DIR/drive/key. Keep the exported
    /// copy somewhere safe and private (a password manager, paper in a safe). Anyone who has
    /// it can read every file the drive ever stored; without it (for instance after losing
    /// this machine) nobody can, including you. `walrusfs key import` installs it again.
    Export(ExportArgs),
    /// Install a drive key saved with `walrusfs key export` (to read a drive on a new
    /// machine, or to restore a lost key file).
    ///
    /// The key is written to DATA_DIR/drive/key, readable only by you (mode 0600). The text
    /// carries a checksum, so a mistyped or damaged key is refused instead of installed. A
    /// drive that already has a different key keeps it unless you pass --force, because files
    /// written with that key could no longer be read. Unmount the drive first.
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The drive's data directory, as given to `walrusfs mount --data-dir` [default: the
    /// config file's data_dir, else $XDG_DATA_HOME/walrusfs, or ~/.local/share/walrusfs].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Write the key to FILE instead of standard output. FILE is created readable only by
    /// you (mode 0600) and is never overwritten.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The file holding the key (as written by `walrusfs key export`), or `-` to read it
    /// from standard input (to paste it: `walrusfs key import -`, paste, then Ctrl-D).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The drive's data directory, as given to `walrusfs mount --data-dir` [default: the
    /// config file's data_dir, else $XDG_DATA_HOME/walrusfs, or ~/.local/share/walrusfs].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Replace a different key the drive already has. Files the drive stored with the old
    /// key become unreadable; the old key file is kept beside the new one
    /// (DATA_DIR/drive/key.replaced-KEYID) so the change can be undone.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Export(args) => export(args),
        KeyCommand::Import(args) => import(args),
    }
}

/// The data directory as `walrusfs mount` resolves it: the flag, the config file, the default.
fn data_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(d) = flag {
        return Ok(d);
    }
    let config = super::config::Config::load(None)?;
    Ok(config
        .file
        .data_dir
        .unwrap_or_else(super::mount::default_data_dir))
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let data_dir = data_dir(args.data_dir)?;
    let path = DriveKey::path_in(&data_dir.join("drive"));
    let key = match DriveKey::load(&path) {
        Ok(k) => k,
        Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            if !data_dir.exists() {
                bail!(
                    "there is no drive in {} (pass the drive's --data-dir)",
                    data_dir.display()
                );
            }
            bail!(
                "this drive has no key yet ({} does not exist); it is created when the drive \
                 is first mounted with encryption",
                path.display()
            );
        }
        Err(e) => return Err(e.into()),
    };
    let id = key.id();
    let text = key.to_text();
    match &args.output {
        Some(out) => {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(out)
                .with_context(|| {
                    format!(
                        "cannot create {} (an existing file is never overwritten)",
                        out.display()
                    )
                })?;
            let body = Zeroizing::new(format!(
                "# walrusfs drive key {id}, exported from {}.\n\
                 # Anyone holding this can read the drive; losing it loses the drive.\n\
                 # Restore it with: walrusfs key import FILE\n{}\n",
                data_dir.display(),
                &*text
            ));
            f.write_all(body.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("wrote drive key {id} to {}", out.display());
        }
        None => {
            let mut out = io::stdout().lock();
            writeln!(out, "{}", &*text).context("cannot write to standard output")?;
        }
    }
    eprintln!(
        "warning: anyone who has this key can read every file of the drive, and without it \
         the drive cannot be read at all. Keep it private and keep it safe (a password \
         manager, or paper in a safe); never paste it into chats, tickets or shell history."
    );
    Ok(())
}

fn import(args: ImportArgs) -> anyhow::Result<()> {
    let text = Zeroizing::new(read_key_text(&args.file)?);
    let key = DriveKey::from_text(&text).with_context(|| {
        if args.file == Path::new("-") {
            "standard input does not hold a valid drive key".to_owned()
        } else {
            format!("{} does not hold a valid drive key", args.file.display())
        }
    })?;
    let data_dir = data_dir(args.data_dir)?;
    let drive_dir = data_dir.join("drive");
    fs::create_dir_all(&drive_dir)
        .with_context(|| format!("cannot create {}", drive_dir.display()))?;
    // Held while installing: a mount starting now waits for it, and a running mount (which
    // keeps the key it started with) makes us refuse.
    let _lock = lock_unmounted(&drive_dir)?;
    let path = DriveKey::path_in(&drive_dir);
    match key.install(&path, args.force)? {
        Installed::New => eprintln!("installed drive key {} in {}", key.id(), path.display()),
        Installed::Unchanged => eprintln!(
            "{} already holds this key ({}); nothing to change",
            path.display(),
            key.id()
        ),
        Installed::Replaced { backup } => eprintln!(
            "replaced the drive key in {} with {}; the previous one was moved to {} (files \
             stored with it can only be read with it)",
            path.display(),
            key.id(),
            backup.display()
        ),
    }
    Ok(())
}

fn read_key_text(file: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    let (reader, name): (Box<dyn io::Read>, String) = if file == Path::new("-") {
        (Box::new(io::stdin().lock()), "standard input".into())
    } else {
        let f = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        (Box::new(f), file.display().to_string())
    };
    reader
        .take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read a key from {name} (a key is one line of text)"))?;
    Ok(text)
}

/// Locks the drive directory as `walrusfs mount` does, refusing if a mount holds it.
fn lock_unmounted(drive_dir: &Path) -> anyhow::Result<File> {
    let path = drive_dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "the drive in {} is mounted; unmount it first (`walrusfs umount MOUNTPOINT`): a \
             running mount keeps using the key it started with",
            drive_dir.display()
        );
    }
    Ok(f)
}
