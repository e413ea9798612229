//! `Frame`: a thin wrapper over a polars `DataFrame` with the operations result analysis needs
//! (group/aggregate, filter, sort, pivot, concat, CSV/parquet), each returning cotlab errors
//! that say which operation failed; and `chart`, plotly charts drawn from frames. A base module
//! rather than part of `results`, because teachers and evaluation write frames too.

pub mod chart;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use polars::prelude::*;

use crate::error::{Error, FrameContext, Result};
use crate::usage;

pub use chart::{Chart, ChartSpec};

#[derive(Clone, Debug)]
pub struct Frame(pub DataFrame);

crate::choices! {
    /// How [`Frame::pivot`] combines the values that land in one cell.
    #[derive(Default)]
    pub enum Agg("agg") {
        #[default]
        First = "first",
        Mean = "mean",
        Sum = "sum",
        Min = "min",
        Max = "max",
        Count = "count",
    }
}

/// The first CSV record whose field count differs from the header's: (line, fields, header
/// fields). Quotes are respected, including newlines inside quoted values.
fn ragged_csv_row(text: &str) -> Option<(usize, usize, usize)> {
    // (fields so far, inside quotes, current line, line the record started on, record is empty)
    let (mut fields, mut quoted, mut line, mut start, mut empty) = (1, false, 1, 1, true);
    let mut want = None;
    let mut end_record = |fields: usize, start: usize, empty: bool| -> Option<(usize, usize, usize)> {
        match want {
            _ if empty => None, // blank lines are skipped by the reader
            None => {
                want = Some(fields);
                None
            }
            Some(w) if fields != w => Some((start, fields, w)),
            _ => None,
        }
    };
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
            }
            '"' => {
                quoted = !quoted;
                empty = false;
            }
            ',' if !quoted => {
                fields += 1;
                empty = false;
            }
            '\n' => {
                line += 1;
                if quoted {
                    continue;
                }
                if let Some(bad) = end_record(fields, start, empty) {
                    return Some(bad);
                }
                (fields, start, empty) = (1, line, true);
            }
            '\r' => {}
            _ => empty = false,
        }
    }
    end_record(fields, start, empty)
}

#[cfg(test)]
mod csv_tests {
    #[test]
    fn ragged_rows_are_found_with_their_line() {
        assert_eq!(super::ragged_csv_row("a,b\n1,2\n3\n"), Some((3, 1, 2)));
        assert_eq!(super::ragged_csv_row("a,b\n\"x,\ny\",2\n1,2,3"), Some((4, 3, 2)));
        assert_eq!(super::ragged_csv_row("a,b\n1,2\n\n3,4\n"), None);
    }
}

/// Column data for building a frame from Rust values.
#[derive(Clone, Debug)]
pub enum ColumnData {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Str(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
}

impl ColumnData {
    fn into_column(self, name: String) -> Column {
        match self {
            ColumnData::Int(v) => Column::new(name.into(), v),
            ColumnData::Float(v) => Column::new(name.into(), v),
            ColumnData::Str(v) => Column::new(name.into(), v),
            ColumnData::Bool(v) => Column::new(name.into(), v),
        }
    }

    fn len(&self) -> usize {
        match self {
            ColumnData::Int(v) => v.len(),
            ColumnData::Float(v) => v.len(),
            ColumnData::Str(v) => v.len(),
            ColumnData::Bool(v) => v.len(),
        }
    }
}

/// One cell, in a form other layers (Rhai, JSON) can take.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Null => f.write_str("null"),
            Cell::Bool(b) => write!(f, "{b}"),
            Cell::Int(i) => write!(f, "{i}"),
            Cell::Float(x) => write!(f, "{x}"),
            Cell::Str(s) => f.write_str(s),
        }
    }
}

impl Frame {
    pub fn from_columns(cols: Vec<(String, ColumnData)>) -> Result<Frame> {
        if let Some((first, data)) = cols.first() {
            for (name, d) in &cols {
                if d.len() != data.len() {
                    return Err(usage!("columns must have equal lengths: '{first}' has {} values, '{name}' has {}", data.len(), d.len()));
                }
            }
        }
        let columns: Vec<Column> = cols.into_iter().map(|(name, d)| d.into_column(name)).collect();
        Ok(Frame(DataFrame::new_infer_height(columns).frame_ctx("building a DataFrame")?))
    }

