//! The `KeyAdmin` service and key lineage: creating and adopting actor keys, each with the
//! device's signed statement of what the hardware says about it.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use tonic::{Request, Response, Status};

use super::{DaemonState, auth::Caller, blocking, sequencer::RotationPlan, validate};
use crate::{
    api::{
        ActorKey, AdoptKeyRequest, CreateKeyRequest, ListKeysRequest, ListKeysResponse,
        RetireKeyRequest, RotateKeyRequest, adopt_key_request::Selector,
        key_admin_server::KeyAdmin,
    },
    backend::{Backend, BackendError, HardwareKey, KeyEvidence, KeySelector},
    ledger::{KeyRecord, KeyState},
    pki::device::DeviceIdentity,
    proof::{
        IN_TOTO_PAYLOAD_TYPE,
        dsse::{Envelope, signing_digest},
        key_id,
        lineage::{
            Attestation, EncodeError, Freshness, KeyDisposition, KeyOrigin, KeySubject, Lineage,
            Pkcs11Statement, Tpm2Certify, pkcs11_statement_payload, tpm2_certify_extra_data,
        },
        now_rfc3339,
        receipt::CallerInReceipt,
        spki_der,
    },
};

/// What an attestation is to say about a key.
#[derive(Debug, Clone, Copy)]
pub struct AttestationRequest<'a> {
    pub subject: KeySubject<'a>,
    pub origin: KeyOrigin,
    /// When the key was created: the PKCS#11 statement's or the TPM2_Certify's `createdAt`.
    pub created_at: &'a str,
    /// An `Attest` answer: bind the caller's nonce (and, on PKCS#11, the time of the statement).
    pub nonce: Option<&'a [u8]>,
}

fn encode_failed(e: EncodeError) -> BackendError {
    BackendError::Failed {
        operation: "encode statement",
        detail: e.to_string(),
    }
}

/// Has the device sign what the hardware states about a key (PKCS#11), or has the TPM
/// certify the key with its attestation key (TPM).
pub fn build_attestation(
    backend: &dyn Backend,
    device: &DeviceIdentity,
    key: &HardwareKey,
    request: &AttestationRequest<'_>,
) -> Result<Attestation, BackendError> {
    build_attestation_by(backend, backend, device, key, request)
}

/// [`build_attestation`] of a key held by `holder` (e.g. the log token) with the device key
/// of `device_backend` (the actors' token).
pub(crate) fn build_attestation_by(
    holder: &dyn Backend,
    device_backend: &dyn Backend,
    device: &DeviceIdentity,
    key: &HardwareKey,
    request: &AttestationRequest<'_>,
) -> Result<Attestation, BackendError> {
    let backend = holder;
    let facts = match backend.key_evidence(&key.key_ref)? {
        KeyEvidence::Pkcs11(facts) => facts,
        KeyEvidence::Tpm(facts) => {
            let reasons = facts.attributes.unfit_reasons();
            if !reasons.is_empty() {
                return Err(BackendError::KeyRefused(reasons.join("; ")));
            }
            return tpm_attestation(backend, device, key, request);
        }
    };
    let reasons = facts.attributes.unfit_reasons();
    if !reasons.is_empty() {
        return Err(BackendError::KeyRefused(reasons.join("; ")));
    }
    let id = key_id(&key.public_key);
    let attested_at = now_rfc3339();
    let payload = pkcs11_statement_payload(&Pkcs11Statement {
        subject: request.subject,
        key_id: &id,
        origin: request.origin,
        created_at: request.created_at,
        token: &facts.token,
        attributes: &facts.attributes,
        freshness: request.nonce.map(|nonce| Freshness {
            nonce: B64.encode(nonce),
            attested_at: &attested_at,
        }),
    })
    .map_err(encode_failed)?;
    let signature =
        device_backend.sign_digest(&device.key, &signing_digest(IN_TOTO_PAYLOAD_TYPE, &payload))?;
    Ok(Attestation {
        backend: backend.kind().as_str().into(),
        statement: Some(Envelope::new(
            IN_TOTO_PAYLOAD_TYPE,
            &payload,
            &device.key_id,
            &signature,
        )),
        tpm2_certify: None,
        device_certificate: B64.encode(&device.certificate_der),
        certificate_chain: device.chain_der.iter().map(|c| B64.encode(c)).collect(),
    })
}

