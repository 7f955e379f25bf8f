//! Logs that survive: `baton controller` and one `baton worker` behind a
//! TCP proxy.
//!
//! A task prints about 20 MB of numbered lines. While the worker is still
//! sending them (the proxy is partitioned after the controller stored the
//! first part, so the rest stays in the worker's spool), the task finishes
//! and the worker is SIGKILLed. A worker started again with the same id on
//! the same work dir finds the finished attempt in its spool, announces it,
//! resends the log from what the controller acknowledged and then the
//! result: the run succeeds with one attempt, and the stored log equals what
//! the task printed, byte for byte.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_tests::pb::{AttemptOutcome, ReadTaskLogRequest, RunState};
use baton_tests::poll::poll_until;
use baton_tests::{Api, Sandbox, TcpProxy};
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(60);

/// Lines printed before the task waits for the test's signal, and in all.
const FIRST_LINES: u64 = 100_000;
const TOTAL_LINES: u64 = 3_000_000;

/// What the task prints: `1\n2\n...` up to `TOTAL_LINES`.
fn expected_log() -> Vec<u8> {
    let mut log = Vec::with_capacity(24 * 1024 * 1024);
    for line in 1..=TOTAL_LINES {
        log.extend_from_slice(line.to_string().as_bytes());
        log.push(b'\n');
    }
    log
}

/// The stored log of the task's latest attempt, read from the start.
async fn stored_log(api: &mut Api, run_id: &str, task_id: &str) -> Vec<u8> {
    let mut stream = api
        .client
        .runs
        .read_task_log(ReadTaskLogRequest {
            run_id: run_id.to_string(),
            task_id: task_id.to_string(),
            ..Default::default()
        })
        .await
        .expect("ReadTaskLog")
        .into_inner();
    let mut log = Vec::new();
    for _ in 0..100_000 {
        let message = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("log chunk in time")
            .expect("ReadTaskLog stream");
        let Some(chunk) = message else {
            return log;
        };
        assert_eq!(chunk.offset as usize, log.len(), "chunks are contiguous");
        log.extend_from_slice(&chunk.data);
    }
    panic!("the log of {task_id} did not end");
}

/// The spool slots of the worker that hold an attempt the controller does
/// not have all of yet (a slot's `acked` says `forgotten` once it does),
/// and whether each has its result.
fn spooled_attempts(work_dir: &Path) -> Vec<(PathBuf, bool)> {
    let spool = work_dir.join("workers").join("w").join("spool");
    let Ok(entries) = std::fs::read_dir(spool) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|slot| {
            std::fs::read_to_string(slot.join("acked")).unwrap_or_default() != "forgotten"
        })
        .map(|slot| {
            let finished = std::fs::metadata(slot.join("result.json"))
                .is_ok_and(|metadata| metadata.len() > 0);
            (slot, finished)
        })
        .collect()
}

fn first_difference(stored: &[u8], expected: &[u8]) -> String {
    let at = stored
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(stored.len().min(expected.len()));
    let context = |log: &[u8]| {
        String::from_utf8_lossy(&log[at.saturating_sub(20)..(at + 20).min(log.len())]).into_owned()
    };
    format!(
        "stored {} bytes, expected {}; first difference at byte {at}: stored {:?}, expected {:?}",
        stored.len(),
        expected.len(),
        context(stored),
        context(expected)
    )
}

#[tokio::test]
async fn a_worker_restarted_while_sending_a_long_log_resumes_and_the_log_is_exact() {
    let mut sandbox = Sandbox::new("logs-survive");
    // The worker is away (partitioned, then dead) for a few seconds: long
    // enough for the sandbox's short lost-worker timeout, not for this one.
    let _controller = sandbox
        .start_controller(&["--worker-lost-timeout", "60s"])
        .await;
    let proxy = TcpProxy::start(sandbox.port()).await;
    let mut worker = sandbox
        .start_worker_at("w", &proxy.addr(), &["--slots", "1"])
        .await;
    let work_dir = sandbox.path().join("work-w");
    let go = sandbox.path().join("go");
    let mut api = sandbox.api().await;
    let dag = format!(
        r#"
id: chatty
tasks:
  - id: print
    command: |
      seq 1 {FIRST_LINES}
      i=0
      while [ ! -e "$GO" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
      seq {} {TOTAL_LINES}
    env:
      GO: "{}"
"#,
        FIRST_LINES + 1,
        go.display()
    );
    api.register(&dag).await;
    let run = api.trigger("chatty").await;

    // The worker sends: the controller has part of the log.
    let stored = poll_until(WAIT, Duration::from_millis(100), async || {
        let stored = stored_log(&mut api, &run.run_id, "print").await.len();
        (stored > 0).then_some(stored)
    })
    .await
    .unwrap_or_else(|| panic!("no log stored in time\n{}", sandbox.logs_tail()));
    assert!(stored > 0);

    // Cut the worker off, let the task print the rest and finish: all of it
    // goes to the spool, none of it to the controller.
    proxy.partition();
    std::fs::write(&go, b"go").expect("cannot write the go file");
    let spooled = poll_until(WAIT, Duration::from_millis(50), async || {
        let attempts = spooled_attempts(&work_dir);
        (attempts.len() == 1 && attempts[0].1).then_some(attempts)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the finished attempt is not in the spool: {:?}\n{}",
            spooled_attempts(&work_dir),
            sandbox.logs_tail()
        )
    });
    let expected = expected_log();
    let spooled_log = std::fs::read(spooled[0].0.join("log")).expect("spooled log");
    assert!(
        spooled_log == expected,
        "the spool holds what the task printed: {}",
        first_difference(&spooled_log, &expected)
    );
    let stored = stored_log(&mut api, &run.run_id, "print").await.len();
    assert!(
        stored > 0 && stored < expected.len(),
        "the worker is killed while still sending: {stored} of {} bytes stored",
        expected.len()
    );

    worker.signal(Signal::SIGKILL);
    worker.wait_exit(WAIT).await;
    proxy.heal();
    let addr = sandbox.addr();
    let restarted = sandbox.start_worker_at("w", &addr, &["--slots", "1"]).await;
    assert!(
        restarted
            .log_contents()
            .contains("resuming a finished attempt from the spool"),
        "{}",
        restarted.log_tail()
    );

    let view = api.wait_for_run(&run.run_id, WAIT).await;
    assert_eq!(view.state(), RunState::Success, "{}", view.describe());
    let attempts = api.attempts(&run.run_id, "print").await;
    assert_eq!(
        attempts.len(),
        1,
        "one attempt, recorded once: {attempts:?}"
    );
    assert_eq!(attempts[0].outcome, AttemptOutcome::Succeeded as i32);
    assert_eq!(attempts[0].log_bytes, expected.len() as u64, "{attempts:?}");

    let stored = stored_log(&mut api, &run.run_id, "print").await;
    assert!(
        stored == expected,
        "the stored log is what the task printed: {}",
        first_difference(&stored, &expected)
    );

    // Everything acknowledged: the spool holds nothing to send.
    let emptied = poll_until(WAIT, Duration::from_millis(50), async || {
        spooled_attempts(&work_dir).is_empty().then_some(())
    })
    .await;
    assert!(
        emptied.is_some(),
        "the spool is cleared once acknowledged: {:?}",
        spooled_attempts(&work_dir)
    );
    api.check_each_task_succeeded_once(&view)
        .await
        .assert_no_problems("after the resumed log");
}
