//! Blake2b-256 Merkle trees exactly as walrus-core builds them.
//!
//! Leaves are `H(0x00 || data)`, inner nodes `H(0x01 || left || right)`; a level with an odd
//! number of nodes is padded with the all-zero "empty" node. The hot paths hash thousands of
//! independent short inputs, so they go through `blake2b_simd::many`, which hashes four inputs
//! at once with AVX2.

use blake2b_simd::Params;
use blake2b_simd::many::{HashManyJob, hash_many, update_many};
use serde::{Deserialize, Serialize};

pub const DIGEST_LEN: usize = 32;
const LEAF_PREFIX: u8 = 0;
const INNER_PREFIX: u8 = 1;

/// A Merkle tree node, serialized as walrus-core's `Node` enum (`Empty` or `Digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Node {
    Empty,
    Digest([u8; DIGEST_LEN]),
}

impl Node {
    pub fn bytes(&self) -> [u8; DIGEST_LEN] {
        match self {
            Node::Empty => [0; DIGEST_LEN],
            Node::Digest(d) => *d,
        }
    }
}

fn params() -> Params {
    let mut p = Params::new();
    p.hash_length(DIGEST_LEN);
    p
}

/// Blake2b with a 32-byte output (not truncated Blake2b-512: the length is a parameter).
pub fn blake2b256(data: &[u8]) -> [u8; DIGEST_LEN] {
    to_array(params().hash(data).as_bytes())
}

fn to_array(b: &[u8]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(&b[..DIGEST_LEN]);
    out
}

/// Hashes many inputs at once into `out` (same length as `inputs`).
pub fn hash_many_into(inputs: &[&[u8]], out: &mut [[u8; DIGEST_LEN]]) {
    debug_assert_eq!(inputs.len(), out.len());
    let p = params();
    let mut jobs: Vec<HashManyJob> = inputs.iter().map(|i| HashManyJob::new(&p, i)).collect();
    hash_many(jobs.iter_mut());
    for (o, j) in out.iter_mut().zip(&jobs) {
        *o = to_array(j.to_hash().as_bytes());
    }
}

/// Symbols at least this long are hashed where they lie (the prefix byte goes into each hash
/// state first); shorter ones are copied behind their prefix byte. Hashing in place saves a
/// copy of every byte through memory (a verified sliver's symbols and their recovery symbols
/// are MBs, more than the caches hold) and costs one block compressed alone at each end of
/// every input: a few percent of a 4 KiB input, much more of the short symbols of small blobs.
const HASH_IN_PLACE_MIN: usize = 4096;

/// Reusable scratch space for leaf hashing: short inputs are copied behind their prefix byte
/// once, which is cheaper than hashing them lane by lane; long ones are hashed in place.
#[derive(Default)]
pub struct LeafHasher {
    buf: Vec<u8>,
    todo: Vec<usize>,
    out: Vec<[u8; DIGEST_LEN]>,
    states: Vec<blake2b_simd::State>,
}

impl LeafHasher {
    /// Leaf hashes of equally sized `symbols` (given as one contiguous buffer) into `out`.
    pub fn hash_symbols(
        &mut self,
        symbols: &[u8],
        symbol_size: usize,
        out: &mut [[u8; DIGEST_LEN]],
        zero: Option<&ZeroChain>,
    ) {
        let count = symbols.len() / symbol_size;
        debug_assert_eq!(count, out.len());
        self.hash_iter(
            symbols.chunks_exact(symbol_size),
            symbol_size,
            out,
            count,
            zero,
        );
    }

    /// Leaf hashes of `count` symbols of `symbol_size` bytes yielded by `symbols`.
    pub fn hash_iter<'a>(
        &mut self,
        symbols: impl Iterator<Item = &'a [u8]>,
        symbol_size: usize,
        out: &mut [[u8; DIGEST_LEN]],
        count: usize,
        zero: Option<&ZeroChain>,
    ) {
        if symbol_size >= HASH_IN_PLACE_MIN {
            self.hash_in_place(symbols, out, count, zero);
            return;
        }
        let slot = symbol_size + 1;
        self.buf.clear();
        self.buf.reserve(slot * count);
        self.todo.clear();
        for (i, s) in symbols.take(count).enumerate() {
            // All-zero symbols (padding of small blobs) have a known hash.
            if let Some(z) = zero
                && s.iter().all(|&b| b == 0)
            {
                out[i] = z.leaf();
                continue;
            }
            self.todo.push(i);
            self.buf.push(LEAF_PREFIX);
            self.buf.extend_from_slice(s);
        }
        if self.todo.len() == count {
            let inputs: Vec<&[u8]> = self.buf.chunks_exact(slot).collect();
            hash_many_into(&inputs, out);
        } else if !self.todo.is_empty() {
            let inputs: Vec<&[u8]> = self.buf.chunks_exact(slot).collect();
            self.out.clear();
            self.out.resize(inputs.len(), [0; DIGEST_LEN]);
            hash_many_into(&inputs, &mut self.out);
            for (&i, h) in self.todo.iter().zip(&self.out) {
                out[i] = *h;
            }
        }
    }

    /// [`Self::hash_iter`] without copying the symbols: each hash state takes the prefix byte,
    /// then `update_many` runs the symbols through the states four at a time (AVX2), reading
    /// them where they are.
    fn hash_in_place<'a>(
        &mut self,
        symbols: impl Iterator<Item = &'a [u8]>,
        out: &mut [[u8; DIGEST_LEN]],
        count: usize,
        zero: Option<&ZeroChain>,
    ) {
        let p = params();
        self.states.clear();
        self.todo.clear();
        let mut inputs: Vec<&[u8]> = Vec::with_capacity(count);
        for (i, s) in symbols.take(count).enumerate() {
            if let Some(z) = zero
                && s.iter().all(|&b| b == 0)
            {
                out[i] = z.leaf();
                continue;
            }
            let mut state = p.to_state();
            state.update(&[LEAF_PREFIX]);
            self.states.push(state);
            self.todo.push(i);
            inputs.push(s);
        }
        update_many(self.states.iter_mut().zip(inputs));
        for (&i, state) in self.todo.iter().zip(&self.states) {
            out[i] = to_array(state.finalize().as_bytes());
        }
    }
}

