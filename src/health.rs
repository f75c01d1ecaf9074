//! Health of the primary, with hysteresis.
//!
//! One failed probe must not stop a drain and one good probe must not start one: a
//! primary that flaps would otherwise get half a backlog and a storm of deferrals. The
//! primary counts as `up` after `up_after` consecutive good probes and as `down` after
//! `down_after` consecutive bad ones; in between it keeps its state. The record is stored
//! in the index so the state survives restarts and the CLI can show it.
//!
//! Each node (`node_id`: every `standby serve` process, the drain function) probes for
//! itself and keeps its own record: several nodes sharing one index (MX 20 and MX 30 on
//! two machines, a listener beside the SES path) never overwrite each other's counts, and
//! `standby status` shows what each of them sees.

use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::model::{
    Breaker, DrainReport, HEALTH_HISTORY, Halt, HealthRecord, LastDrain, PrimaryState, ProbeResult,
    StateChange,
};
use crate::ports::{Clock, Index, Probe};

/// Thresholds for [`HealthRecord::observe`].
#[derive(Debug, Clone, Copy)]
pub struct Hysteresis {
    pub up_after: u32,
    pub down_after: u32,
}

impl HealthRecord {
    pub fn new(node: impl Into<String>, address: impl Into<String>) -> Self {
        HealthRecord {
            node: node.into(),
            address: address.into(),
            state: PrimaryState::Unknown,
            since: None,
            last_probe: None,
            consecutive_ok: 0,
            consecutive_fail: 0,
            last_drain: None,
            history: Vec::new(),
            last_delivered: None,
            probes_ok: 0,
            probes_failed: 0,
            reconciled_until: None,
            sweep: None,
            retained_at: None,
            halted: None,
            version: 0,
        }
    }

    /// Fold one probe result into the state. Returns the new state when it changed.
    pub fn observe(&mut self, result: ProbeResult, h: Hysteresis) -> Option<PrimaryState> {
        let at = result.at;
        if result.ok {
            self.probes_ok = self.probes_ok.saturating_add(1);
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_fail = 0;
        } else {
            self.probes_failed = self.probes_failed.saturating_add(1);
            self.consecutive_fail = self.consecutive_fail.saturating_add(1);
            self.consecutive_ok = 0;
        }
        self.last_probe = Some(result);
        let next = if self.consecutive_ok >= h.up_after.max(1) {
            PrimaryState::Up
        } else if self.consecutive_fail >= h.down_after.max(1) {
            PrimaryState::Down
        } else {
            self.state
        };
        (next != self.state).then(|| {
            self.state = next;
            self.since = Some(at);
            self.history.push(StateChange { at, state: next });
            if self.history.len() > HEALTH_HISTORY {
                let extra = self.history.len() - HEALTH_HISTORY;
                self.history.drain(..extra);
            }
            next
        })
    }
}

/// Probe once, fold the result into `node`'s stored record and save it.
///
/// The address stored is the configured one, so a changed `primary.address` starts
/// from `unknown` rather than inheriting the old host's state.
pub async fn check(
    probe: &dyn Probe,
    index: &dyn Index,
    clock: &dyn Clock,
    (node, address): (&str, &str),
    h: Hysteresis,
) -> Result<HealthRecord, StoreError> {
    let outcome = probe.probe().await;
    let result = ProbeResult {
        at: clock.now(),
        ok: outcome.is_ok(),
        detail: match &outcome {
            Ok(d) => d.clone(),
            Err(e) => e.to_string(),
        },
    };
    if let Err(e) = &outcome {
        tracing::debug!(primary = address, error = %e, "probe failed");
    }
    update(index, node, address, |rec| {
        // A newer probe of another run of this node landed first: keep it.
        if rec.last_probe.as_ref().is_some_and(|p| p.at > result.at) {
            return false;
        }
        if let Some(state) = rec.observe(result.clone(), h) {
            tracing::info!(primary = address, %state, "primary health changed");
        }
        true
    })
    .await
}

