//! Mesh identity for automatic mTLS between meshproxies: this proxy's workload certificate and
//! key (`<dir>/<name>.<namespace>.crt` / `.key`) and the trust anchors (`<dir>/ca.crt`, a bundle
//! that may hold two anchors during an anchor rotation), as `meshproxy identity` writes them.
//!
//! From them a [`MeshIdentity`] builds, and rebuilds when the files change:
//! - the server config of a listener with `mtls`: this proxy's certificate whatever the SNI, a
//!   client certificate required and verified against the anchors, ALPN `h2` and `http/1.1`;
//! - the client configs of meshed services: this proxy's certificate presented, the server's
//!   chain verified against the anchors and its identity checked (`verify`), one config per
//!   ALPN offer sharing one session cache.
//!
//! With `self_issue`, the proxy issues its own workload certificate from the anchor whose key is
//! in the directory (`ca.key`) instead of reading one: the key and the certificate stay in
//! memory, and a new pair is issued at a random point between 65 % and 75 % of the certificate's
//! lifetime (70 % with jitter, so proxies started together do not renew together), long before
//! it expires; a renewal that fails keeps the material in force and is tried again.
//!
//! New handshakes take the material in force; connections already up keep theirs. Material that
//! does not load (unreadable, not from the anchors, expired, a key of another certificate) is
//! refused, and the material in force stays.

mod names;
mod resumed;
mod verify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use names::{spiffe_id_of, WorkloadId};
pub use resumed::chain_current;
pub use verify::WrongIdentity;

use crate::{provider, Stamp, TlsError, ALPN};

/// Where this proxy's identity is: the directory, and the workload's name and namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentitySource {
    pub dir: PathBuf,
    pub name: String,
    pub namespace: String,
    /// The lifetime of the certificates this proxy issues itself; `None`: it reads them.
    pub self_issue: Option<Duration>,
}

impl IdentitySource {
    pub fn anchors(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join(format!("{}.{}.crt", self.name, self.namespace))
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join(format!("{}.{}.key", self.name, self.namespace))
    }
    /// The files whose change means new material: the anchors and the issuing key when the
    /// proxy issues its own certificate, else the anchors and the certificate and key.
    fn files(&self) -> Vec<PathBuf> {
        match self.self_issue {
            Some(_) => vec![self.anchors(), self.dir.join("ca.key")],
            None => vec![self.anchors(), self.cert(), self.key()],
        }
    }
}

/// A trust anchor as `/identity` shows it.
#[derive(Debug, Clone)]
pub struct AnchorInfo {
    pub subject: String,
    pub not_after: SystemTime,
}

/// What the material in force is.
#[derive(Debug, Clone)]
pub struct IdentityInfo {
    pub id: WorkloadId,
    /// The certificate's serial number, lowercase hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub anchors: Vec<AnchorInfo>,
    pub loaded_at: SystemTime,
    /// When the proxy issues its next certificate (`self_issue`); `None`: the files are renewed
    /// by whoever writes them.
    pub renews_at: Option<SystemTime>,
}

/// The configs built from one reading of the files.
pub struct Material {
    pub info: IdentityInfo,
    server: Arc<ServerConfig>,
    client_http1: Arc<ClientConfig>,
    client_h2: Arc<ClientConfig>,
    client_opaque: Arc<ClientConfig>,
}

/// What a client connection offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAlpn {
    Http1,
    H2,
    None,
}

impl Material {
    pub fn server(&self) -> &Arc<ServerConfig> {
        &self.server
    }
    pub fn client(&self, alpn: ClientAlpn) -> &Arc<ClientConfig> {
        match alpn {
            ClientAlpn::Http1 => &self.client_http1,
            ClientAlpn::H2 => &self.client_h2,
            ClientAlpn::None => &self.client_opaque,
        }
    }
}

