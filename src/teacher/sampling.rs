//! Several rationales per question, and which to keep: rejection sampling until a correct one
//! (`filter: "correct"` with `max_tries`, as OpenThoughts, s1 and LIMO keep only traces whose
//! answer matches the reference), the choice among the kept ones (`keep`), and self-consistency
//! votes (`vote`) for questions without gold.
//!
//! Invariants:
//! - A question is asked again only while it has no correct rationale and fewer than `max_tries`
//!   samples; sample k is always drawn with seed `seed + k`, so a re-run asks the same requests
//!   and the cache answers them.
//! - Under `filter: "correct"` every kept rationale agrees with gold by the scoring judge.
//! - `keep` chooses among a question's answered samples; a question with none keeps its failed
//!   rows, which say why.
//! - The vote counts every answered sample of a question, before any filtering.

use std::collections::HashMap;

use serde::Serialize;

use super::Row;

crate::choices! {
    /// Which rationales survive: all, or only those whose answer agrees with gold.
    #[derive(Default)]
    pub enum Filter("filter") {
        #[default]
        None = "none",
        Correct = "correct",
    }
}

crate::choices! {
    /// Which of a question's surviving rationales are kept.
    #[derive(Default)]
    pub enum Keep("keep") {
        #[default]
        All = "all",
        First = "first",
        Shortest = "shortest",
        Longest = "longest",
    }
}

/// Per question, how sampling ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QuestionCounts {
    /// Questions with at least one rationale kept.
    pub kept: usize,
    /// Questions answered, none correctly (only counted against gold).
    pub all_wrong: usize,
    /// Questions whose every request failed.
    pub failed: usize,
}

/// The samples to ask for next: one more for each question (by id, in dataset order) that has no
/// correct rationale yet and has had fewer than `max_tries`; `tries` counts each question's
/// samples so far and is advanced for those asked.
pub fn next_round(ids: &[&str], rows: &[Row], tries: &mut [usize], max_tries: usize) -> Vec<(usize, usize)> {
    let solved: std::collections::HashSet<&str> = rows.iter().filter(|r| r.agrees == Some(true)).map(|r| r.id.as_str()).collect();
    let mut asks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if !solved.contains(id) && tries[i] < max_tries {
            asks.push((i, tries[i]));
            tries[i] += 1;
        }
    }
    asks
}

/// Set each row's `vote` (the most common extracted answer among its question's answered
/// samples; a tie goes to the answer reached first) and `vote_share` (its share of them).
pub fn vote(rows: &mut [Row]) {
    let mut tally: HashMap<String, Vec<(String, usize, usize)>> = HashMap::new();
    for r in rows.iter() {
        let Some(x) = &r.extracted else { continue };
        let answers = tally.entry(r.id.clone()).or_default();
        match answers.iter_mut().find(|(a, _, _)| a == x) {
            Some(a) => a.1 += 1,
            None => answers.push((x.clone(), 1, r.sample)),
        }
    }
    for r in rows.iter_mut() {
        let Some(answers) = tally.get(&r.id) else { continue };
        let total: usize = answers.iter().map(|a| a.1).sum();
        // Most votes; among equals, the earliest sample.
        if let Some((a, n, _)) = answers.iter().max_by(|x, y| x.1.cmp(&y.1).then(y.2.cmp(&x.2))) {
            r.vote = Some(a.clone());
            r.vote_share = Some(*n as f64 / total as f64);
        }
    }
}

