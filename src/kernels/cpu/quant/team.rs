//! A work-sharing team for one forward pass: the calling thread and helpers that rayon hands over
//! once, instead of one rayon fork-join per matmul (a decode step of SmolLM2 runs ~150 parallel
//! regions of 5–50 µs each, where rayon's per-region hand-off and wake-ups are a visible share).
//!
//! [`Team::run`] starts `helpers` rayon tasks that spin (then yield) waiting for regions; the caller
//! publishes each region with [`Team::for_each`] and takes chunks from the same counter as the
//! helpers, so a helper that is late (descheduled on a busy machine) never holds a region up unless
//! it already claimed a chunk: the caller then does the work alone, as rayon would.
//!
//! Publication protocol: `state` packs (epoch, chunk count, next chunk). A thread claims a chunk by a
//! compare-exchange of `next` within the epoch it read; the region's closure pointer, stored before
//! the epoch is published, is only dereferenced after a successful claim, and the caller does not
//! return from `for_each` (so the closure outlives every use) until every claimed chunk reported done.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

/// Bits of chunk count and next-chunk index in `state` (the epoch takes the rest).
const IDX_BITS: u32 = 20;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;

/// The region closure as published: a thin pointer to a fat `&dyn Fn` on the caller's stack.
type Job<'a> = &'a (dyn Fn(usize) + Sync + 'a);

/// See the module docs.
pub struct Team {
    state: AtomicU64,
    job: AtomicPtr<()>,
    done: AtomicU32,
    quit: AtomicBool,
    helpers: usize,
}

fn pack(epoch: u64, total: u64, next: u64) -> u64 {
    (epoch << (2 * IDX_BITS)) | (total << IDX_BITS) | next
}

fn unpack(s: u64) -> (u64, u64, u64) {
    (s >> (2 * IDX_BITS), (s >> IDX_BITS) & IDX_MASK, s & IDX_MASK)
}

/// A pointer to chunks handed to distinct threads (see [`Team::for_each_chunk_mut`]).
struct SendPtr<T>(*mut T);

impl<T> SendPtr<T> {
    /// A method, not a field access, so closures capture the whole `Sync` wrapper.
    fn get(&self) -> *mut T {
        self.0
    }
}
// SAFETY: only used to hand disjoint chunks of a `&mut [T]` (T: Send) to the team's threads.
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Sets `quit` when the caller's part ends, normally or by a panic (so helpers never spin forever).
struct QuitOnDrop<'a>(&'a AtomicBool);

