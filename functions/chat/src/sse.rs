//! A server-sent events decoder (the WHATWG `text/event-stream` rules) fed with the byte chunks
//! of a response as they arrive.
//!
//! Lines are split on bytes and only a complete line is decoded as UTF-8, so a chunk boundary
//! may fall anywhere: inside a field name, between `\r` and `\n`, or inside a multi-byte
//! character. (The `eventsource-stream` crate was considered: 0.2.3 slices a leading byte order
//! mark at byte 1 of its 3 bytes, which panics, and it is no longer maintained.)

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; empty means `message`.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// A stream that is not valid `text/event-stream`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line is not UTF-8.
    #[error("the event stream is not UTF-8 (line {line})")]
    NotUtf8 {
        /// 1-based line number.
        line: u64,
    },
    /// A line longer than the limit: not an event stream, or a runaway one.
    #[error("an event stream line is longer than {limit} bytes")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
}

/// The longest line accepted (a chunk of a chat completion is a few hundred bytes).
pub const MAX_LINE: usize = 1 << 20;

/// Decodes events from byte chunks.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of the current, incomplete line.
    line: Vec<u8>,
    /// The last line ended with `\r`: a `\n` right after belongs to it.
    after_cr: bool,
    /// Past the first bytes (a byte order mark is only stripped at the start).
    started: bool,
    lines: u64,
    data: String,
    has_data: bool,
    event: String,
}

impl SseDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        SseDecoder::default()
    }

    /// Feeds the next chunk; returns the events it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    self.end_line(&mut events)?;
                }
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Err(SseError::LineTooLong { limit: MAX_LINE });
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(events)
    }

    /// The end of the stream. An event not closed by a blank line is dropped, as the
    /// standard says; returns whether such an incomplete event was pending.
    pub fn finish(&mut self) -> bool {
        let pending = !self.line.is_empty() || self.has_data;
        *self = SseDecoder::default();
        pending
    }

    fn end_line(&mut self, events: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.lines += 1;
        let mut bytes = std::mem::take(&mut self.line);
        if !self.started {
            self.started = true;
            if bytes.starts_with("\u{feff}".as_bytes()) {
                bytes.drain(..3);
            }
        }
        let line = String::from_utf8(bytes).map_err(|_| SseError::NotUtf8 { line: self.lines })?;
        if line.is_empty() {
            if self.has_data {
                events.push(SseEvent { event: std::mem::take(&mut self.event), data: std::mem::take(&mut self.data) });
            }
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(()); // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_owned(),
            // `id` and `retry` matter to a reconnecting EventSource; a completion is one request.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn decode_in(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(decoder.feed(chunk).unwrap());
        }
        events
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    const STREAM: &str = "\u{feff}: keep-alive\n\ndata: {\"a\":\"h\u{e9}llo \u{65e5}\u{672c}\"}\r\n\r\nevent: ping\ndata:x\ndata: y\r\rdata: \u{1f389}\n\ndata: [DONE]\n\n";

    #[test]
    fn splits_anywhere_give_the_same_events() {
        let whole = decode_in(&[STREAM.as_bytes()]);
        assert_eq!(data(&whole), ["{\"a\":\"h\u{e9}llo \u{65e5}\u{672c}\"}", "x\ny", "\u{1f389}", "[DONE]"]);
        assert_eq!(whole[1].event, "ping");
        assert_eq!(whole[2].event, "", "the event type is reset after each event");
        let bytes = STREAM.as_bytes();
        // Every two-way split, including inside each multi-byte character and between \r and \n.
        for i in 0..=bytes.len() {
            assert_eq!(decode_in(&[&bytes[..i], &bytes[i..]]), whole, "split at byte {i}");
        }
        // One byte at a time.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_in(&singles), whole);
    }

    #[test]
    fn an_unfinished_event_is_dropped_at_the_end() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.feed(b"data: one\n\ndata: tw").unwrap().len() == 1);
        assert!(decoder.finish(), "reports the dropped partial event");
        assert!(!SseDecoder::new().finish());
    }

    #[test]
    fn empty_data_is_an_event_but_no_data_is_not() {
        assert_eq!(data(&decode_in(&[b"data\n\nevent: x\n\ndata:\n\n"])), ["", ""]);
    }

    #[test]
    fn invalid_utf8_and_runaway_lines_are_errors() {
        let mut decoder = SseDecoder::new();
        assert_eq!(decoder.feed(b"data: ok\n\ndata: \xff\xfe\n").unwrap_err(), SseError::NotUtf8 { line: 3 });
        let mut decoder = SseDecoder::new();
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(decoder.feed(&long).unwrap_err(), SseError::LineTooLong { limit: MAX_LINE });
    }
}
