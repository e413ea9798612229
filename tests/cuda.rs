//! CUDA: device choice, the custom ops' backward on CUDA tensors, every weight of a
//! SmolLM2-135M-shaped student getting a gradient on CUDA (f32 and bf16, against the CPU), LoRA
//! on CUDA, and cached bf16 decoding against the CPU. Needs no model files, so the compiled test
//! binary can be carried to a GPU machine on its own (scripts/gpu_check.sh).
//!
//! Without a GPU (or in a build without `--features cuda`) every CUDA test prints
//! "skipped: ..." and passes: CI has no GPU, and the CPU paths are tested elsewhere. Set
//! COTLAB_REQUIRE_CUDA=1 to make a missing device a failure instead (the GPU check does).

use candle_core::{DType, Device, Tensor, Var, D};
use cotlab::kernels::{attention, ops};
use cotlab::model::random::{preset, random_student_with};
use cotlab::model::{Student, Transformer, CUDA_BUILT};
use cotlab::train::data::TrainExample;
use cotlab::train::sft::batch_nll;

/// The CUDA device, or None after saying why the test is skipped.
fn cuda() -> Option<Device> {
    let why = if !CUDA_BUILT {
        "this cotlab was built without --features cuda (scripts/build_cuda.sh)".to_string()
    } else {
        match Device::new_cuda(0) {
            Ok(d) => return Some(d),
            Err(e) => format!("no CUDA device ({})", cotlab::error::candle_message(&e)),
        }
    };
    if std::env::var_os("COTLAB_REQUIRE_CUDA").is_some_and(|v| v == "1") {
        panic!("COTLAB_REQUIRE_CUDA=1 but {why}");
    }
    eprintln!("skipped: {why}");
    None
}

/// ‖a − b‖ / ‖b‖ over all elements, in f64 on the CPU.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let num = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    let den = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
    num / den.max(1e-30)
}

#[test]
fn device_choice_is_explained() {
    let auto = cotlab::model::device("auto").unwrap();
    match cotlab::model::device("cuda") {
        Ok(d) => {
            assert!(d.is_cuda());
            assert!(auto.is_cuda(), "auto must pick the GPU when there is one");
        }
        Err(e) => {
            let e = e.to_string();
            assert!(matches!(auto, Device::Cpu), "auto falls back to the CPU");
            if CUDA_BUILT {
                assert!(e.contains("no usable CUDA device"), "{e}");
            } else {
                assert!(e.contains("built without CUDA support") && e.contains("build_cuda.sh"), "{e}");
            }
        }
    }
    let e = cotlab::model::device("cuda:x").unwrap_err().to_string();
    assert!(e.contains("cuda:N"), "{e}");
    let e = cotlab::model::device("gpu").unwrap_err().to_string();
    assert!(e.contains("expected cpu, cuda, cuda:N or auto"), "{e}");
    assert_eq!(cotlab::model::compute_dtype("auto", &Device::Cpu).unwrap(), DType::F32);
    assert!(cotlab::model::compute_dtype("fp8", &Device::Cpu).is_err());
}

