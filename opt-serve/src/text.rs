//! A row's text as its tokens arrive: incremental detokenization, stop strings, and the part of
//! the text that is safe to send (held back while it could still become a stop string or while
//! its last character is an incomplete UTF-8 sequence).

use opt_data::OptTokenizer;

/// The decoded text of one row's new tokens and how much of it has been sent.
#[derive(Debug, Clone)]
pub struct TextState {
    stop: Vec<String>,
    /// Decoded text of every new token so far (cut before a stop string once one is found).
    text: String,
    /// Bytes of `text` already handed out.
    sent: usize,
    stopped: bool,
}

impl TextState {
    /// A row that stops before any of `stop` (empty strings are ignored).
    pub fn new(stop: &[String]) -> Self {
        Self {
            stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            sent: 0,
            stopped: false,
        }
    }

    /// Re-decode the row's new `tokens`; true when a stop string has now appeared (the text is
    /// then cut before its first occurrence).
    pub fn update(&mut self, tokenizer: &OptTokenizer, tokens: &[u32]) -> bool {
        if self.stopped {
            return true;
        }
        self.set_text(tokenizer.decode(tokens, true).unwrap_or_default())
    }

    /// `update` with the decoded text given.
    fn set_text(&mut self, text: String) -> bool {
        self.text = text;
        // A stop string may straddle what was already sent: search from a little before it.
        let from = self.sent.saturating_sub(self.longest_stop());
        let from = floor_char_boundary(&self.text, from);
        if let Some(cut) = self
            .stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
        {
            self.text.truncate(cut);
            self.stopped = true;
        }
        self.stopped
    }

    /// The text not yet handed out that can no longer change; all of it when `finished`.
    pub fn take_ready(&mut self, finished: bool) -> String {
        let end = if finished || self.stopped {
            self.text.len()
        } else {
            self.safe_end()
        };
        if end <= self.sent {
            return String::new();
        }
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    /// The whole text (cut before a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// End of the text that no further token can change: before a trailing replacement
    /// character (an incomplete UTF-8 sequence) and before any suffix that starts a stop string.
    fn safe_end(&self) -> usize {
        let complete = self.text.trim_end_matches('\u{FFFD}').len();
        let mut end = complete;
        for stop in &self.stop {
            for (i, _) in stop.char_indices().skip(1) {
                if self.text[..complete].ends_with(&stop[..i]) {
                    end = end.min(complete - i);
                }
            }
        }
        end
    }

    fn longest_stop(&self) -> usize {
        self.stop.iter().map(String::len).max().unwrap_or(0)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds text pieces as if each were one token's decoded text.
    fn run(stop: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut state = TextState::new(&stop);
        let mut sent = Vec::new();
        let mut text = String::new();
        for (i, piece) in pieces.iter().enumerate() {
            text.push_str(piece);
            state.set_text(text.clone());
            let last = i + 1 == pieces.len();
            sent.push(state.take_ready(last || state.stopped));
            if state.stopped {
                break;
            }
        }
        (sent, state.text().to_string(), state.stopped)
    }

    #[test]
    fn a_stop_string_split_across_tokens_is_never_sent() {
        let (sent, text, stopped) = run(&["\n\n"], &["Hello", " world", "\n", "\nmore"]);
        assert!(stopped);
        assert_eq!(text, "Hello world");
        // "\n" is held back: it could start the stop string.
        assert_eq!(sent, vec!["Hello", " world", "", ""]);
        assert_eq!(sent.concat(), text);
    }

    #[test]
    fn a_held_back_prefix_that_does_not_become_a_stop_string_is_sent() {
        let (sent, text, stopped) = run(&["END"], &["a E", "N", "x", " b"]);
        assert!(!stopped);
        assert_eq!(sent, vec!["a ", "", "ENx", " b"]);
        assert_eq!(sent.concat(), text);
    }

    #[test]
    fn an_incomplete_character_waits_for_its_last_byte() {
        let (sent, text, _) = run(&[], &["caf", "\u{FFFD}", "é"]);
        // The second piece made the text end in a replacement character: nothing is sent for it.
        assert_eq!(sent, vec!["caf", "", "\u{FFFD}é"]);
        assert_eq!(text, "caf\u{FFFD}é");
    }
}
