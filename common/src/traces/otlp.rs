//! The OTLP wire format of spans (`opentelemetry.proto.trace.v1.Span`), of
//! the resource and scopes they belong to, and of the export request that
//! carries them, written straight from borrowed fields into a byte buffer.
//!
//! Nothing is allocated per span: a span Baton builds is encoded from its
//! record (ids, times and `&str` attributes) where it ended, and the
//! exporter assembles a request by copying the encoded spans behind a
//! resource and scope header. Field numbers follow
//! `opentelemetry/proto/trace/v1/trace.proto`; fields at their default
//! value are left out, as protobuf encoders do.

use opentelemetry::trace::{Event, Link, SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;
use prost::encoding::{
    WireType, bool as pb_bool, double, encode_varint, encoded_len_varint, fixed32, fixed64, int64,
    key_len, uint64,
};
use uuid::Uuid;

/// `SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`: the flags say whether
/// the parent is remote.
const HAS_IS_REMOTE: u32 = 0x100;
/// `SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`: the parent is remote.
const IS_REMOTE: u32 = 0x200;

/// A protobuf message written in two passes: its length first (a nested
/// message is prefixed by it), then its bytes.
pub(crate) trait Message {
    fn encoded_len(&self) -> usize;
    fn encode(&self, buf: &mut Vec<u8>);
}

/// Length of a length-delimited field holding `len` bytes.
pub(crate) fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Writes a varint. Nearly every one in a span (field keys, lengths of
/// ids, names and attributes, the kind) is below 128 and takes one byte,
/// pushed here without the call into prost's general encoder, which
/// showed as the largest single cost of encoding a span.
#[inline(always)]
fn put_varint(value: u64, buf: &mut Vec<u8>) {
    if value < 0x80 {
        buf.push(value as u8);
    } else {
        encode_varint(value, buf);
    }
}

#[inline(always)]
fn put_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    put_varint(u64::from(tag << 3 | wire_type as u32), buf);
}

fn put_delimited_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, buf);
    put_varint(len as u64, buf);
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    put_delimited_header(tag, bytes.len(), buf);
    buf.extend_from_slice(bytes);
}

fn bytes_len(tag: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        delimited_len(tag, bytes.len())
    }
}

fn put_nonempty(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    if !bytes.is_empty() {
        put_bytes(tag, bytes, buf);
    }
}

// Scalar fields of proto3 are left out at 0. Lengths are prost's; the
// writers below are its wire format with a one-byte fast path.

fn uint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        uint64::encoded_len(tag, &value)
    }
}

fn put_uint(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        put_key(tag, WireType::Varint, buf);
        put_varint(value, buf);
    }
}

fn fixed64_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        fixed64::encoded_len(tag, &value)
    }
}

