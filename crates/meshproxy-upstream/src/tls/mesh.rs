//! mTLS to a meshed peer (a service with `identity`): the connection presents this proxy's
//! workload certificate, sends the expected identity's DNS form as SNI
//! (`<name>.<ns>.serviceaccount.identity.<td>`), and verifies that the peer's chain leads to the
//! trust anchors and that it is exactly the expected workload ([`meshproxy_tls::mesh`]). Each
//! handshake takes the identity material in force then, so rotated certificates and anchors
//! apply to new connections while pooled ones keep going. A refused peer is logged with the
//! reason and counted on the service ([`meshproxy_tls::mesh::ConnectFailures`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::Arc;

use meshproxy_tls::mesh::{ClientAlpn, ConnectFailures, MeshIdentity, PeerFailure, WorkloadId};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::connect::{Alpn, Target};

/// What makes two mesh connectors' connections interchangeable: the peer expected, and whose
/// identity this proxy presents (its files; their contents may rotate under one connector).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Key {
    expected: String,
    ours: meshproxy_tls::mesh::IdentitySource,
}

/// mTLS to the endpoints of one meshed service.
#[derive(Clone)]
pub struct MeshConnector {
    key: Arc<Key>,
    server_name: ServerName<'static>,
    identity: Arc<MeshIdentity>,
    failures: Arc<ConnectFailures>,
    service: Arc<str>,
}

impl fmt::Debug for MeshConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshConnector").field("expected", &self.key.expected).finish_non_exhaustive()
    }
}

impl PartialEq for MeshConnector {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for MeshConnector {}

impl Hash for MeshConnector {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl MeshConnector {
    /// Connections of `service` to the workload `expected`, as `identity` (this proxy).
    pub fn new(service: &str, expected: &WorkloadId, identity: Arc<MeshIdentity>) -> Result<Self, String> {
        let server_name = ServerName::try_from(expected.dns())
            .map_err(|_| format!("{:?} is not a valid TLS server name", expected.dns()))?;
        Ok(MeshConnector {
            key: Arc::new(Key { expected: expected.spiffe(), ours: identity.source().clone() }),
            server_name,
            failures: identity.connect_failures(service),
            identity,
            service: service.into(),
        })
    }

    /// The SPIFFE ID the peer must have.
    pub fn expected(&self) -> &str {
        &self.key.expected
    }

    pub(super) async fn handshake(
        &self,
        tcp: TcpStream,
        target: &Target,
        alpn: Alpn,
    ) -> io::Result<TlsStream<TcpStream>> {
        let offer = match alpn {
            Alpn::Http1 => ClientAlpn::Http1,
            Alpn::H2 => ClientAlpn::H2,
            Alpn::Opaque => ClientAlpn::None,
        };
        let config = self.identity.material().client(offer).clone();
        let connect = tokio_rustls::TlsConnector::from(config).connect(self.server_name.clone(), tcp);
        let stream = match connect.await {
            Ok(stream) => stream,
            Err(e) => {
                let why = PeerFailure::of_io(&e);
                if let Some(why) = why {
                    self.failures.count(why);
                }
                tracing::warn!(
                    service = %self.service,
                    endpoint = %target.address,
                    expected = %self.key.expected,
                    reason = why.map_or("io", PeerFailure::as_str),
                    error = %e,
                    "mTLS to a meshed endpoint refused"
                );
                return Err(e);
            }
        };
        if alpn == Alpn::H2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            self.failures.count(PeerFailure::Protocol);
            tracing::warn!(service = %self.service, endpoint = %target.address, "meshed endpoint did not agree to h2 by ALPN");
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the meshed endpoint did not agree to h2 by ALPN",
            ));
        }
        Ok(stream)
    }
}
