//! The topics the service reads and what runs on each: the input topic
//! (partitioned by the stream key) runs the rules keyed by the stream key,
//! and each other key field gets an internal topic, `<group>.by.<field>`,
//! whose partitions run the rules keyed by that field (see
//! [`crate::runtime`] for how events and watermarks get there).

use crate::engine::RuleSet;
use crate::shard::{Forward, Role};
use std::sync::Arc;

/// One topic the service consumes.
#[derive(Debug)]
pub struct TopicPlan {
    /// Its name.
    pub name: String,
    /// The rules its shards run.
    pub rules: Arc<RuleSet>,
    /// Its shards' role.
    pub role: Role,
    /// The compacted topic its shards' state changes are written to, one
    /// partition per partition of this topic.
    pub changelog: String,
}

/// Every topic the service consumes; index 0 is the input topic, the
/// others are internal (`internal[i]` is topic `i + 1`).
#[derive(Debug)]
pub struct Topology {
    /// The whole rule set.
    pub rules: Arc<RuleSet>,
    /// The topics, input first.
    pub topics: Vec<TopicPlan>,
    /// Partitions of the input topic (the number of watermark sources).
    pub sources: usize,
}

impl Topology {
    /// The plan for `rules` on `input`, a topic of `sources` partitions
    /// read by consumer group `group`, or why the rules cannot run
    /// partitioned (see [`RuleSet::cross_key_models`]).
    pub fn new(
        input: &str,
        group: &str,
        rules: Arc<RuleSet>,
        sources: usize,
    ) -> Result<Topology, String> {
        let problems = rules.cross_key_models();
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        if rules.def.streams.len() > 1 {
            let names: Vec<&str> = rules.def.streams.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "the rules define several streams ({}); the service reads one input topic, so \
                 rule sets with several streams run in replay, backtest and test only",
                names.join(", ")
            ));
        }
        let stream_key = rules.stream_key_slot();
        let mut topics = vec![TopicPlan {
            name: input.to_string(),
            rules: rules.for_key(stream_key),
            role: Role::Source {
                forward: Vec::new(),
            },
            changelog: changelog_topic(group, input),
        }];
        let mut forward = Vec::new();
        for keying in &rules.keyings {
            if Some(keying.slot) == stream_key {
                continue;
            }
            forward.push(Forward {
                target: topics.len() - 1,
                slot: keying.slot,
            });
            let field = rules.def.schema.path(keying.slot).to_string();
            let name = internal_topic(group, &field);
            topics.push(TopicPlan {
                changelog: changelog_topic(group, &name),
                name,
                rules: rules.for_key(Some(keying.slot)),
                role: Role::Internal { sources },
            });
        }
        topics[0].role = Role::Source { forward };
        Ok(Topology {
            rules,
            topics,
            sources,
        })
    }

    /// The index of topic `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|t| t.name == name)
    }

    /// The internal topics' names.
    pub fn internal(&self) -> impl Iterator<Item = &str> {
        self.topics[1..].iter().map(|t| t.name.as_str())
    }

    /// The changelog topics' names.
    pub fn changelogs(&self) -> impl Iterator<Item = &str> {
        self.topics.iter().map(|t| t.changelog.as_str())
    }
}

/// `<group>.by.<field>`, with characters Kafka does not allow replaced.
pub fn internal_topic(group: &str, field: &str) -> String {
    topic_name(format!("{group}.by.{field}"))
}

/// `<group>.state.<topic>`: the changelog of the shards of `topic`.
pub fn changelog_topic(group: &str, topic: &str) -> String {
    topic_name(format!("{group}.state.{topic}"))
}

fn topic_name(raw: String) -> String {
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(249)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_internal_topic_per_other_key_field() {
        let rules = RuleSet::from_source(
            "t.tl",
            r#"stream s { key card time ts time format epoch_ms }
               rule a { pattern { x: amount > 1 } }
               rule b { key shop.id pattern { x: amount > 2 } }
               rule c { key shop.id pattern { x: amount > 3 } }"#,
            None,
        )
        .unwrap();
        let t = Topology::new("transactions", "tripline", rules, 3).unwrap();
        let names: Vec<_> = t.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["transactions", "tripline.by.shop.id"]);
        assert_eq!(t.topics[0].rules.rules.len(), 1);
        assert_eq!(t.topics[1].rules.rules.len(), 2);
        assert!(
            matches!(&t.topics[0].role, Role::Source { forward } if forward.len() == 1 && forward[0].target == 0)
        );
        assert!(matches!(t.topics[1].role, Role::Internal { sources: 3 }));
        assert_eq!(internal_topic("g", "a b"), "g.by.a_b");
        let logs: Vec<_> = t.changelogs().collect();
        assert_eq!(
            logs,
            [
                "tripline.state.transactions",
                "tripline.state.tripline.by.shop.id"
            ]
        );
    }
}
