//! Synchronous, CPU-bound engine calls (SQLite reads, searches, the rerank) on threads of their own, fed by
//! one queue.
//!
//! `spawn_blocking` alone starts a thread per concurrent call: 128 concurrent vector searches ran as 128
//! threads on two cores. `WorkerThreads` are a fixed set of threads, each owning a state (a SQLite
//! connection, or nothing), taking calls from one channel in arrival order: at most `threads` calls run at
//! once, the rest wait in the queue, and under load a thread goes from one call to the next without
//! sleeping, so the only hand-off per call is the answer waking its task. Handing each call to
//! `spawn_blocking` instead woke a blocking thread per call: for SQLite reads at 128 connections about a
//! fifth of the server's CPU went to those hand-offs (`BENCHMARKS.md`, "Results at d745065"); for searches,
//! where a semaphore permit was taken on the async side before the hand-off, each call also waited for a
//! task wake-up with its lane idle, and at 1M contexts with 8 connections two lanes kept two cores ~70% busy.
//! Hand-written rather than a crate: r2d2 lends connections to the caller's thread, and rayon's pool (tried
//! for the lanes first, no faster) aborts the process on a panic in a job and runs other queued jobs on a thread that
//! waits inside one.
//!
//! Calls are for work whose answer is its only effect: a call whose caller has given up (a request timeout,
//! a closed connection) before a thread takes it is dropped unrun. A call already running keeps its thread
//! until it ends. A panicking call fails alone (its caller gets an error); the thread stays.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

use crate::error::{StoreError, StoreResult};

/// A queued call, given the thread's state and the busy count.
type Job<S> = Box<dyn FnOnce(&S, &AtomicUsize) + Send>;

pub struct WorkerThreads<S> {
    name: &'static str,
    jobs: crossbeam_channel::Sender<Job<S>>,
    threads: usize,
    /// Calls taken by a thread and not yet answered.
    busy: Arc<AtomicUsize>,
}

impl<S: 'static> WorkerThreads<S> {
    /// Makes `threads` states with `open` and starts a thread named `name-N` for each. The threads end when
    /// the `WorkerThreads` is dropped and the queued calls are done.
    pub fn start(name: &'static str, threads: usize, open: impl Fn() -> StoreResult<S>) -> StoreResult<Self>
    where
        S: Send,
    {
        let (jobs, receiver) = crossbeam_channel::unbounded::<Job<S>>();
        let busy = Arc::new(AtomicUsize::new(0));
        let threads = threads.max(1);
        for n in 0..threads {
            let state = open()?;
            let (receiver, busy) = (receiver.clone(), busy.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || {
                    for job in receiver {
                        // A job catches its call's panic itself; this catches one from dropping a call that
                        // is not run. Either way the thread and its state stay.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&state, &busy)));
                    }
                })
                .map_err(|e| StoreError::Backend(format!("cannot start a {name} thread: {e}")))?;
        }
        Ok(Self { name, jobs, threads, busy })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Threads running a call right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Runs `work` on the next free thread, after the calls queued before it.
    pub async fn run<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&S) -> StoreResult<T> + Send + 'static,
    {
        let name = self.name;
        let (reply, answer) = oneshot::channel::<StoreResult<T>>();
        let job: Job<S> = Box::new(move |state, busy| {
            // The caller may have given up; then nobody waits for the answer.
            if reply.is_closed() {
                return;
            }
            busy.fetch_add(1, Ordering::Relaxed);
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| work(state))).unwrap_or_else(|panic| {
                Err(StoreError::Backend(format!("a {name} call panicked: {}", panic_message(&*panic))))
            });
            // Free before answering, so a caller that has its answer sees the thread free.
            busy.fetch_sub(1, Ordering::Relaxed);
            let _ = reply.send(outcome);
        });
        self.jobs.send(job).map_err(|_| StoreError::Backend(format!("the {name} threads have stopped")))?;
        answer.await.map_err(|_| StoreError::Backend(format!("a {name} call was dropped unanswered")))?
    }
}

