//! The BCS layouts and Move types of the Walrus objects and events we read from Sui.
//!
//! Field order follows the Walrus contracts (`contracts/walrus/sources/system/blob.move`,
//! `storage_resource.move`, `events.move`, `staking.move`, `staking/staking_inner.move`): BCS
//! has no field names, so a field out of place silently shifts every later one. The encoders
//! exist for the test stand-in full node; the reader only decodes. Both sides share this file,
//! so its unit tests check the decoders against byte strings written out by hand.
//!
//! A Move `u256` is 32 little-endian bytes in BCS. Walrus derives the blob ID by reading the
//! Blake2b-256 digest as a `u256` with `peel_u256` (little-endian), and walrus-sui deserializes
//! the `blob_id: u256` field straight into `BlobId([u8; 32])`: the 32 bytes on the wire are
//! exactly our [`BlobId`] bytes, with no reversal.

use std::str::FromStr;

use sui_sdk_types::{Address, Identifier, StructTag, TypeTag};

use super::{BlobCertifiedEvent, BlobObject, ObjectId, StorageResource, hex};
use crate::encoding::BlobId;

/// Bytes that do not hold the Move value we expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {what}: {detail}")]
pub struct LayoutError {
    /// The Move type being decoded, e.g. `blob::Blob`.
    pub what: &'static str,
    pub detail: String,
}

// === Move types ===

/// The Sui framework's address (`0x2`), home of `dynamic_field::Field`.
const SUI_FRAMEWORK: Address = Address::TWO;

fn struct_tag(
    package: Address,
    module: &'static str,
    name: &'static str,
    type_params: Vec<TypeTag>,
) -> StructTag {
    // `from_static` panics on an invalid identifier; every name passed here is a fixed, valid
    // one, and `tests::move_type_strings` builds each of them.
    StructTag::new(
        package,
        Identifier::from_static(module),
        Identifier::from_static(name),
        type_params,
    )
}

/// `<package>::blob::Blob`.
pub fn blob_type(package: ObjectId) -> StructTag {
    struct_tag(Address::new(package), "blob", "Blob", vec![])
}

/// `<package>::events::BlobCertified`.
pub fn blob_certified_type(package: ObjectId) -> StructTag {
    struct_tag(Address::new(package), "events", "BlobCertified", vec![])
}

/// `<package>::system::System`, the shared system object.
pub fn system_type(package: ObjectId) -> StructTag {
    struct_tag(Address::new(package), "system", "System", vec![])
}

/// `<package>::staking::Staking`, the shared staking object.
pub fn staking_type(package: ObjectId) -> StructTag {
    struct_tag(Address::new(package), "staking", "Staking", vec![])
}

/// `0x2::dynamic_field::Field<u64, <package>::staking_inner::StakingInnerV1>`: the dynamic
/// field of the staking object, keyed by its version, that holds the staking state.
pub fn staking_inner_field_type(package: ObjectId) -> StructTag {
    let inner = struct_tag(
        Address::new(package),
        "staking_inner",
        "StakingInnerV1",
        vec![],
    );
    struct_tag(
        SUI_FRAMEWORK,
        "dynamic_field",
        "Field",
        vec![TypeTag::U64, TypeTag::Struct(Box::new(inner))],
    )
}

/// The object ID of the dynamic field `version: u64` under the staking (or system) object.
pub fn versioned_inner_field_id(parent: ObjectId, version: u64) -> ObjectId {
    Address::new(parent)
        .derive_dynamic_child_id(&TypeTag::U64, &version.to_le_bytes())
        .into_inner()
}

// === Writing ===

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    fn bytes32(&mut self, v: &[u8; 32]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// `Option<T>` is a vector of zero or one element: a ULEB128 length byte, then the value.
    fn option<T>(&mut self, v: Option<T>, write: impl FnOnce(&mut Self, T)) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                write(self, v);
                self
            }
        }
    }
}

