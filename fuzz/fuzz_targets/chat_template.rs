//! A chat template and a conversation: `ChatTemplate::new` (compile + probe render) and `render`
//! under its fuel, recursion and output limits. Input: the template source, then NUL-separated
//! messages, each `role` newline `content`. A leading `!` turns `add_generation_prompt` off.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slate::slm::chat::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (add_generation_prompt, text) = match text.strip_prefix('!') {
        Some(rest) => (false, rest),
        None => (true, text),
    };
    let mut parts = text.split('\0');
    let template = parts.next().unwrap_or_default();
    let messages: Vec<ChatMessage> = parts
        .map(|m| {
            let (role, content) = m.split_once('\n').unwrap_or((m, ""));
            ChatMessage::new(role, content)
        })
        .collect();
    let Ok(t) = ChatTemplate::new(template, "<|im_start|>", "<|im_end|>") else { return };
    let _ = t.render(&messages, add_generation_prompt);
});
