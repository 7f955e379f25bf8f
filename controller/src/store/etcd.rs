//! The etcd store: cluster mode's [`Store`], on etcd 3.4 or later.
//!
//! # Layout under the prefix
//! Every key lives under the configured prefix (`/baton` by default,
//! normalized without a trailing slash):
//!
//! | etcd key | value |
//! |---|---|
//! | `<prefix>/<key>` | the value as given (protobuf bytes), or a chunk header |
//! | `<prefix>/chunks/<escaped key>/<sha256 hex>/<index:08>` | one chunk of a large value |
//!
//! `<key>` is the relative key the scheduler uses; `keys.rs` documents that
//! layout (`runs/<run>`, `tasks/<run>/<task>`, ...). The election
//! (`<prefix>/leader/...`) and controller membership keys live beside them,
//! written by the election code, not through this store. `chunks/` is
//! reserved: a batch writing inside it is refused, and scans never return
//! keys under it, whatever their prefix.
//!
//! # Chunking
//! etcd refuses requests over `--max-request-bytes` (1.5 MiB by default),
//! and a DAG spec can be tens of MiB. A value larger than
//! [`CHUNK_THRESHOLD`] is therefore written in pieces of at most
//! [`CHUNK_SIZE`], each set of pieces in its own (fenced) transactions
//! *before* the batch, under a directory named by the value's SHA-256; the
//! batch itself then puts a small header at `<prefix>/<key>`:
//! [`CHUNK_HEADER_MAGIC`], the digest, the chunk count and the total length.
//! Reads recognise the header, fetch the chunks at the same revision as the
//! header (so a concurrent rewrite cannot mix two values) and check length
//! and digest, answering [`StoreError::Corrupt`] on a mismatch. A value that
//! itself starts with the magic is always chunked, so a header can never be
//! mistaken for a value. Smaller values are chunked too when a batch would
//! otherwise exceed one request, largest first.
//!
//! Deleting a key also deletes `chunks/<escaped key>/`, `DeletePrefix{p}`
//! also deletes `chunks/<escaped p>`, and a chunked put deletes the key's
//! chunk sets of other digests: in the batch's transaction when etcd's
//! operation budget allows it, otherwise in fenced transactions right after
//! it. Chunks left behind (a batch that failed after its chunks were
//! written, a crash between a batch and its cleanup, a large value
//! overwritten by a small one) are harmless: nothing points at them, they
//! are content-addressed so a retry rewrites the same bytes, and deleting
//! the key removes them. Key escaping (`/` and `%`, and bytes outside
//! printable ASCII, become `%XX`) keeps one key's chunk directory from ever
//! containing another key's, and keeps prefixes: a key starts with `p`
//! exactly when its escaped form starts with the escaped `p`.
//!
//! Cleanup relies on what the scheduler guarantees anyway: one writer at a
//! time (fencing orders writers across leaders), one batch in flight.
//!
//! # Fencing
//! A store made by [`EtcdStore::fenced`] adds to every transaction it sends
//! (chunk writes, the batch, cleanup) the compare
//! `create_revision(<election key>) == <the leader's create revision>`. The
//! election key is deleted when the leader resigns or its lease expires, and
//! a new campaign creates a key with a new revision, so a failed compare
//! means leadership was lost: nothing was applied and `commit` answers
//! [`StoreError::Fenced`].
//!
//! # A batch as one transaction
//! `compare: [fence]`, `success: [plain operations..., one nested
//! transaction per conditional]`. A conditional's nested transaction
//! compares `create_revision(key) == 0` for each `DoesNotExist(key)` and
//! holds the conditional's operations; `BatchOutcome::applied[i]` is whether
//! the i-th nested transaction succeeded. etcd evaluates every compare,
//! nested ones included, before applying anything, which is exactly the
//! "preconditions see the state before the batch" rule. etcd checks
//! `--max-txn-ops` (128 by default) per level, handing a nested transaction
//! what its parent left, which is why [`Store::max_batch_ops`] is 128 with a
//! conditional counted as one plus its operations and preconditions.
//!
//! # Errors
//! - A request that certainly did not run (the connection could not be
//!   made, etcd throttled it): retried with backoff; when the retries run
//!   out, [`StoreError::Unavailable`].
//! - A write whose outcome is unknown (connection lost after sending, no
//!   answer within `request_timeout`, etcd's own "request timed out" or
//!   "leader changed"): the same transaction is sent again, with backoff,
//!   until it gets an answer, the store's stop token is cancelled
//!   (leadership lost) or the resolution deadline passes; then
//!   [`StoreError::Indeterminate`]. Puts and deletes are idempotent and the
//!   fence still guards a resend. A conditional the resend reports as not
//!   applied may have been applied by the lost attempt: its first put's key
//!   is read back and the conditional counts as applied when it holds what
//!   this batch wrote (a conditional without a put is then indeterminate).
//! - etcd refusing the request as malformed (too many operations, too
//!   large, a key twice) or a key inside `chunks/`: [`StoreError::Io`],
//!   nothing applied, not retryable. The scheduler never builds such
//!   batches.
//! - Reads are linearizable (etcd's default) and retried a few times; a
//!   multi-page scan reads every page and every chunk at the revision of its
//!   first page.
//!
//! # etcd features used
//! Range with `range_end`, `limit`, `revision` and key sort (descending sort
//! makes etcd 3.4 read the whole range before limiting), Txn with nested
//! transactions (etcd ≥ 3.3) and `create_revision` compares, DeleteRange
//! with `range_end`. Nothing newer than 3.4.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, GetResponse, KvClient,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    Batch, BatchOutcome, KeyValue, Op, Precondition, Scan, Store, StoreError, StoreResult,
    prefix_end,
};

/// Values larger than this are stored in chunks.
pub const CHUNK_THRESHOLD: usize = 512 * 1024;

