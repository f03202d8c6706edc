//! taskbeat: Celery-style tasks on AWS serverless.
//!
//! This crate is the runtime every function links: the envelope, the registry and task
//! context, the state store and queue seams (DynamoDB/SQS and embedded SQLite), the batch
//! handler, the Lambda entry point, the producer client and the local runtime. It knows no
//! business task.
#![warn(missing_docs)]

pub mod backend;
pub mod celery;
pub mod client;
pub mod context;
pub mod envelope;
pub mod event;
pub mod handler;
pub mod infra;
pub mod lambda;
pub mod local;
pub mod manifest;
pub mod metrics;
pub mod provision;
pub mod queue;
pub mod record;
pub mod registry;
pub mod schedule;
pub mod settings;
pub mod sqlite;
pub mod state;
pub mod store;
pub mod testing;

pub use client::{Client, SendError, SendOptions};
pub use context::TaskContext;
pub use envelope::Envelope;
pub use registry::{Registry, TaskError, TaskOptions};
pub use state::TaskState;
