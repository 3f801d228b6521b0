//! BLS12-381 in the "minimal public key" variant, as Walrus storage nodes sign with it.
//!
//! Public keys are compressed G1 points (48 bytes), signatures compressed G2 points (96 bytes),
//! and messages are hashed to G2 with the ciphersuite `BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_`
//! (`msg_formats.txt`). This is what fastcrypto's `bls12381::min_pk` (used by walrus-core) and
//! Sui's `bls12381_min_pk_verify` (used by the Move contract) implement, so signatures made here
//! verify there and the other way round.
//!
//! Keys and signatures are checked once, when parsed (on the curve, in the prime-order subgroup,
//! and for keys not the identity); verification then skips those checks.
//!
//! Serde: binary formats (BCS) carry the raw bytes as a fixed-size array without a length
//! prefix, human-readable ones (JSON) a standard base64 string, as fastcrypto does.

use std::fmt;
use std::hash::{Hash, Hasher};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use blst::BLST_ERROR;
use blst::min_pk;
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ProtocolError;

/// The hash-to-curve domain separation tag of Walrus signatures (`msg_formats.txt`).
pub const BLS_DST: &[u8] = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_";
/// Length of a compressed G1 point: a public key.
pub const PUBLIC_KEY_LENGTH: usize = 48;
/// Length of a compressed G2 point: a signature or an aggregate signature.
pub const SIGNATURE_LENGTH: usize = 96;
/// Length of a secret key (a big-endian scalar).
pub const SECRET_KEY_LENGTH: usize = 32;
/// walrus-core's tag for BLS12-381 keys in its base64 key-file format (`flag || secret`).
const WALRUS_BLS_KEY_FLAG: u8 = 0x04;

fn blst_reason(e: BLST_ERROR) -> String {
    match e {
        BLST_ERROR::BLST_BAD_ENCODING => "bad encoding".into(),
        BLST_ERROR::BLST_POINT_NOT_ON_CURVE => "point not on the curve".into(),
        BLST_ERROR::BLST_POINT_NOT_IN_GROUP => "point not in the prime-order subgroup".into(),
        BLST_ERROR::BLST_PK_IS_INFINITY => "point is the identity (infinity)".into(),
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Public keys
// ---------------------------------------------------------------------------------------------

/// A validated BLS12-381 min-pk public key.
#[derive(Clone, Copy)]
pub struct PublicKey {
    point: min_pk::PublicKey,
    bytes: [u8; PUBLIC_KEY_LENGTH],
}

impl PublicKey {
    /// Parses a compressed public key, rejecting points off the curve, outside the prime-order
    /// subgroup, and the identity (a key anyone could "sign" for).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let bytes: [u8; PUBLIC_KEY_LENGTH] =
            bytes
                .try_into()
                .map_err(|_| ProtocolError::InvalidPublicKey {
                    reason: format!("{} bytes", bytes.len()),
                })?;
        // `key_validate` = decode + subgroup check + identity check. The explicit length above
        // keeps blst from also accepting the 96-byte uncompressed form.
        let point = min_pk::PublicKey::key_validate(&bytes).map_err(|e| {
            ProtocolError::InvalidPublicKey {
                reason: blst_reason(e),
            }
        })?;
        Ok(Self { point, bytes })
    }

    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LENGTH] {
        self.bytes
    }

    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LENGTH] {
        &self.bytes
    }

    /// Verifies `signature` over `message` under this key.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), ProtocolError> {
        // Both points were subgroup-checked when parsed, so blst need not check them again.
        match signature
            .point
            .verify(false, message, BLS_DST, &[], &self.point, false)
        {
            BLST_ERROR::BLST_SUCCESS => Ok(()),
            _ => Err(ProtocolError::SignatureVerification),
        }
    }

    /// The sum of `keys`: the key that verifies the aggregate of their signatures on one message.
    ///
    /// Summing keys is only safe against rogue-key attacks when every key came with a proof of
    /// possession (see `ProofOfPossession`); committee keys do on Walrus.
    pub fn aggregate<'a>(
        keys: impl IntoIterator<Item = &'a PublicKey>,
    ) -> Result<PublicKey, ProtocolError> {
        let points: Vec<&min_pk::PublicKey> = keys.into_iter().map(|k| &k.point).collect();
        let agg = min_pk::AggregatePublicKey::aggregate(&points, false).map_err(|_| {
            ProtocolError::EmptyAggregate {
                what: "public keys",
            }
        })?;
        let point = agg.to_public_key();
        // The sum can be the identity (e.g. a key and its negation); such a key must not be used,
        // so it is reported as an invalid key rather than returned.
        point
            .validate()
            .map_err(|e| ProtocolError::InvalidPublicKey {
                reason: format!("aggregate key: {}", blst_reason(e)),
            })?;
        Ok(Self {
            bytes: point.compress(),
            point,
        })
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        // Compressed encodings are canonical, so byte equality is point equality.
        self.bytes == other.bytes
    }
}

