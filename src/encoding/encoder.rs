//! Blob encoding: the expanded RS2 matrix, its symbol hashes, metadata and slivers.
//!
//! The source matrix has `rows = n − 2f` rows and `cols = n − f` columns of `s`-byte symbols,
//! filled row-major from the blob and zero-padded. Phase A extends every row to `n` symbols
//! (secondary code), phase B every column to `n` symbols (primary code); both are independent
//! across rows/columns and run on all cores. All `n²` symbols are hashed, since each sliver's
//! Merkle root covers its full extension. Nothing of the expanded matrix is kept beyond what
//! slivers need: the source (primary slivers `0..rows`), the row extensions (secondary slivers
//! `cols..n`) and, when slivers are wanted, the column extensions (primary slivers `rows..n`).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use rayon::prelude::*;

use super::codec::Encoder;
use super::merkle::{DIGEST_LEN, LeafHasher, MerkleBuilder, ZeroChain};
use super::metadata::SliverPairMetadata;
use super::sliver::write_bcs_header;
use super::{BlobMetadataWithId, EncodingConfig, EncodingError, Sliver, SliverType};

type Hash = [u8; DIGEST_LEN];

/// Read access to the (padded) source matrix without copying the blob.
pub(crate) struct SourceView<'a> {
    blob: &'a [u8],
    s: usize,
    cols: usize,
    full_rows: usize,
    /// The last, partially filled row, zero-padded (empty if the blob ends on a row boundary).
    partial: Vec<u8>,
    zeros: Vec<u8>,
}

impl<'a> SourceView<'a> {
    pub(crate) fn new(blob: &'a [u8], s: usize, cols: usize) -> Self {
        let row_bytes = s * cols;
        let full_rows = blob.len() / row_bytes;
        let rest = &blob[full_rows * row_bytes..];
        let mut partial = Vec::new();
        if !rest.is_empty() {
            partial = vec![0u8; row_bytes];
            partial[..rest.len()].copy_from_slice(rest);
        }
        Self {
            blob,
            s,
            cols,
            full_rows,
            partial,
            zeros: vec![0u8; row_bytes],
        }
    }

    pub(crate) fn row(&self, r: usize) -> &[u8] {
        let row_bytes = self.s * self.cols;
        if r < self.full_rows {
            &self.blob[r * row_bytes..(r + 1) * row_bytes]
        } else if r == self.full_rows && !self.partial.is_empty() {
            &self.partial
        } else {
            &self.zeros
        }
    }