impl Drop for QuitOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Counts a claimed chunk as done even if it panics (the caller would otherwise wait forever; the
/// panic itself reaches the caller through rayon's scope).
struct DoneOnDrop<'a>(&'a AtomicU32);

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Closes a region (no chunk can be claimed after) and waits until every claimed chunk is done.
struct Finish<'a> {
    team: &'a Team,
    epoch: u64,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let st = &self.team.state;
        let mut s = st.load(Ordering::Acquire);
        let claimed = loop {
            let (e, total, next) = unpack(s);
            debug_assert_eq!(e, self.epoch, "team: regions overlap; this is a bug");
            if next >= total {
                break total;
            }
            match st.compare_exchange_weak(s, pack(e, total, total), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break next,
                Err(now) => s = now,
            }
        };
        let mut spins = 0u32;
        while u64::from(self.team.done.load(Ordering::Acquire)) < claimed {
            spins = spins.wrapping_add(1);
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl Team {
    /// Runs `f` on the calling thread with a team of the current rayon pool's other threads (none
    /// when the pool has one thread). Call it from inside the pool (`pool.install`).
    pub fn run<R>(f: impl FnOnce(&Team) -> R) -> R {
        let helpers = rayon::current_num_threads().saturating_sub(1);
        let team = Team {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicU32::new(0),
            quit: AtomicBool::new(false),
            helpers,
        };
        if helpers == 0 {
            return f(&team);
        }
        let team = &team;
        rayon::in_place_scope(|s| {
            for _ in 0..helpers {
                s.spawn(move |_| team.help());
            }
            let _quit = QuitOnDrop(&team.quit);
            f(team)
        })
    }

    /// Threads that may work on a region (the caller included).
    pub fn threads(&self) -> usize {
        self.helpers + 1
    }

    /// Runs `f(0) … f(chunks − 1)` over the team and returns when all are done.
    pub fn for_each(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.helpers == 0 || chunks <= 1 {
            (0..chunks).for_each(f);
            return;
        }
        assert!(chunks as u64 <= IDX_MASK, "team: too many chunks in one region");
        let job: Job = f;
        let epoch = unpack(self.state.load(Ordering::Relaxed)).0 + 1;
        self.done.store(0, Ordering::Relaxed);
        self.job.store(&job as *const Job as *mut (), Ordering::Relaxed);
        self.state.store(pack(epoch, chunks as u64, 0), Ordering::Release);
        // Waits for the claimed chunks on the way out, a panic included: `job` must outlive them.
        let _finish = Finish { team: self, epoch };
        self.work(epoch);
    }

    /// Runs `f(i, &mut data[i·len .. (i+1)·len])` for every whole chunk `i` of `data`, over the team.
    pub fn for_each_chunk_mut<T: Send>(
        &self,
        data: &mut [T],
        len: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        assert!(len > 0, "team: chunk length must be positive");
        let chunks = data.len() / len;
        let base = SendPtr(data.as_mut_ptr());
        self.for_each(chunks, &|i| {
            // SAFETY: i < chunks, so the range lies inside `data`, which is borrowed mutably for the
            // whole call; every index runs exactly once, so the ranges handed out never overlap.
            let chunk = unsafe { std::slice::from_raw_parts_mut(base.get().add(i * len), len) };
            f(i, chunk)
        });
    }

    /// Claims and runs chunks of region `epoch` until none is left.
    fn work(&self, epoch: u64) {
        loop {
            let s = self.state.load(Ordering::Acquire);
            let (e, total, next) = unpack(s);
            if e != epoch || next >= total {
                return;
            }
            let job = self.job.load(Ordering::Acquire) as *const Job;
            if self.state.compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                let _done = DoneOnDrop(&self.done);
                // SAFETY: the claim succeeded, so region `epoch` still had chunks left when `job` was
                // read after seeing `epoch` published: the caller wrote this region's pointer before
                // publishing and writes the next only after every chunk (this one included) is done,
                // and the closure it points to lives until then (see the module docs).
                let f: &Job = unsafe { &*job };
                f(next as usize);
            }
        }
    }

    /// A helper's loop: wait for a region, work on it, until the caller is done.
    fn help(&self) {
        let mut seen = 0;
        let mut spins = 0u32;
        while !self.quit.load(Ordering::Acquire) {
            let (e, total, next) = unpack(self.state.load(Ordering::Acquire));
            if e != seen && next < total {
                self.work(e);
                seen = e;
                spins = 0;
                continue;
            }
            spins = spins.wrapping_add(1);
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_chunk_runs_once_per_region() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
        pool.install(|| {
            Team::run(|team| {
                assert_eq!(team.threads(), 3);
                for chunks in [0usize, 1, 2, 3, 7, 64, 1000] {
                    let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                    for _ in 0..20 {
                        team.for_each(chunks, &|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        });
                    }
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 20), "chunks {chunks}");
                }
            })
        });
        // One thread: no helpers, everything on the caller.
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
        let sum = one.install(|| {
            Team::run(|team| {
                let acc = AtomicUsize::new(0);
                team.for_each(10, &|i| {
                    acc.fetch_add(i, Ordering::Relaxed);
                });
                acc.load(Ordering::Relaxed)
            })
        });
        assert_eq!(sum, 45);
    }

    #[test]
    fn a_panicking_chunk_reaches_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                Team::run(|team| {
                    team.for_each(8, &|i| {
                        if i == 5 {
                            panic!("chunk 5");
                        }
                    })
                })
            })
        }));
        assert!(r.is_err());
    }
}
