//! The SLM text layer on the real default model file (models/SmolLM2-135M-Instruct.Q4_1.gguf): tokenizer
//! ids and round trips, control tokens, the end-of-generation set, and the chat template.
//!
//! Expected ids: llama.cpp's tokenization of each string. `tools/peers/golden_tokens.py --llama-tokenize
//! PATH` prints the arrays below from a native llama.cpp build's `llama-tokenize` (its strings and these
//! are the same). They were first computed with an independent Python re-implementation of llama.cpp's
//! `llm_tokenizer_bpe` for `tokenizer.ggml.pre = "smollm"`, cross-checked against Hugging Face
//! `tokenizers` 0.23.3 built the same way (the two agreed on every string).

mod common;

use candle_core::quantized::gguf_file;
use slate::slm::chat::{ChatMessage, ChatTemplate};
use slate::slm::tokenizer::{IncrementalDecoder, SlmTokenizer};
use std::sync::OnceLock;

const SYSTEM: &str =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

fn tokenizer() -> &'static SlmTokenizer {
    static TOK: OnceLock<SlmTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = common::smollm2();
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let content = gguf_file::Content::read(&mut std::io::BufReader::new(file))
            .unwrap_or_else(|e| panic!("{}: not a readable GGUF file: {e}", path.display()));
        SlmTokenizer::from_gguf_metadata(&content.metadata).expect("tokenizer from the default model")
    })
}

fn template() -> ChatTemplate {
    let t = tokenizer();
    ChatTemplate::new(
        t.chat_template().expect("the model has a chat template"),
        t.bos_token().unwrap_or(""),
        t.eos_token().unwrap_or(""),
    )
    .expect("the model's chat template compiles")
}

#[test]
fn known_ids() {
    let t = tokenizer();
    let cases: &[(&str, &[u32])] = &[
        ("Hello world", &[19556, 905]),
        (" 12345 and 3.14159", &[216, 33, 34, 35, 36, 37, 284, 216, 35, 30, 33, 36, 33, 37, 41]),
        (
            "fn main() {\n    println!(\"hi\");\n}\n",
            &[7853, 1085, 1000, 1662, 472, 1628, 34115, 17, 1470, 6004, 21646, 198, 109, 198],
        ),
        ("Café crème brûlée", &[51, 1939, 2756, 1650, 11180, 1558, 1156, 41307, 92, 20174]),
        (
            "日本語のテキスト",
            &[23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226],
        ),
        ("emoji 🎉🚀", &[391, 33777, 15107, 232, 227, 10813, 244, 218]),
    ];
    for (text, want) in cases {
        assert_eq!(t.encode(text, true).unwrap(), *want, "{text:?}");
        assert_eq!(t.encode(text, false).unwrap(), *want, "{text:?} without special parsing");
    }
}

#[test]
fn round_trips() {
    let t = tokenizer();
    let texts = [
        "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see!",
        "Digits: 0123456789, 3.14159, -42, 1e-9, 2024-11-29",
        "fn main() {\n\tlet x: Vec<u8> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
        "Accents: Ångström, façade, naïve, Straße, Dvořák, São Paulo",
        "CJK: 你好，世界。日本語のテキスト。한국어 텍스트",
        "Emoji: 🎉🚀👍🏽 👨‍👩‍👧 ❤️",
        "  leading and trailing spaces  \n\n\n",
        "",
    ];
    for text in texts {
        let ids = t.encode(text, true).unwrap();
        assert_eq!(t.decode(&ids, true), text, "{ids:?}");
        // Streaming gives the same text, one token at a time.
        let mut dec = IncrementalDecoder::new();
        let mut streamed: String = ids.iter().map(|&id| dec.push(t, id)).collect();
        streamed.push_str(&dec.finish());
        assert_eq!(streamed, text);
    }
}

#[test]
fn control_tokens() {
    let t = tokenizer();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.encode("<|im_start|>", true).unwrap(), vec![1]);
    let plain = t.encode("<|im_start|>", false).unwrap();
    assert_eq!(plain, vec![44, 108, 306, 79, 3738, 108, 46]);
    assert_eq!(t.decode(&plain, true), "<|im_start|>");
    assert!(t.is_control(0) && t.is_control(1) && t.is_control(2) && !t.is_control(19556));
    assert_eq!(t.decode(&[1, 19556, 2], true), "Hello");
    assert_eq!(t.decode(&[1, 19556, 2], false), "<|im_start|>Hello<|im_end|>");
    assert_eq!(t.token_str(2), "<|im_end|>");
    assert_eq!(t.token_str(905), " world");
    assert_eq!(t.token_bytes(905), b" world");
}

#[test]
fn special_ids() {
    let t = tokenizer();
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_id(), Some(2));
    assert_eq!(t.bos_token(), Some("<|im_start|>"));
    assert_eq!(t.eos_token(), Some("<|im_end|>"));
    // add_bos_token = false: the prompt is the text's tokens alone.
    assert_eq!(t.encode_prompt("Hello world", true).unwrap(), vec![19556, 905]);
    let stops = t.stop_ids();
    assert!(stops.contains(&2) && stops.contains(&0), "{stops:?}");
    // llama.cpp also ends generation at the FIM repo-name token "<reponame>" (id 4); nothing else.
    assert_eq!(stops, &[0, 2, 4]);
}

#[test]
fn chat_template_adds_the_default_system_prompt() {
    let tmpl = template();
    let user = [ChatMessage::new("user", "What is 2+2?")];
    let prompt = tmpl.render(&user, true).unwrap();
    assert_eq!(prompt, format!("{SYSTEM}<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"));
    assert_eq!(
        tokenizer().encode(&prompt, true).unwrap(),
        vec![
            1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
            19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198
        ]
    );
    // Without the generation prompt the text ends after the last message.
    assert_eq!(
        tmpl.render(&user, false).unwrap(),
        format!("{SYSTEM}<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    );
}

#[test]
fn chat_template_keeps_a_given_system_prompt() {
    let tmpl = template();
    let msgs = [
        ChatMessage::new("system", "Answer in French."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "Bonjour !"),
        ChatMessage::new("user", "Thanks"),
    ];
    assert_eq!(
        tmpl.render(&msgs, true).unwrap(),
        "<|im_start|>system\nAnswer in French.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nBonjour !<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n"
    );
    let e = tmpl.render(&[ChatMessage::new("function", "x")], true).unwrap_err();
    assert!(e.to_string().starts_with("messages[0].role:"), "{e}");
}