impl Eq for PublicKey {}

impl Hash for PublicKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.bytes))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = ProtocolError;

    /// Parses the standard base64 form that `Display` and JSON use.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|e| ProtocolError::InvalidPublicKey {
                reason: format!("not base64: {e}"),
            })?;
        Self::from_bytes(&bytes)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fixed(&self.bytes, s)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: [u8; PUBLIC_KEY_LENGTH] = deserialize_fixed(d)?;
        Self::from_bytes(&bytes).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------------------------

/// A BLS12-381 min-pk signature (a compressed G2 point). Aggregate signatures have the same form.
#[derive(Clone, Copy)]
pub struct Signature {
    point: min_pk::Signature,
    bytes: [u8; SIGNATURE_LENGTH],
}

impl Signature {
    /// Parses a compressed signature and checks it lies in the prime-order subgroup. The identity
    /// is accepted, as fastcrypto does: it can only verify under the identity key, which
    /// `PublicKey::from_bytes` never produces.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let bytes: [u8; SIGNATURE_LENGTH] =
            bytes
                .try_into()
                .map_err(|_| ProtocolError::InvalidSignature {
                    reason: format!("{} bytes", bytes.len()),
                })?;
        let point = min_pk::Signature::sig_validate(&bytes, false).map_err(|e| {
            ProtocolError::InvalidSignature {
                reason: blst_reason(e),
            }
        })?;
        Ok(Self { point, bytes })
    }

    fn from_point(point: min_pk::Signature) -> Self {
        Self {
            bytes: point.compress(),
            point,
        }
    }

    pub fn to_bytes(&self) -> [u8; SIGNATURE_LENGTH] {
        self.bytes
    }

    pub fn as_bytes(&self) -> &[u8; SIGNATURE_LENGTH] {
        &self.bytes
    }

    /// Aggregates signatures (over the same or different messages) into one.
    pub fn aggregate<'a>(
        signatures: impl IntoIterator<Item = &'a Signature>,
    ) -> Result<Signature, ProtocolError> {
        let points: Vec<&min_pk::Signature> = signatures.into_iter().map(|s| &s.point).collect();
        // Inputs were subgroup-checked when parsed.
        let agg = min_pk::AggregateSignature::aggregate(&points, false)
            .map_err(|_| ProtocolError::EmptyAggregate { what: "signatures" })?;
        Ok(Self::from_point(agg.to_signature()))
    }

    /// Verifies this (aggregate) signature over one `message` signed by all of `keys`.
    ///
    /// As with `PublicKey::aggregate`, the keys must have proofs of possession.
    pub fn verify_aggregate<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a PublicKey>,
        message: &[u8],
    ) -> Result<(), ProtocolError> {
        let key = PublicKey::aggregate(keys)?;
        key.verify(message, self)
    }
}

impl PartialEq for Signature {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for Signature {}

impl Hash for Signature {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fixed(&self.bytes, s)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: [u8; SIGNATURE_LENGTH] = deserialize_fixed(d)?;
        Self::from_bytes(&bytes).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Key pairs
// ---------------------------------------------------------------------------------------------

/// A storage node's protocol key pair.
#[derive(Clone)]
pub struct ProtocolKeyPair {
    secret: min_pk::SecretKey,
    public: PublicKey,
}

impl ProtocolKeyPair {
    /// A fresh key pair from the operating system's randomness.
    pub fn generate() -> Result<Self, ProtocolError> {
        let mut ikm = [0u8; 32];
        getrandom::fill(&mut ikm).map_err(|e| ProtocolError::Randomness {
            reason: e.to_string(),
        })?;
        Self::from_seed(&ikm)
    }

    /// Derives a key pair from at least 32 bytes of key material (IETF BLS `KeyGen`), so tests
    /// and devnets can recreate the same keys.
    pub fn from_seed(seed: &[u8]) -> Result<Self, ProtocolError> {
        let secret =
            min_pk::SecretKey::key_gen(seed, &[]).map_err(|_| ProtocolError::InvalidSecretKey {
                reason: format!("a seed needs at least 32 bytes, got {}", seed.len()),
            })?;
        Ok(Self::from_secret(secret))
    }

