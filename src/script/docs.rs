//! The script API documents itself: every binding is registered with its parameter names and a
//! doc comment (options and an example), Rhai keeps them as function metadata, and
//! `cotlab functions` and `docs/script-api.md` are printed from that metadata.
//!
//! Invariants: every function cotlab registers has a doc comment (tests/script_api.rs); the
//! reference lists exactly the functions [`super::engine`] registers, in the sections of
//! [`super::SECTIONS`], in a stable order; `docs/script-api.md` is [`markdown`]'s output, and a
//! test fails when it is stale.

use std::any::type_name;
use std::collections::HashSet;

use rhai::{Engine, FuncRegistration, RhaiNativeFunc, Variant};

use super::{Context, SECTIONS};
use crate::error::{Error, Result};

/// Register `f` as `name` with its parameter names (the receiver first, for methods) and its
/// documentation (markdown: a one-line summary, details, an example).
pub(crate) fn def<A: 'static, const N: usize, const X: bool, R: Variant + Clone, const F: bool, FUNC>(
    engine: &mut Engine,
    name: &str,
    params: [&str; N],
    doc: &str,
    f: FUNC,
) where
    FUNC: RhaiNativeFunc<A, N, X, R, F> + Send + Sync + 'static,
{
    register(engine, FuncRegistration::new(name), params, doc, f)
}

/// Register a property getter `obj.prop` with its documentation.
pub(crate) fn get<A: 'static, const X: bool, R: Variant + Clone, const F: bool, FUNC>(engine: &mut Engine, receiver: &str, prop: &str, doc: &str, f: FUNC)
where
    FUNC: RhaiNativeFunc<A, 1, X, R, F> + Send + Sync + 'static,
{
    register(engine, FuncRegistration::new_getter(prop), [receiver], doc, f)
}

/// Register an indexer `obj[i]` with its documentation.
pub(crate) fn index<A: 'static, const X: bool, R: Variant + Clone, const F: bool, FUNC>(engine: &mut Engine, params: [&str; 2], doc: &str, f: FUNC)
where
    FUNC: RhaiNativeFunc<A, 2, X, R, F> + Send + Sync + 'static,
{
    register(engine, FuncRegistration::new_index_getter(), params, doc, f)
}

fn register<A: 'static, const N: usize, const X: bool, R: Variant + Clone, const F: bool, FUNC>(
    engine: &mut Engine,
    reg: FuncRegistration,
    params: [&str; N],
    doc: &str,
    f: FUNC,
) where
    FUNC: RhaiNativeFunc<A, N, X, R, F> + Send + Sync + 'static,
{
    let mut info: Vec<String> = params.iter().zip(FUNC::param_names()).map(|(name, ty)| format!("{name}: {}", type_label(engine, ty))).collect();
    info.push(type_label(engine, type_name::<R>()));
    let comment = doc.trim().lines().map(|l| if l.is_empty() { "///".to_string() } else { format!("/// {l}") }).collect::<Vec<_>>().join("\n");
    reg.with_params_info(info).with_comments([comment]).register_into_engine(engine, f);
}

/// A Rust type as scripts know it: Rhai's names for its own types (as its errors spell them),
/// the registered name for cotlab's.
fn type_label(engine: &Engine, rust: &str) -> String {
    let t = rust.strip_prefix("&mut ").unwrap_or(rust);
    match t {
        "()" => String::new(),
        "i64" | "f64" | "bool" | "char" => t.to_string(),
        t if t.ends_with("::Dynamic") => "any".to_string(),
        t => engine.map_type_name(t).to_string(),
    }
}

/// One registered function, as its metadata describes it.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FnDoc {
    pub name: String,
    #[serde(default)]
    params: Vec<FnParam>,
    #[serde(default)]
    return_type: String,
    signature: String,
    #[serde(default)]
    doc_comments: Vec<String>,
    full_hash: u64,
}

#[derive(Clone, Debug, serde::Deserialize)]
struct FnParam {
    #[serde(default)]
    name: Option<String>,
}

impl FnDoc {
    /// How a script calls it: `f(a: string) -> T`, `ds.name -> string`, `ds[i: i64] -> map`.
    pub fn signature(&self) -> String {
        let ret = if self.return_type.is_empty() { String::new() } else { format!(" -> {}", self.return_type) };
        let receiver = self.params.first().and_then(|p| p.name.clone()).unwrap_or_else(|| "_".into());
        if let Some(prop) = self.name.strip_prefix("get$") {
            format!("{receiver}.{prop}{ret}")
        } else if self.name == "index$get$" {
            let inner = self.signature.split_once(", ").and_then(|(_, rest)| rest.split_once(')')).map(|(i, _)| i).unwrap_or("i");
            format!("{receiver}[{inner}]{ret}")
        } else {
            self.signature.clone()
        }
    }

    /// The name a reader looks it up by: `name` for a property too, `[]` for an indexer.
    pub fn key(&self) -> &str {
        match self.name.strip_prefix("get$") {
            Some(prop) => prop,
            None if self.name == "index$get$" => "[]",
            None => &self.name,
        }
    }

