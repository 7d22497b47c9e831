//! An independent verifier: the bundle is taken apart with `serde_json` and every
//! cryptographic step is done by the `openssl` command line, never by the crate's verifier.
//! It mirrors the shell steps of FORMAT.md §8.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// Panics with a clear message when the `openssl` binary cannot be run: the cross-check tests
/// must fail, not skip, on a machine without it.
pub fn require_openssl() {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`openssl version` failed ({}): the openssl cross-check needs a working openssl CLI",
            out.status
        ),
        Err(e) => panic!(
            "the `openssl` binary is required by this test and could not be run ({e}); \
             install it (e.g. `apt-get install -y openssl`)"
        ),
    }
}

/// Runs `openssl` with `args`; Ok(stdout) on exit status 0.
fn openssl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run openssl (is it installed?): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "openssl {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> Result<&'a str, String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("bundle has no string at {pointer}"))
}

fn unbase64(v: &Value, pointer: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(text(v, pointer)?)
        .map_err(|e| format!("{pointer}: bad base64: {e}"))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// DSSE PAE, as FORMAT.md §2 defines it (the `printf` of §8).
fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// `openssl dgst -sha256` of a file, as lowercase hex.
fn sha256_file(path: &Path) -> Result<String, String> {
    let out = openssl(&["dgst", "-sha256", "-r", p(path)])?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| format!("unexpected openssl dgst output {out:?}"))
}

/// Verifies the DSSE envelope at `pointer` under the PEM public key `pub_pem`.
fn verify_envelope(
    bundle: &Value,
    pointer: &str,
    pub_pem: &Path,
    dir: &Path,
    name: &str,
) -> Result<Vec<u8>, String> {
    let payload_type = text(bundle, &format!("{pointer}/payloadType"))?;
    let payload = unbase64(bundle, &format!("{pointer}/payload"))?;
    if bundle
        .pointer(&format!("{pointer}/signatures"))
        .and_then(Value::as_array)
        .map(Vec::len)
        != Some(1)
    {
        return Err(format!("{pointer}: exactly one signature expected"));
    }
    let sig = unbase64(bundle, &format!("{pointer}/signatures/0/sig"))?;
    let pae_path = write(dir, &format!("{name}.pae"), &pae(payload_type, &payload))?;
    let sig_path = write(dir, &format!("{name}.sig.der"), &sig)?;
    let out = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        p(pub_pem),
        "-signature",
        p(&sig_path),
        p(&pae_path),
    ])?;
    if out.trim() != "Verified OK" {
        return Err(format!("{name}: openssl dgst -verify said {out:?}"));
    }
    Ok(payload)
}

fn expect_eq(what: &str, got: Option<&Value>, want: &str) -> Result<(), String> {
    match got.and_then(Value::as_str) {
        Some(g) if g == want => Ok(()),
        other => Err(format!("{what}: {other:?}, expected {want:?}")),
    }
}

/// RFC 3339 `…Z` time to Unix seconds, for `openssl verify -attime`.
fn epoch(rfc3339: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("signedAt {rfc3339:?}: {e}"))?;
    Ok(t.unix_timestamp())
}

