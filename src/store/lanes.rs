//! Bounded hand-off of synchronous, CPU-bound engine calls (searches, the rerank) to dedicated threads.
//!
//! `spawn_blocking` alone starts a thread per concurrent call: 128 concurrent vector searches ran as 128
//! threads on two cores. A set of lanes is a rayon pool of `lanes` threads fed in arrival order: at most
//! `lanes` calls run at once and the rest wait in the pool's queue. A lane that finishes a call takes the
//! next queued one itself. (An earlier form took a semaphore permit on the async side and then handed the
//! call to tokio's blocking pool: every call then waited for a task wake-up and a thread wake-up while its
//! lane sat idle, and at 1M contexts with 8 connections the two lanes kept the two cores only ~70% busy.)
//!
//! The work must not use rayon itself (`par_iter`, `join`): a lane waiting on it would run other queued
//! calls on the same thread, re-entering whatever locks the waiting call holds. qdrant-edge's read paths
//! (search, retrieve, scroll, count) do not; its index builds do, and run in `spawn_blocking`.
//!
//! Lanes are for work whose answer is its only effect: a call whose caller has given up (a request timeout,
//! a closed connection) before a lane takes it is dropped unrun. A call already running keeps its lane
//! until it ends.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{StoreError, StoreResult};

#[derive(Clone)]
pub struct BlockingLanes {
    pool: Arc<rayon::ThreadPool>,
    running: Arc<AtomicUsize>,
}

impl BlockingLanes {
    /// `lanes` threads named `name-N`.
    pub fn new(name: &'static str, lanes: usize) -> StoreResult<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(lanes.max(1))
            .thread_name(move |i| format!("{name}-{i}"))
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot start the {name} threads: {e}")))?;
        Ok(Self { pool: Arc::new(pool), running: Arc::default() })
    }

    /// One lane per core, for CPU-bound work such as vector search.
    pub fn per_core(name: &'static str) -> StoreResult<Self> {
        Self::new(name, std::thread::available_parallelism().map_or(2, usize::from))
    }

    /// Calls running right now.
    pub fn busy(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Runs `work` on a lane once one is free, after the calls queued before it.
    pub async fn run<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> StoreResult<T> + Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let running = self.running.clone();
        self.pool.spawn_fifo(move || {
            // Nothing may unwind out of here: rayon aborts the process on a panic in a spawned job. Dropping
            // an unrun `work` can run code too (the last reference to a store flushes it).
            let _ = catch_unwind(AssertUnwindSafe(move || {
                if answer.is_closed() {
                    return;
                }
                running.fetch_add(1, Ordering::SeqCst);
                // A panic in the work is the caller's error, as a panicking `spawn_blocking` task is.
                let result = catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|m| m.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(StoreError::Backend(format!("a blocking call panicked: {message}")))
                });
                running.fetch_sub(1, Ordering::SeqCst);
                let _ = answer.send(result);
            }));
        });
        answered.await.map_err(|_| StoreError::Backend("a blocking call ended without an answer".into()))?
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
        assert!(matches!(failed, Err(StoreError::Backend(ref m)) if m.contains("panicked")), "{failed:?}");
        assert_eq!(lanes.run(|| Ok(3)).await.unwrap(), 3);
        assert_eq!(lanes.busy(), 0);
    }
}