    /// The frame with `cols` added at the end (a column of the same name is replaced in place).
    pub fn with_added_columns(&self, cols: Vec<(String, ColumnData)>) -> Result<Frame> {
        let mut df = self.0.clone();
        for (name, d) in cols {
            if d.len() != df.height() {
                return Err(usage!("column '{name}' has {} values, the frame {} rows", d.len(), df.height()));
            }
            df.with_column(d.into_column(name)).frame_ctx("adding a column")?;
        }
        Ok(Frame(df))
    }

    pub fn height(&self) -> usize {
        self.0.height()
    }

    pub fn width(&self) -> usize {
        self.0.width()
    }

    pub fn columns(&self) -> Vec<String> {
        self.0.get_column_names().iter().map(|s| s.to_string()).collect()
    }

    fn lazy(&self) -> LazyFrame {
        self.0.clone().lazy()
    }

    fn check_columns(&self, names: &[String], op: &str) -> Result<()> {
        let have = self.columns();
        for n in names {
            if !have.contains(n) {
                return Err(usage!("{op}: no column '{n}' (columns: {})", have.join(", ")));
            }
        }
        Ok(())
    }

    /// Group by `keys` (first-appearance order kept) and aggregate.
    pub fn group_by(&self, keys: &[String], aggs: Vec<Expr>) -> Result<Frame> {
        self.check_columns(keys, "group_by")?;
        let by: Vec<Expr> = keys.iter().map(|k| col(k.as_str())).collect();
        let df = self.lazy().group_by_stable(by).agg(aggs).collect().frame_ctx("group_by/agg")?;
        Ok(Frame(df))
    }

    pub fn filter(&self, predicate: Expr) -> Result<Frame> {
        Ok(Frame(self.lazy().filter(predicate).collect().frame_ctx("filter")?))
    }

    pub fn select(&self, exprs: Vec<Expr>) -> Result<Frame> {
        Ok(Frame(self.lazy().select(exprs).collect().frame_ctx("select")?))
    }

    pub fn with_columns(&self, exprs: Vec<Expr>) -> Result<Frame> {
        Ok(Frame(self.lazy().with_columns(exprs).collect().frame_ctx("with_columns")?))
    }

    /// Stable sort by one or more columns; nulls last.
    pub fn sort(&self, by: &[String], descending: bool) -> Result<Frame> {
        self.check_columns(by, "sort")?;
        let names: Vec<PlSmallStr> = by.iter().map(|s| s.as_str().into()).collect();
        let opts = SortMultipleOptions::default().with_order_descending(descending).with_nulls_last(true).with_maintain_order(true);
        Ok(Frame(self.lazy().sort(names, opts).collect().frame_ctx("sort")?))
    }

    pub fn head(&self, n: usize) -> Frame {
        Frame(self.0.head(Some(n)))
    }

    /// Long → wide: one row per `index` combination, one column per distinct value of `on`,
    /// cells aggregated from `values` with `agg`.
    pub fn pivot(&self, index: &[String], on: &str, values: &str, agg: Agg) -> Result<Frame> {
        let mut all = index.to_vec();
        all.push(on.to_string());
        all.push(values.to_string());
        self.check_columns(&all, "pivot")?;
        let agg_expr = match agg {
            Agg::First => element().first(),
            Agg::Mean => element().mean(),
            Agg::Sum => element().sum(),
            Agg::Min => element().min(),
            Agg::Max => element().max(),
            Agg::Count => element().count(),
        };
        let on_values = self.0.column(on).frame_ctx("pivot")?.as_materialized_series().unique_stable().frame_ctx("pivot: distinct values")?;
        let on_df = DataFrame::new_infer_height(vec![on_values.into_column()]).frame_ctx("pivot")?;
        let df = self
            .lazy()
            .pivot(
                cols([on]),
                Arc::new(on_df),
                cols(index.iter().map(|s| s.as_str())),
                cols([values]),
                agg_expr,
                true,
                "_".into(),
                polars::frame::PivotColumnNaming::Auto,
            )
            .collect()
            .frame_ctx("pivot")?;
        Ok(Frame(df))
    }

