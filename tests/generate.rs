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
    let prompt = s.tokenizer.encode(s.template.prompt(BANANAS).unwrap(), false).unwrap().get_ids().to_vec();
    let reference = s.model.greedy(&prompt, 24, &[2]).unwrap();
    assert_eq!(one[0].text, s.tokenizer.decode(&reference, true).unwrap());
    assert!(one[0].text.starts_with("To find out how many groups of 2 bananas are in each group of 93"), "{}", one[0].text);
    assert_eq!((one[0].tokens, one[0].finish), (24, Finish::Length));

    let qs: Vec<String> =
        [BANANAS, "What is 7 + 5?", "Tom has 12 apples and eats 3. How many apples are left?", "Is 17 prime?"].iter().map(|q| q.to_string()).collect();
    let batched = generate(&s, &qs, &opts).unwrap();
    for (q, b) in qs.iter().zip(&batched) {
        let alone = generate(&s, std::slice::from_ref(q), &opts).unwrap();
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

// ---- Decoding with quantized (Q8_0, Q4_1) weights.

use candle_core::Tensor;
use cotlab::model::generate::{generate_ids, generate_ids_batched, prompt_ids};
use cotlab::model::transformer::KvCache;
use cotlab::model::DecodeWeights;

/// Last-position logits of `ids` from one cached-decoding step (a prefill) with `mode`'s weights.
fn decoded_logits(s: &Student, ids: &[u32], mode: DecodeWeights) -> Vec<f32> {
    let _w = s.model.decode_weights(mode).unwrap();
    let t = ids.len();
    let dev = &s.model.device;
    let input = Tensor::new(ids, dev).unwrap().unsqueeze(0).unwrap();
    let pos = Tensor::arange(0u32, t as u32, dev).unwrap().unsqueeze(0).unwrap();
    let m: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j > i { -1e9 } else { 0.0 })).collect();
    let mask = Tensor::from_vec(m, (1, 1, t, t), dev).unwrap();
    let mut cache = KvCache::new(s.config.num_hidden_layers);
    s.model.step(&input, &pos, &mask, &mut cache).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

fn svamp_prompts(s: &Student, n: usize) -> Vec<Vec<u32>> {
    let ds = cotlab::data::load_dataset(&common::data_dir(), "svamp", &cotlab::data::DatasetOptions { limit: Some(n), seed: Some(0), ..Default::default() })
        .unwrap();
    let qs: Vec<String> = ds.examples.iter().map(|e| e.question.clone()).collect();
    prompt_ids(s, &qs).unwrap()
}

/// `mode`'s decoding of 8 SVAMP prompts against f32's: the largest difference of the logits
/// after each prompt (asserting the same next token), and each prompt's common prefix of 64
/// greedy tokens (EOS ignored, so every answer has 64).
fn against_f32(s: &Student, mode: DecodeWeights) -> (f32, Vec<usize>) {
    let prompts = svamp_prompts(s, 8);
    let mut worst = 0f32;
    for p in &prompts {
        let (f, q) = (decoded_logits(s, p, DecodeWeights::F32), decoded_logits(s, p, mode));
        assert_eq!(argmax(&f), argmax(&q), "{} changes the first token", mode.name());
        worst = worst.max(max_abs_diff(&f, &q));
    }
    let f32_opts = GenOptions { max_new_tokens: 64, ignore_eos: true, decode_weights: DecodeWeights::F32, ..Default::default() };
    let f = generate_ids(s, &prompts, &[], &f32_opts).unwrap();
    let q = generate_ids(s, &prompts, &[], &GenOptions { decode_weights: mode, ..f32_opts.clone() }).unwrap();
    (worst, f.iter().zip(&q).map(|(a, b)| a.ids.iter().zip(&b.ids).take_while(|(x, y)| x == y).count()).collect())
}

