//! Certificates: one message, an aggregate signature, and who signed it.
//!
//! Two forms of the signer set exist on the wire:
//! - walrus-core's `ConfirmationCertificate` lists member indices (`Vec<u16>`);
//! - the Move contract's `certify_blob` takes a bitmap over committee members, bit `i % 8` of
//!   byte `i / 8` set for member `i` (little-endian bit order), `ceil(members / 8)` bytes.

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::encoding::BlobId;

use super::ProtocolError;
use super::bls::Signature;
use super::committee::{Committee, RequiredWeight};
use super::messages::{BlobPersistenceType, ConfirmationMessage, SignedMessage, TrailingBytes};

/// A certificate over a confirmation (walrus-core `ConfirmationCertificate`).
///
/// BCS: `signers` (length-prefixed `u16`s), `serialized_message` (length-prefixed bytes), the 96
/// signature bytes. JSON uses the same snake_case field names; the signature is base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmationCertificate {
    /// Indices of the signing members in the committee.
    pub signers: Vec<u16>,
    pub serialized_message: Vec<u8>,
    /// The aggregate of the signers' signatures over `serialized_message`.
    pub signature: Signature,
}

impl ConfirmationCertificate {
    /// Aggregates signatures over one message. `signed` and `signers` correspond one to one.
    pub fn from_signed_messages(
        signers: Vec<u16>,
        signed: &[SignedMessage],
    ) -> Result<Self, ProtocolError> {
        let Some(first) = signed.first() else {
            return Err(ProtocolError::NoSigners);
        };
        if signers.len() != signed.len() {
            return Err(ProtocolError::InvalidBitmap {
                reason: format!(
                    "{} signer indices for {} signed messages",
                    signers.len(),
                    signed.len()
                ),
            });
        }
        if signed
            .iter()
            .any(|m| m.serialized_message != first.serialized_message)
        {
            return Err(ProtocolError::MessageMismatch);
        }
        let signature = Signature::aggregate(signed.iter().map(|m| &m.signature))?;
        Ok(Self {
            signers,
            serialized_message: first.serialized_message.clone(),
            signature,
        })
    }

    /// The confirmation this certificate is over (parsed as leniently as the contract does).
    pub fn confirmation(&self) -> Result<ConfirmationMessage, ProtocolError> {
        ConfirmationMessage::decode(&self.serialized_message, TrailingBytes::Allow)
    }

    /// The signers as the contract's bitmap for a committee of `n_members`.
    pub fn signers_bitmap(&self, n_members: usize) -> Result<Vec<u8>, ProtocolError> {
        signers_to_bitmap(&self.signers, n_members)
    }

    /// This certificate in the form `certify_blob` takes.
    pub fn to_bitmap_form(&self, n_members: usize) -> Result<BitmapCertificate, ProtocolError> {
        Ok(BitmapCertificate {
            signers_bitmap: self.signers_bitmap(n_members)?,
            serialized_message: self.serialized_message.clone(),
            signature: self.signature,
        })
    }
}

/// The arguments of the contract's `certify_blob`: signature, signers bitmap, message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitmapCertificate {
    pub signers_bitmap: Vec<u8>,
    pub serialized_message: Vec<u8>,
    pub signature: Signature,
}

/// Packs member indices into the contract's bitmap (`ceil(n_members / 8)` bytes). Indices must be
/// in range and distinct: a repeated index would be silently merged by the bitmap while its
/// signature stayed twice in the aggregate, so it is an error here.
pub fn signers_to_bitmap(signers: &[u16], n_members: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut bitmap = vec![0u8; n_members.div_ceil(8)];
    for &index in signers {
        let i = usize::from(index);
        if i >= n_members {
            return Err(ProtocolError::SignerOutOfRange { index, n_members });
        }
        let bit = 1u8 << (i % 8);
        if bitmap[i / 8] & bit != 0 {
            return Err(ProtocolError::DuplicateSigner { index });
        }
        bitmap[i / 8] |= bit;
    }
    Ok(bitmap)
}

/// Unpacks the contract's bitmap into ascending member indices, with the contract's rules: the
/// bitmap may be shorter than `ceil(n_members / 8)` bytes (missing members did not sign) but not
/// longer, and bits past the last member must be clear (so each signer set has one encoding).
pub fn bitmap_to_signers(bitmap: &[u8], n_members: usize) -> Result<Vec<u16>, ProtocolError> {
    let max_len = n_members.div_ceil(8);
    if bitmap.len() > max_len {
        return Err(ProtocolError::InvalidBitmap {
            reason: format!(
                "{} bytes, but {n_members} members need at most {max_len}",
                bitmap.len()
            ),
        });
    }
    let mut signers = Vec::new();
    for (byte_index, &byte) in bitmap.iter().enumerate() {
        for bit in 0..8 {
            if (byte >> bit) & 1 == 0 {
                continue;
            }
            let index = byte_index * 8 + bit;
            if index >= n_members {
                return Err(ProtocolError::InvalidBitmap {
                    reason: format!("bit {index} is set, but there are only {n_members} members"),
                });
            }
            signers.push(
                u16::try_from(index).map_err(|_| ProtocolError::InvalidBitmap {
                    reason: format!("member index {index} does not fit 16 bits"),
                })?,
            );
        }
    }
    Ok(signers)
}