/// TPM2_Certify of a TPM key by the AK, extraData binding the key's subject, creation time and
/// nonce.
fn tpm_attestation(
    backend: &dyn Backend,
    device: &DeviceIdentity,
    key: &HardwareKey,
    request: &AttestationRequest<'_>,
) -> Result<Attestation, BackendError> {
    let nonce = request.nonce.unwrap_or_default();
    let extra = tpm2_certify_extra_data(&request.subject, request.created_at, nonce)
        .map_err(encode_failed)?;
    let certified = backend.certify(&key.key_ref, &extra)?;
    Ok(Attestation {
        backend: backend.kind().as_str().into(),
        statement: None,
        tpm2_certify: Some(Tpm2Certify {
            attest: B64.encode(&certified.attest),
            signature: B64.encode(certified.signature.to_der().as_bytes()),
            public_area: B64.encode(&certified.public_area),
            ak_public_area: B64.encode(&certified.ak_public_area),
            created_at: request.created_at.to_owned(),
            nonce: request.nonce.map(|n| B64.encode(n)),
        }),
        device_certificate: B64.encode(&device.certificate_der),
        certificate_chain: device.chain_der.iter().map(|c| B64.encode(c)).collect(),
    })
}

/// The lineage of a first key version: its attestation alone.
pub fn first_lineage(attestation: Attestation) -> Lineage {
    Lineage {
        attestation,
        predecessors: Vec::new(),
        rotations: Vec::new(),
    }
}

pub(crate) fn to_api(key: &KeyRecord) -> ActorKey {
    ActorKey {
        actor: key.actor.clone(),
        version: key.version,
        backend: key.backend.as_str().into(),
        key_id: key.key_id.clone(),
        public_key_der: spki_der(&key.public_key),
        state: key.state.as_str().into(),
        created_at: key.created_at.clone(),
        origin: key.origin.as_str().into(),
        lineage_json: serde_json::to_string(&key.attestation).unwrap_or_default(),
        retired_at: key.retired_at.clone().unwrap_or_default(),
    }
}

pub struct KeyAdminService {
    pub(crate) state: Arc<DaemonState>,
}

impl KeyAdminService {
    /// Registers a key the backend holds as the actor's first version, undoing the key's
    /// creation if registration fails so no orphan is left on the token.
    async fn register(
        &self,
        caller: &Caller,
        actor: String,
        origin: KeyOrigin,
        obtain: impl FnOnce(&dyn Backend) -> Result<HardwareKey, BackendError> + Send + 'static,
    ) -> Result<Response<ActorKey>, Status> {
        validate::actor(&actor)?;
        let operation = match origin {
            KeyOrigin::Generated => "create",
            KeyOrigin::Adopted => "adopt",
        };
        self.state.authorize_admin(caller, &actor, operation)?;
        let state = Arc::clone(&self.state);
        let lookup = actor.clone();
        let existing = blocking(move || state.keys(Some(&lookup))).await??;
        if !existing.is_empty() {
            return Err(Status::already_exists(format!(
                "actor {actor:?} has a key already (rotation comes with key versions)"
            )));
        }
        let state = Arc::clone(&self.state);
        let record_actor = actor.clone();
        let record = blocking(move || {
            let key = obtain(state.backend.as_ref())?;
            let created_at = now_rfc3339();
            let attestation = build_attestation(
                state.backend.as_ref(),
                &state.device,
                &key,
                &AttestationRequest {
                    subject: KeySubject::Actor {
                        actor: &record_actor,
                        version: 1,
                    },
                    origin,
                    created_at: &created_at,
                    nonce: None,
                },
            )
            .inspect_err(|_| {
                if origin == KeyOrigin::Generated {
                    let _ = state.backend.destroy_key(&key.key_ref);
                }
            })?;
            Ok::<_, BackendError>(KeyRecord {
                actor: record_actor,
                version: 1,
                backend: state.backend.kind(),
                key_id: key_id(&key.public_key),
                key_ref: key.key_ref,
                public_key: key.public_key,
                origin,
                state: KeyState::Active,
                created_at,
                attestation,
                retired_at: None,
            })
        })
        .await??;
        let answer = to_api(&record);
        let key_ref = record.key_ref.clone();
        if let Err(e) = self
            .state
            .sequencer
            .register_key(record, caller.to_receipt())
            .await
        {
            // Destroy the new key only when it certainly was not stored.
            let unknown = matches!(e, crate::server::sequencer::SequencerError::Stopped);
            if origin == KeyOrigin::Generated && !unknown {
                let state = Arc::clone(&self.state);
                let _ = blocking(move || state.backend.destroy_key(&key_ref)).await;
            }
            return Err(e.into());
        }
        tracing::info!(actor = %actor, key_id = %answer.key_id, origin = origin.as_str(), caller = %caller, "actor key registered");
        Ok(Response::new(answer))
    }
}