fn put_fixed64(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        put_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32_len(tag: u32, value: u32) -> usize {
    if value == 0 {
        0
    } else {
        fixed32::encoded_len(tag, &value)
    }
}

fn put_fixed32(tag: u32, value: u32, buf: &mut Vec<u8>) {
    if value != 0 {
        put_key(tag, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

pub(crate) fn message_len(tag: u32, message: &impl Message) -> usize {
    delimited_len(tag, message.encoded_len())
}

pub(crate) fn put_message(tag: u32, message: &impl Message, buf: &mut Vec<u8>) {
    put_delimited_header(tag, message.encoded_len(), buf);
    message.encode(buf);
}

fn repeated_len<M: Message>(tag: u32, messages: impl IntoIterator<Item = M>) -> usize {
    messages
        .into_iter()
        .map(|message| message_len(tag, &message))
        .sum()
}

fn put_repeated<M: Message>(tag: u32, messages: impl IntoIterator<Item = M>, buf: &mut Vec<u8>) {
    for message in messages {
        put_message(tag, &message, buf);
    }
}

/// The value of an attribute of a span Baton builds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttributeValue<'a> {
    Str(&'a str),
    Int(i64),
    /// Written as its hyphenated text, as ids are everywhere else.
    Uuid(Uuid),
}

/// One attribute (`KeyValue`) of a span Baton builds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attribute<'a> {
    pub key: &'static str,
    pub value: AttributeValue<'a>,
}

impl<'a> Attribute<'a> {
    pub const fn str(key: &'static str, value: &'a str) -> Self {
        Self {
            key,
            value: AttributeValue::Str(value),
        }
    }

    pub const fn int(key: &'static str, value: i64) -> Self {
        Self {
            key,
            value: AttributeValue::Int(value),
        }
    }

    pub const fn uuid(key: &'static str, value: Uuid) -> Self {
        Self {
            key,
            value: AttributeValue::Uuid(value),
        }
    }
}

/// `AnyValue.string_value` and `AnyValue.int_value`.
const STRING_VALUE: u32 = 1;
const BOOL_VALUE: u32 = 2;
const INT_VALUE: u32 = 3;
const DOUBLE_VALUE: u32 = 4;
const ARRAY_VALUE: u32 = 5;

/// Length of an `AnyValue` holding a string (`string_value` is written even
/// when empty: it is a member of a oneof).
fn string_value_len(value: &str) -> usize {
    delimited_len(STRING_VALUE, value.len())
}

fn int_value_len(value: i64) -> usize {
    int64::encoded_len(INT_VALUE, &value)
}

fn put_int_value(value: i64, buf: &mut Vec<u8>) {
    put_key(INT_VALUE, WireType::Varint, buf);
    // int64 is the two's complement as a varint, as prost writes it.
    put_varint(value as u64, buf);
}

const UUID_TEXT_LEN: usize = uuid::fmt::Hyphenated::LENGTH;

impl Message for AttributeValue<'_> {
    fn encoded_len(&self) -> usize {
        match *self {
            AttributeValue::Str(value) => string_value_len(value),
            AttributeValue::Int(value) => int_value_len(value),
            AttributeValue::Uuid(_) => delimited_len(STRING_VALUE, UUID_TEXT_LEN),
        }
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        match *self {
            AttributeValue::Str(value) => put_bytes(STRING_VALUE, value.as_bytes(), buf),
            AttributeValue::Int(value) => put_int_value(value, buf),
            AttributeValue::Uuid(value) => {
                let mut text = [0; UUID_TEXT_LEN];
                let text = value.hyphenated().encode_lower(&mut text);
                put_bytes(STRING_VALUE, text.as_bytes(), buf);
            }
        }
    }
}

/// `KeyValue { key = 1; value = 2 }`.
struct KeyValueMessage<'a, V> {
    key: &'a str,
    value: V,
}

impl<V: Message> Message for KeyValueMessage<'_, V> {
    fn encoded_len(&self) -> usize {
        bytes_len(1, self.key.as_bytes()) + message_len(2, &self.value)
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        put_nonempty(1, self.key.as_bytes(), buf);
        put_message(2, &self.value, buf);
    }
}

impl Message for &Attribute<'_> {
    fn encoded_len(&self) -> usize {
        KeyValueMessage {
            key: self.key,
            value: self.value,
        }
        .encoded_len()
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        KeyValueMessage {
            key: self.key,
            value: self.value,
        }
        .encode(buf);
    }
}

/// An SDK attribute value as an `AnyValue`.
struct SdkValue<'a>(&'a Value);

/// One element of an SDK array value.
enum ArrayItem<'a> {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(&'a str),
}

impl Message for ArrayItem<'_> {
    fn encoded_len(&self) -> usize {
        match *self {
            ArrayItem::Bool(value) => pb_bool::encoded_len(BOOL_VALUE, &value),
            ArrayItem::Int(value) => int_value_len(value),
            ArrayItem::Double(value) => double::encoded_len(DOUBLE_VALUE, &value),
            ArrayItem::Str(value) => string_value_len(value),
        }
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        match *self {
            ArrayItem::Bool(value) => pb_bool::encode(BOOL_VALUE, &value, buf),
            ArrayItem::Int(value) => put_int_value(value, buf),
            ArrayItem::Double(value) => double::encode(DOUBLE_VALUE, &value, buf),
            ArrayItem::Str(value) => put_bytes(STRING_VALUE, value.as_bytes(), buf),
        }
    }
}

/// `ArrayValue { repeated AnyValue values = 1 }`.
struct ArrayMessage<'a>(&'a Array);

impl<'a> ArrayMessage<'a> {
    fn items(&self) -> Box<dyn Iterator<Item = ArrayItem<'a>> + 'a> {
        match self.0 {
            Array::Bool(values) => Box::new(values.iter().map(|value| ArrayItem::Bool(*value))),
            Array::I64(values) => Box::new(values.iter().map(|value| ArrayItem::Int(*value))),
            Array::F64(values) => Box::new(values.iter().map(|value| ArrayItem::Double(*value))),
            Array::String(values) => {
                Box::new(values.iter().map(|value| ArrayItem::Str(value.as_str())))
            }
            _ => Box::new(std::iter::empty()),
        }
    }
}