    #[inline]
    pub(crate) fn symbol(&self, r: usize, j: usize) -> &[u8] {
        &self.row(r)[j * self.s..(j + 1) * self.s]
    }
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Codewords handled per parallel task: enough to batch tiny symbols, few enough that both
/// cores get work.
/// A group's codec output (`n` symbols per codeword) is hashed right after it is produced, so
/// groups are sized to keep that output in cache.
fn group_size(count: usize, s: usize, n: usize) -> usize {
    let by_size = (256 * 1024 / (s * n)).clamp(1, 256);
    by_size.min(count.div_ceil(8)).max(1)
}

/// What the expansion produced.
pub(crate) struct Expansion {
    /// `rows × (n − cols)` symbols, row-major: the row extensions.
    pub row_recovery: Vec<u8>,
    /// `cols × (n − rows)` symbols, column-major: the column extensions of source columns.
    pub col_recovery: Option<Vec<u8>>,
    pub hashes: Vec<SliverPairMetadata>,
}

pub(crate) fn expand(
    config: &EncodingConfig,
    view: &SourceView<'_>,
    s: usize,
    keep_col_recovery: bool,
) -> Result<Expansion, EncodingError> {
    let n = config.n_shards_usize();
    let (rows, cols) = (config.rows(), config.cols());
    let (m_row, m_col) = (n - cols, n - rows);
    // Zero symbols encode to zero symbols with a known hash, so the padding of a small blob
    // (most of the matrix) costs neither codec calls nor hashing.
    let zero = ZeroChain::new(s, n);
    let zero = &zero;

    // Phase A: extend rows; hash each full row of n symbols.
    let mut row_recovery = vec![0u8; rows * m_row * s];
    let mut hashes_a: Vec<Hash> = vec![[0; DIGEST_LEN]; rows * n];
    let ga = group_size(rows, s, n);
    row_recovery
        .par_chunks_mut(ga * m_row * s)
        .zip(hashes_a.par_chunks_mut(ga * n))
        .enumerate()
        .try_for_each_init(
            || (Encoder::new(cols, m_row), LeafHasher::default()),
            |(enc, hasher), (gi, (rr, ha))| -> Result<(), EncodingError> {
                let r0 = gi * ga;
                let g = ha.len() / n;
                if (0..g).all(|c| is_zero(view.row(r0 + c))) {
                    ha.fill(zero.leaf());
                    return Ok(());
                }
                enc.encode_many(
                    s,
                    g,
                    |c, i| view.symbol(r0 + c, i),
                    |c, q, range, b| {
                        let at = (c * m_row + q) * s;
                        rr[at + range.start..at + range.end].copy_from_slice(b)
                    },
                )?;
                for c in 0..g {
                    let row = view.row(r0 + c);
                    let rec = &rr[c * m_row * s..(c + 1) * m_row * s];
                    hasher.hash_iter(
                        row.chunks_exact(s).chain(rec.chunks_exact(s)),
                        s,
                        &mut ha[c * n..(c + 1) * n],
                        n,
                        Some(zero),
                    );
                }
                Ok(())
            },
        )?;

    // Phase B: extend every column (source and recovery columns); hash the new symbols.
    let mut hashes_b: Vec<Hash> = vec![[0; DIGEST_LEN]; n * m_col];
    let mut col_recovery = if keep_col_recovery {
        Some(vec![0u8; cols * m_col * s])
    } else {
        None
    };
    let row_recovery_ref = &row_recovery;
    let column_symbol = |j: usize, i: usize| -> &[u8] {
        if j < cols {
            view.symbol(i, j)
        } else {
            let at = (i * m_row + (j - cols)) * s;
            &row_recovery_ref[at..at + s]
        }
    };
    let gb = group_size(n, s, n);
    let n_groups = n.div_ceil(gb);
    // Split the column-extension storage by the same groups (only source columns keep it).
    let mut cr_chunks: Vec<Option<&mut [u8]>> = Vec::with_capacity(n_groups);
    if let Some(cr) = col_recovery.as_mut() {
        let mut rest: &mut [u8] = cr.as_mut_slice();
        for gi in 0..n_groups {
            let j0 = gi * gb;
            let kept = (j0 + gb).min(cols).saturating_sub(j0);
            let (head, tail) = rest.split_at_mut(kept * m_col * s);
            cr_chunks.push(Some(head));
            rest = tail;
        }
    } else {
        cr_chunks.resize_with(n_groups, || None);
    }
    hashes_b
        .par_chunks_mut(gb * m_col)
        .zip(cr_chunks.into_par_iter())
        .enumerate()
        .try_for_each_init(
            || {
                (
                    Encoder::new(rows, m_col),
                    LeafHasher::default(),
                    Vec::<u8>::new(),
                )
            },
            |(enc, hasher, scratch), (gi, (hb, kept))| -> Result<(), EncodingError> {
                let j0 = gi * gb;
                let g = hb.len() / m_col;
                if (0..g).all(|c| (0..rows).all(|i| is_zero(column_symbol(j0 + c, i)))) {
                    hb.fill(zero.leaf());
                    if let Some(kept) = kept {
                        kept.fill(0);
                    }
                    return Ok(());
                }
                scratch.clear();
                scratch.resize(g * m_col * s, 0);
                enc.encode_many(
                    s,
                    g,
                    |c, i| column_symbol(j0 + c, i),
                    |c, q, range, b| {
                        let at = (c * m_col + q) * s;
                        scratch[at + range.start..at + range.end].copy_from_slice(b)
                    },
                )?;
                hasher.hash_symbols(scratch, s, hb, Some(zero));
                if let Some(kept) = kept {
                    kept.copy_from_slice(&scratch[..kept.len()]);
                }
                Ok(())
            },
        )?;

    let hashes = pair_hashes(n, rows, &hashes_a, &hashes_b, Some(zero));

    Ok(Expansion {
        row_recovery,
        col_recovery,
        hashes,
    })
}

/// Merkle roots of every sliver pair from the leaf hashes of the expanded matrix: primary
/// sliver `p` covers row `p`, the secondary sliver of pair `p` column `n − 1 − p`, both over all
/// `n` symbols. `hashes_a` holds rows `0..rows` row-major (`n` per row), `hashes_b` the rows
/// `rows..n` column-major (`n − rows` per column).
pub(crate) fn pair_hashes(
    n: usize,
    rows: usize,
    hashes_a: &[Hash],
    hashes_b: &[Hash],
    zero: Option<&ZeroChain>,
) -> Vec<SliverPairMetadata> {
    let m_col = n - rows;
    (0..n)
        .into_par_iter()
        .map_init(
            || (vec![[0u8; DIGEST_LEN]; n], MerkleBuilder::default()),
            |(leaves, merkle), p| {
                let primary_hash = if p < rows {
                    merkle.root(&hashes_a[p * n..(p + 1) * n], zero)
                } else {
                    for (j, leaf) in leaves.iter_mut().enumerate() {
                        *leaf = hashes_b[j * m_col + (p - rows)];
                    }
                    merkle.root(leaves, zero)
                };
                let c = n - 1 - p;
                for (r, leaf) in leaves.iter_mut().enumerate().take(rows) {
                    *leaf = hashes_a[r * n + c];
                }
                leaves[rows..].copy_from_slice(&hashes_b[c * m_col..(c + 1) * m_col]);
                SliverPairMetadata {
                    primary_hash,
                    secondary_hash: merkle.root(leaves, zero),
                }
            },
        )
        .collect()
}

/// A fully encoded blob: metadata plus every sliver pair, kept compactly and materialised per
/// sliver on demand.
pub struct EncodedBlob {
    config: EncodingConfig,
    s: usize,
    /// The blob padded to the full source matrix.
    source: Vec<u8>,
    row_recovery: Vec<u8>,
    col_recovery: Vec<u8>,
    pub metadata: BlobMetadataWithId,
}

/// Which buffer of an [`EncodedBlob`] a piece of a sliver lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Source,
    RowRecovery,
    ColRecovery,
}

