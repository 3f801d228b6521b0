//! `walrusfs blob ...`: blob IDs, encoding and decoding of local files.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::client::{Client, ClientConfig, ClientError, StoreOptions};
use crate::devnet::NetworkFile;
use crate::encoding::{BlobId, EncodingConfig, files};

/// Blobs above this size are encoded from the file with bounded memory instead of in memory.
const IN_MEMORY_LIMIT: u64 = 1 << 30;

#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Print the Walrus blob ID of a file (the last line of output), without storing anything.
    ///
    /// The blob ID depends on the number of shards of the network the blob is meant for:
    /// Walrus mainnet and testnet have 1000, the default here.
    Id {
        /// The file to compute the blob ID of.
        file: PathBuf,
        #[command(flatten)]
        shards: Shards,
        /// Print length, shards, symbol size, encoded size and root hash before the blob ID.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Encode a file into RS2 slivers and metadata, written as BCS files into a directory.
    ///
    /// The directory gets `metadata.bcs` and `slivers/NNNNN.{primary,secondary}.bcs`, one pair
    /// per shard, numbered by sliver-pair index. Prints the blob ID as the last line.
    Encode {
        /// The file to encode.
        file: PathBuf,
        #[command(flatten)]
        shards: Shards,
        /// Output directory (created if missing; existing sliver files are overwritten).
        #[arg(long, short)]
        output: PathBuf,
        /// Encode from the file with bounded memory even if it would fit in memory
        /// (automatic above 1 GiB).
        #[arg(long)]
        streaming: bool,
    },
    /// Store a file as a blob on the network and wait until it is certified.
    ///
    /// Prints the blob ID as the last line. Storing a blob that is already certified for long
    /// enough uploads nothing.
    Put {
        /// The file to store.
        file: PathBuf,
        /// Epochs to store the blob for, from the current one.
        #[arg(long, default_value_t = 1)]
        epochs: u32,
        /// Store as permanent: it cannot be deleted before it expires. By default blobs are
        /// deletable, as in Walrus since v1.33.
        #[arg(long)]
        permanent: bool,
        #[command(flatten)]
        network: NetworkArg,
    },
    /// Read a blob (or a byte range of it) from the network, verified, into a file.
    Get {
        /// The blob ID (43 characters of URL-safe base64; it may start with `-`).
        #[arg(allow_hyphen_values = true)]
        blob_id: BlobId,
        /// Only bytes A to B, both inclusive (as in HTTP ranges).
        #[arg(long, value_name = "A-B", value_parser = parse_range)]
        range: Option<(u64, u64)>,
        /// Where to write the bytes; `-` for standard output.
        #[arg(long, short)]
        output: PathBuf,
        #[command(flatten)]
        network: NetworkArg,
    },
    /// Show whether a blob is certified and until which epoch it is stored.
    Status {
        /// The blob ID.
        #[arg(allow_hyphen_values = true)]
        blob_id: BlobId,
        #[command(flatten)]
        network: NetworkArg,
    },
    /// Delete a deletable blob from the ledger (its storage is released; nodes may drop it).
    Delete {
        /// The blob ID.
        #[arg(allow_hyphen_values = true)]
        blob_id: BlobId,
        #[command(flatten)]
        network: NetworkArg,
    },
    /// Keep a certified blob for more epochs.
    Extend {
        /// The blob ID.
        #[arg(allow_hyphen_values = true)]
        blob_id: BlobId,
        /// Epochs to add to its end epoch.
        #[arg(long)]
        epochs: u32,
        #[command(flatten)]
        network: NetworkArg,
    },
    /// Decode a directory written by `blob encode` back into the original file.
    ///
    /// Needs the metadata and any n − 2f valid primary slivers (e.g. 334 of 1000); missing
    /// sliver files are fine and corrupt ones are reported and skipped.
    Decode {
        /// Directory written by `walrusfs blob encode`.
        dir: PathBuf,
        /// Where to write the decoded blob.
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct NetworkArg {
    /// The network to talk to: a network.toml as written by `walrusfs devnet up`
    /// [default: the default devnet's, $XDG_DATA_HOME/walrusfs/devnet/network.toml].
    #[arg(long, value_name = "FILE")]
    network: Option<PathBuf>,
}

impl NetworkArg {
    fn client(&self) -> anyhow::Result<Client> {
        let path = self
            .network
            .clone()
            .unwrap_or_else(|| super::devnet::default_dir().join("network.toml"));
        if !path.exists() {
            bail!(
                "no network file at {}: start a local network with `walrusfs devnet up` or pass --network FILE",
                path.display()
            );
        }
        let network = NetworkFile::load(&path)?;
        let ledger = network
            .ledger_config()
            .open()
            .with_context(|| format!("cannot open the ledger named in {}", path.display()))?;
        Ok(Client::new(ledger, ClientConfig::default())?)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `A-B`, both inclusive, as in HTTP byte ranges.
fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let err =
        || format!("`{s}` is not a byte range: use A-B with A <= B, both inclusive (e.g. 0-1023)");
    let (a, b) = s.split_once('-').ok_or_else(err)?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| err())?,
        b.trim().parse().map_err(|_| err())?,
    );
    if a > b {
        return Err(err());
    }
    Ok((a, b))
}

#[derive(Debug, clap::Args)]
pub struct Shards {
    /// Number of shards n of the target network (4 to 4096).
    #[arg(long, short = 'n', default_value_t = 1000, value_name = "N")]
    shards: u16,
}

impl Shards {
    fn config(&self) -> anyhow::Result<EncodingConfig> {
        Ok(EncodingConfig::new(self.shards)?)
    }
}

fn file_len(path: &Path) -> anyhow::Result<u64> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok(meta.len())
}

