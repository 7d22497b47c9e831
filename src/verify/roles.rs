//! Certificate roles (FORMAT.md §6.1): which evidence a device certificate's key may sign.
//!
//! A key under the operator's CA vouches for other keys in one of two ways: a PKCS#11 device
//! key signs attribute statements, a TPM attestation key signs TPMS_ATTEST structures. The two
//! must never stand in for each other (a restricted AK still signs any digest the TPM hashed
//! itself, and a device key signs whatever bytes it is given), so each evidence kind is accepted
//! only under a certificate whose extKeyUsage names that kind, and never under one that names
//! both. Attesting the *log* key is a further grant, so that a signing node's device cannot mint
//! a log key.

/// An OBJECT IDENTIFIER as the contents octets of its DER encoding. The project's arc is a UUID
/// arc (`2.25.<128-bit integer>`, ITU-T X.667), larger than the 32-bit arcs common OID types
/// hold, so EKU values are compared as encoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OidBytes(pub &'static [u8]);

/// TCG `tcg-kp-AIKCertificate` 2.23.133.8.3 (TCG EK Credential Profile): a TPM attestation key.
pub const TCG_KP_AIK_CERTIFICATE: OidBytes = OidBytes(&[0x67, 0x81, 0x05, 0x08, 0x03]);
/// actseal `id-kp-pkcs11Device`, `2.25.242230413017653211193847039386664154048.1.1` (a UUID arc,
/// FORMAT.md §6.1): a PKCS#11 token's device key, which signs attribute statements.
pub const ACTSEAL_KP_PKCS11_DEVICE: OidBytes = OidBytes(&[
    0x69, 0x82, 0xec, 0xbb, 0xf0, 0xdb, 0xc5, 0x9a, 0x9a, 0x96, 0xd5, 0x88, 0xcb, 0x9e, 0xd2, 0x99,
    0xf1, 0x96, 0xe7, 0x40, 0x01, 0x01,
]);
/// actseal `id-kp-logKeyAttester` (arc .1.2): the key may attest a log key, not only actor keys.
pub const ACTSEAL_KP_LOG_KEY_ATTESTER: OidBytes = OidBytes(&[
    0x69, 0x82, 0xec, 0xbb, 0xf0, 0xdb, 0xc5, 0x9a, 0x9a, 0x96, 0xd5, 0x88, 0xcb, 0x9e, 0xd2, 0x99,
    0xf1, 0x96, 0xe7, 0x40, 0x01, 0x02,
]);

/// The kind of evidence a device certificate's key signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceRole {
    /// A PKCS#11 attribute statement (FORMAT.md §4.1).
    Pkcs11Device,
    /// A TPM2_Certify by the attestation key (FORMAT.md §4.2).
    TpmAttestationKey,
}

impl EvidenceRole {
    fn oid(self) -> OidBytes {
        match self {
            EvidenceRole::Pkcs11Device => ACTSEAL_KP_PKCS11_DEVICE,
            EvidenceRole::TpmAttestationKey => TCG_KP_AIK_CERTIFICATE,
        }
    }

    fn other(self) -> EvidenceRole {
        match self {
            EvidenceRole::Pkcs11Device => EvidenceRole::TpmAttestationKey,
            EvidenceRole::TpmAttestationKey => EvidenceRole::Pkcs11Device,
        }
    }

    fn name(self) -> &'static str {
        match self {
            EvidenceRole::Pkcs11Device => "a PKCS#11 device key (id-kp-pkcs11Device)",
            EvidenceRole::TpmAttestationKey => {
                "a TPM attestation key (tcg-kp-AIKCertificate 2.23.133.8.3)"
            }
        }
    }
}

/// What a device certificate must be certified for to vouch for one piece of evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRole {
    pub evidence: EvidenceRole,
    /// The attested key is the log key.
    pub log_key: bool,
}

impl DeviceRole {
    pub(crate) fn describe(&self) -> String {
        if self.log_key {
            format!("{} that may attest a log key", self.evidence.name())
        } else {
            self.evidence.name().to_string()
        }
    }

    /// The certificate's extKeyUsage grants this role and not the other evidence role.
    pub(crate) fn check(&self, usages: &[Vec<u8>]) -> Result<(), String> {
        let has = |oid: OidBytes| usages.iter().any(|u| u.as_slice() == oid.0);
        if !has(self.evidence.oid()) {
            return Err(format!(
                "extKeyUsage does not certify it as {}",
                self.evidence.name()
            ));
        }
        if has(self.evidence.other().oid()) {
            return Err(format!(
                "extKeyUsage certifies it as both {} and {}: a certificate has one role",
                self.evidence.name(),
                self.evidence.other().name()
            ));
        }
        if self.log_key && !has(ACTSEAL_KP_LOG_KEY_ATTESTER) {
            return Err(
                "extKeyUsage lacks id-kp-logKeyAttester: this device may not attest a log key"
                    .to_string(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    /// DER contents of a dotted OID, with arcs of any size up to 128 bits.
    fn encode(dotted: &str) -> Vec<u8> {
        let arcs: Vec<u128> = dotted.split('.').map(|a| a.parse().unwrap_or(0)).collect();
        let mut out = Vec::new();
        let first = arcs.first().copied().unwrap_or(0) * 40 + arcs.get(1).copied().unwrap_or(0);
        for arc in std::iter::once(first).chain(arcs.iter().skip(2).copied()) {
            let mut groups = vec![(arc & 0x7f) as u8];
            let mut rest = arc >> 7;
            while rest > 0 {
                groups.push(0x80 | (rest & 0x7f) as u8);
                rest >>= 7;
            }
            out.extend(groups.iter().rev());
        }
        out
    }

    #[test]
    fn role_oids_are_the_documented_ones() {
        assert_eq!(TCG_KP_AIK_CERTIFICATE.0, encode("2.23.133.8.3"));
        let arc = "2.25.242230413017653211193847039386664154048";
        assert_eq!(ACTSEAL_KP_PKCS11_DEVICE.0, encode(&format!("{arc}.1.1")));
        assert_eq!(ACTSEAL_KP_LOG_KEY_ATTESTER.0, encode(&format!("{arc}.1.2")));
    }

    #[test]
    fn one_role_per_certificate() {
        let device = DeviceRole {
            evidence: EvidenceRole::Pkcs11Device,
            log_key: false,
        };
        let ak = vec![TCG_KP_AIK_CERTIFICATE.0.to_vec()];
        let pkcs11 = vec![ACTSEAL_KP_PKCS11_DEVICE.0.to_vec()];
        assert!(device.check(&pkcs11).is_ok());
        assert!(device.check(&ak).is_err());
        let both = [ak.clone(), pkcs11.clone()].concat();
        assert!(device.check(&both).is_err());
        let log = DeviceRole {
            log_key: true,
            ..device
        };
        assert!(log.check(&pkcs11).is_err());
        let with_log = [pkcs11, vec![ACTSEAL_KP_LOG_KEY_ATTESTER.0.to_vec()]].concat();
        assert!(log.check(&with_log).is_ok());
    }
}
