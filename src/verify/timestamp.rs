//! RFC 3161 timestamp tokens over checkpoints (FORMAT.md §15): a CMS SignedData whose content
//! is a TSTInfo, signed by a timestamp authority whose certificate chains to an anchor the
//! auditor gives (`actseal verify --tsa-trust`).
//!
//! What is checked (in this order): the token is a DER ContentInfo holding a SignedData (v3)
//! with an id-ct-TSTInfo content and one SignerInfo; the signed attributes name the content type,
//! carry the messageDigest of the TSTInfo and an ESSCertID (v1, SHA-1, or v2) of the signing
//! certificate; the signature (ECDSA P-256 with SHA-256, or RSA PKCS#1 v1.5 with SHA-256/384/512)
//! verifies over the DER signed attributes; the signing certificate carries exactly the critical
//! id-kp-timeStamping extended key usage and chains, through the token's certificates, to an
//! anchor, every certificate valid at genTime; the TSTInfo's imprint is SHA-256 over the
//! checkpoint's note text. Revocation is not checked (the anchors are the auditor's choice).

use der::asn1::{GeneralizedTime, ObjectIdentifier, OctetString};
use der::{Decode, Encode, Header, Reader, Sequence, SliceReader, Tag, Tagged};
use sha2::{Digest, Sha256, Sha384, Sha512};
use x509_cert::Certificate;
use x509_cert::certificate::Version;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::AlgorithmIdentifierOwned;

/// How much later than the stamped time (genTime + the token's accuracy) a receipt's `signedAt`
/// may be: the daemon's clock may run this far ahead of the authority's.
pub const SIGNED_AT_TOLERANCE_SECONDS: i64 = 5;
/// A token carries its signer and a few intermediates; longer paths are refused.
const MAX_PATH: usize = 8;
/// Tokens are a few KiB; far larger input is refused before parsing.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SIGNING_CERTIFICATE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.12");
const ID_SIGNING_CERTIFICATE_V2: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.47");
const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const ID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const ID_KP_TIME_STAMPING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.8");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const SUBJECT_KEY_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
/// Extensions that constrain nothing this verifier enforces (identifiers, names, policies).
const TOLERATED: [ObjectIdentifier; 4] = [
    ObjectIdentifier::new_unwrap("2.5.29.14"), // subjectKeyIdentifier
    ObjectIdentifier::new_unwrap("2.5.29.35"), // authorityKeyIdentifier
    ObjectIdentifier::new_unwrap("2.5.29.17"), // subjectAltName
    ObjectIdentifier::new_unwrap("2.5.29.32"), // certificatePolicies
];

/// The certificates an auditor trusts to issue timestamp authorities (or the authorities'
/// own certificates), given as PEM.
#[derive(Debug, Clone)]
pub struct TsaAnchors {
    certs: Vec<Cert>,
}

impl TsaAnchors {
    /// One or more PEM `CERTIFICATE` blocks; error if none, or if one does not parse.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let certs = Certificate::load_pem_chain(pem)
            .map_err(|e| format!("TSA trust anchors: not PEM certificates: {e}"))?
            .into_iter()
            .map(Cert::new)
            .collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            return Err("TSA trust anchors: no PEM CERTIFICATE block found".into());
        }
        Ok(TsaAnchors { certs })
    }
}

/// What a verified token states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// genTime as Unix seconds (fractions dropped).
    pub gen_time_unix: i64,
    /// genTime as RFC 3339, second precision.
    pub gen_time: String,
    /// The token's accuracy, in whole milliseconds (0 when it states none).
    pub accuracy_ms: u64,
    /// The policy the authority stamped under (dotted OID).
    pub policy: String,
    /// The token's serial number, hex.
    pub serial: String,
    /// The signing certificate's subject (RFC 4514).
    pub tsa_subject: String,
    /// The anchor that closed its path.
    pub anchor_subject: String,
}

impl Stamp {
    /// `signedAt ≤ genTime + accuracy + tolerance`: a receipt is not dated after the time its
    /// checkpoint was stamped (FORMAT.md §15).
    pub fn check_signed_at(&self, signed_at_unix: i64) -> Result<(), String> {
        let accuracy = i64::try_from(self.accuracy_ms.div_ceil(1000)).unwrap_or(i64::MAX);
        let latest = self
            .gen_time_unix
            .saturating_add(accuracy)
            .saturating_add(SIGNED_AT_TOLERANCE_SECONDS);
        if signed_at_unix > latest {
            return Err(format!(
                "the receipt's signedAt is {} s after the stamped time {} (tolerance {} s + accuracy)",
                signed_at_unix.saturating_sub(self.gen_time_unix),
                self.gen_time,
                SIGNED_AT_TOLERANCE_SECONDS
            ));
        }
        Ok(())
    }
}