/// Where `-o PATH` writes.
///
/// A regular file (or a path that does not exist yet) is written beside its final name and
/// renamed into place once complete, so that a failed read never leaves a partial file under
/// that name; through a symbolic link, the file it points to is the one replaced. Anything
/// else (`/dev/null`, a FIFO, a terminal) is written directly: a rename would replace the
/// device node itself with a regular file.
struct Output {
    file: fs::File,
    /// `(partial, final)` when written beside the final name.
    staged: Option<(PathBuf, PathBuf)>,
}

impl Output {
    fn open(path: &Path) -> anyhow::Result<Self> {
        let dest = match fs::metadata(path) {
            Ok(m) if !m.is_file() => {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                return Ok(Self { file, staged: None });
            }
            Ok(_) => fs::canonicalize(path)
                .with_context(|| format!("cannot resolve {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
            Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
        };
        let mut name = dest.file_name().unwrap_or_default().to_os_string();
        name.push(".walrusfs-partial");
        let partial = dest.with_file_name(name);
        let file = fs::File::create(&partial)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        Ok(Self {
            file,
            staged: Some((partial, dest)),
        })
    }

    /// Puts the written file in place.
    fn finish(self) -> anyhow::Result<()> {
        drop(self.file);
        if let Some((partial, dest)) = self.staged {
            fs::rename(&partial, &dest)
                .with_context(|| format!("cannot write {}", dest.display()))?;
        }
        Ok(())
    }

    /// Removes what a failed write left.
    fn abandon(self) {
        drop(self.file);
        if let Some((partial, _)) = self.staged {
            let _ = fs::remove_file(partial);
        }
    }
}

/// Reads a whole file into memory, large files in parallel parts.
///
/// Why: the read of a blob is the one step of a put that runs before anything else can, and
/// for large files its cost is mostly the fresh memory it lands in (a page fault and a zeroed
/// page per 4 KiB), not the copy. One thread per core reads a part, so the faults are taken
/// in parallel: a 64 MiB read took 25 ms instead of 40 ms (median of 5 each, on 2 cores).
fn read_whole(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt as _;
    /// Smaller files are read by this thread alone.
    const PARALLEL_MIN: usize = 8 << 20;
    let cannot = || format!("cannot read {}", path.display());
    let file = fs::File::open(path).with_context(cannot)?;
    let len = usize::try_from(file.metadata().with_context(cannot)?.len())
        .with_context(|| format!("{} does not fit in memory", path.display()))?;
    if len < PARALLEL_MIN {
        let mut data = Vec::with_capacity(len);
        std::io::Read::read_to_end(&mut &file, &mut data).with_context(cannot)?;
        return Ok(data);
    }
    // Zeroed by the allocator with fresh pages that are not touched yet.
    let mut data = vec![0u8; len];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let part_len = len.div_ceil(threads).next_multiple_of(1 << 20);
    std::thread::scope(|scope| {
        let parts: Vec<_> = data
            .chunks_mut(part_len)
            .enumerate()
            .map(|(i, part)| {
                let file = &file;
                scope.spawn(move || file.read_exact_at(part, (i * part_len) as u64))
            })
            .collect();
        for part in parts {
            match part.join() {
                Ok(result) => result.with_context(|| {
                    format!(
                        "cannot read {} (did it shrink while being read?)",
                        path.display()
                    )
                })?,
                Err(_) => bail!("a thread reading {} failed", path.display()),
            }
        }
        Ok(())
    })?;
    Ok(data)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn run(cmd: BlobCommand) -> anyhow::Result<()> {
    // A get receives each sliver through HTTP buffers that grow by reallocation; with freed
    // memory kept, they reuse pages touched before instead of faulting in fresh ones.
    crate::node::keep_freed_memory();
    let mut out = std::io::stdout().lock();
    match cmd {
        BlobCommand::Id {
            file,
            shards,
            verbose,
        } => {
            let config = shards.config()?;
            let len = file_len(&file)?;
            let meta = if len > IN_MEMORY_LIMIT {
                files::encode_file(&config, &file, None)?
            } else {
                let data =
                    fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
                config.compute_metadata(&data)?
            };
            if verbose {
                writeln!(out, "length:         {len}")?;
                writeln!(out, "shards:         {}", config.n_shards())?;
                writeln!(out, "symbol size:    {}", config.symbol_size(len)?)?;
                writeln!(out, "encoded length: {}", config.encoded_blob_length(len)?)?;
                writeln!(
                    out,
                    "root hash:      {}",
                    hex(&meta.metadata.root_hash().bytes())
                )?;
            }
            writeln!(out, "{}", meta.blob_id)?;
        }
        BlobCommand::Encode {
            file,
            shards,
            output,
            streaming,
        } => {
            let config = shards.config()?;
            let len = file_len(&file)?;
            if len > config.max_blob_size() {
                // Same error the encoder gives, before reading a byte.
                config.symbol_size(len)?;
            }
            fs::create_dir_all(&output)
                .with_context(|| format!("cannot create output directory {}", output.display()))?;
            let meta = if streaming || len > IN_MEMORY_LIMIT {
                files::encode_file(&config, &file, Some(&output))?
            } else {
                let data = read_whole(&file)?;
                let encoded = config.encode_owned(data)?;
                files::write_dir(&encoded, &output)?;
                encoded.metadata
            };
            writeln!(
                out,
                "encoded {len} bytes into {} sliver pairs ({} bytes of slivers and metadata) in {}",
                config.n_shards(),
                config.encoded_blob_length(len)?,
                output.display()
            )?;
            writeln!(out, "{}", meta.blob_id)?;
        }
        BlobCommand::Put {
            file,
            epochs,
            permanent,
            network,
        } => {
            let client = network.client()?;
            let t0 = std::time::Instant::now();
            let data = read_whole(&file)?;
            tracing::debug!(elapsed = ?t0.elapsed(), "file read");
            let len = data.len();
            let rt = runtime()?;
            let spinner = (len as u64 >= super::progress::LARGE).then(|| {
                super::progress::spinner(format!(
                    "storing {} ({}): encoding, uploading to the storage nodes, certifying",
                    file.display(),
                    indicatif::HumanBytes(len as u64)
                ))
            });
            let outcome = rt.block_on(async {
                let max = client.encoding_config().await?.max_blob_size();
                if len as u64 > max {
                    bail!(
                        "{} has {len} bytes but this network's blobs hold at most {max} bytes",
                        file.display()
                    );
                }
                let started = std::time::Instant::now();
                let mut outcome = client
                    .store(
                        data,
                        StoreOptions {
                            epochs,
                            deletable: !permanent,
                        },
                    )
                    .await?;
                // Give slow nodes a moment to receive their slivers too: they are not needed
                // for the certificate, but every node should hold its share. A stalled node
                // must not hold the command up for long, so the wait is bounded by what the
                // store itself took (at least 2 s).
                let stragglers = std::mem::take(&mut outcome.stragglers);
                let grace = started.elapsed().max(std::time::Duration::from_secs(2));
                let _ = tokio::time::timeout(grace, futures::future::join_all(stragglers)).await;
                Ok(outcome)
            });
            if let Some(s) = spinner {
                s.finish_and_clear();
            }
            let outcome = outcome?;
            if outcome.already_certified {
                writeln!(
                    out,
                    "already certified until the end of epoch {}; nothing uploaded",
                    outcome.object.end_epoch()
                )?;
            } else {
                writeln!(
                    out,
                    "stored {len} bytes: certified in epoch {}, stored until the end of epoch {}, {} object {}",
                    outcome.object.certified_epoch.unwrap_or_default(),
                    outcome.object.end_epoch(),
                    if outcome.object.deletable {
                        "deletable"
                    } else {
                        "permanent"
                    },
                    outcome.object.object_id
                )?;
            }
            writeln!(out, "{}", outcome.blob_id)?;
        }
        BlobCommand::Get {
            blob_id,
            range,
            output,
            network,
        } => {
            let client = network.client()?;
            let spinner = super::progress::spinner(format!(
                "reading blob {blob_id}: fetching and verifying slivers"
            ));
            let range = range.map(|(a, b)| a..b + 1);
            let rt = runtime()?;
            // Streamed: written as the slivers verify, never the whole blob in memory.
            if output.as_os_str() == "-" {
                // Written through its own descriptor, not the locked `Stdout`: that is a line
                // writer, which scans every piece for a newline first.
                out.flush()?;
                let mut raw = fs::File::from(
                    std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned()?,
                );
                let read = rt.block_on(
                    client.read_streaming(blob_id, range, &mut |piece| raw.write_all(piece)),
                );
                spinner.finish_and_clear();
                match read {
                    // The reader went away (`| head`): done, as for any Unix filter.
                    Err(ClientError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        return Ok(());
                    }
                    r => {
                        r?;
                    }
                }
                out.flush()?;
            } else {
                let mut target = Output::open(&output)?;
                let mut written = 0u64;
                let read = rt.block_on(client.read_streaming(blob_id, range, &mut |piece| {
                    written += piece.len() as u64;
                    target.file.write_all(piece)
                }));
                spinner.finish_and_clear();
                let stats = match read {
                    Ok(stats) => stats,
                    Err(e) => {
                        target.abandon();
                        return Err(e.into());
                    }
                };
                target.finish()?;
                writeln!(
                    out,
                    "read {written} bytes of blob {blob_id} into {} ({} slivers verified{})",
                    output.display(),
                    stats.slivers_verified,
                    if stats.decoded {
                        ", decoded around slow or bad nodes"
                    } else {
                        ""
                    }
                )?;
            }
        }
        BlobCommand::Status { blob_id, network } => {
            let client = network.client()?;
            let (status, objects, epoch) = runtime()?.block_on(client.status(blob_id))?;
            let certified = status.is_certified();
            let end = objects
                .iter()
                .filter(|o| o.is_certified() && !o.is_expired(epoch))
                .map(|o| o.end_epoch())
                .max();
            writeln!(out, "blob {blob_id}")?;
            writeln!(out, "current epoch: {epoch}")?;
            match (certified, end) {
                (true, Some(end)) => {
                    writeln!(out, "certified: yes, stored until the end of epoch {end}")?
                }
                (true, None) => writeln!(out, "certified: yes, but expired")?,
                (false, _) if objects.is_empty() => {
                    writeln!(out, "certified: no (not registered)")?
                }
                (false, _) => writeln!(out, "certified: no (registered, not certified)")?,
            }
            for o in &objects {
                writeln!(
                    out,
                    "  object {}: {}, {}, end epoch {}{}",
                    o.object_id,
                    if o.deletable {
                        "deletable"
                    } else {
                        "permanent"
                    },
                    match o.certified_epoch {
                        Some(e) => format!("certified in epoch {e}"),
                        None => "not certified".into(),
                    },
                    o.end_epoch(),
                    if o.is_expired(epoch) {
                        " (expired)"
                    } else {
                        ""
                    }
                )?;
            }
        }
        BlobCommand::Delete { blob_id, network } => {
            let n = runtime()?.block_on(network.client()?.delete(blob_id))?;
            writeln!(out, "deleted {n} blob object(s) of {blob_id}")?;
        }
        BlobCommand::Extend {
            blob_id,
            epochs,
            network,
        } => {
            let objects = runtime()?.block_on(network.client()?.extend(blob_id, epochs))?;
            for o in objects {
                writeln!(
                    out,
                    "extended object {}: stored until the end of epoch {}",
                    o.object_id,
                    o.end_epoch()
                )?;
            }
        }
        BlobCommand::Decode { dir, output } => {
            if !files::metadata_path(&dir).exists() {
                bail!(
                    "{} has no metadata.bcs: expected a directory written by `walrusfs blob encode`",
                    dir.display()
                );
            }
            let decoded = match files::decode_dir(&dir) {
                Ok(d) => d,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot decode {}", dir.display()));
                }
            };
            let mut target = Output::open(&output)?;
            if let Err(e) = target.file.write_all(&decoded.data) {
                target.abandon();
                return Err(e).with_context(|| format!("cannot write {}", output.display()));
            }
            target.finish()?;
            writeln!(
                out,
                "decoded {} bytes from {} valid primary slivers into {}",
                decoded.data.len(),
                decoded.valid,
                output.display()
            )?;
            writeln!(out, "{}", decoded.metadata.blob_id)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small files are read in one go, large ones in parallel parts: same bytes either way,
    /// including a last part shorter than the others and an empty file.
    #[test]
    fn read_whole_returns_the_files_bytes() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4096, (8 << 20) - 1, (8 << 20) + 12_345, 21 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + i / 4099) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            fs::write(&path, &bytes).unwrap();
            assert!(read_whole(&path).unwrap() == bytes, "{len} bytes");
        }
        let missing = read_whole(&dir.path().join("missing")).unwrap_err();
        assert!(
            format!("{missing:#}").contains("cannot read"),
            "{missing:#}"
        );
    }

    /// Devices and FIFOs are written in place (a rename would replace `/dev/null` with a
    /// regular file); regular files beside their name, then renamed, also through a symbolic
    /// link (the link stays a link); a failed write leaves nothing.
    #[test]
    fn outputs_are_written_in_place_or_renamed_as_their_kind_wants() {
        use std::io::Read as _;
        use std::os::unix::fs::FileTypeExt as _;
        let dir = tempfile::tempdir().unwrap();

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                fs::File::open(fifo).unwrap().read_to_end(&mut got).unwrap();
                got
            })
        };
        let mut out = Output::open(&fifo).unwrap();
        assert!(out.staged.is_none());
        out.file.write_all(b"through the pipe").unwrap();
        out.finish().unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(fs::metadata(&fifo).unwrap().file_type().is_fifo());

        let target = dir.path().join("data.tar");
        fs::write(&target, b"old").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut out = Output::open(&link).unwrap();
        out.file.write_all(b"new").unwrap();
        out.finish().unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&target).unwrap(), b"new");

        let fresh = dir.path().join("fresh.bin");
        let mut out = Output::open(&fresh).unwrap();
        out.file.write_all(b"part").unwrap();
        assert!(!fresh.exists(), "a partial file under the final name");
        out.abandon();
        assert!(!fresh.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            3,
            "partial file left behind"
        );
    }
}
