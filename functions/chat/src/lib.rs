//! Chat and AI tasks (`app.schedules.chat_tasks`), on queue `chat`: ported from the seed's
//! `chat_tasks.py`. They call an OpenAI-compatible chat completions API
//! (`POST {CHAT_API_BASE}/v1/chat/completions`) with a streamed answer.
//!
//! Settings, read when a task runs: `CHAT_API_BASE` and `CHAT_API_KEY` (required), `CHAT_MODEL`
//! (required unless a task's options name the model), `CHAT_API_TIMEOUT_SECS` (the wait for the
//! answer and between two chunks of the stream, default 60). The key goes in the
//! `Authorization: Bearer` header only: it is never logged and never recorded.
//!
//! Failures: 408, 409, 429 and 5xx, timeouts, connection failures and a stream that breaks off
//! are retried (honouring `Retry-After`); other 4xx, and a 429 for a spent quota, fail with the
//! API's own `error.message`.
#![warn(missing_docs)]

mod api;
mod chunking;
mod settings;
pub mod sse;

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use taskbeat::{Registry, TaskContext, TaskError};

pub use api::{ChatApi, ChatError, ChatMessage, Completion, CompletionRequest, ROLES, Usage};
pub use chunking::{split_into_chunks, transcript};
pub use settings::{
    ApiKey, ChatSettings, DEFAULT_TIMEOUT, ENV_CHAT_API_BASE, ENV_CHAT_API_KEY, ENV_CHAT_API_TIMEOUT, ENV_CHAT_MODEL,
    Settings,
};

/// The task name of `generate_reply`.
pub const GENERATE_REPLY: &str = "app.schedules.chat_tasks.generate_reply";
/// The task name of `summarize_conversation`.
pub const SUMMARIZE_CONVERSATION: &str = "app.schedules.chat_tasks.summarize_conversation";

/// `max_chunk_chars` when the call leaves it out.
pub const DEFAULT_MAX_CHUNK_CHARS: usize = 4000;
/// The most chunks one summary may take (each is a paid call).
pub const MAX_CHUNKS: usize = 100;

/// The instructions for summarizing one chunk.
pub const CHUNK_PROMPT: &str = "You summarize conversations. Summarize the conversation excerpt the user gives you: \
keep the facts, decisions, open questions and who said what. Answer with the summary only.";
/// The instructions for combining the partial summaries.
pub const COMBINE_PROMPT: &str = "You combine partial summaries of one conversation, given in order, into a single \
summary: keep the facts, decisions and open questions, drop repetition. Answer with the summary only.";

/// The module's tasks, configured from the environment.
pub fn registry() -> Registry {
    registry_with(Settings::Env)
}

/// The module's tasks with settings from `settings` (tests, tools).
pub fn registry_with(settings: Settings) -> Registry {
    let (reply, summarize) = (settings.clone(), settings);
    Registry::new("chat")
        .task(GENERATE_REPLY, &["messages", "options"], move |ctx, args| generate_reply(ctx, args, reply.clone()))
        .task(SUMMARIZE_CONVERSATION, &["messages", "max_chunk_chars"], move |ctx, args| {
            summarize_conversation(ctx, args, summarize.clone())
        })
}

// One HTTP client per process (cold start), built on first use; settings are read per task.
fn api(settings: &Settings) -> Result<(ChatApi, ChatSettings), ChatError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let loaded = ChatSettings::load(settings)?;
    let client = CLIENT.get_or_init(ChatApi::http_client).clone();
    Ok((ChatApi::new(client, &loaded), loaded))
}

/// Arguments of `generate_reply(messages, options)`.
#[derive(Debug, Deserialize)]
pub struct GenerateReply {
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Overrides of the defaults.
    #[serde(default)]
    pub options: Option<ReplyOptions>,
}

/// What `generate_reply`'s options may override.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyOptions {
    /// The model (default `CHAT_MODEL`).
    #[serde(default)]
    pub model: Option<String>,
    /// Sampling temperature, 0 to 2 (default: the server's).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Longest reply in tokens (default: the server's).
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

impl ReplyOptions {
    fn check(&self) -> Result<(), ChatError> {
        if self.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err(ChatError::InvalidArguments("`options.model` is empty: name a model or leave it out".into()));
        }
        if let Some(t) = self.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
            return Err(ChatError::InvalidArguments(format!("`options.temperature` is {t}: expected 0 to 2")));
        }
        if self.max_tokens == Some(0) {
            return Err(ChatError::InvalidArguments("`options.max_tokens` is 0: expected at least 1".into()));
        }
        Ok(())
    }
}

/// What `generate_reply` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyResult {
    /// The reply text.
    pub reply: String,
    /// Token usage, when the server reported it.
    pub usage: Option<Usage>,
    /// The model that answered.
    pub model: String,
    /// Why the reply ended (`stop`; `length` when cut by `max_tokens`).
    pub finish_reason: Option<String>,
}

