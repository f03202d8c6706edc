//! EventBridge schedule expressions: `cron(...)` and `rate(...)`, parsed and validated the way
//! EventBridge documents them, and evaluated to fire times.
//!
//! Cron has six fields: minutes, hours, day-of-month, month, day-of-week, year. Exactly one of
//! the two day fields is `?`. Day-of-month also takes `L` (last day) and `NW` (weekday nearest
//! day N); day-of-week takes `N#k` (k-th weekday N of the month), `NL` (last weekday N) and `L`
//! (the week's last day, Saturday). Day-of-week runs 1-7 with Sunday = 1. Forms EventBridge does
//! not document (ranges with a step, backward ranges, `LW`, `L` or `W` inside lists) are refused
//! rather than guessed at. Rules run in UTC.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc, Weekday};

/// EventBridge's first and last year.
pub const FIRST_YEAR: i32 = 1970;
/// EventBridge's last year.
pub const LAST_YEAR: i32 = 2199;
/// EventBridge's limit on a rule's `ScheduleExpression`.
pub const MAX_EXPRESSION_CHARS: usize = 256;

const MONTH_NAMES: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// An expression EventBridge would refuse (or that would never fire), and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}; {hint}")]
pub struct ExpressionError {
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub hint: String,
}

fn err(problem: impl Into<String>, hint: impl Into<String>) -> ExpressionError {
    ExpressionError { problem: problem.into(), hint: hint.into() }
}

/// A set of small numbers (0..=63) as a bit mask: minutes, hours, days, months.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Bits(u64);

impl Bits {
    /// The empty set.
    pub const EMPTY: Bits = Bits(0);

    /// Every number of `lo..=hi`.
    pub fn range(lo: u32, hi: u32) -> Bits {
        (lo..=hi).collect()
    }

    /// Whether `value` is in the set.
    pub fn contains(self, value: u32) -> bool {
        value < 64 && self.0 & (1 << value) != 0
    }

    /// Adds `value` (below 64).
    pub fn insert(&mut self, value: u32) {
        debug_assert!(value < 64);
        self.0 |= 1 << value;
    }

    /// The numbers, ascending.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |v| self.contains(*v))
    }

    /// How many numbers.
    pub fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Whether it has none.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The smallest number at least `from`.
    pub fn first_from(self, from: u32) -> Option<u32> {
        if from >= 64 {
            return None;
        }
        let rest = self.0 >> from << from;
        (rest != 0).then(|| rest.trailing_zeros())
    }

    /// The numbers in both.
    pub fn intersect(self, other: Bits) -> Bits {
        Bits(self.0 & other.0)
    }

    /// Each number moved up by `by` (Celery's Sunday = 0 to EventBridge's Sunday = 1).
    pub fn shifted_up(self, by: u32) -> Bits {
        Bits(self.0 << by)
    }
}

impl FromIterator<u32> for Bits {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut bits = Bits::EMPTY;
        for v in iter {
            bits.insert(v);
        }
        bits
    }
}

/// Years EventBridge can name (1970-2199).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Years([u64; 4]);

impl Years {
    fn contains(&self, year: i32) -> bool {
        if !(FIRST_YEAR..=LAST_YEAR).contains(&year) {
            return false;
        }
        let i = (year - FIRST_YEAR) as usize;
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    fn insert(&mut self, year: u32) {
        let i = (year as i32 - FIRST_YEAR) as usize;
        self.0[i / 64] |= 1 << (i % 64);
    }
}

/// The day-of-month field when it is not `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DayOfMonth {
    Days(Bits),
    Last,
    NearestWeekday(u32),
}

/// The day-of-week field when it is not `?` (EventBridge numbering, Sunday = 1).
#[derive(Debug, Clone, PartialEq, Eq)]
enum DayOfWeek {
    Days(Bits),
    Nth { day: u32, nth: u32 },
    Last { day: u32 },
}

/// Which day field carries the days (the other is `?`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Days {
    OfMonth(DayOfMonth),
    OfWeek(DayOfWeek),
}

/// A parsed `cron(...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Bits,
    hours: Bits,
    days: Days,
    months: Bits,
    years: Years,
}

