//! The sequencer: the one place where receipts get their log index, per-actor sequence
//! number and previous-receipt digest, are signed, and are committed.
//!
//! It is a single thread that owns the write connection. Requests that arrive while it works
//! are taken as a batch: each is signed in order, and the batch is committed in one
//! transaction before any caller in it is answered (group commit). Ordering is therefore
//! never in doubt, and an fsync is shared by every receipt of a batch.

use std::{collections::HashMap, sync::Arc, thread};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::validate::ValidAction;
use crate::{
    backend::{Backend, BackendError},
    ledger::{ActorHead, KeyRecord, KeyState, ReceiptRow, Store, StoreError},
    proof::{
        IN_TOTO_PAYLOAD_TYPE,
        bundle::{ActorKeyInBundle, BUNDLE_MEDIA_TYPE, Bundle},
        dsse::{Envelope, signing_digest},
        now_rfc3339,
        receipt::{self, Action, KeyRefInReceipt, ReceiptPredicate, ReceiptStatement},
        spki_der,
    },
};

/// Most requests taken into one batch (one commit).
const MAX_BATCH: usize = 256;

/// A signed and durably stored receipt.
#[derive(Debug, Clone)]
pub struct SignedReceipt {
    pub bundle_json: String,
    pub log_index: u64,
    pub sequence: u64,
    pub key_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    #[error("actor {0:?} has no active key")]
    UnknownActor(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the receipt could not be stored: {0}")]
    NotStored(String),
    #[error("the sequencer has stopped")]
    Stopped,
}

enum Command {
    Sign(
        ValidAction,
        oneshot::Sender<Result<SignedReceipt, SequencerError>>,
    ),
    RegisterKey(Box<KeyRecord>, oneshot::Sender<Result<(), SequencerError>>),
}

/// Where an actor's next receipt goes.
struct ActorChain {
    key: Arc<KeyRecord>,
    head: Option<ActorHead>,
}

/// The handle the gRPC services use.
#[derive(Clone)]
pub struct SequencerHandle {
    tx: mpsc::Sender<Command>,
}

impl SequencerHandle {
    pub async fn sign(&self, action: ValidAction) -> Result<SignedReceipt, SequencerError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Sign(action, reply))
            .await
            .map_err(|_| SequencerError::Stopped)?;
        answer.await.map_err(|_| SequencerError::Stopped)?
    }

    /// Stores a new key version and makes it the actor's active key.
    pub async fn register_key(&self, key: KeyRecord) -> Result<(), SequencerError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::RegisterKey(Box::new(key), reply))
            .await
            .map_err(|_| SequencerError::Stopped)?;
        answer.await.map_err(|_| SequencerError::Stopped)?
    }
}

struct Sequencer {
    store: Store,
    backend: Arc<dyn Backend>,
    actors: HashMap<String, ActorChain>,
    next_index: u64,
}

/// A receipt signed but not yet committed, with the caller waiting for it.
struct Pending {
    row: ReceiptRow,
    answer: SignedReceipt,
    reply: oneshot::Sender<Result<SignedReceipt, SequencerError>>,
}

/// Starts the sequencer thread on `store`. It stops when every handle is dropped.
pub fn start(
    store: Store,
    backend: Arc<dyn Backend>,
) -> Result<(SequencerHandle, thread::JoinHandle<()>), StoreError> {
    let mut sequencer = Sequencer {
        store,
        backend,
        actors: HashMap::new(),
        next_index: 0,
    };
    sequencer.reload()?;
    let (tx, rx) = mpsc::channel(1024);
    let thread = thread::Builder::new()
        .name("actseal-sequencer".into())
        .spawn(move || sequencer.run(rx))
        .map_err(|e| StoreError::Corrupt(format!("cannot start sequencer thread: {e}")))?;
    Ok((SequencerHandle { tx }, thread))
}

