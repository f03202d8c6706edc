//! Beat schedules (what `CELERYBEAT_SCHEDULE` was): Celery crontab fields, raw EventBridge
//! expressions and intervals, converted to the EventBridge schedule expression a rule runs on,
//! evaluated to fire times (for the CLI and `taskbeat local`), and the deployed rules switched on
//! and off.
//!
//! A crontab converts with Celery's meaning: fields expanded as Celery expands them, all fields
//! ANDed (Celery, unlike Unix cron, requires both the day of month and the day of week), Celery's
//! Sunday = 0 mapped to EventBridge's Sunday = 1. `minute = "*/10"` becomes
//! `cron(0/10 * * * ? *)`, never `rate(10 minutes)`, which would drift from the clock. What
//! EventBridge cannot express is refused with the reason, never approximated.

pub mod celery;
pub mod expression;
#[cfg(test)]
mod properties;

use std::fmt;

use aws_config::SdkConfig;
use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use aws_sdk_eventbridge::types::RuleState;

pub use expression::{ExpressionError, Schedule, next_fire_times};

use crate::manifest::{Interval, ScheduleSpec};

/// A schedule that cannot become an EventBridge rule: which field, what is wrong, what to do.
/// The manifest adds the schedule's name and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    /// The manifest key at fault (`minute`, `every`, `expression`, ...), when one is.
    pub field: Option<&'static str>,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub hint: String,
}

impl ScheduleError {
    /// A wrong value of `field`.
    pub fn field(
        field: &'static str,
        value: impl fmt::Display,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ScheduleError {
            field: Some(field),
            problem: format!("{field} = {value}: {}", problem.into()),
            hint: hint.into(),
        }
    }

    /// A problem of the schedule as a whole (or of a field, without its value).
    pub fn general(field: Option<&'static str>, problem: impl Into<String>, hint: impl Into<String>) -> Self {
        ScheduleError { field, problem: problem.into(), hint: hint.into() }
    }
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (hint: {})", self.problem, self.hint)
    }
}

impl std::error::Error for ScheduleError {}

const FORMS: &str = "give exactly one of: Celery crontab fields (minute, hour, day_of_week, day_of_month, \
                     month_of_year), `expression = \"cron(...)\"` or \"rate(...)\", or `every = \"5m\"`";

/// The EventBridge schedule expression (`cron(...)` or `rate(...)`) of a schedule.
pub fn eventbridge_expression(spec: &ScheduleSpec) -> Result<String, ScheduleError> {
    check_timezone(spec.timezone.as_deref())?;
    let crontab_fields = [&spec.minute, &spec.hour, &spec.day_of_week, &spec.day_of_month, &spec.month_of_year];
    let has_crontab = crontab_fields.iter().any(|f| f.is_some());
    match (has_crontab, &spec.expression, &spec.every) {
        (true, None, None) => celery::Crontab::from_fields(
            spec.minute.as_ref(),
            spec.hour.as_ref(),
            spec.day_of_week.as_ref(),
            spec.day_of_month.as_ref(),
            spec.month_of_year.as_ref(),
        )?
        .to_expression(),
        (false, Some(expression), None) => Schedule::parse(expression)
            .map(|s| s.expression().to_owned())
            .map_err(|e| ScheduleError::field("expression", format!("{expression:?}"), e.problem, e.hint)),
        (false, None, Some(every)) => rate_expression(every),
        (false, None, None) => Err(ScheduleError::general(None, "says neither when nor how often to run", FORMS)),
        _ => Err(ScheduleError::general(None, "mixes several ways of saying when to run", FORMS)),
    }
}

/// The schedule of a spec, parsed, ready to compute fire times.
pub fn schedule_of(spec: &ScheduleSpec) -> Result<Schedule, ScheduleError> {
    let text = eventbridge_expression(spec)?;
    Schedule::parse(&text).map_err(|e| {
        ScheduleError::general(None, format!("converted to {text}, which is refused: {}", e.problem), e.hint)
    })
}

impl TryFrom<&ScheduleSpec> for Schedule {
    type Error = ScheduleError;

    fn try_from(spec: &ScheduleSpec) -> Result<Self, Self::Error> {
        schedule_of(spec)
    }
}

fn check_timezone(timezone: Option<&str>) -> Result<(), ScheduleError> {
    match timezone {
        None => Ok(()),
        Some(tz) if tz.eq_ignore_ascii_case("UTC") || tz.eq_ignore_ascii_case("Etc/UTC") => Ok(()),
        Some(tz) => Err(ScheduleError::field(
            "timezone",
            format!("{tz:?}"),
            "EventBridge rules run in UTC only",
            "write the times in UTC and remove `timezone` (mind daylight saving time: 09:00 in Paris is hour = 8 \
             in winter and 7 in summer)",
        )),
    }
}