/// Q8_0 decoding of real SVAMP prompts stays close to f32's: the same next token at every
/// prompt's end with logits within a small tolerance, and the same greedy answers for most of
/// their length. A broken path (wrong rows, a missing bias or head, stale weights) fails both.
#[test]
fn q8_0_decoding_agrees_with_f32() {
    require!(Data, Model);
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let (worst, common_prefix) = against_f32(&s, DecodeWeights::Q8_0);
    let same16 = common_prefix.iter().filter(|&&n| n >= 16).count();
    eprintln!("q8_0 vs f32: last-position logits within {worst}; common prefix of 64 new tokens per prompt: {common_prefix:?}");
    // Measured: 0.94 on SmolLM2-135M with f32 activations (candle's kernels, which quantize the
    // activations too: 1.21); logits span about ±30.
    assert!(worst < 2.0, "q8_0 logits differ from f32 by {worst}");
    // Measured: [17, 17, 64, 32, 28, 27, 8, 64] (7 of 8 agree on 16 tokens, 257 of 512 in all);
    // greedy answers part at near-ties, so the floor leaves room for other CPUs' kernels.
    assert!(same16 >= 5 && common_prefix.iter().sum::<usize>() >= 160, "the first 16 tokens agree for only {same16} of 8 prompts: {common_prefix:?}");
}

/// bf16 decoding on the CPU (cotlab's kernel: bf16 weights and per-product bf16 activations,
/// f32 accumulation and everything else f32) stays close to f32's: the same next token at every
/// prompt's end with logits within a bf16-sized tolerance, and most greedy tokens in common.
#[test]
fn bf16_decoding_agrees_with_f32() {
    require!(Data, Model);
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let (worst, common_prefix) = against_f32(&s, DecodeWeights::Bf16);
    eprintln!("bf16 vs f32: last-position logits within {worst}; common prefix of 64 new tokens per prompt: {common_prefix:?}");
    assert!(worst < 2.0, "bf16 logits differ from f32 by {worst}");
    assert!(common_prefix.iter().filter(|&&n| n >= 16).count() >= 5, "the first 16 tokens agree for too few prompts: {common_prefix:?}");
}

/// Continuous batching with Q8_0, Q4_1 or bf16 weights decodes what each prompt decodes alone:
/// every output of cotlab's kernels is one fixed sequence of operations whatever the batch
/// (candle's kernels, used before, picked tiles by the number of rows and failed this at token 5).
#[test]
fn quantized_continuous_batching_matches_batch_one() {
    require!(Data, Model);
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let prompts = svamp_prompts(&s, 8);
    for mode in [DecodeWeights::Q8_0, DecodeWeights::Q4_1, DecodeWeights::Bf16] {
        let opts = GenOptions { max_new_tokens: 24, decode_weights: mode, ..Default::default() };
        let stops = [2u32];
        let batched = generate_ids_batched(&s, &prompts, &stops, &opts, 3).unwrap();
        for (i, (p, b)) in prompts.iter().zip(&batched).enumerate() {
            let alone = generate_ids(&s, std::slice::from_ref(p), &stops, &opts).unwrap();
            assert_eq!(alone[0], *b, "{}: continuous batching != batch 1 for prompt {i}", mode.name());
        }
    }
}

/// The default student's GGUF stores Q4_1 layers and a Q8_0 embedding table, so `q4_1`
/// decoding (Q4_1 projections, Q8_0 head) reads exactly the f32 path's weights: the logits
/// differ only by the order of summation, and greedy answers are the f32 ones.
#[test]
fn q4_1_decoding_of_the_default_student_is_f32s() {
    require!(Data, Model);
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let (worst, common_prefix) = against_f32(&s, DecodeWeights::Q4_1);
    eprintln!("q4_1 vs f32: last-position logits within {worst}; common prefix of 64 new tokens per prompt: {common_prefix:?}");
    // Requantized weights that were not the GGUF's would move logits by about 1 (q8_0: 0.94).
    assert!(worst < 1e-3, "q4_1 logits differ from f32 by {worst}: the weights are not the GGUF's");
    assert!(common_prefix.iter().filter(|&&n| n == 64).count() >= 6, "greedy answers part: {common_prefix:?}");
}

/// One AdamW step on `prompt`'s next-token loss, large enough to move the logits.
fn adamw_step(s: &Student, prompt: &[u32], lr: f64) {
    use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
    let mut opt = AdamW::new(s.model.trainable().into_iter().cloned().collect(), ParamsAdamW { lr, weight_decay: 0.0, ..Default::default() }).unwrap();
    let ids = Tensor::new(prompt, &s.model.device).unwrap().unsqueeze(0).unwrap();
    let h = s.model.hidden(&ids.narrow(1, 0, prompt.len() - 1).unwrap()).unwrap().squeeze(0).unwrap();
    let target = ids.narrow(1, 1, prompt.len() - 1).unwrap().squeeze(0).unwrap();
    let loss = candle_nn::loss::cross_entropy(&s.model.logits(&h).unwrap(), &target).unwrap();
    opt.backward_step(&loss).unwrap();
}

