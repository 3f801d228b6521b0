//! Slivers and their BCS form (walrus-core's `SliverData`: symbols, symbol size, index).

use super::codec::Encoder;
use super::error::SliverDefect;
use super::merkle::{DIGEST_LEN, LeafHasher, Node, StripeHasher, root_from_leaf_hashes};
use super::{BlobMetadata, EncodingConfig, EncodingError, SliverType};

/// One sliver: a row (primary) or column (secondary) of the expanded symbol matrix.
#[derive(Clone, PartialEq, Eq)]
pub struct Sliver {
    pub sliver_type: SliverType,
    /// Sliver index: the row (primary) or column (secondary) of the expanded matrix.
    pub index: u16,
    pub symbol_size: u16,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Sliver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sliver")
            .field("type", &self.sliver_type)
            .field("index", &self.index)
            .field("symbol_size", &self.symbol_size)
            .field("len", &self.data.len())
            .finish()
    }
}

/// Largest sliver body we parse: a primary sliver at the maximum symbol size and 4096 shards.
const MAX_SLIVER_BYTES: usize = 4096 * 65_534;

impl Sliver {
    /// The sliver-pair index this sliver belongs to (secondary slivers are paired in reverse).
    /// The index must be below `n_shards` (check first); an out-of-range secondary index gives
    /// pair 0 rather than a panic.
    pub fn pair_index(&self, n_shards: u16) -> u16 {
        pair_index(self.sliver_type, self.index, n_shards)
    }

    /// The BCS bytes around the symbols: the ULEB128 length prefix before them, and symbol
    /// size and index (u16 LE each) after them. `prefix ‖ data ‖ suffix` is [`Self::to_bcs`].
    pub fn bcs_framing(&self) -> (Vec<u8>, [u8; 4]) {
        let mut prefix = Vec::with_capacity(5);
        write_bcs_header(&mut prefix, self.data.len());
        let [a, b] = self.symbol_size.to_le_bytes();
        let [c, d] = self.index.to_le_bytes();
        (prefix, [a, b, c, d])
    }

    /// BCS bytes: ULEB128 length, the symbols, symbol size (u16 LE), index (u16 LE).
    pub fn to_bcs(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 10);
        write_bcs_header(&mut out, self.data.len());
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.symbol_size.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out
    }

    /// Parses BCS bytes from an untrusted source. Checks framing only; call
    /// [`Sliver::verify`] before using the data.
    pub fn from_bcs(bytes: &[u8], sliver_type: SliverType) -> Result<Self, EncodingError> {
        SliverView::from_bcs(bytes, sliver_type).map(|v| v.to_sliver())
    }

    /// The same sliver, borrowed.
    pub fn view(&self) -> SliverView<'_> {
        SliverView {
            sliver_type: self.sliver_type,
            index: self.index,
            symbol_size: self.symbol_size,
            data: &self.data,
        }
    }

    /// The Merkle root over the `n` symbols of this sliver's encoding in the orthogonal code.
    pub fn merkle_root(&self, config: &EncodingConfig) -> Result<Node, EncodingError> {
        self.view().merkle_root(config)
    }

    /// Checks this sliver against (already verified) metadata: index, length, symbol size and
    /// Merkle root.
    pub fn verify(
        &self,
        config: &EncodingConfig,
        metadata: &BlobMetadata,
    ) -> Result<(), EncodingError> {
        self.view().verify(config, metadata)
    }
}

/// A sliver whose symbols live in someone else's buffer: the read pipeline receives slivers
/// straight into the blob it returns and verifies them there, without a copy per sliver.
#[derive(Clone, Copy)]
pub struct SliverView<'a> {
    pub sliver_type: SliverType,
    pub index: u16,
    pub symbol_size: u16,
    pub data: &'a [u8],
}

