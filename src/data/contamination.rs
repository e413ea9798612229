//! Contamination check: how many test questions appear in the training data.
//!
//! Three levels, from strict to loose, so a report can tell a real leak from a shared stem:
//! * `exact`: the whole question (answer choices included) matches after lowercasing and
//!   collapsing whitespace;
//! * `stem`: the question matches once the answer choices are stripped (OBQA shares 23 stems
//!   with its test set, each with different choices);
//! * `near`: word-trigram Jaccard similarity ≥ a threshold (default 0.8) with some training
//!   question: paraphrases and small edits.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

/// Lowercase and collapse whitespace.
pub fn normalize(q: &str) -> String {
    q.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// `normalize`, then cut at "answer choices:" (how every release file lists choices).
pub fn normalize_stem(q: &str) -> String {
    let n = normalize(q);
    match n.find("answer choices:") {
        Some(i) => n[..i].trim_end().to_string(),
        None => n,
    }
}

fn shingles(stem: &str) -> HashSet<u64> {
    use std::hash::{Hash, Hasher};
    let words: Vec<&str> = stem.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let n = 3.min(words.len().max(1));
    words
        .windows(n)
        .map(|w| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            w.hash(&mut h);
            h.finish()
        })
        .collect()
}

/// One flagged test question.
#[derive(Clone, Debug, Serialize)]
pub struct Hit {
    pub test_index: usize,
    pub train_index: usize,
    /// "exact", "stem" or "near".
    pub level: &'static str,
    pub similarity: f64,
    pub test_question: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub n_train: usize,
    pub n_test: usize,
    /// Test questions whose full text is in the training data.
    pub exact: usize,
    /// ... whose stem (choices stripped) is, without a full match.
    pub stem: usize,
    /// ... that are near-duplicates of a training question, without a stem match.
    pub near: usize,
    /// Any of the three.
    pub contaminated: usize,
    pub contaminated_pct: f64,
    pub threshold: f64,
    pub hits: Vec<Hit>,
}

impl Report {
    pub fn summary(&self) -> String {
        format!(
            "{} of {} test questions ({:.1}%) appear in the training data ({} training questions): \
             {} exact, {} same stem with other answer choices, {} near-duplicates (trigram Jaccard >= {})",
            self.contaminated, self.n_test, self.contaminated_pct, self.n_train, self.exact, self.stem, self.near, self.threshold
        )
    }
}

/// Compare every test question against the training questions.
pub fn check(train: &[String], test: &[String], threshold: f64) -> crate::error::Result<Report> {
    crate::error::in_range("contamination", "threshold", threshold, 0.0..=1.0)?;
    Ok(check_unchecked(train, test, threshold))
}

fn check_unchecked(train: &[String], test: &[String], threshold: f64) -> Report {
    let full: HashMap<String, usize> = train.iter().enumerate().map(|(i, q)| (normalize(q), i)).collect();
    let stems: HashMap<String, usize> = train.iter().enumerate().map(|(i, q)| (normalize_stem(q), i)).collect();
    let train_sh: Vec<HashSet<u64>> = train.iter().map(|q| shingles(&normalize_stem(q))).collect();
    // Inverted index shingle → training questions, so the near-duplicate search touches only
    // candidates that share at least one trigram.
    let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, s) in train_sh.iter().enumerate() {
        for h in s {
            index.entry(*h).or_default().push(i);
        }
    }
    let mut hits = Vec::new();
    let (mut exact, mut stem, mut near) = (0, 0, 0);
    for (ti, q) in test.iter().enumerate() {
        if let Some(&i) = full.get(&normalize(q)) {
            exact += 1;
            hits.push(Hit { test_index: ti, train_index: i, level: "exact", similarity: 1.0, test_question: q.clone() });
            continue;
        }
        let st = normalize_stem(q);
        if let Some(&i) = stems.get(&st) {
            stem += 1;
            hits.push(Hit { test_index: ti, train_index: i, level: "stem", similarity: 1.0, test_question: q.clone() });
            continue;
        }
        let sh = shingles(&st);
        if sh.is_empty() {
            continue;
        }
        let mut shared: HashMap<usize, usize> = HashMap::new();
        for h in &sh {
            if let Some(list) = index.get(h) {
                // Very common trigrams say nothing about duplication and cost quadratic time.
                if list.len() > 2000 {
                    continue;
                }
                for &i in list {
                    *shared.entry(i).or_default() += 1;
                }
            }
        }
        let best =
            shared.into_iter().map(|(i, c)| (i, c as f64 / (sh.len() + train_sh[i].len() - c) as f64)).max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        if let Some((i, sim)) = best {
            if sim >= threshold {
                near += 1;
                hits.push(Hit { test_index: ti, train_index: i, level: "near", similarity: sim, test_question: q.clone() });
            }
        }
    }
    let contaminated = exact + stem + near;
    Report {
        n_train: train.len(),
        n_test: test.len(),
        exact,
        stem,
        near,
        contaminated,
        contaminated_pct: if test.is_empty() { 0.0 } else { 100.0 * contaminated as f64 / test.len() as f64 },
        threshold,
        hits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        let train = vec![
            "Could a cat  swim across the  English Channel?".to_string(),
            "Q: The sun is responsible for Answer choices: A: puppies, B: plants".to_string(),
            "Tom has 12 apples and buys 5 more apples at the big market today. How many apples does Tom have?".to_string(),
        ];
        let test = vec![
            "could a cat swim across the english channel?".to_string(),
            "Q: The sun is responsible for Answer choices: A: rocks, B: plants".to_string(),
            "Tom has 12 apples and buys 5 more apples at the big market today. How many apples does Tom have now?".to_string(),
            "Something else entirely.".to_string(),
        ];
        let r = check(&train, &test, 0.8).unwrap();
        assert_eq!((r.exact, r.stem, r.near, r.contaminated), (1, 1, 1, 3), "{:?}", r.hits);
    }
}