/// Streams a reply to the conversation; progress counts the tokens as they arrive.
async fn generate_reply(ctx: TaskContext, args: GenerateReply, settings: Settings) -> Result<ReplyResult, TaskError> {
    api::check_messages(&args.messages)?;
    let options = args.options.unwrap_or_default();
    options.check()?;
    let (api, loaded) = api(&settings)?;
    let request = CompletionRequest {
        model: loaded.model(options.model.as_deref())?,
        messages: args.messages,
        temperature: options.temperature,
        max_tokens: options.max_tokens,
    };
    ctx.progress(0, "waiting for the model").await;
    let max_tokens = options.max_tokens.map(|m| m as usize);
    let completion = api
        .complete(&request, |tokens| {
            let ctx = ctx.clone();
            async move {
                // Without max_tokens the length of the reply is unknown: the count says it all.
                let percent = max_tokens.map_or(0, |max| (tokens * 100 / max.max(1)).min(99) as u8);
                ctx.progress(percent, format!("generating reply: {tokens} tokens")).await;
            }
        })
        .await?;
    ctx.progress(100, format!("reply complete: {} tokens", completion.tokens)).await;
    tracing::info!(tokens = completion.tokens, "reply generated");
    Ok(ReplyResult {
        reply: completion.reply,
        usage: completion.usage,
        model: completion.model,
        finish_reason: completion.finish_reason,
    })
}

/// Arguments of `summarize_conversation(messages, max_chunk_chars)`.
#[derive(Debug, Deserialize)]
pub struct SummarizeConversation {
    /// The conversation, oldest first.
    pub messages: Vec<ChatMessage>,
    /// The most content characters per chunk (default [`DEFAULT_MAX_CHUNK_CHARS`]).
    #[serde(default = "default_max_chunk_chars")]
    pub max_chunk_chars: usize,
}

fn default_max_chunk_chars() -> usize {
    DEFAULT_MAX_CHUNK_CHARS
}

/// What `summarize_conversation` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryResult {
    /// The summary of the whole conversation.
    pub summary: String,
    /// How many chunks it was summarized in.
    pub chunks: usize,
    /// Usage summed over every call; `None` unless every call reported it.
    pub usage: Option<Usage>,
    /// The model that answered the last call.
    pub model: String,
}

/// Summarizes each chunk (see [`split_into_chunks`]), then combines the partial summaries in
/// one more call. A conversation that fits one chunk takes one call: its summary is the
/// summary. A retry starts over (partial summaries are not kept between runs).
async fn summarize_conversation(
    ctx: TaskContext,
    args: SummarizeConversation,
    settings: Settings,
) -> Result<SummaryResult, TaskError> {
    api::check_messages(&args.messages)?;
    if args.max_chunk_chars == 0 {
        return Err(ChatError::InvalidArguments("`max_chunk_chars` is 0: expected at least 1".into()).into());
    }
    let chunks = split_into_chunks(&args.messages, args.max_chunk_chars);
    if chunks.len() > MAX_CHUNKS {
        return Err(ChatError::InvalidArguments(format!(
            "the conversation makes {} chunks of at most {} characters, over the limit of {MAX_CHUNKS} calls: raise `max_chunk_chars`",
            chunks.len(),
            args.max_chunk_chars
        ))
        .into());
    }
    let (api, loaded) = api(&settings)?;
    let model = loaded.model(None)?;
    let total = chunks.len();
    let steps = if total > 1 { total + 1 } else { total };
    let mut usage = Some(Usage::default());
    let mut answered_by = model.clone();
    let mut partials = Vec::with_capacity(total);
    for (i, chunk) in chunks.iter().enumerate() {
        ctx.progress((i * 100 / steps) as u8, format!("summarizing chunk {}/{total}", i + 1)).await;
        let excerpt = if total > 1 {
            format!("Conversation excerpt (part {} of {total}):\n\n{}", i + 1, transcript(chunk))
        } else {
            format!("Conversation:\n\n{}", transcript(chunk))
        };
        let completion = call(&api, &model, CHUNK_PROMPT, excerpt).await?;
        usage = add_usage(usage, completion.usage);
        answered_by = completion.model;
        partials.push(completion.reply);
    }
    let summary = if total > 1 {
        ctx.progress((total * 100 / steps) as u8, format!("combining {total} partial summaries")).await;
        let numbered: Vec<String> =
            partials.iter().enumerate().map(|(i, s)| format!("{}. {}", i + 1, s.trim())).collect();
        let completion =
            call(&api, &model, COMBINE_PROMPT, format!("Partial summaries, in order:\n\n{}", numbered.join("\n\n")))
                .await?;
        usage = add_usage(usage, completion.usage);
        answered_by = completion.model;
        completion.reply
    } else {
        partials.pop().unwrap_or_default()
    };
    ctx.progress(100, format!("summary complete: {total} chunks")).await;
    tracing::info!(chunks = total, "conversation summarized");
    Ok(SummaryResult { summary, chunks: total, usage, model: answered_by })
}

async fn call(api: &ChatApi, model: &str, instructions: &str, text: String) -> Result<Completion, ChatError> {
    let request = CompletionRequest {
        model: model.to_owned(),
        messages: vec![ChatMessage::new("system", instructions), ChatMessage::new("user", text)],
        temperature: None,
        max_tokens: None,
    };
    api.complete(&request, |_| async {}).await
}

fn add_usage(sum: Option<Usage>, call: Option<Usage>) -> Option<Usage> {
    let (mut sum, call) = (sum?, call?);
    sum += call;
    Some(sum)
}