/// A parsed `rate(...)`: every so many minutes, counted from when the rule was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    minutes: u32,
}

impl Rate {
    /// The period.
    pub fn period(self) -> Duration {
        Duration::minutes(i64::from(self.minutes))
    }
}

/// What an expression says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Fixed times of the clock (UTC).
    Cron(Cron),
    /// A period from an anchor (rule creation on AWS; the scheduler's start locally).
    Rate(Rate),
}

/// A validated EventBridge schedule expression, in EventBridge's own text and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    kind: Kind,
}

impl Schedule {
    /// Parses and validates an expression; the text is normalised (single spaces, upper-case
    /// names) as it will be deployed.
    pub fn parse(text: &str) -> Result<Schedule, ExpressionError> {
        let text = text.trim();
        let examples = "e.g. cron(0 8 * * ? *) for 08:00 UTC daily, rate(5 minutes)";
        if let Some(inner) = text.strip_prefix("cron(").and_then(|t| t.strip_suffix(')')) {
            parse_cron(inner)
        } else if let Some(inner) = text.strip_prefix("rate(").and_then(|t| t.strip_suffix(')')) {
            parse_rate(inner)
        } else {
            Err(err(
                format!("`{text}` is not an EventBridge schedule expression"),
                format!("write cron(...) or rate(...), {examples}"),
            ))
        }
    }

    /// The expression as EventBridge takes it.
    pub fn expression(&self) -> &str {
        &self.text
    }

    /// What it says.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// The first fire time strictly after `after`. A rate counts from `after` (the moment its
    /// rule or scheduler starts); a cron fires on whole minutes. `None` when it never fires
    /// again (EventBridge's years end in 2199).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(cron) => cron.next_after(after),
            Kind::Rate(rate) => Some(after + rate.period()),
        }
    }

    /// The next fire time once the fire due at `previous` has been handled at `now`: a missed
    /// run is never made up (neither EventBridge nor Celery's beat does), and a rate keeps its
    /// phase.
    pub fn following(&self, previous: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Cron(cron) => cron.next_after(previous.max(now)),
            Kind::Rate(rate) => {
                let period = rate.period();
                let mut next = previous + period;
                if next <= now {
                    let behind = (now - previous).num_seconds() / period.num_seconds();
                    next = previous + period * (behind as i32 + 1);
                }
                Some(next)
            }
        }
    }

    /// Fire times strictly after `after`, in order.
    pub fn fire_times(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.next_after(after), move |t| self.next_after(*t))
    }

    /// A short description for people ("every 5 minutes", "at fixed times (UTC)").
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Rate(rate) => match rate.minutes {
                1 => "every minute".to_owned(),
                m if m % 1440 == 0 => plural(m / 1440, "day"),
                m if m % 60 == 0 => plural(m / 60, "hour"),
                m => plural(m, "minute"),
            },
            Kind::Cron(_) => "at fixed times, UTC".to_owned(),
        }
    }
}

