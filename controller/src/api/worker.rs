//! `WorkerService.Connect`: accepts a worker's stream, validates every
//! message at the edge, and relays them to the scheduler; the scheduler
//! answers through the stream's outbound channel.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton_common::error::{ApiError, ApiResult};
use baton_common::ids::{AttemptId, HandlerName, QueueName, WorkerId};
use baton_common::pb::api::worker_service_server::WorkerService;
use baton_common::pb::api::{ControllerMessage, Register, WorkerMessage, worker_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use super::{ApiContextRef, ResponseStream};
use crate::scheduler::WorkerEvent;

/// How long a new stream may take to send `Register`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_SLOTS: u32 = 10_000;
const MAX_QUEUES: usize = 100;
const MAX_LABELS: usize = 100;
const MAX_LABEL_BYTES: usize = 256;
const MAX_HANDLERS: usize = 1_000;
/// Largest log chunk a worker may send at once.
const MAX_LOG_CHUNK: usize = 4 * 1024 * 1024;

pub struct WorkerApi {
    context: ApiContextRef,
    next_conn: AtomicU64,
}

impl WorkerApi {
    pub fn new(context: ApiContextRef) -> Self {
        Self {
            context,
            next_conn: AtomicU64::new(1),
        }
    }
}

fn validate_register(register: &Register) -> ApiResult<()> {
    WorkerId::new(register.worker_id.clone())
        .map_err(|error| ApiError::invalid("register.worker_id", error.reason))?;
    if register.queues.is_empty() {
        return Err(ApiError::invalid(
            "register.queues",
            "a worker must serve at least one queue",
        ));
    }
    if register.queues.len() > MAX_QUEUES {
        return Err(ApiError::invalid(
            "register.queues",
            format!("at most {MAX_QUEUES} queues"),
        ));
    }
    for (index, queue) in register.queues.iter().enumerate() {
        QueueName::new(queue.clone()).map_err(|error| {
            ApiError::invalid(format!("register.queues[{index}]"), error.reason)
        })?;
    }
    if register.slots == 0 || register.slots > MAX_SLOTS {
        return Err(ApiError::invalid(
            "register.slots",
            format!("must be between 1 and {MAX_SLOTS}"),
        ));
    }
    if register.labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            "register.labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (key, value) in &register.labels {
        if key.is_empty() || key.len() > MAX_LABEL_BYTES || value.len() > MAX_LABEL_BYTES {
            return Err(ApiError::invalid(
                format!("register.labels[{key}]"),
                format!(
                    "keys must be 1 to {MAX_LABEL_BYTES} bytes and values at most {MAX_LABEL_BYTES}"
                ),
            ));
        }
    }
    if register.handlers.len() > MAX_HANDLERS {
        return Err(ApiError::invalid(
            "register.handlers",
            format!("at most {MAX_HANDLERS} handlers"),
        ));
    }
    for (index, handler) in register.handlers.iter().enumerate() {
        HandlerName::new(handler.clone()).map_err(|error| {
            ApiError::invalid(format!("register.handlers[{index}]"), error.reason)
        })?;
        if register.handlers[..index].contains(handler) {
            return Err(ApiError::invalid(
                format!("register.handlers[{index}]"),
                format!("handler `{handler}` is listed twice"),
            ));
        }
    }
    let mut seen = HashSet::new();
    for (index, attempt_id) in register.attempt_ids.iter().enumerate() {
        let parsed: AttemptId =
            attempt_id
                .parse()
                .map_err(|error: baton_common::ids::IdError| {
                    ApiError::invalid(format!("register.attempt_ids[{index}]"), error.reason)
                })?;
        if !seen.insert(parsed) {
            return Err(ApiError::invalid(
                format!("register.attempt_ids[{index}]"),
                "listed twice",
            ));
        }
    }
    Ok(())
}