/// Why a mesh handshake failed, as a metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFailure {
    /// The peer's chain leads to no trust anchor of ours (another mesh, a foreign anchor).
    Untrusted,
    /// The peer's certificate expired (or is not valid yet).
    Expired,
    /// The peer is another workload than the one expected (outbound only).
    WrongIdentity,
    /// A client sent no certificate (inbound only).
    NoClientCertificate,
    /// A certificate that is malformed, revoked or not meant for this use.
    BadCertificate,
    /// The peer ended the handshake with an alert: most often it refused our certificate.
    PeerRefused,
    /// No common protocol version or cipher suite.
    Incompatible,
    /// Anything else in the TLS protocol.
    Protocol,
}

impl PeerFailure {
    pub const ALL: [PeerFailure; 8] = [
        PeerFailure::Untrusted,
        PeerFailure::Expired,
        PeerFailure::WrongIdentity,
        PeerFailure::NoClientCertificate,
        PeerFailure::BadCertificate,
        PeerFailure::PeerRefused,
        PeerFailure::Incompatible,
        PeerFailure::Protocol,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PeerFailure::Untrusted => "untrusted",
            PeerFailure::Expired => "expired",
            PeerFailure::WrongIdentity => "wrong-identity",
            PeerFailure::NoClientCertificate => "no-client-certificate",
            PeerFailure::BadCertificate => "bad-certificate",
            PeerFailure::PeerRefused => "peer-refused",
            PeerFailure::Incompatible => "incompatible",
            PeerFailure::Protocol => "protocol",
        }
    }

    /// The reason of a rustls error.
    pub fn of(e: &rustls::Error) -> PeerFailure {
        use rustls::{CertificateError as C, Error as E};
        match e {
            E::NoCertificatesPresented => PeerFailure::NoClientCertificate,
            E::InvalidCertificate(c) => match c {
                // A foreign anchor of the same name (the same trust domain) fails on its signature.
                C::UnknownIssuer | C::BadSignature => PeerFailure::Untrusted,
                C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
                    PeerFailure::Expired
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => PeerFailure::WrongIdentity,
                C::Other(o) if o.0.downcast_ref::<WrongIdentity>().is_some() => PeerFailure::WrongIdentity,
                _ => PeerFailure::BadCertificate,
            },
            E::AlertReceived(_) => PeerFailure::PeerRefused,
            E::PeerIncompatible(_) => PeerFailure::Incompatible,
            _ => PeerFailure::Protocol,
        }
    }

    /// The reason of the `io::Error` a tokio-rustls handshake returns, when it carries a rustls one.
    pub fn of_io(e: &std::io::Error) -> Option<PeerFailure> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).map(PeerFailure::of)
    }
}

/// Outbound mTLS handshakes that failed, by reason (one set per meshed service).
#[derive(Debug, Default)]
pub struct ConnectFailures([AtomicU64; PeerFailure::ALL.len()]);

impl ConnectFailures {
    pub fn count(&self, why: PeerFailure) {
        self.0[why as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self, why: PeerFailure) -> u64 {
        self.0[why as usize].load(Ordering::Relaxed)
    }
}

/// This proxy's mesh identity: the material in force, rebuilt when its files change.
pub struct MeshIdentity {
    source: IdentitySource,
    current: ArcSwap<Material>,
    stamp: Mutex<Stamp>,
    /// After a renewal failed: when to try again.
    retry_at: Mutex<Option<SystemTime>>,
    failures: Mutex<HashMap<Box<str>, Arc<ConnectFailures>>>,
    /// New material taken in (changed files, a config reload, a renewal), and new material
    /// refused (the material in force kept).
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

/// How long after a failed renewal the proxy tries again.
pub const RENEW_RETRY: Duration = Duration::from_secs(5);

impl std::fmt::Debug for MeshIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshIdentity").field("source", &self.source).finish_non_exhaustive()
    }
}

