//! Phases 7 and 8 for a route or service with response policies ([`crate::policy`]): judging a
//! response head, and, for `deny` and `warn` policies that read the body, holding the head while
//! the body is read ahead up to their bound. Routes without response policies pay one test
//! ([`holds`]) and never come here.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::respond::{respond, After};
use super::{ConnCtx, Meta};
use crate::breaker::Admission;
use crate::compile::{Backend, RouteRuntime};
use crate::error::ProxyError;
use crate::policy;
use crate::proxy::admit::Kind;
use crate::proxy::body::ResponseBody;
use crate::proxy::forward;
use crate::upstream::Endpoint;

/// Response policies of `route` or `backend` that must see the body before the head is sent.
#[inline]
pub(super) fn holds(route: &RouteRuntime, backend: &Backend) -> bool {
    route.policies.as_ref().is_some_and(|p| p.holds) || backend.policies.as_ref().is_some_and(|p| p.holds)
}

/// A response's body read ahead for policies that judge it before the head is sent: the frames
/// (to be sent first) and a bounded copy of the data.
pub(super) struct Held {
    pub frames: std::collections::VecDeque<http_body::Frame<bytes::Bytes>>,
    pub body: policy::Body,
}

/// [`respond`] after reading the upstream body ahead, up to the largest bound of the policies
/// that hold the head (or its end, or the route's timeout): they judge it whole, or marked
/// truncated. What was read is sent first; the rest streams.
pub(super) async fn respond_held(
    ctx: &ConnCtx,
    meta: &Meta<'_>,
    route: &RouteRuntime,
    target: (&Arc<Backend>, &Arc<Endpoint>),
    after: After,
    mut result: Result<(forward::Sent, Admission), ProxyError>,
) -> Response<ResponseBody> {
    let (backend, endpoint) = target;
    let held = match &mut result {
        Ok(((resp, _, _), _)) if matches!(after.kind, Kind::Plain) && !resp.body().is_end_stream() => {
            let max = [route.policies.as_deref(), backend.policies.as_deref()]
                .into_iter()
                .flatten()
                .map(|l| l.hold_bytes)
                .max()
                .unwrap_or(0);
            let mut held = Held { frames: std::collections::VecDeque::new(), body: policy::Body::default() };
            let read = async {
                while let Some(frame) = std::future::poll_fn(|cx| resp.body_mut().poll_frame(cx)).await {
                    let frame = frame.map_err(|_| ProxyError::UpstreamReset)?;
                    if let Some(d) = frame.data_ref() {
                        held.body.push(d, max);
                    }
                    held.frames.push_back(frame);
                    if held.body.truncated {
                        break;
                    }
                }
                Ok::<_, ProxyError>(())
            };
            let read = match route.response_header_timeout {
                // Out of time: judged with what came, the body marked truncated.
                Some(t) => tokio::time::timeout(t, read).await.unwrap_or(Ok(())),
                None => read.await,
            };
            if let Err(e) = read {
                return meta.fail(e, Some(route), Some((backend, endpoint)), after.activity);
            }
            if !resp.body().is_end_stream() && !held.body.truncated {
                held.body.truncated = true;
                held.body.bytes = bytes::BytesMut::new();
            }
            Some(held)
        }
        _ => None,
    };
    respond(ctx, meta, route, target, after, result, held)
}

/// What the response policies of a route and its backend made of a response head.
pub(super) struct HeadJudged {
    pub verdicts: policy::Verdicts,
    /// `classify` policies read the body, still to come: a [`BodyCheck`] judges it at its end.
    pub copies: bool,
}

/// Judges a response head with the route's and the backend's policies: those that do not read
/// the body, or all of them when the body is known (`held`, or `ended` empty).
#[inline(never)]
pub(super) fn judge_head(
    route: &RouteRuntime,
    backend: &Backend,
    request: Option<&meshproxy_policy::Value>,
    status: StatusCode,
    headers: &http::HeaderMap,
    ended: bool,
    held: Option<&Held>,
) -> HeadJudged {
    let lists = [route.policies.as_deref(), backend.policies.as_deref()];
    let empty = policy::Body::default();
    let known = held.map(|h| &h.body).or((ended && held.is_none()).then_some(&empty));
    let verdicts = policy::judge(
        lists.into_iter().flatten(),
        |p| !p.reads_body || known.is_some(),
        || policy::response_input(request, status.as_u16(), headers, known),
    );
    let copies = known.is_none() && lists.into_iter().flatten().any(|l| l.copies);
    HeadJudged { verdicts, copies }
}