/// Checks a message after `Register`; the stream ends on the first bad one.
fn validate_message(message: &worker_message::Message) -> ApiResult<()> {
    let attempt = |field: &str, value: &str| -> ApiResult<()> {
        value
            .parse::<AttemptId>()
            .map(|_| ())
            .map_err(|error| ApiError::invalid(field, error.reason))
    };
    match message {
        worker_message::Message::Register(_) => {
            Err(ApiError::invalid("register", "sent twice on one stream"))
        }
        worker_message::Message::Heartbeat(heartbeat) => {
            for (index, id) in heartbeat.running_attempt_ids.iter().enumerate() {
                attempt(&format!("heartbeat.running_attempt_ids[{index}]"), id)?;
            }
            Ok(())
        }
        worker_message::Message::TaskStarted(started) => {
            attempt("task_started.attempt_id", &started.attempt_id)
        }
        worker_message::Message::LogChunk(chunk) => {
            attempt("log_chunk.attempt_id", &chunk.attempt_id)?;
            if chunk.data.len() > MAX_LOG_CHUNK {
                return Err(ApiError::invalid(
                    "log_chunk.data",
                    format!("{} bytes; the limit is {MAX_LOG_CHUNK}", chunk.data.len()),
                ));
            }
            chunk
                .offset
                .checked_add(chunk.data.len() as u64)
                .map(|_| ())
                .ok_or_else(|| ApiError::invalid("log_chunk.offset", "overflows"))
        }
        worker_message::Message::TaskResult(result) => {
            attempt("task_result.attempt_id", &result.attempt_id)
        }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    type ConnectStream = ResponseStream<ControllerMessage>;

    async fn connect(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        // Workers register only with the leader; a follower sends them on.
        let term = self.context.leader()?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(REGISTER_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no register message within 10s"))??;
        let register = match first.and_then(|message| message.message) {
            Some(worker_message::Message::Register(register)) => register,
            _ => {
                return Err(ApiError::invalid(
                    "register",
                    "the first message of a stream must be register",
                )
                .into());
            }
        };
        validate_register(&register).map_err(Status::from)?;
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::unbounded_channel();
        let scheduler = term.scheduler.clone();
        let worker_id = register.worker_id.clone();
        if !scheduler
            .worker_event(
                conn_id,
                WorkerEvent::Connected {
                    register,
                    sender: sender.clone(),
                },
            )
            .await
        {
            return Err(Status::unavailable("the controller is shutting down"));
        }
        let shutdown = self.context.shutdown.clone();
        let role = self.context.role.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    () = sender.closed() => break,
                    () = shutdown.cancelled() => break,
                    () = term.ended.cancelled() => {
                        // This controller stopped leading: send the worker on.
                        let error = role.borrow().leader().err().unwrap_or(ApiError::NotLeader { leader: None });
                        let _ = sender.send(Err(error.into()));
                        break;
                    }
                };
                match next {
                    Ok(Some(WorkerMessage {
                        message: Some(message),
                    })) => {
                        if let Err(error) = validate_message(&message) {
                            warn!(worker = %worker_id, %error, "invalid message from worker; closing its stream");
                            let _ = sender.send(Err(error.into()));
                            break;
                        }
                        if !scheduler
                            .worker_event(conn_id, WorkerEvent::Message(message))
                            .await
                        {
                            break;
                        }
                    }
                    Ok(Some(WorkerMessage { message: None })) => {}
                    Ok(None) => break,
                    Err(status) => {
                        debug!(worker = %worker_id, %status, "worker stream failed");
                        break;
                    }
                }
            }
            scheduler
                .worker_event(conn_id, WorkerEvent::Disconnected)
                .await;
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(
            receiver,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register() -> Register {
        Register {
            worker_id: "w1".into(),
            queues: vec!["default".into()],
            slots: 2,
            ..Register::default()
        }
    }

    #[test]
    fn register_is_validated_field_by_field() {
        assert!(validate_register(&register()).is_ok());
        let error = validate_register(&Register {
            slots: 0,
            ..register()
        })
        .unwrap_err()
        .to_string();
        assert_eq!(error, "register.slots: must be between 1 and 10000");
        let error = validate_register(&Register {
            queues: vec![],
            ..register()
        })
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("register.queues: "), "{error}");
        let error = validate_register(&Register {
            queues: vec!["bad queue".into()],
            ..register()
        })
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("register.queues[0]: "), "{error}");
        let error = validate_register(&Register {
            attempt_ids: vec!["x".into()],
            ..register()
        })
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("register.attempt_ids[0]: "), "{error}");
    }
}
