//! Chat templates: the Jinja2 template a GGUF file carries in `tokenizer.chat_template`, rendered with
//! minijinja the way Hugging Face `apply_chat_template` renders it (`trim_blocks`, `lstrip_blocks`,
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`). A few Python
//! string/dict methods that HF templates call (`.strip()`, `.startswith()`, `.items()`, ...) and the
//! `tojson` filter are provided here, so no extra dependency is needed for common templates.
//!
//! A template comes from the model file, so it is rendered under limits: [`FUEL`] instructions, a
//! recursion limit, a cap on the rendered bytes, and bounded versions of the filters that allocate
//! from a number the template gives (`indent`, `format` widths, `slice`, `batch`, `tojson(indent)`,
//! `.replace()`). [`ChatTemplate::new`] renders a one-message conversation as a probe, so a template
//! that loops forever, recurses without end or writes without bound fails the model's load.

use crate::slm::tokenizer::SlmTokenizer;
use crate::{Error, Result};
use minijinja::value::{Kwargs, Rest, StringInput};
use minijinja::{Environment, ErrorKind, State, Value};
use std::cell::Cell;

/// Instructions one render may execute (a ChatML render costs ~15 per message).
pub const FUEL: u64 = 2_000_000;
/// Nesting of macro calls, includes and recursive loops.
pub const RECURSION_LIMIT: usize = 64;
/// Rendered bytes: at least this, or 4× the messages' bytes plus this when more.
pub const MIN_OUTPUT_CAP: usize = 1 << 20;
/// Largest width, indent or padding a template may ask of a filter, and largest `slice`/`batch` count.
pub const MAX_PAD: usize = 1024;
pub const MAX_GROUPS: usize = 10_000;
/// Largest string `.replace()` may produce.
pub const MAX_REPLACED_BYTES: usize = 16 << 20;

thread_local! {
    /// Set when the template's own `raise_exception` fails a render (the probe accepts that).
    static RAISED: Cell<bool> = const { Cell::new(false) };
}

/// Errors a render's limits produce.
fn limit_err(msg: impl Into<String>) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// Roles a request may use.
const ROLES: &[&str] = &["system", "user", "assistant"];

/// One message of a chat conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template. `Send + Sync`; render it from any thread.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `template`. A syntax error is the model file's fault: `Error::Internal`.
    pub fn new(template: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // Hugging Face renders chat templates with trim_blocks and lstrip_blocks on.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_filter("indent", bounded_indent);
        env.add_filter("format", bounded_format);
        env.add_filter("slice", bounded_slice);
        env.add_filter("batch", bounded_batch);
        env.set_unknown_method_callback(python_methods);
        env.add_template_owned(NAME, template.to_string())
            .map_err(|e| Error::Internal(format!("chat template does not compile: {e}")))?;
        let t = ChatTemplate { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string() };
        // The probe: a template that cannot render one user message within its limits is broken.
        RAISED.with(|r| r.set(false));
        if let Err(e) = t.render_limited(&[ChatMessage::new("user", "Hello")], true) {
            if !RAISED.with(|r| r.get()) {
                return Err(Error::Internal(format!(
                    "chat template fails on a one-message conversation: {e}"
                )));
            }
        }
        Ok(t)
    }

    /// The template a tokenizer carries (`tokenizer.chat_template`), compiled with its BOS and EOS
    /// texts as the engine serves it; `None` when the file has none. Errors name the key.
    pub fn of_tokenizer(tokenizer: &SlmTokenizer) -> std::result::Result<Option<Self>, String> {
        let Some(t) = tokenizer.chat_template() else { return Ok(None) };
        Self::new(t, tokenizer.bos_token().unwrap_or(""), tokenizer.eos_token().unwrap_or(""))
            .map(Some)
            .map_err(|e| format!("tokenizer.chat_template: {e}"))
    }

    /// Validates the messages (a non-empty list; each role one of system, user, assistant) then
    /// renders the prompt. A template runtime error (e.g. its own `raise_exception` about the message
    /// order) is the request's fault: 422 on `messages`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::invalid("messages", "must contain at least one message"));
        }
        for (i, m) in messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(Error::invalid(
                    &format!("messages[{i}].role"),
                    format!("unknown role '{}': expected one of system, user, assistant", m.role),
                ));
            }
        }
        self.render_limited(messages, add_generation_prompt)
            .map_err(|msg| Error::invalid("messages", format!("chat template: {msg}")))
    }

    /// Renders under the limits (fuel and recursion from the environment, the output cap here).
    fn render_limited(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> std::result::Result<String, String> {
        let template = self.env.get_template(NAME).expect("the template was added in new(); this is a bug");
        let input: usize = messages.iter().map(|m| m.content.len() + m.role.len()).sum();
        let cap = input.saturating_mul(4).saturating_add(MIN_OUTPUT_CAP);
        let mut out = CappedWriter { buf: Vec::new(), cap, over: false };
        let result = template.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            },
            &mut out,
        );
        if out.over {
            return Err(format!("the rendered prompt passes {cap} bytes"));
        }
        match result {
            Ok(_) => String::from_utf8(out.buf).map_err(|_| "the rendered prompt is not UTF-8".to_string()),
            Err(e) => Err(match (e.kind(), e.detail()) {
                (ErrorKind::InvalidOperation, Some(detail)) => detail.to_string(),
                (ErrorKind::OutOfFuel, _) => {
                    format!("rendering passed its {FUEL} instructions (out of fuel)")
                }
                // Not `{e:#}`: minijinja's debug rendering (the source excerpt under the error)
                // subtracts span columns that can be out of order and panics (fuzz finding).
                _ => e.to_string(),
            }),
        }
    }
}

