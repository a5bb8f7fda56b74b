//! Validation of a whole [`Config`]: every problem found, at once, each
//! naming its setting.

use super::*;

impl Config {
    /// Every failed validation check.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let k = &self.kafka;
        for (name, topic) in [
            ("kafka.input_topic", &k.input_topic),
            ("kafka.alerts_topic", &k.alerts_topic),
            ("kafka.shadow_topic", &k.shadow_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
            ("kafka.lists_topic", &k.lists_topic),
        ] {
            if let Err(e) = check_topic(topic) {
                p.push(format!("{name} `{topic}`: {e}"));
            }
        }
        if k.alerts_topic == k.input_topic || k.dead_letter_topic == k.input_topic {
            p.push(
                "kafka: the alerts and dead-letter topics must differ from the input topic".into(),
            );
        }
        if [
            &k.input_topic,
            &k.alerts_topic,
            &k.dead_letter_topic,
            &k.lists_topic,
        ]
        .contains(&&k.shadow_topic)
        {
            p.push(
                "kafka.shadow_topic must differ from the input, alerts, dead-letter and lists topics"
                    .into(),
            );
        }
        if [&k.input_topic, &k.alerts_topic, &k.dead_letter_topic].contains(&&k.lists_topic) {
            p.push(
                "kafka.lists_topic must differ from the input, alerts and dead-letter topics"
                    .into(),
            );
        }
        let f = &self.feature_log;
        if !f.topic.is_empty() {
            if let Err(e) = check_topic(&f.topic) {
                p.push(format!("feature_log.topic `{}`: {e}", f.topic));
            }
            let others = [
                &k.input_topic,
                &k.alerts_topic,
                &k.shadow_topic,
                &k.dead_letter_topic,
                &k.lists_topic,
            ];
            if others.contains(&&f.topic) {
                p.push(
                    "feature_log.topic must differ from the input, alerts, shadow, dead-letter and lists topics"
                        .into(),
                );
            }
            for field in &f.fields {
                if crate::event::FieldPath::parse(field).is_none() {
                    p.push(format!(
                        "feature_log.fields: `{field}` is not a field path (e.g. `TRANSACTION_ID` or `card.id`)"
                    ));
                }
            }
            match crate::rules::parse_duration(&f.retention) {
                Some(ms) if ms > 0 => {}
                _ => p.push(format!(
                    "feature_log.retention `{}` is not a duration (e.g. `90d`)",
                    f.retention
                )),
            }
        }
        let t = &self.trial;
        if !t.labels_topic.is_empty() {
            if let Err(e) = check_topic(&t.labels_topic) {
                p.push(format!("trial.labels_topic `{}`: {e}", t.labels_topic));
            }
            if f.topic.is_empty() {
                p.push(
                    "trial.labels_topic needs feature_log.topic: trials are judged on the feature log's scores"
                        .into(),
                );
            } else if t.labels_topic == f.topic {
                p.push("trial.labels_topic must differ from feature_log.topic".into());
            }
            if self.api.listen.is_empty() {
                p.push(
                    "trial.labels_topic needs api.listen: trials are shown and promoted through the API's rule store"
                        .into(),
                );
            }
            if !f.fields.contains(&t.id_field) {
                p.push(format!(
                    "trial.id_field `{}` must be among feature_log.fields (labels name transactions by it)",
                    t.id_field
                ));
            }
        }
        for (name, v) in [("delay", &t.delay), ("every", &t.every)] {
            if crate::rules::parse_duration(v).is_none_or(|d| d < 0 || (name == "every" && d == 0))
            {
                p.push(format!(
                    "trial.{name} `{v}` is not a duration (e.g. `7d`, `1m`)"
                ));
            }
        }
        if !t.margin.is_finite() || !(-1.0..=1.0).contains(&t.margin) {
            p.push(format!("trial.margin {} must be -1..=1", t.margin));
        }
        if t.top_k == 0 || t.max_rows < 4 {
            p.push("trial.top_k must be at least 1 and trial.max_rows at least 4".into());
        }
        if !["manual", "auto"].contains(&t.promote.as_str()) {
            p.push(format!(
                "trial.promote `{}` must be `manual` or `auto`",
                t.promote
            ));
        }
        let r = &self.train;
        if !r.models.is_empty() {
            if f.topic.is_empty() || t.labels_topic.is_empty() {
                p.push(
                    "train.models needs feature_log.topic and trial.labels_topic: versions are trained on the feature log and the labels"
                        .into(),
                );
            }
            if self.rules.paths.is_empty() {
                p.push(
                    "train.models needs rules.paths: a new version is declared in the rule files"
                        .into(),
                );
            }
        }
        for (name, v) in [
            ("every", &r.every),
            ("delay", &r.delay),
            ("span", &r.span),
            ("test", &r.test),
        ] {
            if crate::rules::parse_duration(v).is_none_or(|d| d < 0 || (d == 0 && name != "delay"))
            {
                p.push(format!("train.{name} `{v}` is not a duration (e.g. `7d`)"));
            }
        }
        if k.group_id.trim().is_empty() {
            p.push("kafka.group_id must not be empty".into());
        }
        if !(1..=10_000).contains(&k.partitions) {
            p.push(format!(
                "kafka.partitions {} must be 1..=10000",
                k.partitions
            ));
        }
        if !(1_000..=3_600_000).contains(&k.session_timeout_ms) {
            p.push(format!(
                "kafka.session_timeout_ms {} must be 1000..=3600000",
                k.session_timeout_ms
            ));
        }
        if !(1_000..=900_000).contains(&k.transaction_timeout_ms) {
            p.push(format!(
                "kafka.transaction_timeout_ms {} must be 1000..=900000",
                k.transaction_timeout_ms
            ));
        }
        if k.max_poll_interval_ms < k.session_timeout_ms || k.max_poll_interval_ms > 86_400_000 {
            p.push(format!(
                "kafka.max_poll_interval_ms {} must be at least kafka.session_timeout_ms ({}) and at most 86400000",
                k.max_poll_interval_ms, k.session_timeout_ms
            ));
        }
        for key in k.client.keys() {
            if MANAGED_CLIENT_KEYS.contains(&key.as_str()) {
                p.push(format!(
                    "kafka.client.\"{key}\" is set by tripline itself (exactly-once needs it)"
                ));
            }
        }
        if self.rules.paths.is_empty() {
            p.push("rules.paths must name at least one file or directory".into());
        }
        if self.rules.max_partials_per_key == 0 {
            p.push("rules.max_partials_per_key must be at least 1".into());
        }
        if self.rules.max_alerts_per_event == 0 {
            p.push("rules.max_alerts_per_event must be at least 1".into());
        }
        if self.rules.max_record_bytes < 64 {
            p.push("rules.max_record_bytes must be at least 64".into());
        }
        let output_limit = crate::adapters::kafka::output_limit(&self.kafka);
        if self.rules.max_record_bytes + RECORD_ROOM > output_limit {
            p.push(format!(
                "rules.max_record_bytes ({}) must be at most {} bytes: events are copied into \
                 records tripline produces, which may have at most {output_limit} (the producer's \
                 message.max.bytes less room for headers); raise kafka.client.\"message.max.bytes\" \
                 (and the brokers' and topics' limits) with it",
                self.rules.max_record_bytes,
                output_limit.saturating_sub(RECORD_ROOM)
            ));
        }
        if !(10..=60_000).contains(&self.checkpoint.interval_ms) {
            p.push(format!(
                "checkpoint.interval_ms {} must be 10..=60000",
                self.checkpoint.interval_ms
            ));
        }
        let a = &self.api;
        if !a.listen.is_empty() && a.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "api.listen `{}` is not an address (e.g. 127.0.0.1:8080; empty: no API)",
                a.listen
            ));
        }
        if crate::rules::parse_duration(&a.score_window).is_none_or(|d| d <= 0) {
            p.push(format!(
                "api.score_window `{}` is not a positive duration (e.g. 24h)",
                a.score_window
            ));
        }
        if !a.advertise.is_empty() && !a.advertise.starts_with("http") {
            p.push(format!(
                "api.advertise `{}` is not an http(s) URL (e.g. http://10.0.0.7:8080)",
                a.advertise
            ));
        }
        if crate::adapters::kafka::owners::Partitioner::from_name(&self.kafka.input_partitioner)
            .is_none()
        {
            p.push(format!(
                "kafka.input_partitioner `{}` must be consistent_random or murmur2_random",
                self.kafka.input_partitioner
            ));
        }
        if a.alerts_kept == 0 || a.max_body_bytes == 0 {
            p.push("api.alerts_kept and api.max_body_bytes must be positive".into());
        }
        if let Some(l) = &self.stream.lateness
            && crate::rules::parse_duration(l).is_none()
        {
            p.push(format!(
                "stream.lateness `{l}` is not a duration (e.g. 30s, 5m)"
            ));
        }
        if let Some(f) = &self.stream.time_format
            && !["auto", "epoch_ms", "epoch_s"].contains(&f.as_str())
        {
            p.push(format!(
                "stream.time_format `{f}` must be auto, epoch_ms or epoch_s"
            ));
        }
        if self.stream.key.is_some() != self.stream.time.is_some() {
            p.push("stream.key and stream.time go together".into());
        }
        if self.runtime.batch_size == 0 || self.runtime.max_queued_batches == 0 {
            p.push("runtime.batch_size and runtime.max_queued_batches must be at least 1".into());
        }
        if self.runtime.shard_threads > 1024 {
            p.push("runtime.shard_threads must be at most 1024".into());
        }
        self.webhook_problems(&mut p);
        let t = &self.telemetry;
        if !["human", "json"].contains(&t.log_format.as_str()) {
            p.push(format!(
                "telemetry.log_format `{}` must be `human` or `json`",
                t.log_format
            ));
        }
        let url = &t.otlp_endpoint;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            p.push(format!(
                "telemetry.otlp_endpoint `{}` must be an http:// or https:// URL",
                t.otlp_endpoint
            ));
        }
        if !(100..=3_600_000).contains(&t.otlp_interval_ms) {
            p.push(format!(
                "telemetry.otlp_interval_ms {} must be 100..=3600000",
                t.otlp_interval_ms
            ));
        }
        if !(0.0..=1.0).contains(&t.trace_sample_ratio) {
            p.push(format!(
                "telemetry.trace_sample_ratio {} must be between 0 and 1",
                t.trace_sample_ratio
            ));
        }
        if t.service_name.trim().is_empty() {
            p.push("telemetry.service_name must not be empty".into());
        }
        p
    }

    fn webhook_problems(&self, p: &mut Vec<String>) {
        let w = &self.webhooks;
        if let Err(e) = check_topic(&w.dead_letter_topic) {
            p.push(format!(
                "webhooks.dead_letter_topic `{}`: {e}",
                w.dead_letter_topic
            ));
        }
        let retention = crate::rules::parse_duration(&w.status_retention).filter(|d| *d > 0);
        if retention.is_none() {
            p.push(format!(
                "webhooks.status_retention `{}` is not a positive duration (e.g. 7d)",
                w.status_retention
            ));
        }
        match self.state.tables.as_str() {
            "memory" => {}
            "disk" if self.state.dir.as_os_str().is_empty() => {
                p.push("state.tables `disk` needs state.dir: the rows are kept there".into());
            }
            "disk" if self.state.tables_cache_mb == 0 => {
                p.push("state.tables_cache_mb must be at least 1".into());
            }
            "disk" => {}
            other => p.push(format!("state.tables `{other}` must be `memory` or `disk`")),
        }
        if !w.endpoints.is_empty() && self.state.dir.as_os_str().is_empty() {
            p.push("webhooks need state.dir: their outbox is kept there".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, e) in w.endpoints.iter().enumerate() {
            let at = if e.name.is_empty() {
                format!("webhooks.endpoints[{i}]")
            } else {
                format!("webhook `{}`", e.name)
            };
            if e.name.is_empty()
                || !e
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                p.push(format!(
                    "{at}: name must be letters, digits, `_` and `-` (and not empty)"
                ));
            } else if !names.insert(e.name.as_str()) {
                p.push(format!("{at}: two endpoints have this name"));
            }
            match reqwest::Url::parse(&e.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                Ok(_) => p.push(format!("{at}: url `{}` is not an http(s) URL", e.url)),
                Err(err) => p.push(format!("{at}: url `{}`: {err}", e.url)),
            }
            if e.secret.0.is_empty() == e.secret_env.is_empty() {
                p.push(format!(
                    "{at}: set one of secret and secret_env (the signing key)"
                ));
            }
            if !(1..=300_000).contains(&e.timeout_ms) {
                p.push(format!(
                    "{at}: timeout_ms {} must be 1..=300000",
                    e.timeout_ms
                ));
            }
            if !(1..=1024).contains(&e.max_concurrency) {
                p.push(format!(
                    "{at}: max_concurrency {} must be 1..=1024",
                    e.max_concurrency
                ));
            }
            if !(1..=1_000_000).contains(&e.queue) {
                p.push(format!("{at}: queue {} must be 1..=1000000", e.queue));
            }
            let r = &e.retry;
            if r.initial_backoff_ms == 0 || r.max_backoff_ms < r.initial_backoff_ms {
                p.push(format!(
                    "{at}: retry.initial_backoff_ms must be at least 1 and at most retry.max_backoff_ms"
                ));
            }
            match crate::rules::parse_duration(&r.give_up_after).filter(|d| *d > 0) {
                None => p.push(format!(
                    "{at}: retry.give_up_after `{}` is not a positive duration (e.g. 24h)",
                    r.give_up_after
                )),
                Some(g) if retention.is_some_and(|keep| g >= keep) => p.push(format!(
                    "{at}: retry.give_up_after `{}` must be shorter than webhooks.status_retention `{}`",
                    r.give_up_after, w.status_retention
                )),
                Some(_) => {}
            }
        }
    }
}

/// Room an event needs in a record besides its text (a buffered event's
/// state entry: key, header, time and position).
const RECORD_ROOM: usize = 8 << 10;

/// librdkafka properties tripline sets itself.
const MANAGED_CLIENT_KEYS: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
    "transactional.id",
    "enable.idempotence",
];

/// Kafka's topic name rule: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic(t: &str) -> Result<(), &'static str> {
    if t.is_empty() || t.len() > 249 {
        return Err("must be 1 to 249 characters");
    }
    if t == "." || t == ".." {
        return Err("is not a valid name");
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err("may only hold letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}