/// The text a panic was raised with, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// Worker threads without a state of their own, one per core, for CPU-bound work such as vector search.
#[derive(Clone)]
pub struct BlockingLanes(Arc<WorkerThreads<()>>);

impl BlockingLanes {
    /// `lanes` threads named `name-N`.
    pub fn new(name: &'static str, lanes: usize) -> StoreResult<Self> {
        Ok(Self(Arc::new(WorkerThreads::start(name, lanes, || Ok(()))?)))
    }

    /// One lane per core.
    pub fn per_core(name: &'static str) -> StoreResult<Self> {
        Self::new(name, std::thread::available_parallelism().map_or(2, usize::from))
    }

    /// Calls running right now.
    pub fn busy(&self) -> usize {
        self.0.busy()
    }

    /// Runs `work` on a lane once one is free, after the calls queued before it.
    pub async fn run<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> StoreResult<T> + Send + 'static,
    {
        self.0.run(move |_| work()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_lanes_calls_run_at_once() {
        let lanes = BlockingLanes::new("test", 3).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let calls = (0..40).map(|i| {
            let (lanes, running, most) = (lanes.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                lanes
                    .run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        running.fetch_sub(1, Ordering::SeqCst);
                        if i == 7 { Err(StoreError::NotFound) } else { Ok(i) }
                    })
                    .await
            })
        });
        let results = futures::future::join_all(calls).await;
        let ok = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(ok, 39, "every call but the failing one answers");
        assert!(matches!(results[7], Ok(Err(StoreError::NotFound))));
        assert!(most.load(Ordering::SeqCst) <= 3, "at most 3 ran at once, saw {}", most.load(Ordering::SeqCst));
        assert!(most.load(Ordering::SeqCst) >= 2, "lanes run in parallel");
        assert_eq!(lanes.busy(), 0);
    }

    /// Occupies the only lane of `lanes` until the returned sender sends (or is dropped).
    async fn occupy(
        lanes: &BlockingLanes,
    ) -> (tokio::task::JoinHandle<StoreResult<bool>>, std::sync::mpsc::Sender<()>) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let call = tokio::spawn({
            let lanes = lanes.clone();
            async move { lanes.run(move || Ok(wait.recv().is_ok())).await }
        });
        while lanes.busy() == 0 {
            tokio::task::yield_now().await;
        }
        (call, release)
    }

    #[tokio::test]
    async fn an_abandoned_call_keeps_its_lane_until_the_work_ends() {
        let lanes = BlockingLanes::new("test", 1).unwrap();
        let (call, release) = occupy(&lanes).await;
        call.abort();
        let _ = call.await;
        assert_eq!(lanes.busy(), 1, "the work still runs");
        release.send(()).unwrap();
        let next = lanes.run(|| Ok(5)).await.unwrap();
        assert_eq!(next, 5);
    }

    #[tokio::test]
    async fn a_call_abandoned_while_queued_is_not_run() {
        let lanes = BlockingLanes::new("test", 1).unwrap();
        let (first, release) = occupy(&lanes).await;
        let ran = Arc::new(AtomicUsize::new(0));
        // Polled once, the call is in the pool's queue; then its caller gives up.
        let queued = {
            let ran = ran.clone();
            lanes.run(move || Ok(ran.fetch_add(1, Ordering::SeqCst))).now_or_never()
        };
        assert!(queued.is_none(), "the call waits behind the busy lane");
        release.send(()).unwrap();
        assert!(first.await.unwrap().unwrap());
        assert_eq!(lanes.run(|| Ok(7)).await.unwrap(), 7, "the lane serves the next call");
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the abandoned call never ran");
    }

    #[tokio::test]
    async fn a_panicking_call_is_an_error_and_the_lane_lives_on() {
        let lanes = BlockingLanes::new("test", 1).unwrap();
        let failed = lanes.run(|| -> StoreResult<()> { panic!("boom") }).await;
        assert!(matches!(failed, Err(StoreError::Backend(ref m)) if m.contains("panicked: boom")), "{failed:?}");
        assert_eq!(lanes.run(|| Ok(3)).await.unwrap(), 3);
        assert_eq!(lanes.busy(), 0);
    }
}
