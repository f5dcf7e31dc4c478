//! Reading identity material back: what each certificate in an identity directory is, whom it
//! names, until when it is valid, and whether a trust anchor there signed it ([`check`]). It
//! reads expired material as well as valid: saying that something expired is its job.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::KeyPair;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use crate::names::trust_domain_of;
use crate::{io_error, Error, ANCHOR_CERT};

/// One certificate of a PEM file, with what [`check`] and [`crate::issue`] need of it.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    pub pem: String,
    pub der: Vec<u8>,
    pub is_ca: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The subject public key (for an EC key, its point).
    pub public_key: Vec<u8>,
    pub spiffe_id: Option<String>,
    pub trust_domain: Option<String>,
    pub subject: String,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
}

/// Every certificate of the PEM file at `path`, in order.
pub(crate) fn read_bundle(path: &Path) -> Result<Vec<Parsed>, Error> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    let bad = |why: String| Error::BadMaterial { path: path.to_path_buf(), why };
    let mut out = Vec::new();
    for pem in Pem::iter_from_buffer(&bytes) {
        let pem = pem.map_err(|e| bad(format!("not PEM: {e}")))?;
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let x = pem.parse_x509().map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
        let mut spiffe_id = None;
        if let Ok(Some(san)) = x.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(u) = name {
                    if u.starts_with("spiffe://") {
                        spiffe_id = Some(u.to_string());
                    }
                }
            }
        }
        let trust_domain = spiffe_id.as_deref().and_then(trust_domain_of).map(str::to_string);
        out.push(Parsed {
            pem: pem_text(&pem.contents),
            der: pem.contents.clone(),
            is_ca: x.is_ca(),
            not_before: x.validity().not_before.to_datetime(),
            not_after: x.validity().not_after.to_datetime(),
            public_key: x.public_key().subject_public_key.data.to_vec(),
            spiffe_id,
            trust_domain,
            subject: x.subject().to_string(),
            subject_raw: x.subject().as_raw().to_vec(),
            issuer_raw: x.issuer().as_raw().to_vec(),
        });
    }
    if out.is_empty() {
        return Err(bad("it holds no certificate".to_string()));
    }
    Ok(out)
}

fn pem_text(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// What a certificate in an identity directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// In `ca.crt`.
    Anchor,
    /// Any other `.crt` file.
    Workload,
}

/// Whether a certificate can be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Valid,
    /// Valid, but expiring within the threshold [`check`] was given.
    Near,
    Expired,
    NotYetValid,
    /// A workload certificate no anchor in `ca.crt` signed.
    Untrusted,
    /// A workload certificate whose key file holds another key.
    KeyMismatch,
}

impl Standing {
    /// The word `meshproxy identity check` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Valid => "valid",
            Standing::Near => "expires-soon",
            Standing::Expired => "expired",
            Standing::NotYetValid => "not-yet-valid",
            Standing::Untrusted => "untrusted",
            Standing::KeyMismatch => "key-mismatch",
        }
    }
}

/// One certificate as [`check`] sees it.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub path: PathBuf,
    pub role: Role,
    /// The SPIFFE ID in its URI SAN, if any.
    pub id: Option<String>,
    pub subject: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub standing: Standing,
}

/// Every certificate of an identity directory; `ok` when all are [`Standing::Valid`].
#[derive(Debug, Clone)]
pub struct Status {
    pub certificates: Vec<Certificate>,
    pub ok: bool,
}

/// Checks the identity directory `dir` at `now`: each anchor in `ca.crt` and each workload
/// certificate (`*.crt`), its expiry, its signature by an anchor, and its key (`<base>.key`) when
/// that file exists. A certificate counts as expiring soon when less than `within` is left, or
/// without `within`, less than 30 % of its lifetime: a proxy renews its certificate at about
/// 70 %, so one past that point was not renewed.
pub fn check(dir: &Path, within: Option<Duration>, now: OffsetDateTime) -> Result<Status, Error> {
    let anchors_path = dir.join(ANCHOR_CERT);
    if !anchors_path.exists() {
        return Err(Error::BadMaterial {
            path: anchors_path,
            why: "no trust anchor here; make one with `meshproxy identity init`".to_string(),
        });
    }
    let anchors = read_bundle(&anchors_path)?;
    let standing = |c: &Parsed| {
        if now < c.not_before {
            return Standing::NotYetValid;
        }
        if now >= c.not_after {
            return Standing::Expired;
        }
        let left = c.not_after - now;
        let threshold = match within {
            Some(w) => time::Duration::try_from(w).unwrap_or(time::Duration::MAX),
            None => (c.not_after - c.not_before) * 0.3,
        };
        if left < threshold {
            Standing::Near
        } else {
            Standing::Valid
        }
    };
    let mut certificates: Vec<Certificate> = anchors
        .iter()
        .map(|a| Certificate {
            path: anchors_path.clone(),
            role: Role::Anchor,
            id: a.spiffe_id.clone(),
            subject: a.subject.clone(),
            not_before: a.not_before,
            not_after: a.not_after,
            standing: standing(a),
        })
        .collect();

    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt") && p.file_name() != Some(ANCHOR_CERT.as_ref()))
        .collect();
    files.sort();
    for path in files {
        let parsed = read_bundle(&path)?;
        let leaf = &parsed[0];
        let mut s = standing(leaf);
        if s != Standing::Expired && s != Standing::NotYetValid {
            if !signed_by_any(leaf, &anchors) {
                s = Standing::Untrusted;
            } else if key_mismatch(&path.with_extension("key"), leaf)? {
                s = Standing::KeyMismatch;
            }
        }
        certificates.push(Certificate {
            path,
            role: Role::Workload,
            id: leaf.spiffe_id.clone(),
            subject: leaf.subject.clone(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            standing: s,
        });
    }
    let ok = certificates.iter().all(|c| c.standing == Standing::Valid);
    Ok(Status { certificates, ok })
}

/// Whether an anchor of `anchors` named as `leaf`'s issuer signed it.
fn signed_by_any(leaf: &Parsed, anchors: &[Parsed]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&leaf.der) else {
        return false;
    };
    anchors.iter().filter(|a| a.subject_raw == leaf.issuer_raw).any(|a| {
        x509_parser::parse_x509_certificate(&a.der)
            .is_ok_and(|(_, anchor)| cert.verify_signature(Some(anchor.public_key())).is_ok())
    })
}

/// Whether the key file at `path` (when there is one) holds a key other than `leaf`'s.
fn key_mismatch(path: &Path, leaf: &Parsed) -> Result<bool, Error> {
    let Ok(pem) = fs::read_to_string(path) else {
        return Ok(false);
    };
    let key = KeyPair::from_pem(&pem).map_err(|e| Error::BadMaterial {
        path: path.to_path_buf(),
        why: format!("not a private key in PEM: {e}"),
    })?;
    Ok(key.public_key_raw() != leaf.public_key.as_slice())
}
