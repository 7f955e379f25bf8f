//! [`StoreHistory`]: the store's history read back from etcd, to check who
//! wrote what and when: every put of a run, task or attempt record with the
//! leader term it carries, and every election key with the revisions it
//! lived between.
//!
//! It is read with one watch on the whole prefix from revision 1 up to the
//! revision current when reading starts: etcd keeps every revision until it
//! is compacted, and neither Baton nor the test etcd compacts.

use std::time::Duration;

use baton_common::pb::records::{AttemptRecord, RunRecord, TaskRecord};
use etcd_client::{EventType, GetOptions, WatchOptions};
use prost::Message;
use tokio::time::Instant;

/// How a chunked value's header starts (`controller/src/store/etcd.rs`).
const CHUNK_HEADER_MAGIC: &[u8] = b"\0baton/chunked/v1\0";
/// How long reading the history may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Which record a put wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Run,
    Task,
    Attempt,
}

/// One put of a record, with the term it carries.
#[derive(Debug, Clone)]
pub struct RecordPut {
    /// The key below the prefix, e.g. `tasks/<run>/<task>`.
    pub key: String,
    pub kind: RecordKind,
    /// The revision of the put (records of one batch share it).
    pub revision: i64,
    /// The record's `leader_term`.
    pub term: i64,
}

/// One election key (`<prefix>/leader/<lease>`): a controller campaigning,
/// then leading while it is the live key created first.
#[derive(Debug, Clone)]
pub struct ElectionKey {
    pub key: String,
    /// Its create revision: the term of its controller if it leads.
    pub created: i64,
    /// The revision that deleted it (resigned, revoked or expired).
    pub deleted: Option<i64>,
}

impl ElectionKey {
    fn live_at(&self, revision: i64) -> bool {
        self.created <= revision && self.deleted.is_none_or(|deleted| deleted > revision)
    }
}

/// Everything the store recorded under a prefix, up to `last_revision`.
#[derive(Debug, Default)]
pub struct StoreHistory {
    pub records: Vec<RecordPut>,
    pub election_keys: Vec<ElectionKey>,
    pub last_revision: i64,
}

impl StoreHistory {
    /// Reads the history of `prefix` (e.g. `/baton`) from revision 1 to the
    /// current revision.
    pub async fn read(client: &mut etcd_client::Client, prefix: &str) -> Self {
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        let deadline = Instant::now() + READ_TIMEOUT;
        let count = client.get(
            prefix.as_str(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        );
        let current = match tokio::time::timeout_at(deadline, count).await {
            Ok(Ok(current)) => current,
            Ok(Err(error)) => panic!("cannot read etcd's revision: {error}"),
            Err(_) => panic!("etcd did not answer a read within {READ_TIMEOUT:?}"),
        };
        let last_revision = current
            .header()
            .map(|header| header.revision())
            .expect("etcd answers a header");
        let mut history = Self {
            last_revision,
            ..Self::default()
        };
        let watch = client.watch(
            prefix.as_str(),
            Some(WatchOptions::new().with_prefix().with_start_revision(1)),
        );
        let mut stream = match tokio::time::timeout_at(deadline, watch).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => panic!("cannot watch {prefix}: {error}"),
            Err(_) => panic!("etcd did not open a watch within {READ_TIMEOUT:?}"),
        };
        let mut reached = 0;
        // Every message but the watch's creation carries at least one event,
        // hence at least one revision.
        for _ in 0..=last_revision + 1 {
            if reached >= last_revision {
                break;
            }
            let message = match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(message))) => message,
                Ok(outcome) => {
                    panic!("the watch of {prefix} ended at revision {reached}: {outcome:?}")
                }
                Err(_) => panic!(
                    "reading {prefix} up to revision {last_revision} took over {READ_TIMEOUT:?} (reached {reached})"
                ),
            };
            assert!(
                !message.canceled() && message.compact_revision() == 0,
                "the watch of {prefix} was cancelled (compacted at {}): {}",
                message.compact_revision(),
                message.cancel_reason()
            );
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                reached = kv.mod_revision();
                let key = String::from_utf8_lossy(kv.key());
                let relative = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                history.record_event(&relative, event.event_type(), kv);
            }
        }
        assert!(
            reached >= last_revision,
            "the watch of {prefix} stopped at revision {reached} of {last_revision}"
        );
        history
    }

    fn record_event(&mut self, key: &str, event_type: EventType, kv: &etcd_client::KeyValue) {
        if key.starts_with("leader/") {
            match event_type {
                EventType::Put if kv.create_revision() == kv.mod_revision() => {
                    self.election_keys.push(ElectionKey {
                        key: key.to_string(),
                        created: kv.create_revision(),
                        deleted: None,
                    });
                }
                EventType::Put => {}
                EventType::Delete => {
                    if let Some(live) = self
                        .election_keys
                        .iter_mut()
                        .find(|election| election.key == key && election.deleted.is_none())
                    {
                        live.deleted = Some(kv.mod_revision());
                    }
                }
            }
            return;
        }
        if event_type != EventType::Put {
            return;
        }
        let segments = key.split('/').count();
        let kind = match key.split('/').next() {
            Some("runs") if segments == 2 => RecordKind::Run,
            Some("tasks") if segments == 3 => RecordKind::Task,
            Some("attempts") if segments == 4 => RecordKind::Attempt,
            _ => return,
        };
        let value = kv.value();
        assert!(
            !value.starts_with(CHUNK_HEADER_MAGIC),
            "{key} was stored in chunks at revision {}; records are expected to be small and this check does not reassemble chunks",
            kv.mod_revision()
        );
        let decoded = match kind {
            RecordKind::Run => RunRecord::decode(value).map(|record| record.leader_term),
            RecordKind::Task => TaskRecord::decode(value).map(|record| record.leader_term),
            RecordKind::Attempt => AttemptRecord::decode(value).map(|record| record.leader_term),
        };
        let term = decoded.unwrap_or_else(|error| {
            panic!(
                "{key} at revision {} does not decode as a {kind:?} record: {error}",
                kv.mod_revision()
            )
        });
        self.records.push(RecordPut {
            key: key.to_string(),
            kind,
            revision: kv.mod_revision(),
            term,
        });
    }

    /// The election key that led at `revision`: of the keys live then, the
    /// one created first (etcd's election order).
    pub fn leader_at(&self, revision: i64) -> Option<&ElectionKey> {
        self.election_keys
            .iter()
            .filter(|election| election.live_at(revision))
            .min_by_key(|election| election.created)
    }

    /// The election key of the leader of this term.
    pub fn election_key(&self, term: i64) -> Option<&ElectionKey> {
        self.election_keys
            .iter()
            .find(|election| election.created == term)
    }

    /// The record puts that carry `term`.
    pub fn puts_with_term(&self, term: i64) -> impl Iterator<Item = &RecordPut> {
        self.records.iter().filter(move |put| put.term == term)
    }
}