fn plural(n: u32, unit: &str) -> String {
    if n == 1 { format!("every {unit}") } else { format!("every {n} {unit}s") }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Schedule {
    type Err = ExpressionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

/// The next `n` fire times of `schedule` strictly after `after` (fewer when it stops firing).
pub fn next_fire_times(schedule: &Schedule, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    schedule.fire_times(after).take(n).collect()
}

// --- rate ------------------------------------------------------------------------------------

fn parse_rate(inner: &str) -> Result<Schedule, ExpressionError> {
    let shape = "write rate(VALUE UNIT) with a whole number and minute(s), hour(s) or day(s), e.g. rate(5 minutes)";
    let parts: Vec<&str> = inner.split_whitespace().collect();
    let [value, unit] = parts[..] else {
        return Err(err(format!("rate({inner}) is not a value and a unit"), shape));
    };
    let n: u32 = match value.parse() {
        Ok(n) if value.bytes().all(|b| b.is_ascii_digit()) && n > 0 => n,
        _ => return Err(err(format!("rate value `{value}` is not a positive whole number"), shape)),
    };
    let (singular, per) = match unit {
        "minute" | "minutes" => ("minute", 1),
        "hour" | "hours" => ("hour", 60),
        "day" | "days" => ("day", 1440),
        other => {
            return Err(err(
                format!("rate unit `{other}` is not one EventBridge knows"),
                "use minute(s), hour(s) or day(s), lower case; a rate of seconds does not exist \
                 (the smallest is rate(1 minute))",
            ));
        }
    };
    let wanted = if n == 1 { singular.to_owned() } else { format!("{singular}s") };
    if unit != wanted {
        return Err(err(
            format!("rate({n} {unit}) uses the wrong number for its unit"),
            format!("EventBridge wants the singular for 1 and the plural above it: rate({n} {wanted})"),
        ));
    }
    let minutes = n
        .checked_mul(per)
        .ok_or_else(|| err(format!("rate({n} {unit}) is too long"), "use a cron expression for rare schedules"))?;
    Ok(Schedule { text: format!("rate({n} {unit})"), kind: Kind::Rate(Rate { minutes }) })
}

// --- cron: parsing ---------------------------------------------------------------------------

/// One numeric field's rules.
struct FieldDef {
    name: &'static str,
    lo: u32,
    hi: u32,
    names: &'static [&'static str],
    step: bool,
    example: &'static str,
}

const MINUTES: FieldDef =
    FieldDef { name: "minutes", lo: 0, hi: 59, names: &[], step: true, example: "0, 0/15, 5,35 or 10-20" };
const HOURS: FieldDef = FieldDef { name: "hours", lo: 0, hi: 23, names: &[], step: true, example: "8, 0/6 or 9-17" };
const DAY_OF_MONTH: FieldDef =
    FieldDef { name: "day-of-month", lo: 1, hi: 31, names: &[], step: true, example: "1, 1,15, 1-7, L or 15W" };
const MONTH: FieldDef =
    FieldDef { name: "month", lo: 1, hi: 12, names: &MONTH_NAMES, step: true, example: "*, 1, JAN-MAR or 1/3" };
const DAY_OF_WEEK: FieldDef = FieldDef {
    name: "day-of-week",
    lo: 1,
    hi: 7,
    names: &DAY_NAMES,
    step: false,
    example: "2-6 or MON-FRI (Sunday = 1), 6#1, 6L",
};
const YEAR: FieldDef = FieldDef {
    name: "year",
    lo: FIRST_YEAR as u32,
    hi: LAST_YEAR as u32,
    names: &[],
    step: true,
    example: "* (or 2027, 2027-2030)",
};

const STEP_FORMS: &str = "write START/STEP or list the values";

fn field_err(def: &FieldDef, text: &str, problem: impl fmt::Display) -> ExpressionError {
    err(format!("{} field `{text}`: {problem}", def.name), format!("{} takes e.g. {}", def.name, def.example))
}

fn parse_value(def: &FieldDef, whole: &str, token: &str) -> Result<u32, ExpressionError> {
    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
        let value: u32 = token.parse().map_err(|_| field_err(def, whole, format!("`{token}` is too large")))?;
        if !(def.lo..=def.hi).contains(&value) {
            return Err(field_err(def, whole, format!("{value} is outside {}-{}", def.lo, def.hi)));
        }
        return Ok(value);
    }
    if let Some(i) = def.names.iter().position(|n| n.eq_ignore_ascii_case(token)) {
        return Ok(def.lo + i as u32);
    }
    let special = ["?", "L", "W", "#"].iter().find(|s| token.to_ascii_uppercase().contains(*s));
    match special {
        Some(&"?") => Err(field_err(def, whole, "`?` is only for day-of-month or day-of-week, alone")),
        Some(s) => Err(field_err(
            def,
            whole,
            format!("`{s}` is not allowed here (L and W only in day-of-month, alone; # and L in day-of-week, alone)"),
        )),
        None if def.names.is_empty() => Err(field_err(def, whole, format!("`{token}` is not a number"))),
        None => Err(field_err(def, whole, format!("`{token}` is neither a number nor one of {}", def.names.join(" ")))),
    }
}

