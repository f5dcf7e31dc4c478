//! Body types of the forwarding path. Both stream frame by frame (no buffering): the downstream
//! connection's flow control is the upstream's and vice versa, which is what bounds memory.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::endpoint::{Endpoint, Sender};
use crate::listener::ActivityGuard;
use crate::metrics::RouteMetrics;
use crate::pool::multiplexed::StreamSlot;

/// A request body sent upstream: the downstream body as it arrives, or nothing (which lets a
/// request be re-sent on a fresh connection after a stale pooled one failed).
pub enum UpstreamBody {
    Empty,
    Stream(Incoming),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Stream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Stream(b) => b.size_hint(),
        }
    }
}

/// The upstream connection a response came on.
pub enum Upstream {
    /// Goes back to the endpoint's idle set when the response has been read to its end.
    Http1(Sender),
    /// Holds a stream slot on a shared connection until the response ends.
    Http2(StreamSlot),
}

/// What is given back when the response body has been read to its end (or dropped).
pub struct Release {
    pub upstream: Upstream,
    pub endpoint: Arc<Endpoint>,
    pub permit: OwnedSemaphorePermit,
}

impl Release {
    fn run(self) {
        let Release { upstream, endpoint, permit } = self;
        drop(permit);
        let sender = match upstream {
            Upstream::Http1(sender) => sender,
            Upstream::Http2(slot) => return drop(slot),
        };
        if sender.is_ready() {
            endpoint.checkin(sender);
        } else if !sender.is_closed() {
            // The connection finishes its own bookkeeping (e.g. the request body still
            // draining) a moment after the response ends; pool it once it says it is ready.
            let mut sender = sender;
            tokio::spawn(async move {
                if let Ok(Ok(())) =
                    tokio::time::timeout(std::time::Duration::from_secs(1), sender.ready()).await
                {
                    endpoint.checkin(sender);
                }
            });
        }
    }
}

enum Kind {
    Local(Option<Bytes>),
    Upstream {
        body: Incoming,
        release: Option<Release>,
        /// For gRPC responses: where the `grpc-status` trailer is counted.
        grpc: Option<Arc<RouteMetrics>>,
    },
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

    pub fn local_owned(bytes: Bytes) -> Self {
        ResponseBody { kind: Kind::Local(Some(bytes)), _activity: None }
    }

    pub fn upstream(
        body: Incoming,
        release: Release,
        activity: ActivityGuard,
        grpc: Option<Arc<RouteMetrics>>,
    ) -> Self {
        let release = if body.is_end_stream() {
            release.run();
            None
        } else {
            Some(release)
        };
        ResponseBody { kind: Kind::Upstream { body, release, grpc }, _activity: Some(activity) }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, release, grpc } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let done = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(m), Some(trailers)) = (grpc.as_deref(), frame.trailers_ref()) {
                            if let Some(code) = trailers.get("grpc-status") {
                                m.grpc_status(code.as_bytes());
                            }
                        }
                        body.is_end_stream()
                    }
                    // An error mid-body: the connection is dropped, never pooled, and hyper
                    // aborts the downstream response instead of ending it cleanly.
                    Poll::Ready(Some(Err(_))) => {
                        release.take();
                        false
                    }
                    Poll::Pending => false,
                };
                if done {
                    if let Some(r) = release.take() {
                        r.run();
                    }
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
