//! Celery's `crontab(...)`: its fields expanded exactly as Celery's `crontab_parser` expands them
//! (celery/schedules.py), its own matching rule (every field must match: minute, hour, day of
//! month, month AND day of week), and the EventBridge cron expression with the same fire times.
//!
//! Expansion, as in Celery: `*` is the whole range; `*/k` every k-th value from the start;
//! `a-b` inclusive, wrapping past the end when b < a (`22-2` is 22, 23, 0, 1, 2); `a-b/k` every
//! k-th value of that (wrapped) range; `,` joins parts. Day of week is 0-6 with Sunday = 0, and
//! a name counts by its first three letters (`sun`, `Monday`); 7 is refused, as Celery does.
//! Where Celery would take something odd (a weekday name as a minute; text after a valid
//! prefix, which its regular expressions ignore) it is refused here with a message instead.

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::ScheduleError;
use super::expression::{Bits, MAX_EXPRESSION_CHARS};
use crate::manifest::CronField;

const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One crontab field's range, as Celery's `crontab_parser(max_, min_)` has it.
#[derive(Debug, Clone, Copy)]
struct FieldRange {
    field: &'static str,
    min: u32,
    max: u32,
    weekday_names: bool,
    example: &'static str,
}

const MINUTE: FieldRange =
    FieldRange { field: "minute", min: 0, max: 59, weekday_names: false, example: "minute = 15, \"*/10\" or \"0,30\"" };
const HOUR: FieldRange =
    FieldRange { field: "hour", min: 0, max: 23, weekday_names: false, example: "hour = 3, \"8-17\" or \"*/6\"" };
const DAY_OF_WEEK: FieldRange = FieldRange {
    field: "day_of_week",
    min: 0,
    max: 6,
    weekday_names: true,
    example: "day_of_week = 0 (Sunday), \"mon-fri\" or \"sat,sun\"",
};
const DAY_OF_MONTH: FieldRange = FieldRange {
    field: "day_of_month",
    min: 1,
    max: 31,
    weekday_names: false,
    example: "day_of_month = 1, \"1-7\" or \"*/2\"",
};
const MONTH_OF_YEAR: FieldRange = FieldRange {
    field: "month_of_year",
    min: 1,
    max: 12,
    weekday_names: false,
    example: "month_of_year = 1, \"*/3\" or \"6-8\"",
};

/// A Celery crontab, each field expanded to the set of values it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crontab {
    /// Minutes, 0-59.
    pub minute: Bits,
    /// Hours, 0-23.
    pub hour: Bits,
    /// Days of the week, 0-6, Sunday = 0.
    pub day_of_week: Bits,
    /// Days of the month, 1-31.
    pub day_of_month: Bits,
    /// Months, 1-12.
    pub month_of_year: Bits,
}

impl Crontab {
    /// Expands the fields as Celery's `crontab(...)` does; an absent field is `*`.
    pub fn from_fields(
        minute: Option<&CronField>,
        hour: Option<&CronField>,
        day_of_week: Option<&CronField>,
        day_of_month: Option<&CronField>,
        month_of_year: Option<&CronField>,
    ) -> Result<Crontab, ScheduleError> {
        Ok(Crontab {
            minute: expand(&MINUTE, minute)?,
            hour: expand(&HOUR, hour)?,
            day_of_week: expand(&DAY_OF_WEEK, day_of_week)?,
            day_of_month: expand(&DAY_OF_MONTH, day_of_month)?,
            month_of_year: expand(&MONTH_OF_YEAR, month_of_year)?,
        })
    }

    /// Whether Celery runs this crontab in the minute of `t` (UTC): every field must match.
    pub fn matches(&self, t: DateTime<Utc>) -> bool {
        self.minute.contains(t.minute())
            && self.hour.contains(t.hour())
            && self.month_of_year.contains(t.month())
            && self.day_of_month.contains(t.day())
            && self.day_of_week.contains(t.weekday().num_days_from_sunday())
    }