/// The rows that survive `filter` and `keep`, in their order, and the count per question.
pub fn select(rows: Vec<Row>, filter: Filter, keep: Keep) -> (Vec<Row>, QuestionCounts) {
    let mut order: Vec<String> = Vec::new();
    let mut by_q: HashMap<String, Vec<Row>> = HashMap::new();
    for r in rows {
        if !by_q.contains_key(&r.id) {
            order.push(r.id.clone());
        }
        by_q.entry(r.id.clone()).or_default().push(r);
    }
    let mut counts = QuestionCounts::default();
    let mut out = Vec::new();
    for id in order {
        let samples = by_q.remove(&id).unwrap_or_default();
        let (answered, failed): (Vec<Row>, Vec<Row>) = samples.into_iter().partition(|r| r.rationale.is_some());
        if answered.is_empty() {
            counts.failed += 1;
            out.extend(failed);
            continue;
        }
        if answered.iter().all(|r| r.agrees == Some(false)) {
            counts.all_wrong += 1;
        }
        let mut survivors: Vec<Row> = answered.into_iter().filter(|r| filter == Filter::None || r.agrees != Some(false)).collect();
        survivors.sort_by_key(|r| r.sample);
        let chars = |r: &Row| r.rationale.as_deref().map_or(0, |t| t.chars().count());
        // min_by_key/max_by_key keep the first/last of equals: stable sort + explicit tie rules.
        let pick = match keep {
            Keep::All => None,
            Keep::First => survivors.first().map(|r| r.sample),
            Keep::Shortest => survivors.iter().min_by_key(|r| chars(r)).map(|r| r.sample),
            Keep::Longest => survivors.iter().rev().max_by_key(|r| chars(r)).map(|r| r.sample),
        };
        if let Some(s) = pick {
            survivors.retain(|r| r.sample == s);
        }
        if !survivors.is_empty() {
            counts.kept += 1;
        }
        out.extend(survivors);
    }
    (out, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, sample: usize, text: Option<&str>, agrees: Option<bool>) -> Row {
        Row {
            id: id.into(),
            sample,
            rationale: text.map(str::to_string),
            extracted: text.map(|t| t.rsplit(' ').next().unwrap().to_string()),
            agrees,
            error: text.is_none().then(|| "HTTP 500".to_string()),
            ..Row::default()
        }
    }

    #[test]
    fn only_unsolved_questions_are_asked_again_within_max_tries() {
        let rows = vec![row("a", 0, Some("x 1"), Some(true)), row("b", 0, Some("x 2"), Some(false)), row("c", 0, None, None)];
        let mut tries = vec![1, 1, 1];
        assert_eq!(next_round(&["a", "b", "c"], &rows, &mut tries, 2), vec![(1, 1), (2, 1)]);
        assert_eq!(tries, vec![1, 2, 2]);
        assert_eq!(next_round(&["a", "b", "c"], &rows, &mut tries, 2), vec![], "the budget is spent");
    }

    #[test]
    fn filter_correct_keeps_only_agreeing_rationales() {
        let rows = vec![row("a", 0, Some("x 1"), Some(false)), row("a", 1, Some("x 2"), Some(true)), row("b", 0, Some("x 3"), Some(false))];
        let (kept, c) = select(rows, Filter::Correct, Keep::All);
        assert!(kept.iter().all(|r| r.agrees == Some(true)));
        assert_eq!((kept.len(), c), (1, QuestionCounts { kept: 1, all_wrong: 1, failed: 0 }));
    }

    #[test]
    fn keep_chooses_among_answered_samples_and_failed_questions_keep_their_errors() {
        let rows = || {
            vec![
                row("a", 0, None, None),
                row("a", 1, Some("a long one 1"), Some(true)),
                row("a", 2, Some("short 1"), Some(true)),
                row("a", 3, Some("tiny1 1"), Some(true)),
                row("b", 0, None, None),
            ]
        };
        let sample = |keep| select(rows(), Filter::None, keep).0.iter().filter(|r| r.id == "a").map(|r| r.sample).collect::<Vec<_>>();
        assert_eq!(sample(Keep::First), vec![1]);
        assert_eq!(sample(Keep::Shortest), vec![2], "ties go to the earlier sample");
        assert_eq!(sample(Keep::Longest), vec![1]);
        assert_eq!(sample(Keep::All), vec![1, 2, 3]);
        let (kept, c) = select(rows(), Filter::None, Keep::First);
        assert_eq!(kept.iter().filter(|r| r.id == "b").count(), 1, "the failed row stays, with its error");
        assert_eq!(c, QuestionCounts { kept: 1, all_wrong: 0, failed: 1 });
    }

    #[test]
    fn the_vote_counts_every_answered_sample() {
        let mut rows = vec![row("a", 0, Some("x 5"), None), row("a", 1, Some("y 7"), None), row("a", 2, Some("z 7"), None), row("a", 3, None, None)];
        vote(&mut rows);
        assert!(rows.iter().all(|r| r.vote.as_deref() == Some("7") && r.vote_share == Some(2.0 / 3.0)));
        // A tie goes to the answer reached first.
        let mut tie = vec![row("b", 0, Some("x 4"), None), row("b", 1, Some("x 9"), None)];
        vote(&mut tie);
        assert_eq!(tie[1].vote.as_deref(), Some("4"));
    }
}
