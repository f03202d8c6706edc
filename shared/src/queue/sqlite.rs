//! The embedded `TaskQueue`: messages in the SQLite file of `taskbeat local`, with SQS's
//! semantics: a received message is hidden for its visibility timeout and comes back unless
//! deleted; each receive counts; past the max receive count it moves to the dead-letter queue;
//! a per-message delay holds it back.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{OptionalExtension, params};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{
    MAX_DELAY, MoveMethod, MoveOutcome, MovedMessage, OutgoingMessage, QueueDepth, QueueError, ReceivedMessage,
    TaskQueue, check_fifo, check_size, move_by_copy,
};
use crate::sqlite::Db;
use crate::store::millis_to_time;

/// How often an empty long poll looks again without being woken: delayed messages and expired
/// visibility timeouts become receivable by the clock, not by a commit.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// SQS FIFO's deduplication interval.
const DEDUPLICATION_WINDOW_MS: i64 = 5 * 60 * 1000;

/// Where a queue's dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// The dead-letter queue's name.
    pub dead_letter_queue: String,
    /// Receives after which a message moves there.
    pub max_receive_count: u32,
}

/// One named queue in the embedded database.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    db: Db,
    name: String,
    redrive: Option<Redrive>,
    max_message_bytes: usize,
    fifo: bool,
    // Wakes an in-process long poll at once when this process sends.
    arrivals: Arc<Notify>,
}

impl SqliteQueue {
    /// A queue named `name` (created on first send), with an optional redrive policy.
    pub fn new(db: Db, name: impl Into<String>, redrive: Option<Redrive>) -> Self {
        SqliteQueue {
            db,
            name: name.into(),
            redrive,
            max_message_bytes: super::DEFAULT_MAX_MESSAGE_BYTES,
            fifo: false,
            arrivals: Arc::new(Notify::new()),
        }
    }

    /// Makes it a FIFO queue: messages of one group are delivered in order, none while an
    /// earlier one of its group is in flight; a deduplication id seen in the last five minutes
    /// is dropped; no per-message delay.
    pub fn fifo(mut self, fifo: bool) -> Self {
        self.fifo = fifo;
        self
    }

    /// Shares the arrival signal of another handle on the same queue (same process).
    pub fn with_arrivals(mut self, arrivals: Arc<Notify>) -> Self {
        self.arrivals = arrivals;
        self
    }

    /// The arrival signal, to share with other handles of this queue.
    pub fn arrivals(&self) -> Arc<Notify> {
        self.arrivals.clone()
    }

    /// Whether `other` is a queue of the same embedded database.
    fn same_database(&self, other: &SqliteQueue) -> bool {
        Arc::ptr_eq(&self.db.changes(), &other.db.changes())
    }