impl Sequencer {
    /// Rebuilds the in-memory chain heads from the database, the source of truth.
    fn reload(&mut self) -> Result<(), StoreError> {
        let heads = self.store.actor_heads()?;
        let mut actors = HashMap::new();
        for key in self.store.keys(None)? {
            if key.state != KeyState::Active {
                continue;
            }
            let head = heads.get(&key.actor).copied();
            let actor = key.actor.clone();
            let newer = actors
                .get(&actor)
                .is_none_or(|chain: &ActorChain| chain.key.version < key.version);
            if newer {
                actors.insert(
                    actor,
                    ActorChain {
                        key: Arc::new(key),
                        head,
                    },
                );
            }
        }
        self.actors = actors;
        self.next_index = self.store.next_log_index()?;
        Ok(())
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            let mut pending = Vec::with_capacity(batch.len());
            for command in batch {
                match command {
                    Command::Sign(action, reply) => match self.sign(&action) {
                        Ok((row, answer)) => pending.push(Pending { row, answer, reply }),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    },
                    Command::RegisterKey(key, reply) => {
                        // Keys are registered between commits so the order stays obvious.
                        self.commit(std::mem::take(&mut pending));
                        let _ = reply.send(self.register(*key));
                    }
                }
            }
            self.commit(pending);
        }
        tracing::debug!("sequencer stopped");
    }

    fn register(&mut self, key: KeyRecord) -> Result<(), SequencerError> {
        self.store.insert_key(&key)?;
        let head = self.actors.get(&key.actor).and_then(|chain| chain.head);
        self.actors.insert(
            key.actor.clone(),
            ActorChain {
                key: Arc::new(key),
                head,
            },
        );
        Ok(())
    }

    /// Signs the next receipt for an actor and advances its chain in memory; the database
    /// follows at commit (and memory is reloaded from it if the commit fails).
    fn sign(
        &mut self,
        action: &ValidAction,
    ) -> Result<(ReceiptRow, SignedReceipt), SequencerError> {
        let chain = self
            .actors
            .get(&action.actor)
            .ok_or_else(|| SequencerError::UnknownActor(action.actor.clone()))?;
        let key = Arc::clone(&chain.key);
        let sequence = chain.head.map_or(1, |h| h.sequence + 1);
        let previous_receipt = chain.head.map(|h| receipt::Digest {
            sha256: hex::encode(h.payload_sha256),
        });
        let log_index = self.next_index;
        let signed_at = now_rfc3339();
        let statement = ReceiptStatement::new(
            &action.document_sha256,
            ReceiptPredicate {
                actor: action.actor.clone(),
                key: KeyRefInReceipt {
                    id: key.key_id.clone(),
                    version: key.version,
                    backend: key.backend.as_str().into(),
                },
                action: Action {
                    action_type: action.action_type.clone(),
                    target: action.target.clone(),
                    parent_sha256: action.parent_sha256.map(hex::encode),
                },
                context: action.context.clone(),
                caller: (*action.caller).clone(),
                signed_at: signed_at.clone(),
                sequence,
                previous_receipt,
                log_index,
                mode: "single".into(),
            },
        );
        let payload = statement.to_payload();
        let hardware_key = crate::backend::HardwareKey {
            key_ref: key.key_ref.clone(),
            public_key: key.public_key,
        };
        let signature = self.backend.sign_digest(
            &hardware_key,
            &signing_digest(IN_TOTO_PAYLOAD_TYPE, &payload),
        )?;
        let bundle = Bundle {
            media_type: BUNDLE_MEDIA_TYPE.into(),
            receipt: Envelope::new(IN_TOTO_PAYLOAD_TYPE, &payload, &key.key_id, &signature),
            actor_key: ActorKeyInBundle {
                key_id: key.key_id.clone(),
                public_key: {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.encode(spki_der(&key.public_key))
                },
            },
            lineage: key.lineage.clone(),
        };
        let bundle_json = bundle.to_json();
        let payload_sha256: [u8; 32] = Sha256::digest(&payload).into();

        self.next_index += 1;
        if let Some(chain) = self.actors.get_mut(&action.actor) {
            chain.head = Some(ActorHead {
                sequence,
                payload_sha256,
            });
        }
        let row = ReceiptRow {
            log_index,
            actor: action.actor.clone(),
            sequence,
            key_id: key.key_id.clone(),
            payload_sha256,
            signed_at,
            bundle_json: bundle_json.clone(),
        };
        let answer = SignedReceipt {
            bundle_json,
            log_index,
            sequence,
            key_id: key.key_id.clone(),
        };
        Ok((row, answer))
    }

    /// Commits a batch, then answers its callers: nobody hears "signed" before the receipt
    /// is on disk.
    fn commit(&mut self, pending: Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        let rows: Vec<ReceiptRow> = pending.iter().map(|p| p.row.clone()).collect();
        match self.store.append_receipts(&rows) {
            Ok(()) => {
                for p in pending {
                    tracing::info!(
                        actor = %p.row.actor,
                        sequence = p.row.sequence,
                        log_index = p.row.log_index,
                        key_id = %p.row.key_id,
                        "receipt signed"
                    );
                    let _ = p.reply.send(Ok(p.answer));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, receipts = rows.len(), "commit failed; nothing in this batch was acknowledged");
                for p in pending {
                    let _ = p.reply.send(Err(SequencerError::NotStored(e.to_string())));
                }
                if let Err(e) = self.reload() {
                    tracing::error!(error = %e, "cannot reload state after a failed commit");
                }
            }
        }
    }
}