    /// Rebuilds a key pair from its 32-byte big-endian secret scalar.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() != SECRET_KEY_LENGTH {
            return Err(ProtocolError::InvalidSecretKey {
                reason: format!("{} bytes, expected {SECRET_KEY_LENGTH}", bytes.len()),
            });
        }
        let secret =
            min_pk::SecretKey::from_bytes(bytes).map_err(|e| ProtocolError::InvalidSecretKey {
                reason: blst_reason(e),
            })?;
        Ok(Self::from_secret(secret))
    }

    fn from_secret(secret: min_pk::SecretKey) -> Self {
        let point = secret.sk_to_pk();
        let public = PublicKey {
            bytes: point.compress(),
            point,
        };
        Self { secret, public }
    }

    pub fn secret_bytes(&self) -> [u8; SECRET_KEY_LENGTH] {
        self.secret.to_bytes()
    }

    /// walrus-core's key-file form: standard base64 of `0x04 || secret` (33 bytes).
    pub fn to_walrus_base64(&self) -> String {
        let mut buf = [0u8; 1 + SECRET_KEY_LENGTH];
        buf[0] = WALRUS_BLS_KEY_FLAG;
        buf[1..].copy_from_slice(&self.secret_bytes());
        STANDARD.encode(buf)
    }

    /// Parses walrus-core's key-file form (see `to_walrus_base64`).
    pub fn from_walrus_base64(s: &str) -> Result<Self, ProtocolError> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|e| ProtocolError::InvalidSecretKey {
                reason: format!("not base64: {e}"),
            })?;
        match bytes.split_first() {
            Some((&WALRUS_BLS_KEY_FLAG, secret)) => Self::from_secret_bytes(secret),
            Some((flag, _)) => Err(ProtocolError::InvalidSecretKey {
                reason: format!(
                    "key flag {flag:#04x} is not BLS12-381 ({WALRUS_BLS_KEY_FLAG:#04x})"
                ),
            }),
            None => Err(ProtocolError::InvalidSecretKey {
                reason: "empty".into(),
            }),
        }
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature::from_point(self.secret.sign(message, BLS_DST, &[]))
    }
}

impl fmt::Debug for ProtocolKeyPair {
    // Never print the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProtocolKeyPair {{ public: {} }}", self.public)
    }
}

// ---------------------------------------------------------------------------------------------
// Serde helpers shared by keys and signatures
// ---------------------------------------------------------------------------------------------

