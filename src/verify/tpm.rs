//! TPM lineage (FORMAT.md §4.2): the verifier's own parsers of TPMS_ATTEST and TPMT_PUBLIC
//! (TPM 2.0 Library, Part 2) and the checks on a TPM2_Certify of an actor key.
//!
//! Every read is bounds-checked and every structure must be consumed exactly: a byte too many
//! or too few is an error, never a guess.

use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};

use super::digest;
use super::statement::KeySubject;

/// TPM_GENERATED_VALUE.
pub(crate) const TPM_GENERATED: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_CERTIFY.
pub(crate) const ST_ATTEST_CERTIFY: u16 = 0x8017;
const ALG_ECC: u16 = 0x0023;
const ALG_SHA256: u16 = 0x000b;
const ALG_NULL: u16 = 0x0010;
const ECC_NIST_P256: u16 = 0x0003;

/// TPMA_OBJECT bits.
const FIXED_TPM: u32 = 1 << 1;
const FIXED_PARENT: u32 = 1 << 4;
const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
const RESTRICTED: u32 = 1 << 16;
const DECRYPT: u32 = 1 << 17;
const SIGN: u32 = 1 << 18;

/// Domain separator of the extraData (FORMAT.md §4.2).
const EXTRA_DATA_DOMAIN: &[u8] = b"actseal/tpm2-certify/v2";
/// TPM_RH_ENDORSEMENT: the hierarchy the attestation key is a primary key of.
const RH_ENDORSEMENT: u32 = 0x4000_000b;

/// A cursor over big-endian TPM marshalling.
struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { rest: bytes, what }
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err(format!("{}: truncated at {field}", self.what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], String> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8, String> {
        Ok(u8::from_be_bytes(self.array::<1>(field)?))
    }

    fn u16(&mut self, field: &str) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array::<2>(field)?))
    }

    fn u32(&mut self, field: &str) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array::<4>(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array::<8>(field)?))
    }

    /// A TPM2B: a u16 size, then that many bytes.
    fn sized(&mut self, field: &str) -> Result<&'a [u8], String> {
        let n = self.u16(field)?;
        self.take(usize::from(n), field)
    }

    fn end(&self) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}: {} bytes after the end of the structure",
                self.what,
                self.rest.len()
            ))
        }
    }
}

/// TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifyAttest {
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
    pub firmware_version: u64,
    pub certified_name: Vec<u8>,
    pub certified_qualified_name: Vec<u8>,
}

/// Parses a marshalled TPMS_ATTEST; only TPM_ST_ATTEST_CERTIFY from a TPM is accepted.
pub fn parse_certify_attest(bytes: &[u8]) -> Result<CertifyAttest, String> {
    let mut r = Reader::new(bytes, "TPMS_ATTEST");
    let magic = r.u32("magic")?;
    if magic != TPM_GENERATED {
        return Err(format!(
            "TPMS_ATTEST magic is {magic:#010x}, not TPM_GENERATED_VALUE 0xff544347"
        ));
    }
    let kind = r.u16("type")?;
    if kind != ST_ATTEST_CERTIFY {
        return Err(format!(
            "TPMS_ATTEST type is {kind:#06x}, not TPM_ST_ATTEST_CERTIFY 0x8017"
        ));
    }
    let qualified_signer = r.sized("qualifiedSigner")?.to_vec();
    let extra_data = r.sized("extraData")?.to_vec();
    let clock = r.u64("clockInfo.clock")?;
    let reset_count = r.u32("clockInfo.resetCount")?;
    let restart_count = r.u32("clockInfo.restartCount")?;
    let safe = match r.u8("clockInfo.safe")? {
        0 => false,
        1 => true,
        other => {
            return Err(format!(
                "TPMS_ATTEST: clockInfo.safe is {other}, not 0 or 1"
            ));
        }
    };
    let firmware_version = r.u64("firmwareVersion")?;
    let certified_name = r.sized("attested.certify.name")?.to_vec();
    let certified_qualified_name = r.sized("attested.certify.qualifiedName")?.to_vec();
    r.end()?;
    Ok(CertifyAttest {
        qualified_signer,
        extra_data,
        clock,
        reset_count,
        restart_count,
        safe,
        firmware_version,
        certified_name,
        certified_qualified_name,
    })
}

