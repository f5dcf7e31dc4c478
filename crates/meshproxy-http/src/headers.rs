//! Proxy header semantics: hop-by-hop headers removed both ways (RFC 9110 §7.6.1, including
//! those the `Connection` header names; `TE: trailers` passes), and `x-forwarded-*` and `via`
//! added. `Host` is passed through untouched.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// `Trailer` is not hop-by-hop (RFC 9110 §6.6.2): it announces the trailer fields, and HTTP/1.1
// encoders need it to send them on. The order is the bit order of `strip_hop_by_hop`'s scan.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `Via` names the protocol version the message was received with (RFC 9110 §7.6.3).
pub fn via(version: http::Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        http::Version::HTTP_2 => "2 meshproxy",
        http::Version::HTTP_10 => "1.0 meshproxy",
        _ => "1.1 meshproxy",
    })
}
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Which names of interest one pass over a message's header names found. Standard names compare
/// as enum tags, so the pass is cheaper than a hashed lookup per name: most messages carry none of
/// the hop-by-hop ones, and a blind `remove` per candidate would hash each name twice a
/// request.
#[derive(Clone, Copy, Default)]
pub struct Seen {
    /// Bit i: `HOP_BY_HOP[i]` is present.
    hop: u8,
    te: bool,
    pub host: bool,
    pub expect: bool,
    xff: bool,
    xfp: bool,
    xfh: bool,
}

pub fn scan(headers: &HeaderMap) -> Seen {
    let mut seen = Seen::default();
    for name in headers.keys() {
        // A match on the lowercase name compiles to a length switch and at most one compare.
        match name.as_str() {
            "connection" => seen.hop |= 1,
            "keep-alive" => seen.hop |= 1 << 1,
            "proxy-connection" => seen.hop |= 1 << 2,
            "proxy-authenticate" => seen.hop |= 1 << 3,
            "transfer-encoding" => seen.hop |= 1 << 4,
            "upgrade" => seen.hop |= 1 << 5,
            "te" => seen.te = true,
            "host" => seen.host = true,
            "expect" => seen.expect = true,
            "x-forwarded-for" => seen.xff = true,
            "x-forwarded-proto" => seen.xfp = true,
            "x-forwarded-host" => seen.xfh = true,
            _ => {}
        }
    }
    seen
}

/// Removes hop-by-hop headers. `TE` is kept only as `trailers` (the one value a proxy may pass).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let seen = scan(headers);
    strip_seen(headers, seen);
}