/// Seconds of an interval: a number of seconds, or a number with `s`, `m`, `h` or `d`.
pub fn interval_seconds(every: &Interval) -> Result<u64, ScheduleError> {
    let hint = "write seconds (300) or a number with a unit: \"90s\", \"5m\", \"1h\", \"1d\"";
    let shown = match every {
        Interval::Seconds(n) => n.to_string(),
        Interval::Text(t) => format!("{t:?}"),
    };
    let seconds = match every {
        Interval::Seconds(n) => u64::try_from(*n).ok(),
        Interval::Text(text) => {
            let text = text.trim();
            let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
            let (number, unit) = text.split_at(digits);
            let per = match unit.trim() {
                "" | "s" => Some(1),
                "m" => Some(60),
                "h" => Some(3600),
                "d" => Some(86_400),
                _ => None,
            };
            number.parse::<u64>().ok().zip(per).and_then(|(n, per)| n.checked_mul(per))
        }
    };
    match seconds {
        Some(s) if s > 0 => Ok(s),
        Some(_) => Err(ScheduleError::field("every", shown, "an interval must be longer than zero", hint)),
        None => Err(ScheduleError::field("every", shown, "is not an interval", hint)),
    }
}

/// The `rate(...)` of an interval: whole minutes, at least one.
fn rate_expression(every: &Interval) -> Result<String, ScheduleError> {
    let seconds = interval_seconds(every)?;
    let shown = match every {
        Interval::Seconds(n) => n.to_string(),
        Interval::Text(t) => format!("{t:?}"),
    };
    if seconds < 60 || seconds % 60 != 0 {
        return Err(ScheduleError::field(
            "every",
            shown,
            format!(
                "{seconds} s is not a whole number of minutes, and EventBridge rates are whole minutes (1 at least)"
            ),
            "use a multiple of 60 s (\"1m\", \"5m\"), or crontab fields for fixed times",
        ));
    }
    let minutes = seconds / 60;
    let (n, unit) = match minutes {
        m if m % 1440 == 0 => (m / 1440, "day"),
        m if m % 60 == 0 => (m / 60, "hour"),
        m => (m, "minute"),
    };
    Ok(if n == 1 { format!("rate(1 {unit})") } else { format!("rate({n} {unit}s)") })
}

// --- deployed rules ---------------------------------------------------------------------------

/// Why a deployed rule could not be read or switched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// No such rule on the default event bus.
    #[error(
        "no EventBridge rule `{rule}`{location}; deploy the stack first (rules are named {{project}}-{{schedule}})"
    )]
    NotFound {
        /// Rule name.
        rule: String,
        /// Region and endpoint, for people.
        location: String,
    },
    /// The service refused or could not be reached.
    #[error("EventBridge rule `{rule}`: {message}")]
    Service {
        /// Rule name.
        rule: String,
        /// The SDK's error chain.
        message: String,
    },
}

/// A deployed rule as EventBridge describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// Rule name.
    pub name: String,
    /// Whether it fires.
    pub enabled: bool,
    /// Its schedule expression.
    pub schedule_expression: Option<String>,
}

/// The deployed schedule rules (EventBridge DescribeRule, EnableRule, DisableRule).
#[derive(Debug, Clone)]
pub struct Rules {
    client: aws_sdk_eventbridge::Client,
    location: String,
}

impl Rules {
    /// Rules through the shared AWS configuration.
    pub fn new(sdk: &SdkConfig) -> Self {
        let region = sdk.region().map(|r| format!(" in {r}")).unwrap_or_default();
        let endpoint = sdk.endpoint_url().map(|e| format!(" at {e}")).unwrap_or_default();
        Rules { client: aws_sdk_eventbridge::Client::new(sdk), location: format!("{region}{endpoint}") }
    }

