//! Mesh identity and outbound mTLS: the identity certificate's expiry, its reloads, and the
//! handshakes to meshed endpoints that were refused, by service and reason. Shown only when the
//! config has an `identity`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use meshproxy_tls::mesh::{MeshIdentity, PeerFailure};

use super::{esc, header};

pub(crate) fn unix(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

pub fn render(out: &mut String, identity: Option<&MeshIdentity>) {
    let Some(identity) = identity else { return };
    let material = identity.material();
    let info = &material.info;
    header(
        out,
        "meshproxy_identity_certificate_expiry_timestamp_seconds",
        "gauge",
        "When the proxy's mesh identity certificate in force expires (Unix time).",
    );
    let _ = writeln!(
        out,
        "meshproxy_identity_certificate_expiry_timestamp_seconds{{id=\"{}\"}} {}",
        esc(&info.id.spiffe()),
        unix(info.not_after)
    );
    header(
        out,
        "meshproxy_identity_reloads_total",
        "counter",
        "Identity files that changed on disk or were read on a config reload, by result (failed: the identity in force stays).",
    );
    for (result, v) in [("ok", &identity.reloads), ("failed", &identity.reload_failures)] {
        let _ = writeln!(
            out,
            "meshproxy_identity_reloads_total{{result=\"{result}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let failures = identity.all_connect_failures();
    if failures.is_empty() {
        return;
    }
    header(
        out,
        "meshproxy_mtls_connect_failures_total",
        "counter",
        "mTLS handshakes to a meshed service's endpoints that failed, by reason (the request gets 502 upstream-connect).",
    );
    for (service, f) in failures {
        for why in PeerFailure::ALL {
            let _ = writeln!(
                out,
                "meshproxy_mtls_connect_failures_total{{service=\"{}\",reason=\"{}\"}} {}",
                esc(&service),
                why.as_str(),
                f.get(why)
            );
        }
    }
}

/// `/identity`: the proxy's SPIFFE ID, trust domain, certificate validity and serial, the trust
/// anchors, and when the material was last loaded.
pub fn identity_json(identity: Option<&MeshIdentity>) -> serde_json::Value {
    let Some(identity) = identity else {
        return serde_json::json!({ "identity": null });
    };
    let material = identity.material();
    let info = &material.info;
    let iso = |t: SystemTime| httpdate::fmt_http_date(t);
    let source = identity.source();
    serde_json::json!({
        "id": info.id.spiffe(),
        "trustDomain": info.id.trust_domain,
        "name": info.id.name,
        "namespace": info.id.namespace,
        "dir": source.dir.display().to_string(),
        "certificate": {
            "serial": info.serial,
            "notBefore": iso(info.not_before),
            "notAfter": iso(info.not_after),
            "notBeforeUnix": unix(info.not_before),
            "notAfterUnix": unix(info.not_after),
        },
        "anchors": info.anchors.iter().map(|a| serde_json::json!({
            "subject": a.subject,
            "notAfter": iso(a.not_after),
            "notAfterUnix": unix(a.not_after),
        })).collect::<Vec<_>>(),
        "issuer": if source.self_issue.is_some() { "self" } else { "files" },
        "renewsAt": info.renews_at.map(iso),
        "renewsAtUnix": info.renews_at.map(unix),
        "loadedAt": iso(info.loaded_at),
        "loadedAtUnix": unix(info.loaded_at),
        "reloads": identity.reloads.load(Ordering::Relaxed),
        "reloadFailures": identity.reload_failures.load(Ordering::Relaxed),
    })
}
