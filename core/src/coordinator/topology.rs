//! The topics the service reads and what runs on each: each stream's topic
//! (partitioned by the stream's key) runs the rules of that stream alone
//! keyed by its key, and each other key field, or key of rules reading
//! several streams, gets an internal topic, `<group>.by.<field>`, whose
//! partitions run those rules (see the runtime's module docs for how events
//! and watermarks get there).

use crate::engine::RuleSet;
use crate::rules::RuleDef;
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

/// Why a rule set cannot run as the service's topics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The input topics given do not match the rule set's streams.
    #[error("the rules define {streams} streams, and {topics} input topics were given")]
    StreamCount {
        /// The rule set's streams.
        streams: usize,
        /// The topics given.
        topics: usize,
    },
    /// Two streams would be read from one topic.
    #[error("two streams are read from topic `{0}`; each stream needs a topic of its own")]
    SharedTopic(String),
    /// Models read features that the service computes on other partitions
    /// (one sentence per rule).
    #[error("{}", .0.join("\n"))]
    ModelsAcrossParts(Vec<String>),
}

/// A topic of events the service reads: a stream's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTopic {
    /// Its name.
    pub name: String,
    /// Its partitions.
    pub partitions: usize,
}

/// Every topic the service consumes: first each stream's topic (topic `i`
/// is stream `i`'s, the input topic first), then the internal ones
/// (`internal[i]` is topic `streams + i`).
#[derive(Debug)]
pub struct Topology {
    /// The whole rule set.
    pub rules: Arc<RuleSet>,
    /// The topics, sources first.
    pub topics: Vec<TopicPlan>,
    /// The streams' topics, by stream.
    pub inputs: Vec<SourceTopic>,
}

impl Topology {
    /// The plan for `rules` on `input`, a topic of `sources` partitions
    /// read by consumer group `group`: [`Topology::with_inputs`] for a rule
    /// set of one stream.
    pub fn new(
        input: &str,
        group: &str,
        rules: Arc<RuleSet>,
        sources: usize,
    ) -> Result<Topology, TopologyError> {
        let input = SourceTopic {
            name: input.to_string(),
            partitions: sources,
        };
        Topology::with_inputs(group, rules, vec![input])
    }