#[tonic::async_trait]
impl KeyAdmin for KeyAdminService {
    async fn create_key(
        &self,
        request: Request<CreateKeyRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let result = async {
            let caller = Caller::of(&request)?;
            let actor = request.into_inner().actor;
            let label = format!("actseal {actor} v1");
            self.register(&caller, actor, KeyOrigin::Generated, move |backend| {
                backend.create_key(&label)
            })
            .await
        }
        .await;
        self.state.metrics.observe("CreateKey", result)
    }

    async fn list_keys(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let result = self.list_keys_as_caller(request).await;
        self.state.metrics.observe("ListKeys", result)
    }

    async fn adopt_key(
        &self,
        request: Request<AdoptKeyRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let result = self.adopt_key_as_caller(request).await;
        self.state.metrics.observe("AdoptKey", result)
    }

    async fn rotate_key(
        &self,
        request: Request<RotateKeyRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let result = self.rotate_key_as_caller(request).await;
        self.state.metrics.observe("RotateKey", result)
    }

    async fn accept_actor(
        &self,
        request: Request<crate::api::AcceptActorRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let result = super::handover::accept(&self.state, request).await;
        self.state.metrics.observe("AcceptActor", result)
    }

    async fn hand_over_actor(
        &self,
        request: Request<crate::api::HandOverActorRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let result = super::handover::hand_over(&self.state, request).await;
        self.state.metrics.observe("HandOverActor", result)
    }

    async fn retire_key(
        &self,
        request: Request<RetireKeyRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let result = self.retire_key_as_caller(request).await;
        self.state.metrics.observe("RetireKey", result)
    }
}

/// Keys in one ListKeys answer unless the caller asks for fewer, and the most it may ask for:
/// each key is a few KiB (its own attestation), so a page stays far below gRPC's 4 MiB.
const DEFAULT_PAGE_SIZE: u32 = 100;
const MAX_PAGE_SIZE: u32 = 500;

/// Where a ListKeys page ends: the last key it holds. Opaque to callers (base64url).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PageToken {
    actor: String,
    version: u32,
}

impl PageToken {
    fn encode(&self) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.version, self.actor))
    }

    fn decode(token: &str) -> Result<Option<PageToken>, Status> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || Status::invalid_argument("page_token: not a token from a ListKeys answer");
        let text = URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(bad)?;
        let (version, actor) = text.split_once(':').ok_or_else(bad)?;
        let version = version.parse().map_err(|_| bad())?;
        validate::actor(actor).map_err(|_| bad())?;
        Ok(Some(PageToken {
            actor: actor.to_owned(),
            version,
        }))
    }
}

