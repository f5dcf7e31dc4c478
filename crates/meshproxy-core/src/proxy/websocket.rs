//! WebSocket over HTTP/2 (RFC 8441): an HTTP/2 client opens a WebSocket with an extended
//! `CONNECT` (`:protocol websocket`); the upstream gets the HTTP/1.1 handshake (RFC 6455 §4.1) it
//! understands, and the proxy checks the upstream's answer itself, because the HTTP/2 client
//! never sees a `Sec-WebSocket-Key`/`Sec-WebSocket-Accept` pair it could check.
//!
//! Upstreams always get HTTP/1.1 here, `http2` services too (as HTTP/1.1 `Upgrade`s do): whether
//! an h2c peer supports RFC 8441 is only known once its SETTINGS arrive on a connection, so
//! forwarding the extended CONNECT as is would make the upstream protocol depend on which pooled
//! connection a request happened to get.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");

/// RFC 6455 §1.3.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Turns the (already origin-form, hop-by-hop-stripped) upstream request's headers into those
/// of an HTTP/1.1 WebSocket handshake (the method becomes `GET`) and returns the
/// `Sec-WebSocket-Key` they carry. The client's `Sec-WebSocket-Protocol` and `-Extensions` travel
/// as they are.
pub fn to_http1_handshake(headers: &mut HeaderMap) -> HeaderValue {
    let key = HeaderValue::from_str(&BASE64.encode(rand::random::<[u8; 16]>()))
        .expect("base64 text is a valid header value");
    headers.remove(&SEC_WEBSOCKET_ACCEPT);
    headers.insert(SEC_WEBSOCKET_KEY.clone(), key.clone());
    headers.insert(SEC_WEBSOCKET_VERSION.clone(), HeaderValue::from_static("13"));
    super::upgrade::restore(headers, HeaderValue::from_static("websocket"));
    key
}

/// The `Sec-WebSocket-Accept` an upstream must answer `key` with.
fn expected_accept(key: &HeaderValue) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    BASE64.encode(sha.digest().bytes())
}

/// What the upstream's answer to the translated handshake means for the HTTP/2 client.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// 101 with the right accept value: the client gets 200 and the tunnel opens.
    Accepted,
    /// A refusal (3xx, 4xx, 5xx): passed back as it is.
    Refused,
    /// Anything else: a 2xx would open a tunnel to a peer that is not speaking WebSocket, and a
    /// 101 with a wrong accept value is a handshake the client could not have validated.
    Broken,
}

pub fn judge(status: StatusCode, headers: &HeaderMap, key: &HeaderValue) -> Answer {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let upgraded_to_ws =
            headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let accept_ok = headers
            .get(&SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == expected_accept(key).as_bytes());
        return if upgraded_to_ws && accept_ok { Answer::Accepted } else { Answer::Broken };
    }
    if status.is_success() || status.is_informational() {
        Answer::Broken
    } else {
        Answer::Refused
    }
}

/// The 101's headers become the HTTP/2 client's 200 (hop-by-hop ones are already gone): the
/// accept value belongs to the hop the proxy checked, not to the client.
pub fn to_h2_accepted(headers: &mut HeaderMap) {
    headers.remove(&SEC_WEBSOCKET_ACCEPT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_value_matches_rfc_6455_example() {
        // RFC 6455 §1.3's worked example.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(expected_accept(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn handshake_headers_and_fresh_keys() {
        let mut h = HeaderMap::new();
        h.insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        let key = to_http1_handshake(&mut h);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("sec-websocket-version").unwrap(), "13");
        assert_eq!(h.get("sec-websocket-protocol").unwrap(), "chat");
        assert_eq!(BASE64.decode(key.as_bytes()).unwrap().len(), 16);
        let again = to_http1_handshake(&mut h);
        assert_ne!(key, again, "each handshake gets its own key");
    }

    #[test]
    fn judging_the_upstream_answer() {
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("sec-websocket-accept", HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(judge(StatusCode::SWITCHING_PROTOCOLS, &h, &key), Answer::Accepted);
        h.insert("sec-websocket-accept", HeaderValue::from_static("wrong"));
        assert_eq!(judge(StatusCode::SWITCHING_PROTOCOLS, &h, &key), Answer::Broken);
        assert_eq!(judge(StatusCode::OK, &HeaderMap::new(), &key), Answer::Broken);
        assert_eq!(judge(StatusCode::FORBIDDEN, &HeaderMap::new(), &key), Answer::Refused);
    }
}
