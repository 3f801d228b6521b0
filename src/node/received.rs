//! A sliver as a PUT delivered it: its BCS bytes, kept in a page-aligned buffer.
//!
//! Why: those bytes are exactly the file the store writes. Received into a page-aligned
//! buffer, they are verified where they lie (a [`SliverView`] borrows the symbols) and go to
//! the disk in one `O_DIRECT` write straight from the buffer. Received into a `Vec` of
//! symbols, they were copied again into a staging buffer and written a chunk at a time; that
//! copy and the waits on each chunk were about a tenth of a node's CPU time in a store.

use std::ops::Range;

use crate::direct_io::{AlignedBytes, aligned_with_capacity};
use crate::encoding::{EncodingError, Sliver, SliverType, SliverView};

/// A sliver's BCS bytes whose framing was checked; its symbols are not verified yet.
pub struct ReceivedSliver {
    bcs: AlignedBytes,
    sliver_type: SliverType,
    index: u16,
    symbol_size: u16,
    /// Where the symbols are in `bcs`.
    data: Range<usize>,
}

impl std::fmt::Debug for ReceivedSliver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedSliver")
            .field("type", &self.sliver_type)
            .field("index", &self.index)
            .field("symbol_size", &self.symbol_size)
            .field("len", &self.data.len())
            .finish()
    }
}

impl ReceivedSliver {
    /// Checks the framing of `bcs` as [`Sliver::from_bcs`] does.
    pub fn new(bcs: AlignedBytes, sliver_type: SliverType) -> Result<Self, EncodingError> {
        let view = SliverView::from_bcs(&bcs, sliver_type)?;
        let start = view.data.as_ptr() as usize - bcs.as_ptr() as usize;
        let (index, symbol_size, data) =
            (view.index, view.symbol_size, start..start + view.data.len());
        Ok(Self {
            bcs,
            sliver_type,
            index,
            symbol_size,
            data,
        })
    }

    /// The BCS bytes of `sliver`, copied into a buffer of their own.
    pub fn from_sliver(sliver: &Sliver) -> Self {
        let (prefix, suffix) = sliver.bcs_framing();
        let mut bcs = aligned_with_capacity(prefix.len() + sliver.data.len() + suffix.len());
        bcs.extend_from_slice(&prefix);
        bcs.extend_from_slice(&sliver.data);
        bcs.extend_from_slice(&suffix);
        let data = prefix.len()..prefix.len() + sliver.data.len();
        Self {
            bcs,
            sliver_type: sliver.sliver_type,
            index: sliver.index,
            symbol_size: sliver.symbol_size,
            data,
        }
    }

    pub fn sliver_type(&self) -> SliverType {
        self.sliver_type
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    /// The sliver, its symbols borrowed from the buffer.
    pub fn view(&self) -> SliverView<'_> {
        SliverView {
            sliver_type: self.sliver_type,
            index: self.index,
            symbol_size: self.symbol_size,
            data: &self.bcs[self.data.clone()],
        }
    }

    /// The BCS bytes as received.
    pub fn bcs(&self) -> &[u8] {
        &self.bcs
    }

    /// The buffer, for [`crate::direct_io::write_new_aligned`] (which leaves its bytes as they
    /// are).
    pub(super) fn bcs_buffer(&mut self) -> &mut AlignedBytes {
        &mut self.bcs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::EncodingConfig;

    fn aligned(bytes: &[u8]) -> AlignedBytes {
        let mut buf = aligned_with_capacity(bytes.len());
        buf.extend_from_slice(bytes);
        buf
    }

    #[test]
    fn parses_like_sliver_from_bcs_and_borrows_the_symbols() {
        let config = EncodingConfig::new(10).unwrap();
        let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 13 + i / 251) as u8).collect();
        let encoded = config.encode(&blob).unwrap();
        for sliver in [encoded.primary_sliver(3), encoded.secondary_sliver(7)] {
            let bcs = sliver.to_bcs();
            let received = ReceivedSliver::new(aligned(&bcs), sliver.sliver_type).unwrap();
            assert_eq!(received.bcs(), &bcs[..]);
            assert_eq!(received.view().to_sliver(), sliver);
            assert_eq!(received.index(), sliver.index);
            assert_eq!(received.sliver_type(), sliver.sliver_type);
            received
                .view()
                .verify(&config, &encoded.metadata.metadata)
                .unwrap();
            let copied = ReceivedSliver::from_sliver(&sliver);
            assert_eq!(copied.bcs(), &bcs[..]);
            assert_eq!(copied.view().to_sliver(), sliver);

            // Every framing defect is the same error as `Sliver::from_bcs` gives.
            let mut cases = vec![
                bcs[..bcs.len() - 1].to_vec(),
                [&bcs[..], &[0]].concat(),
                Vec::new(),
                vec![0xff; 12],
            ];
            let mut zero_symbol = bcs.clone();
            let at = bcs.len() - 4;
            zero_symbol[at..at + 2].copy_from_slice(&[0, 0]);
            cases.push(zero_symbol);
            for case in cases {
                let expected = Sliver::from_bcs(&case, sliver.sliver_type).unwrap_err();
                let got = ReceivedSliver::new(aligned(&case), sliver.sliver_type).unwrap_err();
                assert_eq!(got.to_string(), expected.to_string());
            }
        }
    }
}