/// Leaf hashes of symbols that arrive in pieces, the same byte range of every symbol at a
/// time (the stripes of [`super::codec::Encoder::encode_striped`]), four symbols at once.
#[derive(Default)]
pub struct StripeHasher {
    states: Vec<blake2b_simd::State>,
}

impl StripeHasher {
    /// Starts `count` leaf hashes.
    pub fn start(&mut self, count: usize) {
        let p = params();
        self.states.clear();
        self.states.resize_with(count, || {
            let mut state = p.to_state();
            state.update(&[LEAF_PREFIX]);
            state
        });
    }

    /// Feeds the next piece of symbols `first..first + pieces.len()`.
    pub fn update<'a>(&mut self, first: usize, pieces: impl IntoIterator<Item = &'a [u8]>) {
        update_many(self.states[first..].iter_mut().zip(pieces));
    }

    /// The leaf hashes, in order.
    pub fn finish(&self, out: &mut [[u8; DIGEST_LEN]]) {
        for (o, state) in out.iter_mut().zip(&self.states) {
            *o = to_array(state.finalize().as_bytes());
        }
    }
}

/// Leaf hash of one input.
pub fn leaf_hash(data: &[u8]) -> [u8; DIGEST_LEN] {
    let mut s = params().to_state();
    s.update(&[LEAF_PREFIX]);
    s.update(data);
    to_array(s.finalize().as_bytes())
}

/// Root of the tree over already-hashed leaves, as `MerkleTree::build_from_leaf_hashes`.
pub fn root_from_leaf_hashes(leaves: &[[u8; DIGEST_LEN]]) -> Node {
    MerkleBuilder::default().root(leaves, None)
}

/// Hashes of all-zero subtrees, level by level: level 0 is the leaf hash of an all-zero symbol.
/// Sparse blobs (a small file padded to a large matrix) produce mostly zero symbols; their
/// subtrees are looked up instead of hashed.
#[derive(Debug, Clone)]
pub struct ZeroChain {
    levels: Vec<[u8; DIGEST_LEN]>,
}

impl ZeroChain {
    pub fn new(symbol_size: usize, max_leaves: usize) -> Self {
        let mut levels = vec![leaf_hash(&vec![0u8; symbol_size])];
        let mut width = max_leaves;
        while width > 1 {
            let last = levels[levels.len() - 1];
            levels.push(inner_hash(&last, &last));
            width = width.div_ceil(2);
        }
        Self { levels }
    }

    /// The leaf hash of an all-zero symbol.
    pub fn leaf(&self) -> [u8; DIGEST_LEN] {
        self.levels[0]
    }
}

fn inner_hash(l: &[u8; DIGEST_LEN], r: &[u8; DIGEST_LEN]) -> [u8; DIGEST_LEN] {
    let mut buf = [0u8; 1 + 2 * DIGEST_LEN];
    buf[0] = INNER_PREFIX;
    buf[1..1 + DIGEST_LEN].copy_from_slice(l);
    buf[1 + DIGEST_LEN..].copy_from_slice(r);
    blake2b256(&buf)
}

/// Reusable buffers for computing many Merkle roots.
#[derive(Default)]
pub struct MerkleBuilder {
    level: Vec<[u8; DIGEST_LEN]>,
    next: Vec<[u8; DIGEST_LEN]>,
    buf: Vec<u8>,
    todo: Vec<usize>,
    out: Vec<[u8; DIGEST_LEN]>,
}

