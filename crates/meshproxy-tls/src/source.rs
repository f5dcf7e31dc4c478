//! Where a certificate chain and its key come from (a PEM file, or PEM text given inline), reading
//! them into DER, and the stamps (modification time and size) that tell a file changed.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// PEM text: a file read when the config is built (and again when it changes), or inline text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemSource {
    File(PathBuf),
    /// `origin` names it in errors (e.g. `Secret default/web-tls tls.crt`).
    Inline {
        pem: String,
        origin: String,
    },
}

impl PemSource {
    /// How errors name it.
    pub fn name(&self) -> String {
        match self {
            PemSource::File(p) => p.display().to_string(),
            PemSource::Inline { origin, .. } => origin.clone(),
        }
    }

    fn read(&self, what: &'static str) -> Result<Vec<u8>, TlsError> {
        match self {
            PemSource::File(p) => std::fs::read(p).map_err(|source| TlsError::Read {
                what,
                path: p.display().to_string(),
                source,
            }),
            PemSource::Inline { pem, .. } => Ok(pem.as_bytes().to_vec()),
        }
    }

    fn path(&self) -> Option<&Path> {
        match self {
            PemSource::File(p) => Some(p),
            PemSource::Inline { .. } => None,
        }
    }
}

/// One certificate of a listener: its chain (leaf first), its key, and the host names it serves.
/// No hosts: the default certificate, for names no other certificate has and for clients that
/// send no SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSpec {
    pub cert: PemSource,
    pub key: PemSource,
    /// Exact names (`web.example.com`) or wildcards (`*.example.com`), as written.
    pub hosts: Vec<String>,
}

impl CertificateSpec {
    pub(crate) fn has_files(&self) -> bool {
        self.cert.path().is_some() || self.key.path().is_some()
    }

    /// The certificate chain, leaf first.
    pub(crate) fn read_chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let bytes = self.cert.read("certificate")?;
        let name = || self.cert.name();
        let chain = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem { path: name(), message: e.to_string() })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate { path: name() });
        }
        Ok(chain)
    }

    /// The private key (PKCS#8, PKCS#1 RSA or SEC1 EC): the first one in the PEM text.
    pub(crate) fn read_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let bytes = self.key.read("key")?;
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: self.key.name() },
            other => TlsError::Pem { path: self.key.name(), message: other.to_string() },
        })
    }
}

/// The modification time and size of every file of a set of certificates, in order; what
/// [`crate::ServerTls::reload_if_changed`] compares. A file that cannot be read has no stamp.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stamp(Vec<Option<(SystemTime, u64)>>);

impl Stamp {
    pub fn of(specs: &[CertificateSpec]) -> Stamp {
        Stamp(specs.iter().flat_map(|s| [s.cert.path(), s.key.path()]).flatten().map(stamp).collect())
    }

    /// The stamps of `paths`, in order.
    pub fn of_paths(paths: &[PathBuf]) -> Stamp {
        Stamp(paths.iter().map(|p| stamp(p)).collect())
    }
}

/// Follows symlinks: a Kubernetes Secret volume swaps a symlink to new files.
fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
}
