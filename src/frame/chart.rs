//! Charts from frames: line, bar and heatmap, written as HTML pages that draw with plotly.js
//! from a local copy, never a CDN: they must open on an offline machine. MathJax, which plotly
//! bundles too, is left out: 2 MB we do not use.
//!
//! * [`Chart::write_html`] writes the page and, beside it, [`PLOTLY_JS_FILE`] (4.65 MB), which
//!   the page loads by relative path: the charts of one folder share one copy. The page and the
//!   script travel together (an output dir is published as a whole).
//! * [`Chart::write_standalone_html`] writes one self-contained page with plotly.js inlined, for
//!   a chart sent on its own.

use std::path::Path;
use std::sync::OnceLock;

use plotly::common::{ErrorData, ErrorType, Mode, Title};
use plotly::layout::{Axis, BarMode, Layout};
use plotly::{Bar, HeatMap, Plot, Scatter};
use serde_json::Value;

use super::{Cell, Frame};
use crate::error::Result;
use crate::usage;

#[derive(Clone, Debug, Default)]
pub struct ChartSpec {
    pub x: String,
    pub y: String,
    /// One trace per distinct value of this column.
    pub color: Option<String>,
    /// Heatmap cell values.
    pub z: Option<String>,
    pub title: Option<String>,
    pub x_title: Option<String>,
    pub y_title: Option<String>,
    /// Error bars (line and bar charts): the columns holding each point's lower and upper bound
    /// (e.g. `ci95_low`, `ci95_high`), drawn as asymmetric bars around `y`.
    pub error_low: Option<String>,
    pub error_high: Option<String>,
}

/// A finished chart: the plotly figure as JSON (plotly's `Plot` is not `Send`, and the JSON is
/// all the HTML needs), plus its title.
#[derive(Clone, Debug)]
pub struct Chart {
    pub figure: String,
    pub title: String,
}

fn cell_json(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Bool(b) => Value::Bool(*b),
        Cell::Int(i) => Value::from(*i),
        Cell::Float(x) => serde_json::Number::from_f64(*x).map(Value::Number).unwrap_or(Value::Null),
        Cell::Str(s) => Value::String(s.clone()),
    }
}

fn label(c: &Cell) -> String {
    match c {
        Cell::Null => "null".into(),
        Cell::Str(s) => s.clone(),
        other => cell_json(other).to_string(),
    }
}

fn number(c: &Cell) -> Option<f64> {
    match c {
        Cell::Int(i) => Some(*i as f64),
        Cell::Float(f) => Some(*f),
        _ => None,
    }
}

/// The error bars of each trace of [`series`] (same grouping), when the spec asks for them:
/// (below y, above y) per point, 0 where a bound is missing.
fn error_bars(frame: &Frame, spec: &ChartSpec) -> Result<Option<Vec<ErrorData>>> {
    let (Some(lo), Some(hi)) = (&spec.error_low, &spec.error_high) else {
        if spec.error_low.is_some() || spec.error_high.is_some() {
            return Err(usage!("error bars need both 'error_low' and 'error_high' (the columns of each point's lower and upper bound)"));
        }
        return Ok(None);
    };
    let (ys, los, his) = (frame.column_cells(&spec.y)?, frame.column_cells(lo)?, frame.column_cells(hi)?);
    let groups = group_cells(frame, spec)?;
    let mut out: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    for (((y, l), h), g) in ys.iter().zip(&los).zip(&his).zip(&groups) {
        let name = label(g);
        let i = group_slot(&mut out, name);
        let y = number(y).unwrap_or(0.0);
        out[i].1.push(number(l).map(|l| (y - l).max(0.0)).unwrap_or(0.0));
        out[i].2.push(number(h).map(|h| (h - y).max(0.0)).unwrap_or(0.0));
    }
    Ok(Some(out.into_iter().map(|(_, minus, plus)| ErrorData::new(ErrorType::Data).symmetric(false).array(plus).array_minus(minus)).collect()))
}

/// Each row's group: its color column's cell, or one group named after y.
fn group_cells(frame: &Frame, spec: &ChartSpec) -> Result<Vec<Cell>> {
    match &spec.color {
        Some(c) => frame.column_cells(c),
        None => Ok(vec![Cell::Str(spec.y.clone()); frame.height()]),
    }
}

