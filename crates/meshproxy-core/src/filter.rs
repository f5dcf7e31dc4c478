//! Phases 3 and 7: the filters a route applies to each request before a backend is chosen, and
//! to each response before it is sent. They are compiled per route into plain enums (no boxed
//! trait objects, no allocation per request) and run in order; a request filter's [`Verdict`]
//! lets the request continue, answers it at once, or — for the rare filter that must wait for
//! something (a global rate limit, a remote check) — hands back a boxed future to await.
//!
//! Today's filters are the proxy headers (`X-Forwarded-*` and `Via` on requests, `Via` on
//! responses; the listener's `proxyHeaders`). Header rules, rate limits, authorization and policy
//! checks are further variants.

use std::future::Future;
use std::pin::Pin;

use http::header::{self, HeaderValue};
use meshproxy_http::headers::{self, Seen};

use crate::error::ProxyError;

/// What a request filter decides. The pipeline handles every verdict (its tests exercise each);
/// answering now and waiting are for filters that refuse (rate limits, authorization, policy)
/// or must wait (a global rate limit, a remote check), which today's built-in filters never do.
#[cfg_attr(not(test), allow(dead_code))]
pub enum Verdict {
    Continue,
    /// Answer now with this error (the request goes no further).
    Respond(ProxyError),
    /// Decide once this resolves (boxed: only filters that must wait return it).
    Wait(Pin<Box<dyn Future<Output = Verdict> + Send>>),
}

/// A filter on the way in, compiled per route.
#[derive(Debug)]
pub enum RequestFilter {
    /// `X-Forwarded-For` (appended), `X-Forwarded-Proto` and `X-Forwarded-Host` (when absent)
    /// and `Via` (appended).
    ForwardedHeaders,
    /// Waits this long, then continues: exercises the pipeline's waiting path in tests.
    #[cfg(test)]
    Delay(std::time::Duration),
    /// Answers at once: exercises the pipeline's early answer in tests.
    #[cfg(test)]
    Refuse(ProxyError),
}

/// A filter on the way out, compiled per route.
#[derive(Debug)]
pub enum ResponseFilter {
    /// `Via` (appended).
    Via,
}

/// What a request filter may read and change: the request head (hop-by-hop fields already
/// removed), what one scan of its field names found, and the client.
pub struct RequestCx<'a> {
    pub head: &'a mut http::request::Parts,
    pub seen: Seen,
    pub client_ip: &'a HeaderValue,
}

impl RequestFilter {
    fn apply(&self, cx: &mut RequestCx<'_>) -> Verdict {
        match self {
            RequestFilter::ForwardedHeaders => {
                // The host the client asked for: the target's authority, else its `Host`.
                let host = match cx.head.uri.authority() {
                    Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                    None if cx.seen.host => cx.head.headers.get(header::HOST).cloned(),
                    None => None,
                };
                let version = cx.head.version;
                headers::add_forwarded(&mut cx.head.headers, cx.seen, cx.client_ip, host, version);
                Verdict::Continue
            }
            #[cfg(test)]
            RequestFilter::Delay(d) => {
                let d = *d;
                Verdict::Wait(Box::pin(async move {
                    tokio::time::sleep(d).await;
                    Verdict::Continue
                }))
            }
            #[cfg(test)]
            RequestFilter::Refuse(e) => Verdict::Respond(*e),
        }
    }
}

/// Where running a route's request filters stopped.
pub enum Step {
    /// All passed.
    Done,
    Respond(ProxyError),
    /// Await the future, then (if it says continue) run the filters from `resume_at`.
    Wait(Pin<Box<dyn Future<Output = Verdict> + Send>>, usize),
}

/// Runs `filters[from..]` in order until one does not continue.
#[inline]
pub fn run_request(filters: &[RequestFilter], from: usize, cx: &mut RequestCx<'_>) -> Step {
    for (i, f) in filters.iter().enumerate().skip(from) {
        match f.apply(cx) {
            Verdict::Continue => {}
            Verdict::Respond(e) => return Step::Respond(e),
            Verdict::Wait(fut) => return Step::Wait(fut, i + 1),
        }
    }
    Step::Done
}

/// Runs a route's response filters on a response head (hop-by-hop fields already removed).
#[inline]
pub fn run_response(filters: &[ResponseFilter], head: &mut http::response::Parts) {
    for f in filters {
        match f {
            ResponseFilter::Via => {
                let via = headers::via(head.version);
                head.headers.append(header::VIA, via);
            }
        }
    }
}

/// The filters a listener's settings give each of its routes.
pub fn compile(proxy_headers: bool) -> (Box<[RequestFilter]>, Box<[ResponseFilter]>) {
    if proxy_headers {
        (Box::new([RequestFilter::ForwardedHeaders]), Box::new([ResponseFilter::Via]))
    } else {
        (Box::new([]), Box::new([]))
    }
}
