//! Rhai bindings for DataFrames (polars), expressions and charts (plotly).
//!
//! The expression API mirrors polars so its docs carry over:
//! `df.group_by(["teacher"]).agg([col("words").mean().alias("mean_words"), len().alias("n")])`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::{self as pl, DataType, Expr};
use rhai::{Array, Dynamic, Engine, ImmutableString, Map};

use super::docs::{def, get};
use super::{options, rt, Context, RhaiResult};
use crate::frame::ChartSpec;
use crate::results::{Agg, Cell, Chart, ColumnData, Frame, OutputDir};
use crate::usage;

/// A frame reader bound as a script function.
type Reader = fn(&std::path::Path) -> crate::Result<Frame>;

pub use super::expr::ExprW;

/// `df.group_by(keys)`, waiting for `.agg([...])`.
#[derive(Clone)]
pub struct GroupBy {
    frame: Frame,
    keys: Vec<String>,
}

fn cell_dynamic(c: Cell) -> Dynamic {
    match c {
        Cell::Null => Dynamic::UNIT,
        Cell::Bool(b) => b.into(),
        Cell::Int(i) => i.into(),
        Cell::Float(f) => f.into(),
        Cell::Str(s) => s.into(),
    }
}

/// A value that can stand where an expression is expected: an Expr, or a literal.
fn to_expr(v: Dynamic) -> RhaiResult<Expr> {
    if v.is::<ExprW>() {
        return Ok(v.cast::<ExprW>().0);
    }
    if let Ok(i) = v.as_int() {
        return Ok(pl::lit(i));
    }
    if let Ok(f) = v.as_float() {
        return Ok(pl::lit(f));
    }
    if let Ok(b) = v.as_bool() {
        return Ok(pl::lit(b));
    }
    if v.is_string() {
        return Ok(pl::lit(v.into_string().unwrap()));
    }
    Err(rt(usage!("expected an expression (col(..), lit(..)) or a literal, found {}", v.type_name())))
}

/// An array of expressions or column names.
fn to_exprs(items: Array, what: &str) -> RhaiResult<Vec<Expr>> {
    items
        .into_iter()
        .map(|v| {
            if v.is_string() {
                Ok(pl::col(v.into_string().unwrap().as_str()))
            } else if v.is::<ExprW>() {
                Ok(v.cast::<ExprW>().0)
            } else {
                Err(rt(usage!("{what}: expected column names or expressions, found {}", v.type_name())))
            }
        })
        .collect()
}

fn to_names(items: Array, what: &str) -> RhaiResult<Vec<String>> {
    items.into_iter().map(|v| v.into_string().map_err(|t| rt(usage!("{what}: expected column names (strings), found {t}")))).collect()
}

/// Build a column from a Rhai array: ints, floats (ints promoted), strings or bools; () is null.
fn column_from_array(name: &str, items: Array) -> RhaiResult<ColumnData> {
    let non_null: Vec<&Dynamic> = items.iter().filter(|v| !v.is_unit()).collect();
    let all = |f: &dyn Fn(&Dynamic) -> bool| non_null.iter().all(|v| f(v));
    if all(&|v| v.is_int()) {
        Ok(ColumnData::Int(items.iter().map(|v| v.as_int().ok()).collect()))
    } else if all(&|v| v.is_int() || v.is_float()) {
        Ok(ColumnData::Float(items.iter().map(|v| v.as_float().ok().or_else(|| v.as_int().ok().map(|i| i as f64))).collect()))
    } else if all(&|v| v.is_bool()) {
        Ok(ColumnData::Bool(items.iter().map(|v| v.as_bool().ok()).collect()))
    } else if all(&|v| v.is_string()) {
        Ok(ColumnData::Str(items.iter().map(|v| v.clone().into_string().ok()).collect()))
    } else {
        Err(rt(usage!("column '{name}': values must all be numbers, all strings or all bools (() for null)")))
    }
}

