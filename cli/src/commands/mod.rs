//! The subcommands, and what they share: the connection to the controller
//! and the way errors are told to the user.

pub mod asset;
pub mod backfill;
pub mod cluster;
pub mod dag;
mod dates;
pub mod event;
pub mod logs;
mod params;
pub mod pool;
pub mod run;
pub mod server;
pub mod task;
pub mod top;

use anyhow::Context as _;
use baton_common::client::BatonClient;
use tonic::Code;

use crate::OutputFormat;

/// Global options every command may use.
pub struct Context {
    pub addr: String,
    pub output: OutputFormat,
}

impl Context {
    pub async fn client(&self) -> anyhow::Result<BatonClient> {
        BatonClient::connect(&self.addr).await.with_context(
            || "is a controller running? start one with `baton dev`, or set --addr / BATON_ADDR",
        )
    }

    pub fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }
}

/// A gRPC status as the user should read it: the code in words, then the
/// server's message (which names the field and the reason).
pub fn describe(error: &anyhow::Error) -> String {
    if let Some(status) = error.downcast_ref::<tonic::Status>() {
        return describe_status(status);
    }
    format!("{error:#}")
}

pub fn describe_status(status: &tonic::Status) -> String {
    let code = match status.code() {
        Code::InvalidArgument => "invalid argument",
        Code::NotFound => "not found",
        Code::FailedPrecondition => "failed precondition",
        Code::ResourceExhausted => "resource exhausted",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::Internal => "internal error",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::Unauthenticated => "unauthenticated",
        Code::Unimplemented => "not implemented by this controller (is it older than this baton?)",
        _ => "error",
    };
    let message = status.message();
    if message.is_empty() {
        code.to_string()
    } else if message.contains('\n') {
        let lines: Vec<String> = message.lines().map(|line| format!("  {line}")).collect();
        format!("{code}:\n{}", lines.join("\n"))
    } else {
        format!("{code}: {message}")
    }
}