    /// The EventBridge cron expression firing at the same minutes, or why there is none.
    pub fn to_expression(&self) -> Result<String, ScheduleError> {
        // The longest month among the chosen ones bounds which days can occur at all
        // (February counts 29: leap years).
        let longest = self
            .month_of_year
            .iter()
            .map(|m| if m == 2 { 29 } else { super::expression::days_in_month(2027, m) })
            .max()
            .unwrap_or(31);
        let possible = Bits::range(1, longest);
        let days = self.day_of_month.intersect(possible);
        if days.is_empty() {
            return Err(ScheduleError::general(
                Some("day_of_month"),
                format!(
                    "never runs: day_of_month {} does not occur in month_of_year {}",
                    list(self.day_of_month),
                    list(self.month_of_year)
                ),
                "pick days that exist in those months (February has 28 or 29)",
            ));
        }
        let every_weekday = self.day_of_week == Bits::range(0, 6);
        let every_day = days == possible;
        let (dom, dow) = if every_weekday {
            (if every_day { "*".to_owned() } else { compact(days, 1, 31, true) }, "?".to_owned())
        } else if every_day {
            // Celery's Sunday = 0 is EventBridge's 1.
            ("?".to_owned(), compact(self.day_of_week.shifted_up(1), 1, 7, false))
        } else {
            ("?".to_owned(), self.nth_weekday(days, possible)?)
        };
        let text = format!(
            "cron({} {} {dom} {} {dow} *)",
            compact(self.minute, 0, 59, true),
            compact(self.hour, 0, 23, true),
            compact(self.month_of_year, 1, 12, true)
        );
        if text.len() > MAX_EXPRESSION_CHARS {
            return Err(ScheduleError::general(
                None,
                format!(
                    "the EventBridge expression would be {} characters, over its limit of {MAX_EXPRESSION_CHARS}",
                    text.len()
                ),
                "use fewer separate values (ranges and steps such as \"*/5\" stay short)",
            ));
        }
        Ok(text)
    }

    /// Celery ANDs the day of month with the day of week; EventBridge can say that only as one
    /// weekday in one week of the month (`N#k`: days 1-7 are the first week, ..., 29-31 the
    /// fifth).
    fn nth_weekday(&self, days: Bits, possible: Bits) -> Result<String, ScheduleError> {
        let hint = "EventBridge can only say \"the k-th WEEKDAY of the month\": one day_of_week with \
                    day_of_month \"1-7\", \"8-14\", \"15-21\", \"22-28\" or \"29-31\" (e.g. day_of_week = 6, \
                    day_of_month = \"1-7\": the first Saturday); otherwise make one schedule per case, or run \
                    daily and check the date in the task";
        let problem = format!(
            "Celery runs only on days that are both day_of_month {} and day_of_week {}, \
             which EventBridge cannot express",
            list(self.day_of_month),
            list(self.day_of_week)
        );
        let weekday = match self.day_of_week.iter().collect::<Vec<_>>()[..] {
            [weekday] => weekday,
            _ => return Err(ScheduleError::general(Some("day_of_week"), problem, hint)),
        };
        (1..=5)
            .find(|week| days == Bits::range(week * 7 - 6, week * 7).intersect(possible))
            .map(|week| format!("{}#{week}", weekday + 1))
            .ok_or_else(|| ScheduleError::general(Some("day_of_month"), problem, hint))
    }
}

fn list(bits: Bits) -> String {
    bits.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")
}

/// The shortest EventBridge text of a set within `lo..=hi`: `*`, `start/step`, or a list with
/// runs as ranges.
fn compact(bits: Bits, lo: u32, hi: u32, steps_allowed: bool) -> String {
    if bits == Bits::range(lo, hi) {
        return "*".to_owned();
    }
    let values: Vec<u32> = bits.iter().collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        match j - i {
            0 => parts.push(values[i].to_string()),
            1 => parts.extend([values[i].to_string(), values[j].to_string()]),
            _ => parts.push(format!("{}-{}", values[i], values[j])),
        }
        i = j + 1;
    }
    let listed = parts.join(",");
    if steps_allowed && parts.len() > 1 && values.len() >= 2 {
        let (start, step) = (values[0], values[1] - values[0]);
        if step >= 2
            && bits == (start..=hi).step_by(step as usize).collect()
            && format!("{start}/{step}").len() < listed.len()
        {
            return format!("{start}/{step}");
        }
    }
    listed
}

fn field_error(range: &FieldRange, value: String, problem: impl Into<String>) -> ScheduleError {
    ScheduleError::field(range.field, value, problem, format!("Celery takes e.g. {}", range.example))
}

/// `crontab_parser(...).parse(...)` for strings, Celery's set for a number or a list.
fn expand(range: &FieldRange, field: Option<&CronField>) -> Result<Bits, ScheduleError> {
    let all = Bits::range(range.min, range.max);
    let check = |value: i64, shown: String| -> Result<u32, ScheduleError> {
        if value < i64::from(range.min) || value > i64::from(range.max) {
            let extra = if range.weekday_names && value == 7 { " (Sunday is 0 in Celery)" } else { "" };
            return Err(field_error(range, shown, format!("{value} is outside {}-{}{extra}", range.min, range.max)));
        }
        Ok(value as u32)
    };
    match field {
        None => Ok(all),
        Some(CronField::Number(n)) => Ok(Bits::from_iter([check(*n, n.to_string())?])),
        Some(CronField::List(values)) => {
            let shown = format!("{values:?}");
            if values.is_empty() {
                return Err(field_error(range, shown, "an empty list never runs"));
            }
            values.iter().map(|v| check(*v, shown.clone())).collect()
        }
        Some(CronField::Text(text)) => {
            let shown = format!("{text:?}");
            let mut bits = Bits::EMPTY;
            for part in text.split(',') {
                for value in
                    expand_part(range, part.trim()).map_err(|problem| field_error(range, shown.clone(), problem))?
                {
                    bits.insert(value);
                }
            }
            Ok(bits)
        }
    }
}

