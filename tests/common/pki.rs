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

    /// A certificate for `key` in the profile of a TPM attestation key (the TCG AK EKU
    /// 2.23.133.8.3), valid from a day ago for a week: DER. Lets a test sign TPMS_ATTEST
    /// structures of its own making with a key the verifier takes for an AK.
    pub fn attestation_key(&self, cn: &str, key: &TestKey) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.serial_number = random_serial();
        params.distinguished_name = name(cn, None);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 3])];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(7);
        let cert = params.signed_by(key, &self.issuer).expect("AK cert");
        cert.der().to_vec()
    }
}