/// The render's output, refusing bytes past `cap`.
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    over: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(b.len()) > self.cap {
            self.over = true;
            return Err(std::io::Error::other("the rendered prompt is too long"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn check_pad(what: &str, n: usize) -> std::result::Result<(), minijinja::Error> {
    if n > MAX_PAD {
        return Err(limit_err(format!("{what} {n} is more than the {MAX_PAD} accepted")));
    }
    Ok(())
}

/// minijinja's `indent`, its width bounded.
fn bounded_indent(
    value: StringInput<'_>,
    width: Option<usize>,
    first: Option<bool>,
    blank: Option<bool>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let w = match width {
        Some(w) => Some(w),
        None => kwargs.get::<Option<usize>>("width")?,
    };
    check_pad("indent width", w.unwrap_or(0))?;
    minijinja::filters::indent(value, width, first, blank, kwargs)
}

/// minijinja's `format` (printf style), every width and precision bounded.
fn bounded_format(
    state: &State,
    format_str: &Value,
    args: Rest<Value>,
) -> std::result::Result<Value, minijinja::Error> {
    if let Some(f) = format_str.as_str() {
        let mut n: usize = 0;
        for c in f.chars() {
            match c.to_digit(10) {
                Some(d) => {
                    n = n.saturating_mul(10).saturating_add(d as usize);
                    check_pad("format width", n)?;
                }
                None => n = 0,
            }
        }
    }
    minijinja::filters::format(state, format_str, args)
}

/// minijinja's `slice`, the count bounded.
fn bounded_slice(
    state: &State,
    value: Value,
    count: usize,
    fill_with: Option<Value>,
) -> std::result::Result<Value, minijinja::Error> {
    if count > MAX_GROUPS {
        return Err(limit_err(format!("slice count {count} is more than the {MAX_GROUPS} accepted")));
    }
    minijinja::filters::slice(state, value, count, fill_with)
}

/// minijinja's `batch`, the count bounded.
fn bounded_batch(
    state: &State,
    value: Value,
    count: usize,
    fill_with: Option<Value>,
) -> std::result::Result<Value, minijinja::Error> {
    if count > MAX_GROUPS {
        return Err(limit_err(format!("batch count {count} is more than the {MAX_GROUPS} accepted")));
    }
    minijinja::filters::batch(state, value, count, fill_with)
}

/// `raise_exception(msg)`: how HF templates reject a conversation.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    RAISED.with(|r| r.set(true));
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// `x | tojson`, as Hugging Face defines it for chat templates: Python's `json.dumps` with
/// `ensure_ascii=False` (separators `", "` and `": "`, or `indent=n` for pretty output). minijinja's own
/// `tojson` needs its `json` feature and escapes HTML characters, which HF's does not.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    use serde::Serialize;
    let indent: Option<usize> = kwargs.get("indent")?;
    // Accepted for compatibility; the output is always unsorted and non-ASCII is kept as is.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("sort_keys")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    if let Some(n) = indent {
        check_pad("tojson indent", n)?;
    }
    let result = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonJson)),
    };
    result.map_err(|e| minijinja::Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    Ok(Value::from_safe_string(String::from_utf8(out).expect("serde_json writes UTF-8")))
}

/// Compact JSON with Python's default separators: `[1, 2]`, `{"a": 1}`.
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

