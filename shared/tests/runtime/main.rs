//! Integration tests of the runtime crate (one test binary).
#![allow(clippy::unwrap_used)]

mod fifo;
mod handler;
mod schema;
mod semantics;
