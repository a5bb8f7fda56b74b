//! The feature log and the labels topic read back (read_committed, every
//! partition from the beginning) into the service's [`Trials`], which are
//! judged every `trial.every` on the same thread.

use super::ServiceError;
use super::alerts::{AlertsReader, StartAt};
use crate::adapters::trials::{Promote, Trials};
use crate::adapters::worker::Worker;
use crate::config::Config;
use std::sync::Arc;
use std::time::Duration;

/// Each model's candidate file in the rules running now.
pub type Candidates = Box<dyn Fn() -> Vec<(String, String)> + Send>;

/// Starts the reader of the feature log and labels topics; `every` is the
/// time between judgements.
pub fn start(
    config: &Config,
    brokers: &str,
    trials: Arc<Trials>,
    every: Duration,
    candidates: Candidates,
    promote: Promote,
) -> Result<Worker, ServiceError> {
    let rows = AlertsReader::assigned_to(
        config,
        brokers,
        "trial-rows",
        StartAt::Beginning,
        &[&config.feature_log.topic],
    )?;
    let labels = AlertsReader::assigned_to(
        config,
        brokers,
        "trial-labels",
        StartAt::Beginning,
        &[&config.trial.labels_topic],
    )?;
    Worker::spawn("tripline-trials", move |stop| {
        #[allow(clippy::disallowed_methods)]
        let mut next = std::time::Instant::now() + every;
        while !stop.requested() {
            let n = rows.read(Duration::from_millis(100), 10_000, |r| trials.row(r.value));
            labels.read(Duration::ZERO, 10_000, |r| trials.label(r.value));
            #[allow(clippy::disallowed_methods)]
            let now = std::time::Instant::now();
            // Judged between batches, and not while a backlog is read: a
            // judgement on half the rows would be a wrong one.
            if now >= next && n < 10_000 {
                trials.tick(&candidates(), &promote);
                next = now + every;
            }
        }
        Ok(())
    })
    .map_err(|e| ServiceError::Thread(e.to_string()))
}