    /// Moves messages to another queue of the same database in one transaction: each keeps
    /// its id, body, attributes and group, and joins the end of the target as a new send
    /// would, with no receives counted.
    async fn move_within(&self, target: &SqliteQueue, ids: Option<&[String]>) -> Result<MoveOutcome, QueueError> {
        let (source, destination, target_fifo) = (self.name.clone(), target.name.clone(), target.fifo);
        let ids: Option<Vec<String>> = ids.map(<[String]>::to_vec);
        let moved = self
            .db
            .call(move |conn| {
                let now = Utc::now().timestamp_millis();
                let mut select = conn.prepare_cached(
                    "SELECT seq, message_id, body, attributes, group_id FROM messages
                     WHERE queue = ?1 AND visible_at <= ?2 ORDER BY seq",
                )?;
                let rows = select
                    .query_map(params![source, now], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, String>(3)?,
                            row.get::<_, Option<String>>(4)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let mut delete = conn.prepare_cached("DELETE FROM messages WHERE seq = ?1")?;
                let mut insert = conn.prepare_cached(
                    "INSERT INTO messages (message_id, queue, body, attributes, sent_at, visible_at, group_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
                )?;
                let mut moved = Vec::new();
                for (seq, message_id, body, attributes, group_id) in rows {
                    if ids.as_ref().is_some_and(|ids| !ids.contains(&message_id)) {
                        continue;
                    }
                    // Groups as a send would have them: a FIFO target needs one, a standard one has none.
                    let group_id = target_fifo.then(|| group_id.unwrap_or_else(|| "dead-letters".into()));
                    delete.execute([seq])?;
                    insert.execute(params![message_id, destination, body, attributes, now, group_id])?;
                    moved.push(MovedMessage { new_message_id: message_id.clone(), message_id });
                }
                Ok(Ok::<_, QueueError>(moved))
            })
            .await
            .map_err(|e| self.error(e))??;
        target.arrivals.notify_waiters();
        let count = moved.len() as u64;
        Ok(MoveOutcome { method: MoveMethod::Embedded, moved, count })
    }

    fn error(&self, e: impl ToString) -> QueueError {
        QueueError::Backend { queue: self.name.clone(), message: e.to_string() }
    }

    async fn try_receive(&self, max: usize, visibility: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
        let name = self.name.clone();
        let redrive = self.redrive.clone();
        let fifo = self.fifo;
        let visibility_ms = i64::try_from(visibility.as_millis()).unwrap_or(i64::MAX);
        let max = i64::try_from(max.clamp(1, 10)).unwrap_or(10);
        let received = self
            .db
            .call(move |conn| {
                let now = Utc::now().timestamp_millis();
                if let Some(redrive) = &redrive {
                    // SQS moves a message whose receive count reached the maximum when it would be
                    // received again; it keeps its id, body and attributes.
                    conn.prepare_cached(
                        "UPDATE messages SET queue = ?1, receive_count = 0, first_received = NULL, receipt = NULL
                         WHERE queue = ?2 AND visible_at <= ?3 AND receive_count >= ?4",
                    )?
                    .execute(params![
                        redrive.dead_letter_queue,
                        name,
                        now,
                        redrive.max_receive_count
                    ])?;
                }
                let mut select = conn.prepare_cached(if fifo {
                    // In order of sending; a group waits while an earlier message of it is in flight.
                    "SELECT seq, message_id, body, attributes, sent_at, receive_count, first_received, group_id
                     FROM messages m WHERE queue = ?1 AND visible_at <= ?2 AND NOT EXISTS (
                        SELECT 1 FROM messages x WHERE x.queue = m.queue AND x.group_id = m.group_id
                        AND x.seq < m.seq AND x.visible_at > ?2)
                     ORDER BY seq LIMIT ?3"
                } else {
                    "SELECT seq, message_id, body, attributes, sent_at, receive_count, first_received, group_id
                     FROM messages WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, seq LIMIT ?3"
                })?;
                let rows = select
                    .query_map(params![name, now, max], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, String>(3)?,
                            row.get::<_, i64>(4)?,
                            row.get::<_, u32>(5)?,
                            row.get::<_, Option<i64>>(6)?,
                            row.get::<_, Option<String>>(7)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let mut update = conn.prepare_cached(
                    "UPDATE messages SET visible_at = ?1, receive_count = receive_count + 1,
                     first_received = COALESCE(first_received, ?2), receipt = ?3 WHERE seq = ?4",
                )?;
                let mut messages = Vec::with_capacity(rows.len());
                for (seq, message_id, body, attributes, sent_at, count, first, group_id) in rows {
                    let receipt = format!("{message_id}:{}", Uuid::new_v4().simple());
                    update.execute(params![now.saturating_add(visibility_ms), now, receipt, seq])?;
                    messages.push(ReceivedMessage {
                        message_id,
                        receipt_handle: receipt,
                        body,
                        receive_count: count + 1,
                        sent_at: millis_to_time(sent_at),
                        first_received_at: Some(millis_to_time(first.unwrap_or(now))),
                        attributes: serde_json::from_str(&attributes).unwrap_or_default(),
                        group_id,
                    });
                }
                Ok(Ok::<_, QueueError>(messages))
            })
            .await
            .map_err(|e| self.error(e))??;
        Ok(received)
    }
}

#[async_trait]
impl TaskQueue for SqliteQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    fn is_fifo(&self) -> bool {
        self.fifo
    }

    async fn send(&self, message: OutgoingMessage) -> Result<String, QueueError> {
        check_size(self, &message.body)?;
        check_fifo(self, &message)?;
        if message.delay > MAX_DELAY {
            return Err(QueueError::DelayTooLong(message.delay));
        }
        let name = self.name.clone();
        let message_id = Uuid::new_v4().to_string();
        let id = message_id.clone();
        let attributes = serde_json::to_string(&message.attributes).map_err(|e| self.error(e))?;
        let delay_ms = i64::try_from(message.delay.as_millis()).unwrap_or(0);
        let fifo = self.fifo;
        // As SQS: a standard queue has no message groups.
        let group_id = message.group_id.clone().filter(|_| fifo);
        let sent_id = self
            .db
            .call(move |conn| {
                let now = Utc::now().timestamp_millis();
                if fifo {
                    // SQS drops a deduplication id seen in the last five minutes, even when the
                    // first message is already deleted, and answers with the first message's id.
                    let dedup = message.deduplication_id.clone().unwrap_or_default();
                    let earlier: Option<String> = conn
                        .prepare_cached(
                            "SELECT message_id FROM deduplication WHERE queue = ?1 AND dedup_id = ?2 AND sent_at > ?3",
                        )?
                        .query_row(params![name, dedup, now - DEDUPLICATION_WINDOW_MS], |row| row.get(0))
                        .optional()?;
                    if let Some(earlier) = earlier {
                        return Ok(Ok::<_, QueueError>(earlier));
                    }
                    conn.prepare_cached(
                        "INSERT INTO deduplication (queue, dedup_id, message_id, sent_at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (queue, dedup_id) DO UPDATE SET message_id = excluded.message_id, sent_at = excluded.sent_at",
                    )?
                    .execute(params![name, dedup, id, now])?;
                }
                conn.prepare_cached(
                    "INSERT INTO messages (message_id, queue, body, attributes, sent_at, visible_at, group_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![id, name, message.body, attributes, now, now + delay_ms, group_id])?;
                Ok(Ok::<_, QueueError>(id))
            })
            .await
            .map_err(|e| self.error(e))??;
        self.arrivals.notify_waiters();
        Ok(sent_id)
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = self.arrivals.notified();
            let changes = self.db.changes();
            let committed = changes.notified();
            let messages = self.try_receive(max, visibility).await?;
            if !messages.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(messages);
            }
            let pause = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL_INTERVAL));
            tokio::select! {
                () = arrived => {}
                () = committed => {}
                () = pause => {}
            }
        }
    }

    async fn delete(&self, receipt_handles: &[String]) -> Result<(), QueueError> {
        if receipt_handles.is_empty() {
            return Ok(());
        }
        let receipts = receipt_handles.to_vec();
        self.db
            .call(move |conn| {
                let mut delete = conn.prepare_cached("DELETE FROM messages WHERE receipt = ?1")?;
                for receipt in &receipts {
                    delete.execute([receipt])?;
                }
                Ok(Ok::<_, QueueError>(()))
            })
            .await
            .map_err(|e| self.error(e))?
    }

    async fn change_visibility(&self, receipt_handle: &str, visibility: Duration) -> Result<(), QueueError> {
        let receipt = receipt_handle.to_owned();
        let visibility_ms = i64::try_from(visibility.as_millis()).unwrap_or(i64::MAX);
        self.db
            .call(move |conn| {
                let now = Utc::now().timestamp_millis();
                conn.prepare_cached("UPDATE messages SET visible_at = ?1 WHERE receipt = ?2")?
                    .execute(params![now.saturating_add(visibility_ms), receipt])?;
                Ok(Ok::<_, QueueError>(()))
            })
            .await
            .map_err(|e| self.error(e))??;
        if visibility.is_zero() {
            self.arrivals.notify_waiters();
        }
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let name = self.name.clone();
        self.db
            .call(move |conn| {
                let now = Utc::now().timestamp_millis();
                let depth = conn
                    .prepare_cached(
                        "SELECT
                        COALESCE(SUM(visible_at <= ?2), 0),
                        COALESCE(SUM(visible_at > ?2 AND receive_count > 0), 0),
                        COALESCE(SUM(visible_at > ?2 AND receive_count = 0), 0)
                     FROM messages WHERE queue = ?1",
                    )?
                    .query_row(params![name, now], |row| {
                        let count = |i: usize| row.get::<_, i64>(i).map(|n| u64::try_from(n).unwrap_or(0));
                        Ok(QueueDepth { visible: count(0)?, in_flight: count(1)?, delayed: count(2)? })
                    })?;
                Ok(Ok::<_, QueueError>(depth))
            })
            .await
            .map_err(|e| self.error(e))?
    }

    async fn peek(&self, max: usize) -> Result<Vec<ReceivedMessage>, QueueError> {
        let name = self.name.clone();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.db
            .call(move |conn| {
                let now = Utc::now().timestamp_millis();
                let mut select = conn.prepare_cached(
                    "SELECT message_id, body, attributes, sent_at, receive_count, first_received, group_id
                     FROM messages WHERE queue = ?1 AND visible_at <= ?2 ORDER BY visible_at, seq LIMIT ?3",
                )?;
                let messages = select
                    .query_map(params![name, now, max], |row| {
                        Ok(ReceivedMessage {
                            message_id: row.get(0)?,
                            // Not received: nothing to delete or release.
                            receipt_handle: String::new(),
                            body: row.get(1)?,
                            attributes: serde_json::from_str(&row.get::<_, String>(2)?).unwrap_or_default(),
                            sent_at: millis_to_time(row.get(3)?),
                            receive_count: row.get(4)?,
                            first_received_at: row.get::<_, Option<i64>>(5)?.map(millis_to_time),
                            group_id: row.get(6)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Ok::<_, QueueError>(messages))
            })
            .await
            .map_err(|e| self.error(e))?
    }

    async fn move_messages(&self, target: &dyn TaskQueue, ids: Option<&[String]>) -> Result<MoveOutcome, QueueError> {
        match target.as_any().downcast_ref::<SqliteQueue>() {
            Some(embedded) if self.same_database(embedded) => self.move_within(embedded, ids).await,
            _ => move_by_copy(self, target, ids).await,
        }
    }

    async fn purge(&self) -> Result<u64, QueueError> {
        let name = self.name.clone();
        self.db
            .call(move |conn| {
                let deleted = conn.prepare_cached("DELETE FROM messages WHERE queue = ?1")?.execute([name])?;
                Ok(Ok::<_, QueueError>(deleted as u64))
            })
            .await
            .map_err(|e| self.error(e))?
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
