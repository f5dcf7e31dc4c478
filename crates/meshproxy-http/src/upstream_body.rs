//! An upstream's response body: read off its connection by the HTTP/1.1 client, or an HTTP/2
//! stream; and how it can break off.

use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::body::H2Body;
use crate::h1::{H1Body, H1Error, Io};

/// How a forwarded response body can end badly. Either way the downstream response is aborted
/// (HTTP/1.1: hyper closes the connection; HTTP/2: the stream is reset, see
/// [`BodyError::h2_reason`]), never ended as if complete.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    H2(#[from] h2::Error),
    #[error(transparent)]
    H1(#[from] H1Error),
    /// No bytes moved either way for the route's idle timeout; the proxy ended the response.
    #[error("no bytes moved for the route's idle timeout")]
    Idle,
}

impl BodyError {
    /// The reset a client's HTTP/2 stream gets when its response breaks off: an upstream HTTP/2
    /// stream's reset passes on with its reason (a gRPC server's CANCEL stays a CANCEL), anything
    /// else is INTERNAL_ERROR.
    pub fn h2_reason(&self) -> h2::Reason {
        match self {
            BodyError::H2(e) if e.is_reset() => e.reason().unwrap_or(h2::Reason::INTERNAL_ERROR),
            _ => h2::Reason::INTERNAL_ERROR,
        }
    }
}

/// A response body as it comes from upstream: read off its connection for HTTP/1.1, an `h2`
/// stream for HTTP/2.
pub enum UpstreamIncoming<C> {
    H1(H1Body<C>),
    H2(H2Body),
}

impl<C: Io> UpstreamIncoming<C> {
    pub fn is_end_stream(&self) -> bool {
        match self {
            UpstreamIncoming::H1(b) => b.is_end_stream(),
            UpstreamIncoming::H2(b) => b.is_end_stream(),
        }
    }

    pub fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamIncoming::H1(b) => b.size_hint(),
            UpstreamIncoming::H2(b) => b.size_hint(),
        }
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self {
            UpstreamIncoming::H1(b) => b.poll_frame(cx).map_err(BodyError::from),
            UpstreamIncoming::H2(b) => b.poll_frame(cx).map_err(BodyError::from),
        }
    }
}