/// BCS of a `blob::Blob` object's contents (the Move struct, starting with its UID).
pub fn encode_blob(blob: &BlobObject) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes32(&blob.object_id)
        .u32(blob.registered_epoch)
        .bytes32(&blob.blob_id.0)
        .u64(blob.size)
        .u8(blob.encoding_type)
        .option(blob.certified_epoch, |w, e| {
            w.u32(e);
        });
    encode_storage_into(&mut w, &blob.storage);
    w.bool(blob.deletable);
    w.0
}

fn encode_storage_into(w: &mut Writer, s: &StorageResource) {
    w.bytes32(&s.object_id)
        .u32(s.start_epoch)
        .u32(s.end_epoch)
        .u64(s.storage_size);
}

/// BCS of an `events::BlobCertified` event.
pub fn encode_blob_certified(event: &BlobCertifiedEvent) -> Vec<u8> {
    let mut w = Writer::default();
    w.u32(event.epoch)
        .bytes32(&event.blob_id.0)
        .u32(event.end_epoch)
        .bool(event.deletable)
        .bytes32(&event.object_id)
        .bool(event.is_extension);
    w.0
}

/// BCS of the `staking::Staking` (or `system::System`) object: both are
/// `{ id: UID, version: u64, package_id: ID, new_package_id: Option<ID> }`.
pub fn encode_versioned_object(
    object_id: ObjectId,
    version: u64,
    package_id: ObjectId,
    new_package_id: Option<ObjectId>,
) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes32(&object_id)
        .u64(version)
        .bytes32(&package_id)
        .option(new_package_id, |w, id| {
            w.bytes32(&id);
        });
    w.0
}

/// The part of `staking_inner::StakingInnerV1` we read, plus what precedes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StakingInnerPrefix {
    pub n_shards: u16,
    pub epoch_duration_ms: u64,
    pub first_epoch_start_ms: u64,
    /// The `ObjectTable` of staking pools: its UID and its number of entries.
    pub pools_id: ObjectId,
    pub pools_size: u64,
    /// The current Walrus epoch (not Sui's).
    pub epoch: u32,
}

/// BCS of the dynamic field `Field<u64, StakingInnerV1> { id, name: version, value }`, with
/// the fields after `epoch` as a freshly created staking object has them: an empty active set
/// and empty committees, no next committee or parameters, epoch change done at
/// `epoch_change_done_ms`. `extended_field_ids` are the UIDs of the two `ExtendedField`s.
pub fn encode_staking_inner_field(
    field_id: ObjectId,
    version: u64,
    inner: &StakingInnerPrefix,
    extended_field_ids: [ObjectId; 2],
    epoch_change_done_ms: u64,
) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes32(&field_id).u64(version);
    w.u16(inner.n_shards)
        .u64(inner.epoch_duration_ms)
        .u64(inner.first_epoch_start_ms)
        .bytes32(&inner.pools_id)
        .u64(inner.pools_size)
        .u32(inner.epoch)
        // active_set: ExtendedField<ActiveSet> { id: UID }
        .bytes32(&extended_field_ids[0])
        // next_committee: Option<Committee>
        .u8(0)
        // committee, previous_committee: Committee(VecMap<ID, vector<u16>>), empty
        .u8(0)
        .u8(0)
        // next_epoch_params: Option<EpochParams>
        .u8(0)
        // epoch_state: EpochState::EpochChangeDone(u64), variant index 1
        .u8(1)
        .u64(epoch_change_done_ms)
        // next_epoch_public_keys: ExtendedField<VecMap<..>> { id: UID }
        .bytes32(&extended_field_ids[1]);
    w.0
}

