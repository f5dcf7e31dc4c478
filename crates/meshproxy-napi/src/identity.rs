//! `meshproxy identity`'s native half: makes and checks identity material with
//! [`meshproxy_identity`], on a blocking thread (key generation and file IO), so Node's event loop
//! never waits on it. Times cross as milliseconds since the epoch (a JavaScript `Date`'s value).

use std::path::PathBuf;
use std::time::Duration;

use meshproxy_identity::{Existing, Issued, Role};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use time::OffsetDateTime;

use super::{coded, internal};

fn ms(t: OffsetDateTime) -> f64 {
    (t.unix_timestamp_nanos() / 1_000_000) as f64
}

fn seconds(what: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| coded("MESHPROXY_IDENTITY_INVALID", format!("{what} {s} is not a duration")))
}

fn identity_error(e: meshproxy_identity::Error) -> napi::Error {
    coded(e.code(), e)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, meshproxy_identity::Error> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?.map_err(identity_error)
}

/// Identity material just written.
#[napi(object)]
pub struct BindingIssued {
    pub cert: String,
    pub key: String,
    /// The SPIFFE ID it names.
    pub id: String,
    pub not_before_ms: f64,
    pub not_after_ms: f64,
    /// How many anchors `ca.crt` holds (two during a rotation); 1 for a workload certificate.
    pub bundle: u32,
}

impl From<Issued> for BindingIssued {
    fn from(i: Issued) -> Self {
        BindingIssued {
            cert: i.cert.display().to_string(),
            key: i.key.display().to_string(),
            id: i.id,
            not_before_ms: ms(i.not_before),
            not_after_ms: ms(i.not_after),
            bundle: i.bundle as u32,
        }
    }
}

/// Makes a trust anchor in `dir`. `existing`: `refuse`, `replace` or `rotate` (see
/// `meshproxy_identity::Existing`).
#[napi]
pub async fn identity_init(
    dir: String,
    trust_domain: String,
    validity_seconds: f64,
    existing: String,
) -> Result<BindingIssued> {
    let validity = seconds("validity", validity_seconds)?;
    let existing = match existing.as_str() {
        "refuse" => Existing::Refuse,
        "replace" => Existing::Replace,
        "rotate" => Existing::Rotate,
        other => return Err(coded("MESHPROXY_IDENTITY_INVALID", format!("unknown mode {other:?}"))),
    };
    let issued = blocking(move || {
        meshproxy_identity::init(
            &PathBuf::from(dir),
            &trust_domain,
            validity,
            existing,
            OffsetDateTime::now_utc(),
        )
    })
    .await?;
    Ok(issued.into())
}

/// Issues the workload certificate of service account `name` in `namespace` from the anchor in `dir`.
#[napi]
pub async fn identity_issue(
    dir: String,
    name: String,
    namespace: String,
    validity_seconds: f64,
) -> Result<BindingIssued> {
    let validity = seconds("validity", validity_seconds)?;
    let issued = blocking(move || {
        meshproxy_identity::issue(&PathBuf::from(dir), &name, &namespace, validity, OffsetDateTime::now_utc())
    })
    .await?;
    Ok(issued.into())
}

/// One certificate of an identity directory, as `meshproxy identity check` shows it.
#[napi(object)]
pub struct BindingIdentityCertificate {
    pub path: String,
    /// `anchor` or `workload`.
    pub role: String,
    pub id: Option<String>,
    pub subject: String,
    pub not_before_ms: f64,
    pub not_after_ms: f64,
    /// `valid`, `expires-soon`, `expired`, `not-yet-valid`, `untrusted` or `key-mismatch`.
    pub standing: String,
}

#[napi(object)]
pub struct BindingIdentityStatus {
    pub certificates: Vec<BindingIdentityCertificate>,
    /// Every certificate is valid and not near its expiry.
    pub ok: bool,
    pub checked_at_ms: f64,
}

/// Checks the identity material in `dir`; `within_seconds`: how close to expiry counts as near
/// (default: less than 30 % of a certificate's lifetime left).
#[napi]
pub async fn identity_check(dir: String, within_seconds: Option<f64>) -> Result<BindingIdentityStatus> {
    let within = within_seconds.map(|s| seconds("within", s)).transpose()?;
    let now = OffsetDateTime::now_utc();
    let status = blocking(move || meshproxy_identity::check(&PathBuf::from(dir), within, now)).await?;
    Ok(BindingIdentityStatus {
        certificates: status
            .certificates
            .into_iter()
            .map(|c| BindingIdentityCertificate {
                path: c.path.display().to_string(),
                role: match c.role {
                    Role::Anchor => "anchor".to_string(),
                    Role::Workload => "workload".to_string(),
                },
                id: c.id,
                subject: c.subject,
                not_before_ms: ms(c.not_before),
                not_after_ms: ms(c.not_after),
                standing: c.standing.as_str().to_string(),
            })
            .collect(),
        ok: status.ok,
        checked_at_ms: ms(now),
    })
}
