//! Rhai bindings and the script runner. The bindings only adapt types and options to the
//! library; no logic lives here.
//!
//! Sandbox: an operation limit, call and expression depth limits, a memory ceiling (checked
//! between operations, and before the builtins that allocate in proportion to an argument, see
//! [`limits`]), no `eval`, no module imports; files
//! only through [`crate::lab::Workspace`]: reads under the data, runs and output dirs, the cotlab
//! home and `--allow-read` dirs; writes into the output dir and under checked names in the runs
//! dir (see `lab::sandbox`).

mod data;
pub mod docs;
mod experiment;
mod expr;
mod frame;
mod limits;
pub mod params;
mod teacher;
mod train;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Map, Position, Scope, AST};

use crate::data::DataDir;
use crate::error::{Error, Result};
use crate::lab::Workspace;
use crate::results::OutputDir;

/// What a script can see of its environment.
#[derive(Clone)]
pub struct Context {
    pub data_dir: DataDir,
    pub out: Option<Arc<OutputDir>>,
    /// Rhai operations before the script is stopped ("Too many operations").
    pub max_operations: u64,
    /// Where training runs live (`runs/<name>`): outside the output dir, so they survive for resume.
    pub runs_dir: PathBuf,
    /// More dirs the script may read (`cotlab run --allow-read DIR`).
    pub allow_read: Vec<PathBuf>,
    /// Heap bytes the process may hold before the script is stopped between two operations
    /// (`cotlab run --max-memory`); only where the binary counts its heap (`crate::memory`).
    pub max_memory: Option<u64>,
    /// Failures the script carried on past (failed sweep points), shared by every workspace made
    /// from this context: `cotlab run` exits non-zero when there are any.
    pub failures: Arc<crate::lab::Failures>,
    /// How `sweep()` calls run their points (all, one by index, none) and the sweeps called so
    /// far (`cotlab run --point/--collect`, `cotlab sweep`).
    pub sweeps: Arc<crate::experiment::Sweeps>,
    /// The values `param(name, ...)` returns: each declared parameter's `--set` value, else its
    /// default (see [`params`]); empty outside a [`Runner`].
    pub params: Map,
}

/// Default operation limit: generous for real analysis loops, finite so `loop {}` ends.
pub const MAX_OPERATIONS: u64 = 2_000_000_000;

impl Context {
    pub fn new(data_dir: DataDir, out: Option<Arc<OutputDir>>) -> Context {
        Context {
            data_dir,
            out,
            max_operations: MAX_OPERATIONS,
            runs_dir: PathBuf::from("runs"),
            allow_read: Vec::new(),
            max_memory: crate::memory::default_ceiling(),
            failures: Arc::default(),
            sweeps: Arc::default(),
            params: Map::new(),
        }
    }

    /// The sandboxed workspace every binding goes through.
    pub fn workspace(&self) -> Workspace {
        let mut ws = Workspace::sandboxed(self.data_dir.clone(), self.runs_dir.clone(), self.out.clone(), &self.allow_read);
        ws.failures = self.failures.clone();
        ws
    }
}

/// Build an engine with every cotlab function registered.
pub fn engine(ctx: Context) -> Engine {
    let mut engine = Engine::new();
    engine.set_max_operations(ctx.max_operations);
    engine.set_max_call_levels(64);
    engine.set_max_expr_depths(128, 64);
    // No string/array/map size limits: with any of them set, Rhai re-measures a whole array (and
    // everything nested in it) after every push, which made a push loop quadratic. The
    // memory ceiling below bounds all three at the cost of one atomic load per operation.
    engine.set_max_modules(0);
    if let Some(ceiling) = ctx.max_memory {
        engine.on_progress(move |_| {
            let used = crate::memory::in_use()? as u64;
            (used > ceiling).then(|| {
                Dynamic::from(format!(
                    "memory ceiling reached: the process holds {} of heap, the limit is {} (80% of this machine's RAM unless set; raise it with --max-memory GIB, 0 = none)",
                    crate::memory::gib(used),
                    crate::memory::gib(ceiling)
                ))
            })
        });
    }
    engine.disable_symbol("eval");
    engine.on_print(|s| println!("{s}"));
    engine.on_debug(|s, src, pos| eprintln!("[debug {}:{}] {s}", src.unwrap_or("script"), pos));
    register_types(&mut engine);
    for b in SECTIONS {
        (b.register)(&mut engine, &ctx);
    }
    engine
}

