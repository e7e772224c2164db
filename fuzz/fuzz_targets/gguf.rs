//! A GGUF file from bytes, as the loader takes it: the header pre-scan, candle's parse, the model
//! config (with its caps) and CPU weights, the tokenizer, and the chat template it carries, which
//! then renders and the tokenizer encodes.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use slate::slm::chat::{ChatMessage, ChatTemplate};
use slate::slm::gguf::GgufFile;
use slate::slm::tokenizer::SlmTokenizer;

fn serve_tokenizer(tok: &SlmTokenizer) {
    let Ok(template) = ChatTemplate::of_tokenizer(tok) else { return };
    let messages = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hello, 12 worlds!")];
    common::use_tokenizer(tok, template.as_ref(), &messages);
}

fuzz_target!(|data: &[u8]| {
    if slate::slm::gguf::header::prescan(data).is_err() {
        return;
    }
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else { return };
    match slate::slm::open_gguf(&file, 0) {
        Ok((_model, tok)) => serve_tokenizer(&tok),
        // The model part failed: the tokenizer and template still get their turn.
        Err(_) => {
            if let Ok(tok) = SlmTokenizer::from_gguf_metadata(file.metadata()) {
                serve_tokenizer(&tok);
            }
        }
    }
});
