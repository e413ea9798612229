//! The Rhai API: data, CoT measures, frames, sandbox limits.

#[macro_use]
mod common;

use cotlab::script::{Context, Runner};

fn runner() -> Runner {
    Runner::new(Context::new(common::data_dir(), None))
}

fn eval(src: &str) -> rhai::Dynamic {
    runner().eval("test.rhai", src).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn datasets_rationales_and_measures() {
    require!(Data, Model);
    assert_eq!(eval("dataset(\"svamp\", #{split: \"test\"}).len()").as_int().unwrap(), 300);
    assert_eq!(eval("dataset(\"svamp\", #{limit: 7, seed: 1}).len()").as_int().unwrap(), 7);
    assert_eq!(eval("let d = dataset(\"arith\", #{n: 50, seed: 2}); d.split(0.2, 1).test.len()").as_int().unwrap(), 10);
    assert_eq!(eval("rationales(\"svamp\", #{teacher: \"gpt-4o\", level: 3, format: \"sym\"}).len()").as_int().unwrap(), 699);
    assert_eq!(eval("rationales(\"svamp\", #{teacher: \"human\"}).len()").as_int().unwrap(), 700);
    assert_eq!(eval("rationales(\"svamp\", #{format: \"answer-only\"})[0].rationale").into_string().unwrap(), "145");
    assert_eq!(eval("rationales(\"svamp\", #{teacher: \"ChatGPT\", level: 1})[0].gold").into_string().unwrap(), "145");
    assert_eq!(eval("measure_cot(\"1. Add 2 and 3.\\n2. Check: 5 - 3 = 2.\\nThe answer is 5\").steps").as_int().unwrap(), 2);
    assert_eq!(eval("extract_answer(\"so... The answer is (C)\", \"choice\")").into_string().unwrap(), "C");
    assert!(eval("is_correct(\"The answer is 1,000\", \"1000.0\", \"number\")").as_bool().unwrap());
    assert!(eval("extract_answer(\"nothing\", \"number\")").is_unit());
}

#[test]
fn unknown_option_keys_are_caught_with_position() {
    require!(Data, Model);
    let e = runner().eval("t.rhai", "let x = 1;\nlet d = dataset(\"svamp\", #{limt: 3});").err().unwrap().to_string();
    assert!(e.starts_with("t.rhai:2:9:") && e.contains("unknown field `limt`"), "{e}");
}

#[test]
fn fixed_value_options_name_the_option_and_list_the_choices() {
    require!(Data, Model);
    let d = tempfile::tempdir().unwrap();
    let mut ctx = Context::new(common::data_dir(), None);
    ctx.runs_dir = d.path().to_path_buf();
    let sft = |opts: &str| {
        let src = format!("let s = student(\"default\");\nsft(s, rationales(\"svamp\", #{{teacher: \"human\", limit: 4}}), #{{run: \"r\", {opts}}})");
        let mut ctx = Context::new(common::data_dir(), None);
        ctx.runs_dir = d.path().to_path_buf();
        Runner::new(ctx).eval("t.rhai", &src).err().map(|e| e.to_string()).unwrap_or_default()
    };
    let e = sft("schedule: \"cosin\"");
    assert!(e.starts_with("t.rhai:2:") && e.contains("schedule: unknown value 'cosin': expected one of cosine, linear, constant"), "{e}");
    let e = sft("preset: \"fast\"");
    assert!(e.contains("preset: unknown value 'fast': expected one of paper"), "{e}");
    assert!(!d.path().join("r").exists(), "a bad option is refused before the run dir is made");
    let e = Runner::new(ctx)
        .eval("p.rhai", "df(#{a: [1], b: [2], c: [3]}).pivot(#{index: [\"a\"], on: \"b\", values: \"c\", agg: \"median\"})")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("agg: unknown value 'median': expected one of first, mean, sum, min, max, count"), "{e}");
}

