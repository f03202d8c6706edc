//! How records look in a terminal.

use std::fmt::Write;

use chrono::Utc;
use taskbeat::record::{TaskRecord, iso};

/// A record as `key  value` lines.
pub fn record_table(record: &TaskRecord) -> String {
    let mut out = String::new();
    let mut row = |key: &str, value: String| {
        let _ = writeln!(out, "{key:<10} {value}");
    };
    row("id", record.id.to_string());
    row("task", record.task.clone());
    row("queue", record.queue.clone());
    row("state", record.state.to_string());
    let status = record.status.as_deref().map(|s| format!("  {s}")).unwrap_or_default();
    row("progress", format!("{}%{status}", record.progress));
    row("retries", record.retries.to_string());
    let age = Utc::now() - record.created_at;
    row("created", format!("{} ({} ago)", iso(record.created_at), human(age)));
    if let Some(started) = record.started_at {
        row("started", iso(started));
    }
    if let Some(finished) = record.finished_at {
        let took = record.duration().map(|d| format!(" (took {})", human(d))).unwrap_or_default();
        row("finished", format!("{}{took}", iso(finished)));
    }
    if let Some(parent) = record.parent_id {
        row("parent", parent.to_string());
    }
    row("args", compact(&serde_json::Value::Array(record.args.clone())));
    if !record.kwargs.is_empty() {
        row("kwargs", compact(&serde_json::Value::Object(record.kwargs.clone())));
    }
    if let Some(meta) = &record.meta {
        row("meta", compact(&serde_json::Value::Object(meta.clone())));
    }
    if let Some(result) = &record.result {
        row("result", compact(result));
    }
    if let Some(error) = &record.error {
        row("error", format!("{}: {}", error.kind, error.message));
    }
    out
}

fn compact(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 400 {
        format!("{}… (--output json for all)", text.chars().take(400).collect::<String>())
    } else {
        text
    }
}

pub fn human(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}
