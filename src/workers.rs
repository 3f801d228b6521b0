//! A fixed set of threads for CPU-bound jobs handed over one at a time from async code.
//!
//! Why not rayon's pool: a rayon thread that runs out of work spins, yielding its core (64
//! `sched_yield` calls) before it sleeps. Jobs that arrive one at a time, as sliver
//! verifications do on a node, pay that after every job: about 3% of a node's CPU time on
//! the 2-core machine this project is measured on, where the spinning threads of seven nodes
//! take turns on the same cores. These threads sleep on a channel as soon as it is empty.
//! Why not tokio's blocking pool: its threads come and go, and every new one starts with cold
//! thread-local scratch buffers (a sliver verification keeps a few MB of them).

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

type Job = Box<dyn FnOnce() + Send>;

/// A job handed to [`Workers::run`] did not complete: it panicked (the thread survives), or
/// the workers are gone.
#[derive(Debug, thiserror::Error)]
#[error("a worker thread job did not complete (it panicked, or the workers stopped)")]
pub struct JobLost;

/// Threads that run jobs in the order they were handed over. They stop when this is dropped
/// (after the jobs already queued).
#[derive(Debug)]
pub struct Workers {
    queue: mpsc::Sender<Job>,
}

impl Workers {
    /// Starts `threads` threads (at least one) named `name-0`, `name-1`, …
    pub fn new(name: &str, threads: usize) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads.max(1) {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    loop {
                        // One thread waits in `recv` holding the lock, the others wait for the
                        // lock: all of them asleep while there is nothing to do.
                        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = job else { break };
                        // A panic loses the job (its caller sees `JobLost`), never the thread.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(Self { queue })
    }

    /// Runs `job` on one of the threads and returns its result.
    pub async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, JobLost> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .send(Box::new(move || {
                let _ = tx.send(job());
            }))
            .map_err(|_| JobLost)?;
        rx.await.map_err(|_| JobLost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_on_its_threads_and_survives_panics() {
        let workers = Workers::new("test-worker", 2).unwrap();
        let name = workers
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("test-worker-"));
        let all = futures::future::join_all((0..50u64).map(|i| workers.run(move || i * i))).await;
        assert_eq!(
            all.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            (0..50u64).map(|i| i * i).collect::<Vec<_>>()
        );
        // A panicking job is lost, its thread is not: both threads still run jobs after two
        // panics.
        for _ in 0..2 {
            assert!(workers.run(|| panic!("on purpose")).await.is_err());
        }
        let all = futures::future::join_all((0..8).map(|_| {
            workers.run(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                std::thread::current().name().map(str::to_owned)
            })
        }))
        .await;
        let names: std::collections::BTreeSet<_> =
            all.into_iter().map(|r| r.unwrap().unwrap()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
