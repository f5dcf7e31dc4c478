//! The response body sent downstream: an upstream's body, holding what it releases when it
//! ends (its in-flight slot, its HTTP/2 stream slot), or a short body the proxy made itself.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::activity::ActivityGuard;
use crate::breaker::Admission;
use crate::metrics::{parse_grpc_status, RouteMetrics};
use crate::policy::BodyCheck;
use crate::proxy::idle::{self, BodyIdle, IdleClock};
use crate::proxy::outcome::BodyVerdict;
use crate::upstream::UpstreamIncoming;
use meshproxy_http::upstream_body::BodyError;
use meshproxy_upstream::pool::multiplexed::StreamSlot;

/// What is given back, by being dropped, as soon as the response has ended (or is dropped): the
/// endpoint's in-flight slot (and the service's, under a circuit breaker) and, for HTTP/2, the
/// stream slot on the shared connection (an HTTP/1.1 connection goes back to its pool with its
/// body, `meshproxy_http::h1::H1Body`).
pub struct Release {
    /// Held, not read: dropping them gives the slots back.
    pub _stream: Option<StreamSlot>,
    pub _slots: Admission,
}

// Upstream is the common variant: boxing it to shrink the rare local one would cost an
// allocation per response.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Local(Option<Bytes>),
    /// Frames read ahead (a policy held the head for them), then the rest of the body.
    Replay(Box<Replay>),
    Upstream {
        body: UpstreamIncoming,
        release: Option<Release>,
        /// For gRPC responses: where the `grpc-status` trailer is counted.
        grpc: Option<Arc<RouteMetrics>>,
        /// What watches the body to its end, when anything does ([`Watch`]); most responses
        /// have nothing, and their frames take the short path.
        watch: Option<Box<Watch>>,
    },
}

/// What a response body is watched for, frame by frame: the endpoint's verdict, given when the
/// body ends (see [`BodyVerdict`]), the route's idle timer ([`crate::proxy::idle`]), and
/// policies judging the body at its end, on a bounded copy ([`BodyCheck`]).
#[derive(Default)]
struct Watch {
    verdict: Option<BodyVerdict>,
    idle: Option<Pin<Box<BodyIdle>>>,
    check: Option<Box<BodyCheck>>,
}

impl Watch {
    /// A frame came: its data to the policies' copy; at trailers (`status`: their
    /// `grpc-status`) or the body's end, the verdicts.
    #[cold]
    fn frame(&mut self, frame: &Frame<Bytes>, status: Option<&http::HeaderValue>, ended: bool) {
        if let (Some(c), Some(data)) = (self.check.as_deref_mut(), frame.data_ref()) {
            c.data(data);
        }
        if status.is_some() || ended {
            let code = status.and_then(|c| parse_grpc_status(c.as_bytes()));
            end_verdict(&mut self.verdict, &mut self.check, code, false);
        }
    }
}

/// A body's frames read ahead, sent first.
pub struct Replay {
    pub frames: std::collections::VecDeque<Frame<Bytes>>,
    pub rest: ResponseBody,
}

/// The body's end: policies judging it give their verdict with the endpoint's.
fn end_verdict(
    verdict: &mut Option<BodyVerdict>,
    check: &mut Option<Box<BodyCheck>>,
    grpc_status: Option<u8>,
    broken: bool,
) {
    match check.take() {
        Some(c) => c.finish(verdict.take(), grpc_status, broken),
        None => {
            if let Some(v) = verdict.take() {
                v.end(grpc_status, broken);
            }
        }
    }
}

/// A response body sent downstream: an upstream body (returning its connection to the pool at
/// the end) or a short body the proxy made itself.
pub struct ResponseBody {
    kind: Kind,
    /// Marks the downstream connection busy until the response is done (idle-timeout tracking).
    _activity: Option<ActivityGuard>,
}

impl ResponseBody {
    pub fn local(text: &'static str, activity: Option<ActivityGuard>) -> Self {
        ResponseBody { kind: Kind::Local(Some(Bytes::from_static(text.as_bytes()))), _activity: activity }
    }

    pub fn empty(activity: Option<ActivityGuard>) -> Self {
        ResponseBody { kind: Kind::Local(None), _activity: activity }
    }

    pub fn local_owned(bytes: Bytes, activity: Option<ActivityGuard>) -> Self {
        ResponseBody { kind: Kind::Local(Some(bytes)), _activity: activity }
    }

