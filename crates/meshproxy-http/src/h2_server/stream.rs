//! One HTTP/2 stream: the request handed to the proxy service, its response sent back (head,
//! then the body frame by frame under the stream's flow control), or the stream handed over as
//! a tunnel when a `CONNECT` is answered 2xx.

use std::cell::RefCell;
use std::future::Future;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body as _;
use tokio::sync::oneshot;

use super::Handler;
use crate::body::{pipe_to_h2, H2Body, RequestBody};
use crate::h2_tunnel::PendingTunnel;
use crate::upstream_body::BodyError;

pub async fn serve<S: Handler>(
    service: S,
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let (parts, recv) = req.into_parts();
    // A CONNECT's stream is the tunnel, not a request body: the service takes it from the body
    // (`ClientTunnel`), and gets the sending half once its 2xx is sent.
    let (body, handover) = if parts.method == Method::CONNECT {
        let (tx, rx) = oneshot::channel();
        (RequestBody::H2Tunnel(PendingTunnel::new(recv, rx)), Some(tx))
    } else {
        (RequestBody::H2(H2Body::new(recv, &parts.headers)), None)
    };
    let mut call = std::pin::pin!(service.call(Request::from_parts(parts, body)));
    let answered = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        // The client reset the stream: dropping the call cancels the upstream request.
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let Some(resp) = answered else { return };
    let (mut head, body) = resp.into_parts();
    if !head.headers.contains_key(header::DATE) {
        // RFC 9110 §6.6.1: a recipient with a clock adds the Date a response lacks.
        head.headers.insert(header::DATE, date());
    }
    if let Some(tx) = handover.filter(|_| head.status.is_success()) {
        // A 2xx to CONNECT opens the tunnel: no content, the stream stays open both ways.
        head.headers.remove(header::CONTENT_LENGTH);
        match respond.send_response(Response::from_parts(head, ()), false) {
            Ok(send) => {
                let _ = tx.send(send);
            }
            Err(e) => tracing::debug!(error = %e, "could not answer a CONNECT"),
        }
        return;
    }
    // No Content-Length from the size hint (hyper's habit): an upstream's travels as it came,
    // and the proxy's own responses set theirs (`local_error`).
    let end = body.is_end_stream();
    match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(tx) if !end => pipe_to_h2(body, tx, BodyError::h2_reason).await,
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "could not send a response head"),
    }
}

/// The current `Date` value, formatted once a second per thread.
fn date() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> = const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(now);
            c.1 = HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""));
            c.0 = secs;
        }
        c.1.clone()
    })
}