/// `strip_hop_by_hop` after a `scan`. Returns what is left of `seen` for the other names (a
/// `Connection` header may name any header, so after one the names are scanned again); the
/// hop-by-hop bits and `te` are left clear.
pub fn strip_seen(headers: &mut HeaderMap, seen: Seen) -> Seen {
    if seen.hop == 0 && !seen.te {
        return seen;
    }
    if seen.hop & 1 != 0 {
        strip_connection_listed(headers);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if seen.hop & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if seen.te {
        let trailers = headers
            .get(header::TE)
            .and_then(|te| te.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
    let left = if seen.hop & 1 != 0 { scan(headers) } else { seen };
    Seen { hop: 0, te: false, ..left }
}

/// The headers `Connection` names are hop-by-hop too (`Connection: keep-alive, X-Secret`);
/// `TE` is left to the caller's `trailers` rule.
fn strip_connection_listed(headers: &mut HeaderMap) {
    let Some(conn) = headers.get(header::CONNECTION).cloned() else { return };
    let Ok(list) = conn.to_str() else { return };
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        // The common values name headers already handled or absent: no lowercase copy for them.
        if name.eq_ignore_ascii_case("keep-alive") || name.eq_ignore_ascii_case("close") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
            if name != header::TE {
                headers.remove(&name);
            }
        }
    }
}

/// Adds `x-forwarded-for` (appended), `x-forwarded-proto` and `x-forwarded-host` (set when the
/// client did not send them) and `via` (appended) to a request going upstream. `seen` is a
/// `scan` of `headers` as they are now; `host` is the request's host, for `x-forwarded-host`;
/// `tls`: the client connected over TLS (`x-forwarded-proto: https`).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    seen: Seen,
    client_ip: &HeaderValue,
    host: Option<HeaderValue>,
    version: http::Version,
    tls: bool,
) {
    let prev = if seen.xff { headers.get(&X_FORWARDED_FOR) } else { None };
    match prev {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client_ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), client_ip.clone());
        }
    }
    if !seen.xfp {
        headers.insert(X_FORWARDED_PROTO.clone(), if tls { HTTPS.clone() } else { HTTP.clone() });
    }
    if !seen.xfh {
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
    headers.append(header::VIA, via(version));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, X-Secret, te"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("gzip, trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(
            h.get("x-secret").is_none() && h.get("connection").is_none() && h.get("keep-alive").is_none()
        );
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("api.example.com"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let host = h.get("host").cloned();
        let seen = scan(&h);
        add_forwarded(
            &mut h,
            seen,
            &HeaderValue::from_static("127.0.0.1"),
            host,
            http::Version::HTTP_11,
            false,
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "api.example.com");
        assert_eq!(h.get("via").unwrap(), "1.1 meshproxy");
    }

    #[test]
    fn a_forwarded_header_named_by_connection_is_replaced_not_appended_to() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-forwarded-for"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let seen = scan(&h);
        let seen = strip_seen(&mut h, seen);
        add_forwarded(
            &mut h,
            seen,
            &HeaderValue::from_static("127.0.0.1"),
            None,
            http::Version::HTTP_2,
            false,
        );
        assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.1");
        assert!(h.get("x-forwarded-host").is_none() && h.get("connection").is_none());
        assert_eq!(h.get("via").unwrap(), "2 meshproxy");
    }
}

/// Property tests over hop-by-hop stripping (the project's fuzz target for header handling):
/// whatever fields and `Connection` lists a peer sends, none of the hop-by-hop fields, and none
/// that `Connection` names, go on; `TE` goes on only as `trailers`; every other field is kept.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("connection".to_string()),
            Just("keep-alive".to_string()),
            Just("proxy-connection".to_string()),
            Just("transfer-encoding".to_string()),
            Just("upgrade".to_string()),
            Just("te".to_string()),
            Just("x-forwarded-for".to_string()),
            "x-[a-c]{1,2}",
        ]
    }

    fn value(names: Vec<String>) -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::subsequence(names, 0..4).prop_map(|n| n.join(", ")),
            Just("trailers, deflate".to_string()),
            Just("close".to_string()),
            "[ -~]{0,20}",
        ]
    }

    fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
        let pool: Vec<String> =
            ["keep-alive", "close", "te", "x-a", "x-b", "X-C", "upgrade", "x-forwarded-for"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        proptest::collection::vec((name(), value(pool)), 0..10)
    }

    proptest! {
        #[test]
        fn no_hop_by_hop_field_survives_stripping(fields in fields()) {
            let mut headers = HeaderMap::new();
            for (n, v) in &fields {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v)) {
                    headers.append(n, v);
                }
            }
            let before = headers.clone();
            let listed: Vec<String> = before
                .get_all(header::CONNECTION)
                .iter()
                .take(1)
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()).collect::<Vec<_>>())
                .collect();
            strip_hop_by_hop(&mut headers);
            for h in HOP_BY_HOP.iter() {
                prop_assert!(!headers.contains_key(h), "{h} survived");
            }
            for n in &listed {
                if n != "te" && !n.is_empty() {
                    prop_assert!(!headers.contains_key(n.as_str()), "{n}, named by Connection, survived");
                }
            }
            if let Some(te) = headers.get(header::TE) {
                prop_assert_eq!(te, "trailers");
                prop_assert_eq!(headers.get_all(header::TE).iter().count(), 1);
            }
            for (n, v) in before.iter() {
                let hop = HOP_BY_HOP.contains(n) || n == header::TE || listed.iter().any(|l| l == n.as_str());
                if !hop {
                    prop_assert!(headers.get_all(n).iter().any(|x| x == v), "{n} was lost");
                }
            }
        }
    }
}
