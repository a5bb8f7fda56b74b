//! What the REST API shows of webhooks: the endpoints and each alert's
//! deliveries.

use super::*;

/// An endpoint's counters, as the REST API shows them.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndpointView {
    /// The endpoint's name.
    pub name: String,
    /// Deliveries not finished (in memory or waiting in the outbox).
    pub queued: i64,
    /// Of those in memory, how many failed at least once.
    pub retrying: i64,
    /// Requests on the way.
    pub in_flight: i64,
    /// Deliveries finished with a 2xx since start.
    pub delivered: u64,
    /// Requests that failed since start.
    pub failed_attempts: u64,
    /// Deliveries given up (dead-lettered) since start.
    pub dead: u64,
}

/// One delivery of an alert, as the REST API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The endpoint's name.
    pub endpoint: String,
    /// pending, retrying, delivered or dead.
    pub state: State,
    /// Requests made.
    pub attempts: u32,
    /// When it was queued (RFC 3339).
    pub queued_at: String,
    /// When the last request was made.
    pub last_attempt_at: Option<String>,
    /// When the next request is due (pending and retrying).
    pub next_attempt_at: Option<String>,
    /// When it was delivered or given up.
    pub finished_at: Option<String>,
    /// The last HTTP status received.
    pub last_status: Option<u16>,
    /// The last failure.
    pub last_error: Option<String>,
}

pub(super) fn time_text(ms: i64) -> String {
    crate::event::format_time(ms)
}

/// Delivery status, for the REST API.
pub trait DeliveryStatus: Send + Sync {
    /// Every endpoint's counters.
    fn endpoints(&self) -> Vec<EndpointView>;
    /// An alert's deliveries (none: not known here).
    fn deliveries(&self, alert_id: &str) -> Result<Vec<DeliveryView>, String>;
}

impl DeliveryStatus for Shared {
    fn endpoints(&self) -> Vec<EndpointView> {
        self.lanes
            .iter()
            .map(|l| {
                let s = &l.stats;
                EndpointView {
                    name: l.name.clone(),
                    queued: s.queued.load(Ordering::Relaxed),
                    retrying: s.retrying.load(Ordering::Relaxed),
                    in_flight: s.in_flight.load(Ordering::Relaxed),
                    delivered: s.delivered.load(Ordering::Relaxed),
                    failed_attempts: s.failed_attempts.load(Ordering::Relaxed),
                    dead: s.dead.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    fn deliveries(&self, alert_id: &str) -> Result<Vec<DeliveryView>, String> {
        let list = self.outbox.statuses(alert_id).map_err(|e| e.to_string())?;
        Ok(list
            .into_iter()
            .map(|(endpoint, s)| {
                let open = matches!(s.state, State::Pending | State::Retrying);
                DeliveryView {
                    endpoint,
                    state: s.state,
                    attempts: s.attempts,
                    queued_at: time_text(s.queued_ms),
                    last_attempt_at: s.last_attempt_ms.map(time_text),
                    next_attempt_at: open.then(|| time_text(s.next_attempt_ms)),
                    finished_at: s.finished_ms.map(time_text),
                    last_status: s.last_status,
                    last_error: s.last_error,
                }
            })
            .collect())
    }
}