/// Where the one health record lived before each node had its own (`health#primary` in
/// DynamoDB). Read only to carry its watermarks over; never written.
pub const LEGACY_NODE: &str = "primary";

/// `node`'s stored record for the primary at `address`; a different (or no) stored
/// address starts from `unknown`, so a changed `primary.address` inherits nothing of the
/// probe state.
///
/// The watermarks are not about the primary but about the store, so they are always kept:
/// `reconciled_until` (losing it makes the reconciler rescan every object in the bucket
/// and re-index, then redeliver, any whose record has already expired), the reconciler's
/// `sweep` position and `retained_at`. A node with no record yet takes them from the record of
/// [`LEGACY_NODE`], so upgrading a stack from the single-record layout rescans nothing.
pub async fn load_for(
    index: &dyn Index,
    node: &str,
    address: &str,
) -> Result<HealthRecord, StoreError> {
    let own = index.load_health(node).await?;
    let marks = match &own {
        Some(r) => Some(r.clone()),
        None if node != LEGACY_NODE => index.load_health(LEGACY_NODE).await?,
        None => None,
    };
    Ok(match own {
        Some(r) if r.address == address => HealthRecord {
            node: node.to_string(),
            ..r
        },
        // A fresh start still saves over the stored record: its version is the one read.
        _ => HealthRecord {
            reconciled_until: marks.as_ref().and_then(|m| m.reconciled_until),
            sweep: marks.as_ref().and_then(|m| m.sweep.clone()),
            retained_at: marks.as_ref().and_then(|m| m.retained_at),
            version: own.as_ref().map_or(0, |r| r.version),
            ..HealthRecord::new(node, address)
        },
    })
}