impl MerkleBuilder {
    /// Root over leaf hashes; with `zero`, all-zero subtrees are looked up rather than hashed.
    pub fn root(&mut self, leaves: &[[u8; DIGEST_LEN]], zero: Option<&ZeroChain>) -> Node {
        match leaves.len() {
            0 => return Node::Empty,
            1 => return Node::Digest(leaves[0]),
            _ => {}
        }
        self.level.clear();
        self.level.extend_from_slice(leaves);
        let mut depth = 0;
        while self.level.len() > 1 {
            if self.level.len() % 2 == 1 {
                self.level.push([0; DIGEST_LEN]);
            }
            let z = zero.and_then(|z| Some((z.levels.get(depth)?, z.levels.get(depth + 1)?)));
            self.next.clear();
            self.buf.clear();
            self.todo.clear();
            for (i, pair) in self.level.chunks_exact(2).enumerate() {
                match z {
                    Some((zl, zn)) if pair[0] == *zl && pair[1] == *zl => self.next.push(*zn),
                    _ => {
                        self.next.push([0; DIGEST_LEN]);
                        self.todo.push(i);
                        self.buf.push(INNER_PREFIX);
                        self.buf.extend_from_slice(&pair[0]);
                        self.buf.extend_from_slice(&pair[1]);
                    }
                }
            }
            if !self.todo.is_empty() {
                let inputs: Vec<&[u8]> = self.buf.chunks_exact(1 + 2 * DIGEST_LEN).collect();
                self.out.clear();
                self.out.resize(inputs.len(), [0; DIGEST_LEN]);
                hash_many_into(&inputs, &mut self.out);
                for (&i, h) in self.todo.iter().zip(&self.out) {
                    self.next[i] = *h;
                }
            }
            std::mem::swap(&mut self.level, &mut self.next);
            depth += 1;
        }
        Node::Digest(self.level[0])
    }
}

/// Root of the tree over `leaves` (raw data, hashed as leaves here).
pub fn root_of<T: AsRef<[u8]>>(leaves: &[T]) -> Node {
    let hashes: Vec<[u8; DIGEST_LEN]> = leaves.iter().map(|l| leaf_hash(l.as_ref())).collect();
    root_from_leaf_hashes(&hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A straightforward reading of walrus-core's `MerkleTree::build`, to check the batched one.
    fn naive_root(leaves: &[&[u8]]) -> Node {
        if leaves.is_empty() {
            return Node::Empty;
        }
        let mut level: Vec<[u8; 32]> = leaves.iter().map(|l| leaf_hash(l)).collect();
        while level.len() > 1 {
            if level.len() % 2 == 1 {
                level.push([0; 32]);
            }
            level = level
                .chunks(2)
                .map(|p| {
                    let mut s = params().to_state();
                    s.update(&[1]);
                    s.update(&p[0]);
                    s.update(&p[1]);
                    to_array(s.finalize().as_bytes())
                })
                .collect();
        }
        Node::Digest(level[0])
    }

    #[test]
    fn batched_root_equals_naive_root() {
        for n in 0..40usize {
            let data: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; i % 7]).collect();
            let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
            assert_eq!(root_of(&refs), naive_root(&refs), "n={n}");
        }
    }

    #[test]
    fn zero_chain_shortcut_gives_the_same_root() {
        let z = ZeroChain::new(6, 1000);
        for n in [2usize, 3, 7, 64, 100, 1000] {
            for nonzero in [vec![], vec![0], vec![n - 1], vec![n / 2, n / 3]] {
                let mut leaves = vec![z.leaf(); n];
                for &i in &nonzero {
                    leaves[i] = leaf_hash(&[i as u8; 6]);
                }
                assert_eq!(
                    MerkleBuilder::default().root(&leaves, Some(&z)),
                    root_from_leaf_hashes(&leaves),
                    "n={n} nonzero={nonzero:?}"
                );
            }
        }
    }

    #[test]
    fn leaf_hasher_matches_single_leaf_hash() {
        let symbols: Vec<u8> = (0..=255u8).cycle().take(6 * 10).collect();
        let mut out = vec![[0u8; 32]; 10];
        LeafHasher::default().hash_symbols(&symbols, 6, &mut out, None);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(*o, leaf_hash(&symbols[i * 6..i * 6 + 6]));
        }
    }

    #[test]
    fn long_symbols_hashed_in_place_match_single_leaf_hash() {
        // Around the in-place threshold and the 128-byte block size, with all-zero symbols
        // among them (looked up, not hashed, when a zero chain is given).
        for s in [
            HASH_IN_PLACE_MIN - 2,
            HASH_IN_PLACE_MIN,
            HASH_IN_PLACE_MIN + 127,
            3 * HASH_IN_PLACE_MIN + 2,
        ] {
            let count = 9;
            let mut symbols: Vec<u8> = (0..s * count).map(|i| (i * 7 % 251) as u8).collect();
            symbols[2 * s..3 * s].fill(0);
            let z = ZeroChain::new(s, count);
            let mut hasher = LeafHasher::default();
            for zero in [None, Some(&z)] {
                let mut out = vec![[0u8; 32]; count];
                hasher.hash_symbols(&symbols, s, &mut out, zero);
                for (i, o) in out.iter().enumerate() {
                    assert_eq!(*o, leaf_hash(&symbols[i * s..(i + 1) * s]), "s={s} i={i}");
                }
            }
        }
    }

    #[test]
    fn blake2b256_is_the_32_byte_parameterised_variant() {
        // Blake2b-256("abc") from RFC 7693's parameterisation (digest length 32).
        let h = blake2b256(b"abc");
        assert_eq!(
            h.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319"
        );
    }
}
