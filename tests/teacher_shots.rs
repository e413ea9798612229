//! One-shot teacher prompts (`shots: 1`): the exemplar is a release rationale at the asked level
//! and format — the dataset's own when the release has that level, else SVAMP's — placed before
//! the question, and a question never gets itself as its example.

#[macro_use]
mod common;

use cotlab::cot::Format;
use cotlab::data::{load_dataset, Catalog, Dataset, DatasetOptions, RationaleQuery, Task};
use cotlab::teacher::prompts::build_with;
use cotlab::teacher::{exemplars, AskOptions, Backend, Teacher};

#[test]
fn one_shot_prompts_carry_an_exemplar_at_the_asked_level() {
    require!(Data);
    let dir = common::data_dir();
    let cat = Catalog::new(dir.clone());
    let mut words = Vec::new();
    for level in 1u8..=6 {
        let xs = exemplars(&dir, Task::Svamp, Some(level), Format::Plain).unwrap();
        let file = format!("paper/SVAMP_ChatGPT_level{level}_ranked.json#");
        assert!(xs.iter().all(|x| x.source.starts_with(&file)), "level {level}: {:?}", xs[0].source);
        // It is that level's release rationale, verbatim, and the prompt carries it before the question.
        let c = cat.rationales("svamp", &RationaleQuery { teacher: Some("gpt-4o".into()), level: Some(level as i64), ..Default::default() }).unwrap();
        let id = xs[0].source.rsplit('#').next().unwrap();
        assert_eq!(c.rationales.iter().find(|r| r.id == id).unwrap().text, xs[0].rationale);
        let (_, user) = build_with("Tom has 3 apples. How many?", level, Format::Plain, None, Some(&xs[0]));
        let at = user.find(xs[0].rationale.trim()).unwrap_or_else(|| panic!("level {level}: exemplar missing from {user}"));
        assert!(at < user.find("Tom has 3 apples").unwrap());
        words.push(xs[0].rationale.split_whitespace().count());
    }
    assert!(words[5] > 3 * words[0], "level 6 exemplar much longer than level 1: {words:?}");
    // The dataset's own file where the release has the level; SVAMP's where it does not.
    let obqa = exemplars(&dir, Task::Obqa, Some(4), Format::Plain).unwrap();
    assert!(obqa[0].source.starts_with("paper/openbookQA_chatgpt_level_4_ranked.json#"), "{}", obqa[0].source);
    let csqa = exemplars(&dir, Task::Csqa, Some(2), Format::Plain).unwrap();
    assert!(csqa[0].source.starts_with("paper/csqa_llama_level2_ranked.json#"), "{}", csqa[0].source);
    let bsm = exemplars(&dir, Task::Svamp, Some(3), Format::Bsm).unwrap();
    assert!(bsm[0].source.starts_with("paper/0_SVAMP_chatgpt_level3BSM.json#"), "{}", bsm[0].source);
    let fallback = exemplars(&dir, Task::Csqa, Some(5), Format::Plain).unwrap();
    assert!(
        fallback[0].source.starts_with("paper/SVAMP_ChatGPT_level5_ranked.json#") || fallback[0].source.contains("commonsenseQA_chatgpt_level_5"),
        "{}",
        fallback[0].source
    );

    // Through ask: provenance names the exemplar; the exemplar's own question gets the next one.
    let xs = exemplars(&dir, Task::Svamp, Some(3), Format::Plain).unwrap();
    let train = load_dataset(&dir, "svamp", &DatasetOptions { split: Some("train".into()), ..Default::default() }).unwrap();
    let norm = cotlab::data::contamination::normalize;
    let own = train.examples.iter().find(|e| norm(&e.question) == norm(&xs[0].question)).expect("the exemplar is a training question").clone();
    let other = train.examples.iter().find(|e| norm(&e.question) != norm(&xs[0].question) && norm(&e.question) != norm(&xs[1].question)).unwrap().clone();
    let ds = Dataset { examples: vec![own, other], ..train.clone() };
    let t = Teacher {
        kind: "replay".into(),
        model: "gpt-4o".into(),
        backend: Backend::Replay { dir: dir.clone(), dataset: "svamp".into(), teacher: "gpt-4o".into() },
        cache: None,
    };
    let o = AskOptions { level: Some(3), shots: 1, ..Default::default() };
    let r = t.ask_with(&ds, &o, Some(&dir)).unwrap();
    assert_eq!(r.rows[0].exemplar.as_deref(), Some(xs[1].source.as_str()));
    assert_eq!(r.rows[1].exemplar.as_deref(), Some(xs[0].source.as_str()));
    assert!(r.frame().unwrap().columns().iter().any(|c| c == "exemplar"));
    // Zero-shot by default; 2 shots and a one-shot ask without the release are refused.
    assert!(t.ask_with(&ds, &AskOptions { level: Some(3), ..Default::default() }, Some(&dir)).unwrap().rows.iter().all(|r| r.exemplar.is_none()));
    let e = t.ask_with(&ds, &AskOptions { shots: 2, ..o.clone() }, Some(&dir)).err().unwrap().to_string();
    assert!(e.contains("'shots' must be in 0..=1, got 2"), "{e}");
    assert!(t.ask(&ds, &o).err().unwrap().to_string().contains("data dir"));
}