/// One comma-separated part, in the order Celery tries its patterns: range with step, range,
/// `*` with step, `*`, single value.
fn expand_part(range: &FieldRange, part: &str) -> Result<Vec<u32>, String> {
    if part.is_empty() {
        return Err("has an empty part (two commas, or one at an end)".into());
    }
    let (base, step) = match part.split_once('/') {
        Some((base, step)) => (base, Some(parse_step(step)?)),
        None => (part, None),
    };
    let values = if base == "*" {
        (range.min..=range.max).collect()
    } else if let Some((from, to)) = base.split_once('-').filter(|(from, _)| !from.is_empty()) {
        let (from, to) = (number(range, from)?, number(range, to)?);
        if to < from {
            // Celery wraps around the end of the field.
            (from..=range.max).chain(range.min..=to).collect()
        } else {
            (from..=to).collect::<Vec<u32>>()
        }
    } else if step.is_some() {
        return Err(format!(
            "`{part}`: Celery takes a step only after `*` or a range (\"*/{0}\", \"{base}-{1}/{0}\")",
            step.unwrap_or(1),
            range.max
        ));
    } else {
        vec![number(range, base)?]
    };
    Ok(match step {
        Some(step) => values.into_iter().step_by(step).collect(),
        None => values,
    })
}

fn parse_step(step: &str) -> Result<usize, String> {
    match step.parse::<usize>() {
        Ok(n) if n > 0 && step.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(format!("step `/{step}` must be a whole number of 1 or more")),
    }
}

