//! A compressed model folder from bytes: `config.json`, `tokenizer.gguf`, `model.safetensors` and
//! `compression.json`, in that order, separated by `SEPARATOR`, through `compressed::open_with` (the
//! checks `compressed::open` runs on a folder), then the CPU backend, tokenizer and chat template.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use slate::slm::chat::{ChatMessage, ChatTemplate};
use slate::slm::compressed::{self, COMPRESSION_FILE, CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE};

/// Between the files of one input (the seed generator writes the same).
const SEPARATOR: &[u8] = b"%%slate-fuzz-file%%";

fn split(mut data: &[u8]) -> [&[u8]; 4] {
    let mut parts = [&[][..]; 4];
    for part in parts.iter_mut().take(3) {
        match data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(i) => {
                *part = &data[..i];
                data = &data[i + SEPARATOR.len()..];
            }
            None => {
                *part = std::mem::take(&mut data);
            }
        }
    }
    parts[3] = data;
    parts
}

fuzz_target!(|data: &[u8]| {
    let [config, tokenizer, model, compression] = split(data);
    let opened = compressed::open_with(|name| {
        Ok(match name {
            CONFIG_FILE => config,
            TOKENIZER_FILE => tokenizer,
            MODEL_FILE => model,
            COMPRESSION_FILE => compression,
            other => return Err(format!("{other}: not a file of the format")),
        }
        .to_vec())
    });
    let Ok(c) = opened else { return };
    let Ok(o) = slate::slm::open_compressed(c, 0) else { return };
    let Ok(template) = ChatTemplate::of_tokenizer(&o.tokenizer) else { return };
    common::use_tokenizer(&o.tokenizer, template.as_ref(), &[ChatMessage::new("user", "Hello")]);
});
