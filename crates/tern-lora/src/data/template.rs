//! Chat templates: where they come from (built-in ChatML, a template string,
//! a `.jinja` file, a `tokenizer_config.json`), rendering them the way
//! Hugging Face's `apply_chat_template` does, and the character spans of
//! assistant turns computed while rendering.
//!
//! Rendering follows transformers' Jinja environment: `trim_blocks` and
//! `lstrip_blocks` on, loop controls (`break` / `continue`) enabled, a
//! `raise_exception(message)` function, a `tojson` filter that writes JSON
//! as Python's `json.dumps` does (no HTML escaping), and the Python string
//! methods templates call (`.strip()`, `.startswith()`, ...). The context
//! has `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and,
//! when the record has them, `tools`. `strftime_now` is deliberately not
//! provided: templates then fall back to their fixed date, so the same data
//! renders to the same tokens on every day.

use std::ops::Range;
use std::path::{Path, PathBuf};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{Map, Value as Json};

use super::error::DataError;

/// The built-in ChatML template: `<|im_start|>{role}\n{content}<|im_end|>\n`
/// per message, and `<|im_start|>assistant\n` as the generation prompt.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' }}{{ message['content'] or '' }}{{ '<|im_end|>\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Name of the template inside the Jinja environment (appears in errors as
/// `(in chat_template:LINE)`).
const TEMPLATE_NAME: &str = "chat_template";

/// A chat template and the special-token strings it was published with.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    /// Where it came from, for messages: a path, `built-in ChatML` or
    /// `inline template`.
    origin: String,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// The built-in ChatML template.
    pub fn chatml() -> Self {
        ChatTemplate {
            origin: "built-in ChatML".to_owned(),
            source: CHATML_TEMPLATE.to_owned(),
            bos_token: None,
            eos_token: None,
        }
    }

    /// A template given as Jinja source.
    pub fn from_source(origin: impl Into<String>, source: impl Into<String>) -> Self {
        ChatTemplate {
            origin: origin.into(),
            source: source.into(),
            bos_token: None,
            eos_token: None,
        }
    }

    /// Resolve a `--chat-template` value: a path to a `tokenizer_config.json`
    /// (its `chat_template`, `bos_token` and `eos_token` are used), a path to
    /// any other file (read as Jinja source, e.g. `chat_template.jinja`), or
    /// else the Jinja source itself, which must then contain `{{` or `{%`.
    pub fn from_spec(spec: &str) -> Result<Self, DataError> {
        let path = Path::new(spec);
        if path.is_file() {
            let is_json = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json"));
            return if is_json {
                Self::from_tokenizer_config(path)
            } else {
                let source = std::fs::read_to_string(path).map_err(|source| DataError::Io {
                    file: path.to_path_buf(),
                    source,
                })?;
                Ok(Self::from_source(path.display().to_string(), source))
            };
        }
        if spec.contains("{{") || spec.contains("{%") {
            return Ok(Self::from_source("inline template", spec));
        }
        Err(DataError::Template {
            template: spec.to_owned(),
            message: "is neither an existing file (tokenizer_config.json or a .jinja file) \
                      nor Jinja source (no '{{' or '{%')"
                .to_owned(),
        })
    }

    /// The `chat_template` of a Hugging Face `tokenizer_config.json`, with its
    /// `bos_token` / `eos_token` (strings or `{"content": ...}` objects). A
    /// list of named templates uses the one named `default`.
    pub fn from_tokenizer_config(path: &Path) -> Result<Self, DataError> {
        let origin = path.display().to_string();
        let err = |message: String| DataError::Template {
            template: origin.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        let cfg: Json =
            serde_json::from_str(&text).map_err(|e| err(format!("malformed JSON: {e}")))?;
        let source = match cfg.get("chat_template") {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(list)) => {
                let named = |n: &Json| -> Option<(String, String)> {
                    Some((
                        n.get("name")?.as_str()?.to_owned(),
                        n.get("template")?.as_str()?.to_owned(),
                    ))
                };
                let all: Vec<(String, String)> = list.iter().filter_map(named).collect();
                match all.iter().find(|(n, _)| n == "default") {
                    Some((_, t)) => t.clone(),
                    None => {
                        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
                        return Err(err(format!(
                            "`chat_template` is a list without a template named 'default' \
                             (names: {})",
                            names.join(", ")
                        )));
                    }
                }
            }
            Some(_) => return Err(err("`chat_template` is neither a string nor a list".into())),
            None => return Err(err("has no `chat_template`".into())),
        };
        let token = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                Json::String(s) => Some(s.clone()),
                Json::Object(o) => o.get("content")?.as_str().map(str::to_owned),
                _ => None,
            }
        };
        Ok(ChatTemplate {
            origin,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            source,
        })
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `bos_token` from the tokenizer config, when the template came from one.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// `eos_token` from the tokenizer config, when the template came from one.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }
}