    /// `frames` first, then `rest`.
    pub fn replay(frames: std::collections::VecDeque<Frame<Bytes>>, rest: ResponseBody) -> Self {
        ResponseBody { kind: Kind::Replay(Box::new(Replay { frames, rest })), _activity: None }
    }

    /// Attaches policies that judge the body at its end (an upstream body only).
    pub fn set_check(&mut self, c: Box<BodyCheck>) {
        if let Kind::Upstream { watch, .. } = &mut self.kind {
            watch.get_or_insert_with(Box::default).check = Some(c);
        }
    }

    /// The guard that marks the downstream connection busy, to move into a replacement body.
    pub fn take_activity(&mut self) -> Option<ActivityGuard> {
        self._activity.take()
    }

    /// `idle`: the exchange's idle clock, and whether an idle response ends with gRPC trailers
    /// ([`BodyIdle::grpc_trailers`]).
    pub fn upstream(
        body: UpstreamIncoming,
        release: Release,
        activity: ActivityGuard,
        grpc: Option<Arc<RouteMetrics>>,
        verdict: Option<BodyVerdict>,
        idle: Option<(Arc<IdleClock>, bool)>,
    ) -> Self {
        let ended = body.is_end_stream();
        let release = (!ended).then_some(release);
        let idle = idle.filter(|_| !ended).map(|(clock, trailers)| BodyIdle::start(clock, trailers));
        let watch =
            (verdict.is_some() || idle.is_some()).then(|| Box::new(Watch { verdict, idle, check: None }));
        ResponseBody { kind: Kind::Upstream { body, release, grpc, watch }, _activity: Some(activity) }
    }

    /// Ends a response whose exchange has been idle for the route's idle timeout: the upstream's
    /// body and stream (or connection, mid-message: never pooled) are dropped now, the endpoint
    /// is told its response broke off, and the client gets DEADLINE_EXCEEDED trailers (a gRPC
    /// client over HTTP/2) or an error that aborts the response (an HTTP/2 reset, an HTTP/1.1
    /// connection closed before the message's end).
    #[cold]
    fn end_idle(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Kind::Upstream { grpc, watch: Some(watch), .. } =
            std::mem::replace(&mut self.kind, Kind::Local(None))
        else {
            return Poll::Ready(None);
        };
        let Watch { mut verdict, idle, mut check } = *watch;
        let trailers = idle.is_some_and(|i| i.grpc_trailers());
        tracing::debug!(trailers, "response idle for the route's idle timeout; ended");
        end_verdict(&mut verdict, &mut check, None, true);
        if !trailers {
            return Poll::Ready(Some(Err(BodyError::Idle)));
        }
        if let Some(m) = grpc.as_deref() {
            m.grpc_status(crate::error::ProxyError::UpstreamTimeout.grpc_status().as_bytes());
        }
        Poll::Ready(Some(Ok(Frame::trailers(idle::deadline_exceeded_trailers()))))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Replay(r) => match r.frames.pop_front() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None => Pin::new(&mut r.rest).poll_frame(cx),
            },
            Kind::Upstream { body, release, grpc, watch } => {
                let polled = body.poll_frame(cx);
                if let Some(w) = watch {
                    if w.idle.as_mut().is_some_and(|idle| idle.as_mut().expired(polled.is_ready(), cx)) {
                        return this.end_idle();
                    }
                }
                let done = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(frame))) => {
                        let status = frame.trailers_ref().and_then(|t| t.get("grpc-status"));
                        if let (Some(m), Some(code)) = (grpc.as_deref(), status) {
                            m.grpc_status(code.as_bytes());
                        }
                        let ended = body.is_end_stream();
                        if let Some(w) = watch {
                            w.frame(frame, status, ended);
                        }
                        ended
                    }
                    // An error mid-body: the connection is dropped, never pooled, and the
                    // downstream response is aborted instead of ended cleanly.
                    Poll::Ready(Some(Err(_))) => true,
                    Poll::Pending => false,
                };
                if done {
                    if let Some(w) = watch {
                        let broken = matches!(polled, Poll::Ready(Some(Err(_))));
                        end_verdict(&mut w.verdict, &mut w.check, None, broken);
                    }
                    release.take();
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local(b) => b.is_none(),
            Kind::Replay(r) => r.frames.is_empty() && r.rest.is_end_stream(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Local(None) => SizeHint::with_exact(0),
            Kind::Replay(r) => {
                let ahead: u64 = r.frames.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
                let rest = r.rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + ahead);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + ahead);
                }
                hint
            }
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}
