//! Batched, striped Reed–Solomon over `reed-solomon-simd`, producing exactly the bytes that one
//! call per codeword with whole symbols as shards would produce (which is what walrus-core does).
//!
//! Why this is exact: the codec works on GF(2^16) elements. A shard of `L` bytes is cut into
//! 64-byte chunks whose bytes `i` and `i + 32` form one element, plus a tail of `t = L % 64`
//! bytes whose bytes `i` and `i + t/2` form one element. The same linear map is applied to every
//! element position independently. So (a) a symbol may be split at multiples of 64 bytes and
//! each part encoded on its own (striping, to stay in cache), and (b) the tails of many
//! codewords may be packed, element by element, into one shard of whole chunks and encoded in a
//! single call (batching, since a call on a 2-byte shard costs as much as one on 64 bytes).

use std::ops::Range;

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::EncodingError;

/// Bytes of source data per codec call the striping aims at: large enough to amortise the
/// transform, small enough for the working set to stay in L2.
const STRIPE_TARGET_BYTES: usize = 256 * 1024;

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

/// Splits a symbol of `s` bytes into stripes for direct codec calls, plus a range to pack.
///
/// Symbols of 64 bytes or more are cut at multiples of 64 (the last stripe keeps the tail, which
/// the codec pads itself; that costs less than packing). Shorter symbols would each be padded to
/// 64 bytes by the codec, so they are packed across codewords instead.
fn stripes(s: usize, k: usize) -> (Vec<Range<usize>>, Range<usize>) {
    if s < 64 {
        return (Vec::new(), 0..s);
    }
    let per = (STRIPE_TARGET_BYTES / k.max(1)).max(64) / 64 * 64;
    let mut v = Vec::new();
    let mut a = 0;
    while a < s {
        let mut b = (a + per).min(s);
        // Never leave a tail-only stripe: it must stay attached to whole chunks.
        if s - b < 64 {
            b = s;
        }
        v.push(a..b);
        a = b;
    }
    (v, s..s)
}

/// Codeword layout for packing tails: how many codewords share one packed call.
fn tail_group(t: usize, k: usize) -> usize {
    if t == 0 {
        return 1;
    }
    // Aim for packed shards of a few KiB, bounded by the per-call byte target.
    let by_shard = (4096 / t).max(1);
    let by_call = (STRIPE_TARGET_BYTES / (k * t).max(1)).max(1);
    by_shard.min(by_call).max(1)
}

/// A systematic encoder for `k` source symbols and `m` recovery symbols.
pub(crate) struct Encoder {
    k: usize,
    m: usize,
    rs: Option<ReedSolomonEncoder>,
    packed: Vec<u8>,
}

impl Encoder {
    pub(crate) fn new(k: usize, m: usize) -> Self {
        Self {
            k,
            m,
            rs: None,
            packed: Vec::new(),
        }
    }

