//! Reading data files into records: plain text, or JSON Lines whose records
//! carry either a `text` field or a `messages` conversation.

use std::path::Path;

use serde_json::{Map, Value as Json};

use super::error::DataError;

/// Roles a chat message may have. Whether the template accepts `tool` is
/// the template's business: it renders it or raises.
pub const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// One text document and the line it starts on.
#[derive(Debug)]
pub(crate) struct TextRecord {
    pub line: usize,
    pub text: String,
}

/// One conversation: its messages (the JSON objects as written, so extra
/// fields such as `tool_calls` reach the template), the record's `tools`
/// when present, and its line.
#[derive(Debug)]
pub(crate) struct ChatRecord {
    pub line: usize,
    pub messages: Vec<Json>,
    pub tools: Option<Json>,
}

/// What a file holds: all text, or all chat.
#[derive(Debug)]
pub(crate) enum Records {
    Text(Vec<TextRecord>),
    Chat(Vec<ChatRecord>),
}

/// How a file is read, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    Plain,
    JsonLines,
}

fn file_kind(path: &Path) -> Result<FileKind, DataError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("txt" | "text" | "md") => Ok(FileKind::Plain),
        Some("jsonl" | "json" | "ndjson") => Ok(FileKind::JsonLines),
        other => Err(DataError::file_msg(
            path,
            format!(
                "unknown data format (extension {}); use .txt for plain text or \
                 .jsonl / .json for JSON Lines with a `text` or `messages` field",
                other.map_or_else(|| "none".to_owned(), |e| format!("'.{e}'"))
            ),
        )),
    }
}

/// Read and classify every record of `path`.
pub(crate) fn read(path: &Path) -> Result<Records, DataError> {
    let kind = file_kind(path)?;
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..good].iter().filter(|&&b| b == b'\n').count();
            return Err(DataError::record(
                path,
                line,
                format!("invalid UTF-8 (byte offset {good})"),
            ));
        }
    };
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
    if text.trim().is_empty() {
        return Err(DataError::file_msg(
            path,
            "empty file: no text or records to train on",
        ));
    }
    match kind {
        FileKind::Plain => Ok(Records::Text(vec![TextRecord {
            line: 1,
            text: text.to_owned(),
        }])),
        FileKind::JsonLines => read_json_lines(path, text),
    }
}

fn read_json_lines(path: &Path, text: &str) -> Result<Records, DataError> {
    if text.trim_start().starts_with('[') {
        let lead = text.len() - text.trim_start().len();
        let line = 1 + text[..lead].matches('\n').count();
        return Err(DataError::record(
            path,
            line,
            "the file is one JSON array; write JSON Lines instead (one object per line)",
        ));
    }
    let mut texts = Vec::new();
    let mut chats = Vec::new();
    // Line of the first record and whether it was chat.
    let mut first: Option<(usize, bool)> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        let value: Json = serde_json::from_str(raw).map_err(|e| DataError::Json {
            file: path.to_path_buf(),
            line,
            message: e.to_string(),
        })?;
        let Json::Object(obj) = value else {
            return Err(DataError::record(
                path,
                line,
                format!("expected a JSON object, found {}", json_kind(&value)),
            ));
        };
        let is_chat = match (obj.get("text"), obj.get("messages")) {
            (Some(_), Some(_)) => {
                return Err(DataError::record(
                    path,
                    line,
                    "the record has both `text` and `messages`; keep one",
                ))
            }
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (None, None) => {
                let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
                return Err(DataError::record(
                    path,
                    line,
                    format!(
                        "missing `messages` (chat) or `text` (plain text); the record has \
                         {}",
                        if keys.is_empty() {
                            "no fields".to_owned()
                        } else {
                            format!("fields {}", keys.join(", "))
                        }
                    ),
                ));
            }
        };
        match first {
            None => first = Some((line, is_chat)),
            Some((first_line, first_chat)) if first_chat != is_chat => {
                let name = |chat: bool| if chat { "`messages`" } else { "`text`" };
                return Err(DataError::record(
                    path,
                    line,
                    format!(
                        "the record has {} but the first record (line {first_line}) has {}; \
                         a file holds either text or chat records",
                        name(is_chat),
                        name(first_chat)
                    ),
                ));
            }
            Some(_) => {}
        }
        if is_chat {
            chats.push(chat_record(path, line, obj)?);
        } else {
            texts.push(text_record(path, line, &obj["text"])?);
        }
    }
    match first {
        Some((_, true)) => Ok(Records::Chat(chats)),
        Some((_, false)) => Ok(Records::Text(texts)),
        None => Err(DataError::file_msg(path, "empty file: no records")),
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn text_record(path: &Path, line: usize, text: &Json) -> Result<TextRecord, DataError> {
    match text {
        Json::String(s) => Ok(TextRecord {
            line,
            text: s.clone(),
        }),
        other => Err(DataError::record(
            path,
            line,
            format!("`text` must be a string, found {}", json_kind(other)),
        )),
    }
}

fn chat_record(
    path: &Path,
    line: usize,
    mut obj: Map<String, Json>,
) -> Result<ChatRecord, DataError> {
    let messages = match obj.remove("messages") {
        Some(Json::Array(m)) => m,
        Some(other) => {
            return Err(DataError::record(
                path,
                line,
                format!("`messages` must be an array, found {}", json_kind(&other)),
            ))
        }
        None => return Err(DataError::record(path, line, "missing `messages`")),
    };
    if messages.is_empty() {
        return Err(DataError::record(path, line, "`messages` is empty"));
    }
    for (i, m) in messages.iter().enumerate() {
        let Json::Object(msg) = m else {
            return Err(DataError::record(
                path,
                line,
                format!("messages[{i}] must be an object, found {}", json_kind(m)),
            ));
        };
        let role = match msg.get("role") {
            Some(Json::String(r)) => r.as_str(),
            Some(other) => {
                return Err(DataError::record(
                    path,
                    line,
                    format!(
                        "messages[{i}].role must be a string, found {}",
                        json_kind(other)
                    ),
                ))
            }
            None => {
                return Err(DataError::record(
                    path,
                    line,
                    format!("messages[{i}] has no `role`"),
                ))
            }
        };
        if !ROLES.contains(&role) {
            return Err(DataError::record(
                path,
                line,
                format!(
                    "messages[{i}] has unknown role '{role}' (expected one of: {})",
                    ROLES.join(", ")
                ),
            ));
        }
        // An assistant turn that only calls tools may have no content.
        let tool_call_only = role == "assistant" && msg.contains_key("tool_calls");
        match msg.get("content") {
            Some(Json::String(_)) => {}
            None | Some(Json::Null) if tool_call_only => {}
            Some(other) => {
                return Err(DataError::record(
                    path,
                    line,
                    format!(
                        "messages[{i}].content must be a string, found {}",
                        json_kind(other)
                    ),
                ))
            }
            None => {
                return Err(DataError::record(
                    path,
                    line,
                    format!("messages[{i}] ({role}) has no `content`"),
                ))
            }
        }
    }
    Ok(ChatRecord {
        line,
        messages,
        tools: obj.remove("tools"),
    })
}