/// The signed text of a checkpoint note: everything up to and including the newline before
/// the last blank line (signed-note), over which the imprint is taken.
pub fn note_text(note: &str) -> Result<&str, String> {
    let at = note
        .rfind("\n\n")
        .ok_or("the checkpoint has no blank line before its signatures")?;
    note.get(..at.saturating_add(1))
        .ok_or_else(|| "bad note text boundary".to_string())
}

/// Verifies a DER TimeStampToken over `note_text` under `anchors` and returns what it states.
pub fn verify_token(token: &[u8], note_text: &[u8], anchors: &TsaAnchors) -> Result<Stamp, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("the token is over {MAX_TOKEN_BYTES} bytes"));
    }
    let parts = parse_token(token)?;
    check_signed_attrs(&parts)?;
    let signer = find_signer(&parts)?;
    check_ess_cert_id(&parts, &signer)?;
    check_signature(&parts, &signer)?;
    let tst = &parts.tst;
    let gen_time_unix = unix(&tst.gen_time)?;
    check_tsa_cert(&signer, gen_time_unix)?;
    let anchor = verify_path(&signer, &parts.certs, anchors, gen_time_unix)?;
    check_imprint(tst, note_text)?;
    Ok(Stamp {
        gen_time_unix,
        gen_time: rfc3339(gen_time_unix),
        accuracy_ms: accuracy_ms(tst),
        policy: tst.policy.to_string(),
        serial: hex::encode(tst.serial_number.as_bytes()),
        tsa_subject: signer.cert.tbs_certificate.subject.to_string(),
        anchor_subject: anchor.cert.tbs_certificate.subject.to_string(),
    })
}

/// What a token says, read without checking its signature: for the client that asked for it,
/// to compare with its request before it keeps the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The imprint's hash algorithm (dotted OID) and hash.
    pub imprint_algorithm: String,
    pub imprint: Vec<u8>,
    /// The nonce, as the INTEGER's content octets.
    pub nonce: Option<Vec<u8>>,
    pub policy: String,
    pub gen_time_unix: i64,
}

/// Reads a token's TSTInfo (no signature or chain is checked: see [`verify_token`]).
pub fn token_info(token: &[u8]) -> Result<TokenInfo, String> {
    let parts = parse_token(token)?;
    let tst = parts.tst;
    Ok(TokenInfo {
        imprint_algorithm: tst.message_imprint.hash_algorithm.oid.to_string(),
        imprint: tst.message_imprint.hashed_message.as_bytes().to_vec(),
        nonce: tst.nonce.map(|n| n.as_bytes().to_vec()),
        policy: tst.policy.to_string(),
        gen_time_unix: unix(&tst.gen_time)?,
    })
}

/// What `log.timestamp` found: the tokens that verified, and why the others did not.
#[derive(Debug, Clone)]
pub struct BundleStamps {
    pub verified: Vec<Stamp>,
    /// `(index in log.timestamps, reason)` of each token that did not verify.
    pub ignored: Vec<(usize, String)>,
}

impl std::fmt::Display for BundleStamps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.verified {
            writeln!(
                f,
                "  stamped:   {} by {} (under {}, policy {})",
                s.gen_time,
                s.tsa_subject.escape_default(),
                s.anchor_subject.escape_default(),
                s.policy
            )?;
        }
        for (i, reason) in &self.ignored {
            writeln!(f, "  token {i} ignored: {}", reason.escape_default())?;
        }
        Ok(())
    }
}

