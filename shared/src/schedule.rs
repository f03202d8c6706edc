//! Beat schedules: Celery crontab fields, raw EventBridge expressions and intervals, converted
//! to the EventBridge schedule expression a rule runs on.
//!
//! (First cut: raw expressions pass through; conversion of Celery fields comes next.)

use crate::manifest::ScheduleSpec;

/// A schedule that cannot become an EventBridge rule, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not expressible, with what to do.
    #[error("{0}")]
    Invalid(String),
}

/// The EventBridge schedule expression (`cron(...)` or `rate(...)`) of a schedule.
pub fn eventbridge_expression(spec: &ScheduleSpec) -> Result<String, ScheduleError> {
    spec.expression.clone().ok_or_else(|| ScheduleError::Invalid("only raw expressions are supported so far".into()))
}
