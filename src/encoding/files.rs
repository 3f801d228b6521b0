//! Encoding straight from and to files, with memory bounded by one row and one column of the
//! source matrix whatever the blob size, and the on-disk layout of an encoded blob directory.
//!
//! Directory layout written by [`encode_file`] and read by [`decode_dir`]:
//! - `metadata.bcs`: BCS `BlobMetadataWithId`;
//! - `slivers/NNNNN.primary.bcs` and `slivers/NNNNN.secondary.bcs`: BCS slivers of sliver pair
//!   `NNNNN` (the file name carries the pair index; the sliver's own index is inside).
//!
//! The algorithm is the one of `encoder.rs`, phase by phase, with disk in place of memory:
//! phase A reads the blob row by row, writes each row as a primary sliver and scatters its
//! symbols and its extension into the secondary sliver files; phase B reads each secondary
//! sliver back as a contiguous column, extends it and scatters the new symbols into the
//! primary sliver files of the recovery rows. Without an output directory (blob ID only), the
//! row extensions go to a temporary file and source columns are read from the input directly.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::codec::Encoder;
use super::merkle::{DIGEST_LEN, LeafHasher};
use super::sliver::write_bcs_header;
use super::{BlobMetadataWithId, EncodingConfig, EncodingError, Sliver, SliverType};

type Hash = [u8; DIGEST_LEN];

/// Path of a sliver file inside an encoded blob directory.
pub fn sliver_path(dir: &Path, pair: u16, sliver_type: SliverType) -> PathBuf {
    dir.join("slivers")
        .join(format!("{pair:05}.{sliver_type}.bcs"))
}

pub fn metadata_path(dir: &Path) -> PathBuf {
    dir.join("metadata.bcs")
}

/// A sliver file being filled symbol by symbol at known offsets.
struct SliverFile {
    file: File,
    header: u64,
    path: PathBuf,
}

impl SliverFile {
    fn create(
        path: PathBuf,
        len: usize,
        symbol_size: u16,
        index: u16,
    ) -> Result<Self, EncodingError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| EncodingError::io(&path, e))?;
        let mut head = Vec::new();
        write_bcs_header(&mut head, len);
        let mut tail = symbol_size.to_le_bytes().to_vec();
        tail.extend_from_slice(&index.to_le_bytes());
        file.write_all_at(&head, 0)
            .and_then(|_| file.write_all_at(&tail, (head.len() + len) as u64))
            .map_err(|e| EncodingError::io(&path, e))?;
        Ok(Self {
            file,
            header: head.len() as u64,
            path,
        })
    }

    fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), EncodingError> {
        self.file
            .write_all_at(data, self.header + offset as u64)
            .map_err(|e| EncodingError::io(&self.path, e))
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), EncodingError> {
        self.file
            .read_exact_at(buf, self.header + offset as u64)
            .map_err(|e| EncodingError::io(&self.path, e))
    }
}

/// Reads row `r` of the source matrix (zero-padded past the end of the blob).
fn read_row(
    input: &File,
    path: &Path,
    len: u64,
    r: usize,
    buf: &mut [u8],
) -> Result<(), EncodingError> {
    let start = (r * buf.len()) as u64;
    buf.fill(0);
    if start < len {
        let n = ((len - start) as usize).min(buf.len());
        input
            .read_exact_at(&mut buf[..n], start)
            .map_err(|e| EncodingError::io(path, e))?;
    }
    Ok(())
}

