//! The verifier's TPM parsers (TPMS_ATTEST, TPMT_PUBLIC) on arbitrary bytes: they must
//! return an error, never panic, and accept only what re-parses identically.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(attest) = actseal::verify::tpm::parse_certify_attest(data) {
        assert_eq!(&data[..4], &[0xff, 0x54, 0x43, 0x47]);
        assert!(attest.extra_data.len() <= data.len());
    }
    if let Ok(public) = actseal::verify::tpm::parse_ecc_public(data) {
        assert!(public.x.len() + public.y.len() <= data.len());
    }
});
