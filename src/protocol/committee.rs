//! The committee of storage nodes for an epoch, and the weight rules certificates are judged by.
//!
//! A member's weight is the number of shards it holds. As in `bls_aggregate.move`:
//! - a set of signers with weight `w` out of `n` shards is a **quorum** iff `3w ≥ 2n + 1`;
//! - it **includes one correct node** (validity) iff `3w ≥ n + 1`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::encoding::{MAX_N_SHARDS, MIN_N_SHARDS};

use super::bls::{PublicKey, Signature};
use super::certificate::{ConfirmationCertificate, bitmap_to_signers};
use super::{Epoch, ObjectId, ProtocolError};

/// One storage node in a committee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitteeMember {
    /// The node's ID (its `StoragePool` object ID on Sui).
    pub node_id: ObjectId,
    pub name: String,
    /// Where its REST API listens, `host:port`.
    pub network_address: String,
    pub public_key: PublicKey,
    /// The shards this node holds in the committee's epoch.
    pub shard_ids: Vec<u16>,
}

impl CommitteeMember {
    /// The member's weight: the number of shards it holds.
    pub fn weight(&self) -> u16 {
        // Committee validation guarantees at most `n_shards ≤ u16::MAX` shards in total.
        u16::try_from(self.shard_ids.len()).unwrap_or(u16::MAX)
    }
}

/// Which weight a certificate must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequiredWeight {
    /// More than two thirds of the shards: `3w ≥ 2n + 1`.
    Quorum,
    /// At least one correct node among the signers: `3w ≥ n + 1`.
    OneCorrectNode,
}

impl RequiredWeight {
    fn name(self) -> &'static str {
        match self {
            Self::Quorum => "quorum: 3w ≥ 2n + 1",
            Self::OneCorrectNode => "one correct node: 3w ≥ n + 1",
        }
    }
}

/// The storage nodes and their shards for one epoch.
///
/// Invariants (checked by `new` and on deserialization): at least one member; every member
/// holds at least one shard; shards `0..n_shards` are each held by exactly one member; node IDs
/// and public keys are unique; `n_shards` lies in the range the encoding supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CommitteeWire", into = "CommitteeWire")]
pub struct Committee {
    epoch: Epoch,
    n_shards: u16,
    members: Vec<CommitteeMember>,
    /// `shard_owner[s]` = index of the member holding shard `s`.
    shard_owner: Vec<u16>,
}

#[derive(Serialize, Deserialize)]
struct CommitteeWire {
    epoch: Epoch,
    n_shards: u16,
    members: Vec<CommitteeMember>,
}

impl TryFrom<CommitteeWire> for Committee {
    type Error = ProtocolError;
    fn try_from(w: CommitteeWire) -> Result<Self, Self::Error> {
        Committee::new(w.epoch, w.n_shards, w.members)
    }
}

impl From<Committee> for CommitteeWire {
    fn from(c: Committee) -> Self {
        Self {
            epoch: c.epoch,
            n_shards: c.n_shards,
            members: c.members,
        }
    }
}