    fn rs(&mut self, shard_bytes: usize) -> Result<&mut ReedSolomonEncoder, EncodingError> {
        match self.rs {
            Some(ref mut rs) => rs.reset(self.k, self.m, shard_bytes).map_err(codec_err)?,
            None => {
                self.rs =
                    Some(ReedSolomonEncoder::new(self.k, self.m, shard_bytes).map_err(codec_err)?)
            }
        }
        // Just set above.
        self.rs
            .as_mut()
            .ok_or_else(|| EncodingError::Codec("encoder missing".into()))
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
        let k = self.k;
        let (whole, tail) = stripes(s, k);
        for c in 0..count {
            for r in &whole {
                let rs = self.rs(r.len())?;
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
        let t = tail.len();
        if t == 0 {
            return Ok(());
        }
        let h = t / 2;
        let group = tail_group(t, k);
        let mut tmp = vec![0u8; t];
        let mut packed = std::mem::take(&mut self.packed);
        let mut c0 = 0;
        while c0 < count {
            let g = group.min(count - c0);
            let len = (g * h).div_ceil(32) * 64;
            packed.clear();
            packed.resize(len * k, 0);
            for i in 0..k {
                let shard = &mut packed[i * len..(i + 1) * len];
                for gc in 0..g {
                    pack(shard, gc * h, &src(c0 + gc, i)[tail.clone()]);
                }
            }
            let rs = self.rs(len)?;
            for i in 0..k {
                rs.add_original_shard(&packed[i * len..(i + 1) * len])
                    .map_err(codec_err)?;
            }
            let res = rs.encode().map_err(codec_err)?;
            for (q, rec) in res.recovery_iter().enumerate() {
                for gc in 0..g {
                    unpack(rec, gc * h, &mut tmp);
                    out(c0 + gc, q, tail.clone(), &tmp);
                }
            }
            c0 += g;
        }
        self.packed = packed;
        Ok(())
    }
}

/// Recovers the missing source symbols of many codewords that share one erasure pattern.
pub(crate) struct Decoder {
    k: usize,
    m: usize,
    rs: Option<ReedSolomonDecoder>,
}

impl Decoder {
    pub(crate) fn new(k: usize, m: usize) -> Self {
        Self { k, m, rs: None }
    }

    fn rs(&mut self, shard_bytes: usize) -> Result<&mut ReedSolomonDecoder, EncodingError> {
        match self.rs {
            Some(ref mut rs) => rs.reset(self.k, self.m, shard_bytes).map_err(codec_err)?,
            None => {
                self.rs =
                    Some(ReedSolomonDecoder::new(self.k, self.m, shard_bytes).map_err(codec_err)?)
            }
        }
        self.rs
            .as_mut()
            .ok_or_else(|| EncodingError::Codec("decoder missing".into()))
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
        let k = self.k;
        let missing: Vec<usize> = (0..k).filter(|i| !present.contains(i)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let (whole, tail) = stripes(s, k);
        for c in 0..count {
            for r in &whole {
                let rs = self.rs(r.len())?;
                for (p, &idx) in present.iter().enumerate() {
                    let shard = &src(c, p)[r.clone()];
                    if idx < k {
                        rs.add_original_shard(idx, shard).map_err(codec_err)?;
                    } else {
                        rs.add_recovery_shard(idx - k, shard).map_err(codec_err)?;
                    }
                }
                let res = rs.decode().map_err(codec_err)?;
                for &i in &missing {
                    let restored = res
                        .restored_original(i)
                        .ok_or_else(|| EncodingError::Codec(format!("symbol {i} not restored")))?;
                    out(c, i, r.clone(), restored);
                }
            }
        }
        let t = tail.len();
        if t == 0 {
            return Ok(());
        }
        let h = t / 2;
        let group = tail_group(t, k);
        let mut tmp = vec![0u8; t];
        let mut packed: Vec<u8> = Vec::new();
        let mut c0 = 0;
        while c0 < count {
            let g = group.min(count - c0);
            let len = (g * h).div_ceil(32) * 64;
            packed.clear();
            packed.resize(len * present.len(), 0);
            for p in 0..present.len() {
                let shard = &mut packed[p * len..(p + 1) * len];
                for gc in 0..g {
                    pack(shard, gc * h, &src(c0 + gc, p)[tail.clone()]);
                }
            }
            let rs = self.rs(len)?;
            for (p, &idx) in present.iter().enumerate() {
                let shard = &packed[p * len..(p + 1) * len];
                if idx < k {
                    rs.add_original_shard(idx, shard).map_err(codec_err)?;
                } else {
                    rs.add_recovery_shard(idx - k, shard).map_err(codec_err)?;
                }
            }
            let res = rs.decode().map_err(codec_err)?;
            for &i in &missing {
                let restored = res
                    .restored_original(i)
                    .ok_or_else(|| EncodingError::Codec(format!("symbol {i} not restored")))?;
                for gc in 0..g {
                    unpack(restored, gc * h, &mut tmp);
                    out(c0 + gc, i, tail.clone(), &tmp);
                }
            }
            c0 += g;
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
                if k * s > 600_000 {
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
