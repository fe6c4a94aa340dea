//! Waiting out a database that is away: the one retry policy for store work that
//! must not be dropped (engine commits, log appends).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// First and longest wait between tries while the database is unavailable.
const FIRST: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(2);

/// An error that may go away by itself (the database restarting), as opposed to one
/// that says the request is wrong or this coordinator must stop.
pub(crate) trait Transient: Display {
    fn is_transient(&self) -> bool;
}

impl Transient for super::StoreError {
    fn is_transient(&self) -> bool {
        super::StoreError::is_transient(self)
    }
}

impl Transient for crate::logs::LogError {
    fn is_transient(&self) -> bool {
        matches!(self, crate::logs::LogError::Store(e) if e.is_transient())
    }
}

/// Run `op` until it succeeds or fails for another reason than the database being
/// away, waiting 0.1 s, 0.2 s, … up to 2 s between tries; give up with the last
/// error when `stop` is cancelled (the leader term or the process ends).
pub(crate) async fn while_unavailable<T, E, F, Fut>(
    stop: &CancellationToken,
    mut op: F,
) -> Result<T, E>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut wait = FIRST;
    let mut warned = false;
    loop {
        match op().await {
            Err(e) if e.is_transient() => {
                if !warned {
                    warn!("the store is unavailable, retrying until it is back: {e}");
                    warned = true;
                }
                tokio::select! {
                    () = stop.cancelled() => return Err(e),
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(MAX);
            }
            other => {
                if warned && other.is_ok() {
                    info!("the store is back");
                }
                return other;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::store::StoreError;

    #[tokio::test]
    async fn retries_while_unavailable_and_stops_on_other_errors_or_cancel() {
        let tries = AtomicU32::new(0);
        let stop = CancellationToken::new();
        let got = while_unavailable(&stop, || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0..=2 => Err(StoreError::Unavailable("restarting".into())),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(got.expect("back"), 3);

        let tries = AtomicU32::new(0);
        let got: Result<(), StoreError> = while_unavailable(&stop, || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::NotLeader)
        })
        .await;
        assert!(matches!(got, Err(StoreError::NotLeader)));
        assert_eq!(tries.load(Ordering::SeqCst), 1, "not retried");

        stop.cancel();
        let got: Result<(), StoreError> = while_unavailable(&stop, || async {
            Err(StoreError::Unavailable("down".into()))
        })
        .await;
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "gave up");
    }
}
