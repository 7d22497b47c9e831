//! [`BundleVerifier`]: the checks of FORMAT.md §7, in order, with what bundles of one log
//! share checked once.
//!
//! Bundles of one key and one log repeat the same lineage (certificates, statements, earlier
//! versions), the same log key and often the same checkpoint; bundles of one batch repeat the
//! same signed batch statement. Each of these is checked in full the first time it is seen
//! and remembered by its exact bytes; later bundles then only check what is their own (the
//! receipt, its signature or its leaf, the inclusion proof). Nothing is remembered that
//! depends on anything but those bytes and the anchors, except the time certificates are
//! checked at: a remembered attestation carries the interval in which all its certificates
//! are valid, and a bundle dated outside it is checked in full again (and so fails as it
//! would alone). A verifier is tied to one set of anchors by its borrow.

use std::collections::HashMap;
use std::sync::Arc;

use p256::ecdsa::VerifyingKey;
use sha2::{Digest, Sha256};

use super::anchors::TrustAnchors;
use super::batch::{self, BatchMember, BatchStatement, MODE_BATCH, MODE_SINGLE};
use super::bundle::{self, Bundle, Lineage, LogKey, Seal};
use super::checkpoint::{ParsedCheckpoint, verify_checkpoint};
use super::error::{Check, VerifyError, under};
use super::statement::{self, KeyClaim, KeySubject, Receipt};
use super::{Verified, attestation, attestation_failure, check_actor_key, check_document};
use super::{check_keyid, dsse, log, rotation};

/// Each table is emptied when it reaches this many entries, bounding memory over any number
/// of bundles (a run over one log needs a handful of entries, bar batches and checkpoints).
const MAX_ENTRIES: usize = 16_384;

/// What a checked actor-key attestation and ancestry established, valid for receipts dated
/// within `window`.
#[derive(Clone)]
struct ActorChecked {
    window: (i64, i64),
    created_at: i64,
    last_rotation: i64,
    device_subject: String,
    anchor_subject: String,
    token_serial: String,
    origin: String,
}

/// Which actor key a lineage was checked for.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ActorClaim {
    lineage: usize,
    key_id: String,
    actor: String,
    version: u64,
    backend: String,
}

/// Verifies bundles under one set of trust anchors, remembering what they share.
pub struct BundleVerifier<'a> {
    anchors: &'a TrustAnchors,
    /// Decoded lineages and log keys by their JSON text, each with a number naming it.
    lineages: HashMap<String, (usize, Arc<Lineage>)>,
    log_keys: HashMap<String, (usize, Arc<LogKey>)>,
    /// The last lineage and log key seen, compared before any hashing.
    last_lineage: Option<(String, usize, Arc<Lineage>)>,
    last_log_key: Option<(String, usize, Arc<LogKey>)>,
    next_id: usize,
    actors: HashMap<ActorClaim, ActorChecked>,
    /// Log key number → the interval its attestation holds in.
    log_key_windows: HashMap<usize, (i64, i64)>,
    /// (log key number, note) → the verified checkpoint.
    checkpoints: HashMap<(usize, String), ParsedCheckpoint>,
    /// SHA-256 over (key id, statement payload, signature) → the checked batch statement.
    batches: HashMap<[u8; 32], BatchStatement>,
}

fn bounded<K, V>(map: &mut HashMap<K, V>) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
}

impl<'a> BundleVerifier<'a> {
    /// A verifier that trusts `anchors`.
    pub fn new(anchors: &'a TrustAnchors) -> Self {
        BundleVerifier {
            anchors,
            lineages: HashMap::new(),
            log_keys: HashMap::new(),
            last_lineage: None,
            last_log_key: None,
            next_id: 0,
            actors: HashMap::new(),
            log_key_windows: HashMap::new(),
            checkpoints: HashMap::new(),
            batches: HashMap::new(),
        }
    }