    /// Stack frames vertically; columns are matched by name.
    pub fn concat(frames: &[Frame]) -> Result<Frame> {
        if frames.is_empty() {
            return Err(usage!("concat: no frames given"));
        }
        let lfs: Vec<LazyFrame> = frames.iter().map(|f| f.lazy()).collect();
        let df = concat(lfs, UnionArgs::default()).frame_ctx("concat")?.collect().frame_ctx("concat")?;
        Ok(Frame(df))
    }

    pub fn cell(&self, row: usize, column: &str) -> Result<Cell> {
        let c = self.0.column(column).map_err(|_| usage!("no column '{column}' (columns: {})", self.columns().join(", ")))?;
        if row >= c.len() {
            return Err(usage!("row {row} out of range: the frame has {} rows", c.len()));
        }
        let v = c.get(row).frame_ctx("reading a cell")?;
        Ok(match v {
            AnyValue::Null => Cell::Null,
            AnyValue::Boolean(b) => Cell::Bool(b),
            AnyValue::String(s) => Cell::Str(s.to_string()),
            AnyValue::StringOwned(s) => Cell::Str(s.to_string()),
            AnyValue::Int8(x) => Cell::Int(x as i64),
            AnyValue::Int16(x) => Cell::Int(x as i64),
            AnyValue::Int32(x) => Cell::Int(x as i64),
            AnyValue::Int64(x) => Cell::Int(x),
            AnyValue::UInt8(x) => Cell::Int(x as i64),
            AnyValue::UInt16(x) => Cell::Int(x as i64),
            AnyValue::UInt32(x) => Cell::Int(x as i64),
            AnyValue::UInt64(x) => Cell::Int(x as i64),
            AnyValue::Float32(x) => Cell::Float(x as f64),
            AnyValue::Float64(x) => Cell::Float(x),
            other => Cell::Str(other.to_string()),
        })
    }

    pub fn column_cells(&self, column: &str) -> Result<Vec<Cell>> {
        (0..self.height()).map(|r| self.cell(r, column)).collect()
    }

    /// The polars table, with enough rows and string width to read a report.
    pub fn to_table_string(&self) -> String {
        // polars reads its display limits from the environment.
        std::env::set_var("POLARS_FMT_MAX_ROWS", "60");
        std::env::set_var("POLARS_FMT_MAX_COLS", "30");
        std::env::set_var("POLARS_FMT_STR_LEN", "48");
        std::env::set_var("POLARS_TABLE_WIDTH", "160");
        format!("{}", self.0)
    }

