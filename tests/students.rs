//! Students of 2026 beyond the families' logits (tests/hf_families.rs): GGUF tokenizers of
//! Llama-3 (`llama-bpe`) and Qwen2 (`qwen2`) against their tokenizer.json run by `tokenizers`;
//! `hf:` downloads from `$HF_ENDPOINT` into `$HF_HOME` with `$HF_TOKEN` (a loopback fake Hub);
//! bf16 and sharded exports that transformers loads; PEFT adapters naming a base PEFT can load.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use cotlab::model::{cotlab_home, default_model_path, Family, ModelConfig, Student};
use cotlab::train::export::{export_hf, export_hf_with, export_run_with, ExportDtype, ExportOptions};
use cotlab::train::{sft, RunDir, Schedule, SftOptions};

fn python() -> String {
    std::env::var("COTLAB_PYTHON").unwrap_or_else(|_| cotlab_home().join("venv/bin/python").display().to_string())
}

/// Run a script of tests/py and parse the JSON of its last stdout line.
fn py_json(script: &str, args: &[&str]) -> serde_json::Value {
    let o = Command::new(python()).arg(format!("{}/tests/py/{script}", env!("CARGO_MANIFEST_DIR"))).args(args).output().unwrap();
    assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(o.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap()
}

/// A tiny random Qwen3 student (head_dim 24, not hidden_size / heads) with SmolLM2's tokenizer
/// and chat template.
fn tiny_qwen3(seed: u64) -> Student {
    let config = ModelConfig {
        family: Family::Qwen3,
        hidden_act: "silu".into(),
        head_dim: Some(24),
        rope_llama3: None,
        vocab_size: 49152,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        max_position_embeddings: 256,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    };
    cotlab::model::random::random_student_with(config, "tiny-qwen3", "default", &Device::Cpu, seed).unwrap()
}

const IDS: [u32; 9] = [1, 9690, 198, 2683, 359, 253, 5356, 28, 2];

fn last_logits(s: &Student) -> Vec<f32> {
    s.model.last_logits(&Tensor::new(&IDS[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &serde_json::Value) -> f32 {
    let b: Vec<f32> = b.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// Strings where the pre-tokenizers differ: numbers, contractions in any case, unicode letters,
/// marks and a decomposed accent (NFC), whitespace runs, newlines, punctuation, code.
const STRINGS: &[&str] = &[
    "Tom has 12345 apples and 3.14159 pears in 2026.",
    "I'm sure you'RE right, they'll say; we'd go. IT'S DON'T",
    "naïve café — 日本語のテキスト, Ελληνικά, emoji 🤖✨",
    "cafe\u{301} vs café, Å vs A\u{30a}",
    "a  b   c\n\n\nd\t\te   \n  ",
    "Hello!!! ...what?? (x+y)=z; 100%",
    "def f(x):\n    return x**2\r\n\r\n",
    "   leading spaces and trailing   ",
    "<think>\nLet me add: 2+2=4.\n</think> 4<|im_end|>",
];

/// The tokenizer built from a GGUF naming `llama-bpe` or `qwen2` splits and encodes every string
/// as that model's tokenizer.json does in `tokenizers` (pieces and ids), and llama.cpp's spelling
/// of each regex splits the same; an unknown name is an error listing the known ones.
#[test]
fn gguf_llama3_and_qwen2_tokenizers_match_their_tokenizer_json() {
    use candle_core::quantized::gguf_file::Content;
    use tokenizers::{NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    require!(Model, Torch);
    let smol = Student::load(&default_model_path(), &Device::Cpu).unwrap();
    let d = tempfile::tempdir().unwrap();
    let tok_json = d.path().join("tokenizer.json");
    smol.tokenizer.save(&tok_json, false).unwrap();
    // The GGUF gets SmolLM2's vocabulary plus a user-defined <think> (the reference adds it too).
    let mut with_think = smol.tokenizer.clone();
    with_think.add_tokens(vec![tokenizers::AddedToken::from("<think>", false).normalized(false)]).unwrap();
    let want = py_json("pretokenizers.py", &[tok_json.to_str().unwrap(), &serde_json::to_string(STRINGS).unwrap()]);
    let read = |pre: &str| {
        let path = d.path().join(format!("{pre}.gguf"));
        common::gguf::write(&path, &common::gguf::tokenizer_metadata(&with_think, pre), &HashMap::new());
        let content = Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
        cotlab::model::gguf::tokenizer::from_gguf(&content, &path)
    };
    for pre in ["llama-bpe", "qwen2"] {
        let tok = read(pre).unwrap();
        for (i, s) in STRINGS.iter().enumerate() {
            let row = &want[pre][i];
            let mut n = NormalizedString::from(*s);
            if let Some(norm) = tok.get_normalizer() {
                norm.normalize(&mut n).unwrap();
            }
            let mut pts = PreTokenizedString::from(n);
            tok.get_pre_tokenizer().unwrap().pre_tokenize(&mut pts).unwrap();
            let pieces: Vec<String> = pts.get_splits(OffsetReferential::Original, OffsetType::Char).into_iter().map(|(p, _, _)| p.to_string()).collect();
            assert_eq!(serde_json::json!(pieces), row["pieces"], "{pre}: pieces of {s:?}");
            assert_eq!(row["llama_cpp_pieces"], row["pieces"], "{pre}: llama.cpp's regex splits {s:?} otherwise");
            let ids = tok.encode(*s, false).unwrap().get_ids().to_vec();
            assert_eq!(serde_json::json!(ids), row["ids"], "{pre}: ids of {s:?}");
            if s.starts_with("<think>") {
                assert_eq!(ids[0], 49152, "{pre}: <think> is one token");
                assert!(tok.decode(&ids, true).unwrap().starts_with("<think>"), "{pre}: a user-defined token is kept when decoding");
            }
        }
    }
    // The two differ where they should: Llama-3 keeps up to 3 digits together, Qwen2 none.
    assert_ne!(want["llama-bpe"][0]["pieces"], want["qwen2"][0]["pieces"]);
    let e = read("tekken").unwrap_err().to_string();
    assert!(e.contains("'tekken'") && e.contains("llama-bpe") && e.contains("qwen2") && e.contains("tekken.gguf"), "{e}");
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_fake_token_for_tests";

/// Answer one request of the Hub's file API (`/{repo}/resolve/{revision}/{file}`, ranges as
/// hf-hub asks for them) from the files of `dir`; 401 without the token, 404 for other files.
fn serve_hub(dir: &Path, head: &str, stream: &mut std::net::TcpStream) {
    use std::io::Write;
    let path = head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("");
    let header = |name: &str| head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()));
    if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return common::write_http_response(
            stream,
            "401 Unauthorized",
            "X-Error-Code: GatedRepo\r\n",
            r#"{"error":"Access to model acme/tiny-qwen3 is restricted."}"#,
        );
    }
    let file = path.strip_prefix("/acme/tiny-qwen3/resolve/main/").map(|f| dir.join(f)).filter(|p| p.is_file());
    let Some(file) = file else {
        return common::write_http_response(stream, "404 Not Found", "X-Error-Code: EntryNotFound\r\n", r#"{"error":"Entry not found"}"#);
    };
    let bytes = std::fs::read(&file).unwrap();
    let range = header("range").and_then(|r| r.strip_prefix("bytes=").map(str::to_string)).unwrap_or_else(|| "0-".into());
    let (a, b) = range.split_once('-').unwrap();
    let start: usize = a.parse().unwrap();
    let end: usize = b.parse().unwrap_or(bytes.len() - 1).min(bytes.len() - 1);
    let body = &bytes[start..=end];
    let etag = format!("etag-{}", file.file_name().unwrap().to_string_lossy().replace('.', "-"));
    let _ = write!(
        stream,
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{}\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
        body.len(),
        bytes.len()
    );
    let _ = stream.write_all(body);
}

fn hub_export(server: &common::FakeServer, home: &Path, token: Option<&str>, out: &Path) -> common::Out {
    let mut cmd = common::cotlab();
    cmd.args(["export", "--model", "hf:acme/tiny-qwen3", "--out"]).arg(out).env("HF_ENDPOINT", format!("http://{}", server.addr)).env("HF_HOME", home);
    for proxy in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_CACHE"] {
        cmd.env_remove(proxy);
    }
    match token {
        Some(t) => cmd.env("HF_TOKEN", t),
        None => cmd.env_remove("HF_TOKEN"),
    };
    common::run(&mut cmd)
}

/// `hf:ORG/NAME` fetches from `$HF_ENDPOINT` with `Authorization: Bearer $HF_TOKEN` into
/// `$HF_HOME/hub`, the files transformers' layout names; without the token the Hub's 401 is
/// an error saying to set HF_TOKEN; the token file `$HF_HOME/token` and `$HF_HUB_CACHE` count.
#[test]
fn hf_spec_uses_hf_endpoint_hf_home_and_hf_token() {
    require!(Model);
    let d = tempfile::tempdir().unwrap();
    let served = d.path().join("served");
    let s = tiny_qwen3(3);
    export_hf(&s, &served).unwrap();
    let dir = served.clone();
    let server = common::fake_server(move |_, head, stream| serve_hub(&dir, head, stream));
    let home = d.path().join("hf-home");
    let out = d.path().join("exported");
    let o = hub_export(&server, &home, Some(TOKEN), &out);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let paths: Vec<String> = server.heads.lock().unwrap().iter().filter_map(|h| h.lines().next()?.split_whitespace().nth(1).map(str::to_string)).collect();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json", "model.safetensors"] {
        assert!(paths.contains(&format!("/acme/tiny-qwen3/resolve/main/{f}")), "no request for {f}: {paths:?}");
    }
    assert!(server.auth().iter().all(|a| a == &format!("Bearer {TOKEN}")), "{:?}", server.auth());
    let snapshot = home.join("hub/models--acme--tiny-qwen3/snapshots").join(COMMIT);
    assert!(snapshot.join("model.safetensors").is_file() && snapshot.join("config.json").is_file(), "not in $HF_HOME/hub");
    let (a, b) = (std::fs::read(served.join("model.safetensors")).unwrap(), std::fs::read(out.join("model.safetensors")).unwrap());
    assert!(a == b, "the exported weights are not the served ones");
    // No token: the 401 says what to do; nothing is exported.
    let denied = d.path().join("denied");
    let o = hub_export(&server, &d.path().join("hf-home-2"), None, &denied);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("hf:acme/tiny-qwen3") && o.stderr.contains("401") && o.stderr.contains("set HF_TOKEN"), "{}", o.stderr);
    assert!(!denied.exists());
    // The token file `huggingface-cli login` writes in $HF_HOME, and $HF_HUB_CACHE for the cache.
    let home = d.path().join("hf-home-3");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), format!("{TOKEN}\n")).unwrap();
    let cache = d.path().join("hub-cache");
    let mut cmd = common::cotlab();
    cmd.args(["export", "--model", "hf:acme/tiny-qwen3", "--out"]).arg(d.path().join("from-cache-dir")).env("HF_ENDPOINT", format!("http://{}", server.addr));
    cmd.env("HF_HOME", &home).env("HF_HUB_CACHE", &cache).env_remove("HF_TOKEN").env_remove("HTTP_PROXY").env_remove("http_proxy");
    let o = common::run(&mut cmd);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(cache.join("models--acme--tiny-qwen3/snapshots").join(COMMIT).join("model.safetensors").is_file(), "not in $HF_HUB_CACHE");
    assert!(!home.join("hub").exists());
}