impl Message for ArrayMessage<'_> {
    fn encoded_len(&self) -> usize {
        repeated_len(1, self.items())
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        put_repeated(1, self.items(), buf);
    }
}

impl Message for SdkValue<'_> {
    fn encoded_len(&self) -> usize {
        match self.0 {
            Value::Bool(value) => ArrayItem::Bool(*value).encoded_len(),
            Value::I64(value) => ArrayItem::Int(*value).encoded_len(),
            Value::F64(value) => ArrayItem::Double(*value).encoded_len(),
            Value::String(value) => string_value_len(value.as_str()),
            Value::Array(array) => message_len(ARRAY_VALUE, &ArrayMessage(array)),
            other => string_value_len(&other.as_str()),
        }
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        match self.0 {
            Value::Bool(value) => ArrayItem::Bool(*value).encode(buf),
            Value::I64(value) => ArrayItem::Int(*value).encode(buf),
            Value::F64(value) => ArrayItem::Double(*value).encode(buf),
            Value::String(value) => put_bytes(STRING_VALUE, value.as_str().as_bytes(), buf),
            Value::Array(array) => put_message(ARRAY_VALUE, &ArrayMessage(array), buf),
            other => put_bytes(STRING_VALUE, other.as_str().as_bytes(), buf),
        }
    }
}

impl Message for &KeyValue {
    fn encoded_len(&self) -> usize {
        KeyValueMessage {
            key: self.key.as_str(),
            value: SdkValue(&self.value),
        }
        .encoded_len()
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        KeyValueMessage {
            key: self.key.as_str(),
            value: SdkValue(&self.value),
        }
        .encode(buf);
    }
}

/// `Span.Event`.
impl Message for &Event {
    fn encoded_len(&self) -> usize {
        fixed64_len(1, unix_nanos(self.timestamp))
            + bytes_len(2, self.name.as_bytes())
            + repeated_len(3, &self.attributes)
            + uint_len(4, u64::from(self.dropped_attributes_count))
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        put_fixed64(1, unix_nanos(self.timestamp), buf);
        put_nonempty(2, self.name.as_bytes(), buf);
        put_repeated(3, &self.attributes, buf);
        put_uint(4, u64::from(self.dropped_attributes_count), buf);
    }
}

/// `Span.Link`.
struct LinkMessage<'a> {
    link: &'a Link,
    trace_state: String,
}

impl Message for LinkMessage<'_> {
    fn encoded_len(&self) -> usize {
        let context = &self.link.span_context;
        bytes_len(1, &context.trace_id().to_bytes())
            + bytes_len(2, &context.span_id().to_bytes())
            + bytes_len(3, self.trace_state.as_bytes())
            + repeated_len(4, &self.link.attributes)
            + uint_len(5, u64::from(self.link.dropped_attributes_count))
            + fixed32_len(6, link_flags(self.link))
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        let context = &self.link.span_context;
        put_nonempty(1, &context.trace_id().to_bytes(), buf);
        put_nonempty(2, &context.span_id().to_bytes(), buf);
        put_nonempty(3, self.trace_state.as_bytes(), buf);
        put_repeated(4, &self.link.attributes, buf);
        put_uint(5, u64::from(self.link.dropped_attributes_count), buf);
        put_fixed32(6, link_flags(self.link), buf);
    }
}

fn link_flags(link: &Link) -> u32 {
    let context = &link.span_context;
    span_flags(context.trace_flags().to_u8(), context.is_remote())
}

/// `Span.flags`: the W3C trace flags, and whether the parent is remote.
fn span_flags(trace_flags: u8, parent_is_remote: bool) -> u32 {
    let remote = if parent_is_remote { IS_REMOTE } else { 0 };
    u32::from(trace_flags) | HAS_IS_REMOTE | remote
}

/// `Status { message = 2; code = 3 }`: UNSET 0, OK 1, ERROR 2.
pub(crate) struct StatusMessage<'a> {
    code: u64,
    message: &'a str,
}

impl Message for StatusMessage<'_> {
    fn encoded_len(&self) -> usize {
        bytes_len(2, self.message.as_bytes()) + uint_len(3, self.code)
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        put_nonempty(2, self.message.as_bytes(), buf);
        put_uint(3, self.code, buf);
    }
}

impl<'a> From<&'a Status> for StatusMessage<'a> {
    fn from(status: &'a Status) -> Self {
        match status {
            Status::Unset => Self {
                code: 0,
                message: "",
            },
            Status::Ok => Self {
                code: 1,
                message: "",
            },
            Status::Error { description } => Self {
                code: 2,
                message: description,
            },
        }
    }
}

