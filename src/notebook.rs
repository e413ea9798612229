//! Jupyter support through the evcxr kernel: rich display of frames and charts, and Rhai cells.
//!
//! evcxr shows a cell's last expression by calling its `evcxr_display()` method if it has one;
//! the method prints `EVCXR_BEGIN_CONTENT <mime>` … `EVCXR_END_CONTENT` blocks on stdout, and all
//! blocks printed by one cell become that cell's single rich output (a later block of the same MIME
//! type replaces an earlier one, so each cell shows one rich value).
//!
//! ```text
//! :dep cotlab = { path = ".." }
//! let mut lab = cotlab::notebook::Rhai::new();
//! lab.cell(r#"rationales("svamp", #{ teacher: "gpt-4o", level: 3 }).df().head(5)"#)
//! ```
//!
//! A chart's output carries two renderings: plotly's MIME bundle ([`PLOTLY_MIME`], the figure JSON)
//! for front ends with a plotly renderer, and HTML for the rest. plotly.js (4.65 MB) is inlined into
//! the first chart HTML a kernel shows and reused by the next ones: charts then work offline and a
//! notebook carries one copy, not one per chart. Each evcxr cell is
//! its own shared object with its own copy of cotlab's statics, so "already sent" is remembered in
//! a process environment variable, which all cells share.

use std::sync::Arc;

use rhai::{Dynamic, EvalAltResult, Scope, AST};

use crate::data::DataDir;
use crate::error::{Error, Result};
use crate::results::{Chart, Frame};
use crate::script::{self, Context};

/// Rows shown in a frame's HTML table; the rest are counted below it.
pub const MAX_HTML_ROWS: usize = 50;

const PLOTLY_SENT_VAR: &str = "COTLAB_NOTEBOOK_PLOTLY_SENT";

/// plotly's own MIME type: the figure as JSON, drawn by JupyterLab's plotly renderer (and kept in
/// a saved notebook, which then renders without running the HTML output's scripts).
pub const PLOTLY_MIME: &str = "application/vnd.plotly.v1+json";

/// Print one rich output for the current cell: `(mime type, content)` pairs, e.g.
/// `[("text/html", "<b>hi</b>"), ("text/plain", "hi")]`.
pub fn emit(parts: &[(&str, &str)]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (mime, content) in parts {
        // A line equal to the end marker would end the block early.
        let content = content.replace("\nEVCXR_END_CONTENT", "\n EVCXR_END_CONTENT");
        let _ = writeln!(out, "EVCXR_BEGIN_CONTENT {mime}\n{content}\nEVCXR_END_CONTENT");
    }
    let _ = out.flush();
}

/// Raw HTML to show in a cell: `cotlab::notebook::Html("<h3>…</h3>".into())`.
pub struct Html(pub String);

impl Html {
    pub fn evcxr_display(&self) {
        emit(&[("text/html", &self.0)]);
    }
}

/// plotly.js wrapped so that it defines `window.Plotly` even where require.js is loaded
/// (classic Notebook), where it would otherwise register as an AMD module instead.
pub fn plotly_loader() -> String {
    format!(
        "<script type=\"text/javascript\">window.__cotlab_define = window.define; window.define = undefined;</script>\n{}\n\
         <script type=\"text/javascript\">window.define = window.__cotlab_define;</script>",
        Chart::plotly_js()
    )
}

/// Send plotly.js now (again). Use it after clearing the output of the cell that carried it.
pub fn load_plotly() -> Html {
    std::env::set_var(PLOTLY_SENT_VAR, "1");
    Html(plotly_loader())
}

/// A div id unique within the kernel process (statics are per cell, so use the clock too).
fn chart_div_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("cotlab-chart-{nanos:x}")
}

impl Chart {
    /// The chart's notebook HTML, with plotly.js in front when `with_plotly`.
    pub fn to_notebook_html(&self, with_plotly: bool) -> String {
        let mut html = String::new();
        if with_plotly {
            html.push_str(&plotly_loader());
            html.push('\n');
        }
        html.push_str(&self.to_inline_html(&chart_div_id()));
        html
    }