/// The parts of an ECC TPMT_PUBLIC the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EccPublic {
    pub name_alg: u16,
    pub attributes: u32,
    pub curve: u16,
    pub x: Vec<u8>,
    pub y: Vec<u8>,
}

/// Parses a marshalled TPMT_PUBLIC of an ECC key.
pub fn parse_ecc_public(bytes: &[u8]) -> Result<EccPublic, String> {
    let mut r = Reader::new(bytes, "TPMT_PUBLIC");
    let kind = r.u16("type")?;
    if kind != ALG_ECC {
        return Err(format!("TPMT_PUBLIC type is {kind:#06x}, not TPM_ALG_ECC"));
    }
    let name_alg = r.u16("nameAlg")?;
    let attributes = r.u32("objectAttributes")?;
    r.sized("authPolicy")?;
    // TPMS_ECC_PARMS: symmetric, scheme, curveID, kdf.
    if r.u16("parameters.symmetric.algorithm")? != ALG_NULL {
        r.u16("parameters.symmetric.keyBits")?;
        r.u16("parameters.symmetric.mode")?;
    }
    if r.u16("parameters.scheme.scheme")? != ALG_NULL {
        r.u16("parameters.scheme.details.hashAlg")?;
    }
    let curve = r.u16("parameters.curveID")?;
    if r.u16("parameters.kdf.scheme")? != ALG_NULL {
        r.u16("parameters.kdf.details.hashAlg")?;
    }
    let x = r.sized("unique.x")?.to_vec();
    let y = r.sized("unique.y")?.to_vec();
    r.end()?;
    Ok(EccPublic {
        name_alg,
        attributes,
        curve,
        x,
        y,
    })
}

/// The TPM Name of a public area with nameAlg SHA-256.
fn name_of(public_area: &[u8]) -> Vec<u8> {
    let mut name = ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(public_area));
    name
}

/// The expected extraData: SHA-256(domain || 0x00 || u32be(len(subject)) || subject ||
/// u32be(len(createdAt)) || createdAt || nonce), where subject is the key's subject name
/// (FORMAT.md §4.3).
pub fn expected_extra_data(
    subject: &str,
    created_at: &str,
    nonce: &[u8],
) -> Result<[u8; 32], String> {
    let len =
        |what: &str, text: &str| u32::try_from(text.len()).map_err(|_| format!("{what} too long"));
    let mut h = Sha256::new();
    h.update(EXTRA_DATA_DOMAIN);
    h.update([0u8]);
    h.update(len("subject name", subject)?.to_be_bytes());
    h.update(subject.as_bytes());
    h.update(len("createdAt", created_at)?.to_be_bytes());
    h.update(created_at.as_bytes());
    h.update(nonce);
    Ok(h.finalize().into())
}

/// The Qualified Name of a primary key of the endorsement hierarchy: nameAlg ||
/// SHA-256(TPM_RH_ENDORSEMENT || Name) (TPM 2.0 Part 1 §16).
fn endorsement_primary_qualified_name(public_area: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(RH_ENDORSEMENT.to_be_bytes());
    h.update(name_of(public_area));
    let mut qualified = ALG_SHA256.to_be_bytes().to_vec();
    qualified.extend_from_slice(&h.finalize());
    qualified
}

/// The SEC1 point of an ECC TPMT_PUBLIC, coordinates left-padded to 32 bytes.
fn p256_point(public: &EccPublic) -> Result<p256::PublicKey, String> {
    if public.curve != ECC_NIST_P256 {
        return Err(format!(
            "TPMT_PUBLIC curveID is {:#06x}, not TPM_ECC_NIST_P256",
            public.curve
        ));
    }
    let pad = |v: &[u8]| -> Result<[u8; 32], String> {
        let mut out = [0u8; 32];
        let start = 32usize
            .checked_sub(v.len())
            .ok_or_else(|| "TPMT_PUBLIC point coordinate longer than 32 bytes".to_string())?;
        out.get_mut(start..)
            .ok_or_else(|| "TPMT_PUBLIC point coordinate".to_string())?
            .copy_from_slice(v);
        Ok(out)
    };
    let mut sec1 = vec![0x04];
    sec1.extend_from_slice(&pad(&public.x)?);
    sec1.extend_from_slice(&pad(&public.y)?);
    p256::PublicKey::from_sec1_bytes(&sec1)
        .map_err(|_| "TPMT_PUBLIC unique is not a P-256 point".to_string())
}