/// The status of a span Baton builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanStatus<'a> {
    Unset,
    /// Failed, with a description (may be empty).
    Error(&'a str),
}

impl<'a> From<SpanStatus<'a>> for StatusMessage<'a> {
    fn from(status: SpanStatus<'a>) -> Self {
        match status {
            SpanStatus::Unset => Self {
                code: 0,
                message: "",
            },
            SpanStatus::Error(message) => Self { code: 2, message },
        }
    }
}

/// Nanoseconds since the Unix epoch; 0 (left out) before it.
pub(crate) fn unix_nanos(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// Every field of a `Span`, borrowed from a record or from the SDK's
/// [`SpanData`].
pub(crate) struct SpanMessage<'a, A> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub trace_state: &'a str,
    /// All zeros for a root span (then left out).
    pub parent_span_id: [u8; 8],
    pub flags: u32,
    pub name: &'a str,
    /// `SpanKind`: INTERNAL 1, SERVER 2, CLIENT 3, PRODUCER 4, CONSUMER 5.
    pub kind: u64,
    pub start_nanos: u64,
    pub end_nanos: u64,
    pub attributes: &'a [A],
    pub dropped_attributes: u32,
    pub events: &'a [Event],
    pub dropped_events: u32,
    pub links: &'a [Link],
    pub dropped_links: u32,
    pub status: StatusMessage<'a>,
}

impl<'a, A> Message for SpanMessage<'a, A>
where
    &'a A: Message,
{
    fn encoded_len(&self) -> usize {
        let parent = if self.parent_span_id == [0; 8] {
            0
        } else {
            delimited_len(4, 8)
        };
        delimited_len(1, 16)
            + delimited_len(2, 8)
            + bytes_len(3, self.trace_state.as_bytes())
            + parent
            + fixed32_len(16, self.flags)
            + bytes_len(5, self.name.as_bytes())
            + uint_len(6, self.kind)
            + fixed64_len(7, self.start_nanos)
            + fixed64_len(8, self.end_nanos)
            + repeated_len(9, self.attributes)
            + uint_len(10, u64::from(self.dropped_attributes))
            + repeated_len(11, self.events)
            + uint_len(12, u64::from(self.dropped_events))
            + self
                .links()
                .map(|link| message_len(13, &link))
                .sum::<usize>()
            + uint_len(14, u64::from(self.dropped_links))
            + message_len(15, &self.status)
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        put_bytes(1, &self.trace_id, buf);
        put_bytes(2, &self.span_id, buf);
        put_nonempty(3, self.trace_state.as_bytes(), buf);
        if self.parent_span_id != [0; 8] {
            put_bytes(4, &self.parent_span_id, buf);
        }
        put_nonempty(5, self.name.as_bytes(), buf);
        put_uint(6, self.kind, buf);
        put_fixed64(7, self.start_nanos, buf);
        put_fixed64(8, self.end_nanos, buf);
        put_repeated(9, self.attributes, buf);
        put_uint(10, u64::from(self.dropped_attributes), buf);
        put_repeated(11, self.events, buf);
        put_uint(12, u64::from(self.dropped_events), buf);
        for link in self.links() {
            put_message(13, &link, buf);
        }
        put_uint(14, u64::from(self.dropped_links), buf);
        put_message(15, &self.status, buf);
        put_fixed32(16, self.flags, buf);
    }
}

impl<A> SpanMessage<'_, A> {
    fn links(&self) -> impl Iterator<Item = LinkMessage<'_>> {
        self.links.iter().map(|link| LinkMessage {
            link,
            trace_state: link.span_context.trace_state().header(),
        })
    }
}

/// A span Baton builds from its own records: everything it says, on the
/// stack or borrowed.
#[derive(Debug, Clone, Copy)]
pub struct SpanRecord<'a> {
    pub trace_id: opentelemetry::trace::TraceId,
    pub span_id: opentelemetry::trace::SpanId,
    /// [`SpanId::INVALID`](opentelemetry::trace::SpanId::INVALID) for the
    /// root of a trace.
    pub parent_span_id: opentelemetry::trace::SpanId,
    /// The parent was made by another process (the worker's execution
    /// span, whose parent is the controller's).
    pub parent_is_remote: bool,
    pub name: &'static str,
    pub start: std::time::SystemTime,
    /// Clamped to `start` when before it.
    pub end: std::time::SystemTime,
    pub attributes: super::Attributes<'a>,
    pub status: SpanStatus<'a>,
}

