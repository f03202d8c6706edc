//! Alert tasks (app.schedules.alert): health checks, queue checks, alert delivery; queue `alerts`
#![warn(missing_docs)]

use taskbeat::Registry;

/// The module's tasks.
pub fn registry() -> Registry {
    Registry::new("alert")
}
