//! A benchmark aid, not a security feature: a backend that signs at most N digests a second,
//! one at a time, standing in for a discrete TPM.
//!
//! A discrete TPM on an LPC or SPI bus signs 5–45 ECDSA P-256 digests a second and does one
//! command at a time; swtpm and SoftHSM sign thousands. To measure what batching buys on such
//! hardware without it, `[testing] emulate_signatures_per_second = N` wraps the configured
//! backend in [`Throttled`]: every signature (receipts, batch statements, checkpoints, lineage
//! statements) waits for its slot, slots are 1/N s apart and never overlap, and then the real
//! backend signs. Everything else goes straight through. It only slows a backend down; it
//! never changes what is signed. The daemon logs a warning at start when it is on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p256::ecdsa::Signature;

use super::{
    Backend, BackendError, BackendKind, HardwareKey, KeyEvidence, KeyRef, KeySelector, tpm,
};

/// A backend limited to one signature every `interval`, serially.
pub struct Throttled {
    inner: Arc<dyn Backend>,
    interval: Duration,
    /// When the next signature may start; held while signing, so signatures never overlap.
    next: Mutex<Instant>,
}

impl Throttled {
    /// `inner`, limited to `per_second` signatures a second (at least 1).
    pub fn new(inner: Arc<dyn Backend>, per_second: u32) -> Self {
        Throttled {
            inner,
            interval: Duration::from_secs(1) / per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }
}

impl Backend for Throttled {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn create_key(&self, label: &str) -> Result<HardwareKey, BackendError> {
        self.inner.create_key(label)
    }

    fn adopt_key(&self, selector: &KeySelector) -> Result<HardwareKey, BackendError> {
        self.inner.adopt_key(selector)
    }

    fn sign_digest(&self, key: &HardwareKey, digest: &[u8; 32]) -> Result<Signature, BackendError> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if *next > now {
            std::thread::sleep(*next - now);
        }
        let result = self.inner.sign_digest(key, digest);
        *next = Instant::now().max(*next) + self.interval;
        result
    }

    fn key_evidence(&self, key: &KeyRef) -> Result<KeyEvidence, BackendError> {
        self.inner.key_evidence(key)
    }

    fn destroy_key(&self, key: &KeyRef) -> Result<(), BackendError> {
        self.inner.destroy_key(key)
    }

    fn device_key(&self, create: bool) -> Result<HardwareKey, BackendError> {
        self.inner.device_key(create)
    }

    fn certify(
        &self,
        key: &KeyRef,
        qualifying_data: &[u8],
    ) -> Result<tpm::Certification, BackendError> {
        self.inner.certify(key, qualifying_data)
    }

    fn health(&self) -> Result<(), BackendError> {
        self.inner.health()
    }

    fn keeps_log_head(&self) -> bool {
        self.inner.keeps_log_head()
    }

    fn read_log_head(&self) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.read_log_head()
    }

    fn write_log_head(&self, record: &[u8]) -> Result<(), BackendError> {
        self.inner.write_log_head(record)
    }

    fn replace_log_head(
        &self,
        record: &[u8],
        allow: &super::HeadCheck<'_>,
    ) -> Result<super::HeadWrite, BackendError> {
        self.inner.replace_log_head(record, allow)
    }
}
