//! SoftHSM's file object store under concurrent use in one process (upstream
//! softhsm/SoftHSMv2#573): calls that write token objects (key generation and destruction, the
//! log head's rewrite) beside each other and beside signing must neither fail nor fail the
//! signers. Without the backend's object gate (src/backend/pkcs11/pool.rs) this fails within
//! seconds with CKR_GENERAL_ERROR, as a rotation under load once did in CI.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use actseal::backend::{Backend, BackendError};

/// Runs `call` on a thread until `stop`; returns how many calls succeeded and the failures.
fn repeat(
    stop: &Arc<AtomicBool>,
    call: impl Fn(u64) -> Result<(), BackendError> + Send + 'static,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let (mut done, mut failures) = (0, Vec::new());
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            match call(i) {
                Ok(()) => done += 1,
                Err(e) => failures.push(e.to_string()),
            }
            i += 1;
        }
        (done, failures)
    })
}

#[test]
fn object_writes_beside_concurrent_signing_neither_fail_nor_fail_the_signers() {
    let dir = tempfile::Builder::new()
        .prefix("actseal-object-store")
        .tempdir()
        .unwrap();
    let lab = actseal::lab::Lab::create(
        std::path::Path::new(env!("CARGO_BIN_EXE_actseal")),
        &dir.path().join("lab"),
        false,
    )
    .expect("lab set-up");
    // SAFETY: the only test of this binary; set before the PKCS#11 library is loaded.
    unsafe { std::env::set_var("SOFTHSM2_CONF", lab.dir.join("softhsm2.conf")) };
    let config = actseal::config::Config::load(&lab.config()).unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(actseal::server::open_pkcs11_backend(&config).expect("token"));
    let key = backend.create_key("signer").expect("signing key");

    let stop = Arc::new(AtomicBool::new(false));
    let signers: Vec<_> = (0..4u8)
        .map(|t| {
            let (backend, key) = (Arc::clone(&backend), key.clone());
            repeat(&stop, move |i| {
                backend.sign_digest(&key, &[t ^ i as u8; 32]).map(|_| ())
            })
        })
        .collect();
    let generators: Vec<_> = (0..2)
        .map(|t| {
            let backend = Arc::clone(&backend);
            repeat(&stop, move |i| {
                let new = backend.create_key(&format!("k{t}-{i}"))?;
                backend.destroy_key(&new.key_ref)
            })
        })
        .collect();
    let head_writer = {
        let backend = Arc::clone(&backend);
        repeat(&stop, move |i| {
            backend.write_log_head(format!("head {i}").as_bytes())
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);

    let total = |handles: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>| {
        handles.into_iter().map(|h| h.join().unwrap()).fold(
            (0, Vec::new()),
            |(n, mut all), (done, failures)| {
                all.extend(failures);
                (n + done, all)
            },
        )
    };
    let (signatures, signer_failures) = total(signers);
    let (keys, key_failures) = total(generators);
    let (heads, head_failures) = total(vec![head_writer]);
    eprintln!(
        "{keys} keys made and destroyed, {heads} head rewrites, {signatures} signatures; \
         failures: {} keys, {} heads, {} signatures",
        key_failures.len(),
        head_failures.len(),
        signer_failures.len()
    );
    for (what, failures) in [
        ("key generations or destructions", &key_failures),
        ("head rewrites", &head_failures),
        ("signatures", &signer_failures),
    ] {
        assert!(
            failures.is_empty(),
            "{} {what} failed, first: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
    }
    assert!(
        keys > 0 && heads > 0 && signatures > 0,
        "every kind of call made progress"
    );
}