/// `log.timestamp`: of the `tokens` over the checkpoint `note`, at least one verifies under
/// `anchors` and dates the checkpoint no earlier than `signed_at_unix` (within the tolerance).
/// Tokens that do not verify (another authority's, say) are reported, not fatal, as
/// signed-note ignores signatures of unknown keys.
pub fn check_tokens(
    tokens: &[Vec<u8>],
    note: &str,
    anchors: &TsaAnchors,
    signed_at_unix: i64,
) -> Result<BundleStamps, String> {
    let text = note_text(note)?;
    let mut out = BundleStamps {
        verified: Vec::new(),
        ignored: Vec::new(),
    };
    for (i, token) in tokens.iter().enumerate() {
        let checked = verify_token(token, text.as_bytes(), anchors)
            .and_then(|s| s.check_signed_at(signed_at_unix).map(|()| s));
        match checked {
            Ok(stamp) => out.verified.push(stamp),
            Err(reason) => out.ignored.push((i, reason)),
        }
    }
    if out.verified.is_empty() {
        let reasons: Vec<String> = out
            .ignored
            .iter()
            .map(|(i, r)| format!("token {i}: {r}"))
            .collect();
        return Err(if reasons.is_empty() {
            "the bundle carries no timestamp token (log.timestamps)".into()
        } else {
            format!("no timestamp token verifies: {}", reasons.join("; "))
        });
    }
    Ok(out)
}

/// The parts of a token, decoded.
struct Token {
    signer: cms::signed_data::SignerInfo,
    /// The signed attributes exactly as received, re-tagged as a SET (RFC 5652 §5.4).
    signed_attrs_der: Vec<u8>,
    /// The eContent octets: the DER TSTInfo.
    tst_der: Vec<u8>,
    tst: x509_tsp::TstInfo,
    certs: Vec<Cert>,
}

fn parse_token(token: &[u8]) -> Result<Token, String> {
    use cms::content_info::CmsVersion;
    use cms::content_info::ContentInfo;
    use cms::signed_data::SignedData;
    let info =
        ContentInfo::from_der(token).map_err(|e| format!("not a DER CMS ContentInfo: {e}"))?;
    if info.content_type != ID_SIGNED_DATA {
        return Err(format!(
            "content type {} is not signedData",
            info.content_type
        ));
    }
    let content = info.content.to_der().map_err(|e| e.to_string())?;
    let sd = SignedData::from_der(&content).map_err(|e| format!("not a SignedData: {e}"))?;
    if sd.version != CmsVersion::V3 {
        return Err(format!("SignedData version {:?}, expected 3", sd.version));
    }
    if sd.encap_content_info.econtent_type != ID_CT_TST_INFO {
        return Err("the signed content is not an id-ct-TSTInfo".into());
    }
    let econtent = sd
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or("the token has no TSTInfo")?;
    if econtent.tag() != Tag::OctetString {
        return Err("eContent is not an OCTET STRING".into());
    }
    let tst_der = econtent.value().to_vec();
    let tst = x509_tsp::TstInfo::from_der(&tst_der).map_err(|e| format!("not a TSTInfo: {e}"))?;
    let mut signers = sd.signer_infos.0.into_vec();
    if signers.len() != 1 {
        return Err(format!("{} SignerInfos, expected exactly 1", signers.len()));
    }
    let signer = signers.pop().ok_or("no SignerInfo")?;
    // RFC 5652 §5.3: version 1 with an issuerAndSerialNumber, 3 with a subjectKeyIdentifier.
    let expected = match signer.sid {
        cms::signed_data::SignerIdentifier::IssuerAndSerialNumber(_) => CmsVersion::V1,
        cms::signed_data::SignerIdentifier::SubjectKeyIdentifier(_) => CmsVersion::V3,
    };
    if signer.version != expected {
        return Err(format!(
            "SignerInfo version {:?} does not fit its sid",
            signer.version
        ));
    }
    if !sd.digest_algorithms.iter().any(|a| *a == signer.digest_alg) {
        return Err(
            "the signer's digest algorithm is not among SignedData.digestAlgorithms".into(),
        );
    }
    let mut certs = Vec::new();
    for choice in sd.certificates.map(|s| s.0.into_vec()).unwrap_or_default() {
        if let cms::cert::CertificateChoices::Certificate(c) = choice {
            certs.push(Cert::new(c)?);
        }
    }
    Ok(Token {
        signer,
        signed_attrs_der: raw_signed_attrs(token)?,
        tst_der,
        tst,
        certs,
    })
}