/// Parses a list field (`*`, `a`, `a-b`, `a/k`, `*/k`, comma-separated) into (start, end, step)
/// ranges.
fn parse_ranges(def: &FieldDef, text: &str) -> Result<Vec<(u32, u32, u32)>, ExpressionError> {
    let mut ranges = Vec::new();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(field_err(def, text, "has an empty item (two commas, or one at an end)"));
        }
        if let Some((base, step)) = item.split_once('/') {
            if !def.step {
                return Err(field_err(
                    def,
                    text,
                    "EventBridge takes no `/` step in day-of-week; list the days instead",
                ));
            }
            let start = match base {
                "*" => def.lo,
                b if b.contains('-') => {
                    return Err(field_err(
                        def,
                        text,
                        format!("`{item}`: a step after a range is not an EventBridge form; {}", STEP_FORMS),
                    ));
                }
                b => parse_value(def, text, b)?,
            };
            let span = def.hi - def.lo + 1;
            let step: u32 = match step.parse() {
                Ok(s) if step.bytes().all(|b| b.is_ascii_digit()) && (1..span).contains(&s) => s,
                _ => {
                    return Err(field_err(
                        def,
                        text,
                        format!("step `{step}` must be a whole number from 1 to {}", span - 1),
                    ));
                }
            };
            ranges.push((start, def.hi, step));
        } else if item == "*" {
            ranges.push((def.lo, def.hi, 1));
        } else if let Some((a, b)) = item.split_once('-') {
            let (a, b) = (parse_value(def, text, a)?, parse_value(def, text, b)?);
            if b < a {
                return Err(field_err(
                    def,
                    text,
                    format!("range `{item}` runs backwards; split it, e.g. {a}-{},{}-{b}", def.hi, def.lo),
                ));
            }
            ranges.push((a, b, 1));
        } else {
            let v = parse_value(def, text, item)?;
            ranges.push((v, v, 1));
        }
    }
    Ok(ranges)
}

fn parse_bits(def: &FieldDef, text: &str) -> Result<Bits, ExpressionError> {
    Ok(parse_ranges(def, text)?.into_iter().flat_map(|(a, b, s)| (a..=b).step_by(s as usize)).collect())
}

fn parse_years(text: &str) -> Result<Years, ExpressionError> {
    let mut years = Years([0; 4]);
    for (a, b, s) in parse_ranges(&YEAR, text)? {
        for y in (a..=b).step_by(s as usize) {
            years.insert(y);
        }
    }
    Ok(years)
}

fn parse_day_of_month(text: &str) -> Result<DayOfMonth, ExpressionError> {
    if text == "L" {
        return Ok(DayOfMonth::Last);
    }
    if let Some(day) = text.strip_suffix('W') {
        if day == "L" {
            return Err(field_err(
                &DAY_OF_MONTH,
                text,
                "`LW` is not documented by EventBridge; use L (last day) or NW",
            ));
        }
        let day = parse_value(&DAY_OF_MONTH, text, day)?;
        return Ok(DayOfMonth::NearestWeekday(day));
    }
    if text.contains('L') || text.contains('W') {
        return Err(field_err(
            &DAY_OF_MONTH,
            text,
            "L and W stand alone in day-of-month (L, 15W), not in lists or ranges",
        ));
    }
    Ok(DayOfMonth::Days(parse_bits(&DAY_OF_MONTH, text)?))
}

fn parse_day_of_week(text: &str) -> Result<DayOfWeek, ExpressionError> {
    if text == "L" {
        // The week's last day.
        return Ok(DayOfWeek::Days(Bits::from_iter([7])));
    }
    if let Some((day, nth)) = text.split_once('#') {
        if text.contains(',') || text.contains('-') {
            return Err(field_err(
                &DAY_OF_WEEK,
                text,
                "with `#` the field holds one expression only (EventBridge reads 3#1,6#3 as two)",
            ));
        }
        let day = parse_value(&DAY_OF_WEEK, text, day)?;
        let nth = match nth.parse::<u32>() {
            Ok(n) if (1..=5).contains(&n) && nth.len() == 1 => n,
            _ => return Err(field_err(&DAY_OF_WEEK, text, format!("`#{nth}`: the week of the month is 1 to 5"))),
        };
        return Ok(DayOfWeek::Nth { day, nth });
    }
    if let Some(day) = text.strip_suffix('L') {
        if day.contains(',') || day.contains('-') {
            return Err(field_err(
                &DAY_OF_WEEK,
                text,
                "`L` stands alone: one weekday and L, e.g. 6L (the last Friday)",
            ));
        }
        return Ok(DayOfWeek::Last { day: parse_value(&DAY_OF_WEEK, text, day)? });
    }
    Ok(DayOfWeek::Days(parse_bits(&DAY_OF_WEEK, text)?))
}

