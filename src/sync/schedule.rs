//! When the local server syncs on its own: `ITSMC_SYNC_SCHEDULE` in the timer trigger's NCRONTAB form
//! (`{second} {minute} {hour} {day} {month} {day-of-week}`, e.g. `0 */15 * * * *`), or a `hh:mm:ss`
//! interval as App Service plans also accept. In Azure the Functions host reads the same setting and calls
//! `/function-sync`; this is for `itsmc serve` on its own.
//!
//! Fields take `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and lists `a,b`; day-of-week runs 0
//! (Sunday) to 6, months 1 to 12; English three-letter names (`Mon`, `Jan`) work too. When both day and
//! day-of-week are restricted, both must match.

use chrono::{DateTime, Datelike, Duration, NaiveTime, Timelike, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Cron { seconds: Vec<u32>, minutes: Vec<u32>, hours: Vec<u32>, days: Vec<u32>, months: Vec<u32>, weekdays: Vec<u32> },
    Every(std::time::Duration),
}

const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const MONTH_NAMES: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if let Ok(time) = NaiveTime::parse_from_str(text, "%H:%M:%S") {
            let seconds = time.num_seconds_from_midnight();
            if seconds == 0 {
                return Err("an interval of 00:00:00 never ends".into());
            }
            return Ok(Schedule::Every(std::time::Duration::from_secs(u64::from(seconds))));
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [second, minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "'{text}' has {} fields; NCRONTAB has six: second minute hour day month day-of-week",
                fields.len()
            ));
        };
        Ok(Schedule::Cron {
            seconds: field("second", second, 0, 59, &[])?,
            minutes: field("minute", minute, 0, 59, &[])?,
            hours: field("hour", hour, 0, 23, &[])?,
            days: field("day", day, 1, 31, &[])?,
            months: field("month", month, 1, 12, &MONTH_NAMES)?,
            weekdays: field("day-of-week", weekday, 0, 6, &DAY_NAMES)?,
        })
    }

    /// The first time strictly after `after` that the schedule names (`None`: none in the next five years).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (seconds, minutes, hours, days, months, weekdays) = match self {
            Schedule::Every(interval) => return Some(after + Duration::from_std(*interval).ok()?),
            Schedule::Cron { seconds, minutes, hours, days, months, weekdays } => {
                (seconds, minutes, hours, days, months, weekdays)
            }
        };
        let mut date = after.date_naive();
        for _ in 0..(5 * 366) {
            let day_matches = months.contains(&date.month())
                && days.contains(&date.day())
                && weekdays.contains(&date.weekday().num_days_from_sunday());
            if day_matches {
                for &h in hours {
                    for &m in minutes {
                        for &s in seconds {
                            let at = date.and_hms_opt(h, m, s)?.and_utc();
                            if at > after {
                                return Some(at);
                            }
                        }
                    }
                }
            }
            date = date.succ_opt()?;
        }
        None
    }
}

/// The values one field names, sorted.
fn field(name: &str, text: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<u32>, String> {
    let bad = |why: String| format!("{name} '{text}': {why}");
    let value = |raw: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(raw)) {
            return Ok(min + i as u32);
        }
        let n: u32 = raw.parse().map_err(|_| bad(format!("'{raw}' is not a number")))?;
        if (min..=max).contains(&n) { Ok(n) } else { Err(bad(format!("{n} is outside {min}-{max}"))) }
    };
    let mut values = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 =
                    step.parse().ok().filter(|s| *s > 0).ok_or_else(|| bad(format!("bad step '{step}'")))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(range)?, max),
                None => (value(range)?, value(range)?),
            },
        };
        if from > to {
            return Err(bad(format!("{from}-{to} runs backwards")));
        }
        values.extend((from..=to).step_by(step as usize));
    }
    values.sort_unstable();
    values.dedup();
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_fifteen_minutes() {
        let schedule = Schedule::parse("0 */15 * * * *").unwrap();
        assert_eq!(schedule.next_after(at("2026-11-25T12:07:30Z")), Some(at("2026-11-25T12:15:00Z")));
        assert_eq!(schedule.next_after(at("2026-11-25T12:15:00Z")), Some(at("2026-11-25T12:30:00Z")));
        assert_eq!(schedule.next_after(at("2026-11-25T23:59:59Z")), Some(at("2026-11-26T00:00:00Z")));
    }

    #[test]
    fn weekdays_at_nine_skip_the_weekend() {
        let schedule = Schedule::parse("0 30 9 * * Mon-Fri").unwrap();
        // 2026-11-27 is a Friday.
        assert_eq!(schedule.next_after(at("2026-11-27T10:00:00Z")), Some(at("2026-11-30T09:30:00Z")));
        assert_eq!(Schedule::parse("0 30 9 * * 1-5"), Ok(schedule));
    }

    #[test]
    fn intervals_and_errors() {
        let every = Schedule::parse("00:05:00").unwrap();
        assert_eq!(every.next_after(at("2026-11-25T12:00:00Z")), Some(at("2026-11-25T12:05:00Z")));
        assert!(Schedule::parse("*/5 * * * *").unwrap_err().contains("six"));
        assert!(Schedule::parse("0 61 * * * *").unwrap_err().contains("minute '61'"));
        assert!(Schedule::parse("0 0 0 31 2 *").unwrap().next_after(at("2026-01-01T00:00:00Z")).is_none());
    }
}