/// Most bytes in one chunk.
pub const CHUNK_SIZE: usize = 512 * 1024;

/// How a chunk header starts. A protobuf encoding never starts with a zero
/// byte (field number 0 does not exist), and a value that does start with
/// this is chunked, so a stored value starting with it is always a header.
pub const CHUNK_HEADER_MAGIC: &[u8] = b"\0baton/chunked/v1\0";

/// The relative directory holding chunks.
const CHUNKS: &[u8] = b"chunks/";

/// Header: magic, SHA-256, chunk count (u32 BE), total length (u64 BE).
const HEADER_LEN: usize = CHUNK_HEADER_MAGIC.len() + 32 + 4 + 8;

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// What the scheduler may put in one batch, in key and value bytes.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// etcd's default `--max-request-bytes` (1.5 MiB), less a margin for what
/// the estimate below does not count.
const REQUEST_BYTES_BUDGET: usize = 1536 * 1024 - 64 * 1024;

/// Chunk bytes per chunk-writing transaction.
const CHUNK_TXN_BYTES: usize = 1024 * 1024;

/// Keys per range request of a scan (records are small: recovering 10,000
/// task records takes 10 requests, not 80), and chunks per request of a read.
const SCAN_PAGE: usize = 1_000;
const CHUNK_PAGE: usize = 16;

/// Largest response the client decodes (tonic's default is 4 MiB; a page of
/// unchunked values can be larger).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// How often a read is tried before it fails as unavailable.
const READ_ATTEMPTS: u32 = 8;

/// A read at a pinned revision restarts this often when etcd compacts
/// that revision meanwhile.
const COMPACTION_RESTARTS: u32 = 3;

/// Values larger than this are hashed on the blocking pool (SHA-256 runs
/// at a few hundred MB/s).
const BLOCKING_BYTES: usize = 256 * 1024;

