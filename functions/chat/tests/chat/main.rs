//! The chat module's tests: its tasks end to end against a local stand-in for an
//! OpenAI-compatible API (`taskbeat_e2e::fake_openai`).
#![allow(clippy::unwrap_used)]

mod generate_reply;
mod summarize;
mod support;
