//! The one bounded polling loop every wait of the harness goes through.

use std::time::Duration;

use tokio::time::Instant;

/// How often waits poll unless told otherwise.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `check` every `interval` until it returns `Some`, for at most
/// `timeout` and at most `timeout / interval + 2` rounds; `None` when time
/// ran out. `check` itself must be bounded (the harness's RPCs carry a
/// deadline).
pub async fn poll_until<T>(
    timeout: Duration,
    interval: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let interval = interval.max(Duration::from_millis(1));
    let rounds = timeout.as_millis() / interval.as_millis() + 2;
    for _ in 0..rounds {
        if let Some(value) = check().await {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
    }
    None
}