/// Collects storage confirmations for one blob until their signers form a quorum, then builds
/// the certificate.
///
/// Each confirmation is verified on arrival (epoch = the committee's, blob ID, persistence type,
/// signature under the claimed member's key), so one bad node cannot spoil the aggregate.
#[derive(Debug)]
pub struct ConfirmationAggregator<'a> {
    committee: &'a Committee,
    blob_id: BlobId,
    blob_type: BlobPersistenceType,
    signers: Vec<u16>,
    signed: Vec<SignedMessage>,
    weight: u32,
}

impl<'a> ConfirmationAggregator<'a> {
    pub fn new(committee: &'a Committee, blob_id: BlobId, blob_type: BlobPersistenceType) -> Self {
        Self {
            committee,
            blob_id,
            blob_type,
            signers: Vec::new(),
            signed: Vec::new(),
            weight: 0,
        }
    }

    /// Adds the confirmation of member `index`. Returns whether the signers now form a quorum.
    ///
    /// Once they do, further confirmations are not verified nor added (there is nothing to gain
    /// and verification is the expensive part); the call just returns `true`.
    pub fn add(&mut self, index: u16, confirmation: &SignedMessage) -> Result<bool, ProtocolError> {
        if self.is_quorum() {
            return Ok(true);
        }
        let member = self
            .committee
            .member(index)
            .ok_or(ProtocolError::SignerOutOfRange {
                index,
                n_members: self.committee.n_members(),
            })?;
        if self.signers.contains(&index) {
            return Err(ProtocolError::DuplicateSigner { index });
        }
        confirmation.verify_confirmation(
            &member.public_key,
            self.committee.epoch(),
            self.blob_id,
            self.blob_type,
        )?;
        // Strict parsing makes equal contents mean equal bytes, so this cannot fail for
        // confirmations that passed the check above; it guards the aggregate all the same.
        if self
            .signed
            .first()
            .is_some_and(|first| first.serialized_message != confirmation.serialized_message)
        {
            return Err(ProtocolError::MessageMismatch);
        }
        self.signers.push(index);
        self.signed.push(confirmation.clone());
        self.weight += u32::from(member.weight());
        debug!(
            blob_id = %self.blob_id,
            signer = index,
            weight = self.weight,
            n_shards = self.committee.n_shards(),
            "storage confirmation accepted"
        );
        Ok(self.is_quorum())
    }

    /// The shard weight of the confirmations accepted so far.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    pub fn is_quorum(&self) -> bool {
        self.committee.is_quorum(self.weight)
    }

    pub fn signers(&self) -> &[u16] {
        &self.signers
    }

    /// The certificate, if the accepted confirmations form a quorum.
    pub fn finish(self) -> Result<ConfirmationCertificate, ProtocolError> {
        if !self.is_quorum() {
            return Err(ProtocolError::NotEnoughWeight {
                weight: self.weight,
                required: self.committee.threshold(RequiredWeight::Quorum),
                n_shards: self.committee.n_shards(),
                kind: "quorum: 3w ≥ 2n + 1",
            });
        }
        ConfirmationCertificate::from_signed_messages(self.signers, &self.signed)
    }
}

