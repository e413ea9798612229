//! Rhai bindings for DataFrames (polars), expressions and charts (plotly).
//!
//! The expression API mirrors polars so its docs carry over:
//! `df.group_by(["teacher"]).agg([col("words").mean().alias("mean_words"), len().alias("n")])`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::{self as pl, DataType, Expr};
use rhai::{Array, Dynamic, Engine, ImmutableString, Map};

use super::{options, rt, Context, RhaiResult};
use crate::frame::ChartSpec;
use crate::results::{Agg, Cell, Chart, ColumnData, Frame, OutputDir};
use crate::usage;

/// A polars expression as a Rhai value.
#[derive(Clone)]
pub struct ExprW(pub Expr);

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
    items
        .into_iter()
        .map(|v| v.into_string().map_err(|t| rt(usage!("{what}: expected column names (strings), found {t}"))))
        .collect()
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
        ChartSpec { x: o.x, y: o.y, color: o.color, z: o.z, title: o.title, x_title: o.x_title, y_title: o.y_title, error_low: o.error_low, error_high: o.error_high }
    }
}

fn out_path(out: &Option<Arc<OutputDir>>, name: &str) -> RhaiResult<PathBuf> {
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

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    engine.register_type_with_name::<Frame>("DataFrame");
    engine.register_type_with_name::<ExprW>("Expr");
    engine.register_type_with_name::<GroupBy>("GroupBy");
    engine.register_type_with_name::<Chart>("Chart");

    // --- construction
    engine.register_fn("df", |m: Map| -> RhaiResult<Frame> {
        let mut cols = Vec::new();
        for (k, v) in m {
            let arr = v.into_array().map_err(|t| rt(usage!("df: column '{k}' must be an array, found {t}")))?;
            cols.push((k.to_string(), column_from_array(&k, arr)?));
        }
        Frame::from_columns(cols).map_err(rt)
    });
    engine.register_fn("concat", |frames: Array| -> RhaiResult<Dynamic> {
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
    let readers: [(&str, fn(&std::path::Path) -> crate::Result<Frame>); 3] =
        [("read_csv", Frame::read_csv), ("read_jsonl", Frame::read_jsonl), ("read_parquet", Frame::read_parquet)];
    for (name, read) in readers {
        let ws = ws.clone();
        engine.register_fn(name, move |path: &str| -> RhaiResult<Frame> { read(&ws.readable(path.as_ref(), name).map_err(rt)?).map_err(rt) });
    }

    // --- inspection
    engine.register_fn("len", |f: &mut Frame| f.height() as i64);
    engine.register_get("height", |f: &mut Frame| f.height() as i64);
    engine.register_get("width", |f: &mut Frame| f.width() as i64);
    engine.register_get("columns", |f: &mut Frame| -> Array { f.columns().into_iter().map(Dynamic::from).collect() });
    engine.register_fn("column", |f: &mut Frame, name: &str| -> RhaiResult<Array> {
        Ok(f.column_cells(name).map_err(rt)?.into_iter().map(cell_dynamic).collect())
    });
    engine.register_fn("rows", |f: &mut Frame| -> RhaiResult<Array> {
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
    });
    engine.register_fn("head", |f: &mut Frame, n: i64| f.head(n.max(0) as usize));
    engine.register_fn("show", |f: &mut Frame| println!("{}", f.to_table_string()));
    engine.register_fn("to_string", |f: &mut Frame| f.to_table_string());
    engine.register_fn("to_debug", |f: &mut Frame| format!("DataFrame({} x {})", f.height(), f.width()));
    engine.register_fn("to_html", |f: &mut Frame| f.to_html(200));

    // --- transformation
    engine.register_fn("group_by", |f: &mut Frame, keys: Array| -> RhaiResult<GroupBy> {
        Ok(GroupBy { frame: f.clone(), keys: to_names(keys, "group_by")? })
    });
    engine.register_fn("group_by", |f: &mut Frame, key: &str| GroupBy { frame: f.clone(), keys: vec![key.to_string()] });
    engine.register_fn("agg", |g: &mut GroupBy, aggs: Array| -> RhaiResult<Frame> {
        g.frame.group_by(&g.keys, to_exprs(aggs, "agg")?).map_err(rt)
    });
    engine.register_fn("filter", |f: &mut Frame, e: ExprW| -> RhaiResult<Frame> { f.filter(e.0).map_err(rt) });
    engine.register_fn("select", |f: &mut Frame, items: Array| -> RhaiResult<Frame> {
        f.select(to_exprs(items, "select")?).map_err(rt)
    });
    engine.register_fn("with_column", |f: &mut Frame, e: ExprW| -> RhaiResult<Frame> { f.with_columns(vec![e.0]).map_err(rt) });
    engine.register_fn("with_columns", |f: &mut Frame, items: Array| -> RhaiResult<Frame> {
        f.with_columns(to_exprs(items, "with_columns")?).map_err(rt)
    });
    engine.register_fn("sort", |f: &mut Frame, by: &str| -> RhaiResult<Frame> { f.sort(&[by.to_string()], false).map_err(rt) });
    engine.register_fn("sort", |f: &mut Frame, by: &str, descending: bool| -> RhaiResult<Frame> {
        f.sort(&[by.to_string()], descending).map_err(rt)
    });
    engine.register_fn("sort", |f: &mut Frame, by: Array| -> RhaiResult<Frame> { f.sort(&to_names(by, "sort")?, false).map_err(rt) });
    engine.register_fn("sort", |f: &mut Frame, by: Array, descending: bool| -> RhaiResult<Frame> {
        f.sort(&to_names(by, "sort")?, descending).map_err(rt)
    });
    engine.register_fn("pivot", |f: &mut Frame, opts: Map| -> RhaiResult<Frame> {
        let o: PivotOptions = options(opts)?;
        f.pivot(&o.index, &o.on, &o.values, o.agg).map_err(rt)
    });

    // --- output (only inside the run's output dir)
    let out = ctx.out.clone();
    engine.register_fn("write_csv", move |f: &mut Frame, name: &str| -> RhaiResult<()> {
        f.write_csv(&out_path(&out, name)?).map_err(rt)
    });
    let out = ctx.out.clone();
    engine.register_fn("write_parquet", move |f: &mut Frame, name: &str| -> RhaiResult<()> {
        f.write_parquet(&out_path(&out, name)?).map_err(rt)
    });

    // --- expressions
    engine.register_fn("col", |name: &str| ExprW(pl::col(name)));
    engine.register_fn("lit", |v: Dynamic| -> RhaiResult<ExprW> { Ok(ExprW(to_expr(v)?)) });
    engine.register_fn("len", || ExprW(pl::len()));
    macro_rules! unary {
        ($($name:literal => $f:expr),* $(,)?) => {
            $( engine.register_fn($name, |e: &mut ExprW| ExprW(($f)(e.0.clone()))); )*
        };
    }
    unary! {
        "mean" => |e: Expr| e.mean(),
        "sum" => |e: Expr| e.sum(),
        "min" => |e: Expr| e.min(),
        "max" => |e: Expr| e.max(),
        "median" => |e: Expr| e.median(),
        "std" => |e: Expr| e.std(1),
        "count" => |e: Expr| e.count(),
        "n_unique" => |e: Expr| e.n_unique(),
        "first" => |e: Expr| e.first(),
        "last" => |e: Expr| e.last(),
        "is_null" => |e: Expr| e.is_null(),
        "is_not_null" => |e: Expr| e.is_not_null(),
        "not" => |e: Expr| e.not(),
    }
    engine.register_fn("alias", |e: &mut ExprW, name: &str| ExprW(e.0.clone().alias(name)));
    engine.register_fn("cast", |e: &mut ExprW, t: &str| -> RhaiResult<ExprW> { Ok(ExprW(e.0.clone().cast(dtype(t)?))) });
    engine.register_fn("to_string", |e: &mut ExprW| format!("{:?}", e.0));
    engine.register_fn("to_debug", |e: &mut ExprW| format!("{:?}", e.0));

    // Operators: Expr with Expr or a literal, on either side.
    macro_rules! binary {
        ($($op:literal => $f:expr),* $(,)?) => {$(
            engine.register_fn($op, |a: ExprW, b: ExprW| ExprW(($f)(a.0, b.0)));
            engine.register_fn($op, |a: ExprW, b: i64| ExprW(($f)(a.0, pl::lit(b))));
            engine.register_fn($op, |a: ExprW, b: f64| ExprW(($f)(a.0, pl::lit(b))));
            engine.register_fn($op, |a: ExprW, b: ImmutableString| ExprW(($f)(a.0, pl::lit(b.to_string()))));
            engine.register_fn($op, |a: ExprW, b: bool| ExprW(($f)(a.0, pl::lit(b))));
            engine.register_fn($op, |a: i64, b: ExprW| ExprW(($f)(pl::lit(a), b.0)));
            engine.register_fn($op, |a: f64, b: ExprW| ExprW(($f)(pl::lit(a), b.0)));
        )*};
    }
    binary! {
        "+" => |a: Expr, b: Expr| a + b,
        "-" => |a: Expr, b: Expr| a - b,
        "*" => |a: Expr, b: Expr| a * b,
        "/" => |a: Expr, b: Expr| a / b,
        "==" => |a: Expr, b: Expr| a.eq(b),
        "!=" => |a: Expr, b: Expr| a.neq(b),
        ">" => |a: Expr, b: Expr| a.gt(b),
        ">=" => |a: Expr, b: Expr| a.gt_eq(b),
        "<" => |a: Expr, b: Expr| a.lt(b),
        "<=" => |a: Expr, b: Expr| a.lt_eq(b),
        "&" => |a: Expr, b: Expr| a.and(b),
        "|" => |a: Expr, b: Expr| a.or(b),
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
    engine.register_fn("line_chart", chart("line"));
    engine.register_fn("bar_chart", chart("bar"));
    engine.register_fn("heatmap", chart("heatmap"));
    let out = ctx.out.clone();
    let out2 = out.clone();
    engine.register_fn("write_html", move |c: &mut Chart, name: &str| write_chart_html(&out2, c, name, false));
    // `#{ standalone: true }`: one self-contained page, plotly.js inlined.
    engine.register_fn("write_html", move |c: &mut Chart, name: &str, opts: Map| -> RhaiResult<()> {
        let o: HtmlOptions = options(opts)?;
        write_chart_html(&out, c, name, o.standalone)
    });
    engine.register_fn("to_string", |c: &mut Chart| format!("Chart({})", c.title));
}
