//! TLS on listeners: handshakes, their failures by reason and certificate reloads, the requests
//! of each verified mTLS peer identity and their latency, and their Prometheus families (shown
//! only for listeners that have `tls` or `mtls`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{esc, header, Histogram, ListenerMetrics};

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
    /// Requests by the verified identity of the mTLS peer that sent them (`client_id`).
    peers: Mutex<BTreeMap<Arc<str>, Arc<PeerMetrics>>>,
}

/// The distinct peer identities a listener counts apart; the requests of any further ones are
/// counted together under `client_id="other"`, so a mesh of many workloads cannot grow the
/// series without bound.
pub const MAX_PEER_IDS: usize = 256;

/// The label the identities past [`MAX_PEER_IDS`] share.
const OTHER_PEERS: &str = "other";

/// The responses sent to one mTLS peer identity, by status class, and their latency.
#[derive(Debug, Default)]
pub struct PeerMetrics {
    /// Index 0 = 1xx … 4 = 5xx.
    status: [AtomicU64; 5],
    /// Time from request to response headers, as the routes' `meshproxy_response_latency_seconds`.
    latency: Histogram,
}

impl PeerMetrics {
    #[inline]
    pub fn record(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(latency);
    }
}

impl TlsMetrics {
    /// The counters of peer identity `id` (a SPIFFE ID), looked up once per connection.
    pub fn peer(&self, id: &Arc<str>) -> Arc<PeerMetrics> {
        let mut peers = self.peers.lock();
        if let Some(m) = peers.get(id) {
            return m.clone();
        }
        let key = if peers.len() < MAX_PEER_IDS { id.clone() } else { Arc::from(OTHER_PEERS) };
        peers.entry(key).or_default().clone()
    }

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
            "meshproxy_peer_requests_total",
            "counter",
            "Responses sent on mTLS connections, by the listener, the peer's verified identity (SPIFFE ID; `other` past 256 identities) and status class.",
        );
        for (l, m) in &tls {
            for (id, p) in m.tls.peers.lock().iter() {
                for (i, c) in p.status.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "meshproxy_peer_requests_total{{listener=\"{}\",client_id=\"{}\",status_class=\"{}xx\"}} {}",
                        esc(l),
                        esc(id),
                        i + 1,
                        c.load(Ordering::Relaxed)
                    );
                }
            }
        }
        header(
            out,
            "meshproxy_peer_response_latency_seconds",
            "histogram",
            "Time from request to response headers on mTLS connections, by the listener and the peer's verified identity (as meshproxy_peer_requests_total).",
        );
        for (l, m) in &tls {
            for (id, p) in m.tls.peers.lock().iter() {
                let labels = format!("listener=\"{}\",client_id=\"{}\"", esc(l), esc(id));
                p.latency.render(out, "meshproxy_peer_response_latency_seconds", &labels);
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