/// The index of group `name` in `out`, appended (empty) on first appearance.
fn group_slot<A, B>(out: &mut Vec<(String, Vec<A>, Vec<B>)>, name: String) -> usize {
    match out.iter().position(|(n, _, _)| *n == name) {
        Some(i) => i,
        None => {
            out.push((name, Vec::new(), Vec::new()));
            out.len() - 1
        }
    }
}

/// One trace of a chart: (group name, xs, ys).
type Series = (String, Vec<Value>, Vec<Value>);

/// Rows grouped by the color column, in first-appearance order.
fn series(frame: &Frame, spec: &ChartSpec) -> Result<Vec<Series>> {
    let xs = frame.column_cells(&spec.x)?;
    let ys = frame.column_cells(&spec.y)?;
    let groups = group_cells(frame, spec)?;
    let mut out: Vec<Series> = Vec::new();
    for ((x, y), g) in xs.iter().zip(&ys).zip(&groups) {
        let name = label(g);
        let i = group_slot(&mut out, name);
        out[i].1.push(cell_json(x));
        out[i].2.push(cell_json(y));
    }
    Ok(out)
}

fn layout(spec: &ChartSpec) -> Layout {
    Layout::new()
        .title(Title::with_text(spec.title.clone().unwrap_or_default()))
        .x_axis(Axis::new().title(Title::with_text(spec.x_title.clone().unwrap_or_else(|| spec.x.clone()))))
        .y_axis(Axis::new().title(Title::with_text(spec.y_title.clone().unwrap_or_else(|| spec.y.clone()))))
}

impl Chart {
    pub fn line(frame: &Frame, spec: &ChartSpec) -> Result<Chart> {
        let mut plot = Plot::new();
        let mut errors = error_bars(frame, spec)?.map(|e| e.into_iter());
        for (name, xs, ys) in series(frame, spec)? {
            let mut t = Scatter::new(xs, ys).mode(Mode::LinesMarkers).name(name);
            if let Some(e) = errors.as_mut().and_then(|e| e.next()) {
                t = t.error_y(e);
            }
            plot.add_trace(t);
        }
        plot.set_layout(layout(spec));
        Ok(Chart { figure: plot.to_json(), title: spec.title.clone().unwrap_or_default() })
    }

    pub fn bar(frame: &Frame, spec: &ChartSpec) -> Result<Chart> {
        let mut plot = Plot::new();
        let mut errors = error_bars(frame, spec)?.map(|e| e.into_iter());
        for (name, xs, ys) in series(frame, spec)? {
            let mut t = Bar::new(xs, ys).name(name);
            if let Some(e) = errors.as_mut().and_then(|e| e.next()) {
                t = t.error_y(e);
            }
            plot.add_trace(t);
        }
        plot.set_layout(layout(spec).bar_mode(BarMode::Group));
        Ok(Chart { figure: plot.to_json(), title: spec.title.clone().unwrap_or_default() })
    }

    /// A heatmap from long data: one cell per (x, y) row with value `z`.
    pub fn heatmap(frame: &Frame, spec: &ChartSpec) -> Result<Chart> {
        let zc = spec.z.as_ref().ok_or_else(|| usage!("heatmap needs 'z': the column holding cell values"))?;
        let xs: Vec<String> = frame.column_cells(&spec.x)?.iter().map(label).collect();
        let ys: Vec<String> = frame.column_cells(&spec.y)?.iter().map(label).collect();
        let zs = frame.column_cells(zc)?;
        let mut xl: Vec<String> = Vec::new();
        let mut yl: Vec<String> = Vec::new();
        for x in &xs {
            if !xl.contains(x) {
                xl.push(x.clone());
            }
        }
        for y in &ys {
            if !yl.contains(y) {
                yl.push(y.clone());
            }
        }
        let mut grid: Vec<Vec<Option<f64>>> = vec![vec![None; xl.len()]; yl.len()];
        for ((x, y), z) in xs.iter().zip(&ys).zip(&zs) {
            let xi = xl.iter().position(|v| v == x).unwrap();
            let yi = yl.iter().position(|v| v == y).unwrap();
            grid[yi][xi] = match z {
                Cell::Int(i) => Some(*i as f64),
                Cell::Float(f) => Some(*f),
                Cell::Null => None,
                other => return Err(usage!("heatmap: column '{zc}' must be numeric, found {other:?}")),
            };
        }
        let mut plot = Plot::new();
        plot.add_trace(HeatMap::new(xl, yl, grid));
        plot.set_layout(layout(spec));
        Ok(Chart { figure: plot.to_json(), title: spec.title.clone().unwrap_or_default() })
    }

