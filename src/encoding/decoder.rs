//! Decoding from primary slivers, the systematic fast path, and byte-range mapping.

use std::collections::BTreeMap;
use std::ops::Range;

use rayon::prelude::*;

use super::codec::Decoder;
use super::{BlobMetadata, EncodingConfig, EncodingError, Sliver, SliverType};

/// Where a byte range of the blob lives: a part of one primary sliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliverRange {
    /// Primary sliver index (= sliver-pair index).
    pub sliver: u16,
    /// Bytes within that sliver.
    pub in_sliver: Range<usize>,
    /// The same bytes' position in the blob.
    pub in_blob: Range<u64>,
}

impl EncodingConfig {
    /// The primary slivers holding `range` of a blob of `blob_len` bytes, and which of their
    /// bytes. Source bytes sit unchanged in primary slivers `0..n − 2f` (the systematic part),
    /// one row of `(n − f) · symbol_size` bytes each, so an intact range read needs no decoding.
    pub fn primary_slivers_for_range(
        &self,
        blob_len: u64,
        range: Range<u64>,
    ) -> Result<Vec<SliverRange>, EncodingError> {
        if range.start > range.end || range.end > blob_len {
            return Err(EncodingError::RangeOutOfBounds {
                start: range.start,
                end: range.end,
                len: blob_len,
            });
        }
        let row = self.cols() as u64 * u64::from(self.symbol_size(blob_len)?);
        let mut out = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let r = at / row;
            let end = ((r + 1) * row).min(range.end);
            out.push(SliverRange {
                sliver: r as u16,
                in_sliver: (at - r * row) as usize..(end - r * row) as usize,
                in_blob: at..end,
            });
            at = end;
        }
        Ok(out)
    }

    /// Decodes the blob from primary slivers that were each already verified against
    /// `metadata` (see [`Sliver::verify`]). Any `n − 2f` distinct ones suffice; surplus and
    /// duplicates are ignored. When the systematic slivers `0..n − 2f` are all present, this is
    /// a copy, not a decode.
    pub fn decode_verified(
        &self,
        metadata: &BlobMetadata,
        slivers: impl IntoIterator<Item = Sliver>,
    ) -> Result<Vec<u8>, EncodingError> {
        let len = metadata.unencoded_length();
        let s = usize::from(self.symbol_size(len)?);
        let (rows, cols) = (self.rows(), self.cols());
        let n = self.n_shards_usize();
        let sliver_len = cols * s;
        // Prefer systematic slivers: each one is a row we need not compute.
        let mut chosen: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
        let mut spare: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
        for sl in slivers {
            let i = usize::from(sl.index);
            if sl.sliver_type != SliverType::Primary
                || i >= n
                || sl.data.len() != sliver_len
                || usize::from(sl.symbol_size) != s
            {
                continue;
            }
            if i < rows {
                chosen.entry(i).or_insert(sl.data);
            } else {
                spare.entry(i).or_insert(sl.data);
            }
        }
        for (i, d) in spare {
            if chosen.len() >= rows {
                break;
            }
            chosen.insert(i, d);
        }
        if chosen.len() < rows {
            return Err(EncodingError::NotEnoughSlivers {
                have: chosen.len(),
                need: rows,
            });
        }
        let present: Vec<usize> = chosen.keys().copied().take(rows).collect();
        let data: Vec<&[u8]> = present.iter().map(|i| chosen[i].as_slice()).collect();

        let mut out = vec![0u8; rows * sliver_len];
        for (p, &i) in present.iter().enumerate() {
            if i < rows {
                out[i * sliver_len..(i + 1) * sliver_len].copy_from_slice(data[p]);
            }
        }
        let missing: Vec<usize> = (0..rows).filter(|i| !present.contains(i)).collect();
        if !missing.is_empty() {
            // Each source column is one codeword of the primary code; columns decode in
            // parallel groups into per-group buffers that are then placed into the rows.
            // Every decoder call first computes the erasure locator (a fixed ~0.2 ms), so small
            // blobs decode in as few calls as possible; large ones still split for both cores.
            let per_col = rows * s;
            let mut group = ((2 << 20) / per_col).clamp(1, cols);
            if cols * per_col > 4 << 20 {
                group = group.min(cols.div_ceil(4));
            }
            let groups: Vec<(usize, Vec<u8>)> = (0..cols.div_ceil(group))
                .into_par_iter()
                .map_init(
                    || Decoder::new(rows, n - rows),
                    |dec, gi| -> Result<(usize, Vec<u8>), EncodingError> {
                        let j0 = gi * group;
                        let g = group.min(cols - j0);
                        let mut buf = vec![0u8; missing.len() * g * s];
                        dec.decode_many(
                            s,
                            g,
                            &present,
                            |c, p| &data[p][(j0 + c) * s..(j0 + c + 1) * s],
                            |c, i, range, b| {
                                if let Ok(mi) = missing.binary_search(&i) {
                                    let at = (mi * g + c) * s;
                                    buf[at + range.start..at + range.end].copy_from_slice(b);
                                }
                            },
                        )?;
                        Ok((j0, buf))
                    },
                )
                .collect::<Result<_, _>>()?;
            for (j0, buf) in groups {
                let g = buf.len() / (missing.len() * s);
                for (mi, &i) in missing.iter().enumerate() {
                    let src = &buf[mi * g * s..(mi + 1) * g * s];
                    let at = i * sliver_len + j0 * s;
                    out[at..at + g * s].copy_from_slice(src);
                }
            }
        }
        out.truncate(len as usize);
        Ok(out)
    }

    /// Verifies each sliver against `metadata` (which must itself be verified against the blob
    /// ID) and decodes from the valid ones, skipping corrupt slivers.
    pub fn verify_and_decode(
        &self,
        metadata: &BlobMetadata,
        slivers: impl IntoIterator<Item = Sliver>,
    ) -> Result<Vec<u8>, EncodingError> {
        let candidates: Vec<Sliver> = slivers.into_iter().collect();
        let valid: Vec<Sliver> = candidates
            .into_par_iter()
            .filter(|s| s.verify(self, metadata).is_ok())
            .collect();
        self.decode_verified(metadata, valid)
    }
}
