//! `lineage.rotation`: the signing key's ancestry back to the actor's first key.
//!
//! Version 1 is attested by a device; each later version is attested by a device too *and*
//! named by a rotation statement signed by the version before it. The chain must be complete
//! (versions 1..v, one rotation between each pair: no break, no fork) and in time order, and
//! the receipt must be signed after its key came into service.

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;

use super::anchors::TrustAnchors;
use super::bundle::Lineage;
use super::statement::{self, KeyClaim, KeySubject, Receipt};
use super::{attestation, digest, dsse};

pub(crate) fn check_chain(
    lineage: &Lineage,
    key_id: &str,
    key_created_at: i64,
    receipt: &Receipt,
    anchors: &TrustAnchors,
) -> Result<(), String> {
    let earlier = receipt
        .key_version
        .checked_sub(1)
        .ok_or("the key version is 0")?;
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    if count(lineage.predecessors.len()) != earlier || count(lineage.rotations.len()) != earlier {
        return Err(format!(
            "key version {} needs {earlier} earlier versions and {earlier} rotations; \
             the lineage has {} and {}",
            receipt.key_version,
            lineage.predecessors.len(),
            lineage.rotations.len()
        ));
    }
    // Each version is a different key: a key cannot succeed itself (A→A) or come back (A→B→A).
    let mut seen = std::collections::BTreeSet::new();
    for id in lineage
        .predecessors
        .iter()
        .map(|p| p.key.key_id.as_str())
        .chain(std::iter::once(key_id))
    {
        if !seen.insert(id) {
            return Err(format!(
                "key {id} appears twice in the lineage: a version must be a new key"
            ));
        }
    }
    let mut last_rotation = i64::MIN;
    // (createdAt of version k, rotatedAt of rotation k → k+1), checked once all are known.
    let mut times: Vec<(i64, i64)> = Vec::with_capacity(lineage.predecessors.len());
    for (i, (predecessor, rotation_envelope)) in lineage
        .predecessors
        .iter()
        .zip(&lineage.rotations)
        .enumerate()
    {
        let version = count(i).saturating_add(1);
        if predecessor.version != version {
            return Err(format!(
                "predecessors[{i}] is version {}, expected {version}",
                predecessor.version
            ));
        }
        let spki = &predecessor.key.spki_der;
        let key = VerifyingKey::from_public_key_der(spki)
            .map_err(|e| format!("version {version}: not an EC P-256 key: {e}"))?;
        let id = digest::key_id(spki);
        if predecessor.key.key_id != id {
            return Err(format!(
                "version {version}: keyId is not the SHA-256 of its key"
            ));
        }

        let rotation = statement::check_rotation(rotation_envelope, &receipt.actor)
            .map_err(|e| format!("rotation {version}→{}: {e}", version.saturating_add(1)))?;
        let next_id = match lineage.predecessors.get(i.saturating_add(1)) {
            Some(next) => next.key.key_id.as_str(),
            None => key_id,
        };
        let next_backend = match lineage.predecessors.get(i.saturating_add(1)) {
            Some(next) => next.attestation.backend.as_str(),
            None => receipt.backend.as_str(),
        };
        if rotation.from_version != version
            || rotation.from_key_id != id
            || rotation.to_version != version.saturating_add(1)
            || rotation.to_key_id != next_id
            || rotation.to_backend != next_backend
        {
            return Err(format!(
                "rotation {i} links v{} {} → v{} {}, but the chain needs v{version} {id} → v{} {next_id}: \
                 a break or a fork",
                rotation.from_version,
                rotation.from_key_id,
                rotation.to_version,
                rotation.to_key_id,
                version.saturating_add(1)
            ));
        }
        if rotation_envelope.keyid != id {
            return Err(format!(
                "rotation {version}: keyid is not version {version}'s key id"
            ));
        }
        dsse::verify(rotation_envelope, &key)
            .map_err(|e| format!("rotation {version}: not signed by version {version}: {e}"))?;
        if rotation.rotated_at_unix < last_rotation {
            return Err(format!(
                "rotation {version} is dated before the rotation preceding it"
            ));
        }
        last_rotation = rotation.rotated_at_unix;

        // The earlier key was in hardware too: its own attestation, valid when it rotated.
        let claim = KeyClaim {
            subject: KeySubject::Actor {
                actor: &receipt.actor,
                version,
            },
            key_id: &id,
            backend: &predecessor.attestation.backend,
        };
        let facts = attestation::check(
            &predecessor.attestation,
            anchors,
            &claim,
            rotation.rotated_at_unix,
        )
        .map_err(|e| format!("version {version}: {e}"))?
        .facts;
        times.push((facts.created_at_unix, rotation.rotated_at_unix));
    }
    // A key hands over after it was created, and to a key that already existed.
    let next_created = times
        .iter()
        .skip(1)
        .map(|(created, _)| *created)
        .chain(std::iter::once(key_created_at));
    for (version, ((created, rotated), next)) in (1u64..).zip(times.iter().zip(next_created)) {
        if *created > *rotated {
            return Err(format!(
                "version {version} is dated as created after it rotated"
            ));
        }
        if next > *rotated {
            return Err(format!(
                "rotation {version}: the next version is dated as created after the rotation"
            ));
        }
    }
    if receipt.signed_at_unix < last_rotation {
        return Err("the receipt is dated before its key came into service".into());
    }
    Ok(())
}
