//! `baton logs RUN TASK [--attempt N] [-f]`: prints an attempt's output and,
//! with `-f`, follows it until the attempt ends (reconnecting if the
//! controller restarts meanwhile).

use std::io::Write;
use std::time::Duration;

use baton_common::pb::api::{GetRunRequest, ReadTaskLogRequest, TaskState};
use clap::Args;
use tonic::Code;

use super::Context;
use crate::Outcome;

#[derive(Debug, Args)]
pub struct LogsArgs {
    run_id: String,
    task_id: String,
    /// Attempt number (the latest by default).
    #[arg(long)]
    attempt: Option<u32>,
    /// Keep printing new output until the attempt ends.
    #[arg(short, long)]
    follow: bool,
}

/// How long `-f` waits for a task that has not started yet.
const WAIT_FOR_START: Duration = Duration::from_secs(3600);

pub async fn run(args: LogsArgs, context: &Context) -> anyhow::Result<Outcome> {
    let mut client = context.client().await?;
    let mut offset = 0u64;
    let mut attempt = args.attempt.unwrap_or(0);
    let started_waiting = tokio::time::Instant::now();
    loop {
        let request = ReadTaskLogRequest {
            run_id: args.run_id.clone(),
            task_id: args.task_id.clone(),
            attempt,
            offset,
            follow: args.follow,
        };
        let mut stream = match client.runs.read_task_log(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status)
                if args.follow
                    && status.code() == Code::FailedPrecondition
                    && started_waiting.elapsed() < WAIT_FOR_START =>
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        let mut stdout = std::io::stdout().lock();
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    attempt = chunk.attempt;
                    offset = chunk.offset + chunk.data.len() as u64;
                    if let Err(error) = stdout.write_all(&chunk.data).and_then(|()| stdout.flush())
                    {
                        // The reader went away (`baton logs … | head`): done.
                        if error.kind() == std::io::ErrorKind::BrokenPipe {
                            return Ok(Outcome::Success);
                        }
                        return Err(error.into());
                    }
                }
                Ok(None) => break,
                Err(status) if args.follow && status.code() == Code::Unavailable => break,
                Err(status) => return Err(status.into()),
            }
        }
        drop(stdout);
        if !args.follow || !still_running(context, &args, attempt).await? {
            return Ok(Outcome::Success);
        }
        // The stream ended while the attempt still runs (the controller
        // restarted, or the attempt was not open yet): read on from here.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn still_running(context: &Context, args: &LogsArgs, attempt: u32) -> anyhow::Result<bool> {
    let mut client = match context.client().await {
        Ok(client) => client,
        Err(_) => return Ok(true),
    };
    let response = match client
        .runs
        .get_run(GetRunRequest {
            run_id: args.run_id.clone(),
            include_tasks: true,
        })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unavailable => return Ok(true),
        Err(status) => return Err(status.into()),
    };
    Ok(response.tasks.iter().any(|task| {
        task.task_id == args.task_id
            && (attempt == 0 || task.attempt == attempt)
            && matches!(
                TaskState::try_from(task.state),
                Ok(TaskState::Leased | TaskState::Running | TaskState::Pending | TaskState::Ready)
            )
    }))
}