/// The script-visible names of cotlab's types (`type_of`, errors, signatures), registered before
/// any function so every signature names them.
pub(crate) fn register_types(engine: &mut Engine) {
    engine.register_type_with_name::<crate::data::Dataset>("Dataset");
    engine.register_type_with_name::<crate::data::Corpus>("Corpus");
    engine.register_type_with_name::<crate::results::Frame>("DataFrame");
    engine.register_type_with_name::<frame::ExprW>("Expr");
    engine.register_type_with_name::<frame::GroupBy>("GroupBy");
    engine.register_type_with_name::<crate::results::Chart>("Chart");
    engine.register_type_with_name::<train::StudentH>("Student");
    engine.register_type_with_name::<teacher::TeacherH>("Teacher");
    engine.register_type_with_name::<teacher::AskH>("TeacherRun");
}

/// A binding module: what it registers, and its section of the API reference ([`docs`]).
pub(crate) struct Binding {
    pub title: &'static str,
    pub intro: &'static str,
    pub register: fn(&mut Engine, &Context),
}

/// Every binding module, in registration order; each is a section of the API reference.
pub(crate) const SECTIONS: &[Binding] = &[
    Binding { title: "Script parameters", intro: params::INTRO, register: params::register },
    Binding { title: "Data, CoT structure, answers, contamination and scoring", intro: data::INTRO, register: data::register },
    Binding { title: "DataFrames (polars), expressions and charts (plotly)", intro: frame::INTRO, register: frame::register },
    Binding { title: "Students, training, generation and evaluation", intro: train::INTRO, register: train::register },
    Binding { title: "Teachers", intro: teacher::INTRO, register: teacher::register },
    Binding { title: "Sweeps, results and corpora as values", intro: experiment::INTRO, register: experiment::register },
    Binding { title: "Builtins that check the memory ceiling", intro: limits::INTRO, register: |e, ctx| limits::register(e, ctx.max_memory) },
];

/// Turn a library error into a Rhai runtime error (Rhai adds the script position).
pub(crate) fn rt(e: Error) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(e.to_string().into(), Position::NONE))
}

pub(crate) type RhaiResult<T> = std::result::Result<T, Box<EvalAltResult>>;

/// Deserialize an options map into a typed, `deny_unknown_fields` struct. Goes through JSON so
/// that `epochs: 3` fills a float field as well as `epochs: 3.0` does.
pub(crate) fn options<T: serde::de::DeserializeOwned>(m: Map) -> RhaiResult<T> {
    let v = serde_json::to_value(Dynamic::from_map(m)).map_err(|e| rt(Error::usage(format!("options: {e}"))))?;
    serde_json::from_value(v).map_err(|e| rt(Error::usage(format!("options: {e}"))))
}

/// Parse a `--set key=value` value: in double quotes, the text inside (`--set 'id="007"'` is the
/// string "007"); else integer, float, bool, else the text as given.
pub fn parse_param(v: &str) -> Dynamic {
    if let Some(text) = v.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Dynamic::from(text.to_string())
    } else if let Ok(i) = v.parse::<i64>() {
        Dynamic::from_int(i)
    } else if let Ok(f) = v.parse::<f64>() {
        Dynamic::from_float(f)
    } else if v == "true" || v == "false" {
        Dynamic::from_bool(v == "true")
    } else {
        Dynamic::from(v.to_string())
    }
}

