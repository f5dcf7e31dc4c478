//! Server-side TLS for meshproxy's listeners: PEM certificate chains and private keys read from
//! files (or given inline, as a Kubernetes `kubernetes.io/tls` Secret carries them), an SNI
//! resolver that picks a certificate per host name (exact names, `*.suffix` wildcards, and a
//! default), ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3 only, all over one explicit crypto
//! provider (ring). [`ServerTls`] holds the built `rustls::ServerConfig` and swaps in a new one
//! when its files change on disk, keeping the old one when the new material is bad.
//!
//! Who uses it: `meshproxy-core`, which compiles a listener's `tls` config into a [`ServerTls`],
//! runs the handshake with `tokio-rustls` in front of protocol detection, and calls
//! [`ServerTls::reload_if_changed`] on its housekeeping tick. What it must not know: sockets,
//! connections, the request path, or how the config was written — it takes certificate specs.

#![forbid(unsafe_code)]

pub mod mesh;
mod resolver;
mod source;

use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::server::ServerConfig;

pub use resolver::SniResolver;
pub use source::{CertificateSpec, PemSource, Stamp};

/// The ALPN protocols a TLS listener offers, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why TLS material could not be used. Each names the file (or inline origin) it is about.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid PEM: {message}")]
    Pem { path: String, message: String },
    #[error("{path}: no certificate in it (expected a PEM `BEGIN CERTIFICATE` block)")]
    NoCertificate { path: String },
    #[error("{path}: no private key in it (expected a PEM `BEGIN PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)")]
    NoKey { path: String },
    #[error("{path}: the private key cannot be used: {message}")]
    BadKey { path: String, message: String },
    #[error("the private key {key} does not belong to the certificate {cert}: {message}")]
    KeyMismatch { cert: String, key: String, message: String },
    #[error("host {host:?} is given two certificates: {first} and {second}")]
    DuplicateHost { host: String, first: String, second: String },
    #[error("a TLS listener needs at least one certificate")]
    NoCertificates,
    #[error("cannot build the TLS config: {0}")]
    Config(String),
    #[error("{path}: {why}")]
    Identity { path: String, why: String },
}

/// The crypto provider every TLS config of meshproxy's uses: ring, chosen explicitly. rustls
/// 0.23.48 deprecates ring's `default_provider` because ring has no post-quantum key exchange
/// (aws-lc-rs has); ring is the project's one provider (no C/CMake build of aws-lc).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A `ServerConfig` choosing among `resolver`'s certificates by SNI, TLS 1.2 and 1.3 only,
/// offering ALPN `h2` and `http/1.1`.
///
/// Sessions resume by stateless tickets (ring's ticketer: ChaCha20-Poly1305, keys rotated every
/// 6 h), as HAProxy's and nginx's do, so any number of clients can resume; rustls's default
/// keeps 256 sessions in memory, and a client past them gets a full handshake. TLS 1.3
/// resumption is PSK with (EC)DHE in rustls, so resumed sessions keep forward secrecy.
pub fn server_config(resolver: Arc<SniResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Reads every certificate and builds the server config: what a listener's handshakes use.
pub fn build(specs: &[CertificateSpec]) -> Result<Arc<ServerConfig>, TlsError> {
    server_config(Arc::new(SniResolver::load(specs)?))
}

/// A listener's TLS: the server config in force, and what it was built from, so that a change of
/// the files on disk builds a new one. New handshakes take [`ServerTls::config`]; connections
/// already up keep the config they were accepted with.
pub struct ServerTls {
    specs: Box<[CertificateSpec]>,
    config: ArcSwap<ServerConfig>,
    /// The files' stamps when last looked at (a failed reload's too, so it is tried once per change).
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("specs", &self.specs).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificates and keys and builds the config; any problem is an error.
    pub fn load(specs: Vec<CertificateSpec>) -> Result<Self, TlsError> {
        let stamp = Stamp::of(&specs);
        let config = build(&specs)?;
        Ok(ServerTls { specs: specs.into(), config: ArcSwap::new(config), stamp: Mutex::new(stamp) })
    }

    /// The config new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Whether any certificate comes from a file (inline ones never change).
    pub fn watches_files(&self) -> bool {
        self.specs.iter().any(CertificateSpec::has_files)
    }

    /// Rebuilds the config when a file's modification time or size changed since the last look.
    /// `None`: nothing changed; `Some(Ok)`: the new certificates are in force; `Some(Err)`: they
    /// are bad and the config in force stays.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = Stamp::of(&self.specs);
        {
            let mut seen = self.stamp.lock();
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        Some(build(&self.specs).map(|config| self.config.store(config)))
    }
}

#[cfg(test)]
mod tests;
