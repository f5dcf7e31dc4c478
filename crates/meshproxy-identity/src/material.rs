//! Making identity material: the trust anchor ([`init`]) and a workload's certificate
//! ([`issue`]). Keys are ECDSA P-256; files are written whole (to a temporary name, then renamed)
//! so a proxy reloading them never reads half a file, and keys are readable by their owner only.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::inspect::{read_bundle, Parsed};
use crate::names::{spiffe_id, validate_label, validate_trust_domain};
use crate::{io_error, Error, ANCHOR_CERT, ANCHOR_KEY};

/// How long a trust anchor is valid unless told otherwise: a year.
pub const DEFAULT_ANCHOR_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long a workload certificate is valid unless told otherwise: a day, as Linkerd's are.
pub const DEFAULT_WORKLOAD_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// What [`init`] or [`issue`] wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The SPIFFE ID in the certificate (`spiffe://<td>` for an anchor).
    pub id: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// How many anchors `ca.crt` holds after [`init`] (two during a rotation); 1 for a workload.
    pub bundle: usize,
}

/// What [`init`] does when `dir` already holds a trust anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse ([`Error::Exists`]).
    Refuse,
    /// Replace it: certificates it issued are no longer trusted.
    Replace,
    /// Rotate: the new anchor issues from now on, and `ca.crt` keeps the old anchors that have
    /// not expired beside it, so certificates they issued stay trusted until they are reissued.
    Rotate,
}

fn p256() -> Result<KeyPair, Error> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// A random positive 16-byte serial (RFC 5280 allows up to 20 octets).
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn uri(s: String) -> Result<SanType, Error> {
    let v = Ia5String::try_from(s.clone()).map_err(|e| Error::Invalid {
        what: "SPIFFE ID",
        value: s,
        why: e.to_string(),
    })?;
    Ok(SanType::URI(v))
}

/// When a certificate valid from `now` for `validity` ends: `validity` (named `what` in the
/// error) must be at least `min` and end before the year 9999.
fn after(
    now: OffsetDateTime,
    validity: Duration,
    what: &'static str,
    min: Duration,
) -> Result<OffsetDateTime, Error> {
    let invalid = || Error::Invalid {
        what,
        value: format!("{}s", validity.as_secs()),
        why: if min == Duration::from_secs(60) {
            "it must be at least a minute and end before the year 9999".to_string()
        } else {
            format!("it must be at least {}s and end before the year 9999", min.as_secs())
        },
    };
    if validity < min {
        return Err(invalid());
    }
    let end = time::Duration::try_from(validity).ok().and_then(|d| now.checked_add(d)).ok_or_else(invalid)?;
    if end.year() > 9998 {
        return Err(invalid());
    }
    Ok(end)
}

/// Makes a trust anchor for `trust_domain` in `dir` (created if missing): `ca.key` and `ca.crt`
/// (CN `root.<trust-domain>`, URI SAN `spiffe://<trust-domain>`, a CA that may sign one more
/// level), valid from `now` for `validity`.
pub fn init(
    dir: &Path,
    trust_domain: &str,
    validity: Duration,
    existing: Existing,
    now: OffsetDateTime,
) -> Result<Issued, Error> {
    validate_trust_domain(trust_domain)?;
    let not_after = after(now, validity, "validity", MIN_VALIDITY)?;
    let (cert_path, key_path) = (dir.join(ANCHOR_CERT), dir.join(ANCHOR_KEY));
    let old = match (existing, cert_path.exists() || key_path.exists()) {
        (Existing::Refuse, true) => {
            let path = if cert_path.exists() { cert_path } else { key_path };
            return Err(Error::Exists(path));
        }
        (Existing::Rotate, true) => read_bundle(&cert_path)?,
        _ => Vec::new(),
    };
    fs::create_dir_all(dir).map_err(io_error(dir))?;

    let key = p256()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, format!("root.{trust_domain}"));
    params.distinguished_name.push(DnType::OrganizationName, "meshproxy");
    params.subject_alt_names = vec![uri(format!("spiffe://{trust_domain}"))?];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = now;
    params.not_after = not_after;
    params.serial_number = Some(serial());
    let cert = params.self_signed(&key)?;

    // The new anchor first, then the old ones still valid (a rotation's bundle).
    let mut bundle = cert.pem();
    let mut count = 1;
    for old in old.iter().filter(|c| c.is_ca && c.not_after > now) {
        bundle.push_str(&old.pem);
        count += 1;
    }
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, bundle.as_bytes(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        id: format!("spiffe://{trust_domain}"),
        not_before: now,
        not_after,
        bundle: count,
    })
}

