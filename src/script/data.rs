//! Rhai bindings for data, CoT structure, extraction, contamination and scoring.

use std::path::PathBuf;

use rhai::{Array, Dynamic, Engine, Map};

use super::docs::{def, get, index};
use super::{options, rt, Context, RhaiResult};
use crate::answer::{extract_answer, judge};
use crate::cot::{measure, split_steps};
use crate::data::contamination;
use crate::data::formats::{self, CorpusFormat, CorpusOptions};
use crate::data::loaders::load_questions;
use crate::data::user::{load_user_file, load_user_frame, UserOptions};
use crate::data::{load_dataset, AnswerKind, Catalog, Corpus, Dataset, DatasetOptions, Example, RationaleQuery, Subject, Task};
use crate::eval::score_predictions;
use crate::lab::Workspace;
use crate::results::tables::{catalog_frame, corpus_frame, dataset_frame};
use crate::results::Frame;
use crate::usage;

fn example_map(e: &Example) -> Map {
    let mut m = Map::new();
    m.insert("id".into(), e.id.clone().into());
    m.insert("question".into(), e.question.clone().into());
    m.insert("choices".into(), e.choices.iter().map(|c| Dynamic::from(c.clone())).collect::<Array>().into());
    m.insert("answer".into(), e.answer.clone().into());
    m.insert("kind".into(), e.kind.name().into());
    m
}

fn opt_str(s: Option<String>) -> Dynamic {
    s.map(Dynamic::from).unwrap_or(Dynamic::UNIT)
}

/// Questions from a Dataset, a Corpus, an array of strings, or a file path.
fn questions(ws: &Workspace, v: Dynamic, what: &str) -> RhaiResult<Vec<String>> {
    if v.is::<Dataset>() {
        return Ok(v.cast::<Dataset>().examples.into_iter().map(|e| e.question).collect());
    }
    if v.is::<Corpus>() {
        return Ok(v.cast::<Corpus>().rationales.into_iter().map(|r| r.question).collect());
    }
    if v.is_string() {
        let p = PathBuf::from(v.into_string().unwrap());
        return load_questions(&ws.readable(&p, what).map_err(rt)?).map_err(rt);
    }
    if v.is_array() {
        return v
            .into_array()
            .unwrap()
            .into_iter()
            .map(|x| x.into_string().map_err(|t| rt(usage!("{what}: array items must be strings, found {t}"))))
            .collect();
    }
    Err(rt(usage!("{what}: expected a Dataset, a Corpus, an array of questions or a file path, found {}", v.type_name())))
}

/// A dataset of the release by name, else a user's test set file (sandbox-checked).
fn dataset_named(ws: &Workspace, name: &str, opts: Map) -> RhaiResult<Dataset> {
    if Task::parse(name).is_ok() {
        return load_dataset(&ws.data_dir, name, &options::<DatasetOptions>(opts)?).map_err(rt);
    }
    const RELEASE: &str = "svamp, gsm8k, aqua, math, csqa, obqa, strategyqa, arith";
    // A bare word is more likely a misspelt name than a file: say both readings.
    let bare = !name.contains(['/', '.']);
    let path = ws.readable(std::path::Path::new(name), "dataset").map_err(|e| {
        if bare {
            rt(usage!("dataset: '{name}' is not a dataset of the release ({RELEASE}); as a file: {e}"))
        } else {
            rt(e)
        }
    })?;
    if !path.exists() {
        return Err(rt(usage!("dataset: '{name}' is neither a dataset of the release ({RELEASE}) nor a file")));
    }
    load_user_file(&path, &options::<UserOptions>(opts)?).map_err(rt)
}

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ContaminationOptions {
    threshold: Option<f64>,
}

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ScoreOptions {
    split: Option<String>,
    protocol: crate::answer::Protocol,
}

pub(super) const INTRO: &str = "Names and splits: [data.md](data.md). Corpora combine as values (`concat`, `+`, `sample`, `mix`, `order`): \
see [below](#sweeps-results-and-corpora-as-values). The answer rules: [scoring.md](scoring.md).";

const DATASET: &str = r#"A dataset of the release (or the generated `arith`), as a `Dataset`.

Names and splits: [data.md](data.md). Options: `split`: `"test"` (default), `"train"` where the
release has one, `"all"` (SVAMP's 1000), `"full"` (MATH's 5000 instead of MATH-500); `seed`
shuffles before `limit` keeps the first `limit`; `arith` only: `n` problems generated (default
500, `1..=1000000`) from `seed`. An unknown option is an error with the script position.

