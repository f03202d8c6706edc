//! The SQS queue name kombu's SQS transport uses for a Celery queue.
//!
//! kombu prepends the transport option `queue_name_prefix` to the Celery queue name, then
//! (`Channel.entity_name`) turns every ASCII punctuation character but `-`, `_` and `.` into `_`,
//! and `.` into `-`, except in a final `.fifo`, which marks a FIFO queue. What remains must be a
//! valid SQS name, or kombu's `CreateQueue`/`GetQueueUrl` would fail at run time.

/// The longest SQS queue name, `.fifo` included.
pub const MAX_SQS_QUEUE_NAME: usize = 80;

const FIFO_SUFFIX: &str = ".fifo";

/// Why a queue name cannot be an SQS queue name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueNameError {
    /// Nothing left of the name.
    #[error("the SQS queue name is empty")]
    Empty,
    /// Over 80 characters.
    #[error("the SQS queue name `{name}` has {length} characters; SQS allows at most {MAX_SQS_QUEUE_NAME}")]
    TooLong {
        /// The name.
        name: String,
        /// Its length in characters.
        length: usize,
    },
    /// A character SQS refuses (kombu replaces ASCII punctuation, nothing else).
    #[error(
        "the SQS queue name `{name}` has {character:?}, which SQS refuses (letters, digits, `-` and `_` only, \
         and `.fifo` at the end of a FIFO queue)"
    )]
    Character {
        /// The name.
        name: String,
        /// The first refused character.
        character: char,
    },
    /// `.fifo` and the queue's `fifo` setting disagree.
    #[error("the SQS queue name `{name}` {}", if *.fifo { "does not end in `.fifo`, but the queue is FIFO" } else { "ends in `.fifo`, but the queue is not FIFO" })]
    Fifo {
        /// The name.
        name: String,
        /// Whether the queue is FIFO.
        fifo: bool,
    },
}

/// kombu's `Channel.entity_name`: the SQS form of a queue name.
pub fn entity_name(name: &str) -> String {
    let translate = |part: &str| -> String {
        part.chars()
            .map(|c| match c {
                '.' => '-',
                '-' | '_' => c,
                c if c.is_ascii_punctuation() => '_',
                c => c,
            })
            .collect()
    };
    match name.strip_suffix(FIFO_SUFFIX) {
        Some(partial) => format!("{}{FIFO_SUFFIX}", translate(partial)),
        None => translate(name),
    }
}

/// kombu's `Channel.canonical_queue_name`: the SQS name it looks up for Celery queue `queue`
/// under the transport option `queue_name_prefix`.
pub fn kombu_queue_name(prefix: &str, queue: &str) -> String {
    entity_name(&format!("{prefix}{queue}"))
}

/// Checks that `name` is a valid SQS queue name for a queue that is FIFO or not.
pub fn check_sqs_queue_name(name: &str, fifo: bool) -> Result<(), QueueNameError> {
    let length = name.chars().count();
    if length > MAX_SQS_QUEUE_NAME {
        return Err(QueueNameError::TooLong { name: name.to_owned(), length });
    }
    let stem = match name.strip_suffix(FIFO_SUFFIX) {
        Some(stem) if fifo => stem,
        None if !fifo => name,
        _ => return Err(QueueNameError::Fifo { name: name.to_owned(), fifo }),
    };
    if stem.is_empty() {
        return Err(QueueNameError::Empty);
    }
    if let Some(character) = stem.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(QueueNameError::Character { name: name.to_owned(), character });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_as_kombu_does() {
        // Checked against kombu 5.7's Channel.entity_name.
        assert_eq!(entity_name("celery"), "celery");
        assert_eq!(entity_name("app.schedules.default"), "app-schedules-default");
        assert_eq!(entity_name("a:b/c@d!e"), "a_b_c_d_e");
        assert_eq!(entity_name("my-q_1"), "my-q_1");
        assert_eq!(entity_name("jobs.v2.fifo"), "jobs-v2.fifo");
        assert_eq!(entity_name("we ird"), "we ird");
        assert_eq!(kombu_queue_name("prod.", "default"), "prod-default");
        assert_eq!(kombu_queue_name("", "default"), "default");
        assert_eq!(kombu_queue_name("tb-", "orders.fifo"), "tb-orders.fifo");
    }

    #[test]
    fn refuses_what_sqs_refuses() {
        assert!(check_sqs_queue_name("tb-default", false).is_ok());
        assert!(check_sqs_queue_name("tb-orders.fifo", true).is_ok());
        assert!(check_sqs_queue_name(&"q".repeat(80), false).is_ok());
        assert!(matches!(
            check_sqs_queue_name(&"q".repeat(81), false),
            Err(QueueNameError::TooLong { length: 81, .. })
        ));
        assert!(matches!(check_sqs_queue_name("we ird", false), Err(QueueNameError::Character { character: ' ', .. })));
        assert!(matches!(check_sqs_queue_name("défaut", false), Err(QueueNameError::Character { character: 'é', .. })));
        assert!(matches!(check_sqs_queue_name("q.fifo", false), Err(QueueNameError::Fifo { fifo: false, .. })));
        assert!(matches!(check_sqs_queue_name("q", true), Err(QueueNameError::Fifo { fifo: true, .. })));
        assert_eq!(check_sqs_queue_name("", false), Err(QueueNameError::Empty));
        let message = check_sqs_queue_name("q", true).unwrap_err().to_string();
        assert!(message.contains("does not end in `.fifo`"), "{message}");
    }
}