/// The chat template a model folder publishes: `chat_template.jinja` when
/// present (newer transformers save it there), else `tokenizer_config.json`
/// when it has a `chat_template`. Pass the result as
/// [`DataOptions::chat_template`](super::DataOptions::chat_template).
pub fn discover_chat_template(model_dir: &Path) -> Option<PathBuf> {
    let jinja = model_dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Some(jinja);
    }
    let cfg = model_dir.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&cfg).ok()?;
    let json: Json = serde_json::from_str(&text).ok()?;
    json.get("chat_template").is_some().then_some(cfg)
}

/// A compiled template ready to render conversations.
pub(crate) struct Renderer {
    env: Environment<'static>,
    origin: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl Renderer {
    /// Compile `tpl`; `bos` / `eos` are the tokenizer's token strings, used
    /// when the template's config did not name its own.
    pub(crate) fn new(
        tpl: &ChatTemplate,
        bos: Option<String>,
        eos: Option<String>,
    ) -> Result<Self, DataError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| DataError::Template {
                template: tpl.origin.clone(),
                message: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, tpl.source.clone())
            .map_err(|e| DataError::Template {
                template: tpl.origin.clone(),
                message: error_chain(&e),
            })?;
        Ok(Renderer {
            env,
            origin: tpl.origin.clone(),
            bos_token: tpl.bos_token.clone().or(bos),
            eos_token: tpl.eos_token.clone().or(eos),
        })
    }

    /// Where the template came from.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// Render `messages` (and `tools`).
    pub(crate) fn render(
        &self,
        messages: &[Json],
        tools: Option<&Json>,
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let mut ctx = Map::new();
        ctx.insert("messages".into(), Json::Array(messages.to_vec()));
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(add_generation_prompt),
        );
        if let Some(b) = &self.bos_token {
            ctx.insert("bos_token".into(), Json::String(b.clone()));
        }
        if let Some(e) = &self.eos_token {
            ctx.insert("eos_token".into(), Json::String(e.clone()));
        }
        if let Some(t) = tools {
            ctx.insert("tools".into(), t.clone());
        }
        let tpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| error_chain(&e))?;
        tpl.render(Value::from(minijinja::value::Serde(Json::Object(ctx))))
            .map_err(|e| error_chain(&e))
    }

    /// Render the whole conversation and, with `spans`, the byte ranges of
    /// the assistant turns in the rendered text.
    ///
    /// The spans come from rendering prefixes of the conversation, not from
    /// searching the text: for assistant message `i`,
    /// - `full_i = render(messages[..=i])` must be a prefix of the whole
    ///   rendering (otherwise the template is not prefix-stable and spans
    ///   cannot be derived: an error);
    /// - the span starts where `full_i` departs from
    ///   `render(messages[..i], add_generation_prompt = true)`, i.e. after
    ///   the header the model is prompted with at inference;
    /// - it ends at the end of `full_i`, less trailing whitespace: the
    ///   content and the end-of-turn marker (`<|im_end|>`, `<|eot_id|>`) are
    ///   what the model must generate, the separator after them is not.
    pub(crate) fn render_with_spans(
        &self,
        messages: &[Json],
        tools: Option<&Json>,
        spans: bool,
    ) -> Result<(String, Vec<Range<usize>>), String> {
        let full = self.render(messages, tools, false)?;
        if !spans {
            return Ok((full, Vec::new()));
        }
        let mut out = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.get("role").and_then(Json::as_str) != Some("assistant") {
                continue;
            }
            let upto = if i + 1 == messages.len() {
                full.clone()
            } else {
                self.render(&messages[..=i], tools, false)?
            };
            if !full.starts_with(&upto) {
                return Err(format!(
                    "the rendering of messages[..={i}] is not a prefix of the whole \
                     conversation's, so assistant spans cannot be derived from this template \
                     (train without --assistant-loss-only, or use a prefix-stable template)"
                ));
            }
            let prompt = self.render(&messages[..i], tools, true)?;
            let start = common_prefix_len(&prompt, &upto);
            let end = start + upto[start..].trim_end().len();
            if end > start {
                out.push(start..end);
            }
        }
        Ok((full, out))
    }
}