/// `Span.kind` INTERNAL, which every span built from a record is.
const KIND_INTERNAL: u64 = 1;
/// W3C trace flags of a kept span: sampled.
const SAMPLED: u8 = 1;

impl<'a> SpanRecord<'a> {
    pub(crate) fn message(&self) -> SpanMessage<'_, Attribute<'a>> {
        let start_nanos = unix_nanos(self.start);
        SpanMessage {
            trace_id: self.trace_id.to_bytes(),
            span_id: self.span_id.to_bytes(),
            trace_state: "",
            parent_span_id: self.parent_span_id.to_bytes(),
            flags: span_flags(SAMPLED, self.parent_is_remote),
            name: self.name,
            kind: KIND_INTERNAL,
            start_nanos,
            end_nanos: unix_nanos(self.end).max(start_nanos),
            attributes: self.attributes.as_slice(),
            dropped_attributes: 0,
            events: &[],
            dropped_events: 0,
            links: &[],
            dropped_links: 0,
            status: self.status.into(),
        }
    }
}

/// The SDK's span (one the `tracing` layer made) as a `Span` message; its
/// trace state is passed in, as the header text the SDK writes.
pub(crate) fn sdk_span_message<'a>(
    span: &'a SpanData,
    trace_state: &'a str,
) -> SpanMessage<'a, KeyValue> {
    let context = &span.span_context;
    let kind = match span.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    SpanMessage {
        trace_id: context.trace_id().to_bytes(),
        span_id: context.span_id().to_bytes(),
        trace_state,
        parent_span_id: span.parent_span_id.to_bytes(),
        flags: span_flags(context.trace_flags().to_u8(), span.parent_span_is_remote),
        name: &span.name,
        kind,
        start_nanos: unix_nanos(span.start_time),
        end_nanos: unix_nanos(span.end_time),
        attributes: &span.attributes,
        dropped_attributes: span.dropped_attributes_count,
        events: &span.events.events,
        dropped_events: span.events.dropped_count,
        links: &span.links.links,
        dropped_links: span.links.dropped_count,
        status: (&span.status).into(),
    }
}

/// `InstrumentationScope { name = 1; version = 2 }`.
pub(crate) struct ScopeMessage<'a> {
    pub name: &'a str,
    pub version: &'a str,
}

impl Message for ScopeMessage<'_> {
    fn encoded_len(&self) -> usize {
        bytes_len(1, self.name.as_bytes()) + bytes_len(2, self.version.as_bytes())
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        put_nonempty(1, self.name.as_bytes(), buf);
        put_nonempty(2, self.version.as_bytes(), buf);
    }
}

/// A process's resource, encoded once: the `Resource` message and the
/// resource's schema URL.
#[derive(Debug, Clone)]
pub struct EncodedResource {
    resource: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub fn new(resource: &opentelemetry_sdk::Resource) -> Self {
        let attributes: Vec<KeyValue> = resource
            .iter()
            .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
            .collect();
        let mut encoded = Vec::new();
        put_repeated(1, &attributes, &mut encoded);
        Self {
            resource: encoded,
            schema_url: resource.schema_url().unwrap_or_default().to_string(),
        }
    }
}

/// Writes an `ExportTraceServiceRequest` with one `ResourceSpans` holding
/// one `ScopeSpans`, of `scope` and the `Span` messages `spans` gives, into
/// `buf`. `spans` is called twice (lengths, then bytes) and must give the
/// same spans each time.
pub(crate) fn write_request<I>(
    resource: &EncodedResource,
    scope: &ScopeMessage<'_>,
    spans: impl Fn() -> I,
    buf: &mut Vec<u8>,
) where
    I: Iterator,
    I::Item: Message,
{
    let scope_spans_len = message_len(1, scope) + repeated_len(2, spans());
    let resource_spans_len = delimited_len(1, resource.resource.len())
        + delimited_len(2, scope_spans_len)
        + bytes_len(3, resource.schema_url.as_bytes());
    buf.reserve(delimited_len(1, resource_spans_len));
    put_delimited_header(1, resource_spans_len, buf);
    put_bytes(1, &resource.resource, buf);
    put_delimited_header(2, scope_spans_len, buf);
    put_message(1, scope, buf);
    put_repeated(2, spans(), buf);
    put_nonempty(3, resource.schema_url.as_bytes(), buf);
}

/// A `Span` message encoded already.
pub(crate) struct EncodedMessage<'a>(pub &'a [u8]);

impl Message for EncodedMessage<'_> {
    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(self.0);
    }
}
