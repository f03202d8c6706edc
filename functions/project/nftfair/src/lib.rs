//! NFT Fair project tasks (`app.schedules.project.nftfair_task`), on queue `nft`: ported from
//! the seed's `project/nftfair_task.py`. They fetch ERC-721 token metadata from `http(s)://`,
//! `ipfs://` (through a gateway) and `data:application/json` URIs, check it, and rank a
//! collection's tokens by trait rarity.
//!
//! Settings, read when a task runs, all optional: `IPFS_GATEWAY` (default
//! `https://ipfs.io/ipfs/`), `NFT_FETCH_CONCURRENCY` (tokens fetched at once, default 8, at
//! most 64), `NFT_FETCH_TIMEOUT_SECS` (one fetch, default 10).
//!
//! A token that cannot be fetched or is not valid metadata is listed with its reason; a host
//! that keeps answering 5xx or timing out is tried 3 times per token, then the token is listed
//! as `unavailable after 3 attempts: ...`. Only when every token is unavailable does the task
//! retry as a whole (see [`fetch`]).
#![warn(missing_docs)]

pub mod fetch;
pub mod metadata;
pub mod rarity;
mod settings;
pub mod uri;

use std::sync::OnceLock;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use taskbeat::{Registry, TaskContext, TaskError};

pub use fetch::{Fetcher, Outcome};
pub use rarity::{RankedToken, TraitTable};
pub use settings::{
    DEFAULT_CONCURRENCY, DEFAULT_IPFS_GATEWAY, DEFAULT_TIMEOUT, ENV_IPFS_GATEWAY, ENV_NFT_FETCH_CONCURRENCY,
    ENV_NFT_FETCH_TIMEOUT, MAX_CONCURRENCY, NftSettings, SettingError, Settings,
};

/// The task name of `refresh_metadata`.
pub const REFRESH_METADATA: &str = "app.schedules.project.nftfair_task.refresh_metadata";
/// The task name of `refresh_collection`.
pub const REFRESH_COLLECTION: &str = "app.schedules.project.nftfair_task.refresh_collection";

/// How many of the rarest tokens `refresh_collection` returns.
pub const TOP_TOKENS: usize = 10;
/// The largest `count` of `refresh_collection`.
pub const MAX_COLLECTION: u64 = 100_000;

/// The module's tasks, configured from the environment.
pub fn registry() -> Registry {
    registry_with(Settings::Env)
}

/// The module's tasks with settings from `settings` (tests, tools).
pub fn registry_with(settings: Settings) -> Registry {
    let (metadata, collection) = (settings.clone(), settings);
    Registry::new("nftfair")
        .task(REFRESH_METADATA, &["token_uris"], move |ctx, args| refresh_metadata(ctx, args, metadata.clone()))
        .task(REFRESH_COLLECTION, &["base_uri", "count"], move |ctx, args| {
            refresh_collection(ctx, args, collection.clone())
        })
}

// One HTTP client per process (cold start), built on first use; settings are read per task.
fn fetcher(settings: &Settings) -> Result<Fetcher, TaskError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let loaded = NftSettings::load(settings).map_err(|e| TaskError::permanent("InvalidSetting", e.to_string()))?;
    Ok(Fetcher::new(CLIENT.get_or_init(Fetcher::http_client).clone(), loaded))
}

/// Fetches every URI, `concurrency` at once, reporting progress as each finishes; the outcomes
/// come back in the order of `uris`.
async fn fetch_all(ctx: &TaskContext, fetcher: &Fetcher, uris: &[String], what: &str) -> Vec<Outcome> {
    let total = uris.len();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; total];
    // Owned values in each fetch: borrowed ones trip the compiler's Send check of the stream.
    let mut fetches = futures::stream::iter(uris.iter().cloned().enumerate())
        .map(|(i, uri)| {
            let fetcher = fetcher.clone();
            async move { (i, fetcher.fetch(&uri).await) }
        })
        .buffer_unordered(fetcher.concurrency());
    let (mut done, mut failed) = (0, 0);
    while let Some((i, outcome)) = fetches.next().await {
        done += 1;
        if !matches!(outcome, Outcome::Valid(_)) {
            failed += 1;
        }
        outcomes[i] = Some(outcome);
        let percent = (done * 100 / total.max(1)) as u8;
        ctx.progress(percent, format!("fetched {done}/{total} {what} ({failed} invalid)")).await;
    }
    outcomes.into_iter().map(|o| o.unwrap_or_else(|| Outcome::Unavailable("not fetched".to_owned()))).collect()
}