/// Checks `objectAttributes` against (name, bit, must be set) requirements.
fn require_attributes(
    what: &str,
    attributes: u32,
    required: &[(&str, u32, bool)],
) -> Result<(), String> {
    for &(attribute, bit, want) in required {
        let got = attributes & bit != 0;
        if got != want {
            let state = |b: bool| if b { "set" } else { "clear" };
            return Err(format!(
                "{what} objectAttributes.{attribute} is {}, must be {}",
                state(got),
                state(want)
            ));
        }
    }
    Ok(())
}

/// What an attestation key must be: restricted, sign-only, created in and bound to its TPM.
const AK_ATTRIBUTES: [(&str, u32, bool); 6] = [
    ("fixedTPM", FIXED_TPM, true),
    ("fixedParent", FIXED_PARENT, true),
    ("sensitiveDataOrigin", SENSITIVE_DATA_ORIGIN, true),
    ("restricted", RESTRICTED, true),
    ("sign", SIGN, true),
    ("decrypt", DECRYPT, false),
];

/// What an actor or log key must be: an unrestricted signing key created in and bound to its
/// TPM (a key loaded with LoadExternal, or a duplicable one, fails here).
const KEY_ATTRIBUTES: [(&str, u32, bool); 6] = [
    ("fixedTPM", FIXED_TPM, true),
    ("fixedParent", FIXED_PARENT, true),
    ("sensitiveDataOrigin", SENSITIVE_DATA_ORIGIN, true),
    ("sign", SIGN, true),
    ("restricted", RESTRICTED, false),
    ("decrypt", DECRYPT, false),
];

/// A TPM2_Certify as a bundle carries it, decoded.
#[derive(Debug, Clone)]
pub(crate) struct Tpm2Certify {
    pub(crate) attest: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    pub(crate) public_area: Vec<u8>,
    /// The attestation key's marshalled TPMT_PUBLIC.
    pub(crate) ak_public_area: Vec<u8>,
    /// The key's creation time (RFC 3339), bound by extraData.
    pub(crate) created_at: String,
    pub(crate) nonce: Option<Vec<u8>>,
}

/// `lineage.signature` for a TPM key: `akPublicArea` is a restricted signing key of a TPM whose
/// point is the AK certificate's key, and that key signed SHA-256(TPMS_ATTEST).
pub(crate) fn check_ak_signature(certify: &Tpm2Certify, ak: &VerifyingKey) -> Result<(), String> {
    let ak_public = parse_ecc_public(&certify.ak_public_area)
        .map_err(|e| format!("tpm2Certify.akPublicArea: {e}"))?;
    if ak_public.name_alg != ALG_SHA256 {
        return Err("tpm2Certify.akPublicArea nameAlg is not TPM_ALG_SHA256".into());
    }
    require_attributes(
        "tpm2Certify.akPublicArea",
        ak_public.attributes,
        &AK_ATTRIBUTES,
    )?;
    let ak_point = p256_point(&ak_public).map_err(|e| format!("tpm2Certify.akPublicArea: {e}"))?;
    if VerifyingKey::from(&ak_point) != *ak {
        return Err(
            "tpm2Certify.akPublicArea is not the key of the attestation key certificate".into(),
        );
    }
    let signature = Signature::from_der(&certify.signature)
        .map_err(|e| format!("tpm2Certify.signature is not a DER ECDSA signature: {e}"))?;
    if super::ecdsa::verify(ak, &certify.attest, &signature) {
        Ok(())
    } else {
        Err("tpm2Certify.signature does not verify under the attestation key certificate over SHA-256(attest)"
            .to_string())
    }
}