// === Reading ===

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self {
            bytes,
            pos: 0,
            what,
        }
    }

    fn err(&self, detail: String) -> LayoutError {
        LayoutError {
            what: self.what,
            detail,
        }
    }

    fn take<const N: usize>(&mut self, field: &str) -> Result<[u8; N], LayoutError> {
        let end = self.pos + N;
        let slice = self.bytes.get(self.pos..end).ok_or_else(|| {
            self.err(format!(
                "{} bytes end at offset {} while reading `{field}` ({N} bytes)",
                self.bytes.len(),
                self.pos
            ))
        })?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8, LayoutError> {
        Ok(self.take::<1>(field)?[0])
    }
    fn u16(&mut self, field: &str) -> Result<u16, LayoutError> {
        self.take(field).map(u16::from_le_bytes)
    }
    fn u32(&mut self, field: &str) -> Result<u32, LayoutError> {
        self.take(field).map(u32::from_le_bytes)
    }
    fn u64(&mut self, field: &str) -> Result<u64, LayoutError> {
        self.take(field).map(u64::from_le_bytes)
    }
    fn bytes32(&mut self, field: &str) -> Result<[u8; 32], LayoutError> {
        self.take(field)
    }
    fn bool(&mut self, field: &str) -> Result<bool, LayoutError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.err(format!("`{field}` is a bool but holds byte {b}"))),
        }
    }
    fn option_u32(&mut self, field: &str) -> Result<Option<u32>, LayoutError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => self.u32(field).map(Some),
            n => Err(self.err(format!("`{field}` is an Option but holds {n} elements"))),
        }
    }

    /// A whole struct must use every byte: leftovers mean the layout is not the one we know.
    fn finish(&self) -> Result<(), LayoutError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            extra => Err(self.err(format!(
                "{extra} bytes left over after the last field (expected {} bytes in all, got {})",
                self.pos,
                self.bytes.len()
            ))),
        }
    }
}

/// Decodes the contents of a `blob::Blob` object.
pub fn decode_blob(bytes: &[u8]) -> Result<BlobObject, LayoutError> {
    let mut r = Reader::new(bytes, "blob::Blob");
    let blob = BlobObject {
        object_id: r.bytes32("id")?,
        registered_epoch: r.u32("registered_epoch")?,
        blob_id: BlobId(r.bytes32("blob_id")?),
        size: r.u64("size")?,
        encoding_type: r.u8("encoding_type")?,
        certified_epoch: r.option_u32("certified_epoch")?,
        storage: StorageResource {
            object_id: r.bytes32("storage.id")?,
            start_epoch: r.u32("storage.start_epoch")?,
            end_epoch: r.u32("storage.end_epoch")?,
            storage_size: r.u64("storage.storage_size")?,
        },
        deletable: r.bool("deletable")?,
    };
    r.finish()?;
    Ok(blob)
}

/// Decodes the contents of an `events::BlobCertified` event.
pub fn decode_blob_certified(bytes: &[u8]) -> Result<BlobCertifiedEvent, LayoutError> {
    let mut r = Reader::new(bytes, "events::BlobCertified");
    let event = BlobCertifiedEvent {
        epoch: r.u32("epoch")?,
        blob_id: BlobId(r.bytes32("blob_id")?),
        end_epoch: r.u32("end_epoch")?,
        deletable: r.bool("deletable")?,
        object_id: r.bytes32("object_id")?,
        is_extension: r.bool("is_extension")?,
    };
    r.finish()?;
    Ok(event)
}

/// Decodes the `id` and `version` that begin the `staking::Staking` and `system::System`
/// objects; the version is the key of the dynamic field holding their state.
pub fn decode_versioned_object_prefix(
    bytes: &[u8],
    what: &'static str,
) -> Result<(ObjectId, u64), LayoutError> {
    let mut r = Reader::new(bytes, what);
    Ok((r.bytes32("id")?, r.u64("version")?))
}