fn parse_cron(inner: &str) -> Result<Schedule, ExpressionError> {
    let fields: Vec<String> = inner.split_whitespace().map(str::to_ascii_uppercase).collect();
    let order = "minutes hours day-of-month month day-of-week year";
    let [minutes, hours, dom, month, dow, year] = &fields[..] else {
        let hint = if let [m, h, dom, month, dow] = &fields[..] {
            // A Unix crontab line: show it the EventBridge way.
            let unix = "EventBridge has a sixth field, the year, and `?` in one day field";
            if dow == "*" || dow == "?" {
                format!("{unix}: cron({m} {h} {dom} {month} ? *)")
            } else if (dom == "*" || dom == "?") && !dow.bytes().any(|b| b.is_ascii_digit()) {
                format!("{unix}: cron({m} {h} ? {month} {dow} *)")
            } else if dom == "*" || dom == "?" {
                // Unix counts weekdays 0-6 from Sunday = 0, EventBridge 1-7 from Sunday = 1:
                // copying the numbers would shift every day.
                format!(
                    "{unix}: cron({m} {h} ? {month} DAYS *), with DAYS as names (MON-FRI) or 1-7 from \
                     Sunday = 1 (Unix cron counts 0-6 from Sunday = 0)"
                )
            } else {
                format!("{unix}; EventBridge cannot require both a day of the month and a day of the week")
            }
        } else {
            format!("six fields: {order}, e.g. cron(0 8 * * ? *)")
        };
        return Err(err(format!("cron({inner}) has {} fields, not six", fields.len()), hint));
    };
    let days = match (dom.as_str(), dow.as_str()) {
        ("?", "?") => {
            return Err(err("both day fields are `?`", "put `?` in only one: `* * ?` (every day) or `? * MON-FRI`"));
        }
        ("?", dow) => Days::OfWeek(parse_day_of_week(dow)?),
        (dom, "?") => Days::OfMonth(parse_day_of_month(dom)?),
        _ => {
            return Err(err(
                format!("day-of-month `{dom}` and day-of-week `{dow}`: one of them must be `?`"),
                "EventBridge cannot use both; write `* * ?` (every day), `1 * ?` (the 1st) or `? * MON-FRI`",
            ));
        }
    };
    let cron = Cron {
        minutes: parse_bits(&MINUTES, minutes)?,
        hours: parse_bits(&HOURS, hours)?,
        days,
        months: parse_bits(&MONTH, month)?,
        years: parse_years(year)?,
    };
    let text = format!("cron({})", fields.join(" "));
    if text.len() > MAX_EXPRESSION_CHARS {
        return Err(err(
            format!("the expression is {} characters, over EventBridge's {MAX_EXPRESSION_CHARS}", text.len()),
            "use ranges (10-20) or steps (0/5) instead of long lists",
        ));
    }
    let start = Utc.with_ymd_and_hms(FIRST_YEAR, 1, 1, 0, 0, 0).single().map(|t| t - Duration::minutes(1));
    if start.and_then(|s| cron.next_after(s)).is_none() {
        return Err(err(
            format!("cron({}) never fires", fields.join(" ")),
            "check the day against the month (there is no 30 FEB) and the year",
        ));
    }
    Ok(Schedule { text, kind: Kind::Cron(cron) })
}

// --- cron: evaluation ------------------------------------------------------------------------

/// Days in a month (1-12) of a year.
pub fn days_in_month(year: i32, month: u32) -> u32 {
    let (y, m) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    NaiveDate::from_ymd_opt(y, m, 1).and_then(|d| d.pred_opt()).map_or(28, |d| d.day())
}

