//! Which worker thread the caller is. Each worker (a current-thread runtime of its own) keeps its
//! own upstream pools in every endpoint, and a connection is only ever used by the worker whose
//! runtime drives it; the engine's worker threads set their index once at start.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker the calling thread is; 0 outside worker threads (tests, an embedder's runtime).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Marks the calling thread as worker `index`.
pub fn set_current(index: usize) {
    INDEX.with(|i| i.set(index));
}
