//! The student-adaptive strategy: choose the rationale granularity for *this* student instead of
//! fixing one level for all. The paper proposes it without a recipe; this is ours, as three
//! point options (`select`), each compared with the fixed levels in the same sweep:
//!
//! * **`pilot`** (per student): a short SFT run per candidate level on `pilot_n` rationales,
//!   each evaluated on the same `pilot_eval_n` held-out *training* questions (never the test
//!   set); the level with the best held-out accuracy wins (ties: the coarser level, which costs
//!   fewer tokens to generate), and the point then trains exactly what the fixed point of that
//!   level trains. The pilot table is `pilot.csv` in the point dir.
//! * **`min_loss`** (per example): the base student's mean NLL per response token on every
//!   candidate rationale of a question; each question keeps the one it finds most learnable
//!   (lowest NLL; ties: the coarser level).
//! * **`softmin`** (a mixture): per question, a rationale drawn with probability
//!   ∝ exp(−(NLL − min NLL) / `select_temperature`): mostly the easiest, sometimes another.
//!
//! The per-example choices are `selection.csv` in the point dir (question, every candidate's
//! NLL, the level kept). `selected_level` in the results is the pilot's pick, or the mean level
//! kept per question.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use super::point::{PointConfig, Strategy, StrategyConfig};
use crate::data::{Catalog, Corpus, Dataset, Example, Rationale, RationaleQuery, Task};
use crate::error::Result;
use crate::eval::run::evaluate;
use crate::frame::{ColumnData, Frame};
use crate::lab::Workspace;
use crate::model::Student;
use crate::rng::{fnv1a, Rng, FNV_OFFSET};
use crate::train::data::tokenize;
use crate::train::sft::{response_nll, sft};
use crate::train::{RunDir, SftOptions};
use crate::usage;

/// What a strategy decided, for the point's record and its metrics.
pub struct Decision {
    /// The training corpus.
    pub corpus: Corpus,
    /// The pilot's level, or the mean level kept per question.
    pub selected_level: f64,
    /// `point.json`'s `strategy` entry: the pick, the pilot table or the level counts.
    pub record: Value,
}

