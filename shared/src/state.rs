//! The states a task moves through, with Celery's names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A task's state, spelled as Celery spells it so dashboards and producers keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskState {
    /// Sent, not yet picked up.
    Pending,
    /// Claimed by a worker; the body is running.
    Started,
    /// Running and has reported progress.
    Progress,
    /// Failed in a retryable way; will run again.
    Retry,
    /// Finished with a result.
    Success,
    /// Finished with an error.
    Failure,
    /// Revoked or expired; never (again) started.
    Revoked,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 7] = [
        TaskState::Pending,
        TaskState::Started,
        TaskState::Progress,
        TaskState::Retry,
        TaskState::Success,
        TaskState::Failure,
        TaskState::Revoked,
    ];

    /// The states that are never overwritten once written.
    pub const TERMINAL: [TaskState; 3] = [TaskState::Success, TaskState::Failure, TaskState::Revoked];

    /// True for SUCCESS, FAILURE and REVOKED.
    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// The upper-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Started => "STARTED",
            TaskState::Progress => "PROGRESS",
            TaskState::Retry => "RETRY",
            TaskState::Success => "SUCCESS",
            TaskState::Failure => "FAILURE",
            TaskState::Revoked => "REVOKED",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the seven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task state `{0}`: expected one of PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE, REVOKED")]
pub struct UnknownState(pub String);

impl FromStr for TaskState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        Self::ALL.into_iter().find(|state| state.as_str() == upper).ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_from_str_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.to_string().parse::<TaskState>(), Ok(state));
        }
        assert_eq!("progress".parse::<TaskState>(), Ok(TaskState::Progress));
        let err = "DONE".parse::<TaskState>().unwrap_err();
        assert!(err.to_string().contains("DONE"));
    }

    #[test]
    fn only_finished_states_are_terminal() {
        let terminal: Vec<_> = TaskState::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, TaskState::TERMINAL);
    }

    #[test]
    fn serde_uses_celery_names() {
        assert_eq!(serde_json::to_string(&TaskState::Progress).unwrap(), "\"PROGRESS\"");
    }
}
