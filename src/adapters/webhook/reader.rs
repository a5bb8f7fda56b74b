//! The alerts topic read for delivery: each committed alert routed to the
//! outbox lanes of the endpoints that select it, and the consumer's
//! offsets committed once the outbox holds what they cover.

use super::*;

/// Deliveries queued for endpoints that are no longer configured: given up
/// with that reason (their alerts stay in the dead-letter topic).
pub(super) fn dead_letter_orphans(shared: &Shared, orphans: Vec<outbox::Listed>) {
    let mut forgotten = Vec::new();
    for item in orphans {
        let reason = format!(
            "endpoint `{}` is no longer configured; the delivery was queued for it",
            item.endpoint
        );
        tracing::warn!(alert = %item.queued.alert_id, "webhooks: {reason}");
        if dead_letter_now(shared, &item.endpoint, &item.queued, &reason).is_ok() {
            forgotten.push((item.endpoint, item.seq, item.queued.alert_id));
        } else {
            tracing::error!("webhooks: the delivery stays in the outbox");
        }
    }
    if let Err(e) = shared.outbox.forget(&forgotten) {
        tracing::error!("{e}");
    }
}

/// The part of an alert that routes it.
#[derive(Deserialize)]
pub(super) struct AlertHead<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    rule: std::borrow::Cow<'a, str>,
    severity: Severity,
    /// Endpoints the rule names.
    #[serde(default, borrow)]
    notify: Vec<std::borrow::Cow<'a, str>>,
}

/// How often the reader commits the alerts topic's offsets.
pub(super) const COMMIT_EVERY: Duration = Duration::from_millis(500);

/// The reader of the alerts topic (its own thread): queues deliveries,
/// commits offsets up to the oldest unfinished alert, and forgets the
/// deliveries of partitions that went to another instance.
pub(super) fn read_alerts(shared: &Shared, reader: &AlertsReader, stop: &Stop) {
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assigned: BTreeSet<i32> = BTreeSet::new();
    #[allow(clippy::disallowed_methods)]
    let mut last_commit = std::time::Instant::now();
    let mut batch: Vec<(usize, u64, Queued)> = Vec::new();
    loop {
        let stopping = stop.requested();
        if !stopping {
            reader.read(Duration::from_millis(100), 500, |a| {
                next.insert(a.partition, a.offset + 1);
                route(shared, &a, &mut batch);
            });
        }
        if !batch.is_empty() {
            let items: Vec<(&str, u64, Queued)> = batch
                .drain(..)
                .map(|(lane, seq, q)| (shared.lanes[lane].name.as_str(), seq, q))
                .collect();
            if let Err(e) = shared.outbox.enqueue(&items, now_ms()) {
                // Not committed past: read again after a restart.
                tracing::error!("{e}");
            }
            for l in &shared.lanes {
                l.wake.notify_one();
            }
        }
        let now = reader.assignment();
        let lost: BTreeSet<i32> = assigned.difference(&now).copied().collect();
        if !lost.is_empty() {
            forget_partitions(shared, &lost);
            for p in &lost {
                next.remove(p);
                committed.remove(p);
            }
        }
        if now != assigned {
            tracing::info!(partitions = ?now, "webhooks: reading the alerts topic's partitions");
        }
        assigned = now;
        if stopping || last_commit.elapsed() >= COMMIT_EVERY {
            #[allow(clippy::disallowed_methods)]
            let now = std::time::Instant::now();
            last_commit = now;
            commit(shared, reader, &assigned, &next, &mut committed);
        }
        if stopping {
            return;
        }
    }
}

