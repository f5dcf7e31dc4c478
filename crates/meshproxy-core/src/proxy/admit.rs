//! Phase 1, admit: what the request is (plain, an upgrade, a `CONNECT`, gRPC), and whether it is
//! well-formed enough to route. A malformed request gets 400 here and never reaches a route, a
//! filter or an endpoint.

use http::header::{self, HeaderValue};
use http::{Method, Request, Uri, Version};

use super::upgrade;
use crate::metrics::Protocol;
use meshproxy_http::body::RequestBody;

/// What a request asks of the proxy beyond forwarding it.
pub(super) enum Kind {
    Plain,
    /// HTTP/1.1 `Upgrade`, with its token.
    Upgrade(HeaderValue),
    /// HTTP/2 extended CONNECT for a WebSocket (RFC 8441).
    WebSocketH2,
    /// `CONNECT` to an authority: a TCP tunnel if a route allows it.
    Connect,
    /// Extended CONNECT for a protocol other than WebSocket, which the proxy cannot translate.
    OtherProtocol,
}

pub(super) fn classify(req: &Request<RequestBody>) -> Kind {
    if req.method() == Method::CONNECT {
        return match req.extensions().get::<h2::ext::Protocol>() {
            None => Kind::Connect,
            Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => Kind::WebSocketH2,
            Some(_) => Kind::OtherProtocol,
        };
    }
    match upgrade::requested(req.version(), req.headers()) {
        Some(token) => Kind::Upgrade(token),
        None => Kind::Plain,
    }
}

pub(super) fn is_grpc(req: &Request<RequestBody>) -> bool {
    req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The protocol a request is counted under.
pub(super) fn protocol(req: &Request<RequestBody>, kind: &Kind, grpc: bool) -> Protocol {
    if grpc {
        Protocol::Grpc
    } else if matches!(kind, Kind::Upgrade(_) | Kind::WebSocketH2) {
        Protocol::Ws
    } else if req.version() == Version::HTTP_2 {
        Protocol::H2
    } else {
        Protocol::Http1
    }
}

/// The host a request is routed on: the target's authority when it has one (absolute form, and
/// every HTTP/2 request), else its one `Host` field. `Err` for a malformed request, which gets
/// 400 and is never forwarded (RFC 9112 §3.2): an HTTP/1.1 request with neither, more than one
/// `Host` field line, or an invalid `Host` value; and an HTTP/2 request whose `Host` names another
/// authority than `:authority` (RFC 9113 §8.3.1), since the proxy routes on one and a backend
/// might route on the other. An HTTP/1.1 absolute-form target wins over a differing `Host`, which
/// the upstream request replaces (RFC 9112 §3.2.2, see `rewrite`).
///
/// The request-smuggling shapes of the body framing are handled by hyper's parser before we see
/// the request: `Transfer-Encoding` with `Content-Length` drops the latter (the body is framed by
/// chunks, as §6.3 requires of an intermediary), conflicting `Content-Length`s and a non-chunked
/// final coding are 400s.
pub(super) fn request_host(req: &Request<RequestBody>) -> Result<Option<&str>, ()> {
    let mut fields = req.headers().get_all(header::HOST).into_iter();
    let host = fields.next();
    if fields.next().is_some() {
        return Err(());
    }
    let host = match host {
        Some(h) if valid_host(h.as_bytes()) => Some(h),
        Some(_) => return Err(()),
        None => None,
    };
    match (req.uri().authority(), host) {
        (Some(a), Some(h)) if req.version() == Version::HTTP_2 => {
            if h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
                Ok(Some(a.as_str()))
            } else {
                Err(())
            }
        }
        (Some(a), _) => Ok(Some(a.as_str())),
        // Checked by `valid_host`: visible ASCII only.
        (None, Some(h)) => Ok(h.to_str().ok().filter(|h| !h.is_empty())),
        (None, None) if req.version() == Version::HTTP_11 => Err(()),
        (None, None) => Ok(None),
    }
}

/// The request target with its path normalized as routes match it (dot segments resolved, empty
/// segments collapsed; the query kept), when that changes it: the upstream gets the path the
/// routes and rules matched, so a backend never resolves `/public/../admin` into a resource the
/// proxy did not route or authorize (as Envoy's `normalize_path` and HAProxy's `normalize-uri`
/// forward it). `None` for a normal path: one byte scan, nothing built.
pub(super) fn normalized_uri(uri: &http::Uri) -> Option<http::Uri> {
    let path = meshproxy_route::path::normalized(uri.path())?;
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::try_from(target).ok()?);
    http::Uri::from_parts(parts).ok()
}

/// A `Host` value as RFC 9110 §7.2 allows it: `uri-host [ ":" port ]`, where a host is a
/// registered name or IPv4 address (unreserved, percent-encoded and sub-delims characters) or a
/// bracketed IP literal, and a port is digits; empty when the target has no authority. Anything
/// else (spaces, `/`, `@` userinfo, `?`, `#`, controls, non-ASCII, a second `:`) could be read
/// differently by the backend.
fn valid_host(v: &[u8]) -> bool {
    const fn reg_name() -> [bool; 256] {
        let mut t = [false; 256];
        let allowed = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+,;=";
        let mut i = 0;
        while i < allowed.len() {
            t[allowed[i] as usize] = true;
            i += 1;
        }
        t
    }
    static REG_NAME: [bool; 256] = reg_name();
    let port = |p: &[u8]| p.iter().all(u8::is_ascii_digit);
    if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else { return false };
        let literal = v[1..end].iter().all(|&b| REG_NAME[b as usize] || b == b':');
        return literal
            && match &v[end + 1..] {
                [] => true,
                [b':', p @ ..] => port(p),
                _ => false,
            };
    }
    // One pass: the name, then at the first `:` the port.
    for (i, &b) in v.iter().enumerate() {
        if !REG_NAME[b as usize] {
            return b == b':' && port(&v[i + 1..]);
        }
    }
    true
}

/// The length of the request target as `Uri`'s `Display` writes it, without writing it: HTTP/2
/// requests are absolute, and formatting each one to a `String` would be a measurable share of
/// the hot path.
pub(super) fn uri_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + "://".len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let query = uri.query().map_or(0, |q| q.len() + 1);
    scheme + authority + uri.path().len() + query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_as_rfc_9110_allows_them() {
        for ok in
            ["", "example.com", "Example.COM:8080", "a-b_c~d%20", "127.0.0.1:80", "[::1]", "[::1]:443", "h:"]
        {
            assert!(valid_host(ok.as_bytes()), "{ok:?} is valid");
        }
        for bad in [
            "a b",
            "a/b",
            "user@host",
            "host?x",
            "host#x",
            "a:b:c",
            "host:http",
            "[::1",
            "[::1]x",
            "x[::1]",
            "host\t",
            "h\u{e9}",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} is invalid");
        }
    }

    #[test]
    fn uri_len_is_the_displayed_length() {
        for s in [
            "/",
            "/a/b?x=1&y",
            "http://example.com",
            "http://example.com/",
            "https://example.com:8443/p?q",
            "example.com:443",
            "*",
            "http://[::1]:80/x?",
        ] {
            let uri: Uri = s.parse().unwrap();
            assert_eq!(uri_len(&uri), uri.to_string().len(), "{s}");
        }
    }
}