/// Decodes the start of the dynamic field `Field<u64, StakingInnerV1>`: its UID, its key
/// (the staking object's version) and the state up to and including the epoch. The rest
/// (committees, keys) is not read: it grows with the network and we have no use for it.
pub fn decode_staking_inner_field_prefix(
    bytes: &[u8],
) -> Result<(ObjectId, u64, StakingInnerPrefix), LayoutError> {
    let mut r = Reader::new(
        bytes,
        "dynamic_field::Field<u64, staking_inner::StakingInnerV1>",
    );
    let field_id = r.bytes32("id")?;
    let key = r.u64("name")?;
    let inner = StakingInnerPrefix {
        n_shards: r.u16("value.n_shards")?,
        epoch_duration_ms: r.u64("value.epoch_duration")?,
        first_epoch_start_ms: r.u64("value.first_epoch_start")?,
        pools_id: r.bytes32("value.pools.id")?,
        pools_size: r.u64("value.pools.size")?,
        epoch: r.u32("value.epoch")?,
    };
    Ok((field_id, key, inner))
}

/// `0x` and 64 hex digits, as Sui prints object IDs.
pub fn object_id_string(id: &ObjectId) -> String {
    format!("0x{}", hex(id))
}

/// Parses a Sui object ID (`0x` and up to 64 hex digits).
pub fn parse_object_id(s: &str) -> Option<ObjectId> {
    Address::from_str(s).ok().map(Address::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hex without separators, for writing expected bytes field by field.
    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn rep(byte: &str) -> String {
        byte.repeat(32)
    }

    /// The BCS of a certified `Blob`, written out field by field from `blob.move`.
    fn hand_written_blob() -> Vec<u8> {
        unhex(
            &[
                rep("11"),                        // id: UID
                "05000000".into(),                // registered_epoch: u32 = 5
                format!("01{}", "00".repeat(31)), // blob_id: u256 = 1 (little-endian)
                "e803000000000000".into(),        // size: u64 = 1000
                "01".into(),                      // encoding_type: u8 = 1 (RS2)
                "01 06000000".into(),             // certified_epoch: Option<u32> = Some(6)
                rep("22"),                        // storage.id
                "05000000".into(),                // storage.start_epoch = 5
                "0f000000".into(),                // storage.end_epoch = 15
                "0000100000000000".into(),        // storage.storage_size = 0x100000
                "00".into(),                      // deletable = false
            ]
            .join(" "),
        )
    }

    fn expected_blob() -> BlobObject {
        let mut blob_id = [0u8; 32];
        blob_id[0] = 1;
        BlobObject {
            object_id: [0x11; 32],
            registered_epoch: 5,
            blob_id: BlobId(blob_id),
            size: 1000,
            encoding_type: 1,
            certified_epoch: Some(6),
            storage: StorageResource {
                object_id: [0x22; 32],
                start_epoch: 5,
                end_epoch: 15,
                storage_size: 0x10_0000,
            },
            deletable: false,
        }
    }

    #[test]
    fn blob_decodes_from_hand_written_bcs() {
        let bytes = hand_written_blob();
        assert_eq!(bytes.len(), 32 + 4 + 32 + 8 + 1 + 5 + 32 + 4 + 4 + 8 + 1);
        assert_eq!(decode_blob(&bytes).unwrap(), expected_blob());
        assert_eq!(encode_blob(&expected_blob()), bytes);
    }

    #[test]
    fn uncertified_blob_round_trips() {
        let mut blob = expected_blob();
        blob.certified_epoch = None;
        blob.deletable = true;
        let bytes = encode_blob(&blob);
        assert_eq!(bytes.len(), hand_written_blob().len() - 4);
        assert_eq!(decode_blob(&bytes).unwrap(), blob);
    }

    #[test]
    fn blob_id_bytes_are_the_u256_little_endian_bytes() {
        // The blob ID `1` as a Move u256 is 0x01 then 31 zero bytes on the wire, and that is
        // BlobId([1, 0, ..]); its base64 form starts with "AQAA".
        let blob = decode_blob(&hand_written_blob()).unwrap();
        assert_eq!(blob.blob_id.0[0], 1);
        assert!(blob.blob_id.to_string().starts_with("AQAA"));
    }

    #[test]
    fn blob_rejects_truncated_trailing_and_bad_tags() {
        let bytes = hand_written_blob();
        let err = decode_blob(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.to_string().contains("deletable"), "{err}");
        let mut long = bytes.clone();
        long.push(0);
        assert!(
            decode_blob(&long)
                .unwrap_err()
                .to_string()
                .contains("left over")
        );
        let mut bad_option = bytes.clone();
        bad_option[32 + 4 + 32 + 8 + 1] = 2;
        assert!(
            decode_blob(&bad_option)
                .unwrap_err()
                .to_string()
                .contains("Option")
        );
        let mut bad_bool = bytes;
        *bad_bool.last_mut().unwrap() = 7;
        assert!(
            decode_blob(&bad_bool)
                .unwrap_err()
                .to_string()
                .contains("bool")
        );
    }

    #[test]
    fn certified_event_decodes_from_hand_written_bcs() {
        let bytes = unhex(
            &[
                "07000000".to_string(), // epoch = 7
                rep("ab"),              // blob_id
                "14000000".into(),      // end_epoch = 20
                "01".into(),            // deletable = true
                rep("cd"),              // object_id: ID
                "00".into(),            // is_extension = false
            ]
            .join(" "),
        );
        let event = BlobCertifiedEvent {
            epoch: 7,
            blob_id: BlobId([0xab; 32]),
            end_epoch: 20,
            deletable: true,
            object_id: [0xcd; 32],
            is_extension: false,
        };
        assert_eq!(decode_blob_certified(&bytes).unwrap(), event);
        assert_eq!(encode_blob_certified(&event), bytes);
        assert!(decode_blob_certified(&bytes[..40]).is_err());
    }

    #[test]
    fn staking_object_and_inner_field_decode_from_hand_written_bcs() {
        let staking =
            unhex(&[rep("01"), "0200000000000000".into(), rep("0a"), "00".into()].join(""));
        assert_eq!(
            decode_versioned_object_prefix(&staking, "staking::Staking").unwrap(),
            ([1; 32], 2)
        );
        assert_eq!(
            encode_versioned_object([1; 32], 2, [0x0a; 32], None),
            staking
        );

        let field = unhex(
            &[
                rep("f0"),                 // Field.id
                "0200000000000000".into(), // Field.name: u64 = 2
                "e803".into(),             // n_shards: u16 = 1000
                "005c260500000000".into(), // epoch_duration = 86_400_000 ms
                "0010a5d4e8000000".into(), // first_epoch_start = 1_000_000_000_000
                rep("33"),                 // pools.id
                "0700000000000000".into(), // pools.size = 7
                "2a000000".into(),         // epoch = 42
                "ffff".into(),             // whatever follows is not read
            ]
            .join(""),
        );
        let (id, key, inner) = decode_staking_inner_field_prefix(&field).unwrap();
        assert_eq!((id, key), ([0xf0; 32], 2));
        assert_eq!(
            inner,
            StakingInnerPrefix {
                n_shards: 1000,
                epoch_duration_ms: 86_400_000,
                first_epoch_start_ms: 1_000_000_000_000,
                pools_id: [0x33; 32],
                pools_size: 7,
                epoch: 42,
            }
        );
        let encoded = encode_staking_inner_field([0xf0; 32], 2, &inner, [[4; 32], [5; 32]], 9);
        assert_eq!(encoded[..field.len() - 2], field[..field.len() - 2]);
        // active_set id, 4 empty/none tags, EpochChangeDone(9), next_epoch_public_keys id.
        assert_eq!(encoded.len(), field.len() - 2 + 32 + 4 + 1 + 8 + 32);
        assert!(decode_staking_inner_field_prefix(&field[..100]).is_err());
    }

    #[test]
    fn move_type_strings() {
        let pkg = [0xaa; 32];
        let p = format!("0x{}", "aa".repeat(32));
        assert_eq!(blob_type(pkg).to_string(), format!("{p}::blob::Blob"));
        assert_eq!(
            blob_certified_type(pkg).to_string(),
            format!("{p}::events::BlobCertified")
        );
        assert_eq!(system_type(pkg).to_string(), format!("{p}::system::System"));
        assert_eq!(
            staking_type(pkg).to_string(),
            format!("{p}::staking::Staking")
        );
        assert_eq!(
            staking_inner_field_type(pkg).to_string(),
            format!(
                "0x{}02::dynamic_field::Field<u64, {p}::staking_inner::StakingInnerV1>",
                "0".repeat(62)
            )
        );
        // The short form a node may print parses to the same type.
        let short: StructTag =
            format!("0x2::dynamic_field::Field<u64, {p}::staking_inner::StakingInnerV1>")
                .parse()
                .unwrap();
        assert_eq!(short, staking_inner_field_type(pkg));
    }

    #[test]
    fn dynamic_field_id_follows_sui_derivation() {
        // Sui: blake2b256(0xf0 || parent || len(key) as u64 LE || key || bcs(TypeTag::U64)),
        // where TypeTag::U64 is variant 2 of the BCS enum.
        let parent = [0x42; 32];
        let key = 3u64.to_le_bytes();
        let mut input = vec![0xf0];
        input.extend_from_slice(&parent);
        input.extend_from_slice(&8u64.to_le_bytes());
        input.extend_from_slice(&key);
        input.push(2);
        let expected = crate::encoding::merkle::blake2b256(&input);
        assert_eq!(versioned_inner_field_id(parent, 3), expected);
    }

    fn arb_blob() -> impl proptest::strategy::Strategy<Value = BlobObject> {
        use proptest::prelude::*;
        (
            any::<([u8; 32], u32, [u8; 32], u64, u8)>(),
            any::<(Option<u32>, bool)>(),
            any::<([u8; 32], u32, u32, u64)>(),
        )
            .prop_map(
                |((id, reg, blob_id, size, enc), (cert, del), (sid, s, e, ss))| BlobObject {
                    object_id: id,
                    registered_epoch: reg,
                    blob_id: BlobId(blob_id),
                    size,
                    encoding_type: enc,
                    certified_epoch: cert,
                    storage: StorageResource {
                        object_id: sid,
                        start_epoch: s,
                        end_epoch: e,
                        storage_size: ss,
                    },
                    deletable: del,
                },
            )
    }

    proptest::proptest! {
        #[test]
        fn any_blob_round_trips(blob in arb_blob()) {
            proptest::prop_assert_eq!(decode_blob(&encode_blob(&blob)).unwrap(), blob);
        }

        /// Decoding is strict: whatever decodes re-encodes to the very same bytes, so no two
        /// byte strings (say, a bool byte of 2) pass for the same blob. And nothing panics.
        #[test]
        fn decoders_are_strict_on_mutated_bytes(
            blob in arb_blob(),
            edits in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 0..4),
            cut in 0usize..200,
        ) {
            let mut bytes = encode_blob(&blob);
            for (at, b) in edits {
                let len = bytes.len();
                bytes[at % len] = b;
            }
            let bytes = &bytes[..bytes.len().min(cut.max(100))];
            if let Ok(decoded) = decode_blob(bytes) {
                proptest::prop_assert_eq!(encode_blob(&decoded), bytes.to_vec());
            }
            if let Ok(event) = decode_blob_certified(bytes) {
                proptest::prop_assert_eq!(encode_blob_certified(&event), bytes.to_vec());
            }
            let _ = decode_staking_inner_field_prefix(bytes);
            let _ = decode_versioned_object_prefix(bytes, "test");
        }
    }

    #[test]
    fn object_ids_print_and_parse() {
        let id = [0x0b; 32];
        assert_eq!(parse_object_id(&object_id_string(&id)), Some(id));
        let mut two = [0u8; 32];
        two[31] = 2;
        assert_eq!(parse_object_id("0x2"), Some(two));
        assert_eq!(parse_object_id("zz"), None);
    }
}