/// Change `node`'s record for the primary at `address` with `f` and save it, as a
/// compare-and-set: when another run of the same node saved it meanwhile (an overlapping
/// drain invocation, `standby drain` beside the function), read it again and apply `f`
/// again, so neither run's change (a probe count, a watermark, a circuit-breaker halt)
/// is lost. `f` returns whether there is anything to save. Returns the record as saved
/// (or as read, when `f` saved nothing).
///
/// # Errors
/// The index's; [`StoreError::HealthChanged`] after many tries in a row.
pub async fn update(
    index: &dyn Index,
    node: &str,
    address: &str,
    mut f: impl FnMut(&mut HealthRecord) -> bool,
) -> Result<HealthRecord, StoreError> {
    let mut tries = 0;
    loop {
        let mut rec = load_for(index, node, address).await?;
        if !f(&mut rec) {
            return Ok(rec);
        }
        match index.save_health(&rec).await {
            Ok(()) => {
                rec.version += 1;
                return Ok(rec);
            }
            Err(StoreError::HealthChanged(_)) if tries < 20 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

/// What an operator is shown as the primary's health: `node`'s own record when it has
/// one for `address`, else the most recently probed record of another node for it (an
/// operator's machine never probes; the nodes that serve do), else a fresh `unknown`.
pub async fn view(
    index: &dyn Index,
    node: &str,
    address: &str,
) -> Result<HealthRecord, StoreError> {
    if let Some(r) = index
        .load_health(node)
        .await?
        .filter(|r| r.address == address)
    {
        return Ok(r);
    }
    let probed = |r: &HealthRecord| r.last_probe.as_ref().map(|p| p.at);
    Ok(index
        .list_health()
        .await?
        .into_iter()
        .filter(|r| r.address == address)
        .max_by_key(probed)
        .unwrap_or_else(|| HealthRecord::new(node, address)))
}

/// Remember a drain run next to the primary's health, if it tried anything or stopped.
/// A run stopped by `[drain] breaker_5xx` refusals in a row halts draining
/// ([`HealthRecord::halted`]) until [`resume`].
pub async fn record_drain(
    index: &dyn Index,
    (node, address): (&str, &str),
    report: &DrainReport,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    if !report.eventful() {
        return Ok(());
    }
    update(index, node, address, |rec| {
        rec.last_drain = Some(LastDrain {
            at,
            report: report.clone(),
        });
        if report.delivered > 0 {
            rec.last_delivered = Some(at);
        }
        if report.breaker == Some(Breaker::Refusals5xx) {
            rec.halted = Some(Halt {
                at,
                reason: report.stopped.clone().unwrap_or_default(),
            });
        }
        true
    })
    .await
    .map(|_| ())
}

/// Whether draining is halted for `node` by the circuit breaker (and why): runs that
/// start by themselves (the serve loop, the schedule, `standby drain` without `--force`)
/// do not start then.
pub async fn halted(
    index: &dyn Index,
    (node, address): (&str, &str),
) -> Result<Option<Halt>, StoreError> {
    Ok(load_for(index, node, address).await?.halted)
}

/// An operator's `--force`: clear the halt, if any (returned), so draining resumes.
pub async fn resume(
    index: &dyn Index,
    (node, address): (&str, &str),
) -> Result<Option<Halt>, StoreError> {
    let mut cleared = None;
    update(index, node, address, |rec| {
        cleared = rec.halted.take();
        cleared.is_some()
    })
    .await?;
    if let Some(halt) = &cleared {
        tracing::info!(primary = address, reason = %halt.reason, "draining resumed by --force");
    }
    Ok(cleared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(ok: bool) -> ProbeResult {
        ProbeResult {
            at: Utc::now(),
            ok,
            detail: String::new(),
        }
    }

    const H: Hysteresis = Hysteresis {
        up_after: 3,
        down_after: 2,
    };

    #[test]
    fn needs_up_after_good_probes_to_come_up() {
        let mut r = HealthRecord::new("n", "p");
        assert_eq!(r.observe(probe(true), H), None);
        assert_eq!(r.observe(probe(true), H), None);
        assert_eq!(r.state, PrimaryState::Unknown);
        assert_eq!(r.observe(probe(true), H), Some(PrimaryState::Up));
    }

    struct Fixed(bool);

    #[async_trait::async_trait]
    impl Probe for Fixed {
        async fn probe(&self) -> Result<String, crate::error::RelayError> {
            if self.0 {
                Ok("ok".into())
            } else {
                Err(crate::error::RelayError::Timeout { stage: "banner" })
            }
        }
    }

    #[tokio::test]
    async fn state_survives_a_restart() {
        use crate::backend::SqliteIndex;
        use crate::ports::SystemClock;
        let dir = tempfile::tempdir().unwrap();
        {
            let index = SqliteIndex::open(dir.path()).unwrap();
            for _ in 0..3 {
                check(&Fixed(true), &index, &SystemClock, ("n", "p:25"), H)
                    .await
                    .unwrap();
            }
            assert_eq!(
                index.load_health("n").await.unwrap().unwrap().state,
                PrimaryState::Up
            );
        }
        // A new process: one failed probe must not undo what was learned before.
        let index = SqliteIndex::open(dir.path()).unwrap();
        let rec = check(&Fixed(false), &index, &SystemClock, ("n", "p:25"), H)
            .await
            .unwrap();
        assert_eq!((rec.state, rec.consecutive_fail), (PrimaryState::Up, 1));
        // A different primary address starts from scratch.
        let other = check(&Fixed(true), &index, &SystemClock, ("n", "q:25"), H)
            .await
            .unwrap();
        assert_eq!(other.state, PrimaryState::Unknown);
    }

    #[tokio::test]
    async fn nodes_keep_their_own_records() {
        use crate::backend::MemIndex;
        use crate::ports::SystemClock;
        let index = MemIndex::default();
        for _ in 0..3 {
            check(&Fixed(true), &index, &SystemClock, ("mx20", "p:25"), H)
                .await
                .unwrap();
        }
        // Another node's failed probes leave the first node's state and counts alone.
        for _ in 0..2 {
            check(&Fixed(false), &index, &SystemClock, ("mx30", "p:25"), H)
                .await
                .unwrap();
        }
        let all = index.list_health().await.unwrap();
        let seen: Vec<_> = all
            .iter()
            .map(|r| (r.node.as_str(), r.state, r.probes_ok, r.probes_failed))
            .collect();
        assert_eq!(
            seen,
            [
                ("mx20", PrimaryState::Up, 3, 0),
                ("mx30", PrimaryState::Down, 0, 2)
            ]
        );
    }

    #[tokio::test]
    async fn watermarks_survive_a_new_address_and_a_new_node() {
        use crate::backend::MemIndex;
        let index = MemIndex::default();
        let mark = Utc::now();
        let mut old = HealthRecord::new(LEGACY_NODE, "p:25");
        old.reconciled_until = Some(mark);
        old.retained_at = Some(mark);
        index.save_health(&old).await.unwrap();
        // A node with no record yet (the first run after the upgrade) carries them over.
        let fresh = load_for(&index, "lambda", "p:25").await.unwrap();
        assert_eq!(
            (fresh.reconciled_until, fresh.retained_at),
            (Some(mark), Some(mark))
        );
        // A changed primary address resets the probe state, not the store's watermarks.
        let mut own = fresh.clone();
        own.consecutive_ok = 7;
        index.save_health(&own).await.unwrap();
        let moved = load_for(&index, "lambda", "q:25").await.unwrap();
        assert_eq!(moved.consecutive_ok, 0);
        assert_eq!(moved.reconciled_until, Some(mark));
    }

    #[tokio::test]
    async fn refusals_halt_draining_until_resumed_and_a_4xx_at_mail_does_not() {
        use crate::backend::MemIndex;
        let index = MemIndex::default();
        let key = ("n", "p:25");
        let stopped = |kind| DrainReport {
            failed: 3,
            stopped: Some("circuit breaker: why".into()),
            breaker: Some(kind),
            ..Default::default()
        };
        record_drain(&index, key, &stopped(Breaker::Mail4xx), Utc::now())
            .await
            .unwrap();
        assert_eq!(halted(&index, key).await.unwrap(), None);
        record_drain(&index, key, &stopped(Breaker::Refusals5xx), Utc::now())
            .await
            .unwrap();
        let halt = halted(&index, key).await.unwrap().unwrap();
        assert_eq!(halt.reason, "circuit breaker: why");
        // A later run that tripped nothing leaves the halt: only --force resumes.
        let quiet = DrainReport {
            delivered: 1,
            ..Default::default()
        };
        record_drain(&index, key, &quiet, Utc::now()).await.unwrap();
        assert!(halted(&index, key).await.unwrap().is_some());
        assert_eq!(resume(&index, key).await.unwrap(), Some(halt));
        assert_eq!(halted(&index, key).await.unwrap(), None);
        assert_eq!(resume(&index, key).await.unwrap(), None);
    }

    #[test]
    fn one_failure_does_not_flip_up() {
        let mut r = HealthRecord::new("n", "p");
        for _ in 0..3 {
            r.observe(probe(true), H);
        }
        assert_eq!(r.observe(probe(false), H), None);
        assert_eq!(r.state, PrimaryState::Up);
        // A good probe in between resets the failure count.
        r.observe(probe(true), H);
        assert_eq!(r.observe(probe(false), H), None);
        assert_eq!(r.observe(probe(false), H), Some(PrimaryState::Down));
        // And coming back needs up_after in a row again.
        r.observe(probe(true), H);
        r.observe(probe(true), H);
        assert_eq!(r.state, PrimaryState::Down);
        assert_eq!(r.observe(probe(true), H), Some(PrimaryState::Up));
    }
}