/// What a verified TPM2_Certify says.
#[derive(Debug)]
pub(crate) struct Certified {
    pub(crate) attest: CertifyAttest,
}

/// `lineage.statement` for a TPM key: the TPMS_ATTEST is a TPM-generated certification, by the
/// attestation key in `akPublicArea`, of exactly this public area, whose key is `key_id`, made in
/// the TPM and bound to it; extraData binds the key's subject, creation time and nonce.
pub(crate) fn check_certify(
    certify: &Tpm2Certify,
    subject: &KeySubject<'_>,
    key_id: &str,
) -> Result<Certified, String> {
    let attest = parse_certify_attest(&certify.attest)?;
    let signer = endorsement_primary_qualified_name(&certify.ak_public_area);
    if attest.qualified_signer != signer {
        return Err(format!(
            "TPMS_ATTEST qualifiedSigner {} is not the attestation key of tpm2Certify.akPublicArea ({})",
            hex::encode(&attest.qualified_signer),
            hex::encode(&signer)
        ));
    }
    let public = parse_ecc_public(&certify.public_area)?;
    if public.name_alg != ALG_SHA256 {
        return Err(format!(
            "TPMT_PUBLIC nameAlg is {:#06x}, not TPM_ALG_SHA256",
            public.name_alg
        ));
    }
    require_attributes("TPMT_PUBLIC", public.attributes, &KEY_ATTRIBUTES)
        .map_err(|e| format!("{e}: the key may not be held by the TPM alone"))?;
    let name = name_of(&certify.public_area);
    if attest.certified_name != name {
        return Err(format!(
            "the certified name {} is not the Name of tpm2Certify.publicArea ({})",
            hex::encode(&attest.certified_name),
            hex::encode(&name)
        ));
    }
    let spki = p256_point(&public)?
        .to_public_key_der()
        .map_err(|e| format!("TPMT_PUBLIC point: {e}"))?;
    let certified_id = digest::key_id(spki.as_bytes());
    if certified_id != key_id {
        return Err(format!(
            "the certified key {certified_id} is not the claimed key {key_id}"
        ));
    }
    let subject_name = subject.name();
    let expected = expected_extra_data(
        &subject_name,
        &certify.created_at,
        certify.nonce.as_deref().unwrap_or_default(),
    )?;
    if attest.extra_data != expected {
        return Err(format!(
            "TPMS_ATTEST extraData is {}, expected {} for {subject_name:?} created {:?}{}",
            hex::encode(&attest.extra_data),
            hex::encode(expected),
            certify.created_at,
            if certify.nonce.is_some() {
                " and the nonce"
            } else {
                ""
            }
        ));
    }
    Ok(Certified { attest })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_certify_attest(&bytes);
            let _ = parse_ecc_public(&bytes);
        }

        #[test]
        fn parsers_never_panic_on_plausible_prefixes(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut attest = vec![0xff, 0x54, 0x43, 0x47, 0x80, 0x17];
            attest.extend_from_slice(&tail);
            let _ = parse_certify_attest(&attest);
            let mut public = vec![0x00, 0x23, 0x00, 0x0b];
            public.extend_from_slice(&tail);
            let _ = parse_ecc_public(&public);
        }
    }

    #[test]
    fn rejects_trailing_bytes_and_wrong_magic() {
        let mut attest = vec![0xff, 0x54, 0x43, 0x47, 0x80, 0x17, 0, 0, 0, 0];
        attest.extend_from_slice(&[0; 8 + 4 + 4 + 1 + 8]);
        attest.extend_from_slice(&[0, 0, 0, 0]);
        assert!(parse_certify_attest(&attest).is_ok());
        let mut longer = attest.clone();
        longer.push(0);
        assert!(
            parse_certify_attest(&longer)
                .unwrap_err()
                .contains("after the end")
        );
        let mut magic = attest.clone();
        magic[0] = 0xfe;
        assert!(parse_certify_attest(&magic).unwrap_err().contains("magic"));
        attest[5] = 0x18;
        assert!(parse_certify_attest(&attest).unwrap_err().contains("type"));
    }
}
