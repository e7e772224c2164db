//! Run-time faults of a model's own threads and tasks (an SLM engine, ranker workers, the ranker's
//! queue actor). Panics inside a step are caught where they happen and fail only that step's requests;
//! anything that still kills one of these threads or tasks is reported here, once, and the registry
//! marks the model failed: readiness turns 503 / NOT_SERVING at once, its requests get 503
//! `unavailable`, and `/health/live` turns 503 so the orchestrator restarts the process (a model is not
//! restarted in place: after a panic its state is unknown). Other models keep serving until then.
//!
//! Debug builds have fault injection for the tests: `SLATE_FAULT_INJECT=<point>:<model>:<n>` panics
//! at the `n`-th pass through injection point `<point>` of model `<model>` (see [`inject`]).

use std::sync::Arc;
use tokio::sync::watch;

/// The first fault of one model, if any.
#[derive(Debug)]
pub struct Faults {
    tx: watch::Sender<Option<String>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults { tx: watch::Sender::new(None) }
    }
}

impl Faults {
    /// Records `what` happened (the first report wins) and logs it.
    pub fn report(&self, what: String) {
        tracing::error!(fault = %what, "a model thread died; the model is marked failed");
        self.tx.send_if_modified(|f| {
            if f.is_none() {
                *f = Some(what);
                true
            } else {
                false
            }
        });
    }

    /// The first fault reported, if any.
    pub fn get(&self) -> Option<String> {
        self.tx.borrow().clone()
    }

    /// Changes when the first fault is reported.
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.tx.subscribe()
    }

    /// Waits for a scheduler's `answer` to a request of model `model` until its `deadline`
    /// (DEADLINE_EXCEEDED after it, counted from `enqueued`). A fault of the scheduler answers at once
    /// (UNAVAILABLE: the request may still be referenced but will never be computed), as does a
    /// scheduler that let go of the request without an answer (one of its threads died).
    pub async fn answer_by<T>(
        &self,
        answer: tokio::sync::oneshot::Receiver<crate::error::Result<T>>,
        model: &str,
        enqueued: std::time::Instant,
        deadline: std::time::Instant,
    ) -> crate::error::Result<T> {
        use crate::error::Error;
        let mut faults = self.subscribe();
        let fault = async move {
            if faults.wait_for(Option::is_some).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let stopped = || Error::Unavailable(format!("model '{model}' stopped serving (see /v1/models)"));
        tokio::select! {
            answer = tokio::time::timeout_at(deadline.into(), answer) => match answer {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(stopped()),
                Err(_) => Err(Error::DeadlineExceeded(format!(
                    "request did not finish within its {} ms deadline",
                    deadline.duration_since(enqueued).as_millis()
                ))),
            },
            () = fault => Err(stopped()),
        }
    }

    /// A guard for a thread's run loop: dropped while the thread unwinds from a panic, it reports
    /// `what` (e.g. "the engine thread of 'slm'") as dead. A normal return reports nothing.
    pub fn watch_thread(self: &Arc<Self>, what: impl Into<String>) -> ThreadWatch {
        ThreadWatch { faults: Arc::clone(self), what: what.into() }
    }

    /// Watches a task on `runtime`: a panic ending it reports `what` as dead (a task cancelled when
    /// the runtime shuts down does not).
    pub fn watch_task(
        self: &Arc<Self>,
        what: impl Into<String>,
        task: tokio::task::JoinHandle<()>,
        runtime: &tokio::runtime::Handle,
    ) {
        let (faults, what) = (Arc::clone(self), what.into());
        runtime.spawn(async move {
            if let Err(e) = task.await {
                if e.is_panic() {
                    let msg = crate::error::panic_message(&*e.into_panic());
                    faults.report(format!("{what} panicked: {msg}"));
                }
            }
        });
    }
}

/// See [`Faults::watch_thread`].
pub struct ThreadWatch {
    faults: Arc<Faults>,
    what: String,
}

impl Drop for ThreadWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.faults.report(format!("{} panicked (the panic message is in the log)", self.what));
        }
    }
}

/// Fault injection point `point` of `model` (debug builds only; a no-op in release builds): panics
/// at the `n`-th pass when `SLATE_FAULT_INJECT` is `<point>:<model>:<n>`.
#[inline]
pub fn inject(point: &str, model: &str) {
    #[cfg(debug_assertions)]
    injection::hit(point, model);
    #[cfg(not(debug_assertions))]
    let _ = (point, model);
}

#[cfg(debug_assertions)]
mod injection {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    /// (point, model, n, passes so far), from `SLATE_FAULT_INJECT`.
    fn target() -> Option<&'static (String, String, usize, AtomicUsize)> {
        static TARGET: OnceLock<Option<(String, String, usize, AtomicUsize)>> = OnceLock::new();
        TARGET
            .get_or_init(|| {
                let v = std::env::var("SLATE_FAULT_INJECT").ok()?;
                let mut parts = v.rsplitn(3, ':');
                let n = parts.next()?.parse().ok()?;
                let model = parts.next()?.to_string();
                let point = parts.next()?.to_string();
                Some((point, model, n, AtomicUsize::new(0)))
            })
            .as_ref()
    }

    pub(super) fn hit(point: &str, model: &str) {
        if let Some((p, m, n, passes)) = target() {
            if p == point && m == model && passes.fetch_add(1, Ordering::Relaxed) + 1 == *n {
                panic!("injected fault at {point} of '{model}' (SLATE_FAULT_INJECT)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_panics_is_reported_once_and_a_normal_return_is_not() {
        let faults = Arc::new(Faults::default());
        let w = faults.watch_thread("worker 0");
        std::thread::spawn(move || {
            let _w = w;
        })
        .join()
        .unwrap();
        assert_eq!(faults.get(), None);

        for i in 1..=2 {
            let w = faults.watch_thread(format!("worker {i}"));
            let r = std::thread::spawn(move || {
                let _w = w;
                panic!("boom");
            })
            .join();
            assert!(r.is_err());
        }
        assert_eq!(faults.get().as_deref(), Some("worker 1 panicked (the panic message is in the log)"));
    }

    #[tokio::test]
    async fn a_task_that_panics_is_reported_with_its_message() {
        let faults = Arc::new(Faults::default());
        let mut rx = faults.subscribe();
        let rt = tokio::runtime::Handle::current();
        faults.watch_task("the actor", tokio::spawn(async {}), &rt);
        faults.watch_task("the queue actor of 'm'", tokio::spawn(async { panic!("bad state") }), &rt);
        let f = rx.wait_for(|f| f.is_some()).await.unwrap().clone();
        assert_eq!(f.as_deref(), Some("the queue actor of 'm' panicked: bad state"));
    }
}