/// EventBridge's day-of-week number: Sunday = 1 ... Saturday = 7.
pub fn eventbridge_weekday(weekday: Weekday) -> u32 {
    weekday.num_days_from_sunday() + 1
}

/// The weekday (Monday-Friday) nearest `day` within its month, as `NW` means.
fn nearest_weekday(year: i32, month: u32, day: u32) -> Option<u32> {
    let last = days_in_month(year, month);
    if day > last {
        return None;
    }
    let weekday = NaiveDate::from_ymd_opt(year, month, day)?.weekday();
    Some(match weekday {
        Weekday::Sat if day == 1 => 3,
        Weekday::Sat => day - 1,
        Weekday::Sun if day == last => day - 2,
        Weekday::Sun => day + 1,
        _ => day,
    })
}

impl Cron {
    fn matches_day(&self, date: NaiveDate) -> bool {
        let day = date.day();
        match &self.days {
            Days::OfMonth(DayOfMonth::Days(days)) => days.contains(day),
            Days::OfMonth(DayOfMonth::Last) => day == days_in_month(date.year(), date.month()),
            Days::OfMonth(DayOfMonth::NearestWeekday(n)) => nearest_weekday(date.year(), date.month(), *n) == Some(day),
            Days::OfWeek(rule) => {
                let weekday = eventbridge_weekday(date.weekday());
                match rule {
                    DayOfWeek::Days(days) => days.contains(weekday),
                    DayOfWeek::Nth { day: d, nth } => weekday == *d && (day - 1) / 7 + 1 == *nth,
                    DayOfWeek::Last { day: d } => weekday == *d && day + 7 > days_in_month(date.year(), date.month()),
                }
            }
        }
    }

