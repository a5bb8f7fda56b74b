//! The coordinator's [`Restorer`] in the service: each restore job on a
//! thread of its own, its result sent back to the coordinator's thread,
//! which picks it up between polls.

use super::service::KafkaPorts;
use crate::coordinator::{RestoreDone, RestoreJob, Restorer};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

/// Runs restore jobs on threads.
pub struct ThreadRestorer {
    done_tx: mpsc::Sender<RestoreDone<KafkaPorts>>,
    done_rx: mpsc::Receiver<RestoreDone<KafkaPorts>>,
    running: Vec<JoinHandle<()>>,
}

impl Default for ThreadRestorer {
    fn default() -> Self {
        let (done_tx, done_rx) = mpsc::channel();
        ThreadRestorer {
            done_tx,
            done_rx,
            running: Vec::new(),
        }
    }
}

impl Restorer<KafkaPorts> for ThreadRestorer {
    fn start(&mut self, job: RestoreJob<KafkaPorts>) {
        self.running.retain(|h| !h.is_finished());
        let tx = self.done_tx.clone();
        // Kept apart from the closure so that, should no thread start, the
        // job still runs (here, late but not lost).
        let slot = Arc::new(Mutex::new(Some(job)));
        let theirs = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("tripline-restore".into())
            .spawn(move || {
                let job = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(job) = job {
                    // The coordinator may be gone (the service stopped).
                    tx.send(job.run_catching()).ok();
                }
            });
        match spawned {
            Ok(handle) => self.running.push(handle),
            Err(e) => {
                tracing::error!("cannot start a restore thread, restoring here: {e}");
                let job = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(job) = job {
                    self.done_tx.send(job.run_catching()).ok();
                }
            }
        }
    }

    fn finished(&mut self) -> Vec<RestoreDone<KafkaPorts>> {
        self.done_rx.try_iter().collect()
    }

    fn wait(&mut self) {
        for handle in self.running.drain(..) {
            handle.join().ok();
        }
    }
}