/// Buffers of sliver verification, kept per thread: a verification needs a few MB of scratch,
/// and fresh allocations of that size are fresh pages from the kernel every time, whose
/// faults cost about as much as the hashing.
#[derive(Default)]
struct VerifyScratch {
    /// Encoders by shape `(k, n − k)`: a node verifies primary and secondary slivers in turn,
    /// and rebuilding the codec's state for each shape change cost more than the encoding.
    encoders: Vec<((usize, usize), Encoder)>,
    recovery: Vec<u8>,
    hasher: LeafHasher,
    stripes: StripeHasher,
    leaves: Vec<[u8; DIGEST_LEN]>,
}

thread_local! {
    static VERIFY_SCRATCH: std::cell::RefCell<VerifyScratch> =
        std::cell::RefCell::new(VerifyScratch::default());
}

impl<'a> SliverView<'a> {
    /// Parses BCS bytes from an untrusted source without copying the symbols: the view
    /// borrows them from `bytes`. Checks framing only, exactly as [`Sliver::from_bcs`]; call
    /// [`SliverView::verify`] before using the data.
    pub fn from_bcs(bytes: &'a [u8], sliver_type: SliverType) -> Result<Self, EncodingError> {
        let (len, header) = read_uleb128(bytes)?;
        if len > MAX_SLIVER_BYTES {
            return Err(EncodingError::bcs(
                "sliver",
                format!("length {len} is too large"),
            ));
        }
        let expected = header + len + 4;
        if bytes.len() != expected {
            return Err(EncodingError::bcs(
                "sliver",
                format!(
                    "expected {expected} bytes for a sliver of {len} bytes, got {}",
                    bytes.len()
                ),
            ));
        }
        let data = &bytes[header..header + len];
        let symbol_size = u16::from_le_bytes([bytes[header + len], bytes[header + len + 1]]);
        let index = u16::from_le_bytes([bytes[header + len + 2], bytes[header + len + 3]]);
        if symbol_size == 0 || len % usize::from(symbol_size) != 0 {
            return Err(EncodingError::bcs(
                "sliver",
                format!("{len} bytes is not a whole number of {symbol_size}-byte symbols"),
            ));
        }
        Ok(Self {
            sliver_type,
            index,
            symbol_size,
            data,
        })
    }

    /// The index of the sliver pair this sliver belongs to: see [`Sliver::pair_index`].
    pub fn pair_index(&self, n_shards: u16) -> u16 {
        pair_index(self.sliver_type, self.index, n_shards)
    }

    /// The same sliver with its own copy of the symbols.
    pub fn to_sliver(&self) -> Sliver {
        Sliver {
            sliver_type: self.sliver_type,
            index: self.index,
            symbol_size: self.symbol_size,
            data: self.data.to_vec(),
        }
    }
}

