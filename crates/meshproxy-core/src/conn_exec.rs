//! On the current-thread runtime (`--workers 1`), an HTTP/2 connection's streams run inside the
//! connection's own task instead of one tokio task each. hyper hands every stream to its
//! executor; `tokio::spawn` there cost a 128-byte-aligned task allocation (glibc's slow
//! `memalign` path) plus a task switch between the stream and the connection for every
//! request and response (callgrind: ~1.2k instructions per request for the spawn alone). Here a
//! stream that sends its response is followed, in the same poll, by the connection writing it.
//!
//! Not used on the multi-thread runtime: there, separate tasks let one connection's streams run
//! on several workers at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor hyper's HTTP/2 server gets: it queues the futures it is given (streams, and
/// the send side of upgraded streams) for the [`WithStreams`] that drives the connection.
#[derive(Clone, Default)]
pub struct ConnExec(Arc<Queue>);

#[derive(Default)]
struct Queue {
    tasks: Mutex<Vec<Task>>,
    /// The connection's task, for futures queued from outside its poll.
    waker: AtomicWaker,
    /// Set while [`WithStreams`] polls: what is queued then is started before the poll returns,
    /// so waking the task (a wasted re-poll for every poll that starts streams) is not needed.
    polling: AtomicBool,
}

impl<F> hyper::rt::Executor<F> for ConnExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.tasks.lock().push(Box::pin(fut));
        if !self.0.polling.load(Ordering::Acquire) {
            self.0.waker.wake();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection future and the streams it started, polled together. It ends when the
    /// connection does; streams still running then are dropped, which cancels their upstream
    /// requests as a client's RST_STREAM would.
    pub struct WithStreams<C> {
        #[pin]
        conn: C,
        exec: ConnExec,
        running: FuturesUnordered<Task>,
    }
}

impl<C> WithStreams<C> {
    pub fn new(conn: C, exec: ConnExec) -> Self {
        WithStreams { conn, exec, running: FuturesUnordered::new() }
    }

    pub fn conn(self: Pin<&mut Self>) -> Pin<&mut C> {
        self.project().conn
    }
}

impl<C: Future> Future for WithStreams<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        let queue = &*this.exec.0;
        queue.waker.register(cx.waker());
        queue.polling.store(true, Ordering::Release);
        let _polling = Polling(&queue.polling);
        // Connection (reads requests, starts streams) → streams (route, forward, answer) →
        // connection again (writes what the streams answered), until nothing new was started.
        // Bounded: the connection's own limits bound the streams it can start in one poll.
        for _ in 0..4 {
            if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            let started = std::mem::take(&mut *queue.tasks.lock());
            if started.is_empty() && this.running.is_empty() {
                return Poll::Pending;
            }
            let fresh = !started.is_empty();
            this.running.extend(started);
            let mut finished = false;
            while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {
                finished = true;
            }
            if !fresh && !finished && queue.tasks.lock().is_empty() {
                return Poll::Pending;
            }
        }
        // More work remains: let other connections run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Clears `Queue::polling` however the poll returns.
struct Polling<'a>(&'a AtomicBool);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