    /// Verifies one bundle, exactly as [`super::verify_bundle`] does.
    pub fn verify(
        &mut self,
        bundle_json: &[u8],
        document: Option<&[u8]>,
    ) -> Result<Verified, VerifyError> {
        let bundle = bundle::parse(bundle_json).map_err(under(Check::BundleParse))?;
        let (lineage_id, lineage) = self
            .lineage(bundle.lineage_json)
            .map_err(under(Check::BundleParse))?;
        let (log_id, log_key) = self
            .log_key(bundle.log.log_key_json)
            .map_err(under(Check::BundleParse))?;

        let (key_id, key) =
            check_actor_key(&bundle.actor_key).map_err(under(Check::ReceiptSignature))?;
        let (receipt, batch) = self.check_receipt(&bundle, &key_id, &key)?;

        let document_checked = match document {
            Some(doc) => {
                check_document(doc, &receipt.document_sha256)
                    .map_err(under(Check::ReceiptDocument))?;
                true
            }
            None => false,
        };

        let claim = ActorClaim {
            lineage: lineage_id,
            key_id: key_id.clone(),
            actor: receipt.actor.clone(),
            version: receipt.key_version,
            backend: receipt.backend.clone(),
        };
        let actor = self.check_actor(&lineage, claim, &receipt)?;
        self.check_log_key(log_id, &log_key, receipt.signed_at_unix)
            .map_err(under(Check::LogKey))?;
        let tree = self
            .checkpoint(log_id, &log_key, &bundle)
            .map_err(under(Check::LogCheckpoint))?;
        log::check_inclusion(&bundle, &receipt, &tree).map_err(under(Check::LogInclusion))?;

        Ok(Verified {
            actor: receipt.actor,
            action_type: receipt.action_type,
            target: receipt.target,
            document_sha256: receipt.document_sha256,
            document_checked,
            key_id,
            key_version: receipt.key_version,
            backend: receipt.backend,
            sequence: receipt.sequence,
            log_index: bundle.log.index,
            log_index_signed: receipt.log_index.is_some(),
            signed_at: receipt.signed_at,
            device_subject: actor.device_subject,
            anchor_subject: actor.anchor_subject,
            token_serial: actor.token_serial,
            origin: actor.origin,
            context: receipt.context,
            log_origin: log_key.key_name.clone(),
            tree_size: tree.size,
            caller: receipt.caller,
            mode: if batch.is_some() {
                MODE_BATCH.into()
            } else {
                MODE_SINGLE.into()
            },
            batch,
        })
    }

    fn lineage(&mut self, text: &str) -> Result<(usize, Arc<Lineage>), String> {
        // Bundles of one key come in runs: compare with the last one before hashing the text.
        if let Some((last, id, lineage)) = &self.last_lineage
            && last == text
        {
            return Ok((*id, Arc::clone(lineage)));
        }
        let found = match self.lineages.get(text) {
            Some((id, lineage)) => (*id, Arc::clone(lineage)),
            None => {
                let lineage = Arc::new(bundle::decode_lineage_text(text)?);
                let id = self.new_id();
                bounded(&mut self.lineages);
                self.lineages
                    .insert(text.to_owned(), (id, Arc::clone(&lineage)));
                (id, lineage)
            }
        };
        self.last_lineage = Some((text.to_owned(), found.0, Arc::clone(&found.1)));
        Ok(found)
    }

    fn log_key(&mut self, text: &str) -> Result<(usize, Arc<LogKey>), String> {
        if let Some((last, id, key)) = &self.last_log_key
            && last == text
        {
            return Ok((*id, Arc::clone(key)));
        }
        let found = match self.log_keys.get(text) {
            Some((id, key)) => (*id, Arc::clone(key)),
            None => {
                let key = Arc::new(bundle::decode_log_key_text(text)?);
                let id = self.new_id();
                bounded(&mut self.log_keys);
                self.log_keys
                    .insert(text.to_owned(), (id, Arc::clone(&key)));
                (id, key)
            }
        };
        self.last_log_key = Some((text.to_owned(), found.0, Arc::clone(&found.1)));
        Ok(found)
    }

