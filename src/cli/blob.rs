//! `walrusfs blob ...`: blob IDs, encoding and decoding of local files.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::encoding::{EncodingConfig, files};

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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn run(cmd: BlobCommand) -> anyhow::Result<()> {
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
                let data =
                    fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
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
            let tmp = output.with_extension("walrusfs-partial");
            fs::write(&tmp, &decoded.data)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            fs::rename(&tmp, &output)
                .with_context(|| format!("cannot write {}", output.display()))?;
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
