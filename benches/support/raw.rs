//! Raw hardware rates, measured beside the daemon in the same run: SoftHSM `C_Sign` on its own
//! sessions, and swtpm `TPM2_Sign` in a password (null-auth) session with the key loaded once.

use std::time::Instant;

use actseal::lab::{Lab, TOKEN_LABEL};
use cryptoki::{
    mechanism::Mechanism,
    object::{Attribute, ObjectClass},
    session::UserType,
    types::AuthPin,
};

/// `C_Sign` (ECDSA P-256 on a digest) per second with `sessions` threads, each on its own
/// session, with the key whose CKA_ID is `key_id`.
pub fn token_rate(
    lab: &Lab,
    ctx: &cryptoki::context::Pkcs11,
    key_id: &[u8],
    sessions: usize,
) -> f64 {
    let pin = lab.token_pin().unwrap();
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == TOKEN_LABEL)
        .expect("lab token");
    let duration = super::phase_seconds();
    let total: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..sessions)
            .map(|_| {
                let pin = pin.clone();
                scope.spawn(move || {
                    let session = ctx.open_rw_session(slot).unwrap();
                    match session.login(UserType::User, Some(&AuthPin::from(pin))) {
                        Ok(())
                        | Err(cryptoki::error::Error::Pkcs11(
                            cryptoki::error::RvError::UserAlreadyLoggedIn,
                            _,
                        )) => {}
                        Err(e) => panic!("login: {e}"),
                    }
                    let key = session
                        .find_objects(&[
                            Attribute::Class(ObjectClass::PRIVATE_KEY),
                            Attribute::Id(key_id.to_vec()),
                        ])
                        .unwrap()[0];
                    let start = Instant::now();
                    let mut n = 0u64;
                    while start.elapsed() < duration {
                        session.sign(&Mechanism::Ecdsa, key, &[0x5a; 32]).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    total as f64 / duration.as_secs_f64()
}

/// The CKA_ID of an actor key, from its lineage statement (`CreateKey`'s answer).
pub fn cka_id(lineage_json: &str) -> Vec<u8> {
    use base64::Engine;
    let lineage: serde_json::Value = serde_json::from_str(lineage_json).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(lineage["statement"]["payload"].as_str().unwrap())
        .unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    hex::decode(statement["predicate"]["attributes"]["id"].as_str().unwrap()).unwrap()
}

/// `TPM2_Sign` per second on the TPM at `tcti` (nothing else connected to it): an ECDSA P-256
/// key created and loaded once, signed with in a password session.
pub fn tpm_rate(tcti: &str) -> f64 {
    use actseal::backend::tpm::storage_template;
    use tss_esapi::{
        Context, TctiNameConf,
        attributes::ObjectAttributesBuilder,
        constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK},
        interface_types::{
            algorithm::{HashingAlgorithm, PublicAlgorithm},
            ecc::EccCurve,
            resource_handles::Hierarchy,
        },
        structures::{
            Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, PublicBuilder,
            PublicEccParametersBuilder, SignatureScheme,
        },
        tss2_esys::TPMT_TK_HASHCHECK,
    };
    let mut ctx = Context::new(tcti.parse::<TctiNameConf>().unwrap()).unwrap();
    let primary = ctx
        .execute_with_nullauth_session(|ctx| {
            ctx.create_primary(
                Hierarchy::Owner,
                storage_template().unwrap(),
                None,
                None,
                None,
                None,
            )
        })
        .unwrap()
        .key_handle;
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .build()
        .unwrap();
    let template = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                EccCurve::NistP256,
            )
            .build()
            .unwrap(),
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .unwrap();
    let created = ctx
        .execute_with_nullauth_session(|ctx| ctx.create(primary, template, None, None, None, None))
        .unwrap();
    let key = ctx
        .execute_with_nullauth_session(|ctx| {
            ctx.load(primary, created.out_private, created.out_public)
        })
        .unwrap();
    let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .unwrap();
    let digest = Digest::try_from(vec![0x5a; 32]).unwrap();
    let duration = super::phase_seconds();
    let start = Instant::now();
    let mut n = 0u64;
    ctx.execute_with_nullauth_session(|ctx| {
        while start.elapsed() < duration {
            ctx.sign(key, digest.clone(), SignatureScheme::Null, ticket.clone())?;
            n += 1;
        }
        Ok::<_, tss_esapi::Error>(())
    })
    .unwrap();
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = ctx.flush_context(key.into());
    let _ = ctx.flush_context(primary.into());
    rate
}