/// Issues the certificate of the workload running as service account `name` in `namespace`,
/// signed by the trust anchor in `dir`: `<name>.<namespace>.crt` and `.key` in `dir`. Its URI SAN
/// is the workload's SPIFFE ID; its DNS SAN `<name>.<namespace>.serviceaccount.identity.<td>`
/// (the form of Linkerd's identities) lets a TLS client that checks DNS names verify it. It is
/// valid from `now` for `validity`, and never past its issuer's expiry.
pub fn issue(
    dir: &Path,
    name: &str,
    namespace: &str,
    validity: Duration,
    now: OffsetDateTime,
) -> Result<Issued, Error> {
    let not_after = after(now, validity, "validity", MIN_VALIDITY)?;
    let made = sign(dir, name, namespace, now, not_after, now)?;
    let base = format!("{name}.{namespace}");
    let (out_cert, out_key) = (dir.join(format!("{base}.crt")), dir.join(format!("{base}.key")));
    write_file(&out_key, made.key_pem.as_bytes(), 0o600)?;
    write_file(&out_cert, made.cert_pem.as_bytes(), 0o644)?;
    Ok(Issued {
        cert: out_cert,
        key: out_key,
        id: made.id,
        not_before: made.not_before,
        not_after: made.not_after,
        bundle: 1,
    })
}

/// A workload certificate and its key, made in memory by [`issue_in_memory`].
pub struct InMemory {
    pub cert_pem: String,
    pub key_pem: String,
    pub id: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for InMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemory")
            .field("id", &self.id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The least validity [`init`] and [`issue`] accept.
const MIN_VALIDITY: Duration = Duration::from_secs(60);

/// The least lifetime [`issue_in_memory`] accepts.
pub const MIN_IN_MEMORY_VALIDITY: Duration = Duration::from_secs(10);

/// How far before `now` a certificate made in memory starts, so peers whose clocks run a little
/// behind accept it at once.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(20);

/// Issues a certificate as [`issue`] does, for a proxy that issues its own: the key and the
/// certificate stay in memory, nothing is written. It expires `validity` after `now` (at least
/// [`MIN_IN_MEMORY_VALIDITY`], never past its issuer's expiry) and starts
/// [`CLOCK_SKEW_ALLOWANCE`] before it.
pub fn issue_in_memory(
    dir: &Path,
    name: &str,
    namespace: &str,
    validity: Duration,
    now: OffsetDateTime,
) -> Result<InMemory, Error> {
    let not_after = after(now, validity, "lifetime", MIN_IN_MEMORY_VALIDITY)?;
    let not_before = now - time::Duration::seconds(CLOCK_SKEW_ALLOWANCE.as_secs() as i64);
    sign(dir, name, namespace, not_before, not_after, now)
}

/// Signs a workload certificate valid from `not_before` to `not_after` (cut at the issuer's
/// expiry) with the anchor in `dir`, checked against `now`.
fn sign(
    dir: &Path,
    name: &str,
    namespace: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<InMemory, Error> {
    validate_label("name", name)?;
    validate_label("namespace", namespace)?;
    let (cert_path, key_path) = (dir.join(ANCHOR_CERT), dir.join(ANCHOR_KEY));
    let key_pem = fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
    let anchor_key = KeyPair::from_pem(&key_pem).map_err(|e| Error::BadMaterial {
        path: key_path.clone(),
        why: format!("not a private key in PEM: {e}"),
    })?;
    let anchors = read_bundle(&cert_path)?;
    let anchor = signing_anchor(&anchors, &anchor_key).ok_or_else(|| Error::BadMaterial {
        path: cert_path.clone(),
        why: format!("no certificate in it matches the key in {ANCHOR_KEY}"),
    })?;
    if anchor.not_after <= now {
        return Err(Error::AnchorExpired { path: cert_path, at: anchor.not_after.to_string() });
    }
    let trust_domain = anchor.trust_domain.clone().ok_or_else(|| Error::BadMaterial {
        path: cert_path.clone(),
        why:
            "the anchor has no spiffe:// URI naming its trust domain (make it with `meshproxy identity init`)"
                .to_string(),
    })?;
    // Certificates keep whole seconds; what is returned is what the certificate says.
    let whole = |t: OffsetDateTime| t.replace_nanosecond(0).unwrap_or(t);
    let not_before = whole(not_before.max(anchor.not_before));
    let not_after = whole(not_after.min(anchor.not_after));
    let issuer = Issuer::from_ca_cert_der(&anchor.der.clone().into(), anchor_key)?;

    let id = spiffe_id(&trust_domain, namespace, name);
    let key = p256()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(DnType::OrganizationalUnitName, namespace);
    let dns = format!("{name}.{namespace}.serviceaccount.identity.{trust_domain}");
    let dns = Ia5String::try_from(dns.clone()).map_err(|e| Error::Invalid {
        what: "DNS name",
        value: dns,
        why: e.to_string(),
    })?;
    params.subject_alt_names = vec![uri(id.clone())?, SanType::DnsName(dns)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(serial());
    let cert = params.signed_by(&key, &issuer)?;
    Ok(InMemory { cert_pem: cert.pem(), key_pem: key.serialize_pem(), id, not_before, not_after })
}

/// The anchor of a bundle whose public key is `key`'s.
fn signing_anchor<'a>(anchors: &'a [Parsed], key: &KeyPair) -> Option<&'a Parsed> {
    anchors.iter().find(|a| a.is_ca && a.public_key == key.public_key_raw())
}

/// Writes `bytes` to `path` whole: to a temporary file beside it (created with `mode`), then
/// renamed over it.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("identity");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Io { path: path.to_path_buf(), source: e });
    }
    Ok(())
}