/// A question's key across corpora: its text with whitespace collapsed.
fn question_key(q: &str) -> String {
    q.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The questions of `corpora` (first-seen order), with each candidate's rationale index.
fn by_question(corpora: &[Corpus]) -> (Vec<String>, HashMap<String, Vec<Option<usize>>>) {
    let mut order = Vec::new();
    let mut table: HashMap<String, Vec<Option<usize>>> = HashMap::new();
    for (c, corpus) in corpora.iter().enumerate() {
        for (i, r) in corpus.rationales.iter().enumerate() {
            let k = question_key(&r.question);
            let row = table.entry(k.clone()).or_insert_with(|| {
                order.push(k.clone());
                vec![None; corpora.len()]
            });
            // A question repeated in one file keeps its first rationale.
            row[c].get_or_insert(i);
        }
    }
    (order, table)
}

/// Uniform in [0, 1).
fn uniform(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The candidate corpora of a point, whole (the strategy subsets them itself).
fn candidates(r: &PointConfig, catalog: &Catalog) -> Result<Vec<Corpus>> {
    r.parts
        .iter()
        .map(|(ds, q, _)| {
            // A release corpus whole (the fixed point's subset is `train_n` of it); generated
            // arith already has the point's problems.
            let whole = if Task::parse(ds).is_ok_and(|t| t == Task::Arith) { q.clone() } else { RationaleQuery { limit: None, seed: None, ..q.clone() } };
            catalog.rationales(ds, &whole)
        })
        .collect()
}

fn level_of(c: &Corpus) -> u8 {
    c.level.unwrap_or(0)
}

/// `min_loss` / `softmin`: the training corpus chosen by `base`, the point's untrained student.
pub fn by_loss(ws: &Workspace, r: &PointConfig, s: &StrategyConfig, base: &Student, dir: &Path) -> Result<Decision> {
    let cands = candidates(r, &Catalog::new(ws.data_dir.clone()))?;
    per_example(r, s, &cands, base, dir)
}

/// `min_loss` / `softmin`: one rationale per question, chosen by the base student's NLL.
fn per_example(r: &PointConfig, s: &StrategyConfig, cands: &[Corpus], base: &Student, dir: &Path) -> Result<Decision> {
    let (mut questions, table) = by_question(cands);
    // The same seeded subset of questions whatever the strategy (`train_n`, `train_seed`).
    Rng::new(r.train_seed).shuffle(&mut questions);
    if let Some(n) = r.mix_n {
        questions.truncate(n);
    }
    let max_len = r.sft.max_len;
    let batch = r.sft.batch_size.max(1);
    // Score every (question, candidate) pair that exists; tokenized one by one so a prompt that
    // fills max_len drops only its own pair.
    let mut nll: Vec<Vec<Option<f64>>> = vec![vec![None; cands.len()]; questions.len()];
    for (c, corpus) in cands.iter().enumerate() {
        let mut examples = Vec::new();
        let mut rows = Vec::new();
        for (qi, q) in questions.iter().enumerate() {
            if let Some(i) = table[q][c] {
                let rat = &corpus.rationales[i];
                let t = tokenize(&base.tokenizer, &base.template, &[(rat.question.clone(), rat.text.clone())], max_len)?;
                if let Some(e) = t.examples.into_iter().next() {
                    examples.push(e);
                    rows.push(qi);
                }
            }
        }
        eprintln!("[select {}] scoring {} level-{} rationales with the base student", s.strategy.name(), examples.len(), level_of(corpus));
        let losses = response_nll(base, &examples, batch)?;
        for (qi, l) in rows.into_iter().zip(losses) {
            if l.is_finite() {
                nll[qi][c] = Some(l);
            }
        }
    }
    let mut rng = Rng::new(fnv1a(r.train_seed, *b"softmin"));
    let mut chosen: Vec<Rationale> = Vec::new();
    let mut counts = vec![0usize; cands.len()];
    let mut cols: Vec<Vec<Option<f64>>> = vec![Vec::new(); cands.len()];
    let (mut q_col, mut kept_col) = (Vec::new(), Vec::new());
    for (qi, q) in questions.iter().enumerate() {
        let scored: Vec<(usize, f64)> = nll[qi].iter().enumerate().filter_map(|(c, l)| l.map(|l| (c, l))).collect();
        let Some(&(_, best)) = scored.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else { continue };
        let pick = match s.strategy {
            // The first minimum: candidates are in level order, so ties go to the coarser.
            Strategy::MinLoss => scored.iter().find(|(_, l)| *l == best).map(|(c, _)| *c).expect("a minimum"),
            _ => {
                let w: Vec<f64> = scored.iter().map(|(_, l)| (-(l - best) / s.temperature).exp()).collect();
                let mut u = uniform(&mut rng) * w.iter().sum::<f64>();
                let mut pick = scored.last().expect("scored").0;
                for ((c, _), wi) in scored.iter().zip(&w) {
                    if u < *wi {
                        pick = *c;
                        break;
                    }
                    u -= wi;
                }
                pick
            }
        };
        counts[pick] += 1;
        chosen.push(cands[pick].rationales[table[q][pick].expect("scored candidates exist")].clone());
        q_col.push(Some(q.clone()));
        kept_col.push(Some(level_of(&cands[pick]) as i64));
        for (c, col) in cols.iter_mut().enumerate() {
            col.push(nll[qi][c]);
        }
    }
    if chosen.is_empty() {
        return Err(usage!("select {}: no question has a rationale the student could score (all prompts longer than max_len {max_len}?)", s.strategy.name()));
    }
    let mut frame_cols = vec![("question".to_string(), ColumnData::Str(q_col)), ("level".to_string(), ColumnData::Int(kept_col))];
    for (c, col) in cols.into_iter().enumerate() {
        frame_cols.push((format!("nll_level_{}", level_of(&cands[c])), ColumnData::Float(col)));
    }
    Frame::from_columns(frame_cols)?.write_csv(&dir.join("selection.csv"))?;
    let total: usize = counts.iter().sum();
    let mean = counts.iter().zip(cands).map(|(n, c)| *n as f64 * level_of(c) as f64).sum::<f64>() / total as f64;
    let levels: Vec<String> = s.levels.iter().map(|l| l.to_string()).collect();
    let how = match s.strategy {
        Strategy::MinLoss => "min_loss".to_string(),
        _ => format!("softmin T={}", s.temperature),
    };
    let recipe = format!("select({how} by {} over levels {}; n={}, seed={})", base.source.display(), levels.join(","), chosen.len(), r.train_seed);
    let corpus = Corpus::picked(cands, chosen, recipe)?;
    let mut kept = Map::new();
    for (n, c) in counts.iter().zip(cands) {
        kept.insert(format!("level_{}", level_of(c)), (*n).into());
    }
    let record = serde_json::json!({ "select": s.strategy, "levels": s.levels, "temperature": s.temperature, "kept": kept, "mean_level": mean });
    eprintln!("[select {}] kept per level: {}", s.strategy.name(), serde_json::to_string(&kept).unwrap_or_default());
    Ok(Decision { corpus, selected_level: mean, record })
}

/// One pilot run's outcome.
#[derive(Clone, Debug, Serialize)]
struct PilotRow {
    level: u8,
    train_n: usize,
    heldout_n: usize,
    accuracy: f64,
    ci95_low: f64,
    ci95_high: f64,
    mean_tokens: f64,
    train_loss_last: Option<f64>,
}

/// `pilot`: train briefly on each candidate level (a fresh student each, loaded and dropped in
/// turn), evaluate on held-out training questions, keep the best level; the corpus returned is
/// that level's as the fixed-level point reads it.
pub fn pilot(ws: &Workspace, r: &PointConfig, s: &StrategyConfig, dir: &Path) -> Result<Decision> {
    let catalog = &Catalog::new(ws.data_dir.clone());
    let cands = &candidates(r, catalog)?;
    let (questions, table) = by_question(cands);
    // The held-out questions: the same for every level (the smallest seeded hashes among the
    // questions with a gold answer), so pilots compare on one set.
    let gold = |q: &String| table[q].iter().enumerate().find_map(|(c, i)| i.and_then(|i| cands[c].rationales[i].gold.clone()));
    let mut ranked: Vec<(u64, &String, String)> =
        questions.iter().filter_map(|q| gold(q).map(|g| (fnv1a(fnv1a(FNV_OFFSET, r.train_seed.to_le_bytes()), q.bytes()), q, g))).collect();
    ranked.sort();
    ranked.truncate(s.pilot_eval_n);
    if ranked.is_empty() {
        return Err(usage!(
            "select pilot: the candidates have {} questions with a gold answer; the pilot needs pilot_eval_n = {} held out",
            ranked.len(),
            s.pilot_eval_n
        ));
    }
    let heldout: std::collections::HashSet<&String> = ranked.iter().map(|(_, q, _)| *q).collect();
    // Candidate levels are the release's: a user corpus has none (the point refuses `select` with `corpus`).
    let task = cands[0].task.task().ok_or_else(|| usage!("select pilot: the candidates are not a release dataset's rationales"))?;
    let examples: Vec<Example> = ranked
        .iter()
        .enumerate()
        .map(|(i, (_, q, g))| Example {
            id: format!("{}-pilot-{i}", task.name()),
            question: (*q).clone(),
            choices: Vec::new(),
            answer: g.clone(),
            kind: task.kind(),
        })
        .collect();
    let ds = Dataset { name: task.name().into(), split: "pilot-heldout".into(), task, subset: Some((examples.len(), Some(r.train_seed))), examples };
    let mut rows = Vec::new();
    for corpus in cands {
        let level = level_of(corpus);
        let mut train = corpus.clone();
        train.rationales.retain(|x| !heldout.contains(&question_key(&x.question)));
        if train.is_empty() {
            return Err(usage!("select pilot: level {level} has no rationales left after holding out {} questions", ds.len()));
        }
        let train = train.sample(s.pilot_n.min(train.len()), r.train_seed)?;
        let pdir = dir.join("pilot").join(format!("level-{level}"));
        // Pilots are scaffolding, not results: they are not logged (`log_to`).
        let opts = SftOptions { max_steps: Some(s.pilot_steps), save_every: s.pilot_steps, log_to: Default::default(), ..r.sft.clone() };
        eprintln!("[select pilot] level {level}: {} steps on {} rationales, then {} held-out questions", s.pilot_steps, train.len(), ds.len());
        let student = ws.student(&r.student, &r.student_opts)?;
        let run = RunDir::new(&pdir);
        sft(&student, &train, &opts, &run, None)?;
        drop(student);
        let summary = run.summary()?;
        let trained = ws.student(&pdir.display().to_string(), &r.student_opts)?;
        let e = evaluate(&trained, &ds, &r.eval, &pdir.join(crate::results::runs::EVAL_DIR))?;
        // The pilot's weights stay (a re-run skips its training); its moments never serve again.
        run.drop_optimizer_state()?;
        rows.push(PilotRow {
            level,
            train_n: train.len(),
            heldout_n: e.n,
            accuracy: e.accuracy,
            ci95_low: e.ci95_low,
            ci95_high: e.ci95_high,
            mean_tokens: e.mean_tokens,
            train_loss_last: summary.loss_last,
        });
    }
    // Best accuracy; rows are in level order and `max_by` keeps the last maximum, so compare
    // reversed to keep the first (the coarser level).
    let best = rows.iter().rev().max_by(|a, b| a.accuracy.total_cmp(&b.accuracy)).expect("a pilot row").level;
    let pick = s.levels.iter().position(|&l| l.get() == best).expect("a candidate level");
    let pilot_frame = Frame::from_columns(vec![
        ("level".into(), ColumnData::Int(rows.iter().map(|x| Some(x.level as i64)).collect())),
        ("train_n".into(), ColumnData::Int(rows.iter().map(|x| Some(x.train_n as i64)).collect())),
        ("heldout_n".into(), ColumnData::Int(rows.iter().map(|x| Some(x.heldout_n as i64)).collect())),
        ("accuracy".into(), ColumnData::Float(rows.iter().map(|x| Some(x.accuracy)).collect())),
        ("ci95_low".into(), ColumnData::Float(rows.iter().map(|x| Some(x.ci95_low)).collect())),
        ("ci95_high".into(), ColumnData::Float(rows.iter().map(|x| Some(x.ci95_high)).collect())),
        ("mean_tokens".into(), ColumnData::Float(rows.iter().map(|x| Some(x.mean_tokens)).collect())),
        ("train_loss_last".into(), ColumnData::Float(rows.iter().map(|x| x.train_loss_last).collect())),
        ("chosen".into(), ColumnData::Bool(rows.iter().map(|x| Some(x.level == best)).collect())),
    ])?;
    pilot_frame.write_csv(&dir.join("pilot.csv"))?;
    eprintln!("[select pilot] chose level {best}:\n{pilot_frame}");
    // The chosen level's corpus exactly as the fixed-level point has it.
    let (ds_name, q, _) = &r.parts[pick];
    let corpus = catalog.rationales(ds_name, q)?;
    let record = serde_json::json!({ "select": s.strategy, "levels": s.levels, "chosen": best, "pilot": rows });
    Ok(Decision { corpus, selected_level: best as f64, record })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_matched_across_corpora() {
        let task = Task::Arith;
        let corpus = |level: u8, qs: &[&str]| Corpus {
            task: task.into(),
            teacher: None,
            level: Some(level),
            format: crate::cot::Format::Plain,
            source: "generated".into(),
            rationales: qs
                .iter()
                .enumerate()
                .map(|(i, q)| Rationale {
                    id: format!("{i}"),
                    question: q.to_string(),
                    gold: Some("1".into()),
                    text: format!("level {level}"),
                    origin: crate::data::Origin {
                        task: task.into(),
                        teacher: None,
                        level: Some(level),
                        format: crate::cot::Format::Plain,
                        source: "generated".into(),
                        row: i,
                    },
                })
                .collect(),
            skipped: 0,
            recipe: None,
        };
        let (order, table) = by_question(&[corpus(1, &["a  b", "c"]), corpus(2, &["c", "a b", "d"])]);
        assert_eq!(order, vec!["a b", "c", "d"]);
        assert_eq!(table["a b"], vec![Some(0), Some(1)]);
        assert_eq!(table["d"], vec![None, Some(2)]);
    }
}
