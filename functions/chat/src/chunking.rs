//! Splitting a conversation into chunks a model can summarize one at a time.
//!
//! Sizes count characters (Unicode scalar values) of message contents. A chunk holds whole
//! messages whose contents add up to at most the limit. A message longer than the limit alone
//! is split into pieces of at most the limit, each its own chunk: cut after the last whitespace
//! in the second half of the window when there is one (so words stay whole), else at the
//! limit, always on a character boundary. The pieces, joined, are the message unchanged.

use crate::api::ChatMessage;

/// Splits `messages` into chunks of at most `max_chars` content characters (`max_chars` > 0).
pub fn split_into_chunks(messages: &[ChatMessage], max_chars: usize) -> Vec<Vec<ChatMessage>> {
    let max_chars = max_chars.max(1);
    let mut chunks = Vec::new();
    let mut current: Vec<ChatMessage> = Vec::new();
    let mut current_chars = 0;
    for message in messages {
        let chars = message.content.chars().count();
        if chars > max_chars {
            if !current.is_empty() {
                chunks.push(std::mem::take(&mut current));
                current_chars = 0;
            }
            for piece in split_text(&message.content, max_chars) {
                chunks.push(vec![ChatMessage { content: piece, ..message.clone() }]);
            }
            continue;
        }
        if current_chars + chars > max_chars && !current.is_empty() {
            chunks.push(std::mem::take(&mut current));
            current_chars = 0;
        }
        current_chars += chars;
        current.push(message.clone());
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Cuts `text` into pieces of at most `max_chars` characters, preferring whitespace.
fn split_text(text: &str, max_chars: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max_chars {
        // Byte offsets of the window's characters; `end` is where the window stops.
        let window: Vec<(usize, char)> = rest.char_indices().take(max_chars + 1).collect();
        let end = window[max_chars].0;
        let cut = window[max_chars / 2..max_chars]
            .iter()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map_or(end, |(at, c)| at + c.len_utf8());
        pieces.push(rest[..cut].to_owned());
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        pieces.push(rest.to_owned());
    }
    pieces
}

/// A chunk as the text a model reads: `role: content` per message, a blank line between.
pub fn transcript(chunk: &[ChatMessage]) -> String {
    chunk
        .iter()
        .map(|m| match &m.name {
            Some(name) => format!("{} ({name}): {}", m.role, m.content),
            None => format!("{}: {}", m.role, m.content),
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> ChatMessage {
        ChatMessage::new("user", text)
    }

    fn sizes(chunks: &[Vec<ChatMessage>]) -> Vec<Vec<usize>> {
        chunks.iter().map(|c| c.iter().map(|m| m.content.chars().count()).collect()).collect()
    }

    #[test]
    fn packs_whole_messages_up_to_the_limit() {
        let messages: Vec<ChatMessage> = [4, 3, 3, 5, 1, 10].iter().map(|n| user(&"x".repeat(*n))).collect();
        assert_eq!(sizes(&split_into_chunks(&messages, 10)), vec![vec![4, 3, 3], vec![5, 1], vec![10]]);
        assert_eq!(sizes(&split_into_chunks(&messages, 100)), vec![vec![4, 3, 3, 5, 1, 10]]);
    }

    #[test]
    fn a_long_message_is_cut_into_its_own_chunks_at_char_boundaries() {
        let long = "日本語のテキスト".repeat(5); // 40 characters, 3 bytes each
        let messages = vec![user("hi"), ChatMessage::new("assistant", long.clone()), user("bye")];
        let chunks = split_into_chunks(&messages, 16);
        assert_eq!(sizes(&chunks), vec![vec![2], vec![16], vec![16], vec![8], vec![3]]);
        let rejoined: String = chunks[1..4].iter().map(|c| c[0].content.as_str()).collect();
        assert_eq!(rejoined, long, "the pieces are the message unchanged");
        assert!(chunks[1..4].iter().all(|c| c[0].role == "assistant"));
    }

    #[test]
    fn cuts_prefer_whitespace() {
        let pieces = split_text("the quick brown fox jumps over the lazy dog", 12);
        assert_eq!(pieces, ["the quick ", "brown fox ", "jumps over ", "the lazy dog"]);
        assert!(pieces.iter().all(|p| p.chars().count() <= 12));
        // No whitespace in the second half of the window: cut at the limit.
        assert_eq!(split_text("a bcdefghijklmnop", 6), ["a bcde", "fghijk", "lmnop"]);
    }

    #[test]
    fn every_chunk_respects_the_limit() {
        let text = "Lorem ipsum dolor sit amet, 🎉 consectetur adipiscing elit, sed do eiusmod tempor.";
        let messages: Vec<ChatMessage> =
            (0..20).map(|i| user(&text.chars().take((i * 7) % 90).collect::<String>())).collect();
        for limit in [1, 2, 5, 13, 40, 1000] {
            let chunks = split_into_chunks(&messages, limit);
            for chunk in &chunks {
                let chars: usize = chunk.iter().map(|m| m.content.chars().count()).sum();
                assert!(chars <= limit, "limit {limit}: a chunk of {chars} characters");
            }
            let all: String = chunks.iter().flatten().map(|m| m.content.as_str()).collect();
            let expected: String = messages.iter().map(|m| m.content.as_str()).collect();
            assert_eq!(all, expected, "limit {limit}: nothing lost or reordered");
        }
    }

    #[test]
    fn transcript_names_roles() {
        let mut named = user("hello");
        named.name = Some("ana".into());
        assert_eq!(transcript(&[named, ChatMessage::new("assistant", "hi")]), "user (ana): hello\n\nassistant: hi");
    }
}