/// A number, or (day of week only) a weekday name by its first three letters.
fn number(range: &FieldRange, token: &str) -> Result<u32, String> {
    let value = if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
        token.parse::<u32>().map_err(|_| format!("`{token}` is too large"))?
    } else if token.starts_with('-') {
        return Err(format!("`{token}`: negative numbers are not allowed"));
    } else if range.weekday_names {
        let abbreviation = token.get(..3).unwrap_or(token).to_ascii_lowercase();
        match WEEKDAYS.iter().position(|d| *d == abbreviation) {
            Some(i) => i as u32,
            None => return Err(format!("`{token}` is neither a number nor a weekday (sun, mon, ... sat)")),
        }
    } else {
        return Err(format!("`{token}` is not a number"));
    };
    if value < range.min || value > range.max {
        let extra = if range.weekday_names && value == 7 { " (Sunday is 0 in Celery)" } else { "" };
        return Err(format!("{value} is outside {}-{}{extra}", range.min, range.max));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn text(s: &str) -> CronField {
        CronField::Text(s.to_owned())
    }

    fn values(range: &FieldRange, field: CronField) -> Vec<u32> {
        expand(range, Some(&field)).unwrap().iter().collect()
    }

    fn refusal(range: &FieldRange, field: CronField) -> String {
        expand(range, Some(&field)).unwrap_err().to_string()
    }

    #[test]
    fn expands_as_celerys_crontab_parser() {
        // The examples of Celery's crontab_parser docstring.
        assert_eq!(values(&MINUTE, text("*/15")), [0, 15, 30, 45]);
        assert_eq!(values(&HOUR, text("*/4")), [0, 4, 8, 12, 16, 20]);
        assert_eq!(values(&DAY_OF_WEEK, text("*")), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(values(&DAY_OF_MONTH, text("*/3")), [1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31]);
        assert_eq!(values(&MONTH_OF_YEAR, text("*/2")), [1, 3, 5, 7, 9, 11]);
        assert_eq!(values(&MONTH_OF_YEAR, text("2-12/2")), [2, 4, 6, 8, 10, 12]);
        // From crontab's docstring.
        assert_eq!(values(&MINUTE, text("1,13,30-45,50-59/2")).len(), 2 + 16 + 5);
        assert_eq!(values(&HOUR, text("0,8-17/2")), [0, 8, 10, 12, 14, 16]);
        // Wrapping ranges, with a step over the wrapped list.
        assert_eq!(values(&HOUR, text("22-2")), [0, 1, 2, 22, 23]);
        assert_eq!(values(&HOUR, text("22-2/2")), [0, 2, 22]);
        assert_eq!(values(&DAY_OF_WEEK, text("fri-mon")), [0, 1, 5, 6]);
        // Names by their first three letters, any case; numbers with spaces after a comma.
        assert_eq!(values(&DAY_OF_WEEK, text("mon-fri")), [1, 2, 3, 4, 5]);
        assert_eq!(values(&DAY_OF_WEEK, text("Sunday,SAT")), [0, 6]);
        assert_eq!(values(&MINUTE, text("0, 30")), [0, 30]);
        assert_eq!(values(&MINUTE, CronField::Number(7)), [7]);
        assert_eq!(values(&MINUTE, CronField::List(vec![30, 0])), [0, 30]);
        assert_eq!(values(&MINUTE, text("*/100")), [0]);
    }

    #[test]
    fn refuses_what_celery_refuses() {
        assert!(refusal(&DAY_OF_WEEK, CronField::Number(7)).contains("Sunday is 0"));
        assert!(refusal(&DAY_OF_WEEK, text("7")).contains("outside 0-6"));
        assert!(refusal(&MINUTE, text("60")).contains("outside 0-59"));
        assert!(refusal(&DAY_OF_MONTH, text("0")).contains("outside 1-31"));
        assert!(refusal(&MINUTE, text("*/0")).contains("1 or more"));
        assert!(refusal(&MINUTE, text("*/")).contains("1 or more"));
        assert!(refusal(&MINUTE, text("0,,30")).contains("empty part"));
        assert!(refusal(&MINUTE, text("5/2")).contains("step only after"));
        assert!(refusal(&MINUTE, text("-1")).contains("negative"));
        assert!(refusal(&DAY_OF_WEEK, text("funday")).contains("neither a number nor a weekday"));
        assert!(refusal(&MONTH_OF_YEAR, text("jan")).contains("not a number"));
        let shown = refusal(&HOUR, text("25"));
        assert!(
            shown.starts_with("hour = \"25\": 25 is outside 0-23") && shown.contains("Celery takes e.g."),
            "{shown}"
        );
    }

    fn crontab(minute: &str, hour: &str, dow: &str, dom: &str, moy: &str) -> Result<String, ScheduleError> {
        Crontab::from_fields(
            Some(&text(minute)),
            Some(&text(hour)),
            Some(&text(dow)),
            Some(&text(dom)),
            Some(&text(moy)),
        )?
        .to_expression()
    }

    #[test]
    fn converts_to_eventbridge() {
        assert_eq!(crontab("15", "12", "0", "*", "*").unwrap(), "cron(15 12 ? * 1 *)");
        assert_eq!(crontab("0", "8", "*", "*", "*").unwrap(), "cron(0 8 * * ? *)");
        assert_eq!(crontab("*/10", "*", "*", "*", "*").unwrap(), "cron(0/10 * * * ? *)");
        assert_eq!(crontab("0,30", "*/6", "*", "*", "*").unwrap(), "cron(0,30 0/6 * * ? *)");
        assert_eq!(crontab("0", "9", "mon-fri", "*", "*").unwrap(), "cron(0 9 ? * 2-6 *)");
        assert_eq!(crontab("0", "9", "sat,sun", "*", "*").unwrap(), "cron(0 9 ? * 1,7 *)");
        assert_eq!(crontab("0", "22-2", "*", "*", "*").unwrap(), "cron(0 0-2,22,23 * * ? *)");
        assert_eq!(crontab("0", "0", "*", "1,15", "*/3").unwrap(), "cron(0 0 1,15 1/3 ? *)");
        // The first Saturday of the month (Saturday is 7 in EventBridge), the last week.
        assert_eq!(crontab("0", "0", "6", "1-7", "*").unwrap(), "cron(0 0 ? * 7#1 *)");
        assert_eq!(crontab("0", "0", "mon", "29-31", "*").unwrap(), "cron(0 0 ? * 2#5 *)");
        // In February the fifth week is the 29th alone.
        assert_eq!(crontab("0", "0", "mon", "29", "2").unwrap(), "cron(0 0 ? 2 2#5 *)");
        // Days 1-29 are all of February: the day of week alone decides.
        assert_eq!(crontab("0", "0", "1", "1-29", "2").unwrap(), "cron(0 0 ? 2 2 *)");
    }

    #[test]
    fn refuses_what_eventbridge_cannot_say() {
        let two_weekdays = crontab("0", "0", "mon,fri", "1-7", "*").unwrap_err().to_string();
        assert!(two_weekdays.contains("cannot express") && two_weekdays.contains("k-th WEEKDAY"), "{two_weekdays}");
        assert!(crontab("0", "0", "mon", "1-3", "*").unwrap_err().to_string().contains("day_of_month"));
        assert!(crontab("0", "0", "mon", "22-31", "*").is_err());
        assert!(crontab("0", "0", "*", "30,31", "2").unwrap_err().to_string().contains("never runs"));
    }
}
