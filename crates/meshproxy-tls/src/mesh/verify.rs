//! The outbound side's check of a meshed peer: the server's chain must lead to a trust anchor
//! (webpki, with the DNS SAN checked against the SNI sent, `<name>.<ns>.serviceaccount.identity.<td>`)
//! and its URI SAN must be exactly the SPIFFE ID that DNS name spells. One verifier serves every
//! expected identity: the expected one is read back from the server name of each handshake.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};

use super::names::{spiffe_id_of, WorkloadId};

/// The server presented a valid certificate of another workload.
#[derive(Debug, thiserror::Error)]
#[error("the peer is {found}, not {expected}")]
pub struct WrongIdentity {
    pub expected: String,
    pub found: String,
}

#[derive(Debug)]
pub(super) struct MeshServerVerifier {
    pub inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let expected = match server_name {
            ServerName::DnsName(dns) => WorkloadId::from_dns(dns.as_ref()),
            _ => None,
        }
        .ok_or(Error::InvalidCertificate(CertificateError::NotValidForName))?
        .spiffe();
        let found = spiffe_id_of(end_entity.as_ref());
        // The chain and the DNS SAN first: a wrong identity from the right anchors fails there
        // already (its DNS SAN spells its own identity); the URI SAN must agree as well.
        let verified =
            self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match verified {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Err(wrong(expected, found)),
            Err(e) => Err(e),
            Ok(ok) if found.as_deref() == Some(expected.as_str()) => Ok(ok),
            Ok(_) => Err(wrong(expected, found)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn wrong(expected: String, found: Option<String>) -> Error {
    let found = found.unwrap_or_else(|| "a certificate without a SPIFFE ID".to_owned());
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(WrongIdentity {
        expected,
        found,
    }))))
}
