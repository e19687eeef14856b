//! Read-only SQLite connections, each owned by its own thread (`WorkerThreads`): reads queue on one channel
//! that every reader thread takes from.

use rusqlite::Connection;

use crate::store::lanes::WorkerThreads;

pub type ReaderThreads = WorkerThreads<Connection>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::StoreError;
    use std::sync::Arc;

    fn readers(threads: usize) -> (ReaderThreads, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
        )
        .unwrap();
        let readers = ReaderThreads::start("sqlite-reader", threads, || Ok(Connection::open(&path)?)).unwrap();
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
                    .run(move |conn| {
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
                    .run(|conn| Ok(conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))?))
                    .await
                    .unwrap(),
                2
            );
        }
        // A thread counts itself free before it answers.
        assert_eq!(readers.busy(), 0);
    }

    #[tokio::test]
    async fn reads_run_on_the_reader_threads_in_parallel() {
        let (readers, _dir) = readers(2);
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let read = |barrier: Arc<std::sync::Barrier>| {
            readers.run(move |_| {
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
