//! Who may sign as whom, against the real daemon: callers as different Unix users over the
//! socket, callers as client certificates over mTLS, policy reloads on SIGHUP, readiness
//! notifications, metrics and graceful shutdown.

mod common;

use std::{
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use actseal::api::{
    AdoptKeyRequest, CreateKeyRequest, GetActorKeyRequest, ListKeysRequest, SignRequest,
    adopt_key_request::Selector, key_admin_client::KeyAdminClient, signer_client::SignerClient,
};
use common::{pki::TestCa, *};
use sha2::{Digest, Sha256};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

const PAYMENTS: &str = "spiffe://acme.example/agents/payments";
const REPORTING: &str = "spiffe://acme.example/agents/reporting";

fn sign_as(actor: &str, action_type: &str) -> SignRequest {
    SignRequest {
        action_type: action_type.into(),
        ..sign_request(actor, DOCUMENT)
    }
}

fn key_count(lab: &actseal::lab::Lab) -> u64 {
    LedgerDb::open(lab).one::<i64>("SELECT COUNT(*) FROM actor_keys") as u64
}

// ---------------------------------------------------------------------------------------------
// Unix callers

/// A system user for the tests: (uid, gid). Created once, shared by concurrent runs.
fn ensure_user(name: &str) -> (u32, u32) {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, name]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    for _ in 0..50 {
        if let (Some(uid), Some(gid)) = (id("-u"), id("-g")) {
            return (uid, gid);
        }
        // Exit 9 (exists) means a concurrent run made it; 10 (cannot lock) means retry.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .output();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("cannot create user {name}");
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn is_root() -> bool {
    own_uid() == 0
}

/// Runs `actseal` as another user (setpriv: no supplementary groups), on the lab's socket.
fn run_as(
    bin: &Path,
    lab: &actseal::lab::Lab,
    uid: u32,
    gid: u32,
    args: &[&str],
) -> (bool, String, String) {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
        ])
        .arg(bin)
        .args(args)
        .env("ACTSEAL_SOCKET", lab.socket())
        .env_remove("ACTSEAL_ENDPOINT")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("setpriv (util-linux) must be installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The test above, run as an unprivileged user: it skips, but fails under `CI=true`.
#[test]
fn the_unix_caller_test_fails_rather_than_skips_under_ci() {
    if !can_run(is_root(), "switching to an unprivileged user needs root") {
        return;
    }
    let (nobody, nobody_gid) = ensure_user("actseal-test-mallory");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tests = dir.path().join("auth_policy");
    std::fs::copy(std::env::current_exe().unwrap(), &tests).unwrap();
    std::fs::set_permissions(&tests, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |ci: Option<&str>| {
        let mut command = Command::new("setpriv");
        command
            .args([
                &format!("--reuid={nobody}"),
                &format!("--regid={nobody_gid}"),
                "--clear-groups",
            ])
            .arg(&tests)
            .args([
                "--exact",
                "unix_callers_sign_only_as_the_policy_allows",
                "--nocapture",
            ])
            .current_dir(dir.path())
            .env_remove("CI");
        if let Some(ci) = ci {
            command.env("CI", ci);
        }
        // A concurrent test's fork may still hold the copy open for a moment (ETXTBSY).
        for _ in 0..50 {
            let out = command
                .output()
                .expect("setpriv (util-linux) must be installed");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !text.contains("Text file busy") {
                return (out.status.success(), text);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} stays busy", tests.display());
    };
    let (ok, text) = run(None);
    assert!(
        ok && text.contains("SKIPPED: creating Unix users"),
        "{text}"
    );
    let (ok, text) = run(Some("true"));
    assert!(
        !ok && text.contains("CI=true and this test cannot run"),
        "{text}"
    );
    assert!(text.contains("1 failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_callers_sign_only_as_the_policy_allows() {
    if !can_run(
        is_root(),
        "creating Unix users and switching to them needs root (CI runs as root)",
    ) {
        return;
    }
    let (alice, alice_gid) = ensure_user("actseal-test-alice");
    let (bob, bob_gid) = ensure_user("actseal-test-bob");
    let (mallory, mallory_gid) = ensure_user("actseal-test-mallory");

    let mut lab = new_lab();
    // Other users reach the socket (traverse-only directories) and run a copy of the binary.
    for dir in [lab.dir.parent().unwrap(), &lab.dir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let bin = lab.dir.join("actseal-client");
    std::fs::copy(env!("CARGO_BIN_EXE_actseal"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = std::fs::read_to_string(lab.config()).unwrap();
    std::fs::write(
        lab.config(),
        config.replace("socket_mode = 0o600", "socket_mode = 0o666"),
    )
    .unwrap();
    let me = own_uid();
    write_policy(
        &lab,
        &format!(
            r#"
# alice, by user id: the payments agent's payment actions.
[[sign]]
callers = ["uid:{alice}"]
actors = ["{PAYMENTS}"]
actions = ["payment.*"]

# bob, by group id: reports only.
[[sign]]
callers = ["gid:{bob_gid}"]
actors = ["spiffe://acme.example/agents/report*"]
actions = ["report.publish"]

# the lab's user administers every key (and signs nothing).
[[admin]]
callers = ["uid:{me}"]
actors = ["*"]
"#
        ),
    );
    lab.start_daemon().unwrap();
    create_key(&lab, PAYMENTS).await;
    create_key(&lab, REPORTING).await;

    let digest = hex::encode(Sha256::digest(DOCUMENT));
    let sign_args = |actor: &'static str, action: &'static str| -> Vec<String> {
        [
            "sign", "--actor", actor, "--type", action, "--target", "acct:1", "--digest", &digest,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // Allowed: alice signs a payment as the payments agent; bob publishes a report.
    let args = sign_args(PAYMENTS, "payment.initiate");
    let (ok, bundle, err) = run_as(&bin, &lab, alice, alice_gid, &as_strs(&args));
    assert!(ok, "alice may sign payments: {err}");
    let verified = verify(&lab, &bundle, Some(DOCUMENT)).expect("alice's bundle verifies");
    assert!(
        verified
            .caller
            .starts_with(&format!("unix uid={alice} gid={alice_gid} pid=")),
        "{}",
        verified.caller
    );
    let caller = &receipt_statement(&bundle)["predicate"]["caller"];
    assert_eq!(caller["kind"], "unix");
    assert_eq!(caller["uid"], alice);
    assert_eq!(caller["gid"], alice_gid);
    let pid = caller["pid"].as_u64().unwrap();
    assert!(pid > 0 && pid != u64::from(std::process::id()), "pid {pid}");

    let args = sign_args(REPORTING, "report.publish");
    let (ok, bundle, err) = run_as(&bin, &lab, bob, bob_gid, &as_strs(&args));
    assert!(ok, "bob may publish reports: {err}");
    let verified = verify(&lab, &bundle, Some(DOCUMENT)).unwrap();
    assert!(
        verified
            .caller
            .starts_with(&format!("unix uid={bob} gid={bob_gid}"))
    );

    let receipts = receipt_count(&lab);
    let keys = key_count(&lab);
    // Every combination outside the policy: PERMISSION_DENIED, nothing signed or stored.
    let denied: Vec<(&str, u32, u32, Vec<String>)> = vec![
        (
            "alice, wrong actor",
            alice,
            alice_gid,
            sign_args(REPORTING, "payment.initiate"),
        ),
        (
            "alice, wrong action type",
            alice,
            alice_gid,
            sign_args(PAYMENTS, "refund.create"),
        ),
        (
            "bob, wrong actor",
            bob,
            bob_gid,
            sign_args(PAYMENTS, "payment.initiate"),
        ),
        (
            "bob, wrong action type",
            bob,
            bob_gid,
            sign_args(REPORTING, "report.delete"),
        ),
        (
            "unknown uid",
            mallory,
            mallory_gid,
            sign_args(PAYMENTS, "payment.initiate"),
        ),
        (
            "unknown uid as a report publisher",
            mallory,
            mallory_gid,
            sign_args(REPORTING, "report.publish"),
        ),
        (
            "alice CreateKey (not an admin)",
            alice,
            alice_gid,
            [
                "key",
                "create",
                "--actor",
                "spiffe://acme.example/agents/new",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "alice AdoptKey (not an admin)",
            alice,
            alice_gid,
            [
                "key",
                "adopt",
                "--actor",
                "spiffe://acme.example/agents/new",
                "--label",
                "x",
            ]
            .map(String::from)
            .to_vec(),
        ),
        (
            "unknown uid CreateKey",
            mallory,
            mallory_gid,
            ["key", "create", "--actor", PAYMENTS]
                .map(String::from)
                .to_vec(),
        ),
        (
            "alice reads another actor's key",
            alice,
            alice_gid,
            ["key", "show", "--actor", REPORTING]
                .map(String::from)
                .to_vec(),
        ),
        (
            "alice RotateKey (not an admin)",
            alice,
            alice_gid,
            ["key", "rotate", "--actor", PAYMENTS]
                .map(String::from)
                .to_vec(),
        ),
        (
            "alice RetireKey (not an admin)",
            alice,
            alice_gid,
            ["key", "retire", "--actor", PAYMENTS, "--version", "1"]
                .map(String::from)
                .to_vec(),
        ),
        (
            "unknown uid fetches the proof (and bundle) of alice's receipt",
            mallory,
            mallory_gid,
            [
                "log",
                "proof",
                "--index",
                "0",
                "--out",
                "/nonexistent/proof.json",
            ]
            .map(String::from)
            .to_vec(),
        ),
    ];
    for (what, uid, gid, args) in &denied {
        let (ok, out, err) = run_as(&bin, &lab, *uid, *gid, &as_strs(args));
        assert!(!ok, "{what}: allowed: {out}");
        assert!(err.contains("PermissionDenied"), "{what}: {err}");
    }
    assert_eq!(
        receipt_count(&lab),
        receipts,
        "denied requests stored nothing"
    );
    assert_eq!(key_count(&lab), keys, "denied admin requests made no key");

    // Listing shows each caller only the actors it signs as.
    let (ok, out, err) = run_as(&bin, &lab, alice, alice_gid, &["key", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains(PAYMENTS) && !out.contains(REPORTING), "{out}");
    let (ok, out, _) = run_as(&bin, &lab, mallory, mallory_gid, &["key", "list"]);
    assert!(ok && out.trim().is_empty(), "{out}");

    // The daemon logged each refusal with the caller and the actor.
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    assert!(
        log.lines().any(|l| l.contains("permission denied")
            && l.contains(&format!("uid={mallory}"))
            && l.contains(PAYMENTS)),
        "{log}"
    );
    // The lab's user administers but does not sign.
    let status = signer(&lab)
        .await
        .sign(sign_as(PAYMENTS, "payment.initiate"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

// ---------------------------------------------------------------------------------------------
// mTLS callers

struct Tls {
    dir: PathBuf,
    port: u16,
    ca_pem: String,
}

impl Tls {
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// A client channel with a certificate; connection errors are returned, not panics.
    async fn channel(&self, cert: &(String, String)) -> Result<Channel, tonic::transport::Error> {
        Endpoint::from_shared(format!("https://localhost:{}", self.port))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&self.ca_pem))
                    .identity(Identity::from_pem(&cert.0, &cert.1)),
            )
            .unwrap()
            .connect()
            .await
    }
}

/// Signs over mTLS with `cert`; the status of whatever failed (transport errors become
/// UNAVAILABLE, as for any client).
async fn tls_sign(
    tls: &Tls,
    cert: &(String, String),
    request: SignRequest,
) -> Result<String, tonic::Status> {
    let channel = tls
        .channel(cert)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))?;
    SignerClient::new(channel)
        .sign(request)
        .await
        .map(|r| r.into_inner().bundle_json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_callers_are_their_certificates() {
    let mut lab = new_lab();
    let ca = TestCa::new("actseal test client CA");
    let other_ca = TestCa::new("someone else's CA");
    let tls = Tls {
        dir: lab.dir.join("tls"),
        port: free_port(),
        ca_pem: ca.cert_pem.clone(),
    };
    std::fs::create_dir_all(&tls.dir).unwrap();
    let (server_cert, server_key) = ca.server();
    let ca_file = tls.write("clients-ca.crt", &ca.cert_pem);
    let cert_file = tls.write("server.crt", &server_cert);
    let key_file = tls.write("server.key", &server_key);
    configure_server(&lab, &format!("tcp = \"127.0.0.1:{}\"", tls.port));
    let mut config = std::fs::read_to_string(lab.config()).unwrap();
    config.push_str(&format!(
        "\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = [\"{}\"]\n",
        cert_file.display(),
        key_file.display(),
        ca_file.display()
    ));
    std::fs::write(lab.config(), config).unwrap();
    write_policy(
        &lab,
        &format!(
            r#"
[[sign]]
callers = ["spiffe://acme.example/agents/*"]
actors = ["{PAYMENTS}"]
actions = ["payment.*"]

[[admin]]
callers = ["subject:CN=ops-admin,O=Acme"]
actors = ["spiffe://acme.example/**"]
"#
        ),
    );
    lab.start_daemon().unwrap();

    let payments = ca.client("payments-agent", None, Some(PAYMENTS), -1, 7);
    let other_agent = ca.client(
        "other-agent",
        None,
        Some("spiffe://acme.example/agents/other"),
        -1,
        7,
    );
    let pipeline = ca.client(
        "deploy",
        None,
        Some("spiffe://acme.example/pipelines/deploy"),
        -1,
        7,
    );
    let ops = ca.client("ops-admin", Some("Acme"), None, -1, 7);
    let rogue = other_ca.client("payments-agent", None, Some(PAYMENTS), -1, 7);
    let expired = ca.client("payments-agent", None, Some(PAYMENTS), -10, -1);

    // The admin (by subject) creates the key over mTLS.
    let key = KeyAdminClient::new(tls.channel(&ops).await.unwrap())
        .create_key(CreateKeyRequest {
            actor: PAYMENTS.into(),
        })
        .await
        .expect("ops-admin may create keys")
        .into_inner();
    // The agent signs; its SPIFFE ID is in the receipt and the verifier reports it.
    let bundle = tls_sign(&tls, &payments, sign_as(PAYMENTS, "payment.initiate"))
        .await
        .expect("the payments agent may sign");
    let verified = verify(&lab, &bundle, Some(DOCUMENT)).expect("verifies");
    assert_eq!(verified.key_id, key.key_id);
    assert_eq!(
        verified.caller,
        format!("x509 {PAYMENTS} (subject \"CN=payments-agent\")")
    );
    let caller = &receipt_statement(&bundle)["predicate"]["caller"];
    assert_eq!(caller["kind"], "x509");
    assert_eq!(caller["spiffeId"], PAYMENTS);
    assert_eq!(caller["subject"], "CN=payments-agent");
    // Another agent matching the wildcard may sign payments too.
    let bundle = tls_sign(&tls, &other_agent, sign_as(PAYMENTS, "payment.approve"))
        .await
        .expect("wildcard SPIFFE ID");
    assert!(
        verify(&lab, &bundle, None)
            .unwrap()
            .caller
            .contains("agents/other")
    );

    // The CLI speaks mTLS too.
    let pem = |name: &str, text: &str| tls.write(name, text).display().to_string();
    let (cli_cert, cli_key) = (pem("agent.crt", &payments.0), pem("agent.key", &payments.1));
    let ca_path = ca_file.display().to_string();
    let out = lab
        .command(&[
            "sign",
            "--actor",
            PAYMENTS,
            "--type",
            "payment.initiate",
            "--target",
            "acct:1",
            "--digest",
            &hex::encode(Sha256::digest(DOCUMENT)),
            "--endpoint",
            &format!("https://localhost:{}", tls.port),
            "--tls-ca",
            &ca_path,
            "--tls-cert",
            &cli_cert,
            "--tls-key",
            &cli_key,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_bundle = String::from_utf8_lossy(&out.stdout);
    assert!(
        verify(&lab, cli_bundle.trim(), Some(DOCUMENT))
            .unwrap()
            .caller
            .contains(PAYMENTS)
    );

    let receipts = receipt_count(&lab);
    let keys = key_count(&lab);
    // Certificates the policy does not allow: PERMISSION_DENIED.
    let denied = [
        (
            "agent, wrong action type",
            &other_agent,
            sign_as(PAYMENTS, "refund.create"),
        ),
        (
            "agent, wrong actor",
            &payments,
            sign_as(REPORTING, "payment.initiate"),
        ),
        (
            "SPIFFE ID outside the wildcard",
            &pipeline,
            sign_as(PAYMENTS, "payment.initiate"),
        ),
        (
            "admin is not a signer",
            &ops,
            sign_as(PAYMENTS, "payment.initiate"),
        ),
    ];
    for (what, cert, request) in denied {
        let status = tls_sign(&tls, cert, request).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    }
    let mut admin = KeyAdminClient::new(tls.channel(&payments).await.unwrap());
    let status = admin
        .create_key(CreateKeyRequest {
            actor: REPORTING.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "agent CreateKey");
    let status = admin
        .adopt_key(AdoptKeyRequest {
            actor: REPORTING.into(),
            selector: Some(Selector::Label("actseal-device".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "agent AdoptKey");
    let status = SignerClient::new(tls.channel(&pipeline).await.unwrap())
        .get_actor_key(GetActorKeyRequest {
            actor: PAYMENTS.into(),
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "pipeline reads the key"
    );

    // Certificates from another CA, expired ones, and none at all never get past the TLS
    // handshake: no request reaches the daemon's services.
    for (what, cert) in [("another CA", &rogue), ("expired", &expired)] {
        let status = tls_sign(&tls, cert, sign_as(PAYMENTS, "payment.initiate"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{what}: {status:?}"
        );
        assert_ne!(
            status.code(),
            Code::PermissionDenied,
            "{what}: reached the policy"
        );
    }
    // openssl, another TLS implementation, hears the daemon's TLS alert for each of them.
    for (what, cert, alert) in [
        ("another CA", &rogue, "unknown ca"),
        ("expired", &expired, "certificate expired"),
    ] {
        let c = tls.write("refused.crt", &cert.0);
        let k = tls.write("refused.key", &cert.1);
        let out = Command::new("timeout")
            .args([
                "20",
                "openssl",
                "s_client",
                "-brief",
                "-ign_eof",
                "-servername",
                "localhost",
            ])
            .args([
                "-connect",
                &format!("127.0.0.1:{}", tls.port),
                "-CAfile",
                &ca_path,
            ])
            .arg("-cert")
            .arg(&c)
            .arg("-key")
            .arg(&k)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{what}: {text}");
        assert!(
            text.contains(alert),
            "{what}: expected alert {alert:?}: {text}"
        );
    }
    let no_cert = Endpoint::from_shared(format!("https://localhost:{}", tls.port))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem)))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = no_cert {
        let status = SignerClient::new(channel)
            .sign(sign_as(PAYMENTS, "payment.initiate"))
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", tls.port))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        assert!(
            SignerClient::new(channel)
                .sign(sign_as(PAYMENTS, "payment.initiate"))
                .await
                .is_err(),
            "plain HTTP/2 on the mTLS port"
        );
    }
    assert_eq!(
        receipt_count(&lab),
        receipts,
        "refused callers stored nothing"
    );
    assert_eq!(key_count(&lab), keys);
    // The daemon is still serving the good agent.
    tls_sign(&tls, &payments, sign_as(PAYMENTS, "payment.initiate"))
        .await
        .expect("still serving");
}

// ---------------------------------------------------------------------------------------------
// policy reloads, readiness, metrics, shutdown

/// Receives one notification datagram.
fn notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy_and_a_broken_one_keeps_the_old() {
    let mut lab = new_lab();
    let me = own_uid();
    let only_payments = format!(
        "[[sign]]\ncallers = [\"uid:{me}\"]\nactors = [\"{PAYMENTS}\"]\nactions = [\"*\"]\n\n\
         [[admin]]\ncallers = [\"uid:{me}\"]\nactors = [\"*\"]\n"
    );
    write_policy(&lab, &only_payments);
    let notify_path = lab.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    lab.start_daemon_with(|c| {
        c.env("NOTIFY_SOCKET", &notify_path);
    })
    .unwrap();
    assert_eq!(notification(&notify), "READY=1");

    create_key(&lab, PAYMENTS).await;
    create_key(&lab, REPORTING).await;
    let mut signer = signer(&lab).await;
    signer
        .sign(sign_as(PAYMENTS, "payment.initiate"))
        .await
        .unwrap();
    let denied = signer
        .sign(sign_as(REPORTING, "report.publish"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // A broken policy (that would allow reporting) is rejected with its line; the old stays.
    let broken = format!(
        "[[sign]]\ncallers = [\"uid:{me}\"]\nactors = [\"*\"]\nactions = [\"*\"]\nextra = true\n"
    );
    write_policy(&lab, &broken);
    lab.signal_daemon("HUP").unwrap();
    assert_eq!(notification(&notify), "RELOADING=1");
    assert_eq!(notification(&notify), "READY=1");
    let log = wait_for_log(&lab, "policy reload rejected", 1);
    assert!(log.contains("line 5"), "{log}");
    assert!(log.contains("unknown field `extra`"), "{log}");
    let still = signer
        .sign(sign_as(REPORTING, "report.publish"))
        .await
        .unwrap_err();
    assert_eq!(still.code(), Code::PermissionDenied, "old policy in force");
    signer
        .sign(sign_as(PAYMENTS, "payment.initiate"))
        .await
        .expect("old policy still allows payments");

    // A semantic error is rejected too.
    write_policy(
        &lab,
        &only_payments.replace(&format!("uid:{me}\"]\nactors"), "uid:me\"]\nactors"),
    );
    lab.signal_daemon("HUP").unwrap();
    let log = wait_for_log(&lab, "policy reload rejected", 2);
    assert!(log.contains("line 2"), "{log}");
    assert!(
        signer
            .sign(sign_as(REPORTING, "report.publish"))
            .await
            .is_err()
    );

    // A good one takes effect: reporting allowed, payments no longer.
    write_policy(
        &lab,
        &format!(
            "[[sign]]\ncallers = [\"uid:{me}\"]\nactors = [\"{REPORTING}\"]\nactions = [\"report.*\"]\n"
        ),
    );
    lab.signal_daemon("HUP").unwrap();
    wait_for_log(&lab, "policy reloaded", 1);
    let bundle = signer
        .sign(sign_as(REPORTING, "report.publish"))
        .await
        .expect("new policy allows reporting")
        .into_inner()
        .bundle_json;
    assert_eq!(
        verify(&lab, &bundle, Some(DOCUMENT))
            .unwrap()
            .caller
            .split(" pid=")
            .next()
            .unwrap(),
        format!("unix uid={me} gid={}", {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").unwrap().gid()
        })
    );
    let gone = signer
        .sign(sign_as(PAYMENTS, "payment.initiate"))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::PermissionDenied);
    // The new policy has no admin rule: key administration is gone too.
    let status = admin(&lab)
        .await
        .create_key(CreateKeyRequest {
            actor: "spiffe://x/y".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    lab.stop_daemon().unwrap();
    // Two more reloads, each between RELOADING=1 and READY=1, then the stop.
    let rest: Vec<String> = (0..5).map(|_| notification(&notify)).collect();
    assert_eq!(
        rest,
        [
            "RELOADING=1",
            "READY=1",
            "RELOADING=1",
            "READY=1",
            "STOPPING=1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_signs_errors_and_backend_health() {
    let mut lab = new_lab();
    let port = free_port();
    configure_server(&lab, &format!("metrics = \"127.0.0.1:{port}\""));
    lab.start_daemon().unwrap();
    create_key(&lab, ACTOR).await;
    let mut signer = signer(&lab).await;
    for _ in 0..2 {
        signer.sign(sign_request(ACTOR, DOCUMENT)).await.unwrap();
    }
    let not_found = signer
        .sign(sign_request("spiffe://acme.example/agents/none", DOCUMENT))
        .await
        .unwrap_err();
    assert_eq!(not_found.code(), Code::NotFound);
    let listed = admin(&lab)
        .await
        .list_keys(ListKeysRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.into_inner().keys.len(), 1);

    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
    let text = get("/metrics");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("text/plain; version=0.0.4"), "{text}");
    for needle in [
        &format!("actseal_signs_total{{actor=\"{ACTOR}\",backend=\"pkcs11\"}} 2"),
        "actseal_sign_duration_seconds_count 2",
        "actseal_sign_duration_seconds_bucket{le=\"+Inf\"} 2",
        "actseal_request_errors_total{method=\"Sign\",code=\"NotFound\"} 1",
        "actseal_backend_up 1",
        "actseal_policy_reloads_total{outcome=\"applied\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    assert!(get("/other").starts_with("HTTP/1.1 404"));

    // A token that goes away shows in the health gauge.
    let tokens = lab.dir.join("tokens");
    let away = lab.dir.join("tokens-away");
    std::fs::rename(&tokens, &away).unwrap();
    let _ = signer.sign(sign_request(ACTOR, DOCUMENT)).await;
    let down = get("/metrics");
    std::fs::rename(&away, &tokens).unwrap();
    assert!(down.contains("actseal_backend_up 0"), "{down}");
    assert!(
        down.contains("actseal_request_errors_total{method=\"Sign\",code=\"Unavailable\"} 1"),
        "{down}"
    );
    lab.stop_daemon().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests() {
    let mut lab = started_lab();
    create_key(&lab, ACTOR).await;
    let mut clients = Vec::new();
    for c in 0..6 {
        let mut signer = signer(&lab).await;
        clients.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (Vec::new(), Vec::new());
            for i in 0..10_000 {
                match signer
                    .sign(sign_request(
                        ACTOR,
                        format!("client {c} action {i}").as_bytes(),
                    ))
                    .await
                {
                    Ok(response) => ok.push(response.into_inner()),
                    Err(status) => {
                        errors.push(status);
                        break;
                    }
                }
            }
            (ok, errors)
        }));
    }
    wait_for_log(&lab, "receipt signed", 20);
    lab.stop_daemon().expect("graceful stop");
    let mut acknowledged = Vec::new();
    for client in clients {
        let (ok, errors) = client.await.unwrap();
        acknowledged.extend(ok);
        for status in errors {
            // After the stop, a client sees the connection go away, never a half-done sign.
            // tonic reports a GOAWAY that ends a call in flight as Internal "h2 protocol
            // error": the same connection going away.
            let went_away = status.code() == Code::Internal
                && format!("{status:?}").contains("GoAway(b\"\", NO_ERROR, Remote)");
            assert!(
                went_away
                    || matches!(
                        status.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled
                    ),
                "{status:?}"
            );
        }
    }
    let log = std::fs::read_to_string(lab.daemon_log()).unwrap();
    let (_, after) = log
        .split_once("SIGTERM: finishing in-flight requests")
        .expect("the daemon logged the SIGTERM");
    assert!(
        after.contains("receipt signed"),
        "requests in flight at SIGTERM were finished: {after}"
    );
    assert!(after.contains("actseal stopped"), "{after}");
    // Every acknowledged receipt is in the ledger.
    assert_eq!(receipt_count(&lab), acknowledged.len() as u64);
}

#[test]
fn check_config_validates_policy_and_listeners() {
    let lab = new_lab();
    let check = |config: &Path| {
        let out = lab
            .command(&[
                "serve",
                "--config",
                &config.display().to_string(),
                "--check-config",
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = check(&lab.config());
    assert!(ok, "{out}");
    assert!(out.contains("1 sign rules, 1 admin rules"), "{out}");

    let policy = std::fs::read_to_string(lab.policy()).unwrap();
    std::fs::write(
        lab.policy(),
        policy.replace("actions = [\"*\"]", "actions = [\"a b\"]"),
    )
    .unwrap();
    let (ok, out) = check(&lab.config());
    assert!(!ok);
    assert!(out.contains("policy.toml line 7: actions:"), "{out}");
    std::fs::write(lab.policy(), &policy).unwrap();

    let config = std::fs::read_to_string(lab.config()).unwrap();
    let bad = lab.dir.join("bad.toml");
    let variant = |extra: &str| {
        std::fs::write(
            &bad,
            config.replacen("[server]\n", &format!("[server]\n{extra}\n"), 1),
        )
        .unwrap();
        check(&bad)
    };
    let (ok, out) = variant("tcp = \"0.0.0.0:7443\"");
    assert!(!ok && out.contains("needs server.tls"), "{out}");
    let (ok, out) = variant("tcp = \"0.0.0.0:7443\"\ntcp_insecure_loopback = true");
    assert!(!ok && out.contains("not a loopback address"), "{out}");
    let policy_line = format!("policy = \"{}\"", lab.policy().display());
    std::fs::write(
        &bad,
        config.replace(&policy_line, "policy = \"/nonexistent/policy.toml\""),
    )
    .unwrap();
    let (ok, out) = check(&bad);
    assert!(!ok && out.contains("/nonexistent/policy.toml"), "{out}");
    std::fs::write(
        &bad,
        config.replacen("[server]\n", "[server]\ntcp = \"127.0.0.1:7443\"\n", 1)
            + "\n[server.tls]\ncert = \"/nonexistent/server.crt\"\nkey = \"/k\"\nclient_ca = [\"/ca\"]\n",
    )
    .unwrap();
    let (ok, out) = check(&bad);
    assert!(
        !ok && out.contains("server.tls.cert /nonexistent/server.crt"),
        "{out}"
    );
    // The daemon itself refuses to start on a broken policy, naming the line.
    std::fs::write(lab.policy(), "[[sign]]\ncallers = [\"uid:0\"]\n").unwrap();
    let out = lab
        .command(&["serve", "--config", &lab.config().display().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing field `actors`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