/// A host or gateway that failed every token is down: retry the task rather than report every
/// token invalid.
fn fail_if_all_unavailable(outcomes: &[Outcome]) -> Result<(), TaskError> {
    let all_unavailable = !outcomes.is_empty() && outcomes.iter().all(|o| matches!(o, Outcome::Unavailable(_)));
    match outcomes.first() {
        Some(Outcome::Unavailable(reason)) if all_unavailable => Err(TaskError::retryable(
            "MetadataUnavailable",
            format!("every token URI was unavailable ({} of them); the first: {reason}", outcomes.len()),
        )),
        _ => Ok(()),
    }
}

/// Arguments of `refresh_metadata(token_uris)`.
#[derive(Debug, Deserialize)]
pub struct RefreshMetadata {
    /// The tokens' metadata URIs.
    pub token_uris: Vec<String>,
}

/// A token that is not valid, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidToken {
    /// Its URI.
    pub uri: String,
    /// Why.
    pub reason: String,
}

/// What `refresh_metadata` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataSummary {
    /// Tokens whose metadata is valid.
    pub ok: usize,
    /// The others, in the order given.
    pub invalid: Vec<InvalidToken>,
}

/// Fetches and checks each token's metadata; progress per token.
async fn refresh_metadata(
    ctx: TaskContext,
    args: RefreshMetadata,
    settings: Settings,
) -> Result<MetadataSummary, TaskError> {
    let fetcher = fetcher(&settings)?;
    let outcomes = fetch_all(&ctx, &fetcher, &args.token_uris, "tokens").await;
    fail_if_all_unavailable(&outcomes)?;
    let mut summary = MetadataSummary { ok: 0, invalid: Vec::new() };
    for (uri, outcome) in args.token_uris.into_iter().zip(&outcomes) {
        match outcome.reason() {
            None => summary.ok += 1,
            Some(reason) => summary.invalid.push(InvalidToken { uri, reason: reason.to_owned() }),
        }
    }
    tracing::info!(tokens = outcomes.len(), invalid = summary.invalid.len(), "metadata refreshed");
    Ok(summary)
}

/// Arguments of `refresh_collection(base_uri, count)`.
#[derive(Debug, Deserialize)]
pub struct RefreshCollection {
    /// The collection's base URI: token `i` is at `{base_uri}/{i}`.
    pub base_uri: String,
    /// Tokens 0 to `count - 1`.
    pub count: u64,
}

/// A collection token that is not valid, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidCollectionToken {
    /// The token id.
    pub token_id: u64,
    /// Its URI.
    pub uri: String,
    /// Why.
    pub reason: String,
}

/// What `refresh_collection` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionSummary {
    /// Tokens asked for.
    pub count: u64,
    /// Tokens whose metadata is valid (the ones ranked).
    pub ok: usize,
    /// The others, by token id.
    pub invalid: Vec<InvalidCollectionToken>,
    /// The [`TOP_TOKENS`] rarest valid tokens, rarest first.
    pub top: Vec<RankedToken>,
    /// trait_type -> value -> number of valid tokens with it.
    pub traits: TraitTable,
}

/// Fetches tokens `0..count` under `base_uri`, then ranks them by trait rarity; progress per
/// token.
async fn refresh_collection(
    ctx: TaskContext,
    args: RefreshCollection,
    settings: Settings,
) -> Result<CollectionSummary, TaskError> {
    let base = args.base_uri.trim().trim_end_matches('/');
    let scheme_ok = ["http://", "https://", "ipfs://"].iter().any(|s| base.to_ascii_lowercase().starts_with(s));
    if !scheme_ok || base.len() <= "ipfs://".len() {
        return Err(TaskError::permanent(
            "InvalidArguments",
            "`base_uri` must be an http(s):// or ipfs:// URI under which token i is at {base_uri}/i",
        ));
    }
    if args.count == 0 || args.count > MAX_COLLECTION {
        return Err(TaskError::permanent(
            "InvalidArguments",
            format!("`count` is {}: expected the number of tokens, 1 to {MAX_COLLECTION}", args.count),
        ));
    }
    let fetcher = fetcher(&settings)?;
    let uris: Vec<String> = (0..args.count).map(|id| format!("{base}/{id}")).collect();
    let outcomes = fetch_all(&ctx, &fetcher, &uris, "tokens").await;
    fail_if_all_unavailable(&outcomes)?;
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for ((token_id, uri), outcome) in (0..args.count).zip(uris).zip(outcomes) {
        match outcome {
            Outcome::Valid(meta) => valid.push((token_id, meta)),
            Outcome::Invalid(reason) | Outcome::Unavailable(reason) => {
                invalid.push(InvalidCollectionToken { token_id, uri, reason })
            }
        }
    }
    let traits = rarity::trait_table(&valid);
    let top = rarity::rank(&valid, &traits, TOP_TOKENS);
    tracing::info!(tokens = args.count, invalid = invalid.len(), "collection refreshed");
    Ok(CollectionSummary { count: args.count, ok: valid.len(), invalid, top, traits })
}
