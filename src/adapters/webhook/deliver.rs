//! One endpoint's delivery lane: attempts in order per key, retries with
//! backoff (and `Retry-After`), signatures, and dead letters for what
//! cannot be delivered.

use super::*;

/// A delivery in a lane's window.
pub(super) struct Item {
    pub(super) seq: u64,
    pub(super) queued: Queued,
    pub(super) body: Bytes,
    pub(super) status: Status,
    pub(super) in_flight: bool,
}

/// How a request went.
pub(super) enum Outcome {
    Delivered(u16),
    Failed {
        error: String,
        status: Option<u16>,
        retry_after_ms: Option<i64>,
        retryable: bool,
    },
}

/// One endpoint's lane: loads its queue in order into a bounded window,
/// sends what is due (one request per key at a time), records outcomes.
pub(super) async fn run_lane(
    shared: Arc<Shared>,
    lane: usize,
    client: reqwest::Client,
    mut stop: watch::Receiver<bool>,
) {
    let l = &shared.lanes[lane];
    let mut window: VecDeque<Item> = VecDeque::new();
    let mut next_load = 0u64;
    let mut seen_revocations = 0u64;
    let mut flights: JoinSet<(u64, Outcome)> = JoinSet::new();
    loop {
        if *stop.borrow() {
            // Requests on the way get the endpoint's timeout to finish and
            // be recorded; what is left stays queued for the next start.
            let drain = async {
                while let Some(done) = flights.join_next().await {
                    if let Ok((seq, outcome)) = done {
                        l.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                        record(&shared, l, &mut window, seq, outcome).await;
                    }
                }
            };
            tokio::time::timeout(l.timeout, drain).await.ok();
            return;
        }
        let revocations = shared.revocations.load(Ordering::Relaxed);
        if revocations != seen_revocations {
            seen_revocations = revocations;
            window.retain(|it| {
                let keep = it.in_flight || shared.outbox.is_queued(&l.name, it.seq).unwrap_or(true);
                if !keep && it.status.state == State::Retrying {
                    l.stats.retrying.fetch_sub(1, Ordering::Relaxed);
                }
                keep
            });
        }
        // Only when the reader has queued more than the window holds.
        if window.len() < l.window && next_load < l.next_seq.load(Ordering::Relaxed) {
            match shared
                .outbox
                .load(&l.name, next_load, l.window - window.len())
            {
                Ok(items) => {
                    for (seq, queued, status) in items {
                        next_load = seq + 1;
                        if status.state == State::Retrying {
                            l.stats.retrying.fetch_add(1, Ordering::Relaxed);
                        }
                        let body = Bytes::from(queued.body.clone());
                        window.push_back(Item {
                            seq,
                            queued,
                            body,
                            status,
                            in_flight: false,
                        });
                    }
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
        let now = now_ms();
        let mut wake_at: Option<i64> = None;
        let mut starts = Vec::new();
        {
            let mut keys = hashbrown::HashSet::new();
            for (i, it) in window.iter().enumerate() {
                // Only the oldest delivery of a key may go.
                if !keys.insert(it.queued.key.as_slice()) || it.in_flight {
                    continue;
                }
                if it.status.next_attempt_ms > now {
                    let t = it.status.next_attempt_ms;
                    wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
                    continue;
                }
                if flights.len() + starts.len() >= l.max_concurrency {
                    break;
                }
                starts.push(i);
            }
        }
        for i in starts {
            let it = &mut window[i];
            it.in_flight = true;
            l.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let request = attempt(
                shared.clone(),
                lane,
                client.clone(),
                it.queued.alert_id.clone(),
                it.body.clone(),
            );
            let seq = it.seq;
            flights.spawn(async move { (seq, request.await) });
        }
        let sleep = wake_at.map_or(Duration::from_secs(3600), |t| {
            Duration::from_millis((t - now).max(1) as u64)
        });
        tokio::select! {
            Some(done) = flights.join_next(), if !flights.is_empty() => {
                if let Ok((seq, outcome)) = done {
                    l.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                    record(&shared, l, &mut window, seq, outcome).await;
                }
            }
            _ = l.wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Records a request's outcome: finishes the delivery, or schedules its
/// next attempt, or gives it up.
pub(super) async fn record(
    shared: &Shared,
    l: &Lane,
    window: &mut VecDeque<Item>,
    seq: u64,
    outcome: Outcome,
) {
    let Some(i) = window.iter().position(|it| it.seq == seq) else {
        return;
    };
    // Its partition went to another instance while the request was on the
    // way: the reader forgot the delivery, and the new owner delivers it
    // from the topic. Recording a retry here would bring back a status
    // without a queued delivery, which a later read would take as handled.
    let failed = matches!(outcome, Outcome::Failed { .. });
    if failed && !shared.outbox.is_queued(&l.name, seq).unwrap_or(true) {
        if window[i].status.state == State::Retrying {
            l.stats.retrying.fetch_sub(1, Ordering::Relaxed);
        }
        window.remove(i);
        return;
    }
    let now = now_ms();
    let it = &mut window[i];
    it.in_flight = false;
    let was_retrying = it.status.state == State::Retrying;
    let s = &mut it.status;
    s.attempts += 1;
    s.last_attempt_ms = Some(now);
    let first = *s.first_attempt_ms.get_or_insert(now);
    let finished = match outcome {
        Outcome::Delivered(code) => {
            s.state = State::Delivered;
            s.last_status = Some(code);
            s.finished_ms = Some(now);
            l.stats.delivered.fetch_add(1, Ordering::Relaxed);
            true
        }
        Outcome::Failed {
            error,
            status,
            retry_after_ms,
            retryable,
        } => {
            l.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            s.last_status = status;
            let horizon = first + l.give_up_ms;
            if retryable && now < horizon {
                let wait = retry_after_ms.unwrap_or_else(|| l.backoff_ms(s.attempts));
                s.state = State::Retrying;
                s.next_attempt_ms = (now + wait).min(horizon);
                s.last_error = Some(error);
                if let Err(e) = shared.outbox.update(&it.queued.alert_id, &l.name, s) {
                    tracing::error!("{e}");
                }
                if !was_retrying {
                    l.stats.retrying.fetch_add(1, Ordering::Relaxed);
                }
                false
            } else {
                let why = if retryable {
                    format!("gave up after {} attempts: {error}", s.attempts)
                } else {
                    format!("not retried: {error}")
                };
                let attempts = s.attempts;
                if let Err(e) =
                    send_dead_letter(shared, &l.name, &it.queued, &why, status, attempts).await
                {
                    // Tried again later: a delivery is only given up once
                    // its dead letter is written.
                    tracing::error!("webhooks: {e}");
                    let s = &mut it.status;
                    s.state = State::Retrying;
                    s.next_attempt_ms = now + l.max_backoff_ms as i64;
                    s.last_error = Some(why);
                    return;
                }
                let s = &mut it.status;
                s.state = State::Dead;
                s.last_error = Some(why);
                s.finished_ms = Some(now);
                l.stats.dead.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    endpoint = %l.name,
                    alert = %it.queued.alert_id,
                    "webhooks: delivery dead-lettered: {}",
                    s.last_error.as_deref().unwrap_or_default()
                );
                true
            }
        }
    };
    if finished {
        let it = &window[i];
        // Forgotten deliveries (see above) were already taken off the count.
        if shared.outbox.is_queued(&l.name, it.seq).unwrap_or(true) {
            l.stats.queued.fetch_sub(1, Ordering::Relaxed);
        }
        if let Err(e) = shared
            .outbox
            .finish(&l.name, it.seq, &it.queued.alert_id, &it.status)
        {
            tracing::error!("{e}");
        }
        if was_retrying {
            l.stats.retrying.fetch_sub(1, Ordering::Relaxed);
        }
        shared.finished(it.queued.partition, it.queued.offset);
        window.remove(i);
    }
}

/// One signed POST of an alert.
pub(super) async fn attempt(
    shared: Arc<Shared>,
    lane: usize,
    client: reqwest::Client,
    id: String,
    body: Bytes,
) -> Outcome {
    let l = &shared.lanes[lane];
    let timestamp = now_ms() / 1000;
    let signature = l.key.sign(&id, timestamp, &body);
    let sent = client
        .post(l.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .header("idempotency-key", &id)
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Failed {
                error: describe(&e, l.timeout),
                status: None,
                retry_after_ms: None,
                retryable: true,
            };
        }
    };
    let code = response.status();
    if code.is_success() {
        return Outcome::Delivered(code.as_u16());
    }
    let retry_after_ms = if matches!(code.as_u16(), 429 | 503) {
        response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after_ms(v, timestamp * 1000))
    } else {
        None
    };
    let excerpt = excerpt(response).await;
    Outcome::Failed {
        error: format!("HTTP {code}: {}", excerpt.trim()),
        status: Some(code.as_u16()),
        retry_after_ms,
        retryable: code.is_server_error() || matches!(code.as_u16(), 408 | 429),
    }
}

/// How much of a failed response's body the delivery status keeps.
pub(super) const EXCERPT_BYTES: usize = 200;

/// The start of a failed response's body. Only that much is read: a
/// receiver's body may be endless, and the connection is dropped after it.
pub(super) async fn excerpt(mut response: reqwest::Response) -> String {
    let mut text = Vec::with_capacity(EXCERPT_BYTES);
    while text.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = EXCERPT_BYTES - text.len();
                text.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// A `Retry-After` value (seconds, or an HTTP date) as a wait in ms.
pub(super) fn retry_after_ms(v: &str, now_ms: i64) -> Option<i64> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u32>() {
        return Some(i64::from(s) * 1000);
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(v)
        .ok()?;
    Some((at.as_millisecond() - now_ms).max(0))
}

/// A request error without its URL (which may hold a token) and with its
/// causes.
pub(super) fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} ms", timeout.as_millis());
    }
    let mut text = String::from(if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// [`send_dead_letter`] from a thread outside the lanes' runtime (the
/// reader's, or the start), waiting for it; a failure is logged.
pub(super) fn dead_letter_now(
    shared: &Shared,
    endpoint: &str,
    q: &Queued,
    reason: &str,
) -> Result<(), ()> {
    futures::executor::block_on(send_dead_letter(shared, endpoint, q, reason, None, 0))
        .map_err(|e| tracing::error!("webhooks: {e}"))
}

/// Writes a delivery given up to the webhooks' dead-letter topic: the
/// alert unchanged, what happened in headers.
pub(super) async fn send_dead_letter(
    shared: &Shared,
    endpoint: &str,
    q: &Queued,
    reason: &str,
    status: Option<u16>,
    attempts: u32,
) -> Result<(), DeadLetterError> {
    let partition = q.partition.to_string();
    let offset = q.offset.to_string();
    let attempts = attempts.to_string();
    let status = status.map(|s| s.to_string()).unwrap_or_default();
    let headers = [
        ("tripline.webhook.endpoint", endpoint),
        ("tripline.webhook.error", reason),
        ("tripline.webhook.attempts", &attempts),
        ("tripline.webhook.last_status", &status),
        ("tripline.alert.id", &q.alert_id),
        ("tripline.source.topic", &shared.alerts_topic),
        ("tripline.source.partition", &partition),
        ("tripline.source.offset", &offset),
    ]
    .into_iter()
    .fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    });
    let record = FutureRecord::to(&shared.dead_letter_topic)
        .key(&q.key)
        .payload(&q.body)
        .headers(headers);
    shared
        .dead_letters
        .send(record, Duration::from_secs(30))
        .await
        .map(|_| ())
        .map_err(|(source, _)| DeadLetterError {
            topic: shared.dead_letter_topic.clone(),
            source,
        })
}