/// A range of an encoded blob's memory, kept alive by its `Arc`: the owner of a `Bytes`.
struct Piece {
    blob: Arc<EncodedBlob>,
    part: Part,
    range: Range<usize>,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.blob.part(self.part)[self.range.clone()]
    }
}

impl std::fmt::Debug for EncodedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedBlob")
            .field("blob_id", &self.metadata.blob_id)
            .field("n_shards", &self.config.n_shards())
            .field("symbol_size", &self.s)
            .finish()
    }
}

impl EncodedBlob {
    pub(crate) fn new(config: &EncodingConfig, mut blob: Vec<u8>) -> Result<Self, EncodingError> {
        let len = blob.len() as u64;
        let s = usize::from(config.symbol_size(len)?);
        let (rows, cols) = (config.rows(), config.cols());
        blob.resize(rows * cols * s, 0);
        let exp = {
            let view = SourceView::new(&blob, s, cols);
            expand(config, &view, s, true)?
        };
        Ok(Self {
            config: *config,
            s,
            source: blob,
            row_recovery: exp.row_recovery,
            col_recovery: exp.col_recovery.unwrap_or_default(),
            metadata: BlobMetadataWithId::from_hashes(len, exp.hashes),
        })
    }

    pub fn n_pairs(&self) -> usize {
        self.config.n_shards_usize()
    }

