//! `lineage.rotation`: the signing key's ancestry back to the actor's first key.
//!
//! Version 1 is attested by a device; each later version is attested by a device too *and*
//! named by a rotation statement signed by the version before it. The chain must be complete
//! (versions 1..v, one rotation between each pair: no break, no fork) and in time order, and
//! the receipt must be signed after its key came into service.

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::DecodePublicKey;

use super::anchors::TrustAnchors;
use super::bundle::{Lineage, Predecessor};
use super::dsse::Envelope;
use super::statement::{self, KeyClaim, KeySubject, Receipt};
use super::{attestation, digest, dsse};

/// Checks the whole ancestry of the receipt's key (`key_id`, created at `key_created_at`).
/// Returns the time of the last rotation (`i64::MIN` for version 1): the key's start of
/// service, which nothing else here depends on the receipt's time.
pub(crate) fn check_chain(
    lineage: &Lineage,
    key_id: &str,
    key_created_at: i64,
    receipt: &Receipt,
    anchors: &TrustAnchors,
) -> Result<i64, String> {
    check_shape(lineage, key_id, receipt.key_version)?;
    let mut last_rotation = i64::MIN;
    // (createdAt of version k, rotatedAt of rotation k → k+1), checked once all are known.
    let mut times: Vec<(i64, i64)> = Vec::with_capacity(lineage.predecessors.len());
    let steps = lineage.predecessors.iter().zip(&lineage.rotations);
    for (i, (predecessor, rotation)) in steps.enumerate() {
        let link = Link {
            i,
            predecessor,
            rotation,
        };
        let (created, rotated) = check_version(lineage, &link, key_id, receipt, anchors)?;
        if rotated < last_rotation {
            return Err(format!(
                "rotation {} is dated before the rotation preceding it",
                i.saturating_add(1)
            ));
        }
        last_rotation = rotated;
        times.push((created, rotated));
    }
    check_handover_times(&times, key_created_at)?;
    check_in_service(receipt.signed_at_unix, last_rotation)?;
    Ok(last_rotation)
}

/// The receipt is not dated before its key's rotation into service.
pub(crate) fn check_in_service(signed_at: i64, last_rotation: i64) -> Result<(), String> {
    if signed_at < last_rotation {
        return Err("the receipt is dated before its key came into service".into());
    }
    Ok(())
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// One predecessor and one rotation per earlier version, and every version a different key:
/// a key cannot succeed itself (A→A) or come back (A→B→A).
fn check_shape(lineage: &Lineage, key_id: &str, key_version: u64) -> Result<(), String> {
    let earlier = key_version.checked_sub(1).ok_or("the key version is 0")?;
    if count(lineage.predecessors.len()) != earlier || count(lineage.rotations.len()) != earlier {
        return Err(format!(
            "key version {key_version} needs {earlier} earlier versions and {earlier} rotations; \
             the lineage has {} and {}",
            lineage.predecessors.len(),
            lineage.rotations.len()
        ));
    }
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
    Ok(())
}

/// Version `i + 1` of a lineage and the rotation it signed.
struct Link<'a> {
    i: usize,
    predecessor: &'a Predecessor,
    rotation: &'a Envelope,
}

/// Version `i + 1`: its key, the rotation it signed to the next version, and its own
/// attestation, valid when it rotated. Returns its (createdAt, rotatedAt).
fn check_version(
    lineage: &Lineage,
    link: &Link<'_>,
    key_id: &str,
    receipt: &Receipt,
    anchors: &TrustAnchors,
) -> Result<(i64, i64), String> {
    let Link {
        i,
        predecessor,
        rotation: rotation_envelope,
    } = *link;
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
    let (next_id, next_backend) = match lineage.predecessors.get(i.saturating_add(1)) {
        Some(next) => (next.key.key_id.as_str(), next.attestation.backend.as_str()),
        None => (key_id, receipt.backend.as_str()),
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
    // The earlier key was in hardware too.
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
    Ok((facts.created_at_unix, rotation.rotated_at_unix))
}

/// A key hands over after it was created, and to a key that already existed.
fn check_handover_times(times: &[(i64, i64)], key_created_at: i64) -> Result<(), String> {
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
    Ok(())
}
