//! Batched, striped Reed–Solomon over `reed-solomon-simd`, producing exactly the bytes that one
//! call per codeword with whole symbols as shards would produce (which is what walrus-core does).
//!
//! Why this is exact: the codec works on GF(2^16) elements. A shard of `L` bytes is cut into
//! 64-byte chunks whose bytes `i` and `i + 32` form one element, plus a tail of `t = L % 64`
//! bytes whose bytes `i` and `i + t/2` form one element. The same linear map is applied to every
//! element position independently. So (a) a symbol may be split at multiples of 64 bytes and
//! each part encoded on its own (striping, to stay in cache), and (b) many codewords may share a
//! call: their whole chunks concatenated, their tails packed element by element into further
//! whole chunks (batching, since every call has a fixed cost and a 2-byte shard costs as much
//! as a 64-byte one).

use std::ops::Range;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::EncodingError;

fn codec_err(e: reed_solomon_simd::Error) -> EncodingError {
    EncodingError::Codec(e.to_string())
}

/// Places the elements of a short symbol (`sym.len() < 64`: element `e` is bytes `e` and
/// `e + len/2`) at element positions `first..` of a packed shard of whole 64-byte chunks
/// (element `g` is bytes `64⌊g/32⌋ + g mod 32` and that plus 32).
#[inline]
fn pack(shard: &mut [u8], first: usize, sym: &[u8]) {
    let h = sym.len() / 2;
    let (lo, hi) = sym.split_at(h);
    for e in 0..h {
        let g = first + e;
        let at = (g >> 5) * 64 + (g & 31);
        shard[at] = lo[e];
        shard[at + 32] = hi[e];
    }
}

/// The inverse of [`pack`].
#[inline]
fn unpack(shard: &[u8], first: usize, sym: &mut [u8]) {
    let h = sym.len() / 2;
    let (lo, hi) = sym.split_at_mut(h);
    for e in 0..h {
        let g = first + e;
        let at = (g >> 5) * 64 + (g & 31);
        lo[e] = shard[at];
        hi[e] = shard[at + 32];
    }
}

/// How a run of codewords with `s`-byte symbols and `k` input shards is cut into codec calls.
enum Plan {
    /// One call per group of `g` codewords: every shard is the concatenation of the
    /// codewords' whole 64-byte chunks followed by their tails packed element by element.
    Batch { g: usize },
    /// One call per stripe of one codeword (stripes end on multiples of 64; the last one keeps
    /// the tail, which the codec handles itself).
    Stripe { stripes: Vec<Range<usize>> },
}

fn plan(s: usize, k: usize, target: usize) -> Plan {
    let per_codeword = s * k;
    if per_codeword * 2 <= target {
        return Plan::Batch {
            g: (target / per_codeword).max(1),
        };
    }
    let per = (target / k.max(1)).max(64) / 64 * 64;
    let mut stripes = Vec::new();
    let mut a = 0;
    while a < s {
        let mut b = (a + per).min(s);
        // Never leave a tail-only stripe: the tail must stay attached to whole chunks.
        if s - b < 64 {
            b = s;
        }
        stripes.push(a..b);
        a = b;
    }
    Plan::Stripe { stripes }
}

/// Byte layout of a batched shard of `g` codewords: whole parts first, then packed tails.
#[derive(Clone, Copy)]
struct Batch {
    s: usize,
    g: usize,
    whole: usize,
}

impl Batch {
    fn new(s: usize, g: usize) -> Self {
        Self {
            s,
            g,
            whole: s / 64 * 64,
        }
    }

    fn shard_len(&self) -> usize {
        let h = (self.s - self.whole) / 2;
        self.g * self.whole + (self.g * h).div_ceil(32) * 64
    }

    /// Writes symbol `sym` of codeword `c` into `shard`.
    fn put(&self, shard: &mut [u8], c: usize, sym: &[u8]) {
        let w = self.whole;
        shard[c * w..(c + 1) * w].copy_from_slice(&sym[..w]);
        let tail = &sym[w..];
        if !tail.is_empty() {
            pack(&mut shard[self.g * w..], c * (tail.len() / 2), tail);
        }
    }

