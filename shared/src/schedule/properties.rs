//! Property: for random Celery crontabs EventBridge can express, the minutes Celery would run
//! (its own rule, on the expanded fields) and the fire times of the emitted EventBridge
//! expression (parsed back and evaluated) are the same over a whole year.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use proptest::prelude::*;

use super::celery::Crontab;
use super::expression::Schedule;
use crate::manifest::CronField;

/// One comma-separated part of a Celery field over `min..=max`.
fn part(min: u32, max: u32) -> impl Strategy<Value = String> {
    let span = max - min + 1;
    prop_oneof![
        Just("*".to_owned()),
        (1..=span + 2).prop_map(|k| format!("*/{k}")),
        (min..=max).prop_map(|a| a.to_string()),
        (min..=max, min..=max).prop_map(|(a, b)| format!("{a}-{b}")),
        (min..=max, min..=max, 1..=span / 2 + 1).prop_map(|(a, b, k)| format!("{a}-{b}/{k}")),
    ]
}

fn field(min: u32, max: u32) -> impl Strategy<Value = String> {
    prop::collection::vec(part(min, max), 1..=3).prop_map(|parts| parts.join(","))
}

fn weekday_field() -> impl Strategy<Value = String> {
    const NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    prop_oneof![
        field(0, 6),
        (0..7usize, 0..7usize).prop_map(|(a, b)| format!("{}-{}", NAMES[a], NAMES[b])),
        (0..7usize).prop_map(|a| NAMES[a].to_owned()),
    ]
}

/// (day_of_week, day_of_month): mostly combinations EventBridge can express, some that it
/// cannot (those must be refused for the day fields, never converted wrongly).
fn days() -> impl Strategy<Value = (String, String)> {
    let weeks = ["1-7", "8-14", "15-21", "22-28", "29-31"];
    prop_oneof![
        field(1, 31).prop_map(|dom| ("*".to_owned(), dom)),
        weekday_field().prop_map(|dow| (dow, "*".to_owned())),
        (0..7u32, 0..5usize).prop_map(move |(dow, week)| (dow.to_string(), weeks[week].to_owned())),
        (weekday_field(), field(1, 31)),
    ]
}

/// Every minute of `year` at which Celery runs the crontab, found minute by minute.
fn celery_minutes(crontab: &Crontab, year: i32) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut day = NaiveDate::from_ymd_opt(year, 1, 1).unwrap();
    while day.year() == year {
        let midnight = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap());
        for minute_of_day in 0..1440 {
            let t = midnight + Duration::minutes(minute_of_day);
            if crontab.matches(t) {
                out.push(t);
            }
        }
        day = day.succ_opt().unwrap();
    }
    out
}

fn text(s: &str) -> Option<CronField> {
    Some(CronField::Text(s.to_owned()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn celery_and_eventbridge_fire_at_the_same_minutes(
        minute in field(0, 59),
        hour in field(0, 23),
        (day_of_week, day_of_month) in days(),
        month_of_year in field(1, 12),
        year in 2024..2032i32,
    ) {
        let fields = [&minute, &hour, &day_of_week, &day_of_month, &month_of_year].map(|f| text(f));
        let [m, h, dow, dom, moy] = fields.each_ref().map(Option::as_ref);
        let crontab = Crontab::from_fields(m, h, dow, dom, moy).unwrap();
        let celery_form = format!("crontab({:?})", [&minute, &hour, &day_of_week, &day_of_month, &month_of_year]);
        let expression = match crontab.to_expression() {
            Ok(expression) => expression,
            Err(e) => {
                // Refused only for what EventBridge cannot say about days, or for never running.
                prop_assert!(matches!(e.field, Some("day_of_week" | "day_of_month")), "{e}");
                return Ok(());
            }
        };
        let schedule = Schedule::parse(&expression).unwrap();
        let start = Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(year + 1, 1, 1, 0, 0, 0).unwrap();
        let eventbridge: Vec<DateTime<Utc>> =
            schedule.fire_times(start - Duration::minutes(1)).take_while(|t| *t < end).collect();
        let celery = celery_minutes(&crontab, year);
        prop_assert_eq!(eventbridge.len(), celery.len(), "{} vs {}", expression, celery_form);
        prop_assert!(eventbridge == celery, "{} differs from {}", expression, celery_form);
    }
}
