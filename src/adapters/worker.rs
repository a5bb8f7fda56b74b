//! The one lifecycle of the service's parts that run on a thread of their
//! own (the coordinator, the alerts-topic readers, the webhooks' reader,
//! the REST API): started with a name, asked to stop, joined for their
//! result. Dropping a [`Worker`] that was not joined stops and joins it, so
//! an early return (an error while starting the next part) leaves no thread
//! behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// A worker's view of its stop request.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Whether the worker has been asked to stop.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Asks the worker to stop.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Why a worker could not start or did not end well.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError<E> {
    /// The thread could not be started.
    #[error("{0}: cannot start its thread: {1}")]
    Spawn(&'static str, std::io::Error),
    /// The thread panicked.
    #[error("{0}: panicked")]
    Panicked(&'static str),
    /// The worker ended with an error of its own.
    #[error(transparent)]
    Failed(E),
}

/// A part running on its own thread until asked to stop.
pub struct Worker<E = std::convert::Infallible> {
    name: &'static str,
    stop: Stop,
    thread: Option<JoinHandle<Result<(), E>>>,
}

impl<E: Send + 'static> Worker<E> {
    /// Runs `run` on a thread named `name`; `run` returns once
    /// [`Stop::requested`] (or when it fails).
    pub fn spawn(
        name: &'static str,
        run: impl FnOnce(Stop) -> Result<(), E> + Send + 'static,
    ) -> Result<Worker<E>, WorkerError<E>> {
        let stop = Stop::default();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(stopped))
            .map_err(|e| WorkerError::Spawn(name, e))?;
        Ok(Worker {
            name,
            stop,
            thread: Some(thread),
        })
    }

    /// Asks the worker to stop; [`Worker::join`] waits for it.
    pub fn stop(&self) {
        self.stop.request();
    }

    /// Whether the thread has ended (on its own or asked to).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the worker to end and returns how it ended.
    pub fn join(mut self) -> Result<(), WorkerError<E>> {
        self.wait()
    }

    /// Asks to stop, then joins.
    pub fn stop_and_join(self) -> Result<(), WorkerError<E>> {
        self.stop();
        self.join()
    }

    fn wait(&mut self) -> Result<(), WorkerError<E>> {
        match self.thread.take() {
            None => Ok(()),
            Some(t) => match t.join() {
                Ok(r) => r.map_err(WorkerError::Failed),
                Err(_) => Err(WorkerError::Panicked(self.name)),
            },
        }
    }
}

impl<E> Drop for Worker<E> {
    fn drop(&mut self) {
        self.stop.request();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("{}: panicked", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn until_stopped(stop: Stop) -> Result<(), String> {
        while !stop.requested() {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    #[test]
    fn a_worker_runs_until_asked_and_reports_how_it_ended() {
        let w = Worker::spawn("t", until_stopped).unwrap();
        assert!(!w.is_finished());
        w.stop_and_join().unwrap();
        let failed = Worker::spawn("t", |_| Err::<(), _>("bad".to_string())).unwrap();
        assert!(matches!(failed.join(), Err(WorkerError::Failed(e)) if e == "bad"));
        let panicked = Worker::<String>::spawn("p", |_| panic!("boom")).unwrap();
        assert!(matches!(panicked.join(), Err(WorkerError::Panicked("p"))));
    }

    #[test]
    fn dropping_a_worker_stops_and_joins_it() {
        let ended = Arc::new(AtomicBool::new(false));
        let seen = ended.clone();
        let w = Worker::spawn("t", move |stop| {
            until_stopped(stop)?;
            seen.store(true, Ordering::SeqCst);
            Ok::<(), String>(())
        })
        .unwrap();
        drop(w);
        assert!(ended.load(Ordering::SeqCst));
    }
}
