//! Sign throughput through the daemon over its Unix socket (1 and 8 concurrent clients),
//! beside the token's raw ECDSA P-256 sign rate measured in the same run.
//!
//! Run: `cargo bench --bench sign_throughput` (set ACTSEAL_BENCH_SECONDS to change the
//! duration of each phase; default 5).

#[path = "support/mod.rs"]
mod support;

use std::{path::Path, time::Instant};

use actseal::{
    api::{CreateKeyRequest, key_admin_client::KeyAdminClient},
    lab::{Lab, SOFTHSM_MODULE, TOKEN_LABEL},
};
use cryptoki::{
    mechanism::Mechanism,
    object::{Attribute, ObjectClass},
    session::UserType,
    types::AuthPin,
};

const ACTOR: &str = "spiffe://acme.example/agents/bench";

/// Raw C_Sign rate of the token with `sessions` threads, each with its own session.
fn raw_token_rate(
    lab: &Lab,
    ctx: &cryptoki::context::Pkcs11,
    key_id: &[u8],
    sessions: usize,
) -> f64 {
    let pin = lab.token_pin().unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == TOKEN_LABEL)
        .expect("lab token");
    let duration = support::phase_seconds();
    let total: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..sessions)
            .map(|_| {
                let pin = pin.clone();
                scope.spawn(move || {
                    let session = ctx.open_rw_session(slot).unwrap();
                    match session.login(UserType::User, Some(&AuthPin::from(pin))) {
                        Ok(())
                        | Err(cryptoki::error::Error::Pkcs11(
                            cryptoki::error::RvError::UserAlreadyLoggedIn,
                            _,
                        )) => {}
                        Err(e) => panic!("login: {e}"),
                    }
                    let key = session
                        .find_objects(&[
                            Attribute::Class(ObjectClass::PRIVATE_KEY),
                            Attribute::Id(key_id.to_vec()),
                        ])
                        .unwrap()[0];
                    let digest = [0x5a; 32];
                    let start = Instant::now();
                    let mut n = 0u64;
                    while start.elapsed() < duration {
                        session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    total as f64 / duration.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let (_dir, mut lab) = support::started_softhsm_lab("actseal-bench-");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = runtime.block_on(async {
        let channel = actseal::cli::connect_unix(&lab.socket()).await.unwrap();
        KeyAdminClient::new(channel)
            .create_key(CreateKeyRequest {
                actor: ACTOR.into(),
            })
            .await
            .unwrap()
            .into_inner()
    });
    let lineage: serde_json::Value = serde_json::from_str(&key.lineage_json).unwrap();
    let payload = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(lineage["statement"]["payload"].as_str().unwrap())
            .unwrap()
    };
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let cka_id = hex::decode(statement["predicate"]["attributes"]["id"].as_str().unwrap()).unwrap();

    let ctx = actseal::backend::pkcs11::load_module(Path::new(SOFTHSM_MODULE)).unwrap();
    println!(
        "phase length: {:?}; cores: {}",
        support::phase_seconds(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let raw1 = raw_token_rate(&lab, &ctx, &cka_id, 1);
    println!("token raw C_Sign (ECDSA P-256), 1 session : {raw1:>8.0} signs/s");
    let raw2 = raw_token_rate(&lab, &ctx, &cka_id, 2);
    println!("token raw C_Sign (ECDSA P-256), 2 sessions: {raw2:>8.0} signs/s");
    for clients in [1, 8] {
        let (rate, p50, p99) = runtime.block_on(support::daemon_rate(&lab, ACTOR, clients));
        println!(
            "daemon Sign over Unix socket, {clients} client(s): {rate:>8.0} calls/s  (p50 {:.2} ms, p99 {:.2} ms; {:.1}% of raw 1-session rate)",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            100.0 * rate / raw1
        );
    }
    lab.stop_daemon().unwrap();
}