/// `auto` (the default) decodes the untrained default student with the Q4_1 kernels, whose
/// weights are its GGUF's, and its greedy answers are f32's; LoRA adapters on top keep that
/// (the base weights are untouched), while a full fine-tuning step moves the weights off the
/// grid and `auto` no longer picks Q4_1.
#[test]
fn auto_decodes_the_untrained_default_student_as_f32_does() {
    require!(Data, Model);
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    assert_eq!(s.model.decode_weights(DecodeWeights::Auto).unwrap().mode(), DecodeWeights::Q4_1);
    let prompts = svamp_prompts(&s, 8);
    let auto = GenOptions { max_new_tokens: 64, ignore_eos: true, ..Default::default() };
    let f32_opts = GenOptions { decode_weights: DecodeWeights::F32, ..auto.clone() };
    let (a, f) = (generate_ids(&s, &prompts, &[], &auto).unwrap(), generate_ids(&s, &prompts, &[], &f32_opts).unwrap());
    for (i, (a, f)) in a.iter().zip(&f).enumerate() {
        assert_eq!(a.ids, f.ids, "prompt {i}: auto's greedy answer is not f32's");
    }
    let prompt = prompts[0].clone();
    let lora = s.with_lora(cotlab::model::lora::LoraConfig { dropout: 0.0, ..Default::default() }, 0).unwrap();
    adamw_step(&lora, &prompt, 3e-2);
    assert_eq!(lora.model.decode_weights(DecodeWeights::Auto).unwrap().mode(), DecodeWeights::Q4_1, "LoRA leaves the base weights on the grid");
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    adamw_step(&s, &prompt, 2e-3);
    assert_ne!(s.model.decode_weights(DecodeWeights::Auto).unwrap().mode(), DecodeWeights::Q4_1, "trained weights are off the Q4_1 grid");
}

/// The quantized copy lives only as long as a decoding call: after an optimizer step (full
/// fine-tuning, then LoRA adapters) the next Q8_0 decoding reads the new weights.
#[test]
fn q8_0_copy_never_goes_stale() {
    require!(Model);
    let mut s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let prompt = s.tokenizer.encode(s.template.prompt(BANANAS).unwrap(), false).unwrap().get_ids().to_vec();
    let q8 = GenOptions { max_new_tokens: 4, decode_weights: DecodeWeights::Q8_0, ..Default::default() };
    let step = |s: &Student, lr: f64| adamw_step(s, &prompt, lr);
    for lora in [false, true] {
        if lora {
            s = s.with_lora(cotlab::model::lora::LoraConfig { dropout: 0.0, ..Default::default() }, 0).unwrap();
        }
        // A Q8_0 decoding before the step (makes and drops the copy)...
        generate_ids(&s, std::slice::from_ref(&prompt), &[2], &q8).unwrap();
        let before = decoded_logits(&s, &prompt, DecodeWeights::Q8_0);
        // LoRA: B starts at 0, so a larger step to move the logits as much.
        step(&s, if lora { 3e-2 } else { 2e-3 });
        // ...then after it: close to the new f32 logits, far from the old ones.
        let (f, q) = (decoded_logits(&s, &prompt, DecodeWeights::F32), decoded_logits(&s, &prompt, DecodeWeights::Q8_0));
        let (fresh, moved) = (max_abs_diff(&f, &q), max_abs_diff(&before, &q));
        eprintln!("lora {lora}: q8_0 vs new f32 {fresh}, q8_0 moved by {moved}");
        // Measured: 0.45 and 23.1 (full, lr 2e-3), 0.40 and 4.7 (LoRA, lr 3e-2).
        assert!(fresh < 2.0 && moved > 4.0 * fresh, "lora {lora}: q8_0 vs new f32 {fresh}, moved {moved}");
    }
}