/// Least time a write keeps resolving an unknown outcome.
const MIN_WRITE_DEADLINE: Duration = Duration::from_secs(10);

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// HTTP/2 ping interval (etcd refuses pings more often than every 5 s).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Least time to wait for a ping's answer before dropping the connection.
const MIN_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:2379`) of any members.
    pub endpoints: Vec<String>,
    /// Every key lives under this prefix (`/baton`); a trailing slash is
    /// ignored.
    pub prefix: String,
    pub connect_timeout: Duration,
    /// Bound on each request; a write without an answer within it has an
    /// unknown outcome and is resolved by resending.
    pub request_timeout: Duration,
}

/// Where the scheduler's writes are fenced: the leader's election key and
/// its create revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// Absolute etcd key, as returned by the election API.
    pub key: Vec<u8>,
    pub create_revision: i64,
}

/// The etcd-backed [`Store`]. Clones share one client.
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
    /// Compared by every transaction; `None` for an unfenced store (reads,
    /// tools, tests).
    fence: Option<Fence>,
    /// Cancelled when leadership is lost: a write stops resolving an unknown
    /// outcome and answers at once.
    stop: CancellationToken,
}

/// One etcd member's client. Each member gets its own client because a
/// client balanced over all members keeps sending requests to a member that
/// died; with one client per member, a failure moves the store to the next.
struct Member {
    client: Client,
    kv: KvClient,
}

struct Shared {
    members: Vec<Member>,
    /// The member requests go to until one fails.
    preferred: AtomicUsize,
    /// Normalized: no trailing slash.
    prefix: String,
    /// For error messages.
    endpoints: String,
    request_timeout: Duration,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.shared.endpoints)
            .field("prefix", &self.shared.prefix)
            .field("fence", &self.fence)
            .finish()
    }
}

impl EtcdStore {
    /// Connects and checks that etcd answers within the connect timeout.
    pub async fn connect(config: EtcdConfig) -> StoreResult<Self> {
        let endpoints = config.endpoints.join(",");
        if config.endpoints.is_empty() {
            return Err(StoreError::Unavailable(
                "no etcd endpoints configured".into(),
            ));
        }
        let unavailable = |error: &dyn fmt::Display| {
            StoreError::Unavailable(format!("cannot reach etcd at {endpoints}: {error}"))
        };
        let options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_keep_alive(
                KEEPALIVE_INTERVAL,
                config.request_timeout.max(MIN_KEEPALIVE_TIMEOUT),
            );
        let mut members = Vec::with_capacity(config.endpoints.len());
        for endpoint in &config.endpoints {
            let client = tokio::time::timeout(
                config.connect_timeout,
                Client::connect([endpoint.as_str()], Some(options.clone())),
            )
            .await
            .map_err(|_| {
                unavailable(&format!(
                    "no connection to {endpoint} within {:?}",
                    config.connect_timeout
                ))
            })?
            .map_err(|error| unavailable(&error))?;
            let kv = client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES);
            members.push(Member { client, kv });
        }
        let store = Self {
            shared: Arc::new(Shared {
                members,
                preferred: AtomicUsize::new(0),
                prefix: config.prefix.trim_end_matches('/').to_owned(),
                endpoints: endpoints.clone(),
                request_timeout: config.request_timeout,
            }),
            fence: None,
            stop: CancellationToken::new(),
        };
        // The client connects lazily: probe until etcd answers.
        let deadline = Instant::now() + config.connect_timeout;
        let probe_key = store.absolute_key(b"");
        let mut backoff = FIRST_BACKOFF;
        loop {
            let (member, mut kv) = store.preferred_kv();
            let probe = kv.get(probe_key.clone(), Some(GetOptions::new().with_count_only()));
            let error = match tokio::time::timeout(config.request_timeout, probe).await {
                Ok(Ok(_)) => return Ok(store),
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {:?}", config.request_timeout),
            };
            store.member_failed(member);
            if Instant::now() + backoff >= deadline {
                return Err(unavailable(&error));
            }
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
        }
    }

    /// The same client, with every commit fenced on `fence`; `stop` is
    /// cancelled when leadership is lost.
    pub fn fenced(&self, fence: Fence, stop: CancellationToken) -> EtcdStore {
        EtcdStore {
            shared: Arc::clone(&self.shared),
            fence: Some(fence),
            stop,
        }
    }

    /// A clone of the client, for election and lease code.
    /// A client of the member requests currently go to.
    pub fn client(&self) -> Client {
        let index = self.shared.preferred.load(Ordering::Acquire) % self.shared.members.len();
        self.shared.members[index].client.clone()
    }

    /// A client failed to reach its member: move on to the next member.
    /// Callers holding a client from [`Self::client`] call this on a
    /// transport error and take a new one.
    pub fn client_failed(&self) {
        let current = self.shared.preferred.load(Ordering::Acquire);
        self.member_failed(current % self.shared.members.len());
    }

    fn preferred_kv(&self) -> (usize, KvClient) {
        let index = self.shared.preferred.load(Ordering::Acquire) % self.shared.members.len();
        (index, self.shared.members[index].kv.clone())
    }

    /// Moves requests away from `member` (unless another request already
    /// did).
    fn member_failed(&self, member: usize) {
        let next = (member + 1) % self.shared.members.len();
        let _ = self.shared.preferred.compare_exchange(
            member,
            next,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The normalized prefix, e.g. `/baton`.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// `<prefix>/<key>`.
    pub fn absolute_key(&self, key: &[u8]) -> Vec<u8> {
        let mut absolute = Vec::with_capacity(self.shared.prefix.len() + 1 + key.len());
        absolute.extend_from_slice(self.shared.prefix.as_bytes());
        absolute.push(b'/');
        absolute.extend_from_slice(key);
        absolute
    }

    fn relative_key<'k>(&self, absolute: &'k [u8]) -> &'k [u8] {
        &absolute[(self.shared.prefix.len() + 1).min(absolute.len())..]
    }

    /// `<prefix>/chunks/<escaped key>/`: every chunk set of `key`.
    fn chunk_root(&self, key: &[u8]) -> Vec<u8> {
        let mut root = self.chunk_prefix(key);
        root.push(b'/');
        root
    }

    /// `<prefix>/chunks/<escaped prefix>`: the chunk sets of every key
    /// starting with `prefix`.
    fn chunk_prefix(&self, prefix: &[u8]) -> Vec<u8> {
        let mut root = self.absolute_key(CHUNKS);
        escape_into(prefix, &mut root);
        root
    }

    /// `<prefix>/chunks/<escaped key>/<sha256 hex>/`.
    fn chunk_dir(&self, key: &[u8], digest: &[u8; 32]) -> Vec<u8> {
        let mut dir = self.chunk_root(key);
        dir.extend_from_slice(hex::encode(digest).as_bytes());
        dir.push(b'/');
        dir
    }

    /// The reserved range of chunk keys.
    fn chunk_range(&self) -> (Vec<u8>, Vec<u8>) {
        let start = self.absolute_key(CHUNKS);
        let end = prefix_end(&start).expect("the chunk prefix ends in '/'");
        (start, end)
    }

    /// `[start, end)` less the reserved chunk range, in ascending order.
    fn without_chunks(&self, start: Vec<u8>, end: Vec<u8>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let (chunks_start, chunks_end) = self.chunk_range();
        let mut ranges = Vec::with_capacity(2);
        if start.as_slice() < end.as_slice().min(chunks_start.as_slice()) {
            ranges.push((start.clone(), end.clone().min(chunks_start)));
        }
        let after = start.max(chunks_end);
        if after < end {
            ranges.push((after, end));
        }
        ranges
    }

    /// The absolute ranges holding the data keys under `prefix`.
    fn data_ranges(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let start = self.absolute_key(prefix);
        let end = prefix_end(&start).expect("an absolute key contains '/'");
        self.without_chunks(start, end)
    }

    fn write_deadline(&self) -> Duration {
        MIN_WRITE_DEADLINE.max(self.shared.request_timeout * 2)
    }

    fn fence_compare(&self) -> Vec<Compare> {
        self.fence
            .iter()
            .map(|fence| {
                Compare::create_revision(fence.key.clone(), CompareOp::Equal, fence.create_revision)
            })
            .collect()
    }

    fn fenced_error(&self) -> StoreError {
        let fence = self.fence.as_ref();
        StoreError::Fenced(format!(
            "election key `{}` no longer has create revision {}",
            fence.map_or_else(String::new, |f| String::from_utf8_lossy(&f.key)
                .into_owned()),
            fence.map_or(0, |f| f.create_revision),
        ))
    }

    // ----- Reads -----

    /// One range request, retried while etcd is unreachable.
    async fn range(&self, key: Vec<u8>, options: GetOptions) -> Result<GetResponse, ReadError> {
        let timeout = self.shared.request_timeout;
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (member, mut kv) = self.preferred_kv();
            let request = kv.get(key.clone(), Some(options.clone()));
            let message = match tokio::time::timeout(timeout, request).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(error)) => match classify(error) {
                    Failure::Refused(message) => {
                        return Err(
                            StoreError::Io(format!("etcd refused a read: {message}")).into()
                        );
                    }
                    Failure::Compacted(_) => return Err(ReadError::Compacted),
                    Failure::NotSent(message) | Failure::Unknown(message) => message,
                },
                Err(_) => format!("no answer within {timeout:?}"),
            };
            self.member_failed(member);
            if attempt >= READ_ATTEMPTS {
                return Err(StoreError::Unavailable(format!(
                    "etcd at {} did not answer a read ({attempt} attempts): {message}",
                    self.shared.endpoints
                ))
                .into());
            }
            debug!(attempt, error = %message, "etcd read failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
        }
    }

    /// Key-value pairs in the given ascending, disjoint ranges, in scan
    /// order, all read at one revision; values not yet assembled.
    async fn range_pages(
        &self,
        ranges: Vec<(Vec<u8>, Vec<u8>)>,
        reverse: bool,
        limit: usize,
    ) -> Result<(Vec<etcd_client::KeyValue>, i64), ReadError> {
        let mut revision = 0;
        let mut found = Vec::new();
        let ordered: Vec<_> = if reverse {
            ranges.into_iter().rev().collect()
        } else {
            ranges
        };
        for (mut start, mut end) in ordered {
            loop {
                let wanted = if limit == 0 {
                    SCAN_PAGE
                } else {
                    SCAN_PAGE.min(limit - found.len())
                };
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(wanted as i64)
                    .with_revision(revision);
                if reverse {
                    options = options.with_sort(SortTarget::Key, SortOrder::Descend);
                }
                let mut response = self.range(start.clone(), options).await?;
                if revision == 0 {
                    revision = response.header().map_or(0, |header| header.revision());
                }
                let more = response.more();
                let kvs = response.take_kvs();
                let Some(last) = kvs.last() else { break };
                if reverse {
                    end = last.key().to_vec();
                } else {
                    start = last.key().to_vec();
                    start.push(0);
                }
                found.extend(kvs);
                if limit != 0 && found.len() >= limit {
                    return Ok((found, revision));
                }
                if !more {
                    break;
                }
            }
        }
        Ok((found, revision))
    }

    /// A stored value as the caller wrote it: itself, or its chunks put
    /// back together (read at `revision`, the header's).
    async fn assemble(
        &self,
        key: &[u8],
        value: Vec<u8>,
        revision: i64,
    ) -> Result<Vec<u8>, ReadError> {
        let header = match ChunkHeader::parse(&value) {
            None => return Ok(value),
            Some(Err(reason)) => return Err(StoreError::corrupt(key, reason).into()),
            Some(Ok(header)) => header,
        };
        let dir = self.chunk_dir(key, &header.digest);
        let end = prefix_end(&dir).expect("a chunk directory ends in '/'");
        let total = usize::try_from(header.len)
            .map_err(|_| StoreError::corrupt(key, "chunked value larger than memory"))?;
        // The header is not trusted with an allocation of any size.
        let mut assembled = Vec::with_capacity(total.min(64 * 1024 * 1024));
        let mut next: u32 = 0;
        let mut start = dir.clone();
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(CHUNK_PAGE as i64)
                .with_revision(revision);
            let mut response = self.range(start.clone(), options).await?;
            let more = response.more();
            let kvs = response.take_kvs();
            for kv in &kvs {
                if kv.key() != chunk_key(&dir, next).as_slice() {
                    return Err(StoreError::corrupt(
                        key,
                        format!(
                            "chunk {next} of {} is missing (found `{}`)",
                            header.count,
                            String::from_utf8_lossy(kv.key())
                        ),
                    )
                    .into());
                }
                if assembled.len() + kv.value().len() > total {
                    return Err(StoreError::corrupt(
                        key,
                        format!("chunks hold more than the {total} bytes the header names"),
                    )
                    .into());
                }
                assembled.extend_from_slice(kv.value());
                next += 1;
            }
            match kvs.last() {
                Some(last) if more => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        if next != header.count || assembled.len() != total {
            return Err(StoreError::corrupt(
                key,
                format!(
                    "found {next} chunks and {} bytes; the header names {} chunks and {total} bytes",
                    assembled.len(),
                    header.count
                ),
            )
            .into());
        }
        let (assembled, digest) = off_the_runtime(assembled.len(), move || {
            let digest: [u8; 32] = Sha256::digest(&assembled).into();
            (assembled, digest)
        })
        .await?;
        if digest != header.digest {
            return Err(StoreError::corrupt(key, "chunks do not match the header's digest").into());
        }
        Ok(assembled)
    }

    async fn get_once(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        let mut response = self
            .range(self.absolute_key(key), GetOptions::new())
            .await?;
        let revision = response.header().map_or(0, |header| header.revision());
        let Some(kv) = response.take_kvs().into_iter().next() else {
            return Ok(None);
        };
        let (_, value) = kv.into_key_value();
        self.assemble(key, value, revision).await.map(Some)
    }

    async fn scan_once(&self, scan: &Scan) -> Result<Vec<KeyValue>, ReadError> {
        let start = self.absolute_key(&scan.prefix);
        let end = prefix_end(&start).expect("an absolute key contains '/'");
        let (start, end) = match (&scan.after, scan.reverse) {
            (Some(after), false) => {
                let mut after = self.absolute_key(after);
                after.push(0);
                (start.max(after), end)
            }
            (Some(after), true) => (start, end.min(self.absolute_key(after))),
            (None, _) => (start, end),
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let ranges = self.without_chunks(start, end);
        let (found, revision) = self.range_pages(ranges, scan.reverse, scan.limit).await?;
        let mut entries = Vec::with_capacity(found.len());
        for kv in found {
            let (key, value) = kv.into_key_value();
            let key = self.relative_key(&key).to_vec();
            let value = self.assemble(&key, value, revision).await?;
            entries.push((key, value));
        }
        Ok(entries)
    }

    // ----- Writes -----

    /// Sends one transaction until it gets an answer, resolving unknown
    /// outcomes by resending (see the module docs).
    async fn send(&self, txn: &Txn, what: &str) -> StoreResult<Sent> {
        let timeout = self.shared.request_timeout;
        let deadline = Instant::now() + self.write_deadline();
        let mut backoff = FIRST_BACKOFF;
        let mut maybe_applied = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (member, mut kv) = self.preferred_kv();
            let message = match tokio::time::timeout(timeout, kv.txn(txn.clone())).await {
                Ok(Ok(response)) => {
                    return Ok(Sent {
                        response,
                        after_unknown: maybe_applied,
                    });
                }
                Ok(Err(error)) => match classify(error) {
                    Failure::Refused(message) => {
                        return Err(if maybe_applied {
                            StoreError::Indeterminate(format!(
                                "{what}: an attempt's outcome is unknown and etcd then refused it: {message}"
                            ))
                        } else {
                            StoreError::Io(format!("etcd refused {what}: {message}"))
                        });
                    }
                    Failure::NotSent(message) | Failure::Compacted(message) => message,
                    Failure::Unknown(message) => {
                        maybe_applied = true;
                        message
                    }
                },
                Err(_) => {
                    maybe_applied = true;
                    format!("no answer within {timeout:?}")
                }
            };
            self.member_failed(member);
            let give_up = || {
                if maybe_applied {
                    StoreError::Indeterminate(format!(
                        "{what}: no answer from etcd at {} after {attempt} attempts: {message}",
                        self.shared.endpoints
                    ))
                } else {
                    StoreError::Unavailable(format!(
                        "{what}: etcd at {} unreachable after {attempt} attempts: {message}",
                        self.shared.endpoints
                    ))
                }
            };
            if self.stop.is_cancelled() || Instant::now() + backoff >= deadline {
                return Err(give_up());
            }
            warn!(attempt, maybe_applied, error = %message, "etcd write failed; sending it again");
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return Err(give_up()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = next_backoff(backoff);
        }
    }

    /// Writes the chunks of one large value, before the batch that points
    /// at them. Nothing of the batch is applied if this fails.
    async fn write_chunks(&self, chunked: &Chunked) -> StoreResult<()> {
        let pieces: Vec<&[u8]> = chunked.value.chunks(CHUNK_SIZE).collect();
        let mut index = 0;
        while index < pieces.len() {
            let mut ops = Vec::new();
            let mut bytes = 0;
            while index < pieces.len()
                && (ops.is_empty() || bytes + pieces[index].len() <= CHUNK_TXN_BYTES)
            {
                bytes += pieces[index].len();
                ops.push(TxnOp::put(
                    chunk_key(&chunked.dir, index as u32),
                    pieces[index].to_vec(),
                    None,
                ));
                index += 1;
            }
            let txn = Txn::new().when(self.fence_compare()).and_then(ops);
            let what = format!(
                "writing chunks of `{}`",
                String::from_utf8_lossy(&chunked.key)
            );
            let sent = self.send(&txn, &what).await.map_err(|error| match error {
                // The batch was not sent: nothing of it applied.
                StoreError::Indeterminate(message) => StoreError::Unavailable(message),
                other => other,
            })?;
            if !sent.response.succeeded() {
                return Err(self.fenced_error());
            }
        }
        debug!(key = %String::from_utf8_lossy(&chunked.key), chunks = pieces.len(), "wrote chunks");
        Ok(())
    }

    /// Deletes chunk sets the batch left unreferenced, after it committed.
    /// Best effort: what is left is harmless.
    async fn clean_up(&self, ops: Vec<TxnOp>) {
        let mut ops = ops;
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(MAX_TXN_OPS));
            let txn = Txn::new().when(self.fence_compare()).and_then(ops);
            match self.send(&txn, "deleting unreferenced chunks").await {
                Ok(sent) if sent.response.succeeded() => {}
                Ok(_) => {
                    warn!("unreferenced chunks left behind: fenced");
                    return;
                }
                Err(error) => {
                    warn!(%error, "unreferenced chunks left behind");
                    return;
                }
            }
            ops = rest;
        }
    }

    /// Turns a batch into chunk sets to write first and the transaction.
    fn plan(&self, batch: Batch) -> StoreResult<Plan> {
        let Batch { ops, conditionals } = batch;
        for key in ops
            .iter()
            .chain(conditionals.iter().flat_map(|c| &c.ops))
            .map(op_key)
            .chain(
                conditionals
                    .iter()
                    .flat_map(|c| &c.preconditions)
                    .map(|precondition| match precondition {
                        Precondition::DoesNotExist(key) => key.as_slice(),
                    }),
            )
        {
            if key.starts_with(CHUNKS) {
                return Err(StoreError::Io(format!(
                    "key `{}` is inside `chunks/`, which the etcd store reserves for chunked values",
                    String::from_utf8_lossy(key)
                )));
            }
        }
        let mut parts: Vec<Vec<Op>> = Vec::with_capacity(1 + conditionals.len());
        let mut compares: Vec<Vec<Compare>> = Vec::with_capacity(conditionals.len());
        parts.push(ops);
        for conditional in conditionals {
            compares.push(
                conditional
                    .preconditions
                    .into_iter()
                    .map(|Precondition::DoesNotExist(key)| {
                        Compare::create_revision(self.absolute_key(&key), CompareOp::Equal, 0)
                    })
                    .collect(),
            );
            parts.push(conditional.ops);
        }
        let chunk = self.choose_chunked(&parts, &compares)?;
        let mut chunk_sets = Vec::new();
        let mut planned = Vec::with_capacity(parts.len());
        for (part, chunk) in parts.into_iter().zip(chunk) {
            let mut main = Vec::with_capacity(part.len());
            let mut cleanup = Vec::new();
            let mut first_put = None;
            for (op, chunk) in part.into_iter().zip(chunk) {
                match op {
                    Op::Put { key, value } => {
                        let stored = if chunk {
                            let digest: [u8; 32] = Sha256::digest(&value).into();
                            let header = ChunkHeader {
                                digest,
                                count: value.len().div_ceil(CHUNK_SIZE) as u32,
                                len: value.len() as u64,
                            }
                            .encode();
                            let root = self.chunk_root(&key);
                            let dir = self.chunk_dir(&key, &digest);
                            let root_end = prefix_end(&root).expect("ends in '/'");
                            let dir_end = prefix_end(&dir).expect("ends in '/'");
                            cleanup.push(delete_range(root, dir.clone()));
                            cleanup.push(delete_range(dir_end, root_end));
                            chunk_sets.push(Chunked {
                                key: key.clone(),
                                dir,
                                value,
                            });
                            header
                        } else {
                            value
                        };
                        let absolute = self.absolute_key(&key);
                        if first_put.is_none() {
                            first_put = Some((absolute.clone(), stored.clone()));
                        }
                        main.push(TxnOp::put(absolute, stored, None));
                    }
                    Op::Delete { key } => {
                        main.push(TxnOp::delete(self.absolute_key(&key), None));
                        let root = self.chunk_root(&key);
                        let end = prefix_end(&root).expect("ends in '/'");
                        cleanup.push(delete_range(root, end));
                    }
                    Op::DeletePrefix { prefix } => {
                        for (start, end) in self.data_ranges(&prefix) {
                            main.push(delete_range(start, end));
                        }
                        let chunks = self.chunk_prefix(&prefix);
                        let end = prefix_end(&chunks).expect("contains '/'");
                        cleanup.push(delete_range(chunks, end));
                    }
                }
            }
            planned.push(PlannedOps {
                main,
                cleanup,
                first_put,
            });
        }
        let plain = planned.remove(0);
        let conditionals = planned
            .into_iter()
            .zip(compares)
            .map(|(ops, compares)| PlannedConditional { compares, ops })
            .collect();
        Ok(Plan {
            chunk_sets,
            plain,
            conditionals,
        })
    }

    /// Which puts to chunk: large values, values that look like a header,
    /// and then the largest others while the transaction would exceed
    /// etcd's request limit.
    fn choose_chunked(
        &self,
        parts: &[Vec<Op>],
        compares: &[Vec<Compare>],
    ) -> StoreResult<Vec<Vec<bool>>> {
        let mut chunk: Vec<Vec<bool>> = parts
            .iter()
            .map(|ops| {
                ops.iter()
                    .map(|op| match op {
                        Op::Put { value, .. } => {
                            value.len() > CHUNK_THRESHOLD || value.starts_with(CHUNK_HEADER_MAGIC)
                        }
                        _ => false,
                    })
                    .collect()
            })
            .collect();
        let prefix = self.shared.prefix.len();
        let mut estimate: usize = compares.iter().flatten().count() * (prefix + 64)
            + compares.len() * 16
            + parts
                .iter()
                .zip(&chunk)
                .flat_map(|(ops, chunk)| ops.iter().zip(chunk))
                .map(|(op, chunked)| wire_estimate(op, *chunked, prefix))
                .sum::<usize>();
        if estimate <= REQUEST_BYTES_BUDGET {
            return Ok(chunk);
        }
        let mut inline: Vec<(usize, usize, usize)> = parts
            .iter()
            .enumerate()
            .flat_map(|(part, ops)| {
                ops.iter()
                    .enumerate()
                    .map(move |(index, op)| (part, index, op))
            })
            .filter(|(part, index, _)| !chunk[*part][*index])
            .filter_map(|(part, index, op)| match op {
                Op::Put { value, .. } => Some((part, index, value.len())),
                _ => None,
            })
            .collect();
        inline.sort_by_key(|(_, _, len)| std::cmp::Reverse(*len));
        for (part, index, _) in inline {
            let op = &parts[part][index];
            estimate =
                estimate - wire_estimate(op, false, prefix) + wire_estimate(op, true, prefix);
            chunk[part][index] = true;
            if estimate <= REQUEST_BYTES_BUDGET {
                return Ok(chunk);
            }
        }
        Err(StoreError::Io(format!(
            "a batch of about {estimate} bytes of keys and headers does not fit in one etcd request"
        )))
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        let mut restarts = 0;
        loop {
            match self.get_once(key).await {
                Ok(value) => return Ok(value),
                Err(ReadError::Store(error)) => return Err(error),
                Err(ReadError::Compacted) if restarts < COMPACTION_RESTARTS => restarts += 1,
                Err(ReadError::Compacted) => {
                    return Err(StoreError::Unavailable(format!(
                        "reading `{}`: etcd kept compacting the revision being read",
                        String::from_utf8_lossy(key)
                    )));
                }
            }
        }
    }

    async fn scan(&self, scan: Scan) -> StoreResult<Vec<KeyValue>> {
        let mut restarts = 0;
        loop {
            match self.scan_once(&scan).await {
                Ok(entries) => return Ok(entries),
                Err(ReadError::Store(error)) => return Err(error),
                Err(ReadError::Compacted) if restarts < COMPACTION_RESTARTS => restarts += 1,
                Err(ReadError::Compacted) => {
                    return Err(StoreError::Unavailable(format!(
                        "scanning `{}`: etcd kept compacting the revision being read",
                        String::from_utf8_lossy(&scan.prefix)
                    )));
                }
            }
        }
    }

    async fn commit(&self, batch: Batch) -> StoreResult<BatchOutcome> {
        if batch.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let bytes = batch
            .ops
            .iter()
            .chain(batch.conditionals.iter().flat_map(|c| &c.ops))
            .map(Op::size)
            .sum();
        let store = self.clone();
        // Hashing large values takes milliseconds.
        let plan = off_the_runtime(bytes, move || store.plan(batch)).await??;
        for chunked in &plan.chunk_sets {
            self.write_chunks(chunked).await?;
        }
        let compare = self.fence_compare();
        let inline_cleanup = plan.fits(compare.len(), true);
        if !inline_cleanup && !plan.fits(compare.len(), false) {
            return Err(StoreError::Io(format!(
                "the batch needs more than etcd's {MAX_TXN_OPS} operations per transaction"
            )));
        }
        let Plan {
            plain,
            conditionals,
            ..
        } = plan;
        let mut success = plain.main;
        let mut deferred = Vec::new();
        if inline_cleanup {
            success.extend(plain.cleanup);
        } else {
            deferred.extend(plain.cleanup);
        }
        let plain_count = success.len();
        let mut first_puts = Vec::with_capacity(conditionals.len());
        let mut conditional_cleanup = Vec::with_capacity(conditionals.len());
        for conditional in conditionals {
            let mut ops = conditional.ops.main;
            if inline_cleanup {
                ops.extend(conditional.ops.cleanup);
                conditional_cleanup.push(Vec::new());
            } else {
                conditional_cleanup.push(conditional.ops.cleanup);
            }
            first_puts.push(conditional.ops.first_put);
            success.push(TxnOp::txn(
                Txn::new().when(conditional.compares).and_then(ops),
            ));
        }
        let txn = Txn::new().when(compare).and_then(success);
        let sent = self.send(&txn, "committing a batch").await?;
        if !sent.response.succeeded() {
            return Err(if sent.after_unknown {
                StoreError::Indeterminate(format!(
                    "an attempt's outcome is unknown and the resend was fenced: {}",
                    self.fenced_error()
                ))
            } else {
                self.fenced_error()
            });
        }
        let mut applied = nested_outcomes(&sent.response, plain_count, first_puts.len())?;
        if sent.after_unknown {
            for (index, first_put) in first_puts.iter().enumerate() {
                if applied[index] {
                    continue;
                }
                // The lost attempt may have applied it: look for its write.
                let Some((key, written)) = first_put else {
                    return Err(StoreError::Indeterminate(format!(
                        "conditional {index} has no put to tell whether an unanswered attempt applied it"
                    )));
                };
                let relative = self.relative_key(key).to_vec();
                let stored = match self.range(key.clone(), GetOptions::new()).await {
                    Ok(mut response) => response
                        .take_kvs()
                        .into_iter()
                        .next()
                        .map(|kv| kv.into_key_value().1),
                    Err(error) => {
                        return Err(StoreError::Indeterminate(format!(
                            "cannot read `{}` back to resolve an unanswered attempt: {}",
                            String::from_utf8_lossy(&relative),
                            ReadError::into_store_error(error)
                        )));
                    }
                };
                applied[index] = stored.as_ref() == Some(written);
            }
        }
        for (cleanup, applied) in conditional_cleanup.into_iter().zip(&applied) {
            if *applied {
                deferred.extend(cleanup);
            }
        }
        if !deferred.is_empty() {
            self.clean_up(deferred).await;
        }
        Ok(BatchOutcome { applied })
    }

    fn max_batch_ops(&self) -> usize {
        MAX_TXN_OPS
    }

    fn max_batch_bytes(&self) -> usize {
        MAX_BATCH_BYTES
    }

    fn kind(&self) -> &'static str {
        "etcd"
    }
}

/// A transaction that got an answer.
struct Sent {
    response: TxnResponse,
    /// An earlier attempt's outcome is unknown: it may have applied.
    after_unknown: bool,
}

/// A large value to write as chunks before its batch.
struct Chunked {
    /// Relative, for messages.
    key: Vec<u8>,
    dir: Vec<u8>,
    value: Vec<u8>,
}

/// One part of a batch (its plain operations, or one conditional's) as
/// etcd operations.
struct PlannedOps {
    /// What the batch must do atomically.
    main: Vec<TxnOp>,
    /// Chunk deletions that may also run after the batch.
    cleanup: Vec<TxnOp>,
    /// Absolute key and stored bytes of the first put, to resolve an
    /// unknown outcome.
    first_put: Option<(Vec<u8>, Vec<u8>)>,
}

struct PlannedConditional {
    compares: Vec<Compare>,
    ops: PlannedOps,
}

struct Plan {
    chunk_sets: Vec<Chunked>,
    plain: PlannedOps,
    conditionals: Vec<PlannedConditional>,
}

impl Plan {
    /// Whether the transaction passes etcd's `--max-txn-ops` check: each
    /// level counts the most of its compares and operations, and a nested
    /// transaction gets what its parent left.
    fn fits(&self, outer_compares: usize, with_cleanup: bool) -> bool {
        let count =
            |ops: &PlannedOps| ops.main.len() + if with_cleanup { ops.cleanup.len() } else { 0 };
        let outer = outer_compares.max(count(&self.plain) + self.conditionals.len());
        outer <= MAX_TXN_OPS
            && self
                .conditionals
                .iter()
                .all(|c| c.compares.len().max(count(&c.ops)) <= MAX_TXN_OPS - outer)
    }
}

/// Whether each nested transaction (one per conditional, after the plain
/// operations) succeeded.
fn nested_outcomes(
    response: &TxnResponse,
    plain: usize,
    conditionals: usize,
) -> StoreResult<Vec<bool>> {
    let responses = response.op_responses();
    let outcomes: Vec<bool> = responses
        .iter()
        .skip(plain)
        .filter_map(|response| match response {
            TxnOpResponse::Txn(nested) => Some(nested.succeeded()),
            _ => None,
        })
        .collect();
    if outcomes.len() != conditionals || responses.len() != plain + conditionals {
        return Err(StoreError::Indeterminate(format!(
            "etcd answered a transaction of {} operations with {} responses",
            plain + conditionals,
            responses.len()
        )));
    }
    Ok(outcomes)
}

/// A chunk header: what the chunks of a value must add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChunkHeader {
    digest: [u8; 32],
    count: u32,
    len: u64,
}

impl ChunkHeader {
    fn encode(&self) -> Vec<u8> {
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(CHUNK_HEADER_MAGIC);
        header.extend_from_slice(&self.digest);
        header.extend_from_slice(&self.count.to_be_bytes());
        header.extend_from_slice(&self.len.to_be_bytes());
        header
    }

    /// `None` for a value that is not a header.
    fn parse(value: &[u8]) -> Option<Result<Self, String>> {
        let rest = value.strip_prefix(CHUNK_HEADER_MAGIC)?;
        if value.len() != HEADER_LEN {
            return Some(Err(format!(
                "chunk header of {} bytes, expected {HEADER_LEN}",
                value.len()
            )));
        }
        let (digest, rest) = rest.split_at(32);
        let (count, len) = rest.split_at(4);
        Some(Ok(Self {
            digest: digest.try_into().expect("32 bytes"),
            count: u32::from_be_bytes(count.try_into().expect("4 bytes")),
            len: u64::from_be_bytes(len.try_into().expect("8 bytes")),
        }))
    }
}

fn chunk_key(dir: &[u8], index: u32) -> Vec<u8> {
    let mut key = dir.to_vec();
    key.extend_from_slice(format!("{index:08}").as_bytes());
    key
}

fn delete_range(start: Vec<u8>, end: Vec<u8>) -> TxnOp {
    TxnOp::delete(start, Some(DeleteOptions::new().with_range(end)))
}

fn op_key(op: &Op) -> &[u8] {
    match op {
        Op::Put { key, .. } | Op::Delete { key } => key,
        Op::DeletePrefix { prefix } => prefix,
    }
}

/// Escapes a key for a chunk path: `/`, `%` and bytes outside printable
/// ASCII become `%XX`. Each byte maps to a fixed code and no code is a
/// prefix of another, so escaping keeps prefixes, and an escaped key never
/// contains `/`.
fn escape_into(key: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in key {
        if byte.is_ascii_graphic() && byte != b'/' && byte != b'%' {
            out.push(byte);
        } else {
            out.extend_from_slice(&[
                b'%',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
        }
    }
}

/// A generous estimate of the request bytes an operation adds.
fn wire_estimate(op: &Op, chunked: bool, prefix: usize) -> usize {
    let absolute = |key: &[u8]| prefix + 1 + key.len() + 16;
    let chunk_path = |key: &[u8]| prefix + 1 + CHUNKS.len() + 3 * key.len() + 80;
    match op {
        Op::Put { key, .. } if chunked => absolute(key) + HEADER_LEN + 4 * chunk_path(key),
        Op::Put { key, value } => absolute(key) + value.len(),
        Op::Delete { key } => absolute(key) + 2 * chunk_path(key),
        Op::DeletePrefix { prefix: p } => 4 * absolute(p) + 2 * chunk_path(p),
    }
}

/// Runs `work` on the blocking pool when it handles more than `bytes`
/// worth hashing there, inline otherwise.
async fn off_the_runtime<T: Send + 'static>(
    bytes: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> StoreResult<T> {
    if bytes < BLOCKING_BYTES {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::Io(format!("store task failed: {error}")))
}

fn next_backoff(backoff: Duration) -> Duration {
    let jitter = Duration::from_millis(rand::random_range(0..=backoff.as_millis().min(100) as u64));
    (backoff * 2).min(MAX_BACKOFF) + jitter
}

/// Why a read failed.
enum ReadError {
    Store(StoreError),
    /// The pinned revision was compacted: read again from the start.
    Compacted,
}

impl ReadError {
    fn into_store_error(self) -> StoreError {
        match self {
            ReadError::Store(error) => error,
            ReadError::Compacted => {
                StoreError::Unavailable("the revision read was compacted".into())
            }
        }
    }
}

impl From<StoreError> for ReadError {
    fn from(error: StoreError) -> Self {
        ReadError::Store(error)
    }
}

/// What an etcd client error says about the request.
enum Failure {
    /// Certainly not executed (no connection, throttled): try again.
    NotSent(String),
    /// May have executed: the connection broke or etcd gave up waiting.
    Unknown(String),
    /// etcd refused it as invalid; trying again cannot help.
    Refused(String),
    /// The revision read was compacted.
    Compacted(String),
}

fn classify(error: etcd_client::Error) -> Failure {
    use tonic::Code;
    let status = match error {
        etcd_client::Error::GRpcStatus(status) => status,
        etcd_client::Error::TransportError(error) => return Failure::NotSent(error.to_string()),
        etcd_client::Error::IoError(error) => return Failure::Unknown(error.to_string()),
        other => return Failure::Refused(other.to_string()),
    };
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Unavailable if never_connected(&status) => Failure::NotSent(message),
        Code::ResourceExhausted if status.message().contains("too many requests") => {
            Failure::NotSent(message)
        }
        Code::OutOfRange if status.message().contains("compacted") => Failure::Compacted(message),
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::ResourceExhausted
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Unimplemented => Failure::Refused(message),
        _ => Failure::Unknown(message),
    }
}

/// Whether the status comes from failing to connect (so the request was
/// never sent).
fn never_connected(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(key: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        escape_into(key, &mut out);
        out
    }

    #[test]
    fn escaping_keeps_prefixes_and_removes_slashes() {
        assert_eq!(
            escaped(b"dag_versions/etl/0000000001"),
            b"dag_versions%2Fetl%2F0000000001"
        );
        assert_eq!(escaped(b"a%b c\xff"), b"a%25b%20c%FF");
        let keys: [&[u8]; 6] = [b"a", b"a/", b"a/b", b"ab", b"a%", b"a\x00"];
        for key in keys {
            for prefix in keys {
                assert_eq!(
                    escaped(key).starts_with(&escaped(prefix)),
                    key.starts_with(prefix),
                    "{key:?} / {prefix:?}"
                );
            }
        }
    }

    #[test]
    fn headers_round_trip_and_reject_bad_lengths() {
        let header = ChunkHeader {
            digest: [7; 32],
            count: 3,
            len: 1_500_000,
        };
        let encoded = header.encode();
        assert_eq!(encoded.len(), HEADER_LEN);
        assert_eq!(ChunkHeader::parse(&encoded), Some(Ok(header)));
        assert_eq!(ChunkHeader::parse(b"\x0a\x03abc"), None);
        assert!(matches!(
            ChunkHeader::parse(&encoded[..HEADER_LEN - 1]),
            Some(Err(_))
        ));
    }
}
