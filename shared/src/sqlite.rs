//! The embedded database of `taskbeat local`: one SQLite file holding task records and queues.
//!
//! One thread owns the connection and commits whatever requests are waiting in a single
//! transaction (group commit): every caller is answered only after its write is committed, so a
//! task acknowledged as sent survives a crash of the process, while a busy runtime pays one
//! commit for many writes. WAL with `synchronous = NORMAL` is durable against process crashes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Notify, oneshot};

/// How many queued requests one transaction takes at most.
const MAX_GROUP: usize = 512;
/// How often the watcher looks for commits of other connections.
const WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// An error of the embedded database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// SQLite reported an error.
    #[error("embedded database {path}: {message}")]
    Sqlite {
        /// The database file.
        path: String,
        /// SQLite's message.
        message: String,
    },
    /// The database thread is gone (the process is shutting down).
    #[error("embedded database {0} is closed")]
    Closed(String),
}

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Reply + Send>;

/// A handle to the embedded database; cheap to clone, shared by the store and every queue.
#[derive(Debug, Clone)]
pub struct Db {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
    changes: Arc<Notify>,
}

impl Db {
    /// Opens (creating when missing) the database file and its schema.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Sqlite {
                path: path.display().to_string(),
                message: format!("cannot create folder {}: {e}", dir.display()),
            })?;
        }
        let sqlite_err =
            |e: rusqlite::Error| DbError::Sqlite { path: path.display().to_string(), message: e.to_string() };
        let conn = Connection::open(path).map_err(sqlite_err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sqlite_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = OFF;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -16000;",
        )
        .map_err(sqlite_err)?;
        conn.execute_batch(SCHEMA).map_err(sqlite_err)?;
        migrate(&conn).map_err(sqlite_err)?;
        let (jobs, inbox) = mpsc::channel::<Job>();
        let thread_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("taskbeat-sqlite".into())
            .spawn(move || run_writer(conn, inbox, &thread_path))
            .map_err(|e| DbError::Sqlite { path: path.display().to_string(), message: e.to_string() })?;
        let changes = Arc::new(Notify::new());
        if path != Path::new(":memory:") {
            watch_changes(path, Arc::downgrade(&changes))?;
        }
        Ok(Db { jobs, path: path.to_path_buf(), changes })
    }

    /// Signalled when any connection, in this process or another, commits a change: waiting on
    /// it costs nothing while the database is idle.
    pub fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` inside a transaction (in its own savepoint) and answers once it is committed.
    pub async fn call<R, E, F>(&self, f: F) -> Result<Result<R, E>, DbError>
    where
        R: Send + 'static,
        E: Send + 'static,
        F: FnOnce(&Connection) -> Result<Result<R, E>, rusqlite::Error> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: &Connection| {
            let outcome = in_savepoint(conn, f);
            Box::new(move |commit: Result<(), String>| {
                let answer = match (commit, outcome) {
                    (Ok(()), Ok(value)) => Ok(value),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                };
                let _ = tx.send(answer);
            })
        });
        let closed = || DbError::Closed(self.path.display().to_string());
        self.jobs.send(job).map_err(|_| closed())?;
        let answer = rx.await.map_err(|_| closed())?;
        answer.map_err(|message| DbError::Sqlite { path: self.path.display().to_string(), message })
    }
}

/// Runs one request in a savepoint so that its failure does not undo its neighbours' writes.
/// A request that returns its own `Err` (a refused condition) is rolled back too.
fn in_savepoint<R, E, F>(conn: &Connection, f: F) -> Result<Result<R, E>, String>
where
    F: FnOnce(&Connection) -> Result<Result<R, E>, rusqlite::Error>,
{
    conn.execute_batch("SAVEPOINT job").map_err(|e| e.to_string())?;
    let outcome = f(conn);
    let keep = matches!(outcome, Ok(Ok(_)));
    let end = if keep { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
    conn.execute_batch(end).map_err(|e| e.to_string())?;
    outcome.map_err(|e| e.to_string())
}

/// Watches the file for commits from any connection with `PRAGMA data_version` on a read-only
/// connection of its own (a cheap read, no lock), and signals `changes`. Ends when every `Db`
/// handle is gone.
fn watch_changes(path: &Path, changes: Weak<Notify>) -> Result<(), DbError> {
    let sqlite_err = |e: rusqlite::Error| DbError::Sqlite { path: path.display().to_string(), message: e.to_string() };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(sqlite_err)?;
    let read_version = move || conn.query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0));
    let mut seen = read_version().map_err(sqlite_err)?;
    std::thread::Builder::new()
        .name("taskbeat-sqlite-watch".into())
        .spawn(move || {
            while let Some(changes) = changes.upgrade() {
                std::thread::sleep(WATCH_INTERVAL);
                match read_version() {
                    Ok(version) if version != seen => {
                        seen = version;
                        changes.notify_waiters();
                    }
                    Ok(_) => {}
                    // Keep the pollers going on their own timer rather than miss work.
                    Err(_) => changes.notify_waiters(),
                }
            }
        })
        .map_err(|e| DbError::Sqlite { path: path.display().to_string(), message: e.to_string() })?;
    Ok(())
}

/// Brings a database made by an earlier version up to the current schema.
fn migrate(conn: &Connection) -> Result<(), rusqlite::Error> {
    let has_group: bool =
        conn.query_row("SELECT COUNT(*) FROM pragma_table_info('messages') WHERE name = 'group_id'", [], |row| {
            row.get::<_, i64>(0).map(|n| n > 0)
        })?;
    if !has_group {
        conn.execute_batch("ALTER TABLE messages ADD COLUMN group_id TEXT")?;
    }
    Ok(())
}

fn run_writer(conn: Connection, inbox: mpsc::Receiver<Job>, path: &Path) {
    while let Ok(first) = inbox.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match inbox.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // IMMEDIATE takes the write lock up front, so another process (the CLI) waits its turn
        // through busy_timeout instead of failing on a lock upgrade.
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let message = format!("cannot begin a transaction: {e}");
            tracing::error!(path = %path.display(), error = %message, "embedded database");
            for job in group {
                job(&conn)(Err(message.clone()));
            }
            continue;
        }
        let replies: Vec<Reply> = group.into_iter().map(|job| job(&conn)).collect();
        let commit = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for reply in replies {
            reply(commit.clone());
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    id          TEXT PRIMARY KEY,
    task        TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    record      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, created_at);
CREATE INDEX IF NOT EXISTS tasks_by_task ON tasks (task, created_at);

CREATE TABLE IF NOT EXISTS messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id     TEXT NOT NULL UNIQUE,
    queue          TEXT NOT NULL,
    body           TEXT NOT NULL,
    attributes     TEXT NOT NULL DEFAULT '{}',
    sent_at        INTEGER NOT NULL,
    visible_at     INTEGER NOT NULL,
    receive_count  INTEGER NOT NULL DEFAULT 0,
    first_received INTEGER,
    receipt        TEXT,
    group_id       TEXT
);
CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at, seq);

CREATE TABLE IF NOT EXISTS deduplication (
    queue       TEXT NOT NULL,
    dedup_id    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    sent_at     INTEGER NOT NULL,
    PRIMARY KEY (queue, dedup_id)
);

CREATE TABLE IF NOT EXISTS markers (
    key    TEXT PRIMARY KEY,
    until  INTEGER NOT NULL
);
";