    /// An HTML table (for notebooks and reports).
    pub fn to_html(&self, max_rows: usize) -> String {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let cols = self.columns();
        let mut h = String::from("<table class=\"cotlab-frame\">\n<thead><tr>");
        for c in &cols {
            h.push_str(&format!("<th>{}</th>", esc(c)));
        }
        h.push_str("</tr></thead>\n<tbody>\n");
        for r in 0..self.height().min(max_rows) {
            h.push_str("<tr>");
            for c in &cols {
                let cell = match self.cell(r, c) {
                    Ok(Cell::Null) => String::new(),
                    Ok(Cell::Bool(b)) => b.to_string(),
                    Ok(Cell::Int(i)) => i.to_string(),
                    Ok(Cell::Float(x)) => format!("{x:.4}").trim_end_matches('0').trim_end_matches('.').to_string(),
                    Ok(Cell::Str(s)) => s,
                    Err(_) => String::new(),
                };
                h.push_str(&format!("<td>{}</td>", esc(&cell)));
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</tbody></table>");
        if self.height() > max_rows {
            h.push_str(&format!("\n<p>{} of {} rows shown</p>", max_rows, self.height()));
        }
        h
    }

    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let mut f = crate::paths::create(path)?;
        let mut df = self.0.clone();
        CsvWriter::new(&mut f).finish(&mut df).frame_ctx(format!("writing {}", path.display()))
    }

    pub fn write_parquet(&self, path: &Path) -> Result<()> {
        let f = crate::paths::create(path)?;
        let mut df = self.0.clone();
        ParquetWriter::new(f).finish(&mut df).frame_ctx(format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn read_csv(path: &Path) -> Result<Frame> {
        if !path.exists() {
            return Err(Error::data(path, "file not found"));
        }
        let f = open_checked(path)?;
        let read = CsvReadOptions::default().with_has_header(true).into_reader_with_file_handle(f).finish();
        match read {
            Ok(df) => Ok(Frame(df)),
            // polars does not say which row is ragged; find it, so the user can fix that line.
            Err(e) => match crate::paths::read_text(path).ok().and_then(|t| ragged_csv_row(&t)) {
                Some((line, got, want)) => Err(Error::data(
                    path,
                    format!("line {line}: {got} fields, the header has {want} (a missing or extra comma, or an unquoted comma in a value?)"),
                )),
                None => Err(e).frame_ctx(format!("reading {}", path.display())),
            },
        }
    }

    /// JSON lines (one object per line: training logs, eval samples, teacher runs) as a frame.
    /// A column is integer if every value is, float if every value is a number, bool or string
    /// likewise; nested values and mixed columns become JSON text; missing keys are nulls.
    pub fn read_jsonl(path: &Path) -> Result<Frame> {
        let text = crate::paths::read_text(path)?;
        // A byte-order mark some editors write is not part of the first object.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        if text.trim().is_empty() {
            return Err(Error::data(path, "file is empty: expected JSON lines (one object per line)"));
        }
        let mut names: Vec<String> = Vec::new();
        // Column order is first appearance; the set keeps that linear in the number of keys.
        let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut rows: Vec<std::collections::HashMap<String, serde_json::Value>> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let obj: OrderedObject =
                serde_json::from_str(line).map_err(|e| Error::data(path, format!("line {}: {e} (expected one JSON object per line)", i + 1)))?;
            for (k, _) in &obj.0 {
                if known.insert(k.clone()) {
                    names.push(k.clone());
                }
            }
            rows.push(obj.0.into_iter().collect());
        }
        use serde_json::Value as J;
        let cols = names
            .into_iter()
            .map(|name| {
                let vals: Vec<Option<&J>> = rows.iter().map(|r| r.get(&name).filter(|v| !v.is_null())).collect();
                let all = |f: fn(&J) -> bool| vals.iter().flatten().all(|v| f(v));
                let data = if all(|v| v.is_i64()) {
                    ColumnData::Int(vals.iter().map(|v| v.and_then(J::as_i64)).collect())
                } else if all(|v| v.is_number()) {
                    ColumnData::Float(vals.iter().map(|v| v.and_then(J::as_f64)).collect())
                } else if all(|v| v.is_boolean()) {
                    ColumnData::Bool(vals.iter().map(|v| v.and_then(J::as_bool)).collect())
                } else {
                    ColumnData::Str(vals.iter().map(|v| v.map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))).collect())
                };
                (name, data)
            })
            .collect();
        Frame::from_columns(cols)
    }

    /// The frame as parquet bytes: a lossless hand-over between copies of polars (notebook cells).
    pub fn to_parquet_bytes(&self) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut df = self.0.clone();
        ParquetWriter::new(&mut buf).finish(&mut df).frame_ctx("writing parquet to memory")?;
        Ok(buf)
    }

    pub fn from_parquet_bytes(bytes: Vec<u8>) -> Result<Frame> {
        let df = ParquetReader::new(std::io::Cursor::new(bytes)).finish().frame_ctx("reading parquet from memory")?;
        Ok(Frame(df))
    }

    pub fn read_parquet(path: &Path) -> Result<Frame> {
        let f = open_checked(path)?;
        let df = ParquetReader::new(f).finish().frame_ctx(format!("reading {}", path.display()))?;
        Ok(Frame(df))
    }
}

/// A regular file within the path policy's size cap, opened for a polars reader.
fn open_checked(path: &Path) -> Result<File> {
    let (f, len) = crate::paths::open_regular(path)?;
    if len > crate::paths::MAX_READ_BYTES {
        return Err(Error::data(path, format!("is {len} bytes, more than cotlab reads into memory ({} bytes): split it", crate::paths::MAX_READ_BYTES)));
    }
    Ok(f)
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_table_string())
    }
}

/// A JSON object with its keys in file order (serde_json's map sorts them).
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> std::result::Result<OrderedObject, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = m.next_entry::<String, serde_json::Value>()? {
                    v.push(entry);
                }
                Ok(OrderedObject(v))
            }
        }
        d.deserialize_map(Visit)
    }
}