/// Verifies confirmations from `(member index, confirmation)` pairs in order, skipping (and
/// logging) invalid ones, and stops at the first quorum. Fails if no quorum is reached.
pub fn aggregate_confirmations<'m>(
    committee: &Committee,
    blob_id: BlobId,
    blob_type: BlobPersistenceType,
    confirmations: impl IntoIterator<Item = (u16, &'m SignedMessage)>,
) -> Result<ConfirmationCertificate, ProtocolError> {
    let mut aggregator = ConfirmationAggregator::new(committee, blob_id, blob_type);
    for (index, confirmation) in confirmations {
        match aggregator.add(index, confirmation) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => debug!(%blob_id, signer = index, error = %e, "confirmation rejected"),
        }
    }
    aggregator.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ObjectId;
    use crate::protocol::bls::ProtocolKeyPair;
    use crate::protocol::committee::tests::test_committee;

    const BLOB_ID: BlobId = BlobId([7; 32]);
    const PERMANENT: BlobPersistenceType = BlobPersistenceType::Permanent;

    fn confirm(key: &ProtocolKeyPair, epoch: u32) -> SignedMessage {
        ConfirmationMessage::new(epoch, BLOB_ID, PERMANENT).sign(key)
    }

    #[test]
    fn bitmap_round_trip_and_layout() {
        assert_eq!(
            signers_to_bitmap(&[0, 9], 10).unwrap(),
            vec![0b0000_0001, 0b0000_0010]
        );
        assert_eq!(signers_to_bitmap(&[7], 8).unwrap(), vec![0b1000_0000]);
        assert_eq!(
            bitmap_to_signers(&[0b0000_0101, 0b10], 10).unwrap(),
            vec![0, 2, 9]
        );
        // Shorter bitmaps are allowed, longer are not; bits past the last member must be clear.
        assert_eq!(bitmap_to_signers(&[1], 20).unwrap(), vec![0]);
        assert!(bitmap_to_signers(&[0, 0, 0], 10).is_err());
        assert!(bitmap_to_signers(&[0, 0b100], 10).is_err());
        assert_eq!(
            signers_to_bitmap(&[3, 3], 10),
            Err(ProtocolError::DuplicateSigner { index: 3 })
        );
        assert!(signers_to_bitmap(&[10], 10).is_err());
    }

    #[test]
    fn aggregator_builds_a_verifying_certificate_and_stops_at_quorum() {
        // 10 shards: quorum needs 7.
        let (committee, keys) = test_committee(5, &[3, 3, 2, 1, 1]);
        let mut agg = ConfirmationAggregator::new(&committee, BLOB_ID, PERMANENT);
        assert!(!agg.add(0, &confirm(&keys[0], 5)).unwrap()); // 3
        assert!(!agg.add(1, &confirm(&keys[1], 5)).unwrap()); // 6
        assert!(agg.add(3, &confirm(&keys[3], 5)).unwrap()); // 7: quorum
        // Past quorum, nothing more is added (not even verified).
        assert!(agg.add(4, &confirm(&keys[0], 5)).unwrap());
        assert_eq!(agg.signers(), &[0, 1, 3]);
        let cert = agg.finish().unwrap();
        assert_eq!(cert.signers, vec![0, 1, 3]);
        assert_eq!(
            committee
                .verify_certificate(&cert, RequiredWeight::Quorum)
                .unwrap(),
            7
        );
        let bitmap = cert.to_bitmap_form(committee.n_members()).unwrap();
        assert_eq!(bitmap.signers_bitmap, vec![0b0000_1011]);
        assert_eq!(
            committee
                .verify_bitmap_certificate(
                    &bitmap.signature,
                    &bitmap.signers_bitmap,
                    &bitmap.serialized_message,
                    RequiredWeight::Quorum
                )
                .unwrap(),
            7
        );
        assert_eq!(cert.confirmation().unwrap().blob_id, BLOB_ID);
    }

    #[test]
    fn aggregator_rejects_bad_confirmations() {
        let (committee, keys) = test_committee(5, &[3, 3, 2, 1, 1]);
        let mut agg = ConfirmationAggregator::new(&committee, BLOB_ID, PERMANENT);
        // Signed by another member's key.
        assert_eq!(
            agg.add(0, &confirm(&keys[1], 5)),
            Err(ProtocolError::SignatureVerification)
        );
        // Wrong epoch.
        assert!(matches!(
            agg.add(0, &confirm(&keys[0], 4)),
            Err(ProtocolError::EpochMismatch { .. })
        ));
        // Wrong blob.
        let other = ConfirmationMessage::new(5, BlobId([1; 32]), PERMANENT).sign(&keys[0]);
        assert!(matches!(
            agg.add(0, &other),
            Err(ProtocolError::BlobIdMismatch { .. })
        ));
        // Unknown member.
        assert!(matches!(
            agg.add(9, &confirm(&keys[0], 5)),
            Err(ProtocolError::SignerOutOfRange { .. })
        ));
        // Duplicate.
        agg.add(0, &confirm(&keys[0], 5)).unwrap();
        assert_eq!(
            agg.add(0, &confirm(&keys[0], 5)),
            Err(ProtocolError::DuplicateSigner { index: 0 })
        );
        // Under quorum.
        agg.add(1, &confirm(&keys[1], 5)).unwrap();
        assert_eq!(agg.weight(), 6);
        assert!(matches!(
            agg.finish(),
            Err(ProtocolError::NotEnoughWeight {
                weight: 6,
                required: 7,
                ..
            })
        ));
    }

    #[test]
    fn aggregate_confirmations_skips_invalid_ones() {
        let (committee, keys) = test_committee(2, &[1, 1, 1, 1]);
        let good: Vec<_> = keys.iter().map(|k| confirm(k, 2)).collect();
        let forged = confirm(&keys[3], 2); // claims to be from member 0
        let input = [
            (0u16, &forged),
            (1, &good[1]),
            (2, &good[2]),
            (3, &good[3]),
            (0, &good[0]),
        ];
        let cert = aggregate_confirmations(&committee, BLOB_ID, PERMANENT, input).unwrap();
        assert_eq!(cert.signers, vec![1, 2, 3]);
        committee
            .verify_certificate(&cert, RequiredWeight::Quorum)
            .unwrap();
        // Only two valid ones: no quorum (need 3 of 4).
        let input = [(0u16, &good[0]), (1, &good[1]), (2, &forged)];
        assert!(matches!(
            aggregate_confirmations(&committee, BLOB_ID, PERMANENT, input),
            Err(ProtocolError::NotEnoughWeight { .. })
        ));
    }

    #[test]
    fn committee_rejects_forged_and_malformed_certificates() {
        let (committee, keys) = test_committee(1, &[1, 1, 1, 1]);
        let msgs: Vec<_> = keys.iter().map(|k| confirm(k, 1)).collect();
        let cert =
            ConfirmationCertificate::from_signed_messages(vec![0, 1, 2], &msgs[..3]).unwrap();
        committee
            .verify_certificate(&cert, RequiredWeight::Quorum)
            .unwrap();

        // Claimed signers differ from the actual ones.
        let mut wrong = cert.clone();
        wrong.signers = vec![0, 1, 3];
        assert_eq!(
            committee.verify_certificate(&wrong, RequiredWeight::Quorum),
            Err(ProtocolError::SignatureVerification)
        );
        // Under quorum (but enough for one correct node).
        let small = ConfirmationCertificate::from_signed_messages(vec![0, 1], &msgs[..2]).unwrap();
        assert!(matches!(
            committee.verify_certificate(&small, RequiredWeight::Quorum),
            Err(ProtocolError::NotEnoughWeight {
                weight: 2,
                required: 3,
                ..
            })
        ));
        assert_eq!(
            committee
                .verify_certificate(&small, RequiredWeight::OneCorrectNode)
                .unwrap(),
            2
        );
        // Duplicate signer padding the weight.
        let dup = ConfirmationCertificate::from_signed_messages(
            vec![0, 1, 1],
            &[msgs[0].clone(), msgs[1].clone(), msgs[1].clone()],
        )
        .unwrap();
        assert_eq!(
            committee.verify_certificate(&dup, RequiredWeight::Quorum),
            Err(ProtocolError::DuplicateSigner { index: 1 })
        );
        // Tampered message.
        let mut tampered = cert.clone();
        tampered.serialized_message =
            ConfirmationMessage::new(1, BlobId([9; 32]), PERMANENT).to_bytes();
        assert_eq!(
            committee.verify_certificate(&tampered, RequiredWeight::Quorum),
            Err(ProtocolError::SignatureVerification)
        );
        // A key outside the committee.
        let outsider = ProtocolKeyPair::from_seed(&[77; 32]).unwrap();
        let forged = ConfirmationCertificate::from_signed_messages(
            vec![0, 1, 2],
            &[msgs[0].clone(), msgs[1].clone(), confirm(&outsider, 1)],
        )
        .unwrap();
        assert_eq!(
            committee.verify_certificate(&forged, RequiredWeight::Quorum),
            Err(ProtocolError::SignatureVerification)
        );
        // Mixed messages cannot be aggregated.
        let other = ConfirmationMessage::new(
            1,
            BLOB_ID,
            BlobPersistenceType::Deletable {
                object_id: ObjectId([1; 32]),
            },
        )
        .sign(&keys[2]);
        assert_eq!(
            ConfirmationCertificate::from_signed_messages(
                vec![0, 1, 2],
                &[msgs[0].clone(), msgs[1].clone(), other]
            ),
            Err(ProtocolError::MessageMismatch)
        );
        // Empty.
        assert_eq!(
            committee.verify_bitmap_certificate(
                &cert.signature,
                &[],
                &cert.serialized_message,
                RequiredWeight::Quorum
            ),
            Err(ProtocolError::NoSigners)
        );
    }

    #[test]
    fn certificate_bcs_layout() {
        let (_, keys) = test_committee(1, &[1, 1, 1, 1]);
        let msgs: Vec<_> = keys.iter().map(|k| confirm(k, 1)).collect();
        let cert =
            ConfirmationCertificate::from_signed_messages(vec![0, 1, 2], &msgs[..3]).unwrap();
        let bytes = bcs::to_bytes(&cert).unwrap();
        // 3 signers: len 3 + 3×2 bytes LE; message: len 40 + 40 bytes; signature: 96 bytes.
        assert_eq!(bytes[..7], [3, 0, 0, 1, 0, 2, 0]);
        assert_eq!(bytes[7], 40);
        assert_eq!(bytes.len(), 7 + 1 + 40 + 96);
        assert_eq!(
            bcs::from_bytes::<ConfirmationCertificate>(&bytes).unwrap(),
            cert
        );
    }
}