    /// The doc comment as markdown (without the `///`).
    pub fn doc(&self) -> String {
        self.doc_comments
            .iter()
            .flat_map(|c| c.lines())
            .map(|l| l.strip_prefix("/// ").or_else(|| l.strip_prefix("///")).or_else(|| l.strip_prefix("//!")).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The functions an engine has registered outside Rhai's standard library (or with it).
pub fn functions(engine: &Engine, include_standard: bool) -> Vec<FnDoc> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(default)]
        functions: Vec<FnDoc>,
    }
    let json = engine.gen_fn_metadata_to_json(include_standard).unwrap_or_default();
    let mut fs = serde_json::from_str::<Meta>(&json).map(|m| m.functions).unwrap_or_default();
    fs.sort_by_key(|f| (f.key().to_string(), f.params.len(), f.signature()));
    fs
}

/// One section of the reference: a binding module's functions.
pub struct Section {
    pub title: &'static str,
    pub intro: &'static str,
    pub functions: Vec<FnDoc>,
}

/// The engine's functions by section, each in a stable order: registered one section at a time,
/// as [`super::engine`] does, each section keeping what it added.
pub fn sections() -> Vec<Section> {
    let mut ctx = Context::new(crate::data::DataDir(std::path::PathBuf::from("datasets")), None);
    // The allocating builtins are registered only where a limit is known: always, here.
    ctx.max_memory = Some(u64::MAX);
    let mut engine = Engine::new();
    super::register_types(&mut engine);
    let mut seen: HashSet<u64> = functions(&engine, false).iter().map(|f| f.full_hash).collect();
    SECTIONS
        .iter()
        .map(|s| {
            (s.register)(&mut engine, &ctx);
            let functions: Vec<FnDoc> = functions(&engine, false).into_iter().filter(|f| seen.insert(f.full_hash)).collect();
            Section { title: s.title, intro: s.intro, functions }
        })
        .collect()
}

/// Functions grouped by [`FnDoc::key`], in order.
fn grouped(fs: &[FnDoc]) -> Vec<(&str, Vec<&FnDoc>)> {
    let mut groups: Vec<(&str, Vec<&FnDoc>)> = Vec::new();
    for f in fs {
        match groups.last_mut() {
            Some((k, g)) if *k == f.key() => g.push(f),
            _ => groups.push((f.key(), vec![f])),
        }
    }
    groups
}

/// A group's signatures in a code block, then each distinct doc once.
fn entry(out: &mut String, fs: &[&FnDoc]) {
    out.push_str("```rhai\n");
    for f in fs {
        out.push_str(&f.signature());
        out.push('\n');
    }
    out.push_str("```\n");
    let mut docs: Vec<String> = Vec::new();
    for f in fs {
        let d = f.doc();
        if !d.trim().is_empty() && !docs.contains(&d) {
            docs.push(d);
        }
    }
    for d in docs {
        out.push('\n');
        out.push_str(d.trim_end());
        out.push('\n');
    }
}

/// The whole reference as markdown: what `docs/script-api.md` holds.
pub fn markdown() -> String {
    let mut out = String::from(include_str!("api_intro.md").trim_end());
    out.push('\n');
    for s in sections() {
        out.push_str(&format!("\n## {}\n", s.title));
        if !s.intro.is_empty() {
            out.push_str(&format!("\n{}\n", s.intro.trim()));
        }
        for (key, fs) in grouped(&s.functions) {
            let heading = if fs[0].name.starts_with("get$") { format!(".{key}") } else { key.to_string() };
            out.push_str(&format!("\n### `{heading}`\n\n"));
            entry(&mut out, &fs);
        }
    }
    out
}

/// Every signature with the first line of its doc, by section.
pub fn listing() -> String {
    let mut out = String::new();
    for s in sections() {
        out.push_str(&format!("{}:\n", s.title));
        for f in &s.functions {
            let summary = f.doc().split("\n\n").next().unwrap_or_default().replace('\n', " ");
            out.push_str(&format!("  {:<58} {summary}\n", f.signature()));
        }
        out.push('\n');
    }
    out.push_str("`cotlab functions NAME` shows one function's documentation; Rhai's own functions: https://rhai.rs/book/ (or `cotlab functions NAME` for one of them)\n");
    out
}

/// The documentation of every function named `name` (a property by its name, an indexer as
/// `[]`): cotlab's, else Rhai's built-in ones.
pub fn describe(name: &str) -> Result<String> {
    let mut out = String::new();
    for s in sections() {
        let fs: Vec<&FnDoc> = s.functions.iter().filter(|f| f.key() == name).collect();
        if !fs.is_empty() {
            out.push_str(&format!("{} ({})\n\n", name, s.title));
            entry(&mut out, &fs);
        }
    }
    if out.is_empty() {
        let builtin: Vec<FnDoc> = functions(&Engine::new(), true).into_iter().filter(|f| f.key() == name).collect();
        if builtin.is_empty() {
            return Err(Error::usage(format!("no script function is named `{name}`: `cotlab functions` lists them all")));
        }
        out.push_str(&format!("{name} (Rhai built-in)\n\n"));
        entry(&mut out, &builtin.iter().collect::<Vec<_>>());
    }
    Ok(out)
}

/// `cotlab functions [NAME] [--markdown]`.
pub fn print_functions(name: Option<&str>, markdown: bool) -> Result<()> {
    let text = match name {
        _ if markdown => self::markdown(),
        Some(n) => describe(n)?,
        None => listing(),
    };
    print!("{text}");
    Ok(())
}

/// The signatures of `name` an engine knows (cotlab's and Rhai's), for a wrong call's error.
pub fn signatures_of(engine: &Engine, name: &str) -> Vec<String> {
    functions(engine, true).into_iter().filter(|f| f.name == name).map(|f| f.signature()).collect()
}
