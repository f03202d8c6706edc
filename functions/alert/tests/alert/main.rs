//! The alert module's tests: its tasks run end to end through the batch handler on an in-memory
//! backend with the real manifest's queues, against local stand-ins for the webhook and for the
//! health targets.
#![allow(clippy::unwrap_used)]

mod check_health;
mod check_queues;
mod rig;
mod schedules;
mod send_alert;