/// `--dtype bf16` with a shard limit: shards of at most the limit (a larger tensor alone),
/// `model.safetensors.index.json` naming every weight, BF16 tensors and `torch_dtype`
/// bfloat16; transformers loads the dir in bf16 and computes what cotlab computes from it.
#[test]
fn bf16_sharded_export_loads_in_transformers() {
    require!(Model, Torch);
    let s = tiny_qwen3(5);
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("bf16");
    let limit = 100_000u64;
    export_hf_with(&s, &out, &ExportOptions { dtype: ExportDtype::Bf16, shard_bytes: limit }).unwrap();
    assert!(!out.join("model.safetensors").exists());
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.keys().cloned().collect::<Vec<_>>(), s.params().keys().cloned().collect::<Vec<_>>());
    let mut files: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    files.sort();
    files.dedup();
    assert!(files.len() > 2, "{files:?}");
    let mut total = 0u64;
    for (i, f) in files.iter().enumerate() {
        assert_eq!(*f, format!("model-{:05}-of-{:05}.safetensors", i + 1, files.len()));
        let t = candle_core::safetensors::load(out.join(f), &Device::Cpu).unwrap();
        let bytes: u64 = t.values().map(|x| 2 * x.elem_count() as u64).sum();
        assert!(bytes <= limit || t.len() == 1, "{f}: {bytes} bytes in {} tensors", t.len());
        for (n, x) in &t {
            assert_eq!(x.dtype(), DType::BF16, "{n}");
            let want = s.params()[n].as_tensor().to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(
                x.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{n}"
            );
        }
        total += bytes;
    }
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["torch_dtype"].as_str(), config["model_type"].as_str()), (Some("bfloat16"), Some("qwen3")));
    let back = Student::load(&out, &Device::Cpu).unwrap();
    let ours = last_logits(&back);
    let v = py_json("hf_load_export.py", &[out.to_str().unwrap(), &serde_json::to_string(&IDS).unwrap()]);
    assert_eq!((v["loaded_dtype"].as_str(), v["config_dtype"].as_str()), (Some("torch.bfloat16"), Some("torch.bfloat16")));
    let max = max_diff(&ours, &v["logits"]);
    assert!(max < 1e-4, "max |logit difference| vs transformers {max}");
}