impl SliverView<'_> {
    /// The Merkle root over the `n` symbols of this sliver's encoding in the orthogonal code.
    pub fn merkle_root(&self, config: &EncodingConfig) -> Result<Node, EncodingError> {
        VERIFY_SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => self.merkle_root_with(config, &mut scratch),
            // Only reachable if hashing re-entered itself; fresh buffers are still correct.
            Err(_) => self.merkle_root_with(config, &mut VerifyScratch::default()),
        })
    }

    fn merkle_root_with(
        &self,
        config: &EncodingConfig,
        scratch: &mut VerifyScratch,
    ) -> Result<Node, EncodingError> {
        let n = config.n_shards_usize();
        let s = usize::from(self.symbol_size).max(1);
        let k = self.data.len() / s;
        let VerifyScratch {
            encoders,
            recovery,
            hasher,
            stripes,
            leaves,
        } = scratch;
        let shape = (k, n - k);
        let at = match encoders.iter().position(|(s, _)| *s == shape) {
            Some(at) => at,
            None => {
                // Two shapes per committee size; more only if the committee changes.
                if encoders.len() >= 4 {
                    encoders.remove(0);
                }
                encoders.push((shape, Encoder::new(k, n - k)));
                encoders.len() - 1
            }
        };
        let encoder = &mut encoders[at].1;
        leaves.clear();
        leaves.resize(n, [0u8; DIGEST_LEN]);
        // Large symbols: each stripe's source and recovery pieces are hashed as the encoder
        // hands them over, while they are in cache; the recovery symbols are never copied
        // out (that copy was about a tenth of a node's verification).
        stripes.start(n);
        let data = &self.data[..k * s];
        let striped = encoder.encode_striped(s, data, |range, recovery| {
            stripes.update(
                0,
                (0..k).map(|i| &data[i * s + range.start..i * s + range.end]),
            );
            stripes.update(k, recovery.iter().copied());
        })?;
        if striped {
            stripes.finish(leaves);
            return Ok(root_from_leaf_hashes(leaves));
        }
        // Every byte is overwritten by the encoder: only growth needs filling.
        recovery.resize((n - k) * s, 0);
        encoder.encode_many(
            s,
            1,
            |_, i| &self.data[i * s..(i + 1) * s],
            |_, r, range, b| recovery[r * s + range.start..r * s + range.end].copy_from_slice(b),
        )?;
        hasher.hash_iter(
            self.data.chunks_exact(s).chain(recovery.chunks_exact(s)),
            s,
            leaves,
            n,
            None,
        );
        Ok(root_from_leaf_hashes(leaves))
    }

    /// Checks this sliver against (already verified) metadata: index, length, symbol size and
    /// Merkle root.
    pub fn verify(
        &self,
        config: &EncodingConfig,
        metadata: &BlobMetadata,
    ) -> Result<(), EncodingError> {
        let defect = |reason| EncodingError::InvalidSliver {
            sliver_type: self.sliver_type,
            index: self.index,
            reason,
        };
        // Metadata should have been verified already; a wrong hash count must still be an
        // error here, never an out-of-bounds index.
        if metadata.hashes().len() != config.n_shards_usize() {
            return Err(EncodingError::WrongShardCount {
                actual: metadata.hashes().len(),
                expected: config.n_shards_usize(),
            });
        }
        if usize::from(self.index) >= metadata.hashes().len() || self.index >= config.n_shards() {
            return Err(defect(SliverDefect::IndexTooLarge));
        }
        let blob_len = metadata.unencoded_length();
        let expected_len = config.sliver_len(self.sliver_type, blob_len)?;
        if self.data.len() != expected_len {
            return Err(defect(SliverDefect::WrongLength {
                actual: self.data.len(),
                expected: expected_len,
            }));
        }
        let expected_symbol = config.symbol_size(blob_len)?;
        if self.symbol_size != expected_symbol {
            return Err(defect(SliverDefect::WrongSymbolSize {
                actual: self.symbol_size,
                expected: expected_symbol,
            }));
        }
        let pair = usize::from(pair_index(self.sliver_type, self.index, config.n_shards()));
        if self.merkle_root(config)? != *metadata.hashes()[pair].hash(self.sliver_type) {
            return Err(defect(SliverDefect::HashMismatch));
        }
        Ok(())
    }
}

fn pair_index(sliver_type: SliverType, index: u16, n_shards: u16) -> u16 {
    match sliver_type {
        SliverType::Primary => index,
        SliverType::Secondary => n_shards.saturating_sub(1).saturating_sub(index),
    }
}

pub(crate) fn write_bcs_header(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Decodes a canonical BCS ULEB128 length (at most `u32::MAX`), returning it and its size.
pub(crate) fn read_uleb128(bytes: &[u8]) -> Result<(usize, usize), EncodingError> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(5) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(EncodingError::bcs("sliver", "non-canonical length prefix"));
            }
            if value > u64::from(u32::MAX) {
                return Err(EncodingError::bcs("sliver", "length prefix overflows u32"));
            }
            return Ok((value as usize, i + 1));
        }
    }
    Err(EncodingError::bcs(
        "sliver",
        "truncated or overlong length prefix",
    ))
}

