//! Streaming detokenization: generated token ids in, newly completed UTF-8 text out.

use super::SlmTokenizer;

/// Streaming detokenizer: feed token ids, get back newly completed UTF-8 text. Bytes of an incomplete
/// multi-byte character are held back until the next token completes them; control tokens produce ""
/// (they are never shown in generated text). Invalid sequences come out as U+FFFD, like `decode`.
#[derive(Debug, Default)]
pub struct IncrementalDecoder {
    pending: Vec<u8>,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, tok: &SlmTokenizer, id: u32) -> String {
        if tok.is_control(id) {
            return String::new();
        }
        self.pending.extend_from_slice(tok.bytes_of(id));
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..valid]).expect("checked valid prefix"),
                    );
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            start = valid;
                            break;
                        }
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid + len;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// What is still held back (an incomplete character, shown as U+FFFD), when generation ends.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
