//! `actseal demo`: the whole path on fresh SoftHSM tokens, every step shown as the command an
//! operator would type.

use super::out::{out, outln};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::lab::Lab;

const ACTOR: &str = "spiffe://acme.example/agents/payments";

/// The seed example: an AI agent's payment instruction with the prompt it acted on, the tool
/// call it made and the approval that allowed it.
const PAYMENT_INSTRUCTION: &str = r#"{
  "prompt": "Pay Northwind Supplies invoice INV-2026-0042 (EUR 1,250.00, due 2026-11-30) from the operating account.",
  "tool_call": {
    "name": "bank.transfer",
    "arguments": {
      "from": "acct:DE89370400440532013000",
      "to": "acct:GB29NWBK60161331926819",
      "amount": "1250.00",
      "currency": "EUR",
      "reference": "INV-2026-0042"
    }
  },
  "approval": {
    "policy": "payments up to EUR 5,000 to known suppliers are pre-approved",
    "approved_by": "spiffe://acme.example/policy/payments",
    "ticket": "FIN-8812"
  }
}
"#;

/// A second actor whose key lives in a TPM (a private swtpm with an EK certificate).
const TPM_ACTOR: &str = "spiffe://acme.example/pipelines/release";

const OPENSSL_SCRIPT: &str = include_str!("../../scripts/verify-with-openssl.sh");

pub fn run(workdir: Option<PathBuf>) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the actseal binary")?;
    let (dir, _temp) = match workdir {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new().prefix("actseal-demo-").tempdir()?;
            (temp.path().join("lab"), Some(temp))
        }
    };
    outln!("== Setting up a SoftHSM lab in {}", dir.display());
    let mut lab = Lab::create(&exe, &dir, true)?;
    // A timestamp authority of the lab's own (test code: `openssl ts -reply` behind HTTP).
    let tsa = crate::lab_tsa::TestTsa::start(
        &lab.dir.join("tsa"),
        "actseal demo TSA",
        crate::lab_tsa::TsaKey::P256,
        crate::lab_tsa::EssCertId::Sha256,
    )?;
    tsa.add_to_config(&lab.config())?;
    outln!("timestamp authority (RFC 3161) at {}", tsa.url());

    outln!("\n== Starting the daemon on the SoftHSM token");
    lab.start_daemon()?;
    let socket = lab.socket().display().to_string();
    outln!("daemon listening on {socket}");
    let witnesses = start_witnesses(&mut lab)?;

    outln!("\n== Creating the agent's key inside the token");
    lab.run_ok(&["key", "create", "--actor", ACTOR])?;

    outln!("\n== The agent pays an invoice; actseal signs the action");
    let document = lab.dir.join("payment-instruction.json");
    std::fs::write(&document, PAYMENT_INSTRUCTION)?;
    let document = document.display().to_string();
    let bundle = lab.path("payment.bundle.json");
    lab.run_ok(&[
        "sign",
        "--actor",
        ACTOR,
        "--type",
        "payment.initiate",
        "--target",
        "acct:DE89370400440532013000",
        "--document",
        &document,
        "--context",
        "model=acme-agent-7",
        "--context",
        "session=5f1c2a",
        "--context",
        "invoice=INV-2026-0042",
        "--out",
        &bundle,
    ])?;
    lab.stop_daemon()?;
    outln!("daemon stopped: everything below is offline");

    outln!("\n== Verifying the proof bundle offline with actseal");
    let anchor = lab.anchor().display().to_string();
    let tsa_anchor = tsa.ca_cert().display().to_string();
    let output = lab.run(&[
        "verify",
        &bundle,
        "--trust",
        &anchor,
        "--document",
        &document,
        "--tsa-trust",
        &tsa_anchor,
    ])?;
    if !output.status.success() {
        bail!("the demo bundle did not verify");
    }
    stamp_with_openssl(&lab.dir, &bundle, &tsa_anchor)?;

    outln!("\n== Checking the witnesses' cosignatures against the auditor's witness policy");
    let policy = lab.path("witness-policy.txt");
    let mut text = String::from("# both witnesses must have cosigned\n");
    for w in &witnesses {
        text.push_str(&w.policy_line());
    }
    text.push_str(
        "group both all witness-1.lab.actseal.example witness-2.lab.actseal.example\nquorum both\n",
    );
    std::fs::write(&policy, text)?;
    let output = lab.run(&[
        "verify",
        &bundle,
        "--trust",
        &anchor,
        "--witness-policy",
        &policy,
    ])?;
    if !output.status.success() {
        bail!("the demo bundle does not meet the witness policy");
    }
    drop(witnesses);

    outln!("\n== Verifying the same bundle with openssl alone");
    verify_with_openssl(&lab.dir, &bundle, &anchor, &document)?;

    outln!("\n== Auditing the whole log offline: every entry, chain and checkpoint");
    let export = lab.path("log-export.json");
    let config = lab.config().display().to_string();
    lab.run_ok(&["log", "export", "--config", &config, "--out", &export])?;
    lab.run_ok(&["audit", &export, "--trust", &anchor])?;

    outln!(
        "\n== Proved: the agent {ACTOR} (key generated in and never extractable from the \
         token) signed exactly this payment instruction, the token's device certificate \
         chains to the operator's CA, the receipt is in the daemon's signed, tamper-evident log, \
         and an RFC 3161 timestamp authority dates that log's checkpoint no earlier than the receipt."
    );

    tpm_actor(&exe, &lab.dir.join("tpm-lab"), &document)?;
    if _temp.is_none() {
        outln!("The lab stays in {} for you to explore.", lab.dir.display());
    }
    Ok(())
}