    /// Hands codeword `c`'s symbol in `shard` to `out` as (range, bytes) pieces.
    fn get(
        &self,
        shard: &[u8],
        c: usize,
        tmp: &mut [u8],
        mut out: impl FnMut(Range<usize>, &[u8]),
    ) {
        let w = self.whole;
        if w > 0 {
            out(0..w, &shard[c * w..(c + 1) * w]);
        }
        let t = self.s - w;
        if t > 0 {
            unpack(&shard[self.g * w..], c * (t / 2), &mut tmp[..t]);
            out(w..self.s, &tmp[..t]);
        }
    }
}

/// Bytes per encoder call: large enough to amortise the transform, small enough to stay in L2.
const ENCODE_TARGET_BYTES: usize = 256 * 1024;
/// Bytes per decoder call: each call first computes the erasure locator over the whole field
/// (tens of microseconds whatever the shard size), so decoding batches more.
const DECODE_TARGET_BYTES: usize = 2 * 1024 * 1024;

/// Builds the codec's lookup tables (process-wide, once; several MB, some milliseconds).
pub fn prepare_codec() {
    let _ = ReedSolomonEncoder::new(1, 1, 64);
}

/// A systematic encoder for `k` source symbols and `m` recovery symbols.
pub(crate) struct Encoder {
    k: usize,
    m: usize,
    rs: Option<ReedSolomonEncoder>,
    packed: Vec<u8>,
    tmp: Vec<u8>,
}

impl Encoder {
    pub(crate) fn new(k: usize, m: usize) -> Self {
        Self {
            k,
            m,
            rs: None,
            packed: Vec::new(),
            tmp: vec![0; 64],
        }
    }

    fn rs(
        rs: &mut Option<ReedSolomonEncoder>,
        k: usize,
        m: usize,
        shard_bytes: usize,
    ) -> Result<&mut ReedSolomonEncoder, EncodingError> {
        match rs {
            Some(rs) => {
                rs.reset(k, m, shard_bytes).map_err(codec_err)?;
                Ok(rs)
            }
            None => Ok(rs.insert(ReedSolomonEncoder::new(k, m, shard_bytes).map_err(codec_err)?)),
        }
    }

    /// Encodes `count` codewords of symbol size `s`. `src(c, i)` is source symbol `i` of
    /// codeword `c` (exactly `s` bytes); `out(c, r, range, bytes)` receives `bytes` for the
    /// byte range `range` of recovery symbol `r` of codeword `c`.
    pub(crate) fn encode_many<'a, S, O>(
        &mut self,
        s: usize,
        count: usize,
        src: S,
        mut out: O,
    ) -> Result<(), EncodingError>
    where
        S: Fn(usize, usize) -> &'a [u8],
        O: FnMut(usize, usize, Range<usize>, &[u8]),
    {
        let (k, m) = (self.k, self.m);
        match plan(s, k, ENCODE_TARGET_BYTES) {
            Plan::Stripe { stripes } => {
                for c in 0..count {
                    for r in &stripes {
                        let rs = Self::rs(&mut self.rs, k, m, r.len())?;
                        for i in 0..k {
                            rs.add_original_shard(&src(c, i)[r.clone()])
                                .map_err(codec_err)?;
                        }
                        let res = rs.encode().map_err(codec_err)?;
                        for (q, rec) in res.recovery_iter().enumerate() {
                            out(c, q, r.clone(), rec);
                        }
                    }
                }
            }
            Plan::Batch { g } => {
                let mut c0 = 0;
                while c0 < count {
                    let b = Batch::new(s, g.min(count - c0));
                    let len = b.shard_len();
                    self.packed.clear();
                    self.packed.resize(len * k, 0);
                    for i in 0..k {
                        let shard = &mut self.packed[i * len..(i + 1) * len];
                        for c in 0..b.g {
                            b.put(shard, c, src(c0 + c, i));
                        }
                    }
                    let rs = Self::rs(&mut self.rs, k, m, len)?;
                    for shard in self.packed.chunks_exact(len) {
                        rs.add_original_shard(shard).map_err(codec_err)?;
                    }
                    let res = rs.encode().map_err(codec_err)?;
                    for (q, rec) in res.recovery_iter().enumerate() {
                        for c in 0..b.g {
                            b.get(rec, c, &mut self.tmp, |range, bytes| {
                                out(c0 + c, q, range, bytes)
                            });
                        }
                    }
                    c0 += b.g;
                }
            }
        }
        Ok(())
    }
}

