//! Turn cotlab values into frames: a corpus with its per-rationale measures, a dataset, the
//! catalog. These are the tables scripts start their analysis from.

use crate::answer::{extract_answer, judge};
use crate::cot::measure;
use crate::data::{Catalog, Corpus, Dataset, Task};
use crate::error::Result;
use crate::frame::{ColumnData, Frame};

/// One row per rationale: provenance, text, extracted answer, agreement with gold, and the
/// `cot::measure` numbers (words, steps, numbers, equations, verification).
pub fn corpus_frame(c: &Corpus) -> Result<Frame> {
    let n = c.len();
    let (mut extracted, mut agrees) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut words, mut steps, mut numbers, mut eqs, mut verif) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for r in &c.rationales {
        // Without a gold answer there is nothing to agree with: agreement is unknown, not false.
        let kind = r.origin.task.kind();
        let (x, agree) = match &r.gold {
            Some(g) => {
                let j = judge(&r.text, g, kind);
                (j.extracted, Some(j.correct))
            }
            None => (extract_answer(&r.text, kind), None),
        };
        agrees.push(agree);
        extracted.push(x);
        let m = measure(&r.text);
        words.push(Some(m.words as i64));
        steps.push(Some(m.steps as i64));
        numbers.push(Some(m.numbers as i64));
        eqs.push(Some(m.equations as i64));
        verif.push(Some(m.has_verification));
    }
    // Per rationale, from its origin: a mixture's rows keep their own teacher, level and file.
    let origin = |f: &dyn Fn(&crate::data::Origin) -> Option<String>| ColumnData::Str(c.rationales.iter().map(|r| f(&r.origin)).collect());
    Frame::from_columns(vec![
        ("id".into(), ColumnData::Str(c.rationales.iter().map(|r| Some(r.id.clone())).collect())),
        ("dataset".into(), origin(&|o| Some(o.task.name().into()))),
        ("teacher".into(), origin(&|o| Some(o.teacher.clone().unwrap_or_else(|| "none".into())))),
        ("level".into(), ColumnData::Int(c.rationales.iter().map(|r| r.origin.level.map(|l| l as i64)).collect())),
        ("format".into(), origin(&|o| Some(o.format.name().into()))),
        ("source".into(), origin(&|o| Some(o.source.clone()))),
        ("row".into(), ColumnData::Int(c.rationales.iter().map(|r| Some(r.origin.row as i64)).collect())),
        ("question".into(), ColumnData::Str(c.rationales.iter().map(|r| Some(r.question.clone())).collect())),
        ("gold".into(), ColumnData::Str(c.rationales.iter().map(|r| r.gold.clone()).collect())),
        ("rationale".into(), ColumnData::Str(c.rationales.iter().map(|r| Some(r.text.clone())).collect())),
        ("extracted".into(), ColumnData::Str(extracted)),
        ("agrees".into(), ColumnData::Bool(agrees)),
        ("words".into(), ColumnData::Int(words)),
        ("steps".into(), ColumnData::Int(steps)),
        ("numbers".into(), ColumnData::Int(numbers)),
        ("equations".into(), ColumnData::Int(eqs)),
        ("has_verification".into(), ColumnData::Bool(verif)),
    ])
}

pub fn dataset_frame(d: &Dataset) -> Result<Frame> {
    Frame::from_columns(vec![
        ("id".into(), ColumnData::Str(d.examples.iter().map(|e| Some(e.id.clone())).collect())),
        ("question".into(), ColumnData::Str(d.examples.iter().map(|e| Some(e.question.clone())).collect())),
        ("answer".into(), ColumnData::Str(d.examples.iter().map(|e| Some(e.answer.clone())).collect())),
        ("kind".into(), ColumnData::Str(d.examples.iter().map(|e| Some(e.kind.name().to_string())).collect())),
        ("n_choices".into(), ColumnData::Int(d.examples.iter().map(|e| Some(e.choices.len() as i64)).collect())),
    ])
}

/// Every release file for `task` (all tasks when None), and whether the data dir has it.
pub fn catalog_frame(cat: &Catalog, task: Option<Task>) -> Result<Frame> {
    let entries: Vec<_> = cat.entries.iter().filter(|e| task.is_none_or(|t| e.task == t)).collect();
    Frame::from_columns(vec![
        ("dataset".into(), ColumnData::Str(entries.iter().map(|e| Some(e.task.name().into())).collect())),
        ("teacher".into(), ColumnData::Str(entries.iter().map(|e| e.teacher.map(|t| t.name().into())).collect())),
        ("level".into(), ColumnData::Int(entries.iter().map(|e| e.level.map(|l| l as i64)).collect())),
        ("format".into(), ColumnData::Str(entries.iter().map(|e| Some(e.format.name().into())).collect())),
        ("file".into(), ColumnData::Str(entries.iter().map(|e| Some(e.file.clone())).collect())),
        ("present".into(), ColumnData::Bool(entries.iter().map(|e| Some(cat.present(e))).collect())),
    ])
}
