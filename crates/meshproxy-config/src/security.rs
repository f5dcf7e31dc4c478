//! The config's secure transport and its secrets: a listener's TLS certificates, TLS to a
//! service's endpoints, this proxy's mesh identity and listeners' mTLS, and how secrets (private
//! keys, passwords in URLs) are written out (`/config` shows the model).

use serde::{Deserialize, Serialize};

/// Where this proxy's mesh identity is: `<dir>/ca.crt` (the trust anchors) and
/// `<dir>/<name>.<namespace>.crt` / `.key` (its workload certificate), or, with `self_issue`,
/// the anchor's key `<dir>/ca.key` the proxy issues its own certificate with. `dir` is as
/// resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityConfig {
    pub dir: String,
    pub name: String,
    pub namespace: String,
    /// The proxy issues its own certificate (key in memory), renewed at 65–75 % of `lifetime_ms`.
    pub self_issue: bool,
    /// The lifetime of the certificates the proxy issues itself.
    pub lifetime_ms: u64,
}

/// Mesh mTLS on a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// No mTLS.
    #[default]
    Off,
    /// Every connection is mTLS with a client certificate from the trust anchors.
    Required,
    /// A connection that starts with a TLS handshake is mTLS; other ones are plaintext.
    Permissive,
}

/// A TLS listener's certificates; SNI picks one per connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    pub certificates: Vec<TlsCertificateConfig>,
}

/// One certificate chain and its private key, from PEM files (`cert`, `key`) or inline PEM
/// (`certPem`, `keyPem`, from a Kubernetes Secret), and the host names it serves (none: the
/// default certificate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificateConfig {
    /// The certificate chain's PEM file, as resolved; None when `cert_pem` is given.
    #[serde(default)]
    pub cert: Option<String>,
    /// The private key's PEM file, as resolved; None when `key_pem` is given.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub cert_pem: Option<String>,
    /// Written out as `<redacted>` (the admin `/config` shows the model).
    #[serde(default, serialize_with = "redacted")]
    pub key_pem: Option<String>,
    /// What inline PEM is named by in errors (`Secret default/web-tls`); empty for files.
    #[serde(default)]
    pub origin: String,
    pub hosts: Vec<String>,
}

pub(crate) fn redacted<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some("<redacted>"),
        None => s.serialize_none(),
    }
}

pub(crate) fn redacted_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_some(&redact_url(url)),
        None => s.serialize_none(),
    }
}

/// `url` with the password of its user info as `***` (`redis://user:***@host`, `redis://:***@host`;
/// user info without a `:` is hidden whole), for logs and `/config`.
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme) = url.find("://").map(|i| i + 3) else { return url.into() };
    // The authority ends at the first `/`, `?` or `#`; its user info at its last `@`.
    let end = url[scheme..].find(['/', '?', '#']).map_or(url.len(), |i| scheme + i);
    let Some(at) = url[scheme..end].rfind('@').map(|i| scheme + i) else { return url.into() };
    let keep = url[scheme..at].find(':').map_or(scheme, |i| scheme + i + 1);
    format!("{}***{}", &url[..keep], &url[at..]).into()
}

/// TLS origination to a service's endpoints. Paths are as the loader resolved them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The name sent as SNI and verified; none = each endpoint's host.
    pub server_name: Option<String>,
    /// A PEM bundle of trusted CA certificates; none = the system roots.
    pub ca: Option<String>,
    /// A PEM client certificate chain, presented with `key`.
    pub cert: Option<String>,
    /// The PEM private key of `cert`.
    pub key: Option<String>,
}