    fn new_id(&mut self) -> usize {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// `receipt.signature`, `receipt.batch` (batch receipts) and `receipt.statement`.
    /// Returns the receipt and, for a batch receipt, (leaf index, batch size).
    fn check_receipt(
        &mut self,
        bundle: &Bundle<'_>,
        key_id: &str,
        key: &VerifyingKey,
    ) -> Result<(Receipt, Option<(u64, u64)>), VerifyError> {
        let sealed = &bundle.receipt;
        match &sealed.seal {
            Seal::Single(envelope) => {
                check_keyid("receipt", &envelope.keyid, key_id)
                    .and_then(|()| dsse::verify(envelope, key))
                    .map_err(under(Check::ReceiptSignature))?;
                let receipt = statement::check_receipt(
                    &sealed.payload_type,
                    &sealed.payload,
                    key_id,
                    MODE_SINGLE,
                )
                .map_err(under(Check::ReceiptStatement))?;
                Ok((receipt, None))
            }
            Seal::Batch(member) => {
                let statement = self.batch_statement(member, key_id, key)?;
                batch::check_leaf(&statement, member, &sealed.payload)
                    .map_err(under(Check::ReceiptBatch))?;
                let receipt = statement::check_receipt(
                    &sealed.payload_type,
                    &sealed.payload,
                    key_id,
                    MODE_BATCH,
                )
                .and_then(|r| batch::check_agrees(&statement, member.leaf_index, &r).map(|()| r))
                .map_err(under(Check::ReceiptStatement))?;
                Ok((receipt, Some((member.leaf_index, statement.size))))
            }
        }
    }

    /// The batch statement verifies under the actor key (`receipt.signature`) and is a batch
    /// statement about that key (`receipt.batch`); remembered by its exact bytes.
    fn batch_statement(
        &mut self,
        member: &BatchMember,
        key_id: &str,
        key: &VerifyingKey,
    ) -> Result<BatchStatement, VerifyError> {
        let envelope = &member.statement;
        let mut h = Sha256::new();
        for part in [
            key_id.as_bytes(),
            envelope.keyid.as_bytes(),
            envelope.payload_type.as_bytes(),
            &envelope.payload,
            &envelope.signature_der,
        ] {
            h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
            h.update(part);
        }
        let digest: [u8; 32] = h.finalize().into();
        if let Some(known) = self.batches.get(&digest) {
            return Ok(known.clone());
        }
        check_keyid("batch.statement", &envelope.keyid, key_id)
            .and_then(|()| dsse::verify(envelope, key))
            .map_err(|e| format!("the batch statement: {e}"))
            .map_err(under(Check::ReceiptSignature))?;
        let statement =
            batch::check_statement(envelope, key_id).map_err(under(Check::ReceiptBatch))?;
        bounded(&mut self.batches);
        self.batches.insert(digest, statement.clone());
        Ok(statement)
    }

    /// `lineage.certificate`, `lineage.signature`, `lineage.statement`, `lineage.rotation`.
    fn check_actor(
        &mut self,
        lineage: &Lineage,
        claim: ActorClaim,
        receipt: &Receipt,
    ) -> Result<ActorChecked, VerifyError> {
        let at = receipt.signed_at_unix;
        if let Some(known) = self.actors.get(&claim)
            && known.window.0 <= at
            && at <= known.window.1
        {
            let known = known.clone();
            check_created(known.created_at, at)?;
            rotation::check_in_service(at, known.last_rotation)
                .map_err(under(Check::LineageRotation))?;
            return Ok(known);
        }
        let key_claim = KeyClaim {
            subject: KeySubject::Actor {
                actor: &claim.actor,
                version: claim.version,
            },
            key_id: &claim.key_id,
            backend: &claim.backend,
        };
        let attested = attestation::check(lineage, self.anchors, &key_claim, at)
            .map_err(attestation_failure)?;
        check_created(attested.facts.created_at_unix, at)?;
        let last_rotation = rotation::check_chain(
            lineage,
            &claim.key_id,
            attested.facts.created_at_unix,
            receipt,
            self.anchors,
        )
        .map_err(under(Check::LineageRotation))?;
        let window = attestation::validity(lineage, attested.anchor)
            .map_err(under(Check::LineageCertificate))?;
        let checked = ActorChecked {
            window,
            created_at: attested.facts.created_at_unix,
            last_rotation,
            device_subject: lineage.device.subject(),
            anchor_subject: attested.anchor.subject(),
            token_serial: attested.facts.token_serial,
            origin: attested.facts.origin,
        };
        bounded(&mut self.actors);
        self.actors.insert(claim, checked.clone());
        Ok(checked)
    }

    /// `log.key`, remembered with the interval in which it holds.
    fn check_log_key(&mut self, id: usize, key: &LogKey, at: i64) -> Result<(), String> {
        if let Some((from, to)) = self.log_key_windows.get(&id)
            && *from <= at
            && at <= *to
        {
            return Ok(());
        }
        let window = log::check_log_key(key, self.anchors, at)?;
        bounded(&mut self.log_key_windows);
        self.log_key_windows.insert(id, window);
        Ok(())
    }

    /// `log.checkpoint`: the note's signature is remembered; origin and size are checked for
    /// each bundle.
    fn checkpoint(
        &mut self,
        id: usize,
        key: &LogKey,
        bundle: &Bundle<'_>,
    ) -> Result<ParsedCheckpoint, String> {
        let lookup = (id, bundle.log.checkpoint.clone());
        let parsed = match self.checkpoints.get(&lookup) {
            Some(parsed) => parsed.clone(),
            None => {
                let parsed = verify_checkpoint(
                    bundle.log.checkpoint.as_bytes(),
                    &key.key_name,
                    &key.key.spki_der,
                )
                .map_err(|e| e.to_string())?;
                bounded(&mut self.checkpoints);
                self.checkpoints.insert(lookup, parsed.clone());
                parsed
            }
        };
        log::check_checkpoint_claims(&parsed, &bundle.log, key)?;
        Ok(parsed)
    }
}

/// The receipt is not dated before its key was created (`lineage.statement`).
fn check_created(created_at: i64, signed_at: i64) -> Result<(), VerifyError> {
    if created_at > signed_at {
        return Err(VerifyError::new(
            Check::LineageStatement,
            "the receipt is dated before its key was created",
        ));
    }
    Ok(())
}