/// Encodes the file at `input`. With `out_dir`, writes metadata and all slivers there; without,
/// only computes the metadata (and blob ID). Memory stays around a few rows and columns.
pub fn encode_file(
    config: &EncodingConfig,
    input: &Path,
    out_dir: Option<&Path>,
) -> Result<BlobMetadataWithId, EncodingError> {
    let file = File::open(input).map_err(|e| EncodingError::io(input, e))?;
    let len = file
        .metadata()
        .map_err(|e| EncodingError::io(input, e))?
        .len();
    if len > config.max_blob_size() {
        return Err(EncodingError::BlobTooLarge {
            len,
            max: config.max_blob_size(),
            n_shards: config.n_shards(),
        });
    }
    let s = usize::from(config.symbol_size(len)?);
    let n = config.n_shards_usize();
    let (rows, cols) = (config.rows(), config.cols());
    let (m_row, m_col) = (n - cols, n - rows);
    let symbol_size = s as u16;

    // Secondary slivers are the columns: for an output directory they are the real sliver
    // files; otherwise only the recovery columns are spilled, to one temporary file.
    let mut spill_dir = None;
    let (primary, secondary): (Vec<SliverFile>, Vec<SliverFile>) = if let Some(dir) = out_dir {
        let sl = dir.join("slivers");
        fs::create_dir_all(&sl).map_err(|e| EncodingError::io(&sl, e))?;
        let primary = (0..n)
            .map(|i| {
                SliverFile::create(
                    sliver_path(dir, i as u16, SliverType::Primary),
                    cols * s,
                    symbol_size,
                    i as u16,
                )
            })
            .collect::<Result<_, _>>()?;
        // Column j is the secondary sliver of pair n − 1 − j.
        let secondary = (0..n)
            .map(|j| {
                SliverFile::create(
                    sliver_path(dir, (n - 1 - j) as u16, SliverType::Secondary),
                    rows * s,
                    symbol_size,
                    j as u16,
                )
            })
            .collect::<Result<_, _>>()?;
        (primary, secondary)
    } else {
        let tmp = tempfile::tempdir().map_err(|e| EncodingError::io(&std::env::temp_dir(), e))?;
        let secondary = (0..m_row)
            .map(|q| SliverFile::create(tmp.path().join(format!("{q}")), rows * s, symbol_size, 0))
            .collect::<Result<_, _>>()?;
        spill_dir = Some(tmp);
        (Vec::new(), secondary)
    };
    let column_file = |j: usize| -> Option<&SliverFile> {
        if out_dir.is_some() {
            secondary.get(j)
        } else if j >= cols {
            secondary.get(j - cols)
        } else {
            None
        }
    };

    // Phase A: rows.
    let mut hashes_a: Vec<Hash> = vec![[0; DIGEST_LEN]; rows * n];
    hashes_a.par_chunks_mut(n).enumerate().try_for_each_init(
        || {
            (
                Encoder::new(cols, m_row),
                LeafHasher::default(),
                vec![0u8; cols * s],
                vec![0u8; m_row * s],
            )
        },
        |(enc, hasher, row, rec), (r, ha)| -> Result<(), EncodingError> {
            read_row(&file, input, len, r, row)?;
            enc.encode_many(
                s,
                1,
                |_, i| &row[i * s..(i + 1) * s],
                |_, q, range, b| rec[q * s + range.start..q * s + range.end].copy_from_slice(b),
            )?;
            hasher.hash_iter(
                row.chunks_exact(s).chain(rec.chunks_exact(s)),
                s,
                ha,
                n,
                None,
            );
            if out_dir.is_some() {
                primary[r].write_at(0, row)?;
            }
            for j in 0..n {
                if let Some(f) = column_file(j) {
                    let sym = if j < cols {
                        &row[j * s..(j + 1) * s]
                    } else {
                        &rec[(j - cols) * s..(j - cols + 1) * s]
                    };
                    f.write_at(r * s, sym)?;
                }
            }
            Ok(())
        },
    )?;

    // Phase B: columns.
    let mut hashes_b: Vec<Hash> = vec![[0; DIGEST_LEN]; n * m_col];
    hashes_b
        .par_chunks_mut(m_col)
        .enumerate()
        .try_for_each_init(
            || {
                (
                    Encoder::new(rows, m_col),
                    LeafHasher::default(),
                    vec![0u8; rows * s],
                    vec![0u8; m_col * s],
                )
            },
            |(enc, hasher, col, rec), (j, hb)| -> Result<(), EncodingError> {
                match column_file(j) {
                    Some(f) => f.read_at(0, col)?,
                    None => {
                        for r in 0..rows {
                            let at = ((r * cols + j) * s) as u64;
                            let sym = &mut col[r * s..(r + 1) * s];
                            sym.fill(0);
                            if at < len {
                                let k = ((len - at) as usize).min(s);
                                file.read_exact_at(&mut sym[..k], at)
                                    .map_err(|e| EncodingError::io(input, e))?;
                            }
                        }
                    }
                }
                enc.encode_many(
                    s,
                    1,
                    |_, i| &col[i * s..(i + 1) * s],
                    |_, q, range, b| rec[q * s + range.start..q * s + range.end].copy_from_slice(b),
                )?;
                hasher.hash_symbols(rec, s, hb, None);
                if out_dir.is_some() && j < cols {
                    for q in 0..m_col {
                        primary[rows + q].write_at(j * s, &rec[q * s..(q + 1) * s])?;
                    }
                }
                Ok(())
            },
        )?;
    drop(spill_dir);

    let hashes = super::encoder::pair_hashes(n, rows, &hashes_a, &hashes_b, None);
    let metadata = BlobMetadataWithId::from_hashes(len, hashes);
    if let Some(dir) = out_dir {
        let p = metadata_path(dir);
        fs::write(&p, metadata.to_bcs()).map_err(|e| EncodingError::io(&p, e))?;
    }
    Ok(metadata)
}