    /// The rule, or `None` when it is not deployed.
    pub async fn describe(&self, rule: &str) -> Result<Option<RuleInfo>, RuleError> {
        match self.client.describe_rule().name(rule).send().await {
            Ok(out) => Ok(Some(RuleInfo {
                name: out.name.unwrap_or_else(|| rule.to_owned()),
                enabled: out.state == Some(RuleState::Enabled),
                schedule_expression: out.schedule_expression,
            })),
            Err(e) => match self.error(rule, e) {
                RuleError::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Enables or disables a deployed rule; returns it as it is afterwards.
    pub async fn set_enabled(&self, rule: &str, enabled: bool) -> Result<RuleInfo, RuleError> {
        if enabled {
            self.client.enable_rule().name(rule).send().await.map_err(|e| self.error(rule, e))?;
        } else {
            self.client.disable_rule().name(rule).send().await.map_err(|e| self.error(rule, e))?;
        }
        tracing::debug!(rule, enabled, "schedule rule switched");
        self.describe(rule).await?.ok_or_else(|| self.not_found(rule))
    }

    fn not_found(&self, rule: &str) -> RuleError {
        RuleError::NotFound { rule: rule.to_owned(), location: self.location.clone() }
    }

    fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(&self, rule: &str, e: E) -> RuleError {
        if e.code() == Some("ResourceNotFoundException") {
            return self.not_found(rule);
        }
        RuleError::Service { rule: rule.to_owned(), message: crate::queue::sqs::aws_error_chain(&e) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::manifest::CronField;

    fn spec() -> ScheduleSpec {
        ScheduleSpec {
            task: "app.schedules.alert.check_queues".into(),
            args: vec![],
            kwargs: Default::default(),
            minute: None,
            hour: None,
            day_of_week: None,
            day_of_month: None,
            month_of_year: None,
            expression: None,
            every: None,
            timezone: None,
            enabled: true,
            queue: None,
        }
    }

    fn text(s: &str) -> Option<CronField> {
        Some(CronField::Text(s.to_owned()))
    }

    #[test]
    fn the_briefs_examples() {
        let weekly = ScheduleSpec {
            minute: Some(CronField::Number(15)),
            hour: Some(CronField::Number(12)),
            day_of_week: Some(CronField::Number(0)),
            ..spec()
        };
        assert_eq!(eventbridge_expression(&weekly).unwrap(), "cron(15 12 ? * 1 *)");
        let daily = ScheduleSpec { minute: Some(CronField::Number(0)), hour: Some(CronField::Number(8)), ..spec() };
        assert_eq!(eventbridge_expression(&daily).unwrap(), "cron(0 8 * * ? *)");
        let ten = ScheduleSpec { minute: text("*/10"), ..spec() };
        assert_eq!(eventbridge_expression(&ten).unwrap(), "cron(0/10 * * * ? *)");
        let first_saturday = ScheduleSpec {
            minute: Some(CronField::Number(0)),
            hour: Some(CronField::Number(0)),
            day_of_week: Some(CronField::Number(6)),
            day_of_month: text("1-7"),
            ..spec()
        };
        assert_eq!(eventbridge_expression(&first_saturday).unwrap(), "cron(0 0 ? * 7#1 *)");

        let every = |i: Interval| eventbridge_expression(&ScheduleSpec { every: Some(i), ..spec() });
        assert_eq!(every(Interval::Seconds(60)).unwrap(), "rate(1 minute)");
        assert_eq!(every(Interval::Text("5m".into())).unwrap(), "rate(5 minutes)");
        assert_eq!(every(Interval::Text("1h".into())).unwrap(), "rate(1 hour)");
        assert_eq!(every(Interval::Text("120m".into())).unwrap(), "rate(2 hours)");
        assert_eq!(every(Interval::Text("1d".into())).unwrap(), "rate(1 day)");
        assert_eq!(every(Interval::Seconds(7200)).unwrap(), "rate(2 hours)");
        for refused in [Interval::Seconds(30), Interval::Text("90s".into()), Interval::Seconds(0)] {
            let e = every(refused).unwrap_err();
            assert_eq!(e.field, Some("every"));
            assert!(e.to_string().contains("hint"), "{e}");
        }
        assert!(every(Interval::Text("90s".into())).unwrap_err().problem.contains("whole number of minutes"));
        assert!(every(Interval::Text("5 parsecs".into())).unwrap_err().problem.contains("not an interval"));
        assert!(every(Interval::Seconds(-60)).unwrap_err().problem.contains("not an interval"));
    }

    #[test]
    fn raw_expressions_are_validated_and_normalised() {
        let raw = |e: &str| eventbridge_expression(&ScheduleSpec { expression: Some(e.into()), ..spec() });
        assert_eq!(raw("cron(0 8 ? * mon-fri *)").unwrap(), "cron(0 8 ? * MON-FRI *)");
        assert_eq!(raw("rate(1 hour)").unwrap(), "rate(1 hour)");
        let e = raw("cron(0 8 * * *)").unwrap_err();
        assert_eq!(e.field, Some("expression"));
        assert!(e.problem.contains("not six") && e.hint.contains("year"), "{e}");
    }

    #[test]
    fn refuses_other_time_zones_and_mixed_forms() {
        let paris =
            ScheduleSpec { minute: Some(CronField::Number(0)), timezone: Some("Europe/Paris".into()), ..spec() };
        let e = eventbridge_expression(&paris).unwrap_err();
        assert_eq!(e.field, Some("timezone"));
        assert!(e.problem.contains("UTC only") && e.hint.contains("UTC"), "{e}");
        let utc = ScheduleSpec { timezone: Some("UTC".into()), ..paris };
        assert!(eventbridge_expression(&utc).is_ok());

        assert!(eventbridge_expression(&spec()).unwrap_err().problem.contains("neither"));
        let both = ScheduleSpec { minute: Some(CronField::Number(0)), every: Some(Interval::Seconds(60)), ..spec() };
        assert!(eventbridge_expression(&both).unwrap_err().problem.contains("several"));
    }
}
