//! A model's own chat template (`chat_template` in tokenizer_config.json, `tokenizer.chat_template`
//! in a GGUF), rendered as transformers' `apply_chat_template` renders it.
//!
//! Invariants:
//! - The environment is transformers' (`chat_template_utils._compile_jinja_template`): blocks
//!   trimmed and left-stripped, loop controls, the template's trailing newline dropped, no
//!   auto-escaping; globals `raise_exception`, `strftime_now`, `namespace`, `dict`; the `tojson`
//!   filter with Python's `json.dumps` output (`ensure_ascii=False` by default, `indent`,
//!   `separators`, `sort_keys`); Python's string and dict methods.
//! - A render gets `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and `tools` /
//!   `documents` (none), as transformers passes them.
//! - A template that raises, or calls an unknown filter or method, is one error naming where the
//!   template came from and what it said; no partial rendering is returned.

use std::path::Path;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name the template is compiled under (it shows in minijinja's line references).
const NAME: &str = "chat_template";

/// A model's Jinja chat template and the special-token texts it is rendered with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelTemplate {
    /// Where the template came from (a tokenizer_config.json or GGUF path): errors name it.
    pub source: String,
    pub jinja: String,
    pub bos: String,
    pub eos: String,
}

impl ModelTemplate {
    /// Render `messages` (a list of `{role, content, ...}` maps) now.
    pub fn render(&self, messages: &Value, add_generation_prompt: bool) -> Result<String> {
        self.render_at(messages, add_generation_prompt, chrono::Local::now().naive_local())
    }

    /// Render with `strftime_now` reading `now` (Python's `datetime.now()`: local time).
    pub fn render_at(&self, messages: &Value, add_generation_prompt: bool, now: chrono::NaiveDateTime) -> Result<String> {
        let env = environment(now).map_err(|e| self.error(&e))?;
        let template = env.template_from_named_str(NAME, &self.jinja).map_err(|e| self.error(&e))?;
        let ctx = minijinja::context! {
            messages => messages.clone(),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone(),
            eos_token => self.eos.clone(),
            tools => Value::from(()),
            documents => Value::from(()),
        };
        template.render(ctx).map_err(|e| self.error(&e))
    }

    /// Render plain `(role, content)` turns.
    pub fn render_turns(&self, turns: &[(&str, &str)], add_generation_prompt: bool) -> Result<String> {
        self.render(&turns_value(turns), add_generation_prompt)
    }

    fn error(&self, e: &minijinja::Error) -> Error {
        let what = match e.kind() {
            _ if e.detail().is_some_and(|d| d.starts_with(RAISED)) => "raised",
            ErrorKind::UnknownFilter | ErrorKind::UnknownFunction | ErrorKind::UnknownMethod | ErrorKind::UnknownTest => "uses what cotlab does not provide",
            ErrorKind::SyntaxError => "is not valid Jinja",
            _ => "failed",
        };
        let detail = e.detail().map(|d| d.trim_start_matches(RAISED).to_string()).unwrap_or_else(|| e.kind().to_string());
        let line = e.line().map(|l| format!(" (template line {l})")).unwrap_or_default();
        let hint = if what == "raised" { "" } else { "; choose a named template instead (template: chatml, llama3, gemma, alpaca)" };
        Error::data(&self.source, format!("chat template {what}: {detail}{line}{hint}"))
    }
}

/// `(role, content)` turns as the list of maps a template iterates (keys in that order).
pub fn turns_value(turns: &[(&str, &str)]) -> Value {
    Value::from(turns.iter().map(|(role, content)| Value::from_pairs([("role", Value::from(*role)), ("content", Value::from(*content))])).collect::<Vec<_>>())
}

/// Marks the errors `raise_exception` makes (the template's own message follows).
const RAISED: &str = "raise_exception: ";

fn environment(now: chrono::NaiveDateTime) -> std::result::Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.set_syntax(minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).keep_trailing_newline(false).build()?);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    // Python prints `True`, `False`, `None` where minijinja would print `true`, `false`, `none`.
    env.set_formatter(|out, state, value| match value.kind() {
        ValueKind::Bool => minijinja::escape_formatter(out, state, &Value::from(if value.is_true() { "True" } else { "False" })),
        ValueKind::None => minijinja::escape_formatter(out, state, &Value::from("None")),
        _ => minijinja::escape_formatter(out, state, value),
    });
    env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}")))
    });
    env.add_function("strftime_now", move |format: String| strftime(now, &format));
    env.add_filter("tojson", tojson);
    Ok(env)
}

/// Python's `datetime.strftime`; a format chrono cannot read is an error (chrono would panic).
fn strftime(now: chrono::NaiveDateTime, format: &str) -> std::result::Result<String, minijinja::Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item> = StrftimeItems::new(format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now: unsupported format '{format}'")));
    }
    Ok(now.format_with_items(items.into_iter()).to_string())
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<usize> = kwargs.get("indent")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([i, k]) => (i.clone(), k.clone()),
        Some(_) => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair (item, key)")),
        // Python's defaults: no trailing space after ',' when indenting.
        None => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
    };
    let style = Json { ensure_ascii: ensure_ascii.unwrap_or(false), indent, item, key, sort_keys: sort_keys.unwrap_or(false) };
    let mut out = String::new();
    style.dump(&value, 0, &mut out)?;
    Ok(Value::from(out))
}

/// How `json.dumps` was asked to write.
struct Json {
    ensure_ascii: bool,
    indent: Option<usize>,
    item: String,
    key: String,
    sort_keys: bool,
}

