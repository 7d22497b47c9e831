//! Trust anchors: the operator's CA certificate(s), given out of band as PEM (FORMAT.md §6).

use super::error::{Check, VerifyError};
use super::x509::ParsedCert;

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The CA certificates a bundle's device certificate may chain to.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    pub(crate) certs: Vec<ParsedCert>,
}

impl TrustAnchors {
    /// One or more PEM certificates (a file may hold several). Error if none parse.
    ///
    /// Text outside `CERTIFICATE` blocks is ignored, as `openssl` does. A malformed
    /// `CERTIFICATE` block is an error rather than skipped, so an anchor file never silently
    /// trusts less than its author thinks. Errors are reported under `lineage.certificate`, the
    /// check the anchors serve.
    pub fn from_pem(pem: &[u8]) -> Result<Self, VerifyError> {
        let fail = |detail: String| VerifyError::new(Check::LineageCertificate, detail);
        let text = std::str::from_utf8(pem)
            .map_err(|_| fail("trust anchors: the PEM file is not UTF-8 text".to_string()))?;
        let certs = pem_blocks(text)
            .map_err(|e| fail(format!("trust anchors: {e}")))?
            .into_iter()
            .enumerate()
            .map(|(i, block)| {
                ParsedCert::from_pem(block).map_err(|e| {
                    fail(format!(
                        "trust anchors: certificate {}: {e}",
                        i.saturating_add(1)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if certs.is_empty() {
            return Err(fail(
                "trust anchors: no PEM CERTIFICATE block found".to_string(),
            ));
        }
        Ok(TrustAnchors { certs })
    }

    /// The subjects of the anchors, for diagnostics.
    pub fn subjects(&self) -> Vec<String> {
        self.certs.iter().map(ParsedCert::subject).collect()
    }
}

/// Splits `text` into its `BEGIN CERTIFICATE` … `END CERTIFICATE` blocks, delimiters included.
fn pem_blocks(text: &str) -> Result<Vec<&str>, String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let from_begin = rest.get(start..).unwrap_or_default();
        let Some(end) = from_begin.find(END) else {
            return Err("a BEGIN CERTIFICATE line has no matching END line".to_string());
        };
        let block_len = end.saturating_add(END.len());
        blocks.push(from_begin.get(..block_len).unwrap_or_default());
        rest = from_begin.get(block_len..).unwrap_or_default();
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_certificate_is_an_error() {
        for input in [
            &b""[..],
            b"hello",
            b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
            b"\xff\xfe",
        ] {
            let err = TrustAnchors::from_pem(input).err();
            assert!(err.is_some_and(|e| e.check == Check::LineageCertificate));
        }
    }

    #[test]
    fn unterminated_or_garbled_block_is_an_error() {
        assert!(TrustAnchors::from_pem(b"-----BEGIN CERTIFICATE-----\nMIIB\n").is_err());
        assert!(
            TrustAnchors::from_pem(
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"
            )
            .is_err()
        );
    }

    #[test]
    fn blocks_are_split_with_their_delimiters() {
        let text = "x\n-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\ny\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n";
        let blocks = pem_blocks(text).unwrap_or_default();
        assert_eq!(blocks.len(), 2);
        assert!(
            blocks
                .iter()
                .all(|b| b.starts_with(BEGIN) && b.ends_with(END))
        );
    }
}