/// The SignerInfo's `[0] IMPLICIT` signed attributes as the bytes received, with the SET tag
/// the signature covers: the decoder sorts SET OF members, so they are never re-encoded.
fn raw_signed_attrs(token: &[u8]) -> Result<Vec<u8>, String> {
    let walk = || -> der::Result<Option<Vec<u8>>> {
        let mut r = SliceReader::new(token)?;
        Header::decode(&mut r)?; // ContentInfo
        r.tlv_bytes()?; // contentType
        Header::decode(&mut r)?; // [0] EXPLICIT
        Header::decode(&mut r)?; // SignedData
        for _ in 0..3 {
            r.tlv_bytes()?; // version, digestAlgorithms, encapContentInfo
        }
        while matches!(r.peek_tag()?, Tag::ContextSpecific { .. }) {
            r.tlv_bytes()?; // [0] certificates, [1] crls
        }
        Header::decode(&mut r)?; // signerInfos SET
        Header::decode(&mut r)?; // the SignerInfo
        for _ in 0..3 {
            r.tlv_bytes()?; // version, sid, digestAlgorithm
        }
        let attrs = r.tlv_bytes()?;
        Ok(match attrs.split_first() {
            Some((0xa0, rest)) => Some([&[0x31], rest].concat()),
            _ => None,
        })
    };
    walk()
        .map_err(|e| format!("cannot locate the signed attributes: {e}"))?
        .ok_or_else(|| "the SignerInfo has no signed attributes".to_string())
}

/// The one value of the signed attribute `oid`; error if absent or repeated.
fn attr(parts: &Token, oid: ObjectIdentifier) -> Result<Option<&der::Any>, String> {
    let attrs = parts
        .signer
        .signed_attrs
        .as_ref()
        .ok_or("no signed attributes")?;
    let mut found = attrs.iter().filter(|a| a.oid == oid);
    let Some(first) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() || first.values.len() != 1 {
        return Err(format!(
            "signed attribute {oid} must appear once with one value"
        ));
    }
    Ok(first.values.get(0))
}

/// contentType is id-ct-TSTInfo and messageDigest is the digest of the TSTInfo.
fn check_signed_attrs(parts: &Token) -> Result<(), String> {
    let content_type = attr(parts, ID_CONTENT_TYPE)?.ok_or("no contentType signed attribute")?;
    if content_type.decode_as::<ObjectIdentifier>().ok() != Some(ID_CT_TST_INFO) {
        return Err("the contentType signed attribute is not id-ct-TSTInfo".into());
    }
    let digest = attr(parts, ID_MESSAGE_DIGEST)?.ok_or("no messageDigest signed attribute")?;
    let digest = digest
        .decode_as::<OctetString>()
        .map_err(|_| "messageDigest is not an OCTET STRING")?;
    if digest.as_bytes() != hash(&parts.signer.digest_alg, &parts.tst_der)?.as_slice() {
        return Err("messageDigest is not the digest of the TSTInfo".into());
    }
    Ok(())
}

/// A certificate with the DER it was decoded from.
#[derive(Debug, Clone)]
struct Cert {
    cert: Certificate,
    der: Vec<u8>,
    tbs_der: Vec<u8>,
}

impl Cert {
    fn new(cert: Certificate) -> Result<Cert, String> {
        let der = cert.to_der().map_err(|e| e.to_string())?;
        let tbs_der = cert.tbs_certificate.to_der().map_err(|e| e.to_string())?;
        Ok(Cert { cert, der, tbs_der })
    }

    fn serial(&self) -> &SerialNumber {
        &self.cert.tbs_certificate.serial_number
    }

    fn extension(&self, oid: ObjectIdentifier) -> Option<&x509_cert::ext::Extension> {
        self.cert
            .tbs_certificate
            .extensions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|e| e.extn_id == oid)
    }

    fn subject_key_id(&self) -> Option<Vec<u8>> {
        let ext = self.extension(SUBJECT_KEY_ID)?;
        let ski = SubjectKeyIdentifier::from_der(ext.extn_value.as_bytes()).ok()?;
        Some(ski.0.as_bytes().to_vec())
    }

    fn spki_der(&self) -> Result<Vec<u8>, String> {
        self.cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| e.to_string())
    }
}

