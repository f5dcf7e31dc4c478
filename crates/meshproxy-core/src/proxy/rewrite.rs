//! The routed, filtered request in the form its endpoint takes: for an HTTP/1.1 upstream an
//! origin-form target with `Host` (an absolute-form target's authority replaces the client's
//! `Host`, RFC 9112 §3.2.2), for an HTTP/2 upstream an absolute target that `forward::send_h2`
//! sends as `:scheme`/`:authority`; HTTP/1.1 framing either way.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Uri, Version};
use http_body::Body as _;

use crate::error::ProxyError;
use meshproxy_http::body::RequestBody;

/// `has_host`: the head still carries the client's `Host`. `endpoint`: the endpoint's address,
/// the `Host` of a request that named none (HTTP/1.0 allows that; the upstream request is
/// HTTP/1.1, which requires one).
pub(super) fn to_upstream(
    mut head: Parts,
    body: RequestBody,
    has_host: bool,
    endpoint: &str,
    h2: bool,
) -> Result<Request<RequestBody>, ProxyError> {
    head_in_place(&mut head, has_host, endpoint, h2)?;
    Ok(Request::from_parts(head, upstream_body(body)))
}

/// [`to_upstream`]'s rewrite of the head, in place: a request's own head goes to an HTTP/1.1
/// endpoint borrowed (`forward::send_borrowed`), so it is never moved on the way.
pub(super) fn head_in_place(
    head: &mut Parts,
    has_host: bool,
    endpoint: &str,
    h2: bool,
) -> Result<(), ProxyError> {
    let absolute = head.uri.authority().is_some();
    // An HTTP/2 upstream takes the authority as `:authority`, not as a `Host` (`to_h2`).
    if (absolute && !h2) || (!absolute && !has_host) {
        let host = head.uri.authority().map_or(endpoint, |a| a.as_str());
        let host = HeaderValue::from_str(host).map_err(|_| ProxyError::BadRequest)?;
        head.headers.insert(header::HOST, host);
    }
    if absolute && !h2 {
        // Origin form from the parts already parsed (no re-parse, no copy of the path).
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = None;
        uri.authority = None;
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        head.uri = Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest)?;
    }
    head.version = Version::HTTP_11;
    Ok(())
}

/// The body as the upstream request carries it: one that has already ended goes as no body.
pub(super) fn upstream_body(body: RequestBody) -> RequestBody {
    if body.is_end_stream() {
        RequestBody::Empty
    } else {
        body
    }
}

/// The head, moved out of `head` (which keeps an empty one), as a request with `body`: for an
/// HTTP/2 endpoint, which takes the head by value.
pub(super) fn take_request(head: &mut Parts, body: RequestBody) -> Request<RequestBody> {
    let (empty, ()) = Request::new(()).into_parts();
    Request::from_parts(std::mem::replace(head, empty), body)
}