#[test]
fn frames_group_filter_sort_pivot() {
    require!(Data, Model);
    let src = r#"
        let t = df(#{ teacher: ["a", "a", "b", "b", "b"], level: [1, 2, 1, 2, 2], words: [10, 20, 30, 40, 60] });
        let g = t.group_by(["teacher", "level"]).agg([col("words").mean().alias("w"), len().alias("n")]).sort(["teacher", "level"]);
        let p = g.pivot(#{ index: ["teacher"], on: "level", values: "w" });
        let f = t.filter((col("words") > 15) & (col("teacher") == "b"));
        [g.height, g.column("w"), g.column("n"), p.columns, p.column("2"), f.height, t.sort("words", true).column("words")[0]]
    "#;
    let v: Vec<rhai::Dynamic> = eval(src).into_array().unwrap();
    assert_eq!(v[0].as_int().unwrap(), 4);
    let w: Vec<f64> = v[1].clone().into_array().unwrap().iter().map(|x| x.as_float().unwrap()).collect();
    assert_eq!(w, vec![10.0, 20.0, 30.0, 50.0]);
    let n: Vec<i64> = v[2].clone().into_array().unwrap().iter().map(|x| x.as_int().unwrap()).collect();
    assert_eq!(n, vec![1, 1, 1, 2]);
    let cols: Vec<String> = v[3].clone().into_array().unwrap().into_iter().map(|x| x.into_string().unwrap()).collect();
    assert_eq!(cols, vec!["teacher", "1", "2"]);
    let two: Vec<f64> = v[4].clone().into_array().unwrap().iter().map(|x| x.as_float().unwrap()).collect();
    assert_eq!(two, vec![20.0, 50.0]);
    assert_eq!(v[5].as_int().unwrap(), 3);
    assert_eq!(v[6].as_int().unwrap(), 60);
}

#[test]
fn sandbox_limits_stop_runaway_scripts() {
    require!(Data, Model);
    let mut ctx = Context::new(common::data_dir(), None);
    ctx.max_operations = 100_000;
    let e = Runner::new(ctx).eval("loop.rhai", "let i = 0;\nloop { i += 1; }").err().unwrap().to_string();
    assert!(e.contains("loop.rhai:2:") && e.contains("Too many operations"), "{e}");
    let e = runner().eval("e.rhai", "eval(\"1\")").err().unwrap().to_string();
    assert!(e.contains("e.rhai:1:1:") && e.contains("eval"), "{e}");
    let e = runner().eval("m.rhai", "import \"x\" as y;").err().unwrap().to_string();
    assert!(e.contains("m.rhai:1:"), "{e}");
    // Without an output dir nothing can be written at all.
    let e = runner().eval("w.rhai", "df(#{a: [1]}).write_csv(\"x.csv\")").err().unwrap().to_string();
    assert!(e.contains("no output dir"), "{e}");
}

#[test]
fn contamination_from_a_script() {
    require!(Data, Model);
    let v = eval(r#"let r = contamination(rationales("strategyqa", #{teacher: "human"}), dataset("strategyqa")); [r.exact, r.contaminated, r.summary]"#)
        .into_array()
        .unwrap();
    assert_eq!(v[0].as_int().unwrap(), 290);
    assert_eq!(v[1].as_int().unwrap(), 290);
}

#[test]
fn arith_granularity_is_measurable() {
    require!(Data, Model);
    // The rule teacher's requested level must show up in the measured length and steps.
    let v = eval(
        r#"let out = [];
           for l in 1..=6 {
               let d = rationales("arith", #{level: l, n: 200, seed: 5}).df()
                   .group_by(["level"]).agg([col("words").mean().alias("w"), col("steps").mean().alias("s"),
                                             col("has_verification").cast("f64").mean().alias("v")]);
               out.push([d.column("w")[0], d.column("s")[0], d.column("v")[0]]);
           }
           out"#,
    )
    .into_array()
    .unwrap();
    let rows: Vec<Vec<f64>> = v.into_iter().map(|r| r.into_array().unwrap().iter().map(|x| x.as_float().unwrap()).collect()).collect();
    for w in rows.windows(2) {
        assert!(w[1][0] > w[0][0], "words grow with level: {rows:?}");
        assert!(w[1][1] >= w[0][1], "steps do not shrink with level: {rows:?}");
    }
    assert!(rows[5][1] > rows[0][1] + 2.0);
    assert_eq!(rows[5][2], 1.0, "level 6 always verifies");
    assert_eq!(rows[4][2], 0.0, "level 5 does not");
}

/// Every function cotlab registers carries a doc comment with an example, and the reference's
/// sections list exactly the engine's functions.
#[test]
fn every_bound_function_is_documented_with_an_example() {
    use cotlab::script::docs;
    let mut ctx = Context::new(cotlab::data::DataDir("datasets".into()), None);
    ctx.max_memory = Some(u64::MAX);
    let engine = cotlab::script::engine(ctx);
    let all = docs::functions(&engine, false);
    assert!(all.len() > 150, "{} functions", all.len());
    let undocumented: Vec<String> = all.iter().filter(|f| !f.doc().contains("```rhai")).map(|f| f.signature()).collect();
    assert!(undocumented.is_empty(), "functions without a doc comment and an example: {undocumented:#?}");
    let mut engine_sigs: Vec<String> = all.iter().map(|f| f.signature()).collect();
    let mut listed: Vec<String> = docs::sections().iter().flat_map(|s| s.functions.iter().map(|f| f.signature())).collect();
    engine_sigs.sort();
    listed.sort();
    assert_eq!(engine_sigs, listed, "the reference lists the engine's functions, each once");
    for name in ["param", "dataset", "sft", "sweep", "line_chart", "teacher", "pad"] {
        assert!(listed.iter().any(|s| s.starts_with(&format!("{name}("))), "{name} missing");
    }
}

/// docs/script-api.md is `cotlab functions --markdown`: regenerate it after changing a doc comment.
#[test]
fn script_api_md_is_generated_from_the_doc_comments() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/script-api.md");
    let committed = std::fs::read_to_string(&path).unwrap();
    let generated = cotlab::script::docs::markdown();
    let first_difference = committed.lines().zip(generated.lines()).position(|(a, b)| a != b);
    assert!(
        committed == generated,
        "docs/script-api.md is stale (first differing line: {:?}); regenerate it: cargo run --release -- functions --markdown > docs/script-api.md",
        first_difference.map(|i| i + 1)
    );
}

/// A call that matches no signature lists the signatures that exist (cotlab's and Rhai's).
#[test]
fn a_wrong_call_lists_the_signatures() {
    let e = runner().eval("t.rhai", "let d = dataset(\"svamp\", 3, 4);").err().unwrap().to_string();
    assert!(e.starts_with("t.rhai:1:9: Function not found: dataset"), "{e}");
    assert!(e.contains("`dataset` takes:\n  dataset(df: DataFrame) -> Dataset\n  dataset(name: string) -> Dataset\n"), "{e}");
    assert!(e.contains("\n  dataset(name: string, opts: map) -> Dataset\n"), "{e}");
    let e = runner().eval("t.rhai", "\"abc\".sub_string([]);").err().unwrap().to_string();
    assert!(e.contains("`sub_string` takes:") && e.contains("sub_string(string: &str, start: i64, len: i64)"), "{e}");
    let e = runner().eval("t.rhai", "fn f(a) { a }\nf(1, 2);").err().unwrap().to_string();
    assert!(e.contains("`f` takes:\n  f(a)"), "{e}");
    let e = runner().eval("t.rhai", "nothing_like_this(1);").err().unwrap().to_string();
    assert!(e.contains("no function is named `nothing_like_this`"), "{e}");
}

/// `param` gives the --set value typed by the default, else the default; `params` holds every
/// declared value; an undeclared key is refused before the script runs.
#[test]
fn declared_params_are_typed_and_checked() {
    let src = "let levels = param(\"levels\", [1, 2], \"h\");\nlet id = param(\"id\", \"x\", \"h\");\nprint(\"ran\");\n[levels, id, params.id, type_of(id)]";
    let mut r = runner();
    r.params = vec![("levels".into(), "1,3,6".into()), ("id".into(), "007".into())];
    let v = r.eval("p.rhai", src).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format!("{v:?}"), "[[1, 3, 6], \"007\", \"007\", \"string\"]");
    r.params = vec![];
    assert_eq!(format!("{:?}", r.eval("p.rhai", src).unwrap()), "[[1, 2], \"x\", \"x\", \"string\"]");
    r.params = vec![("level".into(), "1".into())];
    let e = r.eval("p.rhai", src).err().unwrap().to_string();
    assert!(e.contains("p.rhai declares no parameter `level` (did you mean `levels`?); its parameters are: levels, id"), "{e}");
    // A script that declares nothing still takes any key as a variable (typed by its look).
    r.params = vec![("n".into(), "5".into())];
    assert_eq!(r.eval("p.rhai", "n + params.n").unwrap().as_int().unwrap(), 10);
}