/// The certificate the SignerInfo names (issuer and serial, or subject key identifier).
fn find_signer(parts: &Token) -> Result<Cert, String> {
    use cms::signed_data::SignerIdentifier;
    let found = parts.certs.iter().find(|c| match &parts.signer.sid {
        SignerIdentifier::IssuerAndSerialNumber(is) => {
            is.issuer == c.cert.tbs_certificate.issuer && is.serial_number == *c.serial()
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => {
            c.subject_key_id().as_deref() == Some(ski.0.as_bytes())
        }
    });
    found
        .cloned()
        .ok_or_else(|| "the token does not carry the signer's certificate".to_string())
}

/// ESSCertIDv2 (RFC 5035); `hashAlgorithm` defaults to SHA-256.
#[derive(Sequence)]
struct EssCertIdV2 {
    #[asn1(optional = "true")]
    hash_algorithm: Option<AlgorithmIdentifierOwned>,
    cert_hash: OctetString,
    #[asn1(optional = "true")]
    issuer_serial: Option<IssuerSerial>,
}

/// ESSCertID (RFC 2634): a SHA-1 hash.
#[derive(Sequence)]
struct EssCertId {
    cert_hash: OctetString,
    #[asn1(optional = "true")]
    issuer_serial: Option<IssuerSerial>,
}

/// `IssuerSerial ::= SEQUENCE { issuer GeneralNames, serialNumber CertificateSerialNumber }`.
#[derive(Sequence)]
struct IssuerSerial {
    issuer: Vec<x509_cert::ext::pkix::name::GeneralName>,
    serial_number: SerialNumber,
}

/// `SigningCertificate ::= SEQUENCE { certs SEQUENCE OF ESSCertID, policies OPTIONAL }`.
#[derive(Sequence)]
struct SigningCertificateV1 {
    certs: Vec<EssCertId>,
    #[asn1(optional = "true")]
    policies: Option<der::Any>,
}

/// `SigningCertificateV2 ::= SEQUENCE { certs SEQUENCE OF ESSCertIDv2, policies OPTIONAL }`.
#[derive(Sequence)]
struct SigningCertificateV2 {
    certs: Vec<EssCertIdV2>,
    #[asn1(optional = "true")]
    policies: Option<der::Any>,
}

/// The signed attributes bind the signing certificate (RFC 3161 §2.4.1, RFC 5816): the first
/// ESSCertID(v2) is the hash of the signer's certificate, and its issuerSerial, when present,
/// names it.
fn check_ess_cert_id(parts: &Token, signer: &Cert) -> Result<(), String> {
    let v2 = attr(parts, ID_SIGNING_CERTIFICATE_V2)?;
    let v1 = attr(parts, ID_SIGNING_CERTIFICATE)?;
    let (algorithm, cert_hash, issuer_serial) = match (v2, v1) {
        (Some(v2), _) => {
            let sc: SigningCertificateV2 = decode_attr(v2, "signingCertificateV2")?;
            let first = sc
                .certs
                .into_iter()
                .next()
                .ok_or("signingCertificateV2 is empty")?;
            let alg = first.hash_algorithm.map_or(ID_SHA256, |a| a.oid);
            (alg, first.cert_hash, first.issuer_serial)
        }
        (None, Some(v1)) => {
            let sc: SigningCertificateV1 = decode_attr(v1, "signingCertificate")?;
            let first = sc
                .certs
                .into_iter()
                .next()
                .ok_or("signingCertificate is empty")?;
            (ID_SHA1, first.cert_hash, first.issuer_serial)
        }
        (None, None) => return Err("no signingCertificate(V2) signed attribute".into()),
    };
    let alg = AlgorithmIdentifierOwned {
        oid: algorithm,
        parameters: None,
    };
    if cert_hash.as_bytes() != hash(&alg, &signer.der)?.as_slice() {
        return Err("the ESSCertID hash is not that of the signing certificate".into());
    }
    if let Some(is) = issuer_serial {
        let named = is.issuer.iter().any(|n| {
            matches!(n, x509_cert::ext::pkix::name::GeneralName::DirectoryName(d)
                if *d == signer.cert.tbs_certificate.issuer)
        });
        if !named || is.serial_number != *signer.serial() {
            return Err("the ESSCertID issuerSerial does not name the signing certificate".into());
        }
    }
    Ok(())
}

fn decode_attr<T: for<'a> Decode<'a>>(value: &der::Any, what: &str) -> Result<T, String> {
    let bytes = value.to_der().map_err(|e| e.to_string())?;
    T::from_der(&bytes).map_err(|e| format!("malformed {what}: {e}"))
}

/// A digest by algorithm identifier (parameters absent or NULL).
fn hash(alg: &AlgorithmIdentifierOwned, data: &[u8]) -> Result<Vec<u8>, String> {
    if let Some(p) = &alg.parameters
        && (p.tag() != Tag::Null || !p.value().is_empty())
    {
        return Err(format!("digest algorithm {} has parameters", alg.oid));
    }
    Ok(match alg.oid {
        ID_SHA1 => sha1::Sha1::digest(data).to_vec(),
        ID_SHA256 => Sha256::digest(data).to_vec(),
        ID_SHA384 => Sha384::digest(data).to_vec(),
        ID_SHA512 => Sha512::digest(data).to_vec(),
        other => return Err(format!("unsupported digest algorithm {other}")),
    })
}

/// The SignerInfo's signature over the DER signed attributes, under the signer's key.
fn check_signature(parts: &Token, signer: &Cert) -> Result<(), String> {
    let alg = parts.signer.signature_algorithm.oid;
    let digest = parts.signer.digest_alg.oid;
    let message = &parts.signed_attrs_der;
    let signature = parts.signer.signature.as_bytes();
    let spki = signer.spki_der()?;
    // Parameters: absent for ECDSA, absent or NULL for RSA (RFC 5754, RFC 4055).
    let params = parts.signer.signature_algorithm.parameters.as_ref();
    let rsa = matches!(
        alg,
        RSA_ENCRYPTION | SHA256_WITH_RSA | SHA384_WITH_RSA | SHA512_WITH_RSA
    );
    if params.is_some_and(|p| !rsa || p.tag() != Tag::Null || !p.value().is_empty()) {
        return Err("the signature algorithm has unexpected parameters".into());
    }
    match alg {
        ECDSA_WITH_SHA256 | ID_EC_PUBLIC_KEY if digest == ID_SHA256 => {
            verify_ecdsa(&spki, message, signature)
        }
        RSA_ENCRYPTION | SHA256_WITH_RSA | SHA384_WITH_RSA | SHA512_WITH_RSA => {
            let implied = match alg {
                SHA256_WITH_RSA => Some(ID_SHA256),
                SHA384_WITH_RSA => Some(ID_SHA384),
                SHA512_WITH_RSA => Some(ID_SHA512),
                _ => None,
            };
            if implied.is_some_and(|h| h != digest) {
                return Err("the signature algorithm's digest is not the signer's".into());
            }
            verify_rsa(&spki, digest, message, signature)
        }
        other => Err(format!(
            "unsupported signature algorithm {other} with digest {digest}"
        )),
    }
    .map_err(|e| format!("the token's signature: {e}"))
}

fn verify_ecdsa(spki: &[u8], message: &[u8], signature: &[u8]) -> Result<(), String> {
    use p256::ecdsa::signature::Verifier;
    use p256::pkcs8::DecodePublicKey;
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(spki)
        .map_err(|_| "the key is not an EC P-256 key")?;
    let signature = p256::ecdsa::Signature::from_der(signature)
        .map_err(|_| "not a DER ECDSA P-256 signature")?;
    key.verify(message, &signature)
        .map_err(|_| "does not verify".to_string())
}

fn verify_rsa(
    spki: &[u8],
    digest: ObjectIdentifier,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    use rsa::pkcs1v15::{Signature, VerifyingKey};
    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;
    use rsa::traits::PublicKeyParts;
    let key = rsa::RsaPublicKey::from_public_key_der(spki).map_err(|_| "the key is not RSA")?;
    if key.size() < 256 {
        return Err("RSA keys under 2048 bits are refused".into());
    }
    let sig = Signature::try_from(signature).map_err(|_| "malformed RSA signature")?;
    let ok = match digest {
        ID_SHA256 => VerifyingKey::<Sha256>::new(key).verify(message, &sig),
        ID_SHA384 => VerifyingKey::<Sha384>::new(key).verify(message, &sig),
        ID_SHA512 => VerifyingKey::<Sha512>::new(key).verify(message, &sig),
        other => return Err(format!("unsupported RSA digest {other}")),
    };
    ok.map_err(|_| "does not verify".to_string())
}

/// The extensions the path checks read, with duplicates and unknown critical ones refused.
struct Constraints {
    basic: Option<BasicConstraints>,
    key_usage: Option<KeyUsage>,
    /// (critical, purposes)
    ext_key_usage: Option<(bool, Vec<ObjectIdentifier>)>,
}

fn constraints(cert: &Cert, at: i64) -> Result<Constraints, String> {
    let tbs = &cert.cert.tbs_certificate;
    if tbs.version != Version::V3 {
        return Err("is not an X.509 v3 certificate".into());
    }
    if tbs.signature != cert.cert.signature_algorithm {
        return Err("tbsCertificate.signature differs from signatureAlgorithm".into());
    }
    let not_before = tbs.validity.not_before.to_unix_duration().as_secs();
    let not_after = tbs.validity.not_after.to_unix_duration().as_secs();
    let at_u = u64::try_from(at).map_err(|_| "genTime before 1970")?;
    if at_u < not_before || at_u > not_after {
        return Err(format!(
            "is not valid at genTime ({} .. {})",
            tbs.validity.not_before, tbs.validity.not_after
        ));
    }
    let mut out = Constraints {
        basic: None,
        key_usage: None,
        ext_key_usage: None,
    };
    let mut seen = Vec::new();
    for ext in tbs.extensions.as_deref().unwrap_or_default() {
        if seen.contains(&ext.extn_id) {
            return Err(format!("extension {} appears twice", ext.extn_id));
        }
        seen.push(ext.extn_id);
        let value = ext.extn_value.as_bytes();
        let bad = |what: &str| format!("malformed {what}");
        match ext.extn_id {
            BASIC_CONSTRAINTS => {
                out.basic =
                    Some(BasicConstraints::from_der(value).map_err(|_| bad("basicConstraints"))?)
            }
            KEY_USAGE => {
                out.key_usage = Some(KeyUsage::from_der(value).map_err(|_| bad("keyUsage"))?)
            }
            EXT_KEY_USAGE => {
                let purposes =
                    Vec::<ObjectIdentifier>::from_der(value).map_err(|_| bad("extKeyUsage"))?;
                out.ext_key_usage = Some((ext.critical, purposes));
            }
            oid if ext.critical && !TOLERATED.contains(&oid) => {
                return Err(format!("unsupported critical extension {oid}"));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// RFC 3161 §2.3: the authority's certificate has exactly one extended key usage,
/// id-kp-timeStamping, in a critical extension; it signs (digitalSignature or nonRepudiation
/// if it has a keyUsage) and is no CA.
fn check_tsa_cert(signer: &Cert, at: i64) -> Result<(), String> {
    let c = constraints(signer, at).map_err(|e| format!("the TSA certificate {e}"))?;
    match &c.ext_key_usage {
        Some((true, purposes)) if purposes.as_slice() == [ID_KP_TIME_STAMPING] => {}
        Some((false, _)) => {
            return Err("the TSA certificate's extKeyUsage is not critical".into());
        }
        _ => {
            return Err(
                "the TSA certificate's extKeyUsage is not exactly id-kp-timeStamping".into(),
            );
        }
    }
    if c.basic.as_ref().is_some_and(|b| b.ca) {
        return Err("the TSA certificate is a CA".into());
    }
    if let Some(ku) = &c.key_usage
        && !ku.0.contains(KeyUsages::DigitalSignature)
        && !ku.0.contains(KeyUsages::NonRepudiation)
    {
        return Err("the TSA certificate's keyUsage does not allow signing".into());
    }
    Ok(())
}

/// `child` was issued by `issuer`: names chain and the signature verifies.
fn issued_by(child: &Cert, issuer: &Cert) -> Result<(), String> {
    if child.cert.tbs_certificate.issuer != issuer.cert.tbs_certificate.subject {
        return Err("names do not chain".into());
    }
    let alg = child.cert.signature_algorithm.oid;
    let sig = child
        .cert
        .signature
        .as_bytes()
        .ok_or("signature BIT STRING has unused bits")?;
    let spki = issuer.spki_der()?;
    match alg {
        ECDSA_WITH_SHA256 => verify_ecdsa(&spki, &child.tbs_der, sig),
        SHA256_WITH_RSA => verify_rsa(&spki, ID_SHA256, &child.tbs_der, sig),
        SHA384_WITH_RSA => verify_rsa(&spki, ID_SHA384, &child.tbs_der, sig),
        SHA512_WITH_RSA => verify_rsa(&spki, ID_SHA512, &child.tbs_der, sig),
        other => Err(format!(
            "unsupported certificate signature algorithm {other}"
        )),
    }
}

fn may_issue(cert: &Cert, at: i64, below: usize) -> Result<(), String> {
    let c = constraints(cert, at)?;
    let Some(bc) = c.basic.filter(|b| b.ca) else {
        return Err("is not a CA".into());
    };
    if bc
        .path_len_constraint
        .is_some_and(|l| below > usize::from(l))
    {
        return Err("pathLenConstraint exceeded".into());
    }
    if c.key_usage
        .is_some_and(|ku| !ku.0.contains(KeyUsages::KeyCertSign))
    {
        return Err("keyUsage lacks keyCertSign".into());
    }
    Ok(())
}

/// Signer → the token's certificates → an anchor, every certificate valid at `at` (genTime).
/// An anchor may also be the signer's own certificate (a pinned authority).
fn verify_path<'a>(
    signer: &Cert,
    pool: &[Cert],
    anchors: &'a TsaAnchors,
    at: i64,
) -> Result<&'a Cert, String> {
    let mut child = signer.clone();
    let mut reasons = Vec::new();
    for below in 0..MAX_PATH {
        if let Some(pinned) = anchors.certs.iter().find(|a| a.der == child.der) {
            return Ok(pinned);
        }
        for anchor in &anchors.certs {
            match may_issue(anchor, at, below).and_then(|()| issued_by(&child, anchor)) {
                Ok(()) => return Ok(anchor),
                Err(e) => reasons.push(format!("{}: {e}", anchor.cert.tbs_certificate.subject)),
            }
        }
        let next = pool.iter().find(|c| {
            c.der != child.der && may_issue(c, at, below).is_ok() && issued_by(&child, c).is_ok()
        });
        match next {
            Some(next) => child = next.clone(),
            None => break,
        }
    }
    Err(format!(
        "the TSA certificate {:?} does not chain to a TSA trust anchor ({})",
        signer.cert.tbs_certificate.subject.to_string(),
        reasons.join("; ")
    ))
}

/// The imprint is SHA-256 over the checkpoint's note text.
fn check_imprint(tst: &x509_tsp::TstInfo, note_text: &[u8]) -> Result<(), String> {
    let imprint = &tst.message_imprint;
    if imprint.hash_algorithm.oid != ID_SHA256
        || imprint
            .hash_algorithm
            .parameters
            .as_ref()
            .is_some_and(|p| p.tag() != Tag::Null || !p.value().is_empty())
    {
        return Err("the imprint's hash algorithm is not SHA-256".into());
    }
    if *imprint.hashed_message.as_bytes() != *Sha256::digest(note_text) {
        return Err("the token's imprint is not SHA-256 of the checkpoint's note text".into());
    }
    Ok(())
}

fn unix(t: &GeneralizedTime) -> Result<i64, String> {
    i64::try_from(t.to_unix_duration().as_secs()).map_err(|_| "genTime out of range".into())
}

fn accuracy_ms(tst: &x509_tsp::TstInfo) -> u64 {
    tst.accuracy.as_ref().map_or(0, |a| {
        let secs = a.seconds.unwrap_or(0).saturating_mul(1000);
        let millis = a.millis.and_then(|m| u64::try_from(m).ok()).unwrap_or(0);
        let micros = a.micros.map_or(0, |m| u64::from(m > 0));
        secs.saturating_add(millis).saturating_add(micros)
    })
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_text_is_up_to_the_blank_line() {
        let note = "o\n1\nAAAA\n\n\u{2014} k abc\n";
        assert_eq!(note_text(note).ok(), Some("o\n1\nAAAA\n"));
        assert!(note_text("no blank line\n").is_err());
    }

    #[test]
    fn garbage_is_refused() {
        let anchors = TsaAnchors { certs: Vec::new() };
        for bad in [&b""[..], b"\x30\x00", b"\x30\x03\x06\x01\x00"] {
            assert!(verify_token(bad, b"x", &anchors).is_err());
        }
    }

    #[test]
    fn tolerance_bounds_signed_at() {
        let stamp = Stamp {
            gen_time_unix: 1000,
            gen_time: String::new(),
            accuracy_ms: 1500,
            policy: String::new(),
            serial: String::new(),
            tsa_subject: String::new(),
            anchor_subject: String::new(),
        };
        assert!(
            stamp
                .check_signed_at(1000 + 2 + SIGNED_AT_TOLERANCE_SECONDS)
                .is_ok()
        );
        assert!(
            stamp
                .check_signed_at(1000 + 3 + SIGNED_AT_TOLERANCE_SECONDS)
                .is_err()
        );
        assert!(stamp.check_signed_at(0).is_ok());
    }
}