    /// The first (hour, minute) at or after `from` on a matching day.
    fn first_time_from(&self, (hour, minute): (u32, u32)) -> Option<(u32, u32)> {
        let mut h = self.hours.first_from(hour)?;
        if h == hour
            && let Some(m) = self.minutes.first_from(minute)
        {
            return Some((h, m));
        }
        if h == hour {
            h = self.hours.first_from(hour + 1)?;
        }
        Some((h, self.minutes.first_from(0)?))
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start_minute = after.timestamp().div_euclid(60) + 1;
        let start = DateTime::from_timestamp(start_minute * 60, 0)?;
        let mut date = start.date_naive();
        let mut from = (start.hour(), start.minute());
        while date.year() <= LAST_YEAR {
            if !self.years.contains(date.year()) {
                date = NaiveDate::from_ymd_opt(date.year().max(FIRST_YEAR - 1) + 1, 1, 1)?;
                from = (0, 0);
                continue;
            }
            if !self.months.contains(date.month()) {
                let (y, m) = if date.month() == 12 { (date.year() + 1, 1) } else { (date.year(), date.month() + 1) };
                date = NaiveDate::from_ymd_opt(y, m, 1)?;
                from = (0, 0);
                continue;
            }
            if self.matches_day(date)
                && let Some((h, m)) = self.first_time_from(from)
            {
                return date.and_hms_opt(h, m, 0).map(|t| t.and_utc());
            }
            date = date.succ_opt()?;
            from = (0, 0);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str, n: usize) -> Vec<String> {
        let schedule = Schedule::parse(expr).unwrap();
        next_fire_times(&schedule, at(after), n).iter().map(|t| t.format("%Y-%m-%d %H:%M %a").to_string()).collect()
    }

    fn refused(expr: &str) -> String {
        Schedule::parse(expr).unwrap_err().to_string()
    }

    #[test]
    fn daily_and_stepped() {
        assert_eq!(
            next("cron(0 8 * * ? *)", "2026-03-01T08:00:00Z", 2),
            ["2026-03-02 08:00 Mon", "2026-03-03 08:00 Tue"],
            "strictly after"
        );
        assert_eq!(
            next("cron(0/10 * * * ? *)", "2026-03-01T23:41:30Z", 3),
            ["2026-03-01 23:50 Sun", "2026-03-02 00:00 Mon", "2026-03-02 00:10 Mon"]
        );
        assert_eq!(
            next("cron(1/20 9-10 * * ? *)", "2026-03-01T09:55:00Z", 3),
            ["2026-03-01 10:01 Sun", "2026-03-01 10:21 Sun", "2026-03-01 10:41 Sun"]
        );
        assert_eq!(
            next("cron(*/30 5 * * ? *)", "2026-03-01T00:00:00Z", 2),
            ["2026-03-01 05:00 Sun", "2026-03-01 05:30 Sun"]
        );
    }

    #[test]
    fn day_of_week_forms() {
        // 1 = Sunday.
        assert_eq!(
            next("cron(15 12 ? * 1 *)", "2026-03-02T00:00:00Z", 2),
            ["2026-03-08 12:15 Sun", "2026-03-15 12:15 Sun"]
        );
        assert_eq!(
            next("cron(0 9 ? * MON-FRI *)", "2026-03-06T10:00:00Z", 2),
            ["2026-03-09 09:00 Mon", "2026-03-10 09:00 Tue"]
        );
        // First Saturday, second Tuesday, last Friday, Saturday as `L`.
        assert_eq!(
            next("cron(0 0 ? * 7#1 *)", "2026-03-01T00:00:00Z", 3),
            ["2026-03-07 00:00 Sat", "2026-04-04 00:00 Sat", "2026-05-02 00:00 Sat"]
        );
        assert_eq!(next("cron(0 0 ? * TUE#2 *)", "2026-03-01T00:00:00Z", 1), ["2026-03-10 00:00 Tue"]);
        assert_eq!(
            next("cron(0 0 ? * 6L *)", "2026-02-01T00:00:00Z", 2),
            ["2026-02-27 00:00 Fri", "2026-03-27 00:00 Fri"]
        );
        assert_eq!(next("cron(0 0 ? * L *)", "2026-03-01T00:00:00Z", 1), ["2026-03-07 00:00 Sat"]);
        // A fifth Monday exists only in some months.
        assert_eq!(
            next("cron(0 0 ? * 2#5 *)", "2026-01-01T00:00:00Z", 2),
            ["2026-03-30 00:00 Mon", "2026-06-29 00:00 Mon"]
        );
    }

    #[test]
    fn day_of_month_forms() {
        assert_eq!(
            next("cron(0 0 L * ? *)", "2028-01-31T00:00:00Z", 2),
            ["2028-02-29 00:00 Tue", "2028-03-31 00:00 Fri"]
        );
        // 2026-08-01 is a Saturday: 1W is Monday the 3rd; 2026-05-31 is a Sunday: 31W is Friday the 29th.
        assert_eq!(next("cron(0 0 1W 8 ? *)", "2026-01-01T00:00:00Z", 1), ["2026-08-03 00:00 Mon"]);
        assert_eq!(next("cron(0 0 31W 5 ? *)", "2026-01-01T00:00:00Z", 1), ["2026-05-29 00:00 Fri"]);
        // 2026-03-15 is a Sunday: Monday the 16th; 2026-03-14 a Saturday: Friday the 13th.
        assert_eq!(next("cron(0 0 15W 3 ? *)", "2026-01-01T00:00:00Z", 1), ["2026-03-16 00:00 Mon"]);
        assert_eq!(next("cron(0 0 14W 3 ? *)", "2026-01-01T00:00:00Z", 1), ["2026-03-13 00:00 Fri"]);
        // The 31st only in months that have one; 1/10 reaches the 31st.
        assert_eq!(next("cron(0 0 31 * ? *)", "2026-03-31T00:00:00Z", 1), ["2026-05-31 00:00 Sun"]);
        assert_eq!(
            next("cron(0 0 1/10 1 ? *)", "2026-01-01T00:00:00Z", 4),
            ["2026-01-11 00:00 Sun", "2026-01-21 00:00 Wed", "2026-01-31 00:00 Sat", "2027-01-01 00:00 Fri"]
        );
    }

    #[test]
    fn months_and_years() {
        assert_eq!(
            next("cron(30 6 1 JAN,jul ? 2027-2028)", "2026-01-01T00:00:00Z", 5),
            ["2027-01-01 06:30 Fri", "2027-07-01 06:30 Thu", "2028-01-01 06:30 Sat", "2028-07-01 06:30 Sat"]
        );
        assert_eq!(Schedule::parse("cron(0 0 1 1 ? 2199)").unwrap().next_after(at("2199-01-01T00:00:00Z")), None);
    }

    #[test]
    fn rates() {
        let s = Schedule::parse("rate(5 minutes)").unwrap();
        assert_eq!(
            next_fire_times(&s, at("2026-03-01T10:02:30Z"), 2),
            [at("2026-03-01T10:07:30Z"), at("2026-03-01T10:12:30Z")]
        );
        assert_eq!(
            s.following(at("2026-03-01T10:00:00Z"), at("2026-03-01T10:17:00Z")),
            Some(at("2026-03-01T10:20:00Z"))
        );
        assert_eq!(Schedule::parse("rate(1 day)").unwrap().describe(), "every day");
        assert_eq!(Schedule::parse("rate(2 hours)").unwrap().describe(), "every 2 hours");
    }

    #[test]
    fn normalises_text() {
        assert_eq!(Schedule::parse("  cron(0  8 * * ?   *) ").unwrap().expression(), "cron(0 8 * * ? *)");
        assert_eq!(Schedule::parse("cron(0 8 ? * mon-fri *)").unwrap().expression(), "cron(0 8 ? * MON-FRI *)");
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        assert!(refused("0 8 * * ?").contains("not an EventBridge schedule expression"));
        let five = refused("cron(0 8 * * ?)");
        assert!(five.contains("5 fields") && five.contains("sixth field, the year"), "{five}");
        assert!(five.contains("cron(0 8 * * ? *)"), "{five}");
        let weekly = refused("cron(0 8 * * 1-5)");
        assert!(weekly.contains("cron(0 8 ? * DAYS *)") && weekly.contains("Sunday = 1"), "{weekly}");
        assert!(refused("cron(0 8 * * mon-fri)").contains("cron(0 8 ? * MON-FRI *)"));
        assert!(refused("cron(0 8 * * * *)").contains("one of them must be `?`"));
        assert!(refused("cron(0 8 ? * ? *)").contains("both day fields"));
        assert!(refused("cron(60 8 * * ? *)").contains("60 is outside 0-59"));
        assert!(refused("cron(0 24 * * ? *)").contains("24 is outside 0-23"));
        assert!(refused("cron(0 8 32 * ? *)").contains("outside 1-31"));
        assert!(refused("cron(0 8 ? * 0 *)").contains("0 is outside 1-7"));
        assert!(refused("cron(0 8 ? 13 ? *)").contains("both day fields"));
        assert!(refused("cron(0 8 1 13 ? *)").contains("13 is outside 1-12"));
        assert!(refused("cron(0 8 1 * ? 1969)").contains("outside 1970-2199"));
        assert!(refused("cron(? 8 1 * ? *)").contains("`?` is only for day-of-month or day-of-week"));
        assert!(refused("cron(0 22-2 * * ? *)").contains("runs backwards"));
        assert!(refused("cron(0/0 8 * * ? *)").contains("step `0`"));
        assert!(refused("cron(0-30/5 8 * * ? *)").contains("step after a range"));
        assert!(refused("cron(0 8 ? * */2 *)").contains("no `/` step in day-of-week"));
        assert!(refused("cron(0 8 ? * 3#1,6#3 *)").contains("one expression only"));
        assert!(refused("cron(0 8 ? * 3#6 *)").contains("1 to 5"));
        assert!(refused("cron(0 8 L,15 * ? *)").contains("stand alone"));
        assert!(refused("cron(0 8 1,,2 * ? *)").contains("empty item"));
        assert!(refused("cron(0 8 ? * FUN *)").contains("SUN MON"));
        assert!(refused("cron(0 0 30 2 ? *)").contains("never fires"));
        assert!(refused("rate(0 minutes)").contains("positive whole number"));
        assert!(refused("rate(1 minutes)").contains("rate(1 minute)"));
        assert!(refused("rate(5 minute)").contains("rate(5 minutes)"));
        assert!(refused("rate(30 seconds)").contains("rate of seconds does not exist"));
        assert!(refused("rate(5)").contains("not a value and a unit"));
        assert!(refused("rate(1.5 hours)").contains("positive whole number"));
    }
}