/// Parses a sliver's BCS bytes as they arrive in pieces (an HTTP body), writing the symbols
/// straight to where they are wanted: a received sliver then costs one copy, not three
/// (collecting the body, cutting the symbols out of it, placing them in the blob). Framing is
/// checked exactly as [`Sliver::from_bcs`] does; the symbols are not verified.
pub struct SliverBcsReader<'a> {
    sliver_type: SliverType,
    /// The symbols' destination, of exactly the expected length; `None`: a new vector.
    dest: Option<&'a mut [u8]>,
    owned: Vec<u8>,
    /// At most this much is reserved for `owned` up front, whatever the length prefix says.
    reserve_cap: usize,
    header: [u8; 5],
    header_len: usize,
    len: Option<usize>,
    filled: usize,
    trailer: [u8; 4],
    trailer_len: usize,
}

impl SliverBcsReader<'static> {
    /// A reader that collects the symbols into a new vector.
    pub fn new(sliver_type: SliverType) -> Self {
        Self::with_dest(sliver_type, None)
    }
}

impl<'a> SliverBcsReader<'a> {
    /// A reader that writes the symbols into `dest`; a sliver of any other length is refused
    /// as soon as its length prefix arrives.
    pub fn into_slice(sliver_type: SliverType, dest: &'a mut [u8]) -> Self {
        Self::with_dest(sliver_type, Some(dest))
    }

    /// Reserves at most `bytes` for the symbols when the length prefix arrives (a body from
    /// an untrusted peer may announce more than the caller will accept).
    pub fn reserve_at_most(mut self, bytes: usize) -> Self {
        self.reserve_cap = bytes;
        self
    }

    fn with_dest(sliver_type: SliverType, dest: Option<&'a mut [u8]>) -> Self {
        Self {
            sliver_type,
            dest,
            owned: Vec::new(),
            reserve_cap: usize::MAX,
            header: [0; 5],
            header_len: 0,
            len: None,
            filled: 0,
            trailer: [0; 4],
            trailer_len: 0,
        }
    }

    fn start(&mut self, len: usize) -> Result<(), EncodingError> {
        if len > MAX_SLIVER_BYTES {
            return Err(EncodingError::bcs(
                "sliver",
                format!("length {len} is too large"),
            ));
        }
        match &self.dest {
            Some(d) if d.len() != len => {
                return Err(EncodingError::bcs(
                    "sliver",
                    format!(
                        "it has {len} bytes of symbols, the blob's slivers have {}",
                        d.len()
                    ),
                ));
            }
            Some(_) => {}
            None => self.owned.reserve_exact(len.min(self.reserve_cap)),
        }
        self.len = Some(len);
        Ok(())
    }