    pub fn symbol_size(&self) -> u16 {
        self.s as u16
    }

    /// The data of primary sliver `index` (row `index` of the expanded matrix).
    pub fn primary_data(&self, index: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.config.cols() * self.s);
        self.extend_primary_data(index, &mut out);
        out
    }

    fn extend_primary_data(&self, index: usize, out: &mut Vec<u8>) {
        for (part, range) in self.symbol_runs(SliverType::Primary, index) {
            out.extend_from_slice(&self.part(part)[range]);
        }
    }

    /// The data of secondary sliver `index` (column `index` of the expanded matrix).
    pub fn secondary_data(&self, index: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.config.rows() * self.s);
        self.extend_secondary_data(index, &mut out);
        out
    }

    fn extend_secondary_data(&self, index: usize, out: &mut Vec<u8>) {
        for (part, range) in self.symbol_runs(SliverType::Secondary, index) {
            out.extend_from_slice(&self.part(part)[range]);
        }
    }

    /// Where the symbols of primary sliver `index` (row `index` of the expanded matrix) or of
    /// secondary sliver `index` (column `index`) lie, in order, as runs of adjacent bytes in
    /// one buffer: a systematic primary sliver is one run (a row of the source), every other
    /// sliver one run per symbol.
    fn symbol_runs(&self, sliver_type: SliverType, index: usize) -> Vec<(Part, Range<usize>)> {
        let (rows, cols, s, n) = (
            self.config.rows(),
            self.config.cols(),
            self.s,
            self.n_pairs(),
        );
        let starts: Vec<(Part, usize)> = match sliver_type {
            SliverType::Primary if index < rows => {
                return vec![(Part::Source, index * cols * s..(index + 1) * cols * s)];
            }
            SliverType::Primary => (0..cols)
                .map(|j| (Part::ColRecovery, (j * (n - rows) + index - rows) * s))
                .collect(),
            SliverType::Secondary if index < cols => (0..rows)
                .map(|r| (Part::Source, (r * cols + index) * s))
                .collect(),
            SliverType::Secondary => (0..rows)
                .map(|r| (Part::RowRecovery, (r * (n - cols) + index - cols) * s))
                .collect(),
        };
        starts
            .into_iter()
            .map(|(part, at)| (part, at..at + s))
            .collect()
    }

    /// The primary sliver of sliver pair `pair`.
    pub fn primary_sliver(&self, pair: usize) -> Sliver {
        Sliver {
            sliver_type: SliverType::Primary,
            index: pair as u16,
            symbol_size: self.s as u16,
            data: self.primary_data(pair),
        }
    }

    /// The secondary sliver of sliver pair `pair` (column `n − 1 − pair`).
    pub fn secondary_sliver(&self, pair: usize) -> Sliver {
        let index = self.n_pairs() - 1 - pair;
        Sliver {
            sliver_type: SliverType::Secondary,
            index: index as u16,
            symbol_size: self.s as u16,
            data: self.secondary_data(index),
        }
    }

    /// The length of a primary sliver's BCS bytes (the larger of the two kinds).
    pub fn primary_bcs_len(&self) -> usize {
        self.config.cols() * self.s + 9
    }

    /// The BCS bytes of the primary sliver of pair `pair` (the same as
    /// `primary_sliver(pair).to_bcs()`, with one copy of the symbols instead of two).
    pub fn primary_bcs(&self, pair: usize) -> Vec<u8> {
        let len = self.config.cols() * self.s;
        self.sliver_bcs(len, pair as u16, |out| self.extend_primary_data(pair, out))
    }

    /// The BCS bytes of the secondary sliver of pair `pair`, as [`Self::primary_bcs`].
    pub fn secondary_bcs(&self, pair: usize) -> Vec<u8> {
        let index = self.n_pairs() - 1 - pair;
        let len = self.config.rows() * self.s;
        self.sliver_bcs(len, index as u16, |out| {
            self.extend_secondary_data(index, out)
        })
    }

    /// The BCS bytes of the primary (`SliverType::Primary`) or secondary sliver of pair
    /// `pair`, as pieces that share this blob's memory instead of copying it: the symbols
    /// are borrowed in place, between the length header and the trailer. The same bytes as
    /// [`Self::primary_bcs`] and [`Self::secondary_bcs`].
    ///
    /// Why: an upload sends every sliver once, and building each body in a buffer of its own
    /// copied every encoded byte (about 4.5× the blob) a second time before the socket's
    /// own copy.
    pub fn sliver_bcs_pieces(self: &Arc<Self>, pair: usize, sliver_type: SliverType) -> Vec<Bytes> {
        let (len, index) = match sliver_type {
            SliverType::Primary => (self.config.cols() * self.s, pair),
            SliverType::Secondary => (self.config.rows() * self.s, self.n_pairs() - 1 - pair),
        };
        let mut header = Vec::with_capacity(5);
        write_bcs_header(&mut header, len);
        let mut pieces = vec![Bytes::from(header)];
        pieces.extend(
            self.symbol_runs(sliver_type, index)
                .into_iter()
                .map(|(part, range)| self.piece(part, range)),
        );
        let mut trailer = Vec::with_capacity(4);
        trailer.extend_from_slice(&(self.s as u16).to_le_bytes());
        trailer.extend_from_slice(&(index as u16).to_le_bytes());
        pieces.push(Bytes::from(trailer));
        pieces
    }

    fn piece(self: &Arc<Self>, part: Part, range: Range<usize>) -> Bytes {
        Bytes::from_owner(Piece {
            blob: self.clone(),
            part,
            range,
        })
    }

    fn part(&self, part: Part) -> &[u8] {
        match part {
            Part::Source => &self.source,
            Part::RowRecovery => &self.row_recovery,
            Part::ColRecovery => &self.col_recovery,
        }
    }

    fn sliver_bcs(&self, len: usize, index: u16, data: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 9);
        write_bcs_header(&mut out, len);
        let header = out.len();
        data(&mut out);
        debug_assert_eq!(out.len(), header + len);
        out.extend_from_slice(&(self.s as u16).to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
        out
    }
}

