//! Decoding with the KV cache: the same tokens as the cache-free reference, and a batch of
//! prompts of different lengths decodes exactly what each prompt decodes alone.

#[macro_use]
mod common;

use candle_core::Device;
use cotlab::model::generate::{generate, Finish, GenOptions};
use cotlab::model::{default_model_path, Student};

const BANANAS: &str = "There are 87 oranges and 290 bananas in Philip's collection. If the bananas are organized into 2 groups and oranges are organized into 93 groups How big is each group of bananas?";

#[test]
fn cached_batched_decoding_matches_references() {
    require!(Model);
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let opts = GenOptions { max_new_tokens: 24, ..Default::default() };
    let one = generate(&s, &[BANANAS.to_string()], &opts).unwrap();
    let prompt = s.tokenizer.encode(s.template.prompt(BANANAS), false).unwrap().get_ids().to_vec();
    let reference = s.model.greedy(&prompt, 24, &[2]).unwrap();
    assert_eq!(one[0].text, s.tokenizer.decode(&reference, true).unwrap());
    assert!(one[0].text.starts_with("To find out how many groups of 2 bananas are in each group of 93"), "{}", one[0].text);
    assert_eq!((one[0].tokens, one[0].finish), (24, Finish::Length));

    let qs: Vec<String> = [BANANAS, "What is 7 + 5?", "Tom has 12 apples and eats 3. How many apples are left?", "Is 17 prime?"]
        .iter()
        .map(|q| q.to_string())
        .collect();
    let batched = generate(&s, &qs, &opts).unwrap();
    for (q, b) in qs.iter().zip(&batched) {
        let alone = generate(&s, &[q.clone()], &opts).unwrap();
        assert_eq!(&alone[0], b, "batched != alone for {q}");
    }
    // Sampling is seeded per prompt: also independent of the batch.
    let sample = GenOptions { max_new_tokens: 12, temperature: 0.8, top_p: 0.9, seed: 3, ..Default::default() };
    let a = generate(&s, &qs, &sample).unwrap();
    let b = generate(&s, &qs[1..2], &sample).unwrap();
    assert_eq!(a[1], b[0]);
    // Stop strings cut the text.
    let stop = GenOptions { max_new_tokens: 24, stop: vec!["bananas".into()], ..Default::default() };
    let c = generate(&s, &[BANANAS.to_string()], &stop).unwrap();
    assert_eq!((c[0].text.as_str(), c[0].finish), ("To find out how many groups of 2 ", Finish::Stop));
}

/// Continuous batching (a finished row takes the next waiting prompt, left-padded into its cache
/// row) decodes what each prompt decodes alone, token for token, with rows finishing at
/// different steps and prompts of different lengths admitted mid-decode.
#[test]
fn continuous_batching_matches_batch_one() {
    require!(Model);
    use cotlab::model::generate::{generate_ids, generate_ids_batched, prompt_ids};
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let qs: Vec<String> = [
        "Say hi.",
        BANANAS,
        "What is 7 + 5?",
        "Answer yes or no: is the sky blue?",
        "Tom has 12 apples and eats 3. How many apples are left?",
        "Is 17 prime?",
        "Name a colour.",
        "A train travels 60 miles in 1.5 hours. What is its average speed in miles per hour? Explain step by step.",
        "Reply with the single word OK.",
        "What is the capital of France?",
        "Write the number after 41, and nothing else.",
        "Mary had 5 pencils, gave 2 to John and bought 7 more. Then she lost half of them. How many pencils does she have now?",
    ]
    .iter()
    .map(|q| q.to_string())
    .collect();
    let prompts = prompt_ids(&s, &qs).unwrap();
    let opts = GenOptions { max_new_tokens: 24, ..Default::default() };
    let stops = [2u32];
    let batched = generate_ids_batched(&s, &prompts, &stops, &opts, 4).unwrap();
    for (q, (p, b)) in qs.iter().zip(prompts.iter().zip(&batched)) {
        let alone = generate_ids(&s, std::slice::from_ref(p), &stops, &opts).unwrap();
        assert_eq!(alone[0], *b, "continuous batching != batch 1 for {q}");
    }
    // The schedule was exercised: answers ended at different steps.
    let lengths: std::collections::BTreeSet<usize> = batched.iter().map(|d| d.ids.len()).collect();
    assert!(lengths.len() >= 3 && batched.iter().any(|d| d.finish == Finish::Eos), "{:?}", batched.iter().map(|d| (d.ids.len(), d.finish)).collect::<Vec<_>>());
}