/// attention, rms_norm and rope: the fused CUDA forward and the hand-written backward agree with
/// the CPU, in f32 and bf16.
#[test]
fn custom_ops_backward_on_cuda_matches_cpu() {
    let Some(gpu) = cuda() else { return };
    let cpu = Device::Cpu;
    let x0 = Tensor::randn(0f32, 1., (2, 3, 17, 64), &cpu).unwrap();
    let w0 = Tensor::randn(0f32, 1., (2, 3, 17, 64), &cpu).unwrap();
    let alpha0 = Tensor::randn(1f32, 0.1, 64, &cpu).unwrap();
    let cos0 = Tensor::randn(0f32, 1., (17, 32), &cpu).unwrap();
    let sin0 = Tensor::randn(0f32, 1., (17, 32), &cpu).unwrap();
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2)] {
        // op(x) on `dev`: output and the gradients of Σ op(x)·w for x (and alpha).
        let run = |dev: &Device, which: usize| -> (Tensor, Tensor, Option<Tensor>) {
            let x = Var::from_tensor(&x0.to_dtype(dtype).unwrap().to_device(dev).unwrap()).unwrap();
            let alpha = Var::from_tensor(&alpha0.to_dtype(dtype).unwrap().to_device(dev).unwrap()).unwrap();
            let w = w0.to_dtype(dtype).unwrap().to_device(dev).unwrap();
            let (cos, sin) = (cos0.to_dtype(dtype).unwrap().to_device(dev).unwrap(), sin0.to_dtype(dtype).unwrap().to_device(dev).unwrap());
            let y = match which {
                // x as queries, keys and values: the gradients of all three reach x.
                0 => attention::attention(x.as_tensor(), x.as_tensor(), x.as_tensor(), &causal(dev), None, 0.125).unwrap(),
                1 => ops::rms_norm(x.as_tensor(), alpha.as_tensor(), 1e-5).unwrap(),
                _ => ops::rope(x.as_tensor(), &cos, &sin).unwrap(),
            };
            let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = g.get(&x).expect("the op passes a gradient to x").clone();
            let ga = (which == 1).then(|| g.get(&alpha).expect("rms_norm passes a gradient to alpha").clone());
            (y, gx, ga)
        };
        for (which, name) in ["attention", "rms_norm", "rope"].iter().enumerate() {
            let (yc, gc, ac) = run(&cpu, which);
            let (yg, gg, ag) = run(&gpu, which);
            assert!(yg.device().is_cuda() && gg.device().is_cuda());
            let (ey, eg) = (rel(&yg, &yc), rel(&gg, &gc));
            eprintln!("{name} {dtype:?}: forward rel err {ey:.2e}, backward {eg:.2e}");
            assert!(ey < tol && eg < tol, "{name} {dtype:?}: CUDA vs CPU forward {ey:.2e}, gradient {eg:.2e}");
            if let (Some(a), Some(b)) = (ag, ac) {
                let e = rel(&a, &b);
                assert!(e < tol, "{name} {dtype:?}: alpha gradient {e:.2e}");
            }
        }
        // The attention gradient against autograd through the composed ops, on CUDA.
        let x = Var::from_tensor(&x0.to_dtype(dtype).unwrap().to_device(&gpu).unwrap()).unwrap();
        let w = w0.to_dtype(dtype).unwrap().to_device(&gpu).unwrap();
        let xt = x.as_tensor();
        let a = (attention::attention(xt, xt, xt, &causal(&gpu), None, 0.125).unwrap() * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let scores = (xt.matmul(&xt.t().unwrap()).unwrap() * 0.125).unwrap().to_dtype(DType::F32).unwrap().broadcast_add(&causal(&gpu)).unwrap();
        let slow = candle_nn::ops::softmax(&scores, D::Minus1).unwrap().to_dtype(dtype).unwrap().matmul(xt).unwrap();
        let b = (slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let e = rel(a.get(&x).unwrap(), b.get(&x).unwrap());
        assert!(e < tol * 5.0, "attention {dtype:?}: fused+backward vs composed on CUDA {e:.2e}");
    }
}

/// A causal additive mask (17, 17) in f32 on `dev`.
fn causal(dev: &Device) -> Tensor {
    let m: Vec<f32> = (0..17).flat_map(|i| (0..17).map(move |j| if j > i { -1e9 } else { 0.0 })).collect();
    Tensor::from_vec(m, (17, 17), dev).unwrap()
}

/// A SmolLM2-135M-shaped student with random weights on the CPU, computing in `dtype`.
fn smol_shaped(dtype: DType) -> Student {
    let mut s = random_student_with(preset("smollm2-135m").unwrap(), "smollm2-135m", "none", &Device::Cpu, 7).unwrap();
    s.model.set_compute_dtype(dtype).unwrap();
    s
}

/// Another student with `s`'s weights (copied) on `dev`, computing in `dtype`.
fn same_weights(s: &Student, dev: &Device, dtype: DType) -> Student {
    let tensors = s.params().iter().map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap().to_device(dev).unwrap())).collect();
    let mut model = Transformer::new(s.config.clone(), tensors, dev).unwrap();
    model.set_compute_dtype(dtype).unwrap();
    Student {
        name: s.name.clone(),
        source: s.source.clone(),
        declared_by: s.declared_by.clone(),
        config: s.config.clone(),
        model,
        tokenizer: s.tokenizer.clone(),
        template: s.template.clone(),
    }
}

fn batch() -> Vec<TrainExample> {
    let mut rng = cotlab::rng::Rng::new(3);
    (0..2).map(|i| TrainExample { ids: (0..48 + 16 * i).map(|_| (rng.next_u64() % 49152) as u32).collect(), prompt_len: 5 }).collect()
}