impl Encoder {
    /// Encodes one codeword whose `k` source symbols of `s` bytes lie back to back in `data`,
    /// in stripes of whole 128-byte blocks (the last one keeps the tail), so that a caller
    /// can hash each stripe's source and recovery pieces while they are in cache instead of
    /// copying the recovery symbols out. `each(range, recovery)` gets the byte range of the
    /// stripe within every symbol and the `m` recovery pieces of that range. Returns `false`,
    /// having done nothing, if the symbols are too short to stripe (encode them with
    /// [`Self::encode_many`]).
    pub(crate) fn encode_striped(
        &mut self,
        s: usize,
        data: &[u8],
        mut each: impl FnMut(Range<usize>, &[&[u8]]),
    ) -> Result<bool, EncodingError> {
        let (k, m) = (self.k, self.m);
        debug_assert_eq!(data.len(), k * s);
        // The same cut as `plan`'s stripes, rounded to Blake2b's 128-byte blocks.
        if s * k * 2 <= ENCODE_TARGET_BYTES || s < 256 {
            return Ok(false);
        }
        let per = (ENCODE_TARGET_BYTES / k.max(1)).max(128) / 128 * 128;
        let mut a = 0;
        while a < s {
            let mut b = (a + per).min(s);
            if s - b < 128 {
                b = s;
            }
            let rs = Self::rs(&mut self.rs, k, m, b - a)?;
            for i in 0..k {
                rs.add_original_shard(&data[i * s + a..i * s + b])
                    .map_err(codec_err)?;
            }
            let res = rs.encode().map_err(codec_err)?;
            let recovery: Vec<&[u8]> = res.recovery_iter().collect();
            each(a..b, &recovery);
            a = b;
        }
        Ok(true)
    }
}

/// Recovers the missing source symbols of many codewords that share one erasure pattern.
pub(crate) struct Decoder {
    k: usize,
    m: usize,
    rs: Option<ReedSolomonDecoder>,
    packed: Vec<u8>,
    tmp: Vec<u8>,
}

impl Decoder {
    pub(crate) fn new(k: usize, m: usize) -> Self {
        Self {
            k,
            m,
            rs: None,
            packed: Vec::new(),
            tmp: vec![0; 64],
        }
    }

    fn rs(
        rs: &mut Option<ReedSolomonDecoder>,
        k: usize,
        m: usize,
        shard_bytes: usize,
    ) -> Result<&mut ReedSolomonDecoder, EncodingError> {
        match rs {
            Some(rs) => {
                rs.reset(k, m, shard_bytes).map_err(codec_err)?;
                Ok(rs)
            }
            None => Ok(rs.insert(ReedSolomonDecoder::new(k, m, shard_bytes).map_err(codec_err)?)),
        }
    }