    /// Takes the next piece of the body.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), EncodingError> {
        while let Some((&first, rest)) = chunk.split_first() {
            let Some(len) = self.len else {
                self.header[self.header_len] = first;
                self.header_len += 1;
                chunk = rest;
                if first & 0x80 == 0 || self.header_len == self.header.len() {
                    let (len, _) = read_uleb128(&self.header[..self.header_len])?;
                    self.start(len)?;
                }
                continue;
            };
            if self.filled < len {
                let take = (len - self.filled).min(chunk.len());
                let (now, rest) = chunk.split_at(take);
                match &mut self.dest {
                    Some(d) => d[self.filled..self.filled + take].copy_from_slice(now),
                    None => self.owned.extend_from_slice(now),
                }
                self.filled += take;
                chunk = rest;
            } else {
                let take = (self.trailer.len() - self.trailer_len).min(chunk.len());
                if take == 0 {
                    return Err(EncodingError::bcs(
                        "sliver",
                        format!("bytes follow the end of a sliver of {len} bytes"),
                    ));
                }
                self.trailer[self.trailer_len..self.trailer_len + take]
                    .copy_from_slice(&chunk[..take]);
                self.trailer_len += take;
                chunk = &chunk[take..];
            }
        }
        Ok(())
    }

    /// Where the next symbol bytes go, while they go to a destination slice: a caller may
    /// read from a socket straight into it, then call [`Self::advance`]. `None` before the
    /// length prefix is complete, once the symbols are, and when collecting into a vector.
    pub fn symbols_spare(&mut self) -> Option<&mut [u8]> {
        let len = self.len?;
        let filled = self.filled;
        let dest = self.dest.as_deref_mut()?;
        (filled < len).then(|| &mut dest[filled..len])
    }

    /// Counts `n` bytes written into [`Self::symbols_spare`] as received.
    pub fn advance(&mut self, n: usize) {
        let room = self.len.map_or(0, |len| len - self.filled);
        debug_assert!(n <= room && self.dest.is_some());
        self.filled += n.min(room);
    }

    /// The end of the body: symbol size and index, once the framing is complete and sound.
    fn finish_framing(&self) -> Result<(u16, u16), EncodingError> {
        let len = match self.len {
            Some(len) if self.filled == len && self.trailer_len == self.trailer.len() => len,
            _ => {
                return Err(EncodingError::bcs(
                    "sliver",
                    match self.len {
                        None => "the body ends inside the length prefix".to_string(),
                        Some(len) => format!(
                            "the body ends after {} of {} bytes",
                            self.header_len + self.filled + self.trailer_len,
                            self.header_len + len + self.trailer.len()
                        ),
                    },
                ));
            }
        };
        let symbol_size = u16::from_le_bytes([self.trailer[0], self.trailer[1]]);
        let index = u16::from_le_bytes([self.trailer[2], self.trailer[3]]);
        if symbol_size == 0 || len % usize::from(symbol_size) != 0 {
            return Err(EncodingError::bcs(
                "sliver",
                format!("{len} bytes is not a whole number of {symbol_size}-byte symbols"),
            ));
        }
        Ok((symbol_size, index))
    }

    /// The sliver whose symbols went to a new vector.
    pub fn finish(self) -> Result<Sliver, EncodingError> {
        let (symbol_size, index) = self.finish_framing()?;
        let data = match self.dest {
            Some(d) => d.to_vec(),
            None => self.owned,
        };
        Ok(Sliver {
            sliver_type: self.sliver_type,
            index,
            symbol_size,
            data,
        })
    }

    /// Symbol size and index of the sliver whose symbols went to the destination slice.
    pub fn finish_in_place(self) -> Result<(u16, u16), EncodingError> {
        self.finish_framing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcs_round_trip_and_framing_errors() {
        let s = Sliver {
            sliver_type: SliverType::Primary,
            index: 3,
            symbol_size: 4,
            data: (0..200u8).collect(),
        };
        let b = s.to_bcs();
        assert_eq!(b[0], 0xc8);
        assert_eq!(b[1], 0x01);
        assert_eq!(Sliver::from_bcs(&b, SliverType::Primary).unwrap(), s);
        assert!(Sliver::from_bcs(&b[..b.len() - 1], SliverType::Primary).is_err());
        assert!(Sliver::from_bcs(&[], SliverType::Primary).is_err());
        assert!(Sliver::from_bcs(&[0x80, 0x00, 0, 0, 0, 0], SliverType::Primary).is_err());
        let mut odd = b.clone();
        let n = odd.len();
        odd[n - 4] = 3; // symbol size 3 does not divide 200
        assert!(Sliver::from_bcs(&odd, SliverType::Primary).is_err());
    }

    #[test]
    fn verify_never_panics_on_unverified_metadata() {
        let config = EncodingConfig::new(4).unwrap();
        let h = super::super::SliverPairMetadata {
            primary_hash: Node::Empty,
            secondary_hash: Node::Empty,
        };
        let short = BlobMetadata::new(0, vec![h; 2]);
        let s = Sliver {
            sliver_type: SliverType::Secondary,
            index: 0,
            symbol_size: 2,
            data: vec![0; 4],
        };
        assert!(matches!(
            s.verify(&config, &short),
            Err(EncodingError::WrongShardCount {
                actual: 2,
                expected: 4
            })
        ));
        let far = Sliver { index: 9, ..s };
        assert_eq!(far.pair_index(4), 0);
    }

    #[test]
    fn bcs_matches_the_bcs_crate() {
        #[derive(serde::Serialize)]
        struct Symbols {
            data: Vec<u8>,
            symbol_size: u16,
        }
        #[derive(serde::Serialize)]
        struct SliverData {
            symbols: Symbols,
            index: u16,
        }
        let data: Vec<u8> = (0..300).map(|i| i as u8).collect();
        let ours = Sliver {
            sliver_type: SliverType::Secondary,
            index: 999,
            symbol_size: 6,
            data: data.clone(),
        }
        .to_bcs();
        let theirs = bcs::to_bytes(&SliverData {
            symbols: Symbols {
                data,
                symbol_size: 6,
            },
            index: 999,
        })
        .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn streamed_bcs_equals_whole_bcs_in_any_pieces() {
        let s = Sliver {
            sliver_type: SliverType::Primary,
            index: 77,
            symbol_size: 5,
            data: (0..300u32).map(|i| (i * 31) as u8).collect(),
        };
        let b = s.to_bcs();
        for piece in [1usize, 2, 3, 7, 64, b.len()] {
            let mut r = SliverBcsReader::new(SliverType::Primary);
            for c in b.chunks(piece) {
                r.feed(c).unwrap();
            }
            assert_eq!(r.finish().unwrap(), s, "pieces of {piece}");

            let mut dest = vec![0u8; 300];
            let mut r = SliverBcsReader::into_slice(SliverType::Primary, &mut dest);
            for c in b.chunks(piece) {
                r.feed(c).unwrap();
            }
            assert_eq!(r.finish_in_place().unwrap(), (5, 77));
            assert_eq!(dest, s.data);
        }
        // Truncated anywhere, or with bytes after the end: refused.
        for cut in 0..b.len() {
            let mut r = SliverBcsReader::new(SliverType::Primary);
            r.feed(&b[..cut]).unwrap();
            assert!(r.finish().is_err(), "cut at {cut}");
        }
        let mut r = SliverBcsReader::new(SliverType::Primary);
        assert!(r.feed(&[b.as_slice(), &[0]].concat()).is_err());
        // A destination of another length refuses the sliver at its length prefix.
        let mut short = vec![0u8; 299];
        let mut r = SliverBcsReader::into_slice(SliverType::Primary, &mut short);
        assert!(r.feed(&b[..2]).is_err());
        // Symbol size 0 or not dividing the length.
        let mut bad = b.clone();
        let n = bad.len();
        bad[n - 4] = 7;
        bad[n - 3] = 0;
        let mut r = SliverBcsReader::new(SliverType::Primary);
        r.feed(&bad).unwrap();
        assert!(r.finish().is_err());
    }

    #[test]
    fn view_verifies_like_the_sliver_and_scratch_is_reused_safely() {
        let config = EncodingConfig::new(10).unwrap();
        // Short symbols (one batched encoder call), and long ones (hashed stripe by stripe
        // as they are encoded; a flipped byte in the first and in the last stripe).
        for len in [5000u32, (1 << 20) + 3] {
            let blob: Vec<u8> = (0..len).map(|i| (i * 13 + i / 7919) as u8).collect();
            let enc = config.encode(&blob).unwrap();
            let md = &enc.metadata.metadata;
            // Alternate shapes (primary and secondary) on one thread: the scratch is re-keyed.
            for i in 0..10 {
                let p = enc.primary_sliver(i);
                p.verify(&config, md).unwrap();
                p.view().verify(&config, md).unwrap();
                let sec = enc.secondary_sliver(i);
                sec.verify(&config, md).unwrap();
                for sliver in [&p, &sec] {
                    for at in [0, sliver.data.len() - 1] {
                        let mut bad = sliver.clone();
                        bad.data[at] ^= 1;
                        assert!(bad.view().verify(&config, md).is_err(), "{len} {i} {at}");
                    }
                }
            }
        }
    }
}