fn arg_str<'a>(
    args: &'a [Value],
    i: usize,
    method: &str,
) -> std::result::Result<Option<&'a str>, minijinja::Error> {
    match args.get(i) {
        None => Ok(None),
        Some(v) if v.is_none() || v.is_undefined() => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("{method}() expects a string argument"),
            )
        }),
    }
}

/// The Python methods HF chat templates call most, on strings and dicts.
fn python_methods(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    let unknown = || minijinja::Error::new(ErrorKind::UnknownMethod, format!("{}.{method}()", value.kind()));
    if let Some(s) = value.as_str() {
        let chars = arg_str(args, 0, method)?;
        let trim_set = |c: char| chars.map_or(c.is_whitespace(), |set| set.contains(c));
        return Ok(match method {
            "strip" => Value::from(s.trim_matches(trim_set)),
            "lstrip" => Value::from(s.trim_start_matches(trim_set)),
            "rstrip" => Value::from(s.trim_end_matches(trim_set)),
            "startswith" => Value::from(s.starts_with(chars.unwrap_or(""))),
            "endswith" => Value::from(s.ends_with(chars.unwrap_or(""))),
            "upper" => Value::from(s.to_uppercase()),
            "lower" => Value::from(s.to_lowercase()),
            "replace" => {
                let (old, new) = (chars.unwrap_or(""), arg_str(args, 1, method)?.unwrap_or(""));
                // Bound the result before building it: an empty `old` matches between every char.
                let hits = if old.is_empty() { s.chars().count() + 1 } else { s.matches(old).count() };
                let len = hits.checked_mul(new.len()).and_then(|n| n.checked_add(s.len()));
                if len.is_none_or(|n| n > MAX_REPLACED_BYTES) {
                    return Err(limit_err(format!(
                        "replace() would build more than {MAX_REPLACED_BYTES} bytes"
                    )));
                }
                Value::from(s.replace(old, new))
            }
            "split" => match chars {
                Some(sep) if !sep.is_empty() => {
                    Value::from(s.split(sep).map(Value::from).collect::<Vec<_>>())
                }
                _ => Value::from(s.split_whitespace().map(Value::from).collect::<Vec<_>>()),
            },
            _ => return Err(unknown()),
        });
    }
    if value.kind() == minijinja::value::ValueKind::Map {
        let pairs = || -> std::result::Result<Vec<(Value, Value)>, minijinja::Error> {
            value.try_iter()?.map(|k| Ok((k.clone(), value.get_item(&k)?))).collect()
        };
        return Ok(match method {
            "items" => {
                Value::from(pairs()?.into_iter().map(|(k, v)| Value::from(vec![k, v])).collect::<Vec<_>>())
            }
            "keys" => Value::from(pairs()?.into_iter().map(|(k, _)| k).collect::<Vec<_>>()),
            "values" => Value::from(pairs()?.into_iter().map(|(_, v)| v).collect::<Vec<_>>()),
            "get" => {
                let key = args.first().cloned().unwrap_or_default();
                let v = value.get_item(&key)?;
                if v.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    v
                }
            }
            _ => return Err(unknown()),
        });
    }
    Err(unknown())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
        pairs.iter().map(|(r, c)| ChatMessage::new(*r, *c)).collect()
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ChatTemplate>();
    }

    #[test]
    fn renders_chatml() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").unwrap();
        let m = msgs(&[("system", "Be brief."), ("user", "Hi")]);
        assert_eq!(
            t.render(&m, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.render(&m[1..], false).unwrap(), "<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn role_errors_name_the_message() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let e = t.render(&msgs(&[("user", "a"), ("tool", "b")]), true).unwrap_err();
        assert_eq!(e.http_status().as_u16(), 422);
        assert!(e.to_string().starts_with("messages[1].role: unknown role 'tool'"), "{e}");
        let e = t.render(&[], true).unwrap_err();
        assert!(e.to_string().starts_with("messages: "), "{e}");
    }

    #[test]
    fn raise_exception_is_a_422_on_messages() {
        let src = "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}ok";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(t.render(&msgs(&[("user", "x")]), true).unwrap(), "ok");
        let e = t.render(&msgs(&[("assistant", "x")]), true).unwrap_err();
        assert_eq!(e.http_status().as_u16(), 422);
        assert_eq!(e.to_string(), "messages: chat template: Conversations must start with a user message");
    }

    #[test]
    fn compile_error_is_internal() {
        let e = ChatTemplate::new("{% for %}", "", "").unwrap_err();
        assert!(matches!(e, Error::Internal(_)), "{e:?}");
    }

    #[test]
    fn hf_conventions_and_python_methods() {
        // bos_token, trim_blocks/lstrip_blocks, .strip(), .startswith(), dict .get()/.items(), tojson.
        let src = "{{ bos_token }}\n{% for m in messages %}\n  {% if m.content.startswith('  ') %}[{{ m.content.strip() }}]{% endif %}\n{% endfor %}\
                   {% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}{{ {'b': 2}.get('c', 'none') }}{{ 'x,y'.split(',') | tojson }}{{ eos_token }}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t.render(&msgs(&[("user", "  padded  "), ("user", "plain")]), false).unwrap();
        // Python Jinja2 with HF's settings renders exactly this (trim_blocks eats the newline after endif).
        assert_eq!(out, "<s>\n[padded]a=1none[\"x\", \"y\"]</s>");
        let t =
            ChatTemplate::new("{{ {'a': [1, 'é']} | tojson }}|{{ [1] | tojson(indent=2) }}", "", "").unwrap();
        assert_eq!(t.render(&msgs(&[("user", "x")]), false).unwrap(), "{\"a\": [1, \"é\"]}|[\n  1\n]");
    }

    /// A template that fails within its limits, with what the error must say.
    fn refused(src: &str, want: &str) {
        let e = ChatTemplate::new(src, "", "").expect_err(src);
        assert!(matches!(e, Error::Internal(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("chat template fails on a one-message conversation") && msg.contains(want),
            "{src}: {msg}"
        );
    }

    #[test]
    fn hostile_templates_fail_at_load_within_limits() {
        let t0 = std::time::Instant::now();
        // Infinite loop (a recursive loop over a never-ending chain), huge range, deep recursion.
        refused(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "out of fuel",
        );
        refused("{% for i in range(1000000000) %}x{% endfor %}", "range has too many elements");
        refused("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion limit exceeded");
        // Output without bound, and filters asked for huge padding or groups.
        refused(
            "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
            "the rendered prompt passes 1048612 bytes",
        );
        refused(
            "{{ 'a\nb' | indent(1000000000000) }}",
            "indent width 1000000000000 is more than the 1024 accepted",
        );
        refused("{{ 'a\nb' | indent(width=1000000000000) }}", "indent width 1000000000000");
        refused("{{ '%999999999999s' | format('x') }}", "format width");
        refused("{{ [1, 2] | slice(1000000000000) }}", "slice count 1000000000000");
        refused("{{ [1, 2] | batch(1000000000000) }}", "batch count 1000000000000");
        refused("{{ [1] | tojson(indent=1000000000) }}", "tojson indent 1000000000");
        refused("{{ ('x' * 10000000).replace('', 'yy') }}", "replace() would build more than");
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "limits took {:?}", t0.elapsed());
    }

    #[test]
    fn limits_leave_ordinary_templates_alone() {
        // Bounded filters behave as minijinja's own within their bounds.
        let src = "{{ 'a\nb' | indent(2) }}|{{ '%3s' | format('x') }}|{{ [1, 2, 3] | slice(2) | list }}|{{ [1, 2, 3] | batch(2) | list }}|{{ 'abc'.replace('b', 'B') }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&msgs(&[("user", "x")]), false).unwrap(),
            "a\n  b|  x|[[1, 2], [3]]|[[1, 2], [3]]|aBc"
        );
        // A template that rejects the probe conversation itself still loads; requests get its error.
        let t = ChatTemplate::new("{{ raise_exception('system message required') }}", "", "").unwrap();
        let e = t.render(&msgs(&[("user", "x")]), false).unwrap_err();
        assert_eq!(e.to_string(), "messages: chat template: system message required");
        // A long conversation renders well within the fuel.
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let long: Vec<ChatMessage> = (0..10_000).map(|i| ChatMessage::new("user", format!("m{i}"))).collect();
        assert!(t.render(&long, true).unwrap().ends_with("<|im_start|>assistant\n"));
    }

    #[test]
    fn an_error_whose_span_runs_backwards_is_reported_not_panicked() {
        // Fuzz finding (chat_template): minijinja's alternate (`{:#}`) rendering of this error draws
        // the source excerpt with `end_col - start_col` for a span whose columns are out of order:
        // an overflow panic with overflow checks, a `repeat` of ~2^64 bytes (capacity-overflow
        // panic) without. Errors are now shown without that excerpt.
        let src = "{% set me = namespace(sys='') %}{% for in messages | batch(2) %}{{ m | length }}\
                   {% endfor %};{ messages | slice(0) | list | length }}{{ '%5s|%-3d' | formatst }}";
        let e = ChatTemplate::new(src, "", "").unwrap_err();
        assert!(e.to_string().contains("chat template fails on a one-message conversation: "), "{e}");
    }
}
