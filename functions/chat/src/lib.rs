//! Chat and AI tasks (app.schedules.chat_tasks); queue `chat`
#![warn(missing_docs)]

use taskbeat::Registry;

/// The module's tasks.
pub fn registry() -> Registry {
    Registry::new("chat")
}
