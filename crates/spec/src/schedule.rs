//! Cron schedules (`backup.schedule`): five fields (`0 2 * * *`: 02:00 every day), or six with
//! seconds first (`*/5 * * * * *`: every five seconds), in UTC.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A parsed cron schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    text: String,
}

impl Schedule {
    /// Parses a cron expression; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "`{text}` has {fields} fields; a cron schedule has five (minute hour day month weekday) or six (seconds first)"
            ));
        }
        let cron = croner::Cron::from_str(text).map_err(|e| format!("`{text}`: {e}"))?;
        Ok(Schedule {
            cron,
            text: text.to_owned(),
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time after `ms` (unix milliseconds) the schedule fires.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let at = DateTime::<Utc>::from_timestamp_millis(ms)?;
        self.cron
            .find_next_occurrence(&at, false)
            .ok()
            .map(|t| t.timestamp_millis())
    }

    /// The longest gap between two firings over the year from `ms` (at most 1,000 firings
    /// looked at): how long a healthy schedule may go without running.
    pub fn period(&self, ms: i64) -> Duration {
        let horizon = ms + 366 * 86_400_000;
        let mut longest = 0;
        let mut at = self.next_after(ms);
        for _ in 0..1000 {
            let (Some(a), Some(b)) = (at, at.and_then(|a| self.next_after(a))) else {
                break;
            };
            longest = longest.max(b - a);
            if b > horizon {
                break;
            }
            at = Some(b);
        }
        Duration::from_millis(u64::try_from(longest).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_1_2026: i64 = 1_767_225_600_000;

    #[test]
    fn daily_and_every_few_seconds() {
        let daily = Schedule::parse("0 2 * * *").unwrap();
        assert_eq!(
            daily.next_after(JAN_1_2026),
            Some(JAN_1_2026 + 2 * 3_600_000)
        );
        assert_eq!(daily.period(JAN_1_2026), Duration::from_secs(86_400));
        let fast = Schedule::parse("*/3 * * * * *").unwrap();
        assert_eq!(fast.next_after(JAN_1_2026), Some(JAN_1_2026 + 3_000));
        assert_eq!(fast.period(JAN_1_2026), Duration::from_secs(3));
    }

    #[test]
    fn bad_schedules_say_why() {
        assert!(Schedule::parse("0 2 * *").unwrap_err().contains("4 fields"));
        assert!(Schedule::parse("0 25 * * *").is_err());
        assert!(Schedule::parse("every day").is_err());
    }
}
