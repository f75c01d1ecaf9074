//! The recipients and users files: copies of lists the primary keeps (its mailboxes and
//! aliases, its users and their passwords). A copy that stopped being refreshed refuses
//! the colleague who joined last week on the bad day (550 User unknown) and lets no one
//! log in whose password changed since; so a file older than `[doctor]
//! max_list_age_days` is a warning, with the README's sync recipes as the fix.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::Check;
use crate::config::{BackendKind, Config};

const FIX: &str = "refresh it from the primary on a schedule (README: \"Keeping the \
                   recipients and users in sync\"), then `systemctl reload standby`";

/// One check per list file this configuration uses (on the local backend; on AWS the
/// users file is an object of the bucket, not checked here).
pub fn checks(config: &Config, now: SystemTime) -> Vec<Check> {
    let max = Duration::from_secs(u64::from(config.doctor.max_list_age_days) * 86_400);
    let mut out = Vec::new();
    if let Some(path) = &config.recipients {
        out.push(age("recipients file", path, now, max));
    }
    if config.backend == BackendKind::Local
        && let Some(path) = &config.users.file
    {
        out.push(age("users file", path, now, max));
    }
    out
}

/// `path`'s age against `max`.
fn age(name: &str, path: &Path, now: SystemTime, max: Duration) -> Check {
    let shown = path.display();
    let modified = match std::fs::metadata(path).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(e) => {
            return Check::fail(
                name,
                format!("{shown}: {e}"),
                format!("create {shown} or fix its path in the config"),
            );
        }
    };
    // A time in the future (a clock set back, a copy keeping the primary's times) is
    // taken as new.
    let old = now.duration_since(modified).unwrap_or_default();
    let days = old.as_secs() / 86_400;
    let ago = match days {
        0 => "today".to_string(),
        1 => "1 day ago".to_string(),
        d => format!("{d} days ago"),
    };
    if old > max {
        Check::warn(
            name,
            format!(
                "{shown} last changed {ago}, over [doctor] max_list_age_days = {}: a stale \
                 copy refuses new colleagues on the bad day",
                max.as_secs() / 86_400
            ),
            FIX,
        )
    } else {
        Check::pass(name, format!("{shown} changed {ago}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_than_the_limit_warns_newer_passes_missing_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipients");
        std::fs::write(&path, "a@example.test\n").unwrap();
        let now = SystemTime::now();
        let week = Duration::from_secs(7 * 86_400);
        assert_eq!(
            age("r", &path, now, week).verdict,
            super::super::Verdict::Pass
        );
        let later = now + Duration::from_secs(8 * 86_400);
        let c = age("r", &path, later, week);
        assert_eq!(c.verdict, super::super::Verdict::Warn, "{c:?}");
        assert!(c.detail.contains("last changed 8 days ago"), "{c:?}");
        let c = age("r", &dir.path().join("none"), now, week);
        assert_eq!(c.verdict, super::super::Verdict::Fail, "{c:?}");
    }
}