/// Format a Rhai error as `file:line:col: reason`, the way compilers do, so editors can jump there.
pub fn format_error(file: &str, err: &EvalAltResult) -> String {
    // The innermost error carries the real reason and position; wrappers add the call chain.
    let mut inner = err;
    let mut chain = Vec::new();
    while let EvalAltResult::ErrorInFunctionCall(name, _, e, pos) = inner {
        chain.push(format!("in call to '{name}' at {file}:{}:{}", pos.line().unwrap_or(0), pos.position().unwrap_or(0)));
        inner = e;
    }
    let pos = inner.position();
    let mut reason = match inner {
        // A stop requested by `on_progress` (the memory ceiling) carries its own message.
        EvalAltResult::ErrorTerminated(token, _) if token.is_string() => token.clone().into_string().unwrap_or_default(),
        _ => inner.to_string(),
    };
    // Rhai appends " (line L, position C)"; we put the position in front instead.
    if let Some(i) = reason.rfind(" (line ") {
        reason.truncate(i);
    }
    let mut msg = match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}: {reason}"),
        (Some(l), None) => format!("{file}:{l}: {reason}"),
        _ => format!("{file}: {reason}"),
    };
    for c in chain {
        msg.push_str(&format!("\n  {c}"));
    }
    msg
}

/// Whether `msg` is a type error that mentions `v`: Rhai's by its type ("Function not found: f
/// (ImmutableString, i64)", "Data type incorrect"), serde's from an options map by type and value
/// ("invalid type: string \"abc\"").
fn type_error_mentions(msg: &str, v: &Dynamic) -> bool {
    // Rhai names a string argument "&str | ImmutableString | String" in "Function not found",
    // "string" elsewhere.
    let (rhai, serde): (&[&str], String) = match v.type_name() {
        "i64" => (&["i64"], format!("integer `{v}`")),
        "f64" => (&["f64"], format!("floating point `{v}`")),
        "bool" => (&["bool"], format!("boolean `{v}`")),
        "string" => (&["ImmutableString", "string"], format!("string {:?}", v.to_string())),
        _ => return false,
    };
    let rhai_type_error = ["Function not found", "Data type incorrect", "Output type incorrect"].iter().any(|m| msg.contains(m));
    let word = |w: &str| {
        msg.match_indices(w).any(|(i, _)| {
            let before = msg[..i].chars().next_back().is_none_or(|c| !c.is_alphanumeric());
            let after = msg[i + w.len()..].chars().next().is_none_or(|c| !c.is_alphanumeric());
            before && after
        })
    };
    (rhai_type_error && rhai.iter().any(|w| word(w))) || msg.contains(&format!("invalid type: {serde}"))
}

/// Append a note naming the `params` whose type a type error mentions: Rhai names only types,
/// and a value like `--set id=007` silently became an integer.
fn note_params(msg: String, params: &[(String, Dynamic)]) -> String {
    let hits: Vec<String> = params
        .iter()
        .filter(|(_, v)| type_error_mentions(&msg, v))
        .map(|(k, v)| {
            if v.is_string() {
                format!("note: `{k}` comes from --set and is the string \"{v}\" (only unquoted numbers and true/false become numbers and booleans)")
            } else {
                format!("note: `{k}` comes from --set and is the {} {v}; to pass text that looks like one, quote it: --set '{k}=\"TEXT\"'", v.type_name())
            }
        })
        .collect();
    if hits.is_empty() {
        msg
    } else {
        format!("{msg}\n{}", hits.join("\n"))
    }
}

/// Run a script file with its `--set` values. A script that declares parameters (`param(...)`,
/// see [`params`]) gets each declared value typed by its default, and an undeclared key is an
/// error before it runs; one that declares none gets every key as a variable and an entry of
/// the `params` map, typed by its look ([`parse_param`]).
pub struct Runner {
    pub ctx: Context,
    /// `--set KEY=VALUE` pairs, as given.
    pub params: Vec<(String, String)>,
}

/// A compiled script with its parameter values resolved.
struct Prepared {
    engine: Engine,
    ast: AST,
    scope: Scope<'static>,
    /// The `--set` values as the script sees them, for notes on type errors.
    set: Vec<(String, Dynamic)>,
}

impl Runner {
    pub fn new(ctx: Context) -> Runner {
        Runner { ctx, params: Vec::new() }
    }

    pub fn compile(&self, engine: &Engine, file: &Path) -> Result<AST> {
        compile(engine, &file.display().to_string(), &crate::paths::read_text(file)?)
    }

