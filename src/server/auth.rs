//! Who is calling: the kernel's peer credentials on the Unix socket, the verified client
//! certificate on the mTLS listener. Nothing a client claims in a request counts.

use std::fmt;

use der::{Decode, oid::AssociatedOid};
use tonic::{Request, Status, transport::server::TlsConnectInfo};
use x509_cert::{
    Certificate,
    ext::pkix::{SubjectAltName, name::GeneralName},
};

use super::listen::{ConnInfo, Peer};
use crate::proof::receipt::CallerInReceipt;

fn no_certificate() -> Status {
    Status::unauthenticated("the TLS connection carries no client certificate")
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A process on this machine, as the kernel reports it (SO_PEERCRED).
    Unix { uid: u32, gid: u32, pid: u32 },
    /// An mTLS client: its certificate chained to a configured client CA.
    X509 {
        /// The certificate's one `spiffe://` URI SAN, if it has exactly one.
        spiffe_id: Option<String>,
        /// The certificate's subject, RFC 4514.
        subject: String,
    },
    /// A client of the plain loopback TCP listener: not authenticated (development only).
    InsecureTcp { address: String },
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Unix { uid, gid, pid } => write!(f, "unix uid={uid} gid={gid} pid={pid}"),
            Caller::X509 {
                spiffe_id: Some(id),
                subject,
            } => write!(f, "x509 {id} ({subject})"),
            Caller::X509 {
                spiffe_id: None,
                subject,
            } => write!(f, "x509 ({subject})"),
            Caller::InsecureTcp { address } => write!(f, "insecure-tcp {address}"),
        }
    }
}

impl Caller {
    /// The caller of a request, from what the connection established.
    pub fn of<T>(request: &Request<T>) -> Result<Caller, Status> {
        let extensions = request.extensions();
        if let Some(tls) = extensions.get::<TlsConnectInfo<ConnInfo>>() {
            // A TLS connection without a verified client certificate is nobody, never a
            // development caller.
            let certs = tls.peer_certs().ok_or_else(no_certificate)?;
            let leaf = certs.first().ok_or_else(no_certificate)?;
            return Caller::from_certificate(leaf.as_ref());
        }
        match extensions.get::<ConnInfo>().map(|info| &info.peer) {
            Some(Peer::Unix(cred)) => Ok(Caller::Unix {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            }),
            // Only the plain listener, which exists only on loopback when configured so,
            // delivers TCP requests without TLS.
            Some(Peer::Tcp(address)) => Ok(Caller::InsecureTcp {
                address: address.to_string(),
            }),
            None => Err(Status::unauthenticated("cannot tell who is calling")),
        }
    }

    /// An mTLS caller from its (already verified) leaf certificate.
    pub fn from_certificate(der: &[u8]) -> Result<Caller, Status> {
        let cert = Certificate::from_der(der)
            .map_err(|_| Status::unauthenticated("the client certificate does not parse"))?;
        let tbs = &cert.tbs_certificate;
        let mut uris = Vec::new();
        for ext in tbs.extensions.iter().flatten() {
            if ext.extn_id == SubjectAltName::OID {
                let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).map_err(|_| {
                    Status::unauthenticated(
                        "the client certificate's subjectAltName does not parse",
                    )
                })?;
                for name in san.0 {
                    if let GeneralName::UniformResourceIdentifier(uri) = name {
                        uris.push(uri.to_string());
                    }
                }
            }
        }
        let spiffe: Vec<String> = uris
            .into_iter()
            .filter(|u| u.starts_with("spiffe://"))
            .collect();
        // An X.509-SVID has exactly one URI SAN; several SPIFFE IDs name nobody.
        let spiffe_id = match <[String; 1]>::try_from(spiffe) {
            Ok([id]) if valid_text(&id) => Some(id),
            _ => None,
        };
        let subject = tbs.subject.to_string();
        if !valid_text(&subject) && spiffe_id.is_none() {
            return Err(Status::unauthenticated(
                "the client certificate names neither a SPIFFE ID nor a printable subject",
            ));
        }
        Ok(Caller::X509 {
            spiffe_id,
            subject: if valid_text(&subject) {
                subject
            } else {
                String::new()
            },
        })
    }

    /// How the caller is recorded in the receipts it obtains (FORMAT.md §3).
    pub fn to_receipt(&self) -> CallerInReceipt {
        match self {
            Caller::Unix { uid, gid, pid } => CallerInReceipt::Unix {
                uid: *uid,
                gid: *gid,
                pid: *pid,
            },
            Caller::X509 { spiffe_id, subject } => CallerInReceipt::X509 {
                spiffe_id: spiffe_id.clone(),
                subject: subject.clone(),
            },
            Caller::InsecureTcp { address } => CallerInReceipt::InsecureTcp {
                address: address.clone(),
            },
        }
    }
}

/// Printable, bounded text: it goes into receipts and logs.
fn valid_text(text: &str) -> bool {
    !text.is_empty() && text.len() <= 1024 && !text.chars().any(char::is_control)
}