/// Bad values and mixed modes give clear errors.
#[test]
fn decode_weights_errors_are_clear() {
    require!(Model);
    let e = serde_json::from_value::<GenOptions>(serde_json::json!({"decode_weights": "q4"})).unwrap_err().to_string();
    assert!(e.contains("decode_weights: unknown value 'q4': expected one of auto, f32, bf16, q8_0, q4_1"), "{e}");
    let s = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let _q = s.model.decode_weights(DecodeWeights::Q8_0).unwrap();
    let e = s.model.decode_weights(DecodeWeights::Bf16).err().unwrap().to_string();
    assert!(e.contains("decoding with bf16 weights while another decoding of this model uses q8_0 weights"), "{e}");
    // The same mode again is fine (one copy, shared).
    let _again = s.model.decode_weights(DecodeWeights::Q8_0).unwrap();
    // From the command line too, before anything loads.
    for args in [&["eval", "--task", "svamp", "--decode-weights", "q4"][..], &["bench", "generate", "--decode-weights", "Q8"][..]] {
        let o = common::run(common::cotlab().args(args));
        assert!(
            o.code != 0 && o.stderr.contains("decode_weights: unknown value") && o.stderr.contains("expected one of auto, f32, bf16, q8_0, q4_1"),
            "{args:?}: {}",
            o.stderr
        );
    }
}

/// Runs a per-weight-shape bench (`--json`, two row counts) of the default student: its output
/// and JSON rows, checked to cover each of SmolLM2-135M's weight shapes (q/o 576×576, k/v
/// 192×576, gate/up 1536×576, down 576×1536, the tied head) at both counts.
fn bench_rows(args: &[&str]) -> (common::Out, Vec<serde_json::Value>) {
    let r = common::run(common::cotlab().args(args));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let rows: Vec<serde_json::Value> = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    let shapes: std::collections::BTreeSet<(u64, u64)> = rows.iter().map(|t| (t["rows"].as_u64().unwrap(), t["cols"].as_u64().unwrap())).collect();
    assert_eq!(shapes, [(192, 576), (576, 576), (576, 1536), (1536, 576), (49152, 576)].into_iter().collect());
    assert_eq!(rows.len(), 10);
    (r, rows)
}

/// `cotlab bench gemm` times the training step's three products on every weight shape of the
/// default student through cotlab's GEMM and the gemm crate, which agree to f32 rounding, and
/// prints the step's mix (shapes weighted by their weight count: 30 layers × 7, one head).
#[test]
fn bench_gemm_covers_every_shape_and_agrees_with_the_gemm_crate() {
    require!(Model);
    let (r, rows) = bench_rows(&["bench", "gemm", "--tokens", "7,96", "--seconds", "0", "--json"]);
    for t in &rows {
        assert!(t["cotlab_s"].as_f64().unwrap() > 0.0 && t["gemm_s"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["rel_diff"].as_f64().unwrap() < 1e-5, "the two GEMMs disagree: {t}");
    }
    for tokens in [7, 96] {
        assert!(r.stdout.contains(&format!("step mix at {tokens} tokens")), "{}", r.stdout);
    }
    assert!(r.stdout.lines().any(|l| l.split_whitespace().take(2).eq(["576x576", "60"])), "q and o of 30 layers: {}", r.stdout);
}

/// `cotlab bench matmul` times the Q8_0 and Q4_1 kernels against candle's f32 matmul on each
/// weight shape of the default student, and the kernels' products agree with f32's to the
/// quantization error — none for Q4_1 on the GGUF's Q4_1 layers.
#[test]
fn bench_matmul_covers_every_shape_and_agrees_with_f32() {
    require!(Model);
    for format in ["q8_0", "q4_1"] {
        let (_, rows) = bench_rows(&["bench", "matmul", "--decode-weights", format, "--m", "1,3", "--seconds", "0.01", "--json"]);
        for t in &rows {
            assert_eq!(t["format"], format);
            assert!(t["quant_s"].as_f64().unwrap() > 0.0 && t["f32_s"].as_f64().unwrap() > 0.0, "{t}");
            let err = t["rel_err"].as_f64().unwrap();
            let head = t["rows"] == 49152;
            match (format, head) {
                // Measured: up to 1.2 % of the largest output (random inputs); wrong rows or
                // scales give errors of the order of the outputs themselves.
                ("q8_0", _) => assert!(err < 0.05, "q8_0 and f32 products differ: {t}"),
                // The GGUF's Q4_1 layers: summation order only (measured ≤ 7e-7).
                ("q4_1", false) => assert!(err < 1e-5, "q4_1 does not read the GGUF's weights: {t}"),
                // Its Q8_0 embedding table in 4 bits (decoding keeps the head Q8_0): 9–15 %.
                _ => assert!(err < 0.3, "q4_1 head: {t}"),
            }
        }
    }
    let o = common::run(common::cotlab().args(["bench", "matmul", "--decode-weights", "bf16"]));
    assert!(o.code != 0 && o.stderr.contains("--decode-weights q8_0 or q4_1, got bf16"), "{}", o.stderr);
}