```rhai
let ds = dataset("svamp", #{ split: "test", limit: 50, seed: 1 });
print(ds);   // Dataset(svamp test, 50 examples)
```

Anything else is a user's own test set: a file path (read roots apply) or a DataFrame, mapped by
the options `format` (`auto` default: from the extension, else the first bytes; `json`, `jsonl`,
`csv`, `parquet`), `question`, `answer`, `choices` (the columns: default the first of
question/problem/input/prompt/query/instruction, answer/label/target/answerKey/output/gold, and
choices/options if present; `choices` holds a list or a string), `kind` (`number`, `choice`,
`bool`, `latex`, `text`; default inferred from the answers and printed), `name` (default the
file's stem), `split` (a label, default `test`), `limit`, `seed`. Ids: the `id` column, else
`<name>-<row>`. The kind picks the scoring rule ([scoring.md](scoring.md)); questions with choices
are shown as `… Answer Choices: (A) x (B) y`. A missing column, rows without a question or
answer, answers not of the kind, duplicate ids or an empty file are errors.

```rhai
let mine = dataset("data/asdiv.jsonl", #{ question: "body", answer: "value", kind: "number" });
print(mine);   // Dataset(asdiv test, 2305 examples)
let frame_set = dataset(read_csv("quiz.csv"), #{ name: "quiz", choices: "options" });
```"#;

const RATIONALES: &str = r#"A `Corpus` of the release's rationales for dataset `name`.

Options: `teacher`: `gpt-4o` (default), `gemini`, `llama-3-70b`, `human`; `level` 1–6 (human
and answer-only take none); `format`: `plain` (default), `bsm`, `rar`, `sym`, `equation-only`,
`answer-only`; `seed` shuffles before `limit`. A combination the release lacks is an error
listing what it has. For `arith` the rule teacher writes them (`teacher: "rule"`, the default
there; formats plain, equation-only, answer-only; `level` required but for answer-only), for the
problems `dataset("arith", #{n, seed})` gives: `n` (500) and `seed` (1) pick the generated set,
`limit` keeps the first.

```rhai
let c = rationales("svamp", #{ teacher: "gpt-4o", level: 3, format: "sym" });
print(c.len());   // 699
```"#;

const CATALOG: &str = r#"The release's rationale files as a DataFrame: `dataset, teacher, level, format, file, present`
(`present`: whether the data dir has it); with `name`, only that dataset's.

```rhai
catalog("svamp").filter(col("present")).show();
```"#;

const CONTAMINATION: &str = r#"How many test questions also appear in the training questions.

`train`/`test`: a Dataset, a Corpus, an array of question strings, or a file path (read roots
apply). Option `threshold`: word-trigram Jaccard for `near` (default 0.8, `0..=1`). Returns
`#{n_train, n_test, exact, stem, near, contaminated, contaminated_pct, hits, summary}`; the three
kinds of match: [cli.md](cli.md) (`contamination`).

```rhai
let r = contamination(rationales("strategyqa", #{ level: 1 }), dataset("strategyqa"), #{ threshold: 0.9 });
print(r.summary);
```"#;

const SCORE: &str = r#"Score a JSON-lines file of `{id or question, prediction}` against dataset `task` (a
release name) or a `Dataset` (a user's own: `dataset(path, #{...})`), by the rule its kind picks; an eval dir
(cotlab's or lm-eval's) or its `samples_<task>_<timestamp>.jsonl` is read for its generated texts.

Options: `split` as in `dataset` (a name only); `protocol`: `"paper"` (default) or `"lenient"`
([scoring.md](scoring.md)). Returns `#{task, n, correct, accuracy, unparsed, test_size,
protocol, accuracy_paper, accuracy_lenient}`.

```rhai
let s = score_predictions("svamp", "preds.jsonl", #{ protocol: "lenient" });
print(s.accuracy);
```"#;

const COARSEN: &str = r#"Post-hoc granularity: adjacent steps merged into `steps` groups (at least 1), keeping the
calculations and the final answer. On a Corpus, every rationale is coarsened and `source` says so.

```rhai
let two = coarsen("1. Add 2 and 3.\n2. Double it.\n3. Check.\nThe answer is 10", 2);
let c2 = rationales("svamp", #{ level: 6 }).coarsen(3);
```"#;

const LEN: &str = r#"The number of examples (Dataset) or rationales (Corpus).

```rhai
print(dataset("svamp").len());   // 300
```"#;

const SHOW_DS: &str = r#"A short summary: `Dataset(svamp test, 300 examples)` (what `print` shows).

```rhai
print(dataset("svamp").to_string());
```"#;

const SHOW_CORPUS: &str = r#"A short summary: `Corpus(svamp gpt-4o plain level 3, 700 rationales from …)`, for a user corpus
`Corpus(mine alpaca number, 120 rationales from mine.json)` (what `print` shows).

```rhai
print(rationales("svamp", #{ level: 3 }));
```"#;

const DF: &str = r#"The values as a DataFrame. A Dataset: `id, question, answer, kind, n_choices`. A Corpus:
`id, dataset, teacher, level, format, source, row, question, gold, rationale, extracted, agrees,
words, steps, numbers, equations, has_verification`, one row per rationale, from its origin (a
mixture's rows keep their own).

```rhai
rationales("svamp", #{ level: 3 }).df().select(["id", "words", "steps"]).head(5).show();
```"#;

const CORPUS: &str = r#"A `Corpus` from your own file or a DataFrame, with the same provenance as the release's
(file, row, SHA-256; a frame: "frame" and a hash of its cells), so `mix`, `sample`, `order`,
`sft`, `sweep` and `contamination` take it unchanged. A file is read like any script input (read
roots apply).

Options: `format`: `auto` (default: `.csv`/`.parquet` by extension, else from the first record's
keys; the choice is printed), `alpaca` (`instruction`/`input`/`output`), `sharegpt`
(`conversations` of `from`/`value`), `messages` (OpenAI chat: `messages` of `role`/`content`),
`prompt-completion` (TRL), `jsonl`, `csv`, `parquet`; JSON files may be one array or JSON lines.
`question`, `rationale` (named columns; default `question`, `rationale`), `answer` (a column or
extra field; default `answer` when present). `kind`: `number`, `choice`, `bool`, `latex`, `text`
(default: from the answers; required without them). Without an answer the kind's extractor takes
it from the rationale; `c.report.no_answer` counts those with none. `name`: default the file's
stem. Records without a question or rationale, duplicate `id`s, answers that do not parse as the
kind, a missing column (the error lists those found) and an empty file are errors. A system
prompt or earlier turns are left out (counted in `c.report.context_dropped`).

```rhai
let c = corpus("my_gpt4o.json", #{ kind: "number" });   // prints what it read
let f = corpus(read_csv("cots.csv"), #{ question: "q", rationale: "cot", kind: "text" });
```"#;

const WRITE_CORPUS: &str = r#"Write the corpus into the output dir as `name` (`.json`: one array; `.jsonl`: JSON lines) in
`format`: `alpaca` (default), `sharegpt`, `messages`, `prompt-completion`; each record keeps
`id`, `answer` (gold) and `cotlab` (dataset, kind, teacher, level, format, source, row, sha256)
beside the format's fields. Adds the LLaMA-Factory entry (named by the file's stem) to
`dataset_info.json` in the same dir, keeping the entries already there.

```rhai
rationales("svamp", #{ level: 3 }).write("svamp_l3.json", #{ format: "sharegpt" });
```"#;

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct WriteCorpusOptions {
    format: Option<CorpusFormat>,
}

/// A corpus from a file path or a frame: read through the sandbox, its summary printed.
fn read_user_corpus(ws: &Workspace, src: Dynamic, o: &CorpusOptions) -> RhaiResult<Corpus> {
    let c = if src.is::<Frame>() {
        formats::read_corpus(formats::Input::Frame(&src.cast::<Frame>()), o).map_err(rt)?
    } else if src.is_string() {
        let p = ws.readable(std::path::Path::new(&src.into_string().unwrap()), "corpus").map_err(rt)?;
        formats::read_corpus(formats::Input::File(&p), o).map_err(rt)?
    } else {
        return Err(rt(usage!("corpus: expected a file path or a DataFrame, found {}", src.type_name())));
    };
    if let Subject::User(u) = &c.task {
        println!("{}", u.summary(c.len()));
    }
    Ok(c)
}

/// Write `c` as `name` into the output dir and its LLaMA-Factory entry into `dataset_info.json` there.
fn write_user_corpus(out: &Option<std::sync::Arc<crate::results::OutputDir>>, c: &Corpus, name: &str, format: CorpusFormat) -> RhaiResult<()> {
    let path = super::frame::out_path(out, name)?;
    formats::write_corpus(c, &path, format).map_err(rt)?;
    let file = std::path::Path::new(name);
    let entry = file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| name.to_string());
    let info_name = match file.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => format!("{}/dataset_info.json", dir.display()),
        None => "dataset_info.json".to_string(),
    };
    let file_name = file.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| name.to_string());
    let info = super::frame::out_path(out, &info_name)?;
    formats::merge_dataset_info(&info, &entry, formats::dataset_info_entry(&file_name, format)).map_err(rt)
}