/// `cotlab export --dtype bf16` writes BF16 weights and says so in config.json; a dtype it does
/// not write is refused naming the choices, and nothing is written.
#[test]
fn cli_export_dtype() {
    require!(Model);
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    export_hf(&tiny_qwen3(9), &src).unwrap();
    let out = d.path().join("bf16");
    let o = common::run(common::cotlab().args(["export", "--model"]).arg(&src).arg("--out").arg(&out).args(["--dtype", "bf16"]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let w = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(w.values().all(|t| t.dtype() == DType::BF16));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    let bad = d.path().join("f16");
    let o = common::run(common::cotlab().args(["export", "--model"]).arg(&src).arg("--out").arg(&bad).args(["--dtype", "f16"]));
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("'f16'") && o.stderr.contains("f32, bf16"), "{}", o.stderr);
    assert!(!bad.exists());
}

/// One LoRA step on `base` (a large step, so the adapters move the logits), exported as PEFT
/// adapters into `peft-NAME`; returns that dir, its adapter_config.json and the trained
/// student's logits.
fn lora_export(base: &Student, d: &Path, name: &str) -> (PathBuf, serde_json::Value, Vec<f32>) {
    let corpus = cotlab::data::Catalog::new(cotlab::data::DataDir("unused".into()))
        .rationales("arith", &cotlab::data::RationaleQuery { level: Some(2), n: Some(4), seed: Some(4), ..Default::default() })
        .unwrap();
    let lora = cotlab::model::lora::LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()] };
    let opts = SftOptions { max_steps: Some(1), batch_size: 2, lr: 0.05, schedule: Schedule::Constant, max_len: 64, lora: Some(lora), ..Default::default() };
    let run = RunDir::new(d.join(format!("run-{name}")));
    sft(base, &corpus, &opts, &run, None).unwrap();
    let out = d.join(format!("peft-{name}"));
    export_run_with(&run.path, &out, false).unwrap();
    let cfg = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    let trained = last_logits(&cotlab::train::export::load_run(&run.path).unwrap());
    let moved = trained.iter().zip(last_logits(base)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-2, "{name}: the adapters barely move the logits ({moved}): the comparison would not see them");
    (out, cfg, trained)
}