/// One page of the keys whose actors `wanted` accepts, looked for only under `prefixes`
/// (sorted, disjoint), after `after`; and whether more follow. Reads only the rows under
/// the prefixes, from the cursor to one past the page.
fn key_page(
    store: &crate::ledger::Store,
    prefixes: &[String],
    wanted: impl Fn(&str) -> bool,
    after: Option<&PageToken>,
    limit: usize,
) -> Result<(Vec<KeyRecord>, bool), crate::ledger::StoreError> {
    use std::ops::ControlFlow;
    let mut page = Vec::new();
    let mut more = false;
    for prefix in prefixes {
        let start = match after {
            Some(cursor) if cursor.actor.as_str() >= prefix.as_str() => {
                (cursor.actor.as_str(), cursor.version)
            }
            _ => (prefix.as_str(), 0),
        };
        store.scan_keys(start, |key| {
            if !key.actor.starts_with(prefix.as_str()) {
                return ControlFlow::Break(());
            }
            if !wanted(&key.actor) {
                return ControlFlow::Continue(());
            }
            if page.len() == limit {
                more = true;
                return ControlFlow::Break(());
            }
            page.push(key);
            ControlFlow::Continue(())
        })?;
        if more {
            break;
        }
    }
    Ok((page, more))
}

impl KeyAdminService {
    /// Authorizes first: the actors the caller may read decide which rows are read at all.
    async fn list_keys_as_caller(
        &self,
        request: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let caller = Caller::of(&request)?;
        let ListKeysRequest {
            actor,
            page_size,
            page_token,
        } = request.into_inner();
        let after = PageToken::decode(&page_token)?;
        let policy = self.state.policy();
        let prefixes = if actor.is_empty() {
            policy.readable_prefixes(&caller)
        } else {
            validate::actor(&actor)?;
            self.state.authorize_read(&caller, &actor)?;
            vec![actor.clone()]
        };
        let limit = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        } as usize;
        let state = Arc::clone(&self.state);
        let (keys, more) = blocking(move || {
            // Everyone sees the keys of the actors they sign as or administer, and no others.
            let wanted = |candidate: &str| {
                if actor.is_empty() {
                    policy.may_read(&caller, candidate)
                } else {
                    candidate == actor
                }
            };
            key_page(&state.reader(), &prefixes, wanted, after.as_ref(), limit)
        })
        .await??;
        let next_page_token = match keys.last() {
            Some(last) if more => PageToken {
                actor: last.actor.clone(),
                version: last.version,
            }
            .encode(),
            _ => String::new(),
        };
        Ok(Response::new(ListKeysResponse {
            keys: keys.iter().map(to_api).collect(),
            next_page_token,
        }))
    }

    async fn adopt_key_as_caller(
        &self,
        request: Request<AdoptKeyRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let selector = match request.selector {
            Some(Selector::Label(label)) if !label.is_empty() => KeySelector::Label(label),
            Some(Selector::CkaId(id)) if !id.is_empty() => KeySelector::Id(id),
            _ => {
                return Err(Status::invalid_argument(
                    "selector: name the key by a non-empty label or cka_id",
                ));
            }
        };
        let device_key_id = self.state.device.key_id.clone();
        self.register(&caller, request.actor, KeyOrigin::Adopted, move |backend| {
            let key = backend.adopt_key(&selector)?;
            if key_id(&key.public_key) == device_key_id {
                return Err(BackendError::KeyRefused(
                    "that is the token's device key; it cannot be an actor key".into(),
                ));
            }
            Ok(key)
        })
        .await
    }

    async fn rotate_key_as_caller(
        &self,
        request: Request<RotateKeyRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let caller = Caller::of(&request)?;
        let actor = request.into_inner().actor;
        validate::actor(&actor)?;
        self.state.authorize_admin(&caller, &actor, "rotate")?;
        let previous = self.active_key(&actor).await?;
        let state = Arc::clone(&self.state);
        let requested_by = caller.to_receipt();
        let plan = blocking(move || plan_rotation(&state, previous, requested_by)).await??;
        let version = plan.new_key.version;
        let new_ref = plan.new_key.key_ref.clone();
        if let Err(e) = self.state.sequencer.rotate(plan).await {
            // Destroy the new key only when it certainly was not stored.
            if !matches!(e, crate::server::sequencer::SequencerError::Stopped) {
                let state = Arc::clone(&self.state);
                let _ = blocking(move || state.backend.destroy_key(&new_ref)).await;
            }
            return Err(e.into());
        }
        // Read back: the sequencer completed the lineage with the rotation statement.
        let state = Arc::clone(&self.state);
        let lookup = actor.clone();
        let keys = blocking(move || state.keys(Some(&lookup))).await??;
        let answer = keys
            .iter()
            .find(|k| k.version == version)
            .map(to_api)
            .ok_or_else(|| Status::internal("rotated key vanished"))?;
        tracing::info!(actor = %actor, version = answer.version, key_id = %answer.key_id, caller = %caller, "actor key rotated");
        Ok(Response::new(answer))
    }

    async fn retire_key_as_caller(
        &self,
        request: Request<RetireKeyRequest>,
    ) -> Result<Response<ActorKey>, Status> {
        let caller = Caller::of(&request)?;
        let RetireKeyRequest {
            actor,
            version,
            keep_key,
        } = request.into_inner();
        validate::actor(&actor)?;
        self.state.authorize_admin(&caller, &actor, "retire")?;
        if version == 0 {
            return Err(Status::invalid_argument(
                "version: name the version to retire",
            ));
        }
        let disposition = if keep_key {
            KeyDisposition::Kept
        } else {
            KeyDisposition::Destroyed
        };
        self.state
            .sequencer
            .retire(actor.clone(), version, disposition)
            .await?;
        tracing::info!(actor = %actor, version, caller = %caller, ?disposition, "actor key retired");
        let state = Arc::clone(&self.state);
        let lookup = actor.clone();
        let keys = blocking(move || state.keys(Some(&lookup))).await??;
        keys.iter()
            .find(|k| k.version == version)
            .map(|k| Response::new(to_api(k)))
            .ok_or_else(|| Status::internal("retired key vanished"))
    }
}

