//! Models' own chat templates rendered as transformers' `apply_chat_template`: every fixture case
//! byte for byte (and an error where transformers raised), transformers' Jinja extras, the loss
//! mask of a model template, which template a student gets, and `cotlab chat-template`.

#[macro_use]
mod common;

use std::path::PathBuf;

use cotlab::model::chat::{turns_value, ModelTemplate};
use cotlab::model::ChatTemplate;

/// The fixtures beside the release (`$COTLAB_DATA/../fixtures/chat_templates`): never copied here.
fn fixtures() -> PathBuf {
    common::data_dir().0.join("../fixtures/chat_templates")
}

fn fixture(name: &str) -> ModelTemplate {
    let path = fixtures().join(name);
    let jinja = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ModelTemplate { source: path.display().to_string(), jinja, bos: "<s>".into(), eos: "</s>".into() }
}

/// transformers' pinned clock in expected_renderings.json: 26 Jul 2024, 12:00.
fn pinned() -> chrono::NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(2024, 7, 26).unwrap().and_hms_opt(12, 0, 0).unwrap()
}

fn template(jinja: &str) -> ModelTemplate {
    ModelTemplate { source: "test.jinja".into(), jinja: jinja.into(), bos: "<s>".into(), eos: "</s>".into() }
}

fn render(jinja: &str) -> Result<String, String> {
    template(jinja).render_at(&turns_value(&[("user", " Hi there ")]), true, pinned()).map_err(|e| e.to_string())
}

#[test]
fn every_fixture_case_renders_as_transformers_byte_for_byte() {
    let text = std::fs::read_to_string(fixtures().join("expected_renderings.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    // The messages with their keys in the file's order, as Python reads them.
    let ordered: minijinja::Value = serde_json::from_str(&text).unwrap();
    let ordered_cases = ordered.get_attr("_meta").and_then(|m| m.get_attr("cases")).unwrap();
    let cases = expected["_meta"]["cases"].as_object().unwrap();
    let (mut identical, mut total, mut raised) = (0, 0, 0);
    let mut differ = Vec::new();
    for (file, renderings) in expected.as_object().unwrap().iter().filter(|(k, _)| *k != "_meta") {
        let t = fixture(file);
        for (case, want) in renderings.as_object().unwrap() {
            total += 1;
            let messages = ordered_cases.get_attr(case).and_then(|c| c.get_attr("messages")).unwrap();
            let got = t.render_at(&messages, cases[case]["add_generation_prompt"].as_bool().unwrap(), pinned());
            let same = match (want.as_str(), want["error"].as_str(), &got) {
                (Some(w), _, Ok(g)) => w == g,
                // transformers' "TemplateError: <message>": the same message, naming the file.
                (None, Some(err), Err(e)) => {
                    raised += 1;
                    let msg = err.split_once(": ").map(|(_, m)| m).unwrap_or(err);
                    e.to_string().contains(msg) && e.to_string().contains(file.as_str())
                }
                _ => false,
            };
            if same {
                identical += 1;
            } else {
                differ.push(format!("{file} {case}: transformers {want}, cotlab {got:?}"));
            }
        }
    }
    println!("chat templates: {identical} of {total} identical ({raised} raising as in transformers)");
    assert!(total >= 32 && raised >= 2, "the fixtures hold {total} cases, {raised} raising");
    assert!(differ.is_empty(), "{} of {total} differ:\n{}", differ.len(), differ.join("\n"));
}

/// Beyond the fixtures' 4 cases: multi-turn conversations, text that needs escaping, answers with
/// reasoning blocks, rendered live by transformers (tests/py/chat_templates.py) for every
/// fixture template.
#[test]
fn harder_conversations_render_as_transformers_renders_them_live() {
    require!(Data, Torch);
    let templates: Vec<PathBuf> =
        std::fs::read_dir(fixtures()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "jinja")).collect();
    assert_eq!(templates.len(), 8);
    let conversations = serde_json::json!([
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}], "add_generation_prompt": true},
        {"messages": [{"role": "user", "content": "  Ünïcode \"quoted\" {{ not jinja }}\n\tand a tab  "}], "add_generation_prompt": true},
        {"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\nThe answer is 5"}, {"role": "user", "content": "And 2+4?"}], "add_generation_prompt": false},
        {"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": false},
        {"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "Hi"}], "add_generation_prompt": true},
    ]);
    let spec = serde_json::json!({"templates": templates, "conversations": conversations});
    let py = std::env::var("COTLAB_PYTHON").unwrap_or_else(|_| cotlab::model::cotlab_home().join("venv/bin/python").display().to_string());
    let o = std::process::Command::new(&py).arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/chat_templates.py")).arg(spec.to_string()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ordered: minijinja::Value = serde_json::from_str(&conversations.to_string()).unwrap();
    let (mut identical, mut total, mut raised) = (0, 0, 0);
    let mut differ = Vec::new();
    for path in &templates {
        let t = ModelTemplate { source: path.display().to_string(), jinja: std::fs::read_to_string(path).unwrap(), bos: "<s>".into(), eos: "</s>".into() };
        for (i, want) in theirs[path.display().to_string()].as_array().unwrap().iter().enumerate() {
            total += 1;
            let c = ordered.get_item_by_index(i).unwrap();
            let got = t.render_at(&c.get_attr("messages").unwrap(), c.get_attr("add_generation_prompt").unwrap().is_true(), pinned());
            let same = match (want.as_str(), &got) {
                (Some(w), Ok(g)) => w == g,
                (None, Err(e)) => {
                    raised += 1;
                    e.to_string().contains(want["error"].as_str().unwrap().split_once(": ").unwrap().1)
                }
                _ => false,
            };
            identical += same as usize;
            if !same {
                differ.push(format!("{} #{i}: transformers {want}, cotlab {got:?}", path.display()));
            }
        }
    }
    println!("chat templates, harder conversations: {identical} of {total} identical ({raised} raising as in transformers)");
    assert!(differ.is_empty(), "{} of {total} differ:\n{}", differ.len(), differ.join("\n"));
}

