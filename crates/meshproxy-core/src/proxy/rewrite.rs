//! The routed, filtered request in the form its endpoint takes: for an HTTP/1.1 upstream an
//! origin-form target with `Host` (an absolute-form target's authority replaces the client's
//! `Host`, RFC 9112 §3.2.2), for an HTTP/2 upstream an absolute target and no `Host`, which
//! `forward::send_h2` sends as `:scheme`/`:authority` (RFC 9113 §8.3.1).

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Uri, Version};
use http_body::Body as _;

use crate::error::ProxyError;
use meshproxy_http::body::RequestBody;

/// `has_host`: the head still carries the client's `Host`. `endpoint`: the endpoint's address,
/// the `Host` of a request that named none (HTTP/1.0 allows that; the upstream request is
/// HTTP/1.1, which requires one). `h2`: `Some(tls)` when the endpoint takes it over HTTP/2,
/// `tls` telling whether over TLS (the `:scheme` of an origin-form target).
pub(super) fn to_upstream(
    mut head: Parts,
    body: RequestBody,
    has_host: bool,
    endpoint: &str,
    h2: Option<bool>,
) -> Result<Request<RequestBody>, ProxyError> {
    head_in_place(&mut head, has_host, endpoint, h2)?;
    Ok(Request::from_parts(head, upstream_body(body)))
}

/// [`to_upstream`]'s rewrite of the head, in place: a request's own head goes to an HTTP/1.1
/// endpoint borrowed (`forward::send_borrowed`), so it is never moved on the way.
///
/// The HTTP/2 form is made here, before the caller adds its own fields (the mesh's
/// `meshproxy-orig-proto`): the `Host` it drops leaves room in the header map, which otherwise
/// grows (a reallocation and a rehash) for those fields and drops `Host` later.
pub(super) fn head_in_place(
    head: &mut Parts,
    has_host: bool,
    endpoint: &str,
    h2: Option<bool>,
) -> Result<(), ProxyError> {
    if let Some(tls) = h2 {
        return to_h2(head, endpoint, tls);
    }
    let absolute = head.uri.authority().is_some();
    if absolute || !has_host {
        let host = head.uri.authority().map_or(endpoint, |a| a.as_str());
        let host = HeaderValue::from_str(host).map_err(|_| ProxyError::BadRequest)?;
        head.headers.insert(header::HOST, host);
    }
    if absolute {
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

/// HTTP/2 carries the target as `:scheme` and `:authority`, not `Host`. A request that came in
/// absolute (HTTP/2, or HTTP/1.1 absolute-form) already has them; an origin-form one gets its
/// `Host` as the authority (the endpoint's address when it named none), and the scheme of the
/// upstream connection (`https` over TLS).
fn to_h2(head: &mut Parts, endpoint: &str, tls: bool) -> Result<(), ProxyError> {
    head.version = Version::HTTP_2;
    let host = head.headers.remove(header::HOST);
    if head.uri.authority().is_some() {
        return Ok(());
    }
    let authority = match &host {
        Some(host) => http::uri::Authority::try_from(host.as_bytes()),
        None => http::uri::Authority::try_from(endpoint),
    };
    let authority = authority.map_err(|_| ProxyError::BadRequest)?;
    let mut parts = std::mem::take(&mut head.uri).into_parts();
    parts.scheme = Some(if tls { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP });
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    head.uri = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str, host: Option<&str>) -> Parts {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(header::HOST, h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn an_h2_request_carries_its_host_as_the_authority_and_no_host_field() {
        let req = to_upstream(
            head("/a?b", Some("api.example:8080")),
            RequestBody::Empty,
            true,
            "10.0.0.1:80",
            Some(true),
        )
        .unwrap();
        assert_eq!(req.uri(), "https://api.example:8080/a?b");
        assert!(req.headers().get(header::HOST).is_none());
        assert_eq!(req.version(), Version::HTTP_2);
        let plain =
            to_upstream(head("/", Some("api.example")), RequestBody::Empty, true, "10.0.0.1:80", Some(false))
                .unwrap();
        assert_eq!(plain.uri(), "http://api.example/");
    }

    #[test]
    fn an_h2_request_without_host_names_the_endpoint_and_an_absolute_one_keeps_its_authority() {
        let req =
            to_upstream(head("/", None), RequestBody::Empty, false, "10.0.0.1:80", Some(false)).unwrap();
        assert_eq!(req.uri(), "http://10.0.0.1:80/");
        let abs = to_upstream(
            head("http://other.example/x", Some("api.example")),
            RequestBody::Empty,
            true,
            "e:1",
            Some(true),
        )
        .unwrap();
        assert_eq!(abs.uri(), "http://other.example/x");
        assert!(abs.headers().get(header::HOST).is_none());
    }

    #[test]
    fn an_invalid_host_is_a_bad_request_for_an_h2_endpoint() {
        let r = to_upstream(head("/", Some("a b")), RequestBody::Empty, true, "e:1", Some(false));
        assert!(matches!(r, Err(ProxyError::BadRequest)));
    }

    #[test]
    fn an_http1_request_gets_origin_form_and_the_authority_as_host() {
        let req = to_upstream(
            head("http://other.example/x", Some("api.example")),
            RequestBody::Empty,
            true,
            "e:1",
            None,
        )
        .unwrap();
        assert_eq!(req.uri(), "/x");
        assert_eq!(req.headers()[header::HOST], "other.example");
        assert_eq!(req.version(), Version::HTTP_11);
    }
}