/// PEFT's `base_model_name_or_path`: the Hub id (and commit as `revision`) for a student from
/// the Hub cache; the absolute path of a local HF dir; for a GGUF, which PEFT cannot load, the
/// base exported into the adapter dir's `base/`, with the README saying so. PEFT's
/// `AutoPeftModelForCausalLM` loads each (the Hub one from the cache, offline) and computes
/// what cotlab computes with the adapters.
#[test]
fn peft_adapters_name_a_base_peft_can_load() {
    require!(Model, Torch);
    let d = tempfile::tempdir().unwrap();
    let s = tiny_qwen3(7);
    let hub = d.path().join("hub");
    let snapshot = hub.join("models--acme--tiny-qwen3/snapshots").join(COMMIT);
    export_hf(&s, &snapshot).unwrap();
    let (from_hub, cfg, hub_logits) = lora_export(&Student::load(&snapshot, &Device::Cpu).unwrap(), d.path(), "hub");
    assert_eq!((cfg["base_model_name_or_path"].as_str(), cfg["revision"].as_str()), (Some("acme/tiny-qwen3"), Some(COMMIT)));
    let readme = std::fs::read_to_string(from_hub.join("README.md")).unwrap();
    assert!(readme.contains("`acme/tiny-qwen3`") && readme.contains(COMMIT), "{readme}");
    assert!(!from_hub.join("base").exists());

    let local = d.path().join("local-hf");
    export_hf(&s, &local).unwrap();
    let (from_dir, cfg, dir_logits) = lora_export(&Student::load(&local, &Device::Cpu).unwrap(), d.path(), "dir");
    assert_eq!(cfg["base_model_name_or_path"].as_str(), Some(std::path::absolute(&local).unwrap().to_str().unwrap()));
    assert!(cfg["revision"].is_null());

    let gguf = d.path().join("tiny-qwen3.gguf");
    common::gguf::write_qwen(&gguf, &s);
    let (from_gguf, cfg, gguf_logits) = lora_export(&Student::load_with(&gguf, &Device::Cpu, Some("chatml")).unwrap(), d.path(), "gguf");
    let named = from_gguf.join("base");
    assert_eq!(cfg["base_model_name_or_path"].as_str(), Some(std::path::absolute(&named).unwrap().to_str().unwrap()));
    let readme = std::fs::read_to_string(from_gguf.join("README.md")).unwrap();
    assert!(readme.contains("PEFT cannot load") && readme.contains("base/") && readme.contains(&gguf.display().to_string()), "{readme}");

    let dirs: Vec<String> = [&from_hub, &from_dir, &from_gguf].iter().map(|p| p.display().to_string()).collect();
    let o = Command::new(python())
        .arg(format!("{}/tests/py/peft_logits.py", env!("CARGO_MANIFEST_DIR")))
        .arg(serde_json::to_string(&IDS).unwrap())
        .args(&dirs)
        .env("HF_HUB_CACHE", &hub)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "peft_logits.py: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(o.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    for (dir, ours) in dirs.iter().zip([hub_logits, dir_logits, gguf_logits]) {
        let max = max_diff(&ours, &v[dir]);
        assert!(max < 1e-4, "{dir}: PEFT's logits differ from cotlab's by {max}");
    }
}

