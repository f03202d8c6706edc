//! The embedded `StateStore`: task records in the SQLite file of `taskbeat local`.
//!
//! Each operation reads and writes the record inside one transaction of the database thread,
//! so the conditions (never rewrite a terminal state, one live lease) hold across processes.

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::{
    ClaimOutcome, ClaimRequest, Completion, ListBy, ListCursor, ListQuery, ProgressUpdate, StateStore, StoreError,
    apply_claim, apply_completion, apply_progress, apply_reopen,
};
use crate::record::{TaskRecord, iso};
use crate::sqlite::{Db, DbError};

/// Task records in the embedded database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    /// A store on an open database.
    pub fn new(db: Db) -> Self {
        SqliteStore { db }
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        StoreError::Backend(e.to_string())
    }
}

fn read(conn: &Connection, id: Uuid) -> Result<Option<TaskRecord>, rusqlite::Error> {
    let text: Option<String> = conn
        .prepare_cached("SELECT record FROM tasks WHERE id = ?1")?
        .query_row([id.to_string()], |row| row.get(0))
        .optional()?;
    text.map(|t| decode(&id.to_string(), &t)).transpose()
}

fn decode(id: &str, text: &str) -> Result<TaskRecord, rusqlite::Error> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("record {id}: {e}").into())
    })
}

fn write(conn: &Connection, record: &TaskRecord) -> Result<(), rusqlite::Error> {
    let text = serde_json::to_string(record).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    conn.prepare_cached(
        "INSERT INTO tasks (id, task, state, created_at, record) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET task = excluded.task, state = excluded.state, record = excluded.record",
    )?
    .execute(params![record.id.to_string(), record.task, record.state.as_str(), iso(record.created_at), text])?;
    Ok(())
}

#[async_trait]
impl StateStore for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %record.id))]
    async fn create(&self, record: &TaskRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.db
            .call(move |conn| {
                if read(conn, record.id)?.is_some() {
                    return Ok(Err(StoreError::AlreadyExists(record.id)));
                }
                write(conn, &record)?;
                Ok(Ok(()))
            })
            .await?
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %request.id))]
    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let request = request.clone();
        self.db
            .call(move |conn| {
                let current = read(conn, request.id)?;
                match apply_claim(current, &request, Utc::now()) {
                    Ok(record) => {
                        write(conn, &record)?;
                        Ok(Ok(ClaimOutcome::Claimed(Box::new(record))))
                    }
                    Err(refused) => Ok(Ok(refused)),
                }
            })
            .await?
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %id))]
    async fn progress(&self, id: Uuid, update: &ProgressUpdate) -> Result<(), StoreError> {
        let update = update.clone();
        self.db
            .call(move |conn| {
                let current = read(conn, id)?;
                match apply_progress(current, id, &update, Utc::now()) {
                    Ok(record) => write(conn, &record).map(Ok),
                    Err(e) => Ok(Err(e)),
                }
            })
            .await?
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %completion.id, state = %completion.state))]
    async fn complete(&self, completion: &Completion) -> Result<(), StoreError> {
        let completion = completion.clone();
        self.db
            .call(move |conn| {
                let current = read(conn, completion.id)?;
                match apply_completion(current, &completion, Utc::now()) {
                    Ok(record) => write(conn, &record).map(Ok),
                    Err(e) => Ok(Err(e)),
                }
            })
            .await?
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        self.db.call(move |conn| read(conn, id).map(Ok)).await?
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn acquire_marker(&self, key: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        let key = key.to_owned();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.db
            .call(move |conn| {
                let now = Utc::now().timestamp_millis();
                let taken = conn
                    .prepare_cached(
                        "INSERT INTO markers (key, until) VALUES (?1, ?2)
                         ON CONFLICT (key) DO UPDATE SET until = excluded.until WHERE markers.until <= ?3",
                    )?
                    .execute(params![key, now.saturating_add(ttl_ms), now])?;
                Ok(Ok(taken == 1))
            })
            .await?
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list(&self, query: &ListQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.list_page(query, None).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_page(&self, query: &ListQuery, cursor: Option<&ListCursor>) -> Result<Vec<TaskRecord>, StoreError> {
        let query = query.clone();
        let cursor = cursor.copied();
        self.db
            .call(move |conn| {
                let since = query.since.map(iso).unwrap_or_default();
                // Past the cursor: older, or as old with a smaller id. Without one, past the
                // end of time (every created_at sorts before "~").
                let (before, before_id) =
                    cursor.map_or(("~".to_owned(), String::new()), |c| (iso(c.created_at), c.id.to_string()));
                let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
                let page = "AND created_at >= ?2 AND (created_at < ?3 OR (created_at = ?3 AND id < ?4))
                            ORDER BY created_at DESC, id DESC LIMIT ?5";
                let (sql, key, state) = match &query.by {
                    ListBy::State(state) => (
                        format!("SELECT id, record FROM tasks INDEXED BY tasks_by_state WHERE state = ?1 {page}"),
                        state.as_str().to_owned(),
                        None,
                    ),
                    ListBy::Task(task) => (
                        format!("SELECT id, record FROM tasks INDEXED BY tasks_by_task WHERE task = ?1 {page}"),
                        task.clone(),
                        None,
                    ),
                    ListBy::TaskAndState(task, state) => (
                        format!(
                            "SELECT id, record FROM tasks INDEXED BY tasks_by_task WHERE task = ?1 AND state = ?6 {page}"
                        ),
                        task.clone(),
                        Some(state.as_str()),
                    ),
                };
                let mut statement = conn.prepare_cached(&sql)?;
                let decode_row = |row: &rusqlite::Row<'_>| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?));
                let rows = match state {
                    Some(state) => statement
                        .query_map(params![key, since, before, before_id, limit, state], decode_row)?
                        .collect::<Result<Vec<_>, _>>()?,
                    None => statement
                        .query_map(params![key, since, before, before_id, limit], decode_row)?
                        .collect::<Result<Vec<_>, _>>()?,
                };
                let mut records = Vec::with_capacity(rows.len());
                for (id, text) in rows {
                    records.push(decode(&id, &text)?);
                }
                Ok(Ok(records))
            })
            .await?
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn reopen_dead_letter(&self, id: Uuid) -> Result<bool, StoreError> {
        self.db
            .call(move |conn| {
                let current = read(conn, id)?;
                match apply_reopen(current, id, Utc::now()) {
                    Ok(Some(record)) => write(conn, &record).map(|()| Ok(true)),
                    Ok(None) => Ok(Ok(false)),
                    Err(e) => Ok(Err(e)),
                }
            })
            .await?
    }
}