fn serialize_fixed<S: Serializer, const N: usize>(
    bytes: &[u8; N],
    s: S,
) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&STANDARD.encode(bytes))
    } else {
        // A tuple, not `serialize_bytes`: BCS must not emit a length prefix here.
        let mut t = s.serialize_tuple(N)?;
        for b in bytes {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

fn deserialize_fixed<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
    if d.is_human_readable() {
        let s = String::deserialize(d)?;
        let v = STANDARD.decode(s.as_bytes()).map_err(de::Error::custom)?;
        let len = v.len();
        v.try_into()
            .map_err(|_| de::Error::invalid_length(len, &format!("{N} bytes").as_str()))
    } else {
        struct FixedVisitor<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for FixedVisitor<N> {
            type Value = [u8; N];
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = [0u8; N];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_tuple(N, FixedVisitor::<N>)
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> ProtocolKeyPair {
        ProtocolKeyPair::from_seed(&[i; 32]).unwrap()
    }

    #[test]
    fn sign_verify_round_trip() {
        let kp = key(1);
        let sig = kp.sign(b"hello");
        kp.public().verify(b"hello", &sig).unwrap();
        assert_eq!(
            kp.public().verify(b"hellp", &sig),
            Err(ProtocolError::SignatureVerification)
        );
        assert_eq!(
            key(2).public().verify(b"hello", &sig),
            Err(ProtocolError::SignatureVerification)
        );
    }

    #[test]
    fn seeds_are_deterministic_and_random_keys_differ() {
        assert_eq!(key(3).public(), key(3).public());
        assert_ne!(key(3).public(), key(4).public());
        let a = ProtocolKeyPair::generate().unwrap();
        let b = ProtocolKeyPair::generate().unwrap();
        assert_ne!(a.public(), b.public());
        assert!(ProtocolKeyPair::from_seed(&[0; 31]).is_err());
    }

    #[test]
    fn bytes_round_trip() {
        let kp = key(5);
        let pk = PublicKey::from_bytes(&kp.public().to_bytes()).unwrap();
        assert_eq!(&pk, kp.public());
        let sig = kp.sign(b"m");
        assert_eq!(Signature::from_bytes(&sig.to_bytes()).unwrap(), sig);
        let kp2 = ProtocolKeyPair::from_secret_bytes(&kp.secret_bytes()).unwrap();
        assert_eq!(kp2.public(), kp.public());
        let kp3 = ProtocolKeyPair::from_walrus_base64(&kp.to_walrus_base64()).unwrap();
        assert_eq!(kp3.public(), kp.public());
        assert_eq!(kp.public().to_string().parse::<PublicKey>().unwrap(), pk);
    }

    #[test]
    fn rejects_bad_public_keys() {
        // Wrong length.
        assert!(PublicKey::from_bytes(&[0u8; 47]).is_err());
        // The uncompressed encoding is not accepted where 48 bytes are specified.
        let kp = key(6);
        assert!(PublicKey::from_bytes(&kp.public().point.serialize()).is_err());
        // The identity: compressed flag + infinity flag, rest zero.
        let mut inf = [0u8; 48];
        inf[0] = 0xc0;
        let err = PublicKey::from_bytes(&inf).unwrap_err();
        assert!(
            matches!(&err, ProtocolError::InvalidPublicKey { reason } if reason.contains("identity")),
            "{err}"
        );
        // A point on the curve but (with overwhelming probability) outside the subgroup:
        // search x-coordinates until one decompresses.
        let mut found = false;
        for x in 1u8..=255 {
            let mut b = [0u8; 48];
            b[0] = 0x80;
            b[47] = x;
            if let Ok(p) = min_pk::PublicKey::from_bytes(&b) {
                assert!(
                    p.validate().is_err(),
                    "random point unexpectedly in subgroup"
                );
                let err = PublicKey::from_bytes(&b).unwrap_err();
                assert!(
                    matches!(&err, ProtocolError::InvalidPublicKey { reason } if reason.contains("subgroup")),
                    "{err}"
                );
                found = true;
                break;
            }
        }
        assert!(found, "no on-curve test point found");
        // Garbage.
        assert!(PublicKey::from_bytes(&[0xff; 48]).is_err());
    }

    #[test]
    fn rejects_bad_signatures() {
        assert!(Signature::from_bytes(&[0u8; 95]).is_err());
        assert!(Signature::from_bytes(&[0xff; 96]).is_err());
        let sig = key(1).sign(b"x");
        let mut b = sig.to_bytes();
        b[50] ^= 1;
        // Either it no longer decodes, or it decodes to a different point that fails to verify.
        match Signature::from_bytes(&b) {
            Err(_) => {}
            Ok(s) => assert!(key(1).public().verify(b"x", &s).is_err()),
        }
    }

    #[test]
    fn aggregate_signatures_verify_against_the_signer_set() {
        let kps: Vec<_> = (10..14).map(key).collect();
        let msg = b"one message";
        let sigs: Vec<_> = kps.iter().map(|k| k.sign(msg)).collect();
        let agg = Signature::aggregate(&sigs).unwrap();
        agg.verify_aggregate(kps.iter().map(|k| k.public()), msg)
            .unwrap();
        // Missing a signer's key, an extra key, or a different message: rejected.
        assert!(
            agg.verify_aggregate(kps[..3].iter().map(|k| k.public()), msg)
                .is_err()
        );
        let extra = key(20);
        assert!(
            agg.verify_aggregate(kps.iter().map(|k| k.public()).chain([extra.public()]), msg)
                .is_err()
        );
        assert!(
            agg.verify_aggregate(kps.iter().map(|k| k.public()), b"other")
                .is_err()
        );
        assert_eq!(
            Signature::aggregate([]).unwrap_err(),
            ProtocolError::EmptyAggregate { what: "signatures" }
        );
    }

    #[test]
    fn bcs_is_fixed_size_and_json_is_base64() {
        let kp = key(7);
        let sig = kp.sign(b"m");
        let pk_bcs = bcs::to_bytes(kp.public()).unwrap();
        assert_eq!(pk_bcs, kp.public().to_bytes());
        let sig_bcs = bcs::to_bytes(&sig).unwrap();
        assert_eq!(sig_bcs, sig.to_bytes());
        assert_eq!(bcs::from_bytes::<Signature>(&sig_bcs).unwrap(), sig);
        assert_eq!(bcs::from_bytes::<PublicKey>(&pk_bcs).unwrap(), *kp.public());

        let json = serde_json::to_string(&sig).unwrap();
        assert_eq!(json, format!("\"{}\"", STANDARD.encode(sig.to_bytes())));
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), sig);
        let json = serde_json::to_string(kp.public()).unwrap();
        assert_eq!(
            serde_json::from_str::<PublicKey>(&json).unwrap(),
            *kp.public()
        );
    }
}