fn dtype(name: &str) -> RhaiResult<DataType> {
    Ok(match name {
        "f64" | "float" => DataType::Float64,
        "i64" | "int" => DataType::Int64,
        "str" | "string" => DataType::String,
        "bool" => DataType::Boolean,
        other => return Err(rt(usage!("unknown type '{other}': expected f64, i64, str or bool"))),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PivotOptions {
    index: Vec<String>,
    on: String,
    values: String,
    #[serde(default)]
    agg: Agg,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChartOptions {
    x: String,
    y: String,
    #[serde(default)]
    color: Option<String>,
    #[serde(default)]
    z: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    x_title: Option<String>,
    #[serde(default)]
    y_title: Option<String>,
    #[serde(default)]
    error_low: Option<String>,
    #[serde(default)]
    error_high: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HtmlOptions {
    /// One self-contained page (plotly.js inlined) instead of a page and a shared plotly.min.js.
    #[serde(default)]
    standalone: bool,
}

impl From<ChartOptions> for ChartSpec {
    fn from(o: ChartOptions) -> Self {
        ChartSpec {
            x: o.x,
            y: o.y,
            color: o.color,
            z: o.z,
            title: o.title,
            x_title: o.x_title,
            y_title: o.y_title,
            error_low: o.error_low,
            error_high: o.error_high,
        }
    }
}

pub(super) fn out_path(out: &Option<Arc<OutputDir>>, name: &str) -> RhaiResult<PathBuf> {
    match out {
        Some(o) => o.path_for(name).map_err(rt),
        None => Err(rt(usage!("this session has no output dir: run the script with `cotlab run --out DIR`"))),
    }
}

/// A chart page in the output dir: with the plotly.min.js beside it (both in the manifest), or
/// standalone.
fn write_chart_html(out: &Option<Arc<OutputDir>>, c: &Chart, name: &str, standalone: bool) -> RhaiResult<()> {
    if standalone {
        return c.write_standalone_html(&out_path(out, name)?).map_err(rt);
    }
    let js = crate::frame::chart::plotly_path_beside(Path::new(name)).map_err(rt)?;
    let page = out_path(out, name)?;
    out_path(out, &js.to_string_lossy())?;
    c.write_html(&page).map_err(rt)
}

pub(super) const INTRO: &str = r#"The expression API mirrors polars, so its docs carry over:

```rhai
let t = concat([c1.df(), c2.df()])                      // or df(#{col: [..], ...}), read_csv(path), read_parquet(path), read_jsonl(path)
    .filter(col("agrees"))
    .group_by(["teacher", "level"])
    .agg([len().alias("n"), col("words").mean().alias("mean_words")])
    .sort(["teacher", "level"]);
t.show();                                                // prints the table; print(t) too
t.write_csv("report.csv");                               // into the output dir
line_chart(t, #{ x: "level", y: "mean_words", color: "teacher" }).write_html("words.html");
```

Operators `+ - * / == != > >= < <= & |` combine two expressions, an expression and a literal
(int, float, string, bool), or an int/float literal and an expression."#;

const CONSTRUCT_DF: &str = r#"A DataFrame from arrays, one per column: a column is integers, floats (integers promoted),
strings or bools; `()` is null; mixed kinds are an error.

```rhai
let t = df(#{ level: [1, 2, 3], accuracy: [0.41, 0.45, ()] });
```"#;

const CONCAT: &str = r#"The frames one under the other (columns matched by name); an array of corpora concatenates
the corpora instead (a `Corpus` of all their rationales, each keeping its origin).

```rhai
let both = concat([c1.df(), c2.df()]);
let corpus = concat([rationales("svamp", #{ level: 1 }), rationales("svamp", #{ level: 6 })]);
```"#;

const READ: &str = r#"A DataFrame read from a file under the read roots (see the sandbox). `read_jsonl` reads JSON
lines (a run's `train_log.jsonl`, an eval's `samples.jsonl`) with one column per key, typed by its values.

```rhai
let log = read_jsonl("runs/quick/train_log.jsonl");
let t = read_csv("out/report/report.csv");
```"#;

const SORT: &str = r#"The rows sorted by one column or several (ascending unless `descending` is `true`).

```rhai
t.sort(["teacher", "level"]).show();
t.sort("accuracy", true).head(3).show();
```"#;

const GROUP_BY: &str = r#"Group the rows by one key column or several; `.agg([...])` then makes one row per group.

```rhai
t.group_by(["teacher", "level"]).agg([len().alias("n"), col("words").mean().alias("mean_words")]);
```"#;

const SHOW_EXPR: &str = r#"The expression as polars prints it.

```rhai
print(col("a") + 1);   // [(col("a")) + (dyn int: 1)]
```"#;

const CHART: &str = r#"A `Chart` of a DataFrame (plotly). Options: `x`, `y` (columns, required); `color` (one trace
per distinct value of this column); `z` (heatmap only, required there: the numeric cell values);
`title`, `x_title`, `y_title`; `error_low`, `error_high` (line and bar charts: the columns holding
each point's lower and upper bound, e.g. `ci95_low`/`ci95_high`, drawn as asymmetric error bars
around `y`; give both or neither).

```rhai
line_chart(t, #{ x: "level", y: "accuracy", color: "teacher", error_low: "ci95_low", error_high: "ci95_high",
                 title: "Accuracy by level", x_title: "level", y_title: "accuracy" })
    .write_html("accuracy.html");
heatmap(t, #{ x: "level", y: "teacher", z: "accuracy" }).write_html("heat.html");
```"#;

const WRITE: &str = r#"Write the frame into the output dir under a relative name (see the sandbox); an error when
the session has no output dir. Published when the script succeeds.

```rhai
t.write_csv("report.csv");
t.write_parquet("report.parquet");
```"#;

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    // --- construction
    def(engine, "df", ["columns"], CONSTRUCT_DF, |m: Map| -> RhaiResult<Frame> {
        let mut cols = Vec::new();
        for (k, v) in m {
            let arr = v.into_array().map_err(|t| rt(usage!("df: column '{k}' must be an array, found {t}")))?;
            cols.push((k.to_string(), column_from_array(&k, arr)?));
        }
        Frame::from_columns(cols).map_err(rt)
    });
    def(engine, "concat", ["items"], CONCAT, |frames: Array| -> RhaiResult<Dynamic> {
        // Corpora concatenate too (`data::corpus`): dispatched on the first item's type.
        if frames.first().is_some_and(|f| f.is::<crate::data::Corpus>()) {
            return super::experiment::concat_corpora(frames).map(Dynamic::from);
        }
        let fs: Vec<Frame> = frames
            .into_iter()
            .map(|f| f.try_cast::<Frame>().ok_or_else(|| rt(usage!("concat: expected an array of DataFrames (or of corpora)"))))
            .collect::<RhaiResult<_>>()?;
        Frame::concat(&fs).map(Dynamic::from).map_err(rt)
    });
    let ws = ctx.workspace();
    let readers: [(&str, Reader); 3] = [("read_csv", Frame::read_csv), ("read_jsonl", Frame::read_jsonl), ("read_parquet", Frame::read_parquet)];
    for (name, read) in readers {
        let ws = ws.clone();
        def(engine, name, ["path"], READ, move |path: &str| -> RhaiResult<Frame> { read(&ws.readable(path.as_ref(), name).map_err(rt)?).map_err(rt) });
    }

    // --- inspection
    def(engine, "len", ["f"], "The number of rows (as `f.height`).\n\n```rhai\nprint(df(#{ a: [1, 2] }).len());   // 2\n```", |f: &mut Frame| {
        f.height() as i64
    });
    get(engine, "f", "height", "The number of rows.\n\n```rhai\nprint(t.height);\n```", |f: &mut Frame| f.height() as i64);
    get(engine, "f", "width", "The number of columns.\n\n```rhai\nprint(t.width);\n```", |f: &mut Frame| f.width() as i64);
    get(
        engine,
        "f",
        "columns",
        "The column names, in an array.\n\n```rhai\nprint(t.columns);   // [\"teacher\", \"level\", \"n\"]\n```",
        |f: &mut Frame| -> Array { f.columns().into_iter().map(Dynamic::from).collect() },
    );
    def(
        engine,
        "column",
        ["f", "name"],
        "One column's values as an array (`()` for null).\n\n```rhai\nlet acc = t.column(\"accuracy\");\n```",
        |f: &mut Frame, name: &str| -> RhaiResult<Array> { Ok(f.column_cells(name).map_err(rt)?.into_iter().map(cell_dynamic).collect()) },
    );
    def(
        engine,
        "rows",
        ["f"],
        "Every row as a map from column name to value, in an array.\n\n```rhai\nfor r in t.rows() { print(`${r.teacher}: ${r.n}`); }\n```",
        |f: &mut Frame| -> RhaiResult<Array> {
            let cols = f.columns();
            (0..f.height())
                .map(|r| {
                    let mut m = Map::new();
                    for c in &cols {
                        m.insert(c.as_str().into(), cell_dynamic(f.cell(r, c).map_err(rt)?));
                    }
                    Ok(Dynamic::from_map(m))
                })
                .collect()
        },
    );
    def(engine, "head", ["f", "n"], "The first `n` rows.\n\n```rhai\nt.head(5).show();\n```", |f: &mut Frame, n: i64| f.head(n.max(0) as usize));
    def(engine, "show", ["f"], "Print the table to stdout (as `print(f)` does).\n\n```rhai\nt.show();\n```", |f: &mut Frame| {
        println!("{}", f.to_table_string())
    });
    def(engine, "to_string", ["f"], "The table as text (what `print` shows).\n\n```rhai\nlet text = t.to_string();\n```", |f: &mut Frame| f.to_table_string());
    def(engine, "to_debug", ["f"], "A short summary, `DataFrame(3 x 2)` (what `debug` shows).\n\n```rhai\ndebug(t);\n```", |f: &mut Frame| {
        format!("DataFrame({} x {})", f.height(), f.width())
    });
    def(engine, "to_html", ["f"], "The table as HTML (the first 200 rows).\n\n```rhai\nlet html = t.to_html();\n```", |f: &mut Frame| f.to_html(200));

    // --- transformation
    def(engine, "group_by", ["f", "keys"], GROUP_BY, |f: &mut Frame, keys: Array| -> RhaiResult<GroupBy> {
        Ok(GroupBy { frame: f.clone(), keys: to_names(keys, "group_by")? })
    });
    def(engine, "group_by", ["f", "key"], GROUP_BY, |f: &mut Frame, key: &str| GroupBy { frame: f.clone(), keys: vec![key.to_string()] });
    def(
        engine,
        "agg",
        ["g", "aggs"],
        "One row per group of a `group_by`, with the key columns and one column per aggregation (expressions, or column names for their first value).\n\n```rhai\nt.group_by(\"teacher\").agg([col(\"accuracy\").mean().alias(\"mean_accuracy\"), len().alias(\"n\")]);\n```",
        |g: &mut GroupBy, aggs: Array| -> RhaiResult<Frame> { g.frame.group_by(&g.keys, to_exprs(aggs, "agg")?).map_err(rt) },
    );
    def(
        engine,
        "filter",
        ["f", "predicate"],
        "The rows where a boolean expression holds.\n\n```rhai\nt.filter(col(\"agrees\") & (col(\"words\") > 20));\n```",
        |f: &mut Frame, e: ExprW| -> RhaiResult<Frame> { f.filter(e.0).map_err(rt) },
    );
    def(
        engine,
        "select",
        ["f", "items"],
        "Only these columns or expressions (names or `col(..)…`).\n\n```rhai\nt.select([\"teacher\", col(\"words\").alias(\"w\")]);\n```",
        |f: &mut Frame, items: Array| -> RhaiResult<Frame> { f.select(to_exprs(items, "select")?).map_err(rt) },
    );
    const WITH: &str = "The frame with columns added or replaced (each named by its expression, or its `alias`).\n\n```rhai\nt.with_column((col(\"correct\") / col(\"n\")).alias(\"accuracy\"));\nt.with_columns([col(\"words\").cast(\"f64\"), lit(1).alias(\"one\")]);\n```";
    def(engine, "with_column", ["f", "expr"], WITH, |f: &mut Frame, e: ExprW| -> RhaiResult<Frame> { f.with_columns(vec![e.0]).map_err(rt) });
    def(engine, "with_columns", ["f", "items"], WITH, |f: &mut Frame, items: Array| -> RhaiResult<Frame> {
        f.with_columns(to_exprs(items, "with_columns")?).map_err(rt)
    });
    def(engine, "sort", ["f", "by"], SORT, |f: &mut Frame, by: &str| -> RhaiResult<Frame> { f.sort(&[by.to_string()], false).map_err(rt) });
    def(engine, "sort", ["f", "by", "descending"], SORT, |f: &mut Frame, by: &str, descending: bool| -> RhaiResult<Frame> {
        f.sort(&[by.to_string()], descending).map_err(rt)
    });
    def(engine, "sort", ["f", "by"], SORT, |f: &mut Frame, by: Array| -> RhaiResult<Frame> { f.sort(&to_names(by, "sort")?, false).map_err(rt) });
    def(engine, "sort", ["f", "by", "descending"], SORT, |f: &mut Frame, by: Array, descending: bool| -> RhaiResult<Frame> {
        f.sort(&to_names(by, "sort")?, descending).map_err(rt)
    });
    def(
        engine,
        "pivot",
        ["f", "opts"],
        "A wide frame: `index` (array of columns, required) as rows, one column per value of `on` (required), cells from `values` (required) combined by `agg`: `first` (default), `mean`, `sum`, `min`, `max`, `count`.\n\n```rhai\nlet wide = t.pivot(#{ index: [\"teacher\"], on: \"level\", values: \"mean_words\", agg: \"first\" });\n```",
        |f: &mut Frame, opts: Map| -> RhaiResult<Frame> {
            let o: PivotOptions = options(opts)?;
            f.pivot(&o.index, &o.on, &o.values, o.agg).map_err(rt)
        },
    );

    // --- output (only inside the run's output dir)
    let out = ctx.out.clone();
    def(engine, "write_csv", ["f", "name"], WRITE, move |f: &mut Frame, name: &str| -> RhaiResult<()> { f.write_csv(&out_path(&out, name)?).map_err(rt) });
    let out = ctx.out.clone();
    def(engine, "write_parquet", ["f", "name"], WRITE, move |f: &mut Frame, name: &str| -> RhaiResult<()> {
        f.write_parquet(&out_path(&out, name)?).map_err(rt)
    });

    // --- expressions
    def(engine, "col", ["name"], "The column `name` as an expression.\n\n```rhai\nt.filter(col(\"level\") >= 3);\n```", |name: &str| ExprW(pl::col(name)));
    def(
        engine,
        "lit",
        ["value"],
        "A literal (int, float, bool, string) as an expression.\n\n```rhai\nt.with_column(lit(\"gpt-4o\").alias(\"teacher\"));\n```",
        |v: Dynamic| -> RhaiResult<ExprW> { Ok(ExprW(to_expr(v)?)) },
    );
    def(
        engine,
        "len",
        [],
        "The number of rows of the group, as an expression (in `agg`).\n\n```rhai\nt.group_by(\"teacher\").agg([len().alias(\"n\")]);\n```",
        || ExprW(pl::len()),
    );
    macro_rules! unary {
        ($($name:literal => $f:expr, $what:literal),* $(,)?) => {
            $( def(engine, $name, ["e"], concat!($what, "\n\n```rhai\nt.group_by(\"teacher\").agg([col(\"words\").", $name, "().alias(\"x\")]);\n```"), |e: &mut ExprW| ExprW(($f)(e.0.clone()))); )*
        };
    }
    unary! {
        "mean" => |e: Expr| e.mean(), "The mean of the values (in a group).",
        "sum" => |e: Expr| e.sum(), "The sum of the values (in a group).",
        "min" => |e: Expr| e.min(), "The smallest value (in a group).",
        "max" => |e: Expr| e.max(), "The largest value (in a group).",
        "median" => |e: Expr| e.median(), "The median of the values (in a group).",
        "std" => |e: Expr| e.std(1), "The sample standard deviation (ddof 1) of the values (in a group).",
        "count" => |e: Expr| e.count(), "The number of non-null values (in a group).",
        "n_unique" => |e: Expr| e.n_unique(), "The number of distinct values (in a group).",
        "first" => |e: Expr| e.first(), "The first value (in a group).",
        "last" => |e: Expr| e.last(), "The last value (in a group).",
        "is_null" => |e: Expr| e.is_null(), "Whether each value is null (a boolean expression, e.g. for `filter`).",
        "is_not_null" => |e: Expr| e.is_not_null(), "Whether each value is not null (a boolean expression, e.g. for `filter`).",
        "not" => |e: Expr| e.not(), "The negation of a boolean expression.",
    }
    def(
        engine,
        "alias",
        ["e", "name"],
        "The expression under another name (the column it makes).\n\n```rhai\ncol(\"words\").mean().alias(\"mean_words\")\n```",
        |e: &mut ExprW, name: &str| ExprW(e.0.clone().alias(name)),
    );
    def(
        engine,
        "cast",
        ["e", "type"],
        "The values converted to `type`: `f64`/`float`, `i64`/`int`, `str`/`string` or `bool`.\n\n```rhai\ncol(\"level\").cast(\"str\")\n```",
        |e: &mut ExprW, t: &str| -> RhaiResult<ExprW> { Ok(ExprW(e.0.clone().cast(dtype(t)?))) },
    );
    def(engine, "to_string", ["e"], SHOW_EXPR, |e: &mut ExprW| format!("{:?}", e.0));
    def(engine, "to_debug", ["e"], SHOW_EXPR, |e: &mut ExprW| format!("{:?}", e.0));

    // Operators: Expr with Expr or a literal, on either side.
    macro_rules! binary {
        ($($op:literal => $f:expr, $what:literal, $example:literal),* $(,)?) => {$(
            let doc = concat!($what, ": between two expressions, an expression and a literal (int, float, string, bool), or an int/float literal and an expression.\n\n```rhai\n", $example, "\n```");
            def(engine, $op, ["a", "b"], doc, |a: ExprW, b: ExprW| ExprW(($f)(a.0, b.0)));
            def(engine, $op, ["a", "b"], doc, |a: ExprW, b: i64| ExprW(($f)(a.0, pl::lit(b))));
            def(engine, $op, ["a", "b"], doc, |a: ExprW, b: f64| ExprW(($f)(a.0, pl::lit(b))));
            def(engine, $op, ["a", "b"], doc, |a: ExprW, b: ImmutableString| ExprW(($f)(a.0, pl::lit(b.to_string()))));
            def(engine, $op, ["a", "b"], doc, |a: ExprW, b: bool| ExprW(($f)(a.0, pl::lit(b))));
            def(engine, $op, ["a", "b"], doc, |a: i64, b: ExprW| ExprW(($f)(pl::lit(a), b.0)));
            def(engine, $op, ["a", "b"], doc, |a: f64, b: ExprW| ExprW(($f)(pl::lit(a), b.0)));
        )*};
    }
    binary! {
        "+" => |a: Expr, b: Expr| a + b, "Addition", "t.with_column((col(\"train_steps\") + 1).alias(\"steps\"))",
        "-" => |a: Expr, b: Expr| a - b, "Subtraction", "t.with_column((col(\"accuracy\") - col(\"baseline\")).alias(\"gain\"))",
        "*" => |a: Expr, b: Expr| a * b, "Multiplication", "t.with_column((col(\"accuracy\") * 100).alias(\"percent\"))",
        "/" => |a: Expr, b: Expr| a / b, "Division", "t.with_column((col(\"correct\") / col(\"n\")).alias(\"accuracy\"))",
        "==" => |a: Expr, b: Expr| a.eq(b), "Equality (a boolean expression)", "t.filter(col(\"teacher\") == \"gpt-4o\")",
        "!=" => |a: Expr, b: Expr| a.neq(b), "Inequality (a boolean expression)", "t.filter(col(\"status\") != \"done\")",
        ">" => |a: Expr, b: Expr| a.gt(b), "Greater than (a boolean expression)", "t.filter(col(\"words\") > 20)",
        ">=" => |a: Expr, b: Expr| a.gt_eq(b), "Greater than or equal (a boolean expression)", "t.filter(col(\"level\") >= 3)",
        "<" => |a: Expr, b: Expr| a.lt(b), "Less than (a boolean expression)", "t.filter(col(\"words\") < 20)",
        "<=" => |a: Expr, b: Expr| a.lt_eq(b), "Less than or equal (a boolean expression)", "t.filter(col(\"level\") <= 3)",
        "&" => |a: Expr, b: Expr| a.and(b), "Logical and of boolean expressions", "t.filter(col(\"agrees\") & (col(\"words\") > 20))",
        "|" => |a: Expr, b: Expr| a.or(b), "Logical or of boolean expressions", "t.filter((col(\"level\") == 1) | (col(\"level\") == 6))",
    }

    // --- charts
    let chart = |kind: &'static str| {
        move |f: &mut Frame, opts: Map| -> RhaiResult<Chart> {
            let spec: ChartSpec = options::<ChartOptions>(opts)?.into();
            match kind {
                "line" => Chart::line(f, &spec),
                "bar" => Chart::bar(f, &spec),
                _ => Chart::heatmap(f, &spec),
            }
            .map_err(rt)
        }
    };
    def(engine, "line_chart", ["f", "opts"], CHART, chart("line"));
    def(engine, "bar_chart", ["f", "opts"], CHART, chart("bar"));
    def(engine, "heatmap", ["f", "opts"], CHART, chart("heatmap"));
    let out = ctx.out.clone();
    let out2 = out.clone();
    def(
        engine,
        "write_html",
        ["chart", "name"],
        "Write the chart as an HTML page in the output dir, with `plotly.min.js` beside it (one copy shared by every chart in that dir; nothing is fetched from the network, so it opens offline).\n\n```rhai\nbar_chart(t, #{ x: \"teacher\", y: \"accuracy\" }).write_html(\"accuracy.html\");\n```",
        move |c: &mut Chart, name: &str| write_chart_html(&out2, c, name, false),
    );
    def(
        engine,
        "write_html",
        ["chart", "name", "opts"],
        "Write the chart as an HTML page; `#{ standalone: true }` makes one self-contained file with plotly.js inlined (about 4.6 MB).\n\n```rhai\nbar_chart(t, #{ x: \"teacher\", y: \"accuracy\" }).write_html(\"accuracy.html\", #{ standalone: true });\n```",
        move |c: &mut Chart, name: &str, opts: Map| -> RhaiResult<()> {
            let o: HtmlOptions = options(opts)?;
            write_chart_html(&out, c, name, o.standalone)
        },
    );
    def(
        engine,
        "to_string",
        ["chart"],
        "A short summary, `Chart(<title>)`.\n\n```rhai\nprint(line_chart(t, #{ x: \"level\", y: \"accuracy\" }));\n```",
        |c: &mut Chart| format!("Chart({})", c.title),
    );
}