/// Two witnesses, each with its own SoftHSM token and state, cosign the daemon's checkpoints;
/// the daemon answers Sign once both have (2-of-2, `anchored`).
fn start_witnesses(lab: &mut Lab) -> Result<Vec<crate::lab_witness::LabWitness>> {
    outln!(
        "\n== Two witnesses (other parties' hosts in real life), each with an Ed25519 key in its own token"
    );
    lab.stop_daemon()?;
    let mut witnesses = Vec::new();
    for n in 1..=2 {
        let mut w = crate::lab_witness::LabWitness::create(lab, n)?;
        w.start(lab)?;
        outln!("witness {} at {}: {}", w.name, w.url, w.vkey);
        witnesses.push(w);
    }
    crate::lab_witness::configure_anchor(lab, &witnesses, 2, "acknowledge = \"anchored\"")?;
    outln!("daemon configured: [anchor] quorum = 2 of the two witnesses");
    lab.start_daemon()?;
    Ok(witnesses)
}

/// The same path on a TPM: enrollment of the attestation key, a TPM-held actor key certified
/// by TPM2_Certify, a signed action, a fresh attestation binding a nonce, offline checks.
fn tpm_actor(exe: &std::path::Path, dir: &std::path::Path, document: &str) -> Result<()> {
    outln!(
        "\n== A second daemon on a TPM (swtpm with an EK certificate) in {}",
        dir.display()
    );
    outln!("(`actseal enroll` checks the EK certificate against the TPM maker's CA, proves the");
    outln!(" attestation key is in that TPM with MakeCredential/ActivateCredential, and has the");
    outln!(" operator CA certify it)");
    let mut lab = Lab::create_with_backend(exe, dir, true, crate::lab::LabBackend::Tpm)?;
    lab.start_daemon()?;

    outln!("\n== Creating the pipeline's key inside the TPM (certified by the AK at once)");
    lab.run_ok(&["key", "create", "--actor", TPM_ACTOR])?;

    outln!("\n== The release pipeline signs its action with the TPM-held key");
    let bundle = lab.path("release.bundle.json");
    lab.run_ok(&[
        "sign",
        "--actor",
        TPM_ACTOR,
        "--type",
        "release.publish",
        "--target",
        "pkg:cargo/actseal@0.1.0",
        "--document",
        document,
        "--out",
        &bundle,
    ])?;

    outln!("\n== An auditor asks the TPM for a fresh attestation bound to their nonce");
    let anchor = lab.anchor().display().to_string();
    lab.run_ok(&[
        "key",
        "attest",
        "--actor",
        TPM_ACTOR,
        "--nonce",
        "6175646974206e6f6e6365",
        "--trust",
        &anchor,
        "--out",
        &lab.path("release.attestation.json"),
    ])?;
    lab.stop_daemon()?;

    outln!("\n== Verifying the TPM bundle offline");
    let output = lab.run(&[
        "verify",
        &bundle,
        "--trust",
        &anchor,
        "--document",
        document,
    ])?;
    if !output.status.success() {
        bail!("the TPM demo bundle did not verify");
    }
    outln!("\n== Verifying the TPM bundle with openssl alone (TPMS_ATTEST read byte by byte)");
    verify_with_openssl(&lab.dir, &bundle, &anchor, document)?;
    outln!(
        "\n== Proved: the pipeline {TPM_ACTOR} signed with a key the TPM itself certifies as \
         generated in it and never leaving it (fixedTPM, fixedParent, sensitiveDataOrigin), by \
         an attestation key enrolled through the TPM's EK certificate."
    );
    Ok(())
}

/// Checks the bundle's timestamp token with `openssl ts -verify` over the checkpoint's note
/// text (FORMAT.md §15).
fn stamp_with_openssl(dir: &std::path::Path, bundle: &str, tsa_anchor: &str) -> Result<()> {
    use base64::Engine;
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle)?)?;
    let token = value["log"]["timestamps"][0]["token"]
        .as_str()
        .context("the bundle carries no timestamp token")?;
    let note = value["log"]["checkpoint"]
        .as_str()
        .context("no checkpoint")?;
    let text = crate::verify::timestamp::note_text(note).map_err(anyhow::Error::msg)?;
    std::fs::write(
        dir.join("token.der"),
        base64::engine::general_purpose::STANDARD.decode(token)?,
    )?;
    std::fs::write(dir.join("checkpoint.txt"), text)?;
    outln!(
        "$ openssl ts -verify -token_in -in token.der -data checkpoint.txt -CAfile {tsa_anchor}"
    );
    let out = std::process::Command::new("openssl")
        .args([
            "ts",
            "-verify",
            "-token_in",
            "-in",
            "token.der",
            "-data",
            "checkpoint.txt",
        ])
        .args(["-CAfile", tsa_anchor])
        .current_dir(dir)
        .output()?;
    out!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("openssl ts -verify refused the bundle's timestamp token");
    }
    Ok(())
}

/// Runs `scripts/verify-with-openssl.sh` (FORMAT.md §8), written into `dir`, on a bundle.
fn verify_with_openssl(
    dir: &std::path::Path,
    bundle: &str,
    anchor: &str,
    document: &str,
) -> Result<()> {
    let script = dir.join("verify-with-openssl.sh");
    std::fs::write(&script, OPENSSL_SCRIPT)?;
    outln!("$ sh verify-with-openssl.sh {bundle} {anchor} {document}");
    let status = std::process::Command::new("sh")
        .arg(&script)
        .args([bundle, anchor, document])
        .status()
        .context("cannot run sh")?;
    if !status.success() {
        bail!("openssl did not verify {bundle}");
    }
    Ok(())
}