impl Json {
    fn dump(&self, v: &Value, depth: usize, out: &mut String) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&python_number(v)),
            ValueKind::String => self.string(v.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(('[', ']'), items.len(), depth, out, |i, out| self.dump(&items[i], depth + 1, out))?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by_key(|k| k.to_string());
                }
                self.container(('{', '}'), keys.len(), depth, out, |i, out| {
                    self.string(&keys[i].to_string(), out);
                    out.push_str(&self.key);
                    self.dump(&v.get_item(&keys[i])?, depth + 1, out)
                })?;
            }
            _ => return Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: a {} value is not JSON serializable", v.kind()))),
        }
        Ok(())
    }

    fn container(
        &self,
        (open, close): (char, char),
        n: usize,
        depth: usize,
        out: &mut String,
        mut each: impl FnMut(usize, &mut String) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if n == 0 {
            out.push(close);
            return Ok(());
        }
        let newline = |d: usize, out: &mut String| {
            if let Some(w) = self.indent {
                out.push('\n');
                out.push_str(&" ".repeat(w * d));
            }
        };
        for i in 0..n {
            if i > 0 {
                out.push_str(&self.item);
            }
            newline(depth + 1, out);
            each(i, out)?;
        }
        newline(depth, out);
        out.push(close);
        Ok(())
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A number as Python's `repr` writes it (`1.0`, not `1`, for a float).
fn python_number(v: &Value) -> String {
    if let Ok(i) = i64::try_from(v.clone()) {
        if v.is_integer() {
            return i.to_string();
        }
    }
    match f64::try_from(v.clone()) {
        Ok(f) if f.is_nan() => "NaN".into(),
        Ok(f) if f.is_infinite() => if f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        Ok(f) if f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.1}"),
        Ok(f) => format!("{f}"),
        Err(_) => v.to_string(),
    }
}

/// Messages from a JSON file: a list of `{role, content, ...}` objects, key order kept.
pub fn read_messages(path: &Path) -> Result<Value> {
    let text = crate::paths::read_text(path)?;
    let messages: Value = serde_json::from_str(&text).map_err(|e| Error::data(path, format!("line {}: not JSON: {e}", e.line())))?;
    if messages.kind() != ValueKind::Seq {
        return Err(Error::data(path, "expected a JSON list of messages, e.g. [{\"role\": \"user\", \"content\": \"What is 2+3?\"}]"));
    }
    for (i, m) in messages.try_iter().map_err(|e| Error::data(path, e.to_string()))?.enumerate() {
        let role = m.get_attr("role").ok().filter(|r| r.kind() == ValueKind::String);
        if m.kind() != ValueKind::Map || role.is_none() {
            return Err(Error::data(path, format!("message {i}: expected an object with a string \"role\" (and \"content\")")));
        }
    }
    Ok(messages)
}

impl ModelTemplate {
    /// The chat template a model declares: tokenizer_config.json's `chat_template` in an HF dir
    /// (the `default` one of a named list), `tokenizer.chat_template` in a GGUF (a run's student
    /// asks its base model: [`super::super::Student::declared_by`]); `None` when it declares none (or is no file: a random student). BOS/EOS texts are the
    /// tokenizer_config's `bos_token`/`eos_token`, else the tokenizer's texts for the config's ids.
    pub fn of_model(path: &Path, tok: &tokenizers::Tokenizer, bos_id: Option<u32>, eos_id: Option<u32>) -> Result<Option<ModelTemplate>> {
        let text_of = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
        if path.is_dir() {
            let cfg_path = path.join("tokenizer_config.json");
            if !cfg_path.is_file() {
                return Ok(None);
            }
            let cfg: serde_json::Value =
                serde_json::from_str(&crate::paths::read_text(&cfg_path)?).map_err(|e| Error::data(&cfg_path, format!("line {}: {e}", e.line())))?;
            let jinja = match &cfg["chat_template"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(named) => {
                    let default = named.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str());
                    default.ok_or_else(|| Error::data(&cfg_path, "chat_template is a list without a \"default\" template"))?.to_string()
                }
                _ => return Ok(None),
            };
            // A token is a string or an AddedToken object (`{"content": ...}`); `null` is no token
            // (transformers then passes none, which prints as nothing).
            let token = |k: &str, id: Option<u32>| match &cfg[k] {
                serde_json::Value::Null if cfg.get(k).is_some() => String::new(),
                v => v.as_str().or(v["content"].as_str()).map(str::to_string).unwrap_or_else(|| text_of(id)),
            };
            let (bos, eos) = (token("bos_token", bos_id), token("eos_token", eos_id));
            return Ok((!jinja.is_empty()).then(|| ModelTemplate { source: cfg_path.display().to_string(), jinja, bos, eos }));
        }
        if !path.exists() {
            return Ok(None);
        }
        let (mut f, _) = crate::paths::open_regular(path)?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut f)
            .map_err(|e| Error::data(path, format!("not a readable GGUF file ({})", crate::error::candle_message(&e))))?;
        let jinja = content.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        let source = format!("{} (tokenizer.chat_template)", path.display());
        Ok((!jinja.is_empty()).then(|| ModelTemplate { source, jinja, bos: text_of(bos_id), eos: text_of(eos_id) }))
    }
}

impl ModelTemplate {
    /// The end-of-turn marker the template writes after an assistant turn's text, up to and
    /// including the first line break (Phi-3.5: `<|end|>\n`, not the `</s>` after it), found by
    /// rendering a probe answer; `None` when the probe does not render or is not found.
    pub fn answer_end(&self) -> Option<String> {
        const PROBE: &str = "cotlab probe answer";
        let full = self.render_turns(&[("user", "Q"), ("assistant", PROBE)], false).ok()?;
        let after = &full[full.rfind(PROBE)? + PROBE.len()..];
        Some(after.find('\n').map_or(after, |i| &after[..=i]).to_string())
    }
}