impl EncodingConfig {
    /// Encodes a blob into `n` sliver pairs and its metadata.
    pub fn encode(&self, blob: &[u8]) -> Result<EncodedBlob, EncodingError> {
        self.check_len(blob.len() as u64)?;
        EncodedBlob::new(self, blob.to_vec())
    }

    /// Like [`Self::encode`], reusing the caller's buffer as the source matrix.
    pub fn encode_owned(&self, blob: Vec<u8>) -> Result<EncodedBlob, EncodingError> {
        self.check_len(blob.len() as u64)?;
        EncodedBlob::new(self, blob)
    }

    /// Metadata and blob ID only: all symbol hashes, but no slivers kept.
    pub fn compute_metadata(&self, blob: &[u8]) -> Result<BlobMetadataWithId, EncodingError> {
        let len = blob.len() as u64;
        self.check_len(len)?;
        let s = usize::from(self.symbol_size(len)?);
        let view = SourceView::new(blob, s, self.cols());
        let exp = expand(self, &view, s, false)?;
        Ok(BlobMetadataWithId::from_hashes(len, exp.hashes))
    }

    /// The blob ID of `blob` under these parameters.
    pub fn blob_id(&self, blob: &[u8]) -> Result<super::BlobId, EncodingError> {
        Ok(self.compute_metadata(blob)?.blob_id)
    }

    fn check_len(&self, len: u64) -> Result<(), EncodingError> {
        if len > self.max_blob_size() {
            return Err(EncodingError::BlobTooLarge {
                len,
                max: self.max_blob_size(),
                n_shards: self.n_shards(),
            });
        }
        Ok(())
    }
}