    /// The topic each stream of `rules` is read from: `input` for the main
    /// stream, unless it names its `topic`; a stream's `topic` or its name
    /// for the others.
    pub fn input_topics(rules: &RuleSet, input: &str) -> Vec<String> {
        rules
            .def
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| match (&s.topic, i) {
                (Some(t), _) => t.clone(),
                (None, 0) => input.to_string(),
                (None, _) => s.name.clone(),
            })
            .collect()
    }

    /// The plan for `rules` reading each stream from `inputs` (by stream),
    /// in consumer group `group`, or why the rules cannot run partitioned.
    ///
    /// A stream's topic runs the rules that read that stream alone, keyed
    /// by its key. Every other rule runs on the internal topic of its key
    /// field, to which the topics of the streams it reads forward their
    /// events, each marked with its stream: a rule reading several streams
    /// needs all their events of one key in one place, in one watermark.
    pub fn with_inputs(
        group: &str,
        rules: Arc<RuleSet>,
        inputs: Vec<SourceTopic>,
    ) -> Result<Topology, TopologyError> {
        let def = &rules.def;
        if inputs.len() != def.streams.len() {
            return Err(TopologyError::StreamCount {
                streams: def.streams.len(),
                topics: inputs.len(),
            });
        }
        if let Some(i) =
            (1..inputs.len()).find(|&i| inputs[..i].iter().any(|t| t.name == inputs[i].name))
        {
            return Err(TopologyError::SharedTopic(inputs[i].name.clone()));
        }
        // Where each rule runs: at its stream's topic (Some(stream)), or on
        // the internal topic of its key (None).
        let at_source = |r: &RuleDef| -> Option<u16> {
            match r.streams.as_slice() {
                [s] if def.stream_slots[*s as usize].key == r.key_slot => Some(*s),
                _ => None,
            }
        };
        let problems = rules.cross_part_models(|r| (r.key_slot, at_source(r)));
        if !problems.is_empty() {
            return Err(TopologyError::ModelsAcrossParts(problems));
        }
        let mut topics: Vec<TopicPlan> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| TopicPlan {
                name: input.name.clone(),
                rules: rules.part(|r| at_source(r) == Some(i as u16)),
                role: Role::Source {
                    forward: Vec::new(),
                    stream: i as u16,
                },
                changelog: changelog_topic(group, &input.name),
            })
            .collect();
        let sources: usize = inputs.iter().map(|t| t.partitions).sum();
        let mut forwards: Vec<Vec<Forward>> = vec![Vec::new(); inputs.len()];
        for keying in &rules.keyings {
            let slot = keying.slot;
            let internal = |r: &RuleDef| r.key_slot == slot && at_source(r).is_none();
            if !def.rules.iter().any(internal) {
                continue;
            }
            let target = topics.len() - inputs.len();
            let field = def.schema.path(slot).to_string();
            let name = internal_topic(group, &field);
            let part = rules.part(internal);
            for (stream, forward) in forwards.iter_mut().enumerate() {
                if part
                    .rules
                    .iter()
                    .any(|r| r.def.streams.contains(&(stream as u16)))
                {
                    forward.push(Forward { target, slot });
                }
            }
            topics.push(TopicPlan {
                changelog: changelog_topic(group, &name),
                name,
                rules: part,
                role: Role::Internal { sources },
            });
        }
        for (plan, forward) in topics.iter_mut().zip(forwards) {
            if let Role::Source { forward: f, .. } = &mut plan.role {
                *f = forward;
            }
        }
        Ok(Topology {
            rules,
            topics,
            inputs,
        })
    }

    /// The index of topic `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|t| t.name == name)
    }

    /// The internal topics' names.
    pub fn internal(&self) -> impl Iterator<Item = &str> {
        self.topics[self.inputs.len()..]
            .iter()
            .map(|t| t.name.as_str())
    }

    /// The topic of internal topic `target` (see [`Forward::target`]).
    pub fn internal_topic(&self, target: usize) -> &TopicPlan {
        &self.topics[self.inputs.len() + target]
    }

    /// Whether topic `t` is a stream's.
    pub fn is_source(&self, t: usize) -> bool {
        t < self.inputs.len()
    }

    /// The watermark sources: the partitions of every stream's topic.
    pub fn sources(&self) -> usize {
        self.inputs.iter().map(|t| t.partitions).sum()
    }

    /// The number partition `p` of stream topic `t` has among the
    /// watermark sources (see [`WatermarkMark::source`]).
    ///
    /// [`WatermarkMark::source`]: crate::shard::WatermarkMark::source
    pub fn source_id(&self, t: usize, p: i32) -> Option<u32> {
        let input = self.inputs.get(t)?;
        if p < 0 || p as usize >= input.partitions {
            return None;
        }
        let before: usize = self.inputs[..t].iter().map(|i| i.partitions).sum();
        Some((before + p as usize) as u32)
    }

    /// The partitions of each internal topic: the input topic's.
    pub fn internal_partitions(&self) -> usize {
        self.inputs[0].partitions
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
            matches!(&t.topics[0].role, Role::Source { forward, stream: 0 } if forward.len() == 1 && forward[0].target == 0)
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

    #[test]
    fn rules_of_one_stream_stay_on_its_topic_and_others_meet_on_an_internal_one() {
        let rules = RuleSet::from_source(
            "t.tl",
            r#"stream tx { key c time ts time format epoch_ms }
               stream logins { key c time ts time format epoch_ms topic "auth" }
               rule big { pattern { x: amount > 1 } }
               rule burst { stream logins pattern { l: kind == "login" repeat 3 } }
               rule reset_then_tx { pattern { r: logins where kind == "reset" then t: amount > 1 } }
               rule shop { key shop pattern { x: amount > 3 } }"#,
            None,
        )
        .unwrap();
        let names = Topology::input_topics(&rules, "transactions");
        assert_eq!(names, ["transactions", "auth"]);
        let inputs = vec![
            SourceTopic {
                name: "transactions".into(),
                partitions: 2,
            },
            SourceTopic {
                name: "auth".into(),
                partitions: 3,
            },
        ];
        let t = Topology::with_inputs("g", rules, inputs).unwrap();
        let plan: Vec<(&str, Vec<&str>)> = t
            .topics
            .iter()
            .map(|p| {
                let rules = p.rules.rules.iter().map(|r| r.def.name.as_str()).collect();
                (p.name.as_str(), rules)
            })
            .collect();
        assert_eq!(
            plan,
            [
                ("transactions", vec!["big"]),
                ("auth", vec!["burst"]),
                ("g.by.c", vec!["reset_then_tx"]),
                ("g.by.shop", vec!["shop"]),
            ]
        );
        let targets = |i: usize| match &t.topics[i].role {
            Role::Source { forward, stream } => {
                assert_eq!(*stream as usize, i);
                forward.iter().map(|f| f.target).collect::<Vec<_>>()
            }
            Role::Internal { .. } => panic!("topic {i} is internal"),
        };
        // Transactions feed both internal topics, logins only the one whose
        // rule reads them.
        assert_eq!(targets(0), [0, 1]);
        assert_eq!(targets(1), [0]);
        assert!(matches!(t.topics[2].role, Role::Internal { sources: 5 }));
        assert_eq!(t.internal_partitions(), 2);
        assert_eq!(t.source_id(1, 2), Some(4));
        assert_eq!(t.source_id(1, 3), None);
        assert_eq!(t.source_id(2, 0), None);
        let same_topic = vec![
            SourceTopic {
                name: "x".into(),
                partitions: 1,
            };
            2
        ];
        let err = Topology::with_inputs("g", t.rules.clone(), same_topic).unwrap_err();
        assert_eq!(err, TopologyError::SharedTopic("x".into()));
        assert!(
            err.to_string()
                .contains("two streams are read from topic `x`"),
            "{err}"
        );
    }
}