    /// `present` lists `k` distinct symbol indices (`< k`: source, otherwise recovery `idx - k`).
    /// `src(c, p)` is the symbol at `present[p]` of codeword `c`. `out(c, i, range, bytes)`
    /// receives the byte range of every source symbol `i` missing from `present`.
    pub(crate) fn decode_many<'a, S, O>(
        &mut self,
        s: usize,
        count: usize,
        present: &[usize],
        src: S,
        mut out: O,
    ) -> Result<(), EncodingError>
    where
        S: Fn(usize, usize) -> &'a [u8],
        O: FnMut(usize, usize, Range<usize>, &[u8]),
    {
        let (k, m) = (self.k, self.m);
        let missing: Vec<usize> = (0..k).filter(|i| !present.contains(i)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let add = |rs: &mut ReedSolomonDecoder, idx: usize, shard: &[u8]| {
            if idx < k {
                rs.add_original_shard(idx, shard)
            } else {
                rs.add_recovery_shard(idx - k, shard)
            }
            .map_err(codec_err)
        };
        let restored = |res: &reed_solomon_simd::DecoderResult<'_>, i: usize| {
            res.restored_original(i)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| EncodingError::Codec(format!("symbol {i} not restored")))
        };
        match plan(s, present.len(), DECODE_TARGET_BYTES) {
            Plan::Stripe { stripes } => {
                for c in 0..count {
                    for r in &stripes {
                        let rs = Self::rs(&mut self.rs, k, m, r.len())?;
                        for (p, &idx) in present.iter().enumerate() {
                            add(rs, idx, &src(c, p)[r.clone()])?;
                        }
                        let res = rs.decode().map_err(codec_err)?;
                        for &i in &missing {
                            out(c, i, r.clone(), &restored(&res, i)?);
                        }
                    }
                }
            }
            Plan::Batch { g } => {
                let mut c0 = 0;
                while c0 < count {
                    let b = Batch::new(s, g.min(count - c0));
                    let len = b.shard_len();
                    self.packed.clear();
                    self.packed.resize(len * present.len(), 0);
                    for p in 0..present.len() {
                        let shard = &mut self.packed[p * len..(p + 1) * len];
                        for c in 0..b.g {
                            b.put(shard, c, src(c0 + c, p));
                        }
                    }
                    let rs = Self::rs(&mut self.rs, k, m, len)?;
                    for (p, &idx) in present.iter().enumerate() {
                        add(rs, idx, &self.packed[p * len..(p + 1) * len])?;
                    }
                    let res = rs.decode().map_err(codec_err)?;
                    for &i in &missing {
                        let rec = res.restored_original(i).ok_or_else(|| {
                            EncodingError::Codec(format!("symbol {i} not restored"))
                        })?;
                        for c in 0..b.g {
                            b.get(rec, c, &mut self.tmp, |range, bytes| {
                                out(c0 + c, i, range, bytes)
                            });
                        }
                    }
                    c0 += b.g;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One plain codec call per codeword with whole symbols: the reference behaviour.
    fn reference(k: usize, m: usize, s: usize, data: &[u8]) -> Vec<u8> {
        let mut enc = ReedSolomonEncoder::new(k, m, s).unwrap();
        for sym in data.chunks(s) {
            enc.add_original_shard(sym).unwrap();
        }
        let res = enc.encode().unwrap();
        res.recovery_iter().flatten().copied().collect()
    }

    #[test]
    fn batched_and_striped_encoding_matches_plain_calls() {
        let mut seed = 1u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as u8
        };
        for &(k, m) in &[(2, 2), (3, 7), (5, 5), (67, 33), (334, 666)] {
            for &s in &[2usize, 4, 6, 30, 62, 64, 66, 126, 128, 190, 604, 4820] {
                if k * s > 2_000_000 {
                    continue;
                }
                let count = 5;
                let data: Vec<Vec<u8>> = (0..count)
                    .map(|_| (0..k * s).map(|_| rnd()).collect())
                    .collect();
                let mut got = vec![vec![0u8; m * s]; count];
                Encoder::new(k, m)
                    .encode_many(
                        s,
                        count,
                        |c, i| &data[c][i * s..(i + 1) * s],
                        |c, r, range, b| {
                            got[c][r * s + range.start..r * s + range.end].copy_from_slice(b)
                        },
                    )
                    .unwrap();
                for c in 0..count {
                    assert_eq!(
                        got[c],
                        reference(k, m, s, &data[c]),
                        "k={k} m={m} s={s} c={c}"
                    );
                }
                // Decode from the last k of the n symbols (as many recovery symbols as possible).
                let n = k + m;
                let present: Vec<usize> = (n - k..n).collect();
                let full: Vec<Vec<u8>> = (0..count)
                    .map(|c| [data[c].clone(), got[c].clone()].concat())
                    .collect();
                let mut dec = vec![vec![0u8; k * s]; count];
                for c in 0..count {
                    for &i in &present {
                        if i < k {
                            dec[c][i * s..(i + 1) * s]
                                .copy_from_slice(&full[c][i * s..(i + 1) * s]);
                        }
                    }
                }
                Decoder::new(k, m)
                    .decode_many(
                        s,
                        count,
                        &present,
                        |c, p| &full[c][present[p] * s..(present[p] + 1) * s],
                        |c, i, range, b| {
                            dec[c][i * s + range.start..i * s + range.end].copy_from_slice(b)
                        },
                    )
                    .unwrap();
                for c in 0..count {
                    assert_eq!(dec[c], data[c], "decode k={k} m={m} s={s} c={c}");
                }
            }
        }
    }
}