    /// plotly.js (and only plotly.js) from the copy bundled in the plotly crate.
    pub fn plotly_min_js() -> &'static str {
        static JS: OnceLock<String> = OnceLock::new();
        JS.get_or_init(|| {
            // offline_js_sources() is "<script …>plotly</script>\n<script …>mathjax</script>": keep the first's body.
            let all = Plot::offline_js_sources();
            let body = all.split_once('>').map_or(all.as_str(), |(_, rest)| rest);
            body.find("</script>").map_or(body, |end| &body[..end]).to_string()
        })
    }

    /// plotly.js as an inline `<script>` element.
    pub fn plotly_js() -> String {
        format!("<script type=\"text/javascript\">{}</script>", Self::plotly_min_js())
    }

    /// The chart's div and a script that draws it once plotly.js is there: in a page, plotly.js
    /// comes first; in a notebook, the output carrying it may render after this one.
    pub fn to_inline_html(&self, div_id: &str) -> String {
        format!(
            "<div id=\"{div_id}\" class=\"cotlab-chart\" style=\"width:100%;height:500px;\"></div>\n\
             <script type=\"text/javascript\">\n(function() {{\n  var fig = {fig};\n  function draw(tries) {{\n    \
             if (window.Plotly) {{ Plotly.newPlot(\"{div_id}\", fig.data, fig.layout || {{}}, fig.config || {{}}); }}\n    \
             else if (tries < 100) {{ setTimeout(function() {{ draw(tries + 1); }}, 100); }}\n    \
             else {{ document.getElementById(\"{div_id}\").textContent = \"plotly.js is not loaded ({missing}).\"; }}\n  }}\n  \
             draw(0);\n}})();\n</script>",
            fig = self.figure,
            missing = format_args!("a page needs {PLOTLY_JS_FILE} beside it; in a notebook: run cotlab::notebook::load_plotly(), then this cell again")
        )
    }

    fn page(&self, plotly_script: &str) -> String {
        let esc = self.title.replace('&', "&amp;").replace('<', "&lt;");
        format!(
            "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\" />\n<title>{esc}</title>\n{plotly_script}\n</head>\n<body>\n{}\n</body>\n</html>\n",
            self.to_inline_html("cotlab-chart")
        )
    }

    /// A complete standalone page, plotly.js inlined.
    pub fn to_html(&self) -> String {
        self.page(&Self::plotly_js())
    }

    /// A page that loads plotly.js from [`PLOTLY_JS_FILE`] in its own folder.
    pub fn to_html_with_local_plotly(&self) -> String {
        self.page(&format!("<script type=\"text/javascript\" src=\"{PLOTLY_JS_FILE}\"></script>"))
    }

    /// Write the page and the [`PLOTLY_JS_FILE`] it loads beside it (kept when already there and
    /// the same, so the charts of a folder share one copy).
    pub fn write_html(&self, path: &Path) -> Result<()> {
        write_plotly_beside(path)?;
        crate::paths::write(path, self.to_html_with_local_plotly().as_bytes())
    }

    /// Write one self-contained page (plotly.js inlined, 4.65 MB more).
    pub fn write_standalone_html(&self, path: &Path) -> Result<()> {
        crate::paths::write(path, self.to_html().as_bytes())
    }
}

/// The file a chart page loads plotly.js from, in the page's own folder.
pub const PLOTLY_JS_FILE: &str = "plotly.min.js";

/// Where the plotly.js of the page at `page` goes: beside it. A page named like the script
/// itself is refused (it would overwrite it, or be overwritten).
pub fn plotly_path_beside(page: &Path) -> Result<std::path::PathBuf> {
    if page.file_name().is_some_and(|n| n == PLOTLY_JS_FILE) {
        return Err(usage!("a chart cannot be written as '{}': {PLOTLY_JS_FILE} is the plotly.js its pages load; choose another name", page.display()));
    }
    Ok(page.with_file_name(PLOTLY_JS_FILE))
}

fn write_plotly_beside(page: &Path) -> Result<()> {
    let js = plotly_path_beside(page)?;
    let want = Chart::plotly_min_js().as_bytes();
    let same = std::fs::metadata(&js).is_ok_and(|m| m.is_file() && m.len() == want.len() as u64) && crate::paths::read_bytes(&js).is_ok_and(|b| b == want);
    if same {
        return Ok(());
    }
    crate::paths::write(&js, want)
}