    pub fn evcxr_display(&self) {
        let first = std::env::var_os(PLOTLY_SENT_VAR).is_none();
        std::env::set_var(PLOTLY_SENT_VAR, "1");
        let plain = format!("Chart: {}", if self.title.is_empty() { "(untitled)" } else { &self.title });
        emit(&[("text/html", &self.to_notebook_html(first)), (PLOTLY_MIME, &self.figure), ("text/plain", &plain)]);
    }
}

impl Frame {
    pub fn evcxr_display(&self) {
        emit(&[("text/html", &self.to_html(MAX_HTML_ROWS)), ("text/plain", &self.to_table_string())]);
    }
}

/// What a Rhai cell returned, shown the way its type deserves: frames as tables, charts inline,
/// other values as Rhai prints them, nothing for `()`. Holds only plain data (strings, JSON) and
/// code of the session that made it, so it can be kept in a variable and used in later cells
/// (see [`Rhai`] for why that matters).
#[derive(Clone)]
pub enum Value {
    Unit,
    Table(Table),
    Chart(Chart),
    /// Numbers, strings, arrays, maps…: as JSON (for Rust cells) and as Rhai prints them.
    Data {
        json: serde_json::Value,
        text: String,
    },
    /// The cell failed: `cell 3:2:14: reason`.
    Error(String),
}

type ExportFn = Arc<dyn Fn() -> Result<Vec<u8>> + Send + Sync>;

/// A DataFrame a Rhai cell returned, rendered by the session that made it.
#[derive(Clone)]
pub struct Table {
    pub html: String,
    pub text: String,
    pub height: usize,
    pub width: usize,
    /// Writes the frame as parquet; runs the session's own copy of polars.
    export: ExportFn,
}

impl Table {
    fn new(frame: Frame) -> Table {
        let (html, text, height, width) = (frame.to_html(MAX_HTML_ROWS), frame.to_table_string(), frame.height(), frame.width());
        Table { html, text, height, width, export: Arc::new(move || frame.to_parquet_bytes()) }
    }

    /// A copy of the frame for the Rust API, made by the calling cell's copy of polars.
    pub fn frame(&self) -> Result<Frame> {
        Frame::from_parquet_bytes((self.export)()?)
    }
}

impl Value {
    fn from_dynamic(v: Dynamic) -> Value {
        if v.is_unit() {
            return Value::Unit;
        }
        let v = match v.try_cast_result::<Frame>() {
            Ok(f) => return Value::Table(Table::new(f)),
            Err(v) => v,
        };
        let v = match v.try_cast_result::<Chart>() {
            Ok(c) => return Value::Chart(c),
            Err(v) => v,
        };
        // Strings show bare, not quoted.
        let text = if v.is_string() { v.to_string() } else { format!("{v:?}") };
        let json = serde_json::to_value(&v).unwrap_or(serde_json::Value::Null);
        Value::Data { json, text }
    }

