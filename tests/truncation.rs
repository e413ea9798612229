//! SFT truncation on the real release: the paper's cut-off (4096) and seed (100) are the
//! defaults; with a small `max_len`, cuts are counted per corpus (level), fine levels lose their
//! final "The answer is" sentence and that is counted, and the run reports it (report and the run
//! dir's `truncation.json`).

#[macro_use]
mod common;

use candle_core::Device;
use cotlab::data::{Catalog, RationaleQuery};
use cotlab::model::{default_model_path, Student};
use cotlab::train::data::tokenize;
use cotlab::train::{sft, RunDir, SftOptions};

#[test]
fn paper_cutoff_and_seed_are_the_defaults() {
    let o = SftOptions::default();
    assert_eq!((o.max_len, o.seed, o.batch_size * o.grad_accum), (4096, 100, 64));
}

#[test]
fn truncation_is_counted_per_level_with_lost_answers() {
    require!(Data, Model);
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let cat = Catalog::new(common::data_dir());
    let max_len = 160;
    let mut lost_by_level = Vec::new();
    for level in [1i64, 6] {
        let c = cat.rationales("svamp", &RationaleQuery { teacher: Some("gpt-4o".into()), level: Some(level), limit: Some(60), ..Default::default() }).unwrap();
        let pairs = c.pairs();
        let t = tokenize(&s.tokenizer, &s.template, &pairs, max_len).unwrap();
        assert_eq!(t.examples.len() + t.dropped, pairs.len());
        assert!(t.examples.iter().all(|e| e.ids.len() <= max_len));
        assert!(t.with_answer >= pairs.len() * 9 / 10, "level {level}: {} of {} state an answer", t.with_answer, pairs.len());
        // Independent lower bound: a cut response whose kept text has no "answer is" at all.
        let no_trigger = t
            .examples
            .iter()
            .zip(pairs.iter().filter(|(q, _)| s.tokenizer.encode(s.template.prompt(q).unwrap(), false).unwrap().get_ids().len() + 1 < max_len))
            .filter(|(e, (_, r))| {
                let kept = s.tokenizer.decode(&e.ids[e.prompt_len..], true).unwrap();
                r.to_lowercase().contains("the answer is") && !kept.to_lowercase().contains("answer is") && kept.len() < r.len()
            })
            .count();
        assert!(t.answer_lost >= no_trigger && t.answer_lost <= t.truncated, "level {level}: {t:?}");
        eprintln!(
            "svamp gpt-4o level {level}, max_len {max_len}: {} of {} cut, {} lost the answer, longest {} tokens",
            t.truncated,
            pairs.len(),
            t.answer_lost,
            t.longest
        );
        lost_by_level.push((t.truncated, t.answer_lost));
        // At the paper's cut-off nothing of this corpus is cut.
        let paper = tokenize(&s.tokenizer, &s.template, &pairs, SftOptions::default().max_len).unwrap();
        assert_eq!((paper.truncated, paper.answer_lost, paper.dropped), (0, 0, 0));
    }
    assert!(lost_by_level[1].1 > lost_by_level[0].1, "level 6 loses more answers than level 1: {lost_by_level:?}");

    // A run reports its corpus's truncation, in the report and in the run dir.
    let d = tempfile::tempdir().unwrap();
    let c = cat.rationales("svamp", &RationaleQuery { teacher: Some("gpt-4o".into()), level: Some(6), limit: Some(8), ..Default::default() }).unwrap();
    let opts = SftOptions { max_steps: Some(1), batch_size: 2, grad_accum: 1, max_len: 96, ..Default::default() };
    let run = RunDir::new(d.path().join("r"));
    let r = sft(&s, &c, &opts, &run, None).unwrap();
    assert_eq!(r.truncation.label, "svamp gpt-4o level 6 plain");
    assert_eq!((r.truncation.level, r.truncation.max_len, r.truncation.truncated), (Some(6), 96, r.truncated));
    assert!(r.truncation.answer_lost > 0, "{:?}", r.truncation);
    let on_disk: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("r/truncation.json")).unwrap()).unwrap();
    assert_eq!(on_disk["answer_lost"], r.truncation.answer_lost);
}
