//! Issue 12 part C: the log head in the shared log token never goes backwards. A holder
//! that lost the lease (SIGKILLed here, its name and epoch kept as a stopped one would keep
//! them) drives the integrator's head writer (`fleet::head::write`) with its stale head
//! against the real log token; the write is refused, and the token's head is unchanged. A
//! stale head put there anyway (the window a token without compare-and-swap leaves) is
//! healed by the holder; a restart's start-up check passes and signing goes on.

mod common;

use common::fleet::{FLEET, fleet_dir};

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use actseal::{
    backend::Backend,
    fleet::{FleetError, head, lease::Held},
    lab_fleet::Fleet,
    ledger::{head::LogHead, merkle, store::postgres::PgSettings},
};

fn actor(node: usize) -> String {
    format!("spiffe://acme.example/node-{node}/agent-0")
}

/// Signs `count` actions on each node.
fn sign_on_each(rt: &tokio::runtime::Runtime, fleet: &Fleet, round: &str, count: usize) {
    rt.block_on(async {
        for (n, node) in fleet.nodes.iter().enumerate() {
            let mut signer = common::signer(node).await;
            for i in 0..count {
                let id = format!("{round}-{n}-{i}");
                let mut request = common::sign_request(&actor(n), id.as_bytes());
                request.request_id = id.clone();
                signer
                    .sign(request)
                    .await
                    .unwrap_or_else(|e| panic!("{id}: {e}"));
            }
        }
    });
}

/// The log token's head record (its bytes and decoded).
fn token_head(log: &dyn Backend) -> (Vec<u8>, LogHead) {
    let bytes = log.read_log_head().expect("read head").expect("a head");
    let head = LogHead::decode(&bytes).expect("decodes");
    (bytes, head)
}

/// Waits until the lease row satisfies `ok`; the row (holder, epoch, published size).
fn wait_lease(fleet: &Fleet, ok: impl Fn(&(String, i64, i64)) -> bool) -> (String, i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(lease) = fleet.lease().unwrap().filter(|l| ok(l)) {
            return lease;
        }
        assert!(Instant::now() < deadline, "the lease did not move");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_stale_holder_cannot_write_an_older_log_head_and_a_stale_head_is_healed() {
    let Some(dir) = fleet_dir("actseal-fleet-head-") else {
        return;
    };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_actseal"));
    let mut fleet = Fleet::create(&exe, dir.path(), 2, FLEET).expect("fleet set-up");
    fleet.start_all().expect("fleet start");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (n, node) in fleet.nodes.iter().enumerate() {
            common::create_key(node, &actor(n)).await;
        }
    });
    sign_on_each(&rt, &fleet, "a", 4);

    // The holder dies; the other node takes the lease (a new epoch) and integrates on.
    let (old_holder, old_epoch, _) = wait_lease(&fleet, |l| l.0 == "node-0");
    fleet.nodes[0].kill_daemon().unwrap();
    let (holder, epoch, _) = wait_lease(&fleet, |l| l.1 > old_epoch);
    assert_eq!(holder, "node-1");
    rt.block_on(async {
        let mut signer = common::signer(&fleet.nodes[1]).await;
        for i in 0..4 {
            let mut request = common::sign_request(&actor(1), format!("b-{i}").as_bytes());
            request.request_id = format!("b-{i}");
            signer.sign(request).await.expect("sign after the takeover");
        }
    });
    let (_, _, published) = fleet.lease().unwrap().unwrap();

    // This process opens the log token as the stale holder's daemon had it open.
    // SAFETY: the only test of this binary; set before the PKCS#11 library is loaded.
    unsafe { std::env::set_var("SOFTHSM2_CONF", fleet.nodes[0].dir.join("softhsm2.conf")) };
    let config = actseal::config::Config::load(&fleet.nodes[0].config()).unwrap();
    let log = actseal::server::open_backends(&config)
        .expect("log token")
        .log;
    let (before, current) = token_head(log.as_ref());
    assert_eq!(
        current.size as i64, published,
        "the head covers what was published"
    );

    // The stale holder's head: the tree it had integrated before it was stopped.
    let pg = PgSettings::new(&fleet.url, Some(fleet.postgres.password_file().to_owned()));
    let store = actseal::fleet::open_store(&pg).unwrap();
    let size = current.size - 4;
    let stale = LogHead {
        size,
        root: merkle::root_at(&store, size).unwrap(),
        requests: store.request_count_below(size).unwrap(),
        ..current
    };
    let mut client = fleet.client().unwrap();
    let stale_held = Held { epoch: old_epoch };
    let err = head::write(log.as_ref(), &mut client, &old_holder, stale_held, &stale).unwrap_err();
    assert!(
        matches!(&err, FleetError::Fenced { holder: h, epoch: e } if *h == holder && *e == epoch),
        "{err}"
    );
    assert_eq!(
        token_head(log.as_ref()).0,
        before,
        "a fenced write changed the head"
    );

    // Past its lease check (as if it had passed it just before it was stopped), the token's
    // own check refuses the smaller tree, and another root at the head's size.
    let held = Held { epoch };
    let err = head::write(log.as_ref(), &mut client, &holder, held, &stale).unwrap_err();
    assert!(err.to_string().contains("holds a newer log head"), "{err}");
    let forked = LogHead {
        root: [0x5a; 32],
        ..current
    };
    let err = head::write(log.as_ref(), &mut client, &holder, held, &forked).unwrap_err();
    assert!(err.to_string().contains("another root"), "{err}");
    assert_eq!(
        token_head(log.as_ref()).0,
        before,
        "a refused write changed the head"
    );
    // The head itself may be written again (the check refuses only what goes back).
    head::write(log.as_ref(), &mut client, &holder, held, &current).expect("same head");
    assert_eq!(token_head(log.as_ref()).0, before);

    // A stale head written anyway (a holder stopped between the token's read and its
    // write): the idle holder finds it behind the published tree and rewrites it.
    log.write_log_head(&stale.encode()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while token_head(log.as_ref()).1.size < current.size {
        assert!(
            Instant::now() < deadline,
            "the holder did not heal the head"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(token_head(log.as_ref()).1.root, current.root);

    // Both nodes restarted: the start-up check under the lease passes; signing goes on.
    fleet.nodes[1].stop_daemon().unwrap();
    fleet.start_all().expect("restart after the refused writes");
    sign_on_each(&rt, &fleet, "c", 2);
    let (_, after) = token_head(log.as_ref());
    assert!(
        after.size >= current.size + 4,
        "{} {}",
        after.size,
        current.size
    );
}