/// Every one of the 272 weights gets a non-zero gradient on CUDA, in f32 and in bf16, and the
/// gradients match the CPU's (f32: to rounding; bf16: to bf16 precision).
#[test]
fn every_parameter_gets_a_gradient_on_cuda() {
    let Some(gpu) = cuda() else { return };
    gradients_against_the_cpu(&gpu, &[(DType::F32, 1e-3), (DType::BF16, 0.1)]);
}

/// The mixed-precision path itself (f32 master weights, bf16 compute) on the CPU, which has
/// every kernel it needs in bf16 too: runs everywhere, GPU or not.
#[test]
fn bf16_mixed_precision_gradients_on_cpu() {
    gradients_against_the_cpu(&Device::Cpu, &[(DType::BF16, 0.1)]);
}

fn gradients_against_the_cpu(dev: &Device, runs: &[(DType, f64)]) {
    let data = batch();
    let refs: Vec<&TrainExample> = data.iter().collect();
    let cpu = smol_shaped(DType::F32);
    let loss_cpu = batch_nll(&cpu, &refs).unwrap();
    let grads_cpu = loss_cpu.backward().unwrap();
    for &(dtype, tol) in runs {
        let s = same_weights(&cpu, dev, dtype);
        let loss = batch_nll(&s, &refs).unwrap();
        assert_eq!(loss.device().is_cuda(), dev.is_cuda());
        let dl = (loss.to_scalar::<f32>().unwrap() - loss_cpu.to_scalar::<f32>().unwrap()).abs() / loss_cpu.to_scalar::<f32>().unwrap();
        let grads = loss.backward().unwrap();
        let mut missing = Vec::new();
        let mut worst = (0.0f64, String::new());
        for (name, v) in s.params() {
            match grads.get(v) {
                Some(g) if g.abs().unwrap().max_all().unwrap().to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap() > 0.0 => {
                    assert_eq!(g.dtype(), DType::F32, "{name}: the gradient of an f32 master weight is f32");
                    let e = rel(g, grads_cpu.get(&cpu.params()[name]).unwrap());
                    if e > worst.0 {
                        worst = (e, name.clone());
                    }
                }
                _ => missing.push(name.clone()),
            }
        }
        eprintln!("{dtype:?} on {dev:?}: loss rel diff {dl:.2e}, worst gradient rel err {:.2e} ({})", worst.0, worst.1);
        assert!(
            missing.is_empty(),
            "{dtype:?}: {} of {} parameters got no gradient on {dev:?}: {:?}",
            missing.len(),
            s.params().len(),
            &missing[..missing.len().min(5)]
        );
        assert_eq!(s.params().len(), 272);
        assert!((dl as f64) < tol, "{dtype:?}: loss differs from the CPU's by {dl:.2e}");
        assert!(worst.0 < tol, "{dtype:?}: gradient of {} differs from the CPU's by {:.2e}", worst.1, worst.0);
    }
}

/// LoRA on CUDA in bf16: adapters get gradients, frozen weights none; an AdamW step moves them.
#[test]
fn lora_trains_only_adapters_on_cuda() {
    let Some(gpu) = cuda() else { return };
    let s =
        same_weights(&smol_shaped(DType::F32), &gpu, DType::BF16).with_lora(cotlab::model::lora::LoraConfig { dropout: 0.1, ..Default::default() }, 1).unwrap();
    s.model.lora.as_ref().unwrap().set_dropout_key(5);
    let data = batch();
    let refs: Vec<&TrainExample> = data.iter().collect();
    let g = batch_nll(&s, &refs).unwrap().backward().unwrap();
    assert!(s.params().values().all(|v| g.get(v).is_none()), "frozen weights get no gradient");
    let vars = s.model.trainable();
    assert!(vars.iter().all(|v| g.get(v).is_some()), "every adapter gets a gradient");
    let grads: Vec<Tensor> = vars.iter().map(|v| g.get(v).unwrap().clone()).collect();
    let mut opt = cotlab::train::adamw::AdamW::new(&vars, Default::default()).unwrap();
    let before: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().copy().unwrap()).collect();
    opt.step(&vars, &grads, 1e-3, 1.0).unwrap();
    let moved = vars.iter().zip(&before).filter(|(v, b)| rel(v.as_tensor(), b) > 0.0).count();
    assert_eq!(moved, vars.len(), "every adapter moved");
}

