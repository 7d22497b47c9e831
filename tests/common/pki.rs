//! A test PKI made in the test: CAs, a server certificate, and client certificates with
//! SPIFFE URI SANs (rcgen, random software P-256 keys).

use p256::{
    ecdsa::{Signature, SigningKey, signature::Signer},
    pkcs8::{EncodePrivateKey, LineEnding},
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime};

/// A random software P-256 key that rcgen can sign with.
pub struct TestKey {
    key: SigningKey,
    point: Vec<u8>,
}

impl TestKey {
    pub fn random() -> Self {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let point = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        TestKey { key, point }
    }

    /// A DER ECDSA signature over SHA-256(`message`), as a TPM attestation key makes one.
    pub fn sign_der(&self, message: &[u8]) -> Vec<u8> {
        let sig: Signature = self.key.sign(message);
        sig.to_der().as_bytes().to_vec()
    }

    /// The key as the TPMT_PUBLIC of a restricted ECDSA P-256 signing key made in a TPM
    /// (fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, restricted, sign): what a TPM
    /// would report as its attestation key's public area.
    pub fn tpm_ak_public(&self) -> Vec<u8> {
        let (x, y) = self.point[1..].split_at(32);
        let mut public = vec![0x00, 0x23, 0x00, 0x0b, 0x00, 0x05, 0x00, 0x72, 0x00, 0x00];
        public.extend_from_slice(&[0x00, 0x10, 0x00, 0x18, 0x00, 0x0b, 0x00, 0x03, 0x00, 0x10]);
        for coordinate in [x, y] {
            public.extend_from_slice(&[0x00, 0x20]);
            public.extend_from_slice(coordinate);
        }
        public
    }

    pub fn pkcs8_pem(&self) -> String {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("PKCS#8 PEM")
            .to_string()
    }
}

impl PublicKeyData for TestKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for TestKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let sig: Signature = self.key.sign(msg);
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

/// A certificate authority of the test.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, TestKey>,
}

fn random_serial() -> Option<SerialNumber> {
    use rand_core::RngCore;
    Some(SerialNumber::from(rand_core::OsRng.next_u64() >> 1))
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

impl TestCa {
    pub fn new(cn: &str) -> Self {
        let key = TestKey::random();
        let mut params = CertificateParams::default();
        params.serial_number = random_serial();
        params.distinguished_name = name(cn, Some("actseal tests"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(2);
        params.not_after = now + Duration::days(30);
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The daemon's server certificate for `localhost` and 127.0.0.1: (cert PEM, key PEM).
    pub fn server(&self) -> (String, String) {
        let key = TestKey::random();
        let mut params = CertificateParams::default();
        params.serial_number = random_serial();
        params.distinguished_name = name("actseal test daemon", None);
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(7);
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        (cert.pem(), key.pkcs8_pem())
    }

    /// A client certificate: subject `CN=cn[,O=org]`, an optional SPIFFE ID URI SAN, valid
    /// from `from_days` to `until_days` around now. Returns (cert PEM, key PEM).
    pub fn client(
        &self,
        cn: &str,
        org: Option<&str>,
        spiffe_id: Option<&str>,
        from_days: i64,
        until_days: i64,
    ) -> (String, String) {
        let key = TestKey::random();
        let mut params = CertificateParams::default();
        params.serial_number = random_serial();
        params.distinguished_name = name(cn, org);
        if let Some(id) = spiffe_id {
            params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::days(from_days);
        params.not_after = now + Duration::days(until_days);
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        (cert.pem(), key.pkcs8_pem())
    }

    /// A device certificate for the P-256 key whose SubjectPublicKeyInfo is `spki_der`
    /// (leaf only, PEM), valid over exactly `[not_before, not_after]`: short-lived ones for
    /// renewal tests.
    pub fn device(
        &self,
        spki_der: &[u8],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> String {
        use der::Decode;
        let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der).expect("SPKI");
        let point = RawPublicKey(spki.subject_public_key.raw_bytes().to_vec());
        let mut params = CertificateParams::default();
        params.serial_number = random_serial();
        params.distinguished_name = name("actseal test device", Some("actseal tests"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // The PKCS#11 device role and the log-key attester grant (FORMAT.md §6.1).
        params.custom_extensions = vec![ext_key_usage(&[actseal_eku(1), actseal_eku(2)])];
        params.not_before = not_before;
        params.not_after = not_after;
        params
            .signed_by(&point, &self.issuer)
            .expect("device cert")
            .pem()
    }

    /// A certificate for `key` in the profile of a TPM attestation key (the TCG AK EKU
    /// 2.23.133.8.3), valid from a day ago for a week: DER. Lets a test sign TPMS_ATTEST
    /// structures of its own making with a key the verifier takes for an AK.
    pub fn attestation_key(&self, cn: &str, key: &TestKey) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.serial_number = random_serial();
        params.distinguished_name = name(cn, None);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // The TCG AK role and the log-key attester grant (FORMAT.md §6.1).
        params.custom_extensions = vec![ext_key_usage(&[
            vec![0x67, 0x81, 0x05, 0x08, 0x03],
            actseal_eku(2),
        ])];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(7);
        let cert = params.signed_by(key, &self.issuer).expect("AK cert");
        cert.der().to_vec()
    }
}

/// DER contents of the project's role OID `2.25.242230413017653211193847039386664154048.1.<leaf>`.
fn actseal_eku(leaf: u8) -> Vec<u8> {
    let mut oid = hex::decode("6982ecbbf0dbc59a9a96d588cb9ed299f196e74001").expect("hex");
    oid.push(leaf);
    oid
}

/// An extKeyUsage extension with these key purposes (DER contents of each OID).
fn ext_key_usage(purposes: &[Vec<u8>]) -> rcgen::CustomExtension {
    let mut body = Vec::new();
    for oid in purposes {
        body.extend_from_slice(&[0x06, oid.len() as u8]);
        body.extend_from_slice(oid);
    }
    let mut content = vec![0x30, body.len() as u8];
    content.extend_from_slice(&body);
    rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 37], content)
}

/// A public key alone (uncompressed P-256 point), for certificates of hardware keys.
struct RawPublicKey(Vec<u8>);

impl PublicKeyData for RawPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// The uncompressed point of a fresh random key (a certificate for a key that is not ours).
pub fn random_spki() -> Vec<u8> {
    use p256::pkcs8::EncodePublicKey;
    SigningKey::random(&mut rand_core::OsRng)
        .verifying_key()
        .to_public_key_der()
        .expect("SPKI")
        .as_bytes()
        .to_vec()
}