impl MeshIdentity {
    /// Reads the files and builds the configs; any problem is an error.
    pub fn load(source: IdentitySource) -> Result<Self, TlsError> {
        let stamp = Stamp::of_paths(&source.files());
        let material = build(&source, SystemTime::now())?;
        Ok(MeshIdentity {
            source,
            current: ArcSwap::from_pointee(material),
            stamp: Mutex::new(stamp),
            retry_at: Mutex::new(None),
            failures: Mutex::default(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    pub fn source(&self) -> &IdentitySource {
        &self.source
    }

    /// The material new handshakes use.
    #[inline]
    pub fn material(&self) -> arc_swap::Guard<Arc<Material>> {
        self.current.load()
    }

    /// Rebuilds the material when a file's modification time or size changed since the last
    /// look. `None`: nothing changed; `Some(Err)`: the new files are refused, the old material
    /// stays. Counted either way.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = Stamp::of_paths(&self.source.files());
        {
            let mut seen = self.stamp.lock();
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        Some(self.rebuild())
    }

    /// Reads the files again whatever their stamps (a config reload).
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.stamp.lock() = Stamp::of_paths(&self.source.files());
        self.rebuild()
    }

    /// Issues a new certificate when the one in force is due for renewal at `now` (only with
    /// `self_issue`). `None`: not due (or a failed renewal waits [`RENEW_RETRY`]).
    pub fn renew_if_due(&self, now: SystemTime) -> Option<Result<(), TlsError>> {
        let due = self.current.load().info.renews_at?;
        let mut retry_at = self.retry_at.lock();
        if now < due || retry_at.is_some_and(|at| now < at) {
            return None;
        }
        let result = self.rebuild_at(now);
        *retry_at = result.is_err().then(|| now + RENEW_RETRY);
        Some(result)
    }

    fn rebuild(&self) -> Result<(), TlsError> {
        self.rebuild_at(SystemTime::now())
    }

    fn rebuild_at(&self, now: SystemTime) -> Result<(), TlsError> {
        match build(&self.source, now) {
            Ok(m) => {
                self.current.store(Arc::new(m));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The outbound handshake failures of `service` (kept as long as this identity is).
    pub fn connect_failures(&self, service: &str) -> Arc<ConnectFailures> {
        self.failures.lock().entry(service.into()).or_default().clone()
    }

    /// Every service's outbound handshake failures, by service name.
    pub fn all_connect_failures(&self) -> Vec<(Box<str>, Arc<ConnectFailures>)> {
        let mut all: Vec<_> = self.failures.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// The crypto provider of mesh connections: [`provider`] with TLS 1.3's AES-128-GCM suite first.
/// Both ends of a mesh connection are meshproxies, and the client's order decides: AES-128-GCM
/// (the suite RFC 8446 requires of every implementation) costs fewer rounds per record than
/// AES-256-GCM, which ring's default order puts first. The other suites stay, in ring's order,
/// for peers that do not offer it.
fn mesh_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = Arc::unwrap_or_clone(provider());
    let first = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
    p.cipher_suites.sort_by_key(|s| s.suite() != first);
    Arc::new(p)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.display().to_string(), source })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let name = || path.display().to_string();
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: name(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: name() });
    }
    Ok(certs)
}

fn bad(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::Identity { path: path.display().to_string(), why: why.to_string() }
}

fn time_of(t: &x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// This proxy's certificate chain and key in PEM, and when to renew them.
struct WorkloadPem {
    chain: Vec<u8>,
    key: Vec<u8>,
    renews_at: Option<SystemTime>,
}

/// This proxy's certificate chain and key: issued now from the anchor in the directory
/// (`self_issue`, with when to renew it), else read from the files.
fn workload_pem(source: &IdentitySource, now: SystemTime) -> Result<WorkloadPem, TlsError> {
    let Some(lifetime) = source.self_issue else {
        let (cert_path, key_path) = (source.cert(), source.key());
        let (chain, key) = (read(&cert_path, "certificate")?, read(&key_path, "key")?);
        return Ok(WorkloadPem { chain, key, renews_at: None });
    };
    let made = meshproxy_identity::issue_in_memory(
        &source.dir,
        &source.name,
        &source.namespace,
        lifetime,
        time::OffsetDateTime::from(now),
    )
    .map_err(|e| bad(&source.dir, format!("cannot issue this proxy's certificate: {e}")))?;
    let not_after = SystemTime::from(made.not_after);
    let left = not_after.duration_since(now).unwrap_or_default();
    let renews_at = now + left.mul_f64(rand::random_range(0.65..0.75));
    Ok(WorkloadPem {
        chain: made.cert_pem.into_bytes(),
        key: made.key_pem.into_bytes(),
        renews_at: Some(renews_at),
    })
}

fn build(source: &IdentitySource, now: SystemTime) -> Result<Material, TlsError> {
    let (anchors_path, cert_path, key_path) = (source.anchors(), source.cert(), source.key());
    // Issued certificates have no file: errors about them name the directory.
    let (cert_path, key_path) = match source.self_issue {
        Some(_) => (source.dir.clone(), source.dir.clone()),
        None => (cert_path, key_path),
    };
    let anchors_pem = read(&anchors_path, "trust anchor")?;
    let mut roots = RootCertStore::empty();
    let mut anchors = Vec::new();
    for der in certificates(&anchors_path, &anchors_pem)? {
        let (_, x) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| bad(&anchors_path, format!("not an X.509 certificate: {e}")))?;
        anchors.push(AnchorInfo {
            subject: x.subject().to_string(),
            not_after: time_of(&x.validity().not_after),
        });
        roots.add(der).map_err(|e| bad(&anchors_path, format!("not a usable trust anchor: {e}")))?;
    }
    let roots = Arc::new(roots);
    let WorkloadPem { chain: chain_pem, key: key_pem, renews_at } = workload_pem(source, now)?;
    let chain = certificates(&cert_path, &chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::NoKey { path: key_path.display().to_string() }
        }
        other => TlsError::Pem { path: key_path.display().to_string(), message: other.to_string() },
    })?;

    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref())
        .map_err(|e| bad(&cert_path, format!("not an X.509 certificate: {e}")))?;
    let spiffe =
        spiffe_id_of(chain[0].as_ref()).ok_or_else(|| bad(&cert_path, "it names no SPIFFE ID (URI SAN)"))?;
    let id = WorkloadId::from_spiffe(&spiffe).ok_or_else(|| {
        bad(&cert_path, format!("{spiffe} is not a workload identity (spiffe://<td>/ns/<ns>/sa/<name>)"))
    })?;
    if id.name != source.name || id.namespace != source.namespace {
        return Err(bad(
            &cert_path,
            format!(
                "it names {spiffe}, not service account {:?} in namespace {:?}",
                source.name, source.namespace
            ),
        ));
    }
    let info = IdentityInfo {
        serial: leaf.tbs_certificate.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
        not_before: time_of(&leaf.validity().not_before),
        not_after: time_of(&leaf.validity().not_after),
        anchors,
        loaded_at: now,
        renews_at,
        id,
    };

    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // This proxy's own certificate must be one its peers accept: from the anchors, valid now,
    // meant for client authentication (and, by the same issuer, server authentication).
    client_verifier
        .verify_client_cert(
            &chain[0],
            &chain[1..],
            UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()),
        )
        .map_err(|e| bad(&cert_path, format!("not usable as this proxy's identity: {e}")))?;

    let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let mut server = ServerConfig::builder_with_provider(mesh_provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| TlsError::KeyMismatch {
            cert: cert_path.display().to_string(),
            key: key_path.display().to_string(),
            message: e.to_string(),
        })?;
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // Stateless session tickets, as on a TLS listener (`crate::server_config`). A ticket carries
    // the client's certificate chain, so a resumed connection has its peer identity; the keys
    // are this material's own, so after a reload every client makes one full handshake.
    server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;

    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let base = ClientConfig::builder_with_provider(mesh_provider())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verify::MeshServerVerifier { inner: server_verifier }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // Clones share the session cache (`resumption` holds it behind an Arc).
    let with_alpn = |protocol: &[u8]| {
        let mut config = base.clone();
        config.alpn_protocols = vec![protocol.to_vec()];
        Arc::new(config)
    };
    Ok(Material {
        info,
        server: Arc::new(server),
        client_http1: with_alpn(b"http/1.1"),
        client_h2: with_alpn(b"h2"),
        client_opaque: Arc::new(base),
    })
}

#[cfg(test)]
mod tests;
