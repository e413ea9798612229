//! Every loader on the real shared files.

#[macro_use]
mod common;

use cotlab::cot::Format;
use cotlab::data::{load_dataset, AnswerKind, Catalog, DatasetOptions, RationaleQuery};

fn load(name: &str, split: Option<&str>) -> cotlab::data::Dataset {
    let opts = DatasetOptions { split: split.map(str::to_string), ..Default::default() };
    load_dataset(&common::data_dir(), name, &opts).unwrap_or_else(|e| panic!("{name} {split:?}: {e}"))
}

#[test]
fn test_sets_have_the_documented_sizes_and_gold_kinds() {
    require!(Data);
    let cases: [(&str, Option<&str>, usize, AnswerKind); 12] = [
        ("svamp", None, 300, AnswerKind::Number),
        ("svamp", Some("all"), 1000, AnswerKind::Number),
        ("svamp", Some("train"), 700, AnswerKind::Number),
        ("gsm8k", None, 1319, AnswerKind::Number),
        ("gsm8k", Some("train"), 7473, AnswerKind::Number),
        ("aqua", None, 254, AnswerKind::Choice),
        ("math", None, 500, AnswerKind::Latex),
        ("math", Some("full"), 5000, AnswerKind::Latex),
        ("csqa", None, 1221, AnswerKind::Choice),
        ("obqa", None, 500, AnswerKind::Choice),
        ("strategyqa", None, 290, AnswerKind::Bool),
        ("stqa", None, 290, AnswerKind::Bool),
    ];
    for (name, split, n, kind) in cases {
        let ds = load(name, split);
        assert_eq!(ds.len(), n, "{name} {split:?}");
        assert!(ds.examples.iter().all(|e| e.kind == kind && !e.answer.is_empty() && !e.question.is_empty()));
        let ids: std::collections::HashSet<_> = ds.examples.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), n, "{name}: ids are unique");
    }
}

#[test]
fn loaders_read_the_right_fields() {
    require!(Data);
    let svamp = load("svamp", Some("all"));
    let e = svamp.examples.iter().find(|e| e.id == "chal-1").unwrap();
    assert_eq!(e.answer, "51");
    assert!(e.question.starts_with("Each pack of dvds costs 76 dollars.") && e.question.ends_with("?"));
    let gsm = load("gsm8k", None);
    assert_eq!(gsm.examples[0].answer, "18"); // Janet's ducks
    let aqua = load("aqua", None);
    assert_eq!(aqua.examples[0].choices.len(), 5);
    assert!(aqua.examples[0].question.contains("Answer Choices: (A) "));
    assert!(aqua.examples.iter().all(|e| ["A", "B", "C", "D", "E"].contains(&e.answer.as_str())));
    let csqa = load("csqa", None);
    assert_eq!(csqa.examples[0].choices, vec!["bank", "library", "department store", "mall", "new york"]);
    let obqa = load("obqa", None);
    assert_eq!(obqa.examples[0].choices.len(), 4);
    let st = load("strategyqa", None);
    assert!(st.examples.iter().all(|e| e.answer == "True" || e.answer == "False"));
    let math = load("math", None);
    assert!(math.examples.iter().any(|e| e.answer == "\\frac{14}{3}"), "MATH-500 answers are normalised LaTeX");
    let full = load("math", Some("full"));
    assert!(full.examples.iter().all(|e| !e.answer.is_empty()));
}

#[test]
fn limit_and_seeded_shuffle() {
    require!(Data);
    let dir = common::data_dir();
    let a = load_dataset(&dir, "svamp", &DatasetOptions { limit: Some(20), seed: Some(3), ..Default::default() }).unwrap();
    let b = load_dataset(&dir, "svamp", &DatasetOptions { limit: Some(20), seed: Some(3), ..Default::default() }).unwrap();
    let c = load_dataset(&dir, "svamp", &DatasetOptions { limit: Some(20), seed: Some(4), ..Default::default() }).unwrap();
    assert_eq!(a.len(), 20);
    assert_eq!(a.examples, b.examples);
    assert_ne!(a.examples, c.examples);
    let (train, test) = load("aqua", None).split_off(0.2, 1).unwrap();
    assert_eq!((train.len(), test.len()), (203, 51));
}

/// Every release file present in the data dir loads through the catalog, with the record
/// count the MANIFEST gives (minus records skipped for lacking the teacher's column).
#[test]
fn every_present_release_file_loads_with_its_manifest_count() {
    require!(Data);
    let dir = common::data_dir();
    let manifest = std::fs::read_to_string(dir.path("MANIFEST.tsv")).unwrap();
    let counts: std::collections::HashMap<&str, usize> = manifest
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some((f[0], f[3].parse().ok()?))
        })
        .collect();
    let cat = Catalog::new(dir.clone());
    let mut loaded = 0;
    for e in cat.entries.iter().filter(|e| cat.present(e)) {
        let q = RationaleQuery {
            teacher: e.teacher.map(|t| t.name().to_string()),
            level: e.level.map(|l| l as i64),
            format: Some(e.format.name().to_string()),
            ..Default::default()
        };
        let c = cat.rationales(e.task.name(), &q).unwrap_or_else(|err| panic!("{}: {err}", e.file));
        assert_eq!(c.source, e.file);
        assert_eq!(c.len() + c.skipped, counts[e.file.as_str()], "{}", e.file);
        if e.format != Format::AnswerOnly {
            // stqa_human_annotation.json also holds the 290 test questions, which have no training gold.
            assert!(c.rationales.iter().filter(|r| r.gold.is_some()).count() * 100 >= c.len() * 85, "{}: gold found for most", e.file);
        }
        loaded += 1;
    }
    assert!(loaded >= 90, "only {loaded} release files loaded");
}

#[test]
fn math_gemini_level1_caveat_is_counted_not_hidden() {
    require!(Data);
    let cat = Catalog::new(common::data_dir());
    let q = RationaleQuery { teacher: Some("gemini".into()), level: Some(1), ..Default::default() };
    let c = cat.rationales("math", &q).unwrap();
    assert_eq!(c.skipped, 195);
    assert_eq!(c.len(), 1297 - 195);
}
