//! Which instance of the consumer group holds a key, for the REST API of an
//! instance that does not: the key's partition comes from the partitioner
//! its producers use, and the partition's owner from the group coordinator
//! (DescribeGroups lists each member's client id and assignment).
//!
//! Each instance puts the URL of its REST API in its consumer's `client.id`
//! (`<client id>;api=<url>`), the one member attribute that librdkafka lets
//! a member set and the coordinator reports to everyone else. Kafka Streams
//! carries the same information (`application.server`) in the subscription's
//! user data, which librdkafka does not expose.

use bytes::Bytes;
use kafka_protocol::messages::ConsumerProtocolAssignment;
use kafka_protocol::protocol::Decodable;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a producer maps a record key to a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partitioner {
    /// CRC-32 of the key (librdkafka's `consistent_random`, its default).
    Consistent,
    /// Murmur2 of the key, sign bit cleared (the Java client's default;
    /// librdkafka's `murmur2_random`).
    Murmur2,
}

/// The seed of Kafka's murmur2 (`org.apache.kafka.common.utils.Utils`).
const KAFKA_MURMUR2_SEED: u32 = 0x9747_b28c;

impl Partitioner {
    /// Reads a librdkafka partitioner name (with or without `_random`,
    /// which only concerns records without a key).
    pub fn from_name(name: &str) -> Option<Partitioner> {
        match name {
            "consistent_random" | "consistent" => Some(Partitioner::Consistent),
            "murmur2_random" | "murmur2" => Some(Partitioner::Murmur2),
            _ => None,
        }
    }

    /// The partition of `key` among `partitions` (> 0).
    pub fn partition(self, key: &[u8], partitions: i32) -> i32 {
        let n = partitions.max(1) as u32;
        let p = match self {
            Partitioner::Consistent => crc32fast::hash(key) % n,
            Partitioner::Murmur2 => (murmur2::murmur2(key, KAFKA_MURMUR2_SEED) & 0x7fff_ffff) % n,
        };
        p as i32
    }
}

/// The `client.id` of a member whose REST API answers at `api`.
pub fn client_id(base: &str, api: &str) -> String {
    if api.is_empty() {
        base.to_owned()
    } else {
        format!("{base};api={api}")
    }
}

/// The REST API URL a member's `client.id` carries, if any.
pub fn api_of(client_id: &str) -> Option<&str> {
    client_id
        .rsplit_once(";api=")
        .map(|(_, url)| url)
        .filter(|u| !u.is_empty())
}

/// The topic partitions a member's assignment (ConsumerProtocolAssignment,
/// as the coordinator reports it) lists. `None`: not readable.
pub fn assigned(assignment: &[u8]) -> Option<Vec<(String, i32)>> {
    if assignment.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([assignment[0], assignment[1]]);
    // Versions 0–3 share the fields read here; a newer version appends.
    let version = version.clamp(0, 3);
    let mut buf = Bytes::copy_from_slice(&assignment[2..]);
    let a = ConsumerProtocolAssignment::decode(&mut buf, version).ok()?;
    Some(
        a.assigned_partitions
            .iter()
            .flat_map(|t| {
                let topic: &str = &t.topic;
                t.partitions.iter().map(move |&p| (topic.to_owned(), p))
            })
            .collect(),
    )
}

/// Partition owners of one consumer group, asked of the coordinator at most
/// once per `ttl`.
pub struct GroupOwners {
    client: BaseConsumer,
    group: String,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Arc<OwnerMap>)>>,
}

/// (topic, partition) → the owner's REST API URL.
pub type OwnerMap = BTreeMap<(String, i32), String>;

impl GroupOwners {
    /// A client for `group`'s coordinator (`config`: brokers and security).
    pub fn new(
        config: &ClientConfig,
        group: &str,
        ttl: Duration,
    ) -> Result<GroupOwners, rdkafka::error::KafkaError> {
        Ok(GroupOwners {
            client: config.create()?,
            group: group.to_owned(),
            ttl,
            cached: Mutex::new(None),
        })
    }

    /// The current owners, from the cache when it is fresh. Blocks on the
    /// coordinator otherwise (up to `timeout`).
    pub fn owners(&self, timeout: Duration) -> Result<Arc<OwnerMap>, String> {
        let now = super::service::now();
        {
            let c = self
                .cached
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, map)) = c.as_ref()
                && now.duration_since(*at) < self.ttl
            {
                return Ok(map.clone());
            }
        }
        let list = self
            .client
            .fetch_group_list(Some(&self.group), timeout)
            .map_err(|e| format!("describing group `{}`: {e}", self.group))?;
        let mut map = OwnerMap::new();
        for g in list.groups() {
            for m in g.members() {
                let Some(api) = api_of(m.client_id()) else {
                    continue;
                };
                for tp in m.assignment().and_then(assigned).unwrap_or_default() {
                    map.insert(tp, api.to_owned());
                }
            }
        }
        let map = Arc::new(map);
        *self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((now, map.clone()));
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_url_travels_in_the_client_id() {
        let id = client_id("tripline", "http://10.0.0.7:8080");
        assert_eq!(id, "tripline;api=http://10.0.0.7:8080");
        assert_eq!(api_of(&id), Some("http://10.0.0.7:8080"));
        assert_eq!(api_of("tripline"), None);
        assert_eq!(api_of("tripline;api="), None);
        assert_eq!(client_id("tripline", ""), "tripline");
    }

    #[test]
    fn an_assignment_lists_its_partitions() {
        // Version 0: one topic "t" with partitions 1 and 3, no user data.
        let bytes = [
            0, 0, // version
            0, 0, 0, 1, // one topic
            0, 1, b't', // "t"
            0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, // [1, 3]
            0xff, 0xff, 0xff, 0xff, // null user data
        ];
        assert_eq!(
            assigned(&bytes),
            Some(vec![("t".into(), 1), ("t".into(), 3)])
        );
        assert_eq!(assigned(&bytes[..9]), None);
        assert_eq!(assigned(&[]), None);
    }

    #[test]
    fn partitioners_follow_their_reference_values() {
        // Hashes from the Java client's own tests (Utils.murmur2); its
        // partition is the hash with the sign bit cleared, modulo the count.
        for (key, hash) in [
            (&b"21"[..], -973_932_308_i32),
            (b"foobar", -790_332_482),
            (b"abc", 479_470_107),
        ] {
            for n in [1, 4, 7, 100] {
                assert_eq!(
                    Partitioner::Murmur2.partition(key, n),
                    (hash & 0x7fff_ffff) % n
                );
            }
        }
        assert!((0..7).contains(&Partitioner::Consistent.partition(b"4625", 7)));
        assert_eq!(
            Partitioner::from_name("murmur2_random"),
            Some(Partitioner::Murmur2)
        );
        assert_eq!(Partitioner::from_name("random"), None);
    }
}