    /// The DataFrame this cell returned, as a frame of the calling cell (use it in that cell).
    pub fn frame(&self) -> Option<Frame> {
        match self {
            Value::Table(t) => Some(t.frame().unwrap_or_else(|e| panic!("{e}"))),
            _ => None,
        }
    }
    pub fn chart(&self) -> Option<Chart> {
        match self {
            Value::Chart(c) => Some(c.clone()),
            _ => None,
        }
    }
    /// The value as JSON: `lab.cell("r").json()["accuracy"]`.
    pub fn json(&self) -> serde_json::Value {
        match self {
            Value::Data { json, .. } => json.clone(),
            _ => serde_json::Value::Null,
        }
    }
    pub fn is_unit(&self) -> bool {
        matches!(self, Value::Unit)
    }
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }

    pub fn evcxr_display(&self) {
        match self {
            Value::Unit => {}
            Value::Error(msg) => {
                let esc = msg.replace('&', "&amp;").replace('<', "&lt;");
                let html = format!("<pre class=\"cotlab-error\" style=\"color:#b00020;background:#fdecea;padding:6px\">error: {esc}</pre>");
                emit(&[("text/html", &html), ("text/plain", &format!("error: {msg}"))]);
            }
            Value::Table(t) => emit(&[("text/html", &t.html), ("text/plain", &t.text)]),
            Value::Chart(c) => c.evcxr_display(),
            Value::Data { text, .. } => emit(&[("text/plain", text)]),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Unit => Ok(()),
            Value::Table(t) => f.write_str(&t.text),
            Value::Chart(c) => write!(f, "Chart({})", c.title),
            Value::Data { text, .. } => f.write_str(text),
            Value::Error(msg) => write!(f, "error: {msg}"),
        }
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

type CellFn = Box<dyn FnMut(&str) -> Result<Value> + Send>;

/// A Rhai session whose variables and functions live from one cell to the next. Scripts see the
/// same API as `cotlab run`; `print` output appears in the cell. Errors name the cell:
/// `cell 3:2:14: …`.
///
/// evcxr links a separate copy of cotlab, rhai and polars into every cell, each with its own
/// statics, and their data must only be touched by the copy that built it. Measured here: a
/// session built in one cell and driven by another cell's copy crashed the kernel
/// (`mremap_chunk(): invalid pointer`: thin-vec, which rhai uses, knows its empty vectors by the
/// address of a static), and a polars frame made in one cell could not find its own columns from
/// the next (hashes are seeded per copy). So the engine and scope live inside a closure made in
/// the cell that creates the session, and only plain data (strings, JSON, parquet bytes) comes
/// out: a [`Value`] can be kept and used in any later cell.
pub struct Rhai {
    run_cell: CellFn,
}

impl Default for Rhai {
    fn default() -> Rhai {
        Rhai::new()
    }
}

impl Rhai {
    /// A session over the data dir in `COTLAB_DATA` (default `./datasets`); training and eval
    /// runs go to `runs/` beside the notebook. Its Rhai may also read the notebook's own folder
    /// (the notebook's Rust cells can read anything anyway; the sandbox guards scripts run by
    /// `cotlab run`, which may come from elsewhere).
    pub fn new() -> Rhai {
        let mut ctx = Context::new(DataDir::resolve(None), None);
        ctx.allow_read.push(std::path::PathBuf::from("."));
        Rhai::with_context(ctx)
    }

    pub fn with_context(ctx: Context) -> Rhai {
        let engine = script::engine(ctx);
        let mut scope = Scope::new();
        // Functions defined by earlier cells.
        let mut functions = AST::empty();
        let mut cells = 0;
        let run_cell = move |src: &str| -> Result<Value> {
            cells += 1;
            let name = format!("cell {cells}");
            let fail = |e: &EvalAltResult| Error::Script(script::format_error(&name, e));
            let ast = engine.compile_with_scope(&scope, src).map_err(|e| fail(&e.into()))?;
            // This cell's functions replace earlier ones of the same name and arity.
            let ast = functions.merge(&ast);
            let v = engine.eval_ast_with_scope::<Dynamic>(&mut scope, &ast).map_err(|e| fail(&e))?;
            functions = ast.clone_functions_only();
            Ok(Value::from_dynamic(v))
        };
        Rhai { run_cell: Box::new(run_cell) }
    }

    /// Run one cell of Rhai; its variables and functions stay defined for later cells.
    pub fn run(&mut self, src: &str) -> Result<Value> {
        (self.run_cell)(src)
    }

    /// [`run`](Rhai::run) for notebook cells: an error is printed (stderr) and returned as
    /// [`Value::Error`], shown as a red box. evcxr marks no cell failed at run time (neither a
    /// `?` error nor a panic: it keeps the session's variables and goes on), so a panic would
    /// only add a backtrace; `tests/notebooks.rs` looks for these boxes.
    pub fn cell(&mut self, src: &str) -> Value {
        self.run(src).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            Value::Error(e.to_string())
        })
    }
}

/// Run a self-contained Rhai snippet in a fresh session, as a notebook cell (see [`Rhai::cell`]).
pub fn rhai(src: &str) -> Value {
    Rhai::new().cell(src)
}
