//! Group commit for the SQLite writer connection.
//!
//! One thread owns the writer connection. Writes queue on a channel; the thread takes every write that is
//! waiting (up to `MAX_GROUP`), runs each in its own savepoint inside one IMMEDIATE transaction, commits
//! once, and only then answers each caller. With `synchronous = FULL` a commit costs an fsync, so under
//! concurrent writers one fsync covers many writes instead of one each. Each write still sees the writes
//! before it, and a write that fails rolls back its savepoint only; if the commit fails, every write of the
//! group gets the error and none of them is acknowledged.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use crate::error::{StoreError, StoreResult};

/// Most writes committed together.
const MAX_GROUP: usize = 64;

/// What a queued write does once its group committed (`Ok`) or failed to (`Err`).
type Finish = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;
/// A queued write: given the group's transaction (or the error that prevented it), runs and returns its
/// `Finish`.
type Job = Box<dyn FnOnce(Result<&Transaction<'_>, &StoreError>) -> Finish + Send>;

pub struct GroupWriter {
    jobs: mpsc::Sender<Job>,
}

impl GroupWriter {
    /// Starts the writer thread; it ends when the `GroupWriter` is dropped and the queue is empty.
    pub fn start(conn: Connection) -> StoreResult<Self> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, receiver))
            .map_err(|e| StoreError::Backend(format!("cannot start the SQLite writer: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs `work` in the next group transaction and returns its result once that transaction committed.
    pub async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<StoreResult<T>>();
        let job: Job = Box::new(move |tx| {
            let outcome = match tx {
                Ok(tx) => in_savepoint(tx, work),
                Err(err) => Err(err.clone()),
            };
            Box::new(move |commit| {
                let _ = reply.send(match (outcome, commit) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(err)) => Err(err.clone()),
                    (Err(err), _) => Err(err),
                });
            })
        });
        self.jobs.send(job).map_err(|_| StoreError::Backend("the SQLite writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the SQLite writer dropped a write (a bug: it panicked)".into()))?
    }
}

/// Runs one write in a savepoint: released when it succeeds, rolled back when it fails or panics.
fn in_savepoint<T>(tx: &Transaction<'_>, work: impl FnOnce(&Transaction<'_>) -> StoreResult<T>) -> StoreResult<T> {
    tx.execute_batch("SAVEPOINT write")?;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| work(tx)))
        .unwrap_or_else(|_| Err(StoreError::Backend("a write panicked; it was rolled back".into())));
    match &outcome {
        Ok(_) => tx.execute_batch("RELEASE write")?,
        Err(_) => tx.execute_batch("ROLLBACK TO write; RELEASE write")?,
    }
    outcome
}

fn run(mut conn: Connection, receiver: mpsc::Receiver<Job>) {
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(err) => {
                let err = StoreError::from(err);
                for job in group {
                    job(Err(&err))(Err(&err));
                }
                continue;
            }
        };
        let finishes: Vec<Finish> = group.into_iter().map(|job| job(Ok(&tx))).collect();
        match tx.commit().map_err(StoreError::from) {
            Ok(()) => finishes.into_iter().for_each(|finish| finish(Ok(()))),
            Err(err) => finishes.into_iter().for_each(|finish| finish(Err(&err))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn writer() -> (Arc<GroupWriter>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER PRIMARY KEY)").unwrap();
        (Arc::new(GroupWriter::start(conn).unwrap()), dir)
    }

    fn count(dir: &tempfile::TempDir) -> i64 {
        let conn = Connection::open(dir.path().join("db")).unwrap();
        conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn failing_and_panicking_writes_roll_back_alone() {
        let (writer, dir) = writer();
        let tasks: Vec<_> = (0..200i64)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    writer
                        .write(move |tx| {
                            tx.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
                            match n % 10 {
                                3 => Err(StoreError::Conflict("refused".into())),
                                7 => panic!("write {n} panics after inserting"),
                                _ => Ok(n),
                            }
                        })
                        .await
                })
            })
            .collect();
        let mut ok = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::Conflict(_) | StoreError::Backend(_)) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(ok, 160);
        assert_eq!(count(&dir), 160, "acknowledged rows only");
        // The writer still works after the panics.
        assert_eq!(writer.write(|tx| Ok(tx.execute("INSERT INTO t (n) VALUES (1000)", [])?)).await.unwrap(), 1);
        assert_eq!(count(&dir), 161);
    }

    #[tokio::test]
    async fn a_write_sees_the_writes_queued_before_it() {
        let (writer, _dir) = writer();
        let first = writer.write(|tx| Ok(tx.execute("INSERT INTO t (n) VALUES (1)", [])?));
        let second =
            writer.write(|tx| Ok(tx.query_row("SELECT count(*) FROM t WHERE n = 1", [], |r| r.get::<_, i64>(0))?));
        let (first, second) = tokio::join!(first, second);
        assert_eq!((first.unwrap(), second.unwrap()), (1, 1));
    }
}