impl KeyAdminService {
    async fn active_key(&self, actor: &str) -> Result<KeyRecord, Status> {
        let state = Arc::clone(&self.state);
        let lookup = actor.to_owned();
        let keys = blocking(move || state.keys(Some(&lookup))).await??;
        if keys.is_empty() {
            return Err(Status::not_found(format!("actor {actor:?} has no key")));
        }
        keys.into_iter()
            .filter(|k| k.state == KeyState::Active)
            .max_by_key(|k| k.version)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "actor {actor:?} has no active key: it was retired"
                ))
            })
    }
}

/// Generates the next key version and has the device attest it. The previous version signs
/// the rotation statement in the sequencer, at the moment the rotation takes its place in the
/// log, so that no receipt it orders before the rotation is dated after it.
pub(crate) fn plan_rotation(
    state: &DaemonState,
    previous: KeyRecord,
    requested_by: CallerInReceipt,
) -> Result<RotationPlan, BackendError> {
    const MAX_VERSIONS: u32 = 1000;
    if previous.version >= MAX_VERSIONS {
        // A bundle's lineage carries all earlier versions; verifiers bound what they read.
        return Err(BackendError::KeyRefused(format!(
            "actor {:?} has {MAX_VERSIONS} key versions, the most a lineage may carry",
            previous.actor
        )));
    }
    let backend = state.backend.as_ref();
    let version = previous.version + 1;
    let key = backend.create_key(&format!("actseal {} v{version}", previous.actor))?;
    let created_at = now_rfc3339();
    let attestation = build_attestation(
        backend,
        &state.device,
        &key,
        &AttestationRequest {
            subject: KeySubject::Actor {
                actor: &previous.actor,
                version,
            },
            origin: KeyOrigin::Generated,
            created_at: &created_at,
            nonce: None,
        },
    )
    .inspect_err(|_| {
        let _ = backend.destroy_key(&key.key_ref);
    })?;
    Ok(RotationPlan {
        requested_by,
        previous_version: previous.version,
        new_key: KeyRecord {
            actor: previous.actor,
            version,
            backend: backend.kind(),
            key_ref: key.key_ref,
            key_id: key_id(&key.public_key),
            public_key: key.public_key,
            origin: KeyOrigin::Generated,
            state: KeyState::Active,
            created_at,
            // Earlier versions and the rotation statement are referred to, not copied: the
            // sequencer and bundles assemble the lineage (`bundles::lineage`).
            attestation,
            retired_at: None,
        },
    })
}
