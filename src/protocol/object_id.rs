//! Sui object IDs: the 32-byte addresses of on-chain objects such as `Blob` and `Storage`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The ID of a ledger object (a Sui object ID on the real network).
///
/// BCS: 32 raw bytes (as walrus-core's `SuiObjectId` and Move's `ID`). Displayed and parsed as
/// `0x` followed by 64 lowercase hex digits, Sui's canonical form; parsing also accepts fewer
/// digits (left-padded with zeros) and a missing `0x`, as Sui tools do.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(transparent)]
pub struct ObjectId(pub [u8; ObjectId::LENGTH]);

impl ObjectId {
    pub const LENGTH: usize = 32;

    pub fn as_bytes(&self) -> &[u8; Self::LENGTH] {
        &self.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// A string that is not an object ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an object ID: expected 0x followed by up to 64 hex digits")]
pub struct ObjectIdParseError {
    pub input: String,
}

impl FromStr for ObjectId {
    type Err = ObjectIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ObjectIdParseError {
            input: s.chars().take(80).collect(),
        };
        let hex = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        if hex.is_empty() || hex.len() > 2 * Self::LENGTH {
            return Err(err());
        }
        let mut out = [0u8; Self::LENGTH];
        // Walk from the least significant digit so short forms are left-padded with zeros.
        for (i, c) in hex.bytes().rev().enumerate() {
            let v = (c as char).to_digit(16).ok_or_else(err)? as u8;
            let byte = Self::LENGTH - 1 - i / 2;
            out[byte] |= if i % 2 == 0 { v } else { v << 4 };
        }
        Ok(Self(out))
    }
}

impl TryFrom<&[u8]> for ObjectId {
    type Error = ObjectIdParseError;

    fn try_from(value: &[u8]) -> Result<Self, Self::Error> {
        <[u8; Self::LENGTH]>::try_from(value)
            .map(Self)
            .map_err(|_| ObjectIdParseError {
                input: format!("<{} bytes>", value.len()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let mut b = [0u8; 32];
        b[0] = 0xab;
        b[31] = 0x01;
        let id = ObjectId(b);
        let s = id.to_string();
        assert_eq!(s.len(), 66);
        assert!(s.starts_with("0xab00"));
        assert_eq!(s.parse::<ObjectId>().unwrap(), id);
        assert_eq!(s[2..].parse::<ObjectId>().unwrap(), id);
    }

    #[test]
    fn short_forms_are_left_padded() {
        let mut b = [0u8; 32];
        b[31] = 0x42;
        b[30] = 0x01;
        assert_eq!("0x142".parse::<ObjectId>().unwrap(), ObjectId(b));
    }

    #[test]
    fn rejects_bad_strings() {
        for bad in ["", "0x", "0xg1", &"1".repeat(65)] {
            assert!(bad.parse::<ObjectId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bcs_is_32_raw_bytes() {
        let id = ObjectId([9; 32]);
        assert_eq!(bcs::to_bytes(&id).unwrap(), vec![9u8; 32]);
    }
}