fn user_report(c: &Corpus) -> Dynamic {
    let Subject::User(u) = &c.task else { return Dynamic::UNIT };
    let mut m = Map::new();
    m.insert("name".into(), u.name.clone().into());
    m.insert("kind".into(), u.kind.name().into());
    m.insert("path".into(), u.path.clone().into());
    m.insert("sha256".into(), u.sha256.clone().into());
    m.insert("format".into(), u.format.clone().into());
    m.insert("sniffed".into(), u.sniffed.into());
    m.insert("n".into(), (c.len() as i64).into());
    m.insert("no_answer".into(), (u.no_answer as i64).into());
    m.insert("context_dropped".into(), (u.context_dropped as i64).into());
    m.insert("summary".into(), u.summary(c.len()).into());
    m.into()
}

pub(super) fn register(engine: &mut Engine, ctx: &Context) {
    // --- user corpora: in from files and frames, out in the chat formats
    let ws = ctx.workspace();
    def(engine, "corpus", ["path_or_frame"], CORPUS, move |src: Dynamic| read_user_corpus(&ws, src, &CorpusOptions::default()));
    let ws = ctx.workspace();
    def(engine, "corpus", ["path_or_frame", "opts"], CORPUS, move |src: Dynamic, opts: Map| read_user_corpus(&ws, src, &options::<CorpusOptions>(opts)?));
    let out = ctx.out.clone();
    def(engine, "write", ["c", "name"], WRITE_CORPUS, move |c: &mut Corpus, name: &str| write_user_corpus(&out, c, name, CorpusFormat::Alpaca));
    let out = ctx.out.clone();
    def(engine, "write", ["c", "name", "opts"], WRITE_CORPUS, move |c: &mut Corpus, name: &str, opts: Map| {
        let o: WriteCorpusOptions = options(opts)?;
        write_user_corpus(&out, c, name, o.format.unwrap_or(CorpusFormat::Alpaca))
    });
    get(
        engine,
        "c",
        "report",
        "What reading a user corpus found, `#{name, kind, path, sha256, format, sniffed, n, no_answer, context_dropped, summary}`; `()` for the release's.\n\n```rhai\nprint(corpus(\"mine.jsonl\", #{ kind: \"number\" }).report.no_answer);\n```",
        |c: &mut Corpus| user_report(c),
    );
    get(
        engine,
        "c",
        "kind",
        "The answer kind of the rationales (`number`, `choice`, `bool`, `latex`, `text`).\n\n```rhai\nprint(rationales(\"csqa\", #{ level: 1 }).kind);   // choice\n```",
        |c: &mut Corpus| c.kind().name().to_string(),
    );

    // --- datasets
    let ws = ctx.workspace();
    def(engine, "dataset", ["name"], DATASET, move |name: &str| -> RhaiResult<Dataset> { dataset_named(&ws, name, Map::new()) });
    let ws = ctx.workspace();
    def(engine, "dataset", ["name", "opts"], DATASET, move |name: &str, opts: Map| -> RhaiResult<Dataset> { dataset_named(&ws, name, opts) });
    def(engine, "dataset", ["df"], DATASET, |f: Frame| -> RhaiResult<Dataset> { load_user_frame(&f, &UserOptions::default()).map_err(rt) });
    def(engine, "dataset", ["df", "opts"], DATASET, |f: Frame, opts: Map| -> RhaiResult<Dataset> {
        load_user_frame(&f, &options::<UserOptions>(opts)?).map_err(rt)
    });
    def(engine, "len", ["ds"], LEN, |d: &mut Dataset| d.len() as i64);
    get(
        engine,
        "ds",
        "name",
        "The dataset's name (`svamp`; a user set's `name`, else its file's stem).\n\n```rhai\nprint(dataset(\"svamp\").name);\n```",
        |d: &mut Dataset| d.name.clone(),
    );
    get(
        engine,
        "ds",
        "split",
        "The split it was loaded from (`test`, `train`, `all`, `full`).\n\n```rhai\nprint(dataset(\"svamp\").split);\n```",
        |d: &mut Dataset| d.split.clone(),
    );
    get(
        engine,
        "ds",
        "kind",
        "The answer kind: `number`, `choice`, `bool`, `latex` or `text`.\n\n```rhai\nprint(dataset(\"csqa\").kind);   // choice\n```",
        |d: &mut Dataset| d.task.kind().name().to_string(),
    );
    index(
        engine,
        ["ds", "i"],
        "Example `i` as `#{id, question, choices, answer, kind}` (a Dataset), or rationale `i` as `#{id, question, gold, rationale}` (a Corpus; `gold` `()` when unknown).\n\n```rhai\nprint(dataset(\"svamp\")[0].question);\n```",
        |d: &mut Dataset, i: i64| -> RhaiResult<Map> {
            d.examples.get(i as usize).map(example_map).ok_or_else(|| rt(usage!("index {i} out of range: the dataset has {} examples", d.len())))
        },
    );
    def(engine, "examples", ["ds"], "Every example as `#{id, question, choices, answer, kind}`, in an array.\n\n```rhai\nfor e in dataset(\"svamp\", #{ limit: 3 }).examples() { print(e.answer); }\n```", |d: &mut Dataset| -> Array {
        d.examples.iter().map(|e| example_map(e).into()).collect()
    });
    def(engine, "df", ["ds"], DF, |d: &mut Dataset| -> RhaiResult<Frame> { dataset_frame(d).map_err(rt) });
    def(
        engine,
        "split",
        ["ds", "test_fraction", "seed"],
        "A seeded split `#{train, test}` for sets the release ships without one: `test_fraction` in (0, 1), at least one example in each part when possible.\n\n```rhai\nlet parts = dataset(\"arith\", #{ n: 50, seed: 2 }).split(0.2, 1);\nprint(parts.test.len());   // 10\n```",
        |d: &mut Dataset, test_fraction: f64, seed: i64| -> RhaiResult<Map> {
            let (train, test) = d.split_off(test_fraction, seed as u64).map_err(rt)?;
            let mut m = Map::new();
            m.insert("train".into(), Dynamic::from(train));
            m.insert("test".into(), Dynamic::from(test));
            Ok(m)
        },
    );
    def(engine, "to_string", ["ds"], SHOW_DS, |d: &mut Dataset| format!("Dataset({} {}, {} examples)", d.name, d.split, d.len()));
    def(engine, "to_debug", ["ds"], SHOW_DS, |d: &mut Dataset| format!("Dataset({} {}, {} examples)", d.name, d.split, d.len()));

    // --- rationales and the catalog
    let dir = ctx.data_dir.clone();
    def(engine, "rationales", ["name", "opts"], RATIONALES, move |name: &str, opts: Map| -> RhaiResult<Corpus> {
        Catalog::new(dir.clone()).rationales(name, &options::<RationaleQuery>(opts)?).map_err(rt)
    });
    let dir = ctx.data_dir.clone();
    def(engine, "catalog", ["name"], CATALOG, move |name: &str| -> RhaiResult<Frame> {
        let task = Task::parse(name).map_err(rt)?;
        catalog_frame(&Catalog::new(dir.clone()), Some(task)).map_err(rt)
    });
    let dir = ctx.data_dir.clone();
    def(engine, "catalog", [], CATALOG, move || -> RhaiResult<Frame> { catalog_frame(&Catalog::new(dir.clone()), None).map_err(rt) });
    def(engine, "len", ["c"], LEN, |c: &mut Corpus| c.len() as i64);
    const PROVENANCE: &str = "`()` where not one value: an answer-only corpus has no teacher, a mixture of levels no level.";
    get(engine, "c", "teacher", &format!("The teacher that wrote the rationales (`gpt-4o`, `human`, `rule`, …); {PROVENANCE}\n\n```rhai\nprint(rationales(\"svamp\", #{{ level: 3 }}).teacher);\n```"), |c: &mut Corpus| {
        opt_str(c.teacher.map(|t| t.name().to_string()))
    });
    get(
        engine,
        "c",
        "level",
        &format!("The granularity level 1–6; {PROVENANCE}\n\n```rhai\nprint(rationales(\"svamp\", #{{ level: 3 }}).level);   // 3\n```"),
        |c: &mut Corpus| c.level.map(|l| Dynamic::from_int(l as i64)).unwrap_or(Dynamic::UNIT),
    );
    get(engine, "c", "format", "The rationale format (`plain`, `bsm`, `rar`, `sym`, `equation-only`, `answer-only`).\n\n```rhai\nprint(rationales(\"svamp\", #{ level: 3, format: \"sym\" }).format);\n```", |c: &mut Corpus| {
        c.format.name().to_string()
    });
    get(engine, "c", "source", "Where the rationales came from: the release file, or how they were made (`… (coarsened to 2 steps)`).\n\n```rhai\nprint(rationales(\"svamp\", #{ level: 3 }).source);\n```", |c: &mut Corpus| c.source.clone());
    get(engine, "c", "skipped", "Records of the file lacking this teacher's column (left out).\n\n```rhai\nprint(rationales(\"svamp\", #{ teacher: \"gemini\", level: 3 }).skipped);\n```", |c: &mut Corpus| c.skipped as i64);
    index(
        engine,
        ["c", "i"],
        "Example `i` as `#{id, question, choices, answer, kind}` (a Dataset), or rationale `i` as `#{id, question, gold, rationale}` (a Corpus; `gold` `()` when unknown).\n\n```rhai\nprint(dataset(\"svamp\")[0].question);\n```",
        |c: &mut Corpus, i: i64| -> RhaiResult<Map> {
            let r = c.rationales.get(i as usize).ok_or_else(|| rt(usage!("index {i} out of range: the corpus has {} rationales", c.len())))?;
            let mut m = Map::new();
            m.insert("id".into(), r.id.clone().into());
            m.insert("question".into(), r.question.clone().into());
            m.insert("gold".into(), opt_str(r.gold.clone()));
            m.insert("rationale".into(), r.text.clone().into());
            Ok(m)
        },
    );
    def(engine, "df", ["c"], DF, |c: &mut Corpus| -> RhaiResult<Frame> { corpus_frame(c).map_err(rt) });
    let show = |c: &mut Corpus| {
        if let Subject::User(u) = &c.task {
            return format!("Corpus({} {} {}, {} rationales from {})", u.name, u.format, u.kind.name(), c.len(), c.source);
        }
        format!(
            "Corpus({} {} {}{}, {} rationales from {})",
            c.task.name(),
            c.teacher.map(|t| t.name()).unwrap_or("answer-only"),
            c.format.name(),
            c.level.map(|l| format!(" level {l}")).unwrap_or_default(),
            c.len(),
            c.source
        )
    };
    def(engine, "to_string", ["c"], SHOW_CORPUS, show);
    def(engine, "to_debug", ["c"], SHOW_CORPUS, show);

    // --- CoT structure and answers
    def(
        engine,
        "measure_cot",
        ["text"],
        "`#{words, steps, numbers, equations, has_verification}` of a rationale; words = whitespace tokens of the trimmed text.\n\n```rhai\nprint(measure_cot(\"1. Add 2 and 3.\\n2. Check: 5 - 3 = 2.\\nThe answer is 5\").steps);   // 2\n```",
        |text: &str| -> RhaiResult<Dynamic> { rhai::serde::to_dynamic(measure(text)) },
    );
    def(engine, "coarsen", ["text", "steps"], COARSEN, |text: &str, steps: i64| crate::cot::coarsen(text, steps.max(1) as usize));
    def(engine, "coarsen", ["c", "steps"], COARSEN, |c: &mut Corpus, steps: i64| -> Corpus {
        let mut out = c.clone();
        for r in out.rationales.iter_mut() {
            r.text = crate::cot::coarsen(&r.text, steps.max(1) as usize);
        }
        out.source = format!("{} (coarsened to {steps} steps)", c.source);
        out
    });
    def(
        engine,
        "cot_steps",
        ["text"],
        "The steps of a rationale, in an array: numbered lists, \"Step k:\", lines, else sentences; the closing \"The answer is\" is not a step.\n\n```rhai\nprint(cot_steps(\"Step 1: add.\\nStep 2: check.\\nThe answer is 5\").len());   // 2\n```",
        |text: &str| -> Array { split_steps(text).into_iter().map(Dynamic::from).collect() },
    );
    def(
        engine,
        "extract_answer",
        ["text", "kind"],
        "The canonical answer in `text`, or `()`, under the lenient rules; `kind`: `number`, `choice`, `bool`, `latex`, `text`.\n\n```rhai\nprint(extract_answer(\"so... The answer is (C)\", \"choice\"));   // C\n```",
        |text: &str, kind: &str| -> RhaiResult<Dynamic> {
            let kind = AnswerKind::parse(kind).map_err(|e| rt(crate::error::Error::Usage(e)))?;
            Ok(opt_str(extract_answer(text, kind)))
        },
    );
    def(
        engine,
        "is_correct",
        ["output", "gold", "kind"],
        "Whether `output`'s answer is `gold`, under the lenient rules (`score_predictions` applies the paper's); `kind` as in `extract_answer`.\n\n```rhai\nprint(is_correct(\"The answer is 1,000\", \"1000.0\", \"number\"));   // true\n```",
        |output: &str, gold: &str, kind: &str| -> RhaiResult<bool> {
            let kind = AnswerKind::parse(kind).map_err(|e| rt(crate::error::Error::Usage(e)))?;
            Ok(judge(output, gold, kind).correct)
        },
    );

    // --- contamination and scoring
    let ws = ctx.workspace();
    let contam = move |train: Dynamic, test: Dynamic, threshold: f64| -> RhaiResult<Dynamic> {
        let train = questions(&ws, train, "contamination: train")?;
        let test = questions(&ws, test, "contamination: test")?;
        let report = contamination::check(&train, &test, threshold).map_err(rt)?;
        let mut m: Map = rhai::serde::to_dynamic(&report)?.cast::<Map>();
        m.insert("summary".into(), report.summary().into());
        Ok(Dynamic::from_map(m))
    };
    let c2 = contam.clone();
    def(engine, "contamination", ["train", "test"], CONTAMINATION, move |train: Dynamic, test: Dynamic| c2(train, test, 0.8));
    def(engine, "contamination", ["train", "test", "opts"], CONTAMINATION, move |train: Dynamic, test: Dynamic, opts: Map| -> RhaiResult<Dynamic> {
        let o: ContaminationOptions = options(opts)?;
        contam(train, test, o.threshold.unwrap_or(0.8))
    });
    let ws = ctx.workspace();
    let score_ds = move |ds: &Dataset, path: &str, protocol: crate::answer::Protocol| -> RhaiResult<Dynamic> {
        let path = ws.readable(std::path::Path::new(path), "score_predictions").map_err(rt)?;
        rhai::serde::to_dynamic(score_predictions(ds, &path, protocol).map_err(rt)?)
    };
    let dir = ctx.data_dir.clone();
    let sd = score_ds.clone();
    let score = move |task: &str, path: &str, split: Option<String>, protocol: crate::answer::Protocol| -> RhaiResult<Dynamic> {
        let ds = load_dataset(&dir, task, &DatasetOptions { split, ..Default::default() }).map_err(rt)?;
        sd(&ds, path, protocol)
    };
    let s2 = score.clone();
    def(engine, "score_predictions", ["task", "path"], SCORE, move |task: &str, path: &str| s2(task, path, None, crate::answer::Protocol::Paper));
    def(engine, "score_predictions", ["task", "path", "opts"], SCORE, move |task: &str, path: &str, opts: Map| -> RhaiResult<Dynamic> {
        let o: ScoreOptions = options(opts)?;
        score(task, path, o.split, o.protocol)
    });
    let sd = score_ds.clone();
    def(engine, "score_predictions", ["ds", "path"], SCORE, move |ds: Dataset, path: &str| sd(&ds, path, crate::answer::Protocol::Paper));
    def(engine, "score_predictions", ["ds", "path", "opts"], SCORE, move |ds: Dataset, path: &str, opts: Map| -> RhaiResult<Dynamic> {
        let o: ScoreOptions = options(opts)?;
        if o.split.is_some() {
            return Err(rt(usage!("score_predictions: 'split' picks a split of a release dataset by name; this Dataset is already loaded")));
        }
        score_ds(&ds, path, o.protocol)
    });
}
