//! Settings for the stand-in; `call` runs a task directly with every progress report kept.

use taskbeat_chat::Settings;
use taskbeat_e2e::fake_openai::FakeOpenAi;

pub const MODEL: &str = "gpt-test-mini";

/// Settings pointing at the stand-in with its key and [`MODEL`], plus `extra`.
pub fn settings(api: &FakeOpenAi, key: &str, extra: &[(&str, &str)]) -> Settings {
    let mut pairs = vec![
        ("CHAT_API_BASE".to_owned(), api.base()),
        ("CHAT_API_KEY".to_owned(), key.to_owned()),
        ("CHAT_MODEL".to_owned(), MODEL.to_owned()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Settings::fixed(pairs)
}

pub use taskbeat::testing::call_task as call;