/// Byte length of the longest common prefix of `a` and `b`, on a character
/// boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map_or_else(|| a.len().min(b.len()), |((i, _), _)| i)
}

/// A minijinja error with its causes, on one line.
fn error_chain(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// `raise_exception(message)`: what Hugging Face templates call to reject a
/// conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `value | tojson(indent=None, separators=None, ensure_ascii=False,
/// sort_keys=False)` as transformers defines it: Python's `json.dumps`.
/// Object keys always come out sorted (the values pass through serde_json).
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let _sorted_anyway: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent: Option<String> = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (None, Some(s)) => Some(s.to_owned()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair of strings",
            ))
        }
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    let mut out = String::new();
    let fmt = PyJson {
        indent: indent.as_deref(),
        item_sep: &item_sep,
        key_sep: &key_sep,
    };
    fmt.write(&json, 0, &mut out);
    if ensure_ascii == Some(true) {
        out = escape_non_ascii(&out);
    }
    Ok(Value::from(out))
}

/// Python `json.dumps` layout.
struct PyJson<'a> {
    indent: Option<&'a str>,
    item_sep: &'a str,
    key_sep: &'a str,
}

impl PyJson<'_> {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(ind) = self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn write(&self, v: &Json, level: usize, out: &mut String) {
        match v {
            Json::Array(items) if !items.is_empty() => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.write(item, level + 1, out);
                }
                self.newline(level, out);
                out.push(']');
            }
            Json::Object(map) if !map.is_empty() => {
                out.push('{');
                for (i, (k, item)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item_sep);
                    }
                    self.newline(level + 1, out);
                    out.push_str(&Json::String(k.clone()).to_string());
                    out.push_str(self.key_sep);
                    self.write(item, level + 1, out);
                }
                self.newline(level, out);
                out.push('}');
            }
            // Scalars and empty containers: serde_json's compact form matches
            // Python's (`[]`, `{}`, `"a\nb"`, `1.5`, `true`, `null`).
            other => out.push_str(&other.to_string()),
        }
    }
}

/// `\uXXXX` escapes (UTF-16, with surrogate pairs) for every non-ASCII
/// character; in JSON text they can only occur inside strings.
fn escape_non_ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, ctx: Json) -> String {
        let r = Renderer::new(&ChatTemplate::from_source("t", src), None, None).unwrap();
        let msgs = ctx["messages"].as_array().cloned().unwrap_or_default();
        r.render(&msgs, ctx.get("tools"), false).unwrap()
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let ctx = json!({"messages": [{"role": "user", "content": "<a> & é", "n": [1, 2]}]});
        assert_eq!(
            render("{{ messages[0] | tojson }}", ctx.clone()),
            r#"{"content": "<a> & é", "n": [1, 2], "role": "user"}"#
        );
        assert_eq!(
            render("{{ messages[0].n | tojson(indent=2) }}", ctx.clone()),
            "[\n  1,\n  2\n]"
        );
        assert_eq!(
            render("{{ messages[0].content | tojson(ensure_ascii=true) }}", ctx),
            r#""<a> & \u00e9""#
        );
    }

    #[test]
    fn python_string_methods_and_trim_blocks() {
        let ctx = json!({"messages": [{"role": "user", "content": "  hi  "}]});
        let src = "{% for m in messages %}\n[{{ m.content.strip() }}]\n{% endfor %}\n";
        assert_eq!(render(src, ctx), "[hi]\n");
    }

    #[test]
    fn raise_exception_fails_the_render() {
        let r = Renderer::new(
            &ChatTemplate::from_source("t", "{{ raise_exception('no tools here') }}"),
            None,
            None,
        )
        .unwrap();
        let e = r.render(&[], None, false).unwrap_err();
        assert!(e.contains("no tools here"), "{e}");
    }

    #[test]
    fn common_prefix_respects_char_boundaries() {
        assert_eq!(common_prefix_len("abc", "abd"), 2);
        assert_eq!(common_prefix_len("a\u{e9}", "a\u{e8}"), 1);
        assert_eq!(common_prefix_len("ab", "abc"), 2);
    }
}