#[test]
fn tojson_writes_what_python_json_dumps_writes() {
    let data = "{% set x = {'b': 'é\"\\n', 'a': [1, 2.5, true, none]} %}";
    // Expected values printed by Python's json.dumps with transformers' defaults.
    let cases = [
        ("{{ x | tojson }}", r#"{"b": "é\"\n", "a": [1, 2.5, true, null]}"#),
        ("{{ x | tojson(sort_keys=true) }}", r#"{"a": [1, 2.5, true, null], "b": "é\"\n"}"#),
        ("{{ x | tojson(ensure_ascii=true) }}", r#"{"b": "\u00e9\"\n", "a": [1, 2.5, true, null]}"#),
        ("{{ x | tojson(indent=2) }}", "{\n  \"b\": \"é\\\"\\n\",\n  \"a\": [\n    1,\n    2.5,\n    true,\n    null\n  ]\n}"),
        ("{{ x | tojson(separators=(',', ':')) }}", r#"{"b":"é\"\n","a":[1,2.5,true,null]}"#),
        ("{{ [] | tojson(indent=2) }}{{ {} | tojson }}", "[]{}"),
    ];
    for (expr, want) in cases {
        assert_eq!(render(&format!("{data}{expr}")).unwrap(), want, "{expr}");
    }
}

#[test]
fn python_methods_namespace_loop_controls_and_whitespace_follow_transformers_jinja() {
    // Expected output rendered by jinja2 3.1.6 in transformers' environment (trim_blocks,
    // lstrip_blocks, loopcontrols).
    let jinja = "{% set ns = namespace(n=0) %}\n{% for m in messages %}\n    {% if m.role == 'system' %}{% continue %}{% endif %}\n    {{ m.content.strip().split(' ')[-1] | upper }}|{{ m['content'].startswith(' Hi') }}|{{ 'a,b'.split(',') | join('+') }}\n    {% set ns.n = ns.n + 1 %}\n    {% break %}\n{% endfor %}\n{{ ns.n }}{{ bos_token }}{{ eos_token }}{% if add_generation_prompt %}>{% endif %}\n";
    assert_eq!(render(jinja).unwrap(), "    THERE|True|a+b\n1<s></s>>");
    assert_eq!(render("{{ strftime_now('%Y-%m-%d %d %b %Y') }}").unwrap(), "2024-07-26 26 Jul 2024");
    assert_eq!(render("{{ none }}|{{ false }}|{{ tools }}|{{ undefined_name }}|").unwrap(), "None|False|None||");
}

#[test]
fn a_template_that_raises_or_uses_what_is_missing_is_one_error_naming_its_source() {
    let cases = [
        ("{{ raise_exception('Only user and assistant roles are supported!') }}", "raised: Only user and assistant roles are supported!"),
        ("{{ messages | no_such_filter }}", "does not provide: filter no_such_filter is unknown (template line 1)"),
        ("{{ messages[0].content.no_such_method() }}", "does not provide: string has no method named no_such_method"),
        ("{% for m in messages %}", "is not valid Jinja"),
        ("{{ strftime_now('%Q') }}", "unsupported format '%Q'"),
    ];
    for (jinja, want) in cases {
        let e = render(jinja).expect_err(jinja);
        assert!(e.starts_with("test.jinja: chat template ") && e.contains(want), "{jinja}: {e}");
    }
}

#[test]
fn training_masks_the_loss_to_what_the_model_template_adds_for_the_answer() {
    let qwen3 = ChatTemplate::Model(fixture("Qwen-Qwen3-0.6B.jinja"));
    let (prompt, response) = qwen3.split("What is 2+3?", " 2+3=5. The answer is 5\n").unwrap();
    assert_eq!(prompt, "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(response, "<think>\n\n</think>\n\n2+3=5. The answer is 5<|im_end|>\n");
    assert_eq!(qwen3.end(), "<|im_end|>\n");
    // A run records the template it trained with, the Jinja text itself, and reloads it.
    let recorded = serde_json::to_value(&qwen3).unwrap();
    assert_eq!((recorded["name"].as_str(), recorded["jinja"].as_str()), (Some("model"), Some(fixture("Qwen-Qwen3-0.6B.jinja").jinja.as_str())));
    assert_eq!(serde_json::from_value::<ChatTemplate>(recorded).unwrap(), qwen3);
    // The stop marker is the end-of-turn token, not the EOS text Phi-3.5 writes after it.
    assert_eq!(ChatTemplate::Model(fixture("microsoft-Phi-3.5-mini-instruct.jinja")).end(), "<|end|>\n");
    // The tokenized example: the prompt's tokens are context, the rest is the response.
    let unknown = [("u".to_string(), 0)].into_iter().collect();
    let tok = tokenizers::Tokenizer::new(tokenizers::models::wordlevel::WordLevel::builder().vocab(unknown).unk_token("u".into()).build().unwrap());
    let t = cotlab::train::data::tokenize(&tok, &qwen3, &[("Q".into(), "A".into())], 512);
    let ex = &t.unwrap().examples[0];
    assert_eq!((ex.prompt_len, ex.ids.len()), (1, 2), "one unknown token for the prompt, one for the response");
    // DeepSeek-R1-Distill's generation prompt opens <think>, which its rendering of an answer
    // does not hold: no prefix, so no mask, and the error says what to do.
    let e = ChatTemplate::Model(fixture("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja")).split("What is 2+3?", "5").unwrap_err().to_string();
    assert!(e.contains("does not start with the prompt rendering") && e.contains("<think>") && e.contains("template: chatml"), "{e}");
}

/// A model dir holding only a tokenizer_config.json with `jinja` as its chat template.
fn config_dir(jinja: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let cfg = serde_json::json!({"chat_template": jinja, "bos_token": {"content": "<B>"}, "eos_token": "<E>"});
    std::fs::write(d.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    d
}

#[test]
fn a_student_keeps_the_papers_family_by_default_else_gets_its_own_template() {
    let tok = tokenizers::Tokenizer::new(tokenizers::models::wordlevel::WordLevel::builder().unk_token("u".into()).build().unwrap());
    let choose = |jinja: &str, name: Option<&str>| {
        let d = config_dir(jinja);
        ChatTemplate::choose(name, d.path(), ChatTemplate::from_jinja(jinja, "<E>"), &tok, None, None)
    };
    let llama = fixture("meta-llama-Llama-3.2-3B-Instruct.jinja").jinja;
    assert_eq!(choose(&llama, None).unwrap(), ChatTemplate::Llama3, "the paper's family stays the default");
    let own = choose(&llama, Some("model")).unwrap();
    let ChatTemplate::Model(m) = &own else { panic!("{own:?}") };
    assert_eq!((m.jinja.as_str(), m.bos.as_str(), m.eos.as_str()), (llama.as_str(), "<B>", "<E>"));
    assert!(m.source.ends_with("tokenizer_config.json"));
    assert!(own.prompt("Q").unwrap().contains("Cutting Knowledge Date: December 2023\nToday Date: "));
    let phi = fixture("microsoft-Phi-3.5-mini-instruct.jinja").jinja;
    let phi_own = choose(&phi, None).unwrap();
    assert_eq!(phi_own.name(), "model", "no paper family: the model's own");
    assert_eq!(phi_own.prompt("Q").unwrap(), "<|user|>\nQ<|end|>\n<|assistant|>\n");
    // (A training run's own template is its base model's: `a_student_of_no_paper_family_…` checks
    // it on a real run, through `Student::declared_by`.)
    // A `null` special token is none (transformers prints nothing for it).
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("tokenizer_config.json"), serde_json::json!({"chat_template": "[{{ bos_token }}]", "bos_token": null}).to_string()).unwrap();
    assert_eq!(ChatTemplate::choose(None, d.path(), None, &tok, Some(0), None).unwrap().prompt("Q").unwrap(), "[]");
    let e = choose("", None).unwrap_err().to_string();
    assert!(e.contains("declares no chat template") && e.contains("model"), "{e}");
    let e = choose("", Some("model")).unwrap_err().to_string();
    assert!(e.contains("declares no chat template"), "{e}");
    // A student of no file (random weights) has no template of its own to prompt with.
    let tiny = cotlab::model::ModelConfig {
        vocab_size: 96,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        ..cotlab::model::random::preset("smollm2-135m").unwrap()
    };
    let s = cotlab::model::random::random_student_with(tiny, "tiny", "none", &candle_core::Device::Cpu, 1).unwrap();
    let e = cotlab::eval::run::PromptStyle::Model.template(&s, cotlab::data::Task::Gsm8k).unwrap_err().to_string();
    assert!(e.starts_with("random:tiny: the model declares no chat template") && e.contains("#{template"), "{e}");
}

#[test]
fn eval_prompt_model_is_the_students_own_rendering_with_the_generation_prompt() {
    require!(Data, Model);
    use cotlab::eval::run::PromptStyle;
    let s = cotlab::model::Student::load(&cotlab::model::default_model_path(), &candle_core::Device::Cpu).unwrap();
    assert_eq!(s.template.name(), "chatml", "SmolLM2 keeps its detected family");
    let t = PromptStyle::parse("model").unwrap().template(&s, cotlab::data::Task::Gsm8k).unwrap();
    assert_eq!(t.name(), "model");
    assert!(t.label().starts_with("model (") && t.label().contains(".gguf"), "{}", t.label());
    // SmolLM2's own template writes its default system turn, as the named chatml one does.
    assert_eq!(t.prompt("Q").unwrap(), s.template.prompt("Q").unwrap());
    // The evaluation's report says which template made its prompts, and the prompt itself.
    let opts = cotlab::eval::run::EvalOptions { prompt: PromptStyle::Model, max_new_tokens: Some(2), ..Default::default() };
    let d = tempfile::tempdir().unwrap();
    let r = cotlab::eval::run::evaluate(&s, &ds_one(), &opts, &d.path().join("eval")).unwrap();
    assert_eq!((r.template.as_str(), r.prompt_template.as_str()), (t.label().as_str(), t.prompt("{question}").unwrap().as_str()));
    let paper =
        cotlab::eval::run::evaluate(&s, &ds_one(), &cotlab::eval::run::EvalOptions { max_new_tokens: Some(2), ..Default::default() }, &d.path().join("paper"));
    assert_eq!(paper.unwrap().template, "chatml", "SmolLM2's paper prompt is its chatml training prompt");
}

fn ds_one() -> cotlab::data::Dataset {
    cotlab::data::load_dataset(&common::data_dir(), "svamp", &cotlab::data::DatasetOptions { limit: Some(1), seed: Some(1), ..Default::default() }).unwrap()
}

/// A student whose template is of no paper family (Phi-3.5's here) trains with its own template
/// by default, and its run reloads with it.
#[test]
fn a_student_of_no_paper_family_trains_and_reloads_with_its_own_template() {
    require!(Model);
    use cotlab::script::{Context, Runner};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("tiny-phi");
    let config = cotlab::model::ModelConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        ..cotlab::model::random::preset("smollm2-135m").unwrap()
    };
    let smol = cotlab::model::default_model_path().display().to_string();
    let s = cotlab::model::random::random_student_with(config, "tiny", &smol, &candle_core::Device::Cpu, 1).unwrap();
    cotlab::train::export::export_hf(&s, &dir).unwrap();
    let cfg_path = dir.join("tokenizer_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let phi = fixture("microsoft-Phi-3.5-mini-instruct.jinja").jinja;
    cfg["chat_template"] = phi.clone().into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut ctx = Context::new(cotlab::data::DataDir("/nonexistent".into()), None);
    ctx.runs_dir = d.path().join("runs");
    ctx.allow_read.push(dir.clone());
    let src = format!(
        r#"let s = student("{}");
           let r = sft(s, rationales("arith", #{{ level: 3, n: 4, seed: 2 }}), #{{ run: "t", max_steps: 1, batch_size: 2, grad_accum: 1, max_len: 128 }});
           let u = student("{}", #{{ template: "alpaca" }});
           sft(u, rationales("arith", #{{ level: 3, n: 4, seed: 2 }}), #{{ run: "u", max_steps: 1, batch_size: 2, grad_accum: 1, max_len: 128 }});
           let own = evaluate(student("u"), dataset("arith", #{{ n: 1 }}), #{{ name: "e", prompt: "model", max_new_tokens: 2 }});
           [s.template, student("t").template, student("u").template, own.template]"#,
        dir.display(),
        dir.display()
    );
    let v = Runner::new(ctx).eval("t.rhai", &src).unwrap_or_else(|e| panic!("{e}")).into_array().unwrap();
    let names: Vec<String> = v.into_iter().map(|v| v.into_string().unwrap()).collect();
    assert_eq!(names[..3], ["model", "model", "alpaca"]);
    // A run trained with a named template still has its base model's own template to prompt with.
    assert!(names[3].starts_with("model (") && names[3].contains("tiny-phi"), "{}", names[3]);
    let run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("runs/t/config.json")).unwrap()).unwrap();
    assert_eq!((run["template"]["name"].as_str(), run["template"]["jinja"].as_str()), (Some("model"), Some(phi.as_str())));
}

/// `template: "model"` from Rhai: the model's own template instead of its detected family.
#[test]
fn template_model_from_rhai() {
    require!(Model);
    let d = tempfile::tempdir().unwrap();
    let mut ctx = cotlab::script::Context::new(common::data_dir(), None);
    ctx.runs_dir = d.path().to_path_buf();
    let runner = cotlab::script::Runner::new(ctx);
    let r = runner.eval("t.rhai", r#"[student("default").template, student("default", #{template: "model"}).template]"#).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = r.into_array().unwrap().into_iter().map(|v| v.into_string().unwrap()).collect();
    assert_eq!(names, ["chatml", "model"]);
}

#[test]
fn chat_template_command_prints_the_rendering_and_fails_clearly() {
    require!(Model);
    let d = tempfile::tempdir().unwrap();
    let msgs = d.path().join("m.json");
    std::fs::write(&msgs, r#"[{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}]"#).unwrap();
    let sys = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";
    let turns = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n";
    let o = common::run(common::cotlab().args(["chat-template", "--messages"]).arg(&msgs));
    assert_eq!((o.code, o.stdout.as_str()), (0, format!("{sys}{turns}<|im_start|>assistant\n").as_str()), "{}", o.stderr);
    let o = common::run(common::cotlab().args(["chat-template", "--no-generation-prompt", "--messages"]).arg(&msgs));
    assert_eq!((o.code, o.stdout.as_str()), (0, format!("{sys}{turns}").as_str()), "{}", o.stderr);
    // A bad messages file is one error naming it, before the model loads.
    for (text, want) in [
        (r#"{"role": "user"}"#, "m.json: expected a JSON list of messages"),
        (r#"[{"content": "Hi"}]"#, "m.json: message 0: expected an object with a string \"role\""),
        ("[{\"role\": \"user\",\n", "m.json: line 2: not JSON"),
    ] {
        std::fs::write(&msgs, text).unwrap();
        let o = common::run(common::cotlab().args(["chat-template", "--model", "no-such-model", "--messages"]).arg(&msgs));
        assert!(o.code == 1 && o.stdout.is_empty() && o.stderr.contains(want), "{text}: {}", o.stderr);
    }
}
