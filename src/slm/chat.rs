//! Chat templates: the Jinja2 template a GGUF file carries in `tokenizer.chat_template`, rendered with
//! minijinja the way Hugging Face `apply_chat_template` renders it (`trim_blocks`, `lstrip_blocks`,
//! `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`). A few Python
//! string/dict methods that HF templates call (`.strip()`, `.startswith()`, `.items()`, ...) and the
//! `tojson` filter are provided here, so no extra dependency is needed for common templates.

use crate::{Error, Result};
use minijinja::value::Kwargs;
use minijinja::{Environment, ErrorKind, State, Value};

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
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.set_unknown_method_callback(python_methods);
        env.add_template_owned(NAME, template.to_string())
            .map_err(|e| Error::Internal(format!("chat template does not compile: {e:#}")))?;
        Ok(ChatTemplate { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string() })
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
        let template = self.env.get_template(NAME).expect("the template was added in new(); this is a bug");
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| {
                let msg = match (e.kind(), e.detail()) {
                    (ErrorKind::InvalidOperation, Some(detail)) => detail.to_string(),
                    _ => format!("{e:#}"),
                };
                Error::invalid("messages", format!("chat template: {msg}"))
            })
    }
}

/// `raise_exception(msg)`: how HF templates reject a conversation.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
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
                let new = arg_str(args, 1, method)?.unwrap_or("");
                Value::from(s.replace(chars.unwrap_or(""), new))
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
}