/// Cached bf16 decoding on CUDA: the prefill logits match the CPU's f32 ones to bf16 precision,
/// and batched greedy decoding runs (the bf16 weight copy lives for the call, then goes).
#[test]
fn bf16_decoding_on_cuda() {
    let Some(gpu) = cuda() else { return };
    let cpu = smol_shaped(DType::F32);
    let s = same_weights(&cpu, &gpu, DType::BF16);
    let ids: Vec<u32> = batch()[0].ids[..20].to_vec();
    let a = cpu.model.last_logits(&Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
    let b = s.model.last_logits(&Tensor::new(ids.as_slice(), &gpu).unwrap().unsqueeze(0).unwrap()).unwrap();
    let e = rel(&b, &a);
    eprintln!("bf16 CUDA vs f32 CPU logits: rel err {e:.2e}");
    assert!(e < 5e-2, "bf16 CUDA logits differ from the CPU's by {e:.2e}");
    let prompts: Vec<Vec<u32>> = (0..4).map(|i| ids[..10 + i].to_vec()).collect();
    let opts = cotlab::model::generate::GenOptions { max_new_tokens: 8, ..Default::default() };
    let out = cotlab::model::generate::generate_ids(&s, &prompts, &[], &opts).unwrap();
    assert!(out.iter().all(|d| d.ids.len() == 8));
}

/// Where a text test gets its tokenizer: COTLAB_TEST_TOKENIZER (a tokenizer.json; the GPU check
/// sets it), else the default student's; None (skipped) when neither is there.
fn tokenizer_source() -> Option<String> {
    match std::env::var("COTLAB_TEST_TOKENIZER") {
        Ok(p) if !p.is_empty() => Some(p),
        _ if cotlab::model::default_model_path().is_file() => Some("default".into()),
        _ => {
            eprintln!("skipped: no tokenizer (set COTLAB_TEST_TOKENIZER to a tokenizer.json, or run scripts/setup.sh)");
            None
        }
    }
}

/// SFT on CUDA in bf16 through the real trainer: the loss falls, a checkpoint is written and a
/// second run resumes from it, and the checkpoint loads on the CPU.
#[test]
fn sft_on_cuda_trains_checkpoints_and_resumes() {
    let Some(gpu) = cuda() else { return };
    sft_in_bf16(&gpu);
}

/// The same on the CPU (bf16 compute, f32 master weights): the trainer's mixed-precision path
/// without a GPU.
#[test]
fn sft_in_bf16_on_cpu() {
    sft_in_bf16(&Device::Cpu);
}

fn sft_in_bf16(dev: &Device) {
    use cotlab::train::{sft, RunDir, Schedule, SftOptions};
    let Some(tok) = tokenizer_source() else { return };
    let config = cotlab::model::ModelConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 512,
        ..preset("smollm2-135m").unwrap()
    };
    let q = cotlab::data::RationaleQuery { level: Some(2), n: Some(16), seed: Some(4), ..Default::default() };
    let corpus = cotlab::data::Catalog::new(cotlab::data::DataDir("unused".into())).rationales("arith", &q).unwrap();
    let student = || {
        let mut s = random_student_with(config.clone(), "tiny", &tok, dev, 5).unwrap();
        s.model.set_compute_dtype(DType::BF16).unwrap();
        s
    };
    let opts = SftOptions {
        max_steps: Some(6),
        batch_size: 4,
        grad_accum: 2,
        lr: 3e-3,
        schedule: Schedule::Cosine,
        max_len: 96,
        save_every: 100,
        ..Default::default()
    };
    let d = tempfile::tempdir().unwrap();
    let run = RunDir::new(d.path().join("run"));
    let s = student();
    let first = sft(&s, &corpus, &opts, &run, Some(3)).unwrap();
    assert_eq!(first.steps, 3);
    assert!(run.checkpoint().join("model.safetensors").is_file());
    let second = sft(&s, &corpus, &opts, &run, None).unwrap();
    assert_eq!(second.resumed_from, Some(3));
    let losses: Vec<f64> = first.losses.iter().chain(&second.losses).copied().collect();
    eprintln!("SFT on {dev:?} (bf16): losses {losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[5] < losses[0] - 0.3, "the loss falls: {losses:?}");
    // The checkpoint (f32 master weights) reloads on the CPU.
    let w = candle_core::safetensors::load(run.checkpoint().join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(!w.is_empty());
    assert!(w.values().all(|t| t.dtype() == DType::F32));
}
