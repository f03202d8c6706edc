//! Settings for the stand-in, and a direct call of a task that keeps every progress report
//! (the batch handler coalesces them; here each one is written, so tests can see them all).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use taskbeat::context::ContextParts;
use taskbeat::record::TaskRecord;
use taskbeat::store::{ClaimOutcome, ClaimRequest, Completion, ListQuery, ProgressUpdate, StateStore, StoreError};
use taskbeat::{Registry, TaskContext, TaskError};
use taskbeat_e2e::fake_nft::FakeNft;
use taskbeat_nftfair::Settings;
use uuid::Uuid;

/// Settings pointing `ipfs://` at the stand-in's gateway, plus `extra`.
pub fn settings(host: &FakeNft, extra: &[(&str, &str)]) -> Settings {
    let mut pairs = vec![("IPFS_GATEWAY".to_owned(), host.gateway())];
    pairs.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Settings::fixed(pairs)
}

/// A store that keeps progress reports only (all a directly called task writes).
#[derive(Debug, Default)]
pub struct ProgressLog {
    pub updates: Mutex<Vec<ProgressUpdate>>,
}

impl ProgressLog {
    /// The status texts, in order.
    pub fn statuses(&self) -> Vec<String> {
        self.updates.lock().unwrap().iter().filter_map(|u| u.status.clone()).collect()
    }

    /// The percentages, in order.
    pub fn percents(&self) -> Vec<u8> {
        self.updates.lock().unwrap().iter().filter_map(|u| u.progress).collect()
    }
}

fn unused() -> StoreError {
    StoreError::Backend("not used by a directly called task".into())
}

#[async_trait]
impl StateStore for ProgressLog {
    async fn create(&self, _: &TaskRecord) -> Result<(), StoreError> {
        Err(unused())
    }
    async fn claim(&self, _: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        Err(unused())
    }
    async fn progress(&self, _: Uuid, update: &ProgressUpdate) -> Result<(), StoreError> {
        self.updates.lock().unwrap().push(update.clone());
        Ok(())
    }
    async fn complete(&self, _: &Completion) -> Result<(), StoreError> {
        Err(unused())
    }
    async fn get(&self, _: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        Err(unused())
    }
    async fn list(&self, _: &ListQuery) -> Result<Vec<TaskRecord>, StoreError> {
        Err(unused())
    }
    async fn acquire_marker(&self, _: &str, _: Duration) -> Result<bool, StoreError> {
        Err(unused())
    }
}

/// Calls a task's body directly (no batch handler), with every progress report kept.
pub async fn call(registry: &Registry, task: &str, args: Vec<Value>) -> (Result<Value, TaskError>, Arc<ProgressLog>) {
    let log = Arc::new(ProgressLog::default());
    let parts = ContextParts {
        id: Uuid::new_v4(),
        name: task.to_owned(),
        retries: 0,
        parent_id: None,
        root_id: None,
        deadline: None,
        progress_interval: Duration::ZERO,
    };
    let ctx = TaskContext::new(parts, log.clone(), None);
    let result = registry.get(task).unwrap().call(ctx, args, Map::new()).await;
    (result, log)
}
