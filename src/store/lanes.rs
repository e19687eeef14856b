//! Bounded hand-off of synchronous engine calls to tokio's blocking pool.
//!
//! `spawn_blocking` alone starts a thread per concurrent call: 128 concurrent reads became 128 threads, of
//! which 8 held a pooled SQLite connection and 120 slept on the pool's condition variable, and 128 concurrent
//! vector searches ran as 128 threads on two cores. A lane is a permit taken asynchronously *before* the
//! hand-off, so at most `lanes` calls occupy blocking threads at once and the rest wait as cheap tasks.
//! The permit is released by the blocking thread when the work ends, so a caller that gives up (a request
//! timeout) does not free a lane its work still occupies.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::{StoreError, StoreResult};

#[derive(Clone)]
pub struct BlockingLanes {
    permits: Arc<Semaphore>,
    lanes: usize,
}

impl BlockingLanes {
    pub fn new(lanes: usize) -> Self {
        let lanes = lanes.max(1);
        Self { permits: Arc::new(Semaphore::new(lanes)), lanes }
    }

    /// One lane per core, for CPU-bound work such as vector search.
    pub fn per_core() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, usize::from))
    }

    /// Lanes in use right now.
    pub fn busy(&self) -> usize {
        self.lanes - self.permits.available_permits()
    }

    /// Runs `work` on a blocking thread once a lane is free.
    pub async fn run<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> StoreResult<T> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Backend("blocking lanes closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _lane = permit;
            work()
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_lanes_calls_run_at_once() {
        let lanes = BlockingLanes::new(3);
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

    #[tokio::test]
    async fn an_abandoned_call_keeps_its_lane_until_the_work_ends() {
        let lanes = BlockingLanes::new(1);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let call = tokio::spawn({
            let lanes = lanes.clone();
            async move { lanes.run(move || Ok(wait.recv().is_ok())).await }
        });
        while lanes.busy() == 0 {
            tokio::task::yield_now().await;
        }
        call.abort();
        let _ = call.await;
        assert_eq!(lanes.busy(), 1, "the work still runs");
        release.send(()).unwrap();
        let next = lanes.run(|| Ok(5)).await.unwrap();
        assert_eq!(next, 5);
    }
}
