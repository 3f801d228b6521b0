//! The blob ID: Blake2b-256 over the encoding type, the unencoded length and the metadata root.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::EncodingType;
use super::merkle::{Node, blake2b256};

/// The ID of a blob, as Walrus computes it and as the ledger records it.
///
/// Displayed and parsed as URL-safe base64 without padding (43 characters), like every Walrus tool.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(transparent)]
pub struct BlobId(pub [u8; BlobId::LENGTH]);

impl BlobId {
    pub const LENGTH: usize = 32;

    /// Computes the blob ID from the metadata's root hash, as walrus-core does.
    pub fn from_root(root: &Node, encoding: EncodingType, unencoded_length: u64) -> Self {
        let mut input = [0u8; 1 + 8 + 32];
        input[0] = encoding as u8;
        input[1..9].copy_from_slice(&unencoded_length.to_le_bytes());
        input[9..].copy_from_slice(&root.bytes());
        Self(blake2b256(&input))
    }

    pub fn as_bytes(&self) -> &[u8; Self::LENGTH] {
        &self.0
    }

    /// The blob ID read as a big-endian 256-bit number modulo `modulus`: the rotation that
    /// assigns sliver pairs to shards.
    pub fn bytes_mod(&self, modulus: usize) -> usize {
        self.0
            .iter()
            .fold(0usize, |acc, &b| (acc * 256 + usize::from(b)) % modulus)
    }
}

impl AsRef<[u8]> for BlobId {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

/// A string that is not a blob ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a blob ID: expected 43 characters of URL-safe base64 (A-Z a-z 0-9 - _) encoding 32 bytes"
)]
pub struct BlobIdParseError {
    pub input: String,
}

impl FromStr for BlobId {
    type Err = BlobIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BlobIdParseError {
            input: s.chars().take(80).collect(),
        };
        let mut out = [0u8; Self::LENGTH];
        // decode_slice on a 32-byte buffer rejects longer inputs; shorter ones are caught by
        // the length check, and padding or non-canonical trailing bits by the engine itself.
        match URL_SAFE_NO_PAD.decode_slice(s.as_bytes(), &mut out) {
            Ok(Self::LENGTH) => Ok(Self(out)),
            _ => Err(err()),
        }
    }
}

impl TryFrom<&[u8]> for BlobId {
    type Error = BlobIdParseError;

    fn try_from(value: &[u8]) -> Result<Self, Self::Error> {
        <[u8; Self::LENGTH]>::try_from(value)
            .map(Self)
            .map_err(|_| BlobIdParseError {
                input: format!("<{} bytes>", value.len()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let id = BlobId([7; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 43);
        assert_eq!(s.parse::<BlobId>().unwrap(), id);
    }

    #[test]
    fn rejects_bad_strings() {
        for bad in [
            "",
            "abc",
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw",
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHB+c",
        ] {
            assert!(bad.parse::<BlobId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bytes_mod_matches_big_endian_remainder() {
        let mut b = [0u8; 32];
        b[30] = 1;
        b[31] = 2; // 258
        assert_eq!(BlobId(b).bytes_mod(7), 258 % 7);
        assert_eq!(BlobId([0xff; 32]).bytes_mod(1), 0);
    }
}