impl Committee {
    pub fn new(
        epoch: Epoch,
        n_shards: u16,
        members: Vec<CommitteeMember>,
    ) -> Result<Self, ProtocolError> {
        let invalid = |reason: String| ProtocolError::InvalidCommittee { reason };
        if !(MIN_N_SHARDS..=MAX_N_SHARDS).contains(&n_shards) {
            return Err(invalid(format!(
                "{n_shards} shards; RS2 needs {MIN_N_SHARDS}..={MAX_N_SHARDS}"
            )));
        }
        if members.is_empty() {
            return Err(invalid("no members".into()));
        }
        if members.len() > usize::from(n_shards) {
            return Err(invalid(format!(
                "{} members for {n_shards} shards: every member needs a shard",
                members.len()
            )));
        }
        const UNASSIGNED: u16 = u16::MAX;
        let mut shard_owner = vec![UNASSIGNED; usize::from(n_shards)];
        let mut node_ids = HashSet::new();
        let mut keys = HashSet::new();
        for (index, member) in members.iter().enumerate() {
            // `members.len() ≤ n_shards ≤ 4096`, so the index fits.
            let index = u16::try_from(index).map_err(|_| invalid("too many members".into()))?;
            if member.shard_ids.is_empty() {
                // The contract rejects zero-weight members (`EIncorrectCommittee`).
                return Err(invalid(format!(
                    "member {index} ({}) holds no shard",
                    member.name
                )));
            }
            if !node_ids.insert(member.node_id) {
                return Err(invalid(format!("node ID {} appears twice", member.node_id)));
            }
            if !keys.insert(member.public_key) {
                return Err(invalid(format!(
                    "public key {} appears twice",
                    member.public_key
                )));
            }
            for &shard in &member.shard_ids {
                let slot = shard_owner.get_mut(usize::from(shard)).ok_or_else(|| {
                    invalid(format!(
                        "member {index} holds shard {shard}, but there are only {n_shards} shards"
                    ))
                })?;
                if *slot != UNASSIGNED {
                    return Err(invalid(format!(
                        "shard {shard} is held by members {} and {index}",
                        *slot
                    )));
                }
                *slot = index;
            }
        }
        if let Some(shard) = shard_owner.iter().position(|&o| o == UNASSIGNED) {
            return Err(invalid(format!("shard {shard} is held by no member")));
        }
        Ok(Self {
            epoch,
            n_shards,
            members,
            shard_owner,
        })
    }

