//! TLS on listeners: handshakes, their failures by reason and certificate reloads, and their
//! Prometheus families (shown only for listeners that have `tls`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{esc, header, ListenerMetrics};

/// Why a TLS handshake on a listener failed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The client spoke plaintext (its first byte is not a TLS handshake record).
    Plaintext,
    /// No handshake within the listener's header-read timeout.
    Timeout,
    /// No common protocol version, cipher suite or key exchange group (e.g. a TLS 1.1 client).
    Incompatible,
    /// The client ended the handshake with an alert: most often it does not trust the certificate.
    PeerAlert,
    /// The client closed or reset the connection during the handshake.
    Closed,
    /// A malformed or unexpected message.
    Protocol,
    /// mTLS: the client's certificate leads to no trust anchor of this proxy's.
    Untrusted,
    /// mTLS: the client's certificate expired (or is not valid yet).
    Expired,
    /// mTLS: the client sent no certificate.
    NoClientCertificate,
    /// mTLS: the client's certificate is malformed, not for client authentication, or names no
    /// SPIFFE ID.
    BadCertificate,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 10] = [
        TlsFailure::Plaintext,
        TlsFailure::Timeout,
        TlsFailure::Incompatible,
        TlsFailure::PeerAlert,
        TlsFailure::Closed,
        TlsFailure::Protocol,
        TlsFailure::Untrusted,
        TlsFailure::Expired,
        TlsFailure::NoClientCertificate,
        TlsFailure::BadCertificate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::Plaintext => "plaintext",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::PeerAlert => "peer-alert",
            TlsFailure::Closed => "closed",
            TlsFailure::Protocol => "protocol",
            TlsFailure::Untrusted => "untrusted",
            TlsFailure::Expired => "expired",
            TlsFailure::NoClientCertificate => "no-client-certificate",
            TlsFailure::BadCertificate => "bad-certificate",
        }
    }
}

#[derive(Debug, Default)]
pub struct TlsMetrics {
    /// Set while the listener of this name has TLS (the TLS series are shown for it).
    pub enabled: std::sync::atomic::AtomicBool,
    pub handshakes: AtomicU64,
    failures: [AtomicU64; TlsFailure::ALL.len()],
    /// Certificates reloaded from changed files, and changes refused (the old ones kept).
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl TlsMetrics {
    pub fn failed(&self, why: TlsFailure) {
        self.failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failures(&self, why: TlsFailure) -> u64 {
        self.failures[why as usize].load(Ordering::Relaxed)
    }
}

/// The TLS families, for those of `listeners` (name, metrics) that have TLS.
pub(super) fn render<'a>(
    out: &mut String,
    listeners: impl Iterator<Item = (&'a String, &'a Arc<ListenerMetrics>)>,
) {
    let tls: Vec<_> = listeners.filter(|(_, m)| m.tls.enabled.load(Ordering::Relaxed)).collect();
    if !tls.is_empty() {
        header(out, "meshproxy_tls_handshakes_total", "counter", "TLS handshakes completed on the listener.");
        for (l, m) in &tls {
            let _ = writeln!(
                out,
                "meshproxy_tls_handshakes_total{{listener=\"{}\"}} {}",
                esc(l),
                m.tls.handshakes.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "meshproxy_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed on the listener, by reason.",
        );
        for (l, m) in &tls {
            for why in TlsFailure::ALL {
                let _ = writeln!(
                    out,
                    "meshproxy_tls_handshake_failures_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    esc(l),
                    why.as_str(),
                    m.tls.failures(why)
                );
            }
        }
        header(
            out,
            "meshproxy_tls_certificate_reloads_total",
            "counter",
            "Certificate files that changed on disk, by result (failed: the certificates in force stay).",
        );
        for (l, m) in &tls {
            for (result, v) in [("ok", &m.tls.reloads), ("failed", &m.tls.reload_failures)] {
                let _ = writeln!(
                    out,
                    "meshproxy_tls_certificate_reloads_total{{listener=\"{}\",result=\"{result}\"}} {}",
                    esc(l),
                    v.load(Ordering::Relaxed)
                );
            }
        }
    }
}