/// Queues an alert record for the endpoints that select it (dead-letters
/// a record that is not an alert).
pub(super) fn route(shared: &Shared, m: &AlertRecord<'_>, batch: &mut Vec<(usize, u64, Queued)>) {
    let body = m.value;
    let queued = |alert_id: &str| Queued {
        alert_id: alert_id.to_string(),
        key: m.key.to_vec(),
        partition: m.partition,
        offset: m.offset,
        body: body.to_vec(),
    };
    let head = match serde_json::from_slice::<AlertHead<'_>>(body) {
        Ok(h) => h,
        Err(e) => {
            let reason = format!("the alerts topic record is not an alert: {e}");
            tracing::error!(
                partition = m.partition,
                offset = m.offset,
                "webhooks: {reason}"
            );
            dead_letter_now(shared, "", &queued(""), &reason).ok();
            return;
        }
    };
    for name in &head.notify {
        if !shared.lanes.iter().any(|l| l.name == *name) {
            let reason = format!(
                "rule `{}` notifies endpoint `{name}`, which is not in webhooks.endpoints",
                head.rule
            );
            tracing::error!(alert = %head.id, "webhooks: {reason}");
            dead_letter_now(shared, name, &queued(&head.id), &reason).ok();
        }
    }
    let mut n = 0;
    for (i, l) in shared.lanes.iter().enumerate() {
        let named = head.notify.iter().any(|n| *n == l.name);
        if !named && !l.wants(&head.rule, head.severity) {
            continue;
        }
        // Read again after a restart or a rebalance: already queued (or
        // finished) here.
        let known = shared.outbox.known(&head.id, &l.name).unwrap_or(false)
            || batch
                .iter()
                .any(|(j, _, q)| *j == i && q.alert_id == head.id);
        if known {
            continue;
        }
        let seq = l.next_seq.fetch_add(1, Ordering::Relaxed);
        l.stats.queued.fetch_add(1, Ordering::Relaxed);
        batch.push((i, seq, queued(&head.id)));
        n += 1;
    }
    if n > 0 {
        let mut o = shared.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        *o.entry(m.partition)
            .or_default()
            .entry(m.offset)
            .or_default() += n;
    }
}

/// Commits each assigned partition's offset: its oldest unfinished alert,
/// or past everything read. The outbox is synced first, so no committed
/// offset is past a delivery the disk does not hold.
pub(super) fn commit(
    shared: &Shared,
    reader: &AlertsReader,
    assigned: &BTreeSet<i32>,
    next: &BTreeMap<i32, i64>,
    committed: &mut BTreeMap<i32, i64>,
) {
    if let Err(e) = shared.outbox.sync() {
        return tracing::error!("{e}");
    }
    let mut offsets = BTreeMap::new();
    {
        let o = shared.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        for p in assigned {
            let oldest = o.get(p).and_then(|m| m.keys().next().copied());
            let Some(off) = oldest.or_else(|| next.get(p).copied()) else {
                continue;
            };
            if committed.get(p) != Some(&off) {
                offsets.insert(*p, off);
            }
        }
    }
    if offsets.is_empty() {
        return;
    }
    match reader.commit(&offsets) {
        Ok(()) => committed.extend(offsets),
        Err(e) => tracing::warn!("webhooks: committing the alerts topic's offsets: {e}"),
    }
}

/// Drops the queued deliveries of partitions now read by another instance
/// (which delivers them from the last committed offset).
pub(super) fn forget_partitions(shared: &Shared, lost: &BTreeSet<i32>) {
    let items = match shared.outbox.list() {
        Ok(items) => items,
        Err(e) => return tracing::error!("{e}"),
    };
    let mut forgotten = Vec::new();
    for item in items {
        if lost.contains(&item.queued.partition) {
            if let Some(l) = shared.lanes.iter().find(|l| l.name == item.endpoint) {
                l.stats.queued.fetch_sub(1, Ordering::Relaxed);
            }
            forgotten.push((item.endpoint, item.seq, item.queued.alert_id));
        }
    }
    if let Err(e) = shared.outbox.forget(&forgotten) {
        tracing::error!("{e}");
    }
    {
        let mut o = shared.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        for p in lost {
            o.remove(p);
        }
    }
    shared.revocations.fetch_add(1, Ordering::Relaxed);
    for l in &shared.lanes {
        l.wake.notify_one();
    }
    tracing::info!(
        partitions = ?lost,
        deliveries = forgotten.len(),
        "webhooks: partitions went to another instance; it delivers their queued alerts"
    );
}
