//! Compute threads: their scheduling priority relative to the IO threads.
//!
//! Under overload every core runs model work. If compute threads had the same priority as tokio's IO
//! threads, a request that should be rejected at once (429), a health probe or a metrics scrape would
//! wait for a time slice behind the kernels. On Linux every compute thread (the ranker's workers and
//! compute pool, each SLM engine and its pool) lowers its own nice value by `server.compute_nice`
//! when it starts, so the IO threads preempt compute the moment they have something to do. Nice is
//! per thread on Linux; elsewhere this is a no-op.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

static COMPUTE_NICE: AtomicI32 = AtomicI32::new(0);
static GLOBAL_POOL: Once = Once::new();

/// Sets how much compute threads raise their nice value (0..=19) started from now on take, and builds rayon's global pool (the
/// ranker's compute pool) with it. Call once before starting models; later calls only change the
/// value for threads started afterwards (the global pool is built once per process).
pub fn configure(nice: i32) {
    COMPUTE_NICE.store(nice, Ordering::Relaxed);
    GLOBAL_POOL.call_once(|| {
        // Err = something already built the global pool (e.g. another server in the same test
        // process): its threads keep the priority they have.
        let _ = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("compute-{i}"))
            .start_handler(|_| lower_current_thread())
            .build_global();
    });
}

/// Lowers the calling thread's priority by the configured nice value (Linux; no-op elsewhere or when
/// the value is 0). Failures are logged once and otherwise ignored: priority is an optimization.
pub fn lower_current_thread() {
    let nice = COMPUTE_NICE.load(Ordering::Relaxed);
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // Relative to the thread's current value (inherited from the process), capped at 19.
        let target = (current_thread_nice() + nice).min(19);
        // SAFETY: `gettid` and `setpriority` take plain integers and touch no memory of ours; on
        // Linux `PRIO_PROCESS` with a thread id changes only that thread's nice value.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, target) };
        if rc != 0 {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    nice,
                    error = %std::io::Error::last_os_error(),
                    "cannot lower the priority of compute threads; IO may wait behind compute under overload"
                );
            });
        }
    }
}

/// The nice value of the calling thread (Linux), for tests.
#[cfg(target_os = "linux")]
pub fn current_thread_nice() -> i32 {
    // SAFETY: as above; `getpriority` returns the nice value (errno distinguishes -1, unused here).
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_compute_thread_gets_the_configured_nice_value_and_others_keep_theirs() {
        COMPUTE_NICE.store(7, Ordering::Relaxed);
        let before = current_thread_nice();
        let lowered = std::thread::spawn(|| {
            lower_current_thread();
            current_thread_nice()
        })
        .join()
        .unwrap();
        // Raising nice never needs privileges; the spawning thread is untouched.
        assert_eq!(lowered, (before + 7).min(19));
        assert_eq!(current_thread_nice(), before);
    }
}