/// Verifies `bundle_json` with the openssl CLI for all cryptography. `workdir` receives the
/// intermediate files (PEMs, PAEs, DER signatures) for inspection.
pub fn verify_with_openssl(
    bundle_json: &str,
    anchor_pem_path: &Path,
    document: Option<&[u8]>,
    workdir: &Path,
) -> Result<(), String> {
    let b: Value = serde_json::from_str(bundle_json).map_err(|e| format!("bundle JSON: {e}"))?;
    let receipt: Value = serde_json::from_slice(&unbase64(&b, "/receipt/payload")?)
        .map_err(|e| format!("receipt payload JSON: {e}"))?;

    // 1. Device certificate → chain → anchor, at signedAt.
    let device_der = write(
        workdir,
        "device.der",
        &unbase64(&b, "/lineage/deviceCertificate")?,
    )?;
    let device_pem = workdir.join("device.pem");
    openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        p(&device_der),
        "-out",
        p(&device_pem),
    ])?;
    let chain = b
        .pointer("/lineage/certificateChain")
        .and_then(Value::as_array)
        .ok_or("no certificateChain")?;
    let mut untrusted = String::new();
    for i in 0..chain.len() {
        let der = write(
            workdir,
            &format!("chain{i}.der"),
            &unbase64(&b, &format!("/lineage/certificateChain/{i}"))?,
        )?;
        untrusted.push_str(&openssl(&["x509", "-inform", "DER", "-in", p(&der)])?);
    }
    let untrusted_path = write(workdir, "untrusted.pem", untrusted.as_bytes())?;
    let signed_at = text(&receipt, "/predicate/signedAt")?;
    let at = epoch(signed_at)?.to_string();
    let mut args = vec![
        "verify",
        "-x509_strict",
        "-purpose",
        "any",
        "-attime",
        &at,
        "-CAfile",
        p(anchor_pem_path),
    ];
    if !chain.is_empty() {
        args.extend(["-untrusted", p(&untrusted_path)]);
    }
    args.push(p(&device_pem));
    let out = openssl(&args)?;
    if !out.trim_end().ends_with(": OK") {
        return Err(format!("openssl verify said {out:?}"));
    }
    // `openssl verify` accepts a CA certificate as the leaf: check the device's role ourselves.
    let ext = openssl(&[
        "x509",
        "-in",
        p(&device_pem),
        "-noout",
        "-ext",
        "basicConstraints,keyUsage",
    ])?;
    if ext.contains("CA:TRUE") {
        return Err("the device certificate is a CA".into());
    }
    if ext.contains("Key Usage") && !ext.contains("Digital Signature") {
        return Err("the device certificate's keyUsage lacks digitalSignature".into());
    }

    // 2. Receipt signature under the actor key; key ids are SHA-256 of its SPKI.
    let actor_der = write(
        workdir,
        "actor.spki.der",
        &unbase64(&b, "/actorKey/publicKey")?,
    )?;
    let actor_pem = workdir.join("actor.pub.pem");
    openssl(&[
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        p(&actor_der),
        "-out",
        p(&actor_pem),
    ])?;
    let key_id = sha256_file(&actor_der)?;
    expect_eq("actorKey.keyId", b.pointer("/actorKey/keyId"), &key_id)?;
    expect_eq(
        "receipt keyid",
        b.pointer("/receipt/signatures/0/keyid"),
        &key_id,
    )?;
    verify_envelope(&b, "/receipt", &actor_pem, workdir, "receipt")?;
    expect_eq(
        "receipt predicate.key.id",
        receipt.pointer("/predicate/key/id"),
        &key_id,
    )?;

    // 3. Document digest.
    if let Some(doc) = document {
        let digest = sha256_file(&write(workdir, "document", doc)?)?;
        expect_eq(
            "receipt subject digest",
            receipt.pointer("/subject/0/digest/sha256"),
            &digest,
        )?;
    }

    // 4. Lineage statement signature under the device certificate's key.
    let device_pub = workdir.join("device.pub.pem");
    let pubkey = openssl(&["x509", "-in", p(&device_pem), "-pubkey", "-noout"])?;
    std::fs::write(&device_pub, pubkey).map_err(|e| e.to_string())?;
    let lineage_bytes = verify_envelope(&b, "/lineage/statement", &device_pub, workdir, "lineage")?;
    let lineage: Value =
        serde_json::from_slice(&lineage_bytes).map_err(|e| format!("lineage payload JSON: {e}"))?;

    // 5. What the lineage statement must say about this key.
    expect_eq(
        "lineage predicateType",
        lineage.get("predicateType"),
        "https://actseal.dev/lineage/pkcs11-attributes/v2",
    )?;
    expect_eq(
        "lineage keyRole",
        lineage.pointer("/predicate/keyRole"),
        "actor-key",
    )?;
    expect_eq(
        "lineage subject digest",
        lineage.pointer("/subject/0/digest/sha256"),
        &key_id,
    )?;
    expect_eq(
        "lineage keyId",
        lineage.pointer("/predicate/keyId"),
        &key_id,
    )?;
    expect_eq(
        "lineage actor",
        lineage.pointer("/predicate/actor"),
        text(&receipt, "/predicate/actor")?,
    )?;
    if lineage.pointer("/predicate/keyVersion") != receipt.pointer("/predicate/key/version") {
        return Err("lineage keyVersion differs from the receipt's key version".into());
    }
    for (name, want) in [
        ("sensitive", true),
        ("alwaysSensitive", true),
        ("extractable", false),
        ("neverExtractable", true),
        ("local", true),
        ("sign", true),
    ] {
        let got = lineage
            .pointer(&format!("/predicate/attributes/{name}"))
            .and_then(Value::as_bool);
        if got != Some(want) {
            return Err(format!(
                "lineage attribute {name} is {got:?}, must be {want}"
            ));
        }
    }
    Ok(())
}
