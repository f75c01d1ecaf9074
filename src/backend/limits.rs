//! Login rate limits kept in the process's memory: the adapter for one `standby serve`,
//! which is the only process answering its logins (a restart forgets the counts, and
//! ends every session too).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::error::StoreError;
use crate::ports::LoginLimits;

/// Windows by key; ended ones are dropped as the map grows.
#[derive(Debug, Default)]
pub struct MemLoginLimits {
    windows: Mutex<Windows>,
}

#[derive(Debug, Default)]
struct Windows {
    /// Start, count and length of each key's window.
    by_key: HashMap<String, (DateTime<Utc>, u32, Duration)>,
    /// The size at which ended windows are swept next: twice what a sweep left (at
    /// least [`SWEEP_AT`]), so sweeping stays linear in the keys added.
    sweep_at: usize,
}

/// Past this many keys, ended windows are swept before a new one is added (an attacker
/// cycling names or addresses cannot grow the map without bound between sweeps).
const SWEEP_AT: usize = 10_000;

#[async_trait]
impl LoginLimits for MemLoginLimits {
    async fn blocked(
        &self,
        key: &str,
        now: DateTime<Utc>,
        window: Duration,
        max: u32,
    ) -> Result<Option<Duration>, StoreError> {
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        Ok(w.by_key.get(key).and_then(|(start, n, _)| {
            (*start + window > now && *n >= max).then(|| *start + window - now)
        }))
    }

    async fn failed(
        &self,
        key: &str,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Result<u32, StoreError> {
        let mut guard = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut *guard;
        if w.by_key.len() >= w.sweep_at.max(SWEEP_AT) && !w.by_key.contains_key(key) {
            // Each by its own window (a send count's hour outlives a login's minute).
            w.by_key
                .retain(|_, (start, _, length)| *start + *length > now);
            w.sweep_at = (2 * w.by_key.len()).max(SWEEP_AT);
        }
        let entry = w.by_key.entry(key.to_string()).or_insert((now, 0, window));
        if entry.0 + window <= now {
            *entry = (now, 0, window);
        }
        entry.1 += 1;
        Ok(entry.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sixth_attempt_after_five_failures_waits_for_the_window() {
        let l = MemLoginLimits::default();
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let minute = Duration::seconds(60);
        for i in 0..5 {
            let at = t0 + Duration::seconds(i);
            assert_eq!(l.blocked("ip:a", at, minute, 5).await.unwrap(), None);
            l.failed("ip:a", at, minute).await.unwrap();
        }
        let at = t0 + Duration::seconds(20);
        assert_eq!(
            l.blocked("ip:a", at, minute, 5).await.unwrap(),
            Some(Duration::seconds(40))
        );
        assert_eq!(l.blocked("ip:b", at, minute, 5).await.unwrap(), None);
        assert_eq!(
            l.blocked("ip:a", t0 + minute, minute, 5).await.unwrap(),
            None
        );
    }

    /// Each count is returned by the write that made it, and a sweep drops a window by
    /// its own length: an hour's send count outlives the logins' minute windows.
    #[tokio::test]
    async fn counts_are_returned_and_kept_for_their_own_window() {
        let l = MemLoginLimits::default();
        let t0 = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let (minute, hour) = (Duration::seconds(60), Duration::hours(1));
        assert_eq!(l.failed("send:a", t0, hour).await.unwrap(), 1);
        assert_eq!(l.failed("send:a", t0, hour).await.unwrap(), 2);
        let later = t0 + Duration::minutes(5);
        for i in 0..SWEEP_AT + 1 {
            l.failed(&format!("ip:{i}"), later, minute).await.unwrap();
        }
        assert_eq!(l.failed("send:a", later, hour).await.unwrap(), 3);
        assert_eq!(l.failed("send:a", t0 + hour, hour).await.unwrap(), 1);
    }
}