/// What cotlab cannot compute exactly is refused naming the file and what is supported: a GGUF
/// of another architecture, a Llama GGUF with rope_freqs factors, a Qwen3 config.json with
/// sliding-window attention on.
#[test]
fn unsupported_gguf_architecture_and_qwen3_sliding_window_are_refused() {
    use candle_core::quantized::gguf_file::Value;
    let d = tempfile::tempdir().unwrap();
    let gguf = d.path().join("phi.gguf");
    common::gguf::write(&gguf, &[("general.architecture".to_string(), Value::String("phi3".into()))], &HashMap::new());
    let e = Student::load(&gguf, &Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("phi.gguf") && e.contains("'phi3'") && e.contains("llama, qwen2, qwen3"), "{e}");
    // Llama-3.1+ rope scaling stored as per-frequency factors: refused, not computed without them.
    let gguf = d.path().join("llama31.gguf");
    let factors = HashMap::from([("rope_freqs.weight".to_string(), Tensor::ones(32, DType::F32, &Device::Cpu).unwrap())]);
    common::gguf::write(&gguf, &[("general.architecture".to_string(), Value::String("llama".into()))], &factors);
    let e = Student::load(&gguf, &Device::Cpu).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("llama31.gguf") && e.contains("rope_freqs.weight") && e.contains("Hugging Face dir"), "{e}");
    let config = serde_json::json!({
        "model_type": "qwen3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-6, "use_sliding_window": true,
    });
    let path = d.path().join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let e = cotlab::model::hf::read_config(&path).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("use_sliding_window"), "{e}");
    // The same config without it reads, with Qwen3's defaults where keys are missing.
    let mut config = config;
    config.as_object_mut().unwrap().remove("use_sliding_window");
    config.as_object_mut().unwrap().remove("head_dim");
    std::fs::write(&path, config.to_string()).unwrap();
    let c = cotlab::model::hf::read_config(&path).unwrap();
    assert_eq!((c.family, c.head_dim(), c.attention_bias, c.tie_word_embeddings), (Family::Qwen3, 128, false, false));
}