    /// Compile `src`, read its declarations, check and type the `--set` values, and build the
    /// engine and scope that give them to the script.
    fn prepare(&self, name: &str, src: &str) -> Result<Prepared> {
        let ast = compile(&parser(), name, src)?;
        let declared = params::declarations(&ast, name)?;
        let mut ctx = self.ctx.clone();
        let mut scope = Scope::new();
        let set = if declared.is_empty() {
            let set: Vec<(String, Dynamic)> = self.params.iter().map(|(k, v)| (k.clone(), parse_param(v))).collect();
            let mut map = Map::new();
            for (k, v) in &set {
                map.insert(k.as_str().into(), v.clone());
                scope.push_dynamic(k.clone(), v.clone());
            }
            scope.push_constant("params", map);
            set
        } else {
            let set = params::typed_values(name, &declared, &self.params)?;
            ctx.params = params::values(&declared, &set);
            scope.push_constant("params", ctx.params.clone());
            set
        };
        Ok(Prepared { engine: engine(ctx), ast, scope, set })
    }

    /// Evaluate source text (notebooks, tests). `name` is used in error messages.
    pub fn eval(&self, name: &str, src: &str) -> Result<Dynamic> {
        let mut p = self.prepare(name, src)?;
        let result = p.engine.eval_ast_with_scope::<Dynamic>(&mut p.scope, &p.ast);
        // The notes on --set values read only Rhai's message, not the signatures appended after them.
        result.map_err(|e| Error::Script(note_signatures(note_params(format_error(name, &e), &p.set), &e, &p.engine, &p.ast)))
    }

    pub fn run_file(&self, file: &Path) -> Result<Dynamic> {
        self.eval(&file.display().to_string(), &crate::paths::read_text(file)?)
    }
}

/// An engine that only parses: the settings that change what compiles, as [`engine`] has them.
fn parser() -> Engine {
    let mut e = Engine::new_raw();
    e.set_max_expr_depths(128, 64);
    e.set_max_modules(0);
    e.disable_symbol("eval");
    e
}

fn compile(engine: &Engine, name: &str, src: &str) -> Result<AST> {
    engine.compile(src).map_err(|e| {
        let err: EvalAltResult = e.into();
        Error::Script(format_error(name, &err))
    })
}

/// A script's declared parameters, read without running it (`cotlab run SCRIPT --help`).
pub fn declared_params(file: &Path) -> Result<Vec<params::Param>> {
    let name = file.display().to_string();
    params::declarations(&compile(&parser(), &name, &crate::paths::read_text(file)?)?, &name)
}

/// Check `--set` pairs against a script's declarations before any work: an undeclared key or a
/// value not of its default's type is an error. A script that declares none takes any key.
pub fn check_params(file: &Path, set: &[(String, String)]) -> Result<()> {
    let declared = declared_params(file)?;
    if !declared.is_empty() {
        params::typed_values(&file.display().to_string(), &declared, set)?;
    }
    Ok(())
}

/// `cotlab run SCRIPT --help`: the script's parameters, name, type, default and help.
pub fn params_help(file: &Path) -> Result<String> {
    Ok(params::help(&file.display().to_string(), &declared_params(file)?))
}

/// Append, to a "Function not found" error, the signatures that do exist under that name
/// (cotlab's, Rhai's and the script's own), so a wrong call says what would be right.
fn note_signatures(msg: String, err: &EvalAltResult, engine: &Engine, ast: &AST) -> String {
    let mut inner = err;
    while let EvalAltResult::ErrorInFunctionCall(_, _, e, _) = inner {
        inner = e;
    }
    let EvalAltResult::ErrorFunctionNotFound(sig, _) = inner else { return msg };
    let name = sig.split(" (").next().unwrap_or(sig).trim();
    let native = docs::signatures_of(engine, name);
    let documented = if native.is_empty() { String::new() } else { format!("\n(`cotlab functions {name}` documents it)") };
    let mut sigs = native;
    sigs.extend(ast.iter_functions().filter(|f| f.name == name).map(|f| format!("{}({})", f.name, f.params.join(", "))));
    if sigs.is_empty() {
        return format!("{msg}\nnote: no function is named `{name}` (`cotlab functions` lists the script API)");
    }
    format!("{msg}\nnote: `{name}` takes:\n  {}{documented}", sigs.join("\n  "))
}

/// Default output dir for a script: `out/<script stem>`.
pub fn default_out_dir(script: &Path) -> PathBuf {
    let stem = script.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "run".into());
    PathBuf::from("out").join(stem)
}
