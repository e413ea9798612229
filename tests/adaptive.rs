//! The student-adaptive strategy end to end (`scripts/adaptive.rhai`) on the embedded `arith`
//! data and the default student, at toy sizes: the pilot picks a level and then trains exactly
//! what that fixed level's point trains; `min_loss` keeps each question's lowest-NLL rationale.

#[macro_use]
mod common;

use std::path::Path;

use common::{cotlab, run};
use serde_json::Value;

fn points(sweep_dir: &Path) -> Vec<Value> {
    let mut v: Vec<Value> = std::fs::read_dir(sweep_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("point.json"))
        .filter(|p| p.is_file())
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    v.sort_by_key(|p| p["index"].as_u64());
    v
}

fn csv(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| l.split(',').map(str::to_string).collect()).collect()
}

#[test]
fn adaptive_strategies_run_beside_the_fixed_levels() {
    require!(Model);
    let d = tempfile::tempdir().unwrap();
    let adaptive = || {
        run(cotlab()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["run", "scripts/adaptive.rhai", "--out"])
            .arg(d.path().join("out"))
            .arg("--runs")
            .arg(d.path().join("runs"))
            .args(["--set", "levels=1,6", "--set", "train_n=4", "--set", "max_steps=1", "--set", "batch_size=2", "--set", "eval_n=2"])
            .args(["--set", "eval_max_new_tokens=8", "--set", "max_len=96", "--set", "pilot_eval_n=2"]))
    };
    let r = adaptive();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let ps = points(&d.path().join("runs/adaptive-arith"));
    // level 1, level 6, answer-only, pilot, min_loss, softmin.
    assert_eq!(ps.len(), 6, "{}", r.stderr);
    // A complete point keeps its weights, not its optimizer moments (they only serve a resume).
    for p in &ps {
        let ck = Path::new(p["run_dir"].as_str().unwrap()).join("checkpoint");
        assert!(ck.join("model.safetensors").is_file() && !ck.join("optimizer.safetensors").exists(), "{}", ck.display());
    }
    let by_select = |s: &str| ps.iter().find(|p| p["config"]["select"] == s).unwrap_or_else(|| panic!("no {s} point"));

    // The pilot: one row per candidate level, one chosen, then the chosen level's own training.
    let pilot = by_select("pilot");
    let pilot_dir = Path::new(pilot["run_dir"].as_str().unwrap());
    let table = csv(&pilot_dir.join("pilot.csv"));
    assert_eq!(table.len(), 3, "{table:?}");
    let chosen: Vec<&Vec<String>> = table[1..].iter().filter(|row| row.last().unwrap() == "true").collect();
    assert_eq!(chosen.len(), 1, "{table:?}");
    let level = chosen[0][0].parse::<f64>().unwrap();
    assert_eq!(pilot["metrics"]["selected_level"].as_f64(), Some(level));
    assert_eq!(pilot["strategy"]["chosen"].as_f64(), Some(level));
    for l in ["level-1", "level-6"] {
        assert!(pilot_dir.join("pilot").join(l).join("eval/results.json").is_file(), "pilot {l} was evaluated");
        assert!(!pilot_dir.join("pilot").join(l).join("checkpoint/optimizer.safetensors").exists());
    }
    let fixed = ps.iter().find(|p| p["config"]["level"].as_f64() == Some(level) && p["config"].get("select").is_none()).unwrap();
    for k in ["train_loss_first", "train_loss_last", "accuracy", "train_tokens"] {
        assert_eq!(pilot["metrics"][k], fixed["metrics"][k], "{k}: the pilot's pick trains what the fixed level {level} trains");
    }

    // A pilot point interrupted after its runs finished (no point.json) resumes from checkpoints
    // without optimizer moments: nothing is trained again, the numbers are the same.
    std::fs::remove_file(pilot_dir.join("point.json")).unwrap();
    let r = adaptive();
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(!r.stderr.contains("[sft] step"), "nothing is retrained:\n{}", r.stderr);
    let again = points(&d.path().join("runs/adaptive-arith"));
    let pilot_again = again.iter().find(|p| p["config"]["select"] == "pilot").unwrap();
    assert_eq!(pilot_again["metrics"]["accuracy"], pilot["metrics"]["accuracy"]);
    assert_eq!(pilot_again["strategy"], pilot["strategy"]);

    // min_loss: every question keeps the candidate with the lowest NLL (ties: the coarser).
    let min_loss = by_select("min_loss");
    let sel = csv(&Path::new(min_loss["run_dir"].as_str().unwrap()).join("selection.csv"));
    assert_eq!(sel[0], ["question", "level", "nll_level_1", "nll_level_6"]);
    assert_eq!(sel.len(), 1 + 4, "{sel:?}");
    for row in &sel[1..] {
        // The question may hold commas (quoted): read the last three fields.
        let row: Vec<&String> = row.iter().rev().take(3).collect();
        let (kept, n1, n6) = (row[2].parse::<u8>().unwrap(), row[1].parse::<f64>().unwrap(), row[0].parse::<f64>().unwrap());
        assert!(n1 > 0.0 && n6 > 0.0, "{row:?}");
        assert_eq!(kept, if n1 <= n6 { 1 } else { 6 }, "{row:?}");
    }
    let kept = &min_loss["strategy"]["kept"];
    assert_eq!(kept["level_1"].as_u64().unwrap() + kept["level_6"].as_u64().unwrap(), 4);
    assert_eq!(min_loss["metrics"]["train_examples"].as_u64(), Some(4));
    let softmin = by_select("softmin");
    assert_eq!(csv(&Path::new(softmin["run_dir"].as_str().unwrap()).join("selection.csv")).len(), 1 + 4);

    // The report: the strategies beside the levels and the baseline, a chart with CI bars.
    let header = csv(&d.path().join("out/adaptive.csv"))[0].clone();
    for col in ["student", "answer-only", "level 1", "level 6", "pilot", "min_loss", "softmin"] {
        assert!(header.iter().any(|h| h == col), "{col} missing from {header:?}");
    }
    assert!(d.path().join("out/pilot_default_seed1.csv").is_file());
    let long = std::fs::read_to_string(d.path().join("out/adaptive_long.csv")).unwrap();
    let pilot_line = long.lines().find(|l| l.starts_with("default,pilot,")).unwrap_or_else(|| panic!("{long}"));
    assert!(pilot_line.contains(&format!(",{level:.1},")) || pilot_line.contains(&format!(",{level},")), "selected level {level} in {pilot_line}");
    let html = std::fs::read_to_string(d.path().join("out/adaptive.html")).unwrap();
    assert!(html.contains("Plotly.newPlot") && html.contains("\"arrayminus\""), "a chart with CI bars");
}

#[test]
fn bad_strategy_options_are_invalid_points_with_reasons() {
    require!(Model);
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("s.rhai");
    std::fs::write(
        &script,
        r#"let r = sweep(#{ name: "bad", base: #{ dataset: "arith", max_steps: 1 }, include: [
              #{ select: "best" }, #{ select: "pilot", level: 2 }, #{ select: "min_loss", select_levels: [4] },
              #{ pilot_n: 3 }, #{ select: "min_loss", train: false } ] });
           print(`invalid ${r.invalid} of ${r.total}`);
           for p in r.points { print(`reason: ${p.reason}`); }"#,
    )
    .unwrap();
    let r = run(cotlab().arg("run").arg(&script).arg("--out").arg(d.path().join("out")).arg("--runs").arg(d.path().join("runs")));
    // A sweep whose points are all invalid is an error (round 3) that gives every reason.
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("all 5 points are invalid"), "{}", r.stderr);
    for reason in ["expected one of pilot, min_loss, softmin", "drop 'level'", "at least two levels", "give 'select'", "needs train: true"] {
        assert!(r.stderr.contains(reason), "no '{reason}' in\n{}", r.stderr);
    }
}
