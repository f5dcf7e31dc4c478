//! Mesh identity material: a trust anchor (a CA key and certificate) and the short-lived
//! workload certificates it issues, each naming one workload by a SPIFFE ID
//! (`spiffe://<trust-domain>/ns/<namespace>/sa/<name>`), as Linkerd's identity does without its
//! control plane. Everything is made here in Rust (rcgen, ECDSA P-256), never by a shell-out.
//!
//! Files in an identity directory:
//! - `ca.crt`: the trust anchors, a PEM bundle (one certificate, or two during an anchor
//!   rotation); `ca.key`: the key of the anchor that issues (mode 0600).
//! - `<name>.<namespace>.crt` / `.key`: a workload's certificate and key.
//!
//! Who uses it: the `meshproxy identity` CLI (through the N-API binding) and, for mTLS, the TLS
//! side (which reads the files). What it must not know: connections, the proxy, its config.

#![forbid(unsafe_code)]

mod inspect;
mod material;
mod names;

pub use inspect::{check, Certificate, Role, Standing, Status};
pub use material::{
    init, issue, issue_in_memory, Existing, InMemory, Issued, CLOCK_SKEW_ALLOWANCE, DEFAULT_ANCHOR_VALIDITY,
    DEFAULT_WORKLOAD_VALIDITY, MIN_IN_MEMORY_VALIDITY,
};
pub use names::{spiffe_id, trust_domain_of, validate_label, validate_trust_domain};

use std::path::PathBuf;

/// The anchor's certificate bundle in an identity directory.
pub const ANCHOR_CERT: &str = "ca.crt";
/// The issuing anchor's key in an identity directory.
pub const ANCHOR_KEY: &str = "ca.key";

/// Why identity material could not be made or read. [`Error::code`] is the stable code the
/// binding reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {value:?} is not valid: {why}")]
    Invalid { what: &'static str, value: String, why: String },
    #[error("{} already exists (pass --force to replace the trust anchor)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {why}", .path.display())]
    BadMaterial { path: PathBuf, why: String },
    #[error("the trust anchor in {} expired at {at}; make a new one with `meshproxy identity init`", .path.display())]
    AnchorExpired { path: PathBuf, at: String },
    #[error("making the certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
}

impl Error {
    /// The stable code of this error (`MESHPROXY_IDENTITY_*`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid { .. } => "MESHPROXY_IDENTITY_INVALID",
            Error::Exists(_) => "MESHPROXY_IDENTITY_EXISTS",
            Error::Io { .. } => "MESHPROXY_IDENTITY_IO",
            Error::BadMaterial { .. } => "MESHPROXY_IDENTITY_BAD_MATERIAL",
            Error::AnchorExpired { .. } => "MESHPROXY_IDENTITY_ANCHOR_EXPIRED",
            Error::Generate(_) => "MESHPROXY_INTERNAL",
        }
    }
}

fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests;
