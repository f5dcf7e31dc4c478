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
/// body ends (see [`BodyVerdict`]), and the route's idle timer ([`crate::proxy::idle`]).
struct Watch {
    verdict: Option<BodyVerdict>,
    idle: Option<Pin<Box<BodyIdle>>>,
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
        let watch = (verdict.is_some() || idle.is_some()).then(|| Box::new(Watch { verdict, idle }));
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
        let Watch { verdict, idle } = *watch;
        let trailers = idle.is_some_and(|i| i.grpc_trailers());
        tracing::debug!(trailers, "response idle for the route's idle timeout; ended");
        if let Some(v) = verdict {
            v.end(None, true);
        }
        if !trailers {
            return Poll::Ready(Some(Err(BodyError::Idle)));
        }
        if let Some(m) = grpc.as_deref() {
            m.grpc_status(crate::error::ProxyError::UpstreamTimeout.grpc_status().as_bytes());
        }
        Poll::Ready(Some(Ok(Frame::trailers(idle::deadline_exceeded_trailers()))))
    }
}

/// The body ended (or its trailers came): the endpoint's verdict, once.
#[cold]
fn give_verdict(watch: &mut Watch, grpc_status: Option<u8>, broken: bool) {
    if let Some(v) = watch.verdict.take() {
        v.end(grpc_status, broken);
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
                        if let Some(v) = watch.as_mut().filter(|_| status.is_some() || ended) {
                            give_verdict(v, status.and_then(|c| parse_grpc_status(c.as_bytes())), false);
                        }
                        ended
                    }
                    // An error mid-body: the connection is dropped, never pooled, and the
                    // downstream response is aborted instead of ended cleanly.
                    Poll::Ready(Some(Err(_))) => true,
                    Poll::Pending => false,
                };
                if done {
                    if let Some(v) = watch.as_mut() {
                        give_verdict(v, None, matches!(polled, Poll::Ready(Some(Err(_)))));
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
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Local(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}