/// Writes an in-memory encoded blob to `dir` in the layout above.
pub fn write_dir(blob: &super::EncodedBlob, dir: &Path) -> Result<(), EncodingError> {
    let sl = dir.join("slivers");
    fs::create_dir_all(&sl).map_err(|e| EncodingError::io(&sl, e))?;
    (0..blob.n_pairs()).into_par_iter().try_for_each(|p| {
        for (t, bytes) in [
            (SliverType::Primary, blob.primary_bcs(p)),
            (SliverType::Secondary, blob.secondary_bcs(p)),
        ] {
            let path = sliver_path(dir, p as u16, t);
            fs::write(&path, bytes).map_err(|e| EncodingError::io(&path, e))?;
        }
        Ok(())
    })?;
    let p = metadata_path(dir);
    fs::write(&p, blob.metadata.to_bcs()).map_err(|e| EncodingError::io(&p, e))
}

/// What [`decode_dir`] found.
#[derive(Debug)]
pub struct DirDecode {
    pub data: Vec<u8>,
    pub metadata: BlobMetadataWithId,
    /// Primary slivers that were present and valid.
    pub valid: usize,
    /// Sliver files that were present but failed to parse or verify, with the reason.
    pub rejected: Vec<(PathBuf, EncodingError)>,
}

/// Reads `dir`, verifies the metadata against its blob ID and every primary sliver against the
/// metadata, and decodes from the valid ones. Missing sliver files are fine as long as enough
/// remain; corrupt ones are reported and skipped.
pub fn decode_dir(dir: &Path) -> Result<DirDecode, EncodingError> {
    let mp = metadata_path(dir);
    let bytes = fs::read(&mp).map_err(|e| EncodingError::io(&mp, e))?;
    let metadata = BlobMetadataWithId::from_bcs(&bytes)?;
    let n = u16::try_from(metadata.metadata.hashes().len()).unwrap_or(0);
    let config = EncodingConfig::new(n)?;
    metadata.verify(&config)?;
    let results: Vec<(PathBuf, Result<Sliver, EncodingError>)> = (0..n)
        .into_par_iter()
        .filter_map(|p| {
            let path = sliver_path(dir, p, SliverType::Primary);
            match fs::read(&path) {
                Ok(b) => {
                    let r = Sliver::from_bcs(&b, SliverType::Primary)
                        .and_then(|s| s.verify(&config, &metadata.metadata).map(|_| s));
                    Some((path, r))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => Some((path.clone(), Err(EncodingError::io(&path, e)))),
            }
        })
        .collect();
    let mut valid = Vec::new();
    let mut rejected = Vec::new();
    for (path, r) in results {
        match r {
            Ok(s) => valid.push(s),
            Err(e) => {
                tracing::warn!(path = %path.display(), "skipping sliver: {e}");
                rejected.push((path, e));
            }
        }
    }
    let n_valid = valid.len();
    if n_valid < usize::from(config.n_primary_source_symbols()) {
        tracing::warn!(
            dir = %dir.display(),
            "found {} readable primary sliver files of {n}, {} of them corrupt",
            n_valid + rejected.len(),
            rejected.len()
        );
    }
    let data = config.decode_verified(&metadata.metadata, valid)?;
    Ok(DirDecode {
        data,
        metadata,
        valid: n_valid,
        rejected,
    })
}