    /// The same members and shards, for another epoch (a committee that carries over).
    pub fn with_epoch(&self, epoch: Epoch) -> Self {
        Self {
            epoch,
            ..self.clone()
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn n_shards(&self) -> u16 {
        self.n_shards
    }

    pub fn members(&self) -> &[CommitteeMember] {
        &self.members
    }

    pub fn n_members(&self) -> usize {
        self.members.len()
    }

    pub fn member(&self, index: u16) -> Option<&CommitteeMember> {
        self.members.get(usize::from(index))
    }

    /// The index of the member holding `shard`.
    pub fn shard_owner(&self, shard: u16) -> Option<u16> {
        self.shard_owner.get(usize::from(shard)).copied()
    }

    pub fn index_of_node(&self, node_id: &ObjectId) -> Option<u16> {
        self.members
            .iter()
            .position(|m| &m.node_id == node_id)
            .and_then(|i| u16::try_from(i).ok())
    }

    pub fn index_of_key(&self, key: &PublicKey) -> Option<u16> {
        self.members
            .iter()
            .position(|m| &m.public_key == key)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// Whether weight `w` is a quorum: `3w ≥ 2n + 1` (`bls_aggregate::is_quorum`).
    // Written exactly as in `bls_aggregate.move` so the two can be compared at a glance.
    #[allow(clippy::int_plus_one)]
    pub fn is_quorum(&self, weight: u32) -> bool {
        3 * u64::from(weight) >= 2 * u64::from(self.n_shards) + 1
    }

    /// Whether weight `w` includes one correct node: `3w ≥ n + 1`
    /// (`bls_aggregate::includes_one_correct_node`).
    pub fn includes_one_correct_node(&self, weight: u32) -> bool {
        3 * u64::from(weight) > u64::from(self.n_shards)
    }

    pub fn meets(&self, weight: u32, required: RequiredWeight) -> bool {
        match required {
            RequiredWeight::Quorum => self.is_quorum(weight),
            RequiredWeight::OneCorrectNode => self.includes_one_correct_node(weight),
        }
    }

    /// The smallest weight that meets `required`.
    pub fn threshold(&self, required: RequiredWeight) -> u32 {
        let n = u32::from(self.n_shards);
        match required {
            RequiredWeight::Quorum => (2 * n + 1).div_ceil(3),
            RequiredWeight::OneCorrectNode => (n + 1).div_ceil(3),
        }
    }

    /// The total weight of `signers`, rejecting out-of-range and repeated indices.
    pub fn weight_of(&self, signers: &[u16]) -> Result<u32, ProtocolError> {
        let mut seen = vec![false; self.members.len()];
        let mut weight = 0u32;
        for &index in signers {
            let slot = seen
                .get_mut(usize::from(index))
                .ok_or(ProtocolError::SignerOutOfRange {
                    index,
                    n_members: self.members.len(),
                })?;
            if *slot {
                return Err(ProtocolError::DuplicateSigner { index });
            }
            *slot = true;
            weight += u32::from(self.members[usize::from(index)].weight());
        }
        Ok(weight)
    }

    fn check_weight(&self, weight: u32, required: RequiredWeight) -> Result<(), ProtocolError> {
        if self.meets(weight, required) {
            Ok(())
        } else {
            Err(ProtocolError::NotEnoughWeight {
                weight,
                required: self.threshold(required),
                n_shards: self.n_shards,
                kind: required.name(),
            })
        }
    }

    /// Verifies a certificate given as signer indices: indices in range and distinct, enough
    /// weight, and the aggregate signature valid for the signers' keys. Returns the weight.
    ///
    /// This checks the signature only; the caller checks the message (its epoch against this
    /// committee's, and its contents).
    pub fn verify_certificate(
        &self,
        certificate: &ConfirmationCertificate,
        required: RequiredWeight,
    ) -> Result<u32, ProtocolError> {
        if certificate.signers.is_empty() {
            return Err(ProtocolError::NoSigners);
        }
        let weight = self.weight_of(&certificate.signers)?;
        self.check_weight(weight, required)?;
        certificate.signature.verify_aggregate(
            certificate
                .signers
                .iter()
                .map(|&i| &self.members[usize::from(i)].public_key),
            &certificate.serialized_message,
        )?;
        Ok(weight)
    }

    /// Verifies a certificate in the contract's form (`verify_certificate_and_weight`): signers
    /// as a little-endian bitmap over members, no longer than `ceil(members / 8)` bytes, bits
    /// past the last member clear. Returns the weight.
    pub fn verify_bitmap_certificate(
        &self,
        signature: &Signature,
        signers_bitmap: &[u8],
        message: &[u8],
        required: RequiredWeight,
    ) -> Result<u32, ProtocolError> {
        let signers = bitmap_to_signers(signers_bitmap, self.members.len())?;
        if signers.is_empty() {
            return Err(ProtocolError::NoSigners);
        }
        let weight = self.weight_of(&signers)?;
        self.check_weight(weight, required)?;
        signature.verify_aggregate(
            signers
                .iter()
                .map(|&i| &self.members[usize::from(i)].public_key),
            message,
        )?;
        Ok(weight)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::bls::ProtocolKeyPair;

    /// A committee of `weights.len()` members with deterministic keys; member `i` holds the
    /// next `weights[i]` shards.
    pub(crate) fn test_committee(
        epoch: Epoch,
        weights: &[u16],
    ) -> (Committee, Vec<ProtocolKeyPair>) {
        test_committee_with_seed(epoch, weights, 0xa5)
    }

    /// Like `test_committee`, with keys and node IDs derived from `seed` (other seeds give
    /// other nodes).
    pub(crate) fn test_committee_with_seed(
        epoch: Epoch,
        weights: &[u16],
        seed: u8,
    ) -> (Committee, Vec<ProtocolKeyPair>) {
        let mut next = 0u16;
        let mut members = Vec::new();
        let mut keys = Vec::new();
        for (i, &w) in weights.iter().enumerate() {
            let i16 = u16::try_from(i).unwrap();
            let mut key_seed = [seed; 32];
            key_seed[..2].copy_from_slice(&i16.to_le_bytes());
            let kp = ProtocolKeyPair::from_seed(&key_seed).unwrap();
            let mut node_id = [seed ^ 0xa5; 32];
            node_id[..2].copy_from_slice(&(i16 + 1).to_le_bytes());
            members.push(CommitteeMember {
                node_id: ObjectId(node_id),
                name: format!("node-{i}"),
                network_address: format!("127.0.0.1:{}", 9000 + i),
                public_key: *kp.public(),
                shard_ids: (next..next + w).collect(),
            });
            keys.push(kp);
            next += w;
        }
        (Committee::new(epoch, next, members).unwrap(), keys)
    }

    #[test]
    fn thresholds_match_the_contract() {
        for (n, quorum, validity) in [
            (4u16, 3u32, 2u32),
            (10, 7, 4),
            (7, 5, 3),
            (1000, 667, 334),
            (100, 67, 34),
        ] {
            let (c, _) = test_committee(0, &[n]);
            assert_eq!(c.threshold(RequiredWeight::Quorum), quorum, "n={n}");
            assert_eq!(
                c.threshold(RequiredWeight::OneCorrectNode),
                validity,
                "n={n}"
            );
            assert!(c.is_quorum(quorum) && !c.is_quorum(quorum - 1));
            assert!(
                c.includes_one_correct_node(validity) && !c.includes_one_correct_node(validity - 1)
            );
            // walrus-core: a quorum is n − f shards.
            let f = u32::from(crate::encoding::max_n_faulty(n));
            assert_eq!(quorum, u32::from(n) - f, "n={n}");
            assert_eq!(validity, f + 1, "n={n}");
        }
    }

    #[test]
    fn rejects_invalid_committees() {
        let (c, keys) = test_committee(1, &[2, 2, 2, 4]);
        let mut m = c.members().to_vec();
        // Overlapping shards.
        m[1].shard_ids = vec![0, 3];
        assert!(Committee::new(1, 10, m.clone()).is_err());
        // Missing shard.
        let mut m = c.members().to_vec();
        m[3].shard_ids.pop();
        assert!(Committee::new(1, 10, m).is_err());
        // Out-of-range shard.
        let mut m = c.members().to_vec();
        m[3].shard_ids.push(10);
        assert!(Committee::new(1, 10, m).is_err());
        // Zero weight.
        let mut m = c.members().to_vec();
        m.push(CommitteeMember {
            node_id: ObjectId([99; 32]),
            name: "empty".into(),
            network_address: String::new(),
            public_key: *ProtocolKeyPair::from_seed(&[99; 32]).unwrap().public(),
            shard_ids: vec![],
        });
        assert!(Committee::new(1, 10, m).is_err());
        // Duplicate key.
        let mut m = c.members().to_vec();
        m[1].public_key = *keys[0].public();
        assert!(Committee::new(1, 10, m).is_err());
        // Too few shards for RS2.
        assert!(Committee::new(1, 3, c.members()[..1].to_vec()).is_err());
        assert!(Committee::new(1, 10, vec![]).is_err());
    }

    #[test]
    fn shard_owner_and_lookup() {
        let (c, keys) = test_committee(1, &[2, 3, 5]);
        assert_eq!(c.shard_owner(0), Some(0));
        assert_eq!(c.shard_owner(2), Some(1));
        assert_eq!(c.shard_owner(9), Some(2));
        assert_eq!(c.shard_owner(10), None);
        assert_eq!(c.index_of_key(keys[1].public()), Some(1));
        let mut id = [0u8; 32];
        id[0] = 3;
        assert_eq!(c.index_of_node(&ObjectId(id)), Some(2));
    }

    #[test]
    fn weight_of_rejects_duplicates_and_out_of_range() {
        let (c, _) = test_committee(1, &[2, 3, 5]);
        assert_eq!(c.weight_of(&[0, 2]).unwrap(), 7);
        assert_eq!(
            c.weight_of(&[0, 0]),
            Err(ProtocolError::DuplicateSigner { index: 0 })
        );
        assert_eq!(
            c.weight_of(&[3]),
            Err(ProtocolError::SignerOutOfRange {
                index: 3,
                n_members: 3
            })
        );
    }

    #[test]
    fn serde_round_trip_revalidates() {
        let (c, _) = test_committee(4, &[1, 1, 2]);
        let bytes = bcs::to_bytes(&c).unwrap();
        assert_eq!(bcs::from_bytes::<Committee>(&bytes).unwrap(), c);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Committee>(&json).unwrap(), c);
        // Corrupt n_shards in JSON: rejected on load.
        let bad = json.replace("\"n_shards\":4", "\"n_shards\":5");
        assert!(serde_json::from_str::<Committee>(&bad).is_err());
    }
}
