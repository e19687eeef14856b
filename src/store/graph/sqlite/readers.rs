//! Read-only SQLite connections, each owned by its own thread.
//!
//! Reads queue on one channel that every reader thread takes from. Under load the queue is never empty, so
//! a reader thread goes from one read to the next without sleeping, and the only hand-off per read is the
//! answer waking its task. A pool of connections lent to `spawn_blocking` instead woke a blocking thread per
//! read (futex wake, context switch, sleep again): at 128 connections about a fifth of the server's CPU went
//! to those hand-offs and the pool's lock (`BENCHMARKS.md`, session 4). This is hand-written rather than r2d2
//! because r2d2 lends connections to the caller's thread and cannot take work to a connection's thread.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::error::{StoreError, StoreResult};

type Job = Box<dyn FnOnce(&Connection) + Send>;

pub struct ReaderThreads {
    jobs: crossbeam_channel::Sender<Job>,
    threads: usize,
    /// Reads taken by a thread and not yet answered.
    busy: Arc<AtomicUsize>,
}

impl ReaderThreads {
    /// Opens `threads` connections with `open` and starts one thread for each. The threads end when the
    /// `ReaderThreads` is dropped and the queued reads are done.
    pub fn start(threads: usize, open: impl Fn() -> StoreResult<Connection>) -> StoreResult<Self> {
        let (jobs, receiver) = crossbeam_channel::unbounded::<Job>();
        let busy = Arc::new(AtomicUsize::new(0));
        let threads = threads.max(1);
        for n in 0..threads {
            let conn = open()?;
            let (receiver, busy) = (receiver.clone(), busy.clone());
            std::thread::Builder::new()
                .name(format!("sqlite-reader-{n}"))
                .spawn(move || {
                    for job in receiver {
                        busy.fetch_add(1, Ordering::Relaxed);
                        // A panicking read drops its answer channel (its caller gets an error); the thread
                        // and its connection stay.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&conn)));
                        busy.fetch_sub(1, Ordering::Relaxed);
                    }
                })
                .map_err(|e| StoreError::Backend(format!("cannot start a SQLite reader: {e}")))?;
        }
        Ok(Self { jobs, threads, busy })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Reader threads running a read right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Runs `work` on the next free reader connection.
    pub async fn read<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<StoreResult<T>>();
        let job: Job = Box::new(move |conn| {
            // The caller may have given up (a request timeout); then nobody waits for the answer.
            if !reply.is_closed() {
                let _ = reply.send(work(conn));
            }
        });
        self.jobs.send(job).map_err(|_| StoreError::Backend("the SQLite readers have stopped".into()))?;
        answer.await.map_err(|_| StoreError::Backend("a SQLite read panicked".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readers(threads: usize) -> (ReaderThreads, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
        )
        .unwrap();
        let readers = ReaderThreads::start(threads, || Ok(Connection::open(&path)?)).unwrap();
        (readers, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_all_answer_and_a_panic_fails_alone() {
        let (readers, _dir) = readers(3);
        let readers = Arc::new(readers);
        let reads = (0..300i64).map(|i| {
            let readers = readers.clone();
            tokio::spawn(async move {
                readers
                    .read(move |conn| {
                        if i == 17 {
                            panic!("read {i} panics");
                        }
                        let n: i64 = conn.query_row("SELECT sum(n) FROM t", [], |r| r.get(0))?;
                        if i % 50 == 3 { Err(StoreError::NotFound) } else { Ok(n + i) }
                    })
                    .await
            })
        });
        let results = futures::future::join_all(reads).await;
        for (i, result) in results.into_iter().enumerate() {
            let i = i as i64;
            match result.unwrap() {
                Ok(n) => assert_eq!(n, 3 + i),
                Err(StoreError::NotFound) => assert_eq!(i % 50, 3),
                Err(StoreError::Backend(message)) => {
                    assert_eq!(i, 17);
                    assert!(message.contains("panicked"), "{message}");
                }
                Err(other) => panic!("read {i}: {other:?}"),
            }
        }
        // Every thread still serves reads after the panic.
        for _ in 0..6 {
            assert_eq!(
                readers
                    .read(|conn| Ok(conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))?))
                    .await
                    .unwrap(),
                2
            );
        }
        // A thread counts itself free just after answering.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while readers.busy() > 0 && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert_eq!(readers.busy(), 0);
    }

    #[tokio::test]
    async fn reads_run_on_the_reader_threads_in_parallel() {
        let (readers, _dir) = readers(2);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let read = |barrier: Arc<std::sync::Barrier>| {
            readers.read(move |_| {
                // Both reads must be running at once for either to pass the barrier.
                barrier.wait();
                Ok(std::thread::current().name().unwrap_or_default().to_string())
            })
        };
        let (a, b) = tokio::join!(read(barrier.clone()), read(barrier));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.starts_with("sqlite-reader-") && b.starts_with("sqlite-reader-") && a != b, "{a} {b}");
    }
}
