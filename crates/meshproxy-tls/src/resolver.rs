//! Choosing a certificate by the SNI name a client sends: an exact host first, then a `*.suffix`
//! wildcard covering one label (`*.example.com` serves `a.example.com`, neither `example.com`
//! nor `a.b.example.com`, as RFC 6125 matches wildcards), then the default certificate.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{CertificateSpec, TlsError};

/// Certificates by host name. The default is the first certificate without hosts, or else the
/// first certificate: clients without SNI (an IP address) and names no certificate lists get it.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

/// A host name as SNI compares it: lower case, without a trailing dot.
fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl SniResolver {
    /// Reads every certificate and key; a key that does not match its certificate, or a host
    /// given to two certificates, is an error.
    pub fn load(specs: &[CertificateSpec]) -> Result<Self, TlsError> {
        let provider = crate::provider();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut first = None;
        let mut default = None;
        for spec in specs {
            let chain = spec.read_chain()?;
            let key = spec.read_key()?;
            let signing = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| TlsError::BadKey { path: spec.key.name(), message: e.to_string() })?;
            let certified = CertifiedKey::new(chain, signing);
            match certified.keys_match() {
                Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
                Err(e) => {
                    return Err(TlsError::KeyMismatch {
                        cert: spec.cert.name(),
                        key: spec.key.name(),
                        message: e.to_string(),
                    })
                }
            }
            let certified = Arc::new(certified);
            first.get_or_insert_with(|| certified.clone());
            if spec.hosts.is_empty() {
                default.get_or_insert_with(|| certified.clone());
            }
            for host in &spec.hosts {
                let host = normalize(host);
                if let Some(other) = owners.insert(host.clone(), spec.cert.name()) {
                    return Err(TlsError::DuplicateHost { host, first: other, second: spec.cert.name() });
                }
                match host.strip_prefix("*.") {
                    Some(suffix) => wildcard.insert(suffix.to_owned(), certified.clone()),
                    None => exact.insert(host, certified.clone()),
                };
            }
        }
        let default = default.or(first).ok_or(TlsError::NoCertificates)?;
        Ok(SniResolver { exact, wildcard, default })
    }

    /// The certificate for `server_name` (None: no SNI).
    pub fn pick(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        let name = normalize(name);
        if let Some(c) = self.exact.get(&name) {
            return c;
        }
        if let Some((_, suffix)) = name.split_once('.') {
            if let Some(c) = self.wildcard.get(suffix) {
                return c;
            }
        }
        &self.default
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}
