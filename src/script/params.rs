//! Declared script parameters: `let levels = param("levels", [1, 2, 3], "granularity levels to train");`
//! gives the `--set levels=...` value, typed like the default, else the default.
//!
//! Declarations are read from the compiled script before it runs: every call of `param` with
//! three literal arguments (name, default, help), wherever it stands. So an undeclared `--set`
//! key or a value that does not parse as its default's type is refused before any work, and
//! `cotlab run SCRIPT --help` lists the parameters without running anything.
//!
//! Invariants:
//! - a `--set` value takes its default's type: an int default refuses `abc`; a string default
//!   keeps `007` as text; a list default takes `1,3,6` or `[1,3,6]`, each item its first item's
//!   type; a `()` default (no default) types the value by its look, as undeclared scripts do;
//! - a script that declares a parameter accepts no undeclared `--set` key (the error lists the
//!   declared ones);
//! - a `param` call whose arguments are not literals, or a name declared twice, is an error
//!   naming the line, before the script runs;
//! - a script that declares none keeps the old behaviour: every `--set` key a variable and a
//!   `params` entry, typed by its look (see [`super::parse_param`]).

use rhai::{ASTNode, Dynamic, Expr, FnCallExpr, Map, Position, Stmt, AST};

use super::docs::def;
use super::{parse_param, Context};
use crate::error::{Error, Result};

pub(super) const INTRO: &str = "A script declares what `cotlab run SCRIPT --set NAME=VALUE` may set, and `cotlab run SCRIPT --help` lists \
it. Declarations are read before the script runs, so the three arguments of `param` must be literals; an undeclared key, \
or a value that does not read as its default's type, stops the run before any work. A script that declares nothing gets \
every `--set` key as a variable and an entry of the constant map `params`, typed by its look (an integer, else a float, \
else `true`/`false`, else text; a value in double quotes is text). A declaring script's `params` holds every declared \
value.";

const PARAM_DOC: &str = r#"A declared script parameter: its `--set NAME=VALUE` value, else `default`.

The value is read as the default's type: an int default refuses `abc` (naming the key); a float
takes `3` or `3e-4`; a bool `true` or `false`; a string keeps the text as given (`007` stays
`"007"`; surrounding double quotes are dropped); a list takes `1,3,6` or `[1,3,6]` (`--set x=`
is the empty list), each item read as the default's first item; a map takes a JSON object;
`()` means no default (the value typed by its look, `()` when not set). `name`, `default` and
`help` must be literals: they are read before the script runs.

```rhai
let levels = param("levels", [1, 2, 3], "granularity levels to train");
let name = param("name", (), "run name (default: derived from the dataset)") ?? `sweep-${dataset}`;
```"#;

/// Register `param`, returning the values the runner resolved ([`Context::params`]).
pub(super) fn register(engine: &mut rhai::Engine, ctx: &Context) {
    let values = ctx.params.clone();
    def(engine, "param", ["name", "default", "help"], PARAM_DOC, move |name: &str, default: Dynamic, _help: &str| -> Dynamic {
        values.get(name).cloned().unwrap_or(default)
    });
}

/// One `param(name, default, help)` declaration.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub default: Dynamic,
    pub help: String,
}

/// The declarations of a compiled script, in source order. `file` names it in errors.
pub fn declarations(ast: &AST, file: &str) -> Result<Vec<Param>> {
    let mut found: Vec<(Position, std::result::Result<Param, String>)> = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(x, pos))) | Some(ASTNode::Stmt(Stmt::FnCall(x, pos))) => Some((x, *pos)),
            _ => None,
        };
        if let Some((x, pos)) = call.filter(|(x, _)| x.name == "param" && !x.is_qualified()) {
            found.push((pos, declaration(x)));
        }
        true
    });
    found.sort_by_key(|(pos, _)| (pos.line().unwrap_or(0), pos.position().unwrap_or(0)));
    let mut params: Vec<Param> = Vec::new();
    let mut lines: Vec<usize> = Vec::new();
    for (pos, p) in found {
        let line = pos.line().unwrap_or(0);
        let p = p.map_err(|why| Error::Script(format!("{file}:{line}:{}: {why}", pos.position().unwrap_or(0))))?;
        if let Some(i) = params.iter().position(|q| q.name == p.name) {
            return Err(Error::Script(format!(
                "{file}:{line}: param \"{}\" is declared twice (first on line {}): declare each parameter once",
                p.name, lines[i]
            )));
        }
        params.push(p);
        lines.push(line);
    }
    Ok(params)
}

/// One call's declaration, or why it is not one.
fn declaration(x: &FnCallExpr) -> std::result::Result<Param, String> {
    const SHAPE: &str = "param takes a literal name, default and help, e.g. param(\"levels\", [1, 2, 3], \"granularity levels to train\") (so --help can list it without running the script)";
    let [name, default, help] = x.args.as_slice() else {
        return Err(format!("{SHAPE}; this call has {} arguments", x.args.len()));
    };
    let literal = |e: &Expr, what: &str| e.get_literal_value(None).ok_or_else(|| format!("{SHAPE}; its {what} is not a literal"));
    let name = literal(name, "name")?.into_string().map_err(|t| format!("{SHAPE}; its name is a {t}, not a string"))?;
    if !is_identifier(&name) {
        return Err(format!("param name {name:?} must be an identifier (letters, digits, _; not starting with a digit), as --set keys are"));
    }
    let default = literal(default, "default")?;
    type_name(&default).ok_or_else(|| {
        format!("param \"{name}\": a default of type {} cannot be given with --set; use an int, float, bool, string, list, map or ()", default.type_name())
    })?;
    let help = literal(help, "help")?.into_string().map_err(|t| format!("param \"{name}\": its help is a {t}, not a string"))?;
    Ok(Param { name, default, help })
}

/// Whether `k` can be a `--set` key (and a Rhai variable).
pub fn is_identifier(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.starts_with(|c: char| c.is_ascii_digit())
}

/// The type a parameter takes, as `--help` shows it; `None` for a default `--set` cannot give.
fn type_name(default: &Dynamic) -> Option<String> {
    Some(match default.type_name() {
        "()" => "any".into(),
        "i64" => "int".into(),
        "f64" => "float".into(),
        "bool" => "bool".into(),
        "string" => "string".into(),
        "map" => "map".into(),
        "array" => {
            let items = default.as_array_ref().ok()?;
            match items.first() {
                None => "list".into(),
                Some(first) => format!("list of {}", type_name(first).filter(|t| !t.starts_with("list") && t != "map")?),
            }
        }
        _ => return None,
    })
}

/// `text` (a `--set` value) as a value of `like`'s type; `None` when it is not one.
fn parse_like(like: &Dynamic, text: &str) -> Option<Dynamic> {
    let unquoted = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
    Some(match like.type_name() {
        "()" => parse_param(text),
        "i64" => Dynamic::from_int(text.trim().parse().ok()?),
        "f64" => Dynamic::from_float(text.trim().parse().ok()?),
        "bool" => Dynamic::from_bool(match text.trim() {
            "true" => true,
            "false" => false,
            _ => return None,
        }),
        "string" => Dynamic::from(unquoted.unwrap_or(text).to_string()),
        "map" => rhai::serde::to_dynamic(serde_json::from_str::<serde_json::Value>(text).ok()?.as_object()?).ok()?,
        "array" => {
            let item = like.as_array_ref().ok()?.first().cloned().unwrap_or(Dynamic::UNIT);
            let t = text.trim();
            let inner = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(t).trim();
            if inner.is_empty() {
                return Some(Dynamic::from_array(Vec::new()));
            }
            Dynamic::from_array(inner.split(',').map(|s| parse_like(&item, s.trim())).collect::<Option<Vec<_>>>()?)
        }
        _ => return None,
    })
}

/// What a value of `like`'s type looks like on the command line, for errors.
fn expected(like: &Dynamic) -> String {
    match like.type_name() {
        "i64" => "an integer".into(),
        "f64" => "a number".into(),
        "bool" => "true or false".into(),
        "map" => "a JSON object ({\"key\": 1})".into(),
        "array" => format!("a comma-separated {} (1,3,6 or [1,3,6])", type_name(like).unwrap_or_default()),
        _ => "a value".into(),
    }
}

/// The `--set` pairs checked against the declarations and typed by their defaults. `file`
/// names the script in errors.
pub fn typed_values(file: &str, params: &[Param], set: &[(String, String)]) -> Result<Vec<(String, Dynamic)>> {
    set.iter()
        .map(|(k, text)| {
            let Some(p) = params.iter().find(|p| &p.name == k) else {
                let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
                return Err(Error::usage(format!(
                    "--set {k}: {file} declares no parameter `{k}`{}; its parameters are: {} (`cotlab run {file} --help` describes them)",
                    closest(k, &names).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default(),
                    names.join(", ")
                )));
            };
            parse_like(&p.default, text).map(|v| (k.clone(), v)).ok_or_else(|| {
                Error::usage(format!("--set {k}={text}: `{k}` takes {} (its default is {}), not `{text}`", expected(&p.default), show(&p.default)))
            })
        })
        .collect()
}

/// The declared name nearest to `k` (edit distance at most 2), for "did you mean".
fn closest<'a>(k: &str, names: &[&'a str]) -> Option<&'a str> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for j in 0..b.len() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != b[j])).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    };
    names.iter().map(|n| (distance(k, n), *n)).filter(|(d, _)| *d <= 2).min_by_key(|(d, _)| *d).map(|(_, n)| n)
}

/// Every declared parameter's value: its `--set` value, else its default.
pub fn values(params: &[Param], typed: &[(String, Dynamic)]) -> Map {
    params
        .iter()
        .map(|p| {
            let v = typed.iter().find(|(k, _)| k == &p.name).map(|(_, v)| v.clone()).unwrap_or_else(|| p.default.clone());
            (p.name.as_str().into(), v)
        })
        .collect()
}

/// A default as `--help` shows it: strings quoted, `()` as "none".
fn show(v: &Dynamic) -> String {
    if v.is_unit() {
        "none".into()
    } else {
        format!("{v:?}")
    }
}

/// The parameters as `cotlab run SCRIPT --help` lists them: name, type, default, help.
pub fn help(file: &str, params: &[Param]) -> String {
    if params.is_empty() {
        return format!("{file} declares no parameters (a script declares them with param(\"name\", default, \"help\"))");
    }
    let rows: Vec<[String; 4]> = params.iter().map(|p| [p.name.clone(), type_name(&p.default).unwrap_or_default(), show(&p.default), p.help.clone()]).collect();
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = format!("Script parameters of {file} (--set NAME=VALUE; a value is read as the default's type):\n");
    out.push_str(&format!("  {:<w0$}  {:<w1$}  {:<w2$}  {}\n", "NAME", "TYPE", "DEFAULT", "HELP"));
    for [name, ty, default, help] in rows {
        out.push_str(&format!("  {name:<w0$}  {ty:<w1$}  {default:<w2$}  {help}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decls(src: &str) -> Result<Vec<Param>> {
        declarations(&rhai::Engine::new().compile(src).unwrap(), "t.rhai")
    }

    #[test]
    fn declarations_are_found_anywhere_in_source_order() {
        let p = decls("let a = param(\"a\", [1, 2], \"list\");\nif true { param(\"b\", \"x\", \"stmt\"); }\nfn f() { param(\"c\", 1.5, \"in a function\") }")
            .unwrap();
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(type_name(&p[0].default).unwrap(), "list of int");
    }

    #[test]
    fn non_literal_or_repeated_declarations_are_refused_with_the_line() {
        let e = decls("let x = 1;\nparam(\"a\", x, \"h\");").unwrap_err().to_string();
        assert!(e.contains("t.rhai:2:") && e.contains("its default is not a literal"), "{e}");
        let e = decls("param(\"a\", 1, \"h\");\nparam(\"a\", 2, \"h\");").unwrap_err().to_string();
        assert!(e.contains("t.rhai:2:") && e.contains("declared twice (first on line 1)"), "{e}");
        let e = decls("param(\"a\", 1);").unwrap_err().to_string();
        assert!(e.contains("this call has 2 arguments"), "{e}");
        let e = decls("param(\"1a\", 1, \"h\");").unwrap_err().to_string();
        assert!(e.contains("must be an identifier"), "{e}");
    }

    #[test]
    fn set_values_take_the_default_type() {
        let p = decls("param(\"levels\", [1, 2, 3], \"\"); param(\"id\", \"x\", \"\"); param(\"n\", 3, \"\"); param(\"lr\", 0.1, \"\"); param(\"b\", true, \"\"); param(\"any\", (), \"\"); param(\"names\", [\"a\"], \"\");").unwrap();
        let set = |k: &str, v: &str| typed_values("t.rhai", &p, &[(k.into(), v.into())]).map(|mut t| t.remove(0).1);
        assert_eq!(format!("{:?}", set("levels", "1,3,6").unwrap()), "[1, 3, 6]");
        assert_eq!(format!("{:?}", set("levels", "[1, 3,6]").unwrap()), "[1, 3, 6]");
        assert_eq!(set("levels", "").unwrap().into_array().unwrap().len(), 0);
        assert_eq!(format!("{:?}", set("names", "a,007").unwrap()), "[\"a\", \"007\"]");
        assert_eq!(set("id", "007").unwrap().into_string().unwrap(), "007");
        assert_eq!(set("id", "\"007\"").unwrap().into_string().unwrap(), "007");
        assert_eq!(set("n", "12").unwrap().as_int().unwrap(), 12);
        assert_eq!(set("lr", "3").unwrap().as_float().unwrap(), 3.0);
        assert!(set("b", "false").unwrap().is_bool());
        assert_eq!(set("any", "5").unwrap().as_int().unwrap(), 5);
        let e = set("n", "abc").unwrap_err().to_string();
        assert!(e.contains("--set n=abc: `n` takes an integer (its default is 3)"), "{e}");
        let e = set("levels", "1,x").unwrap_err().to_string();
        assert!(e.contains("`levels` takes a comma-separated list of int"), "{e}");
    }

    #[test]
    fn undeclared_keys_are_refused_listing_the_declared_ones() {
        let p = decls("param(\"max_steps\", 60, \"\"); param(\"eval_n\", 60, \"\");").unwrap();
        let e = typed_values("q.rhai", &p, &[("max_step".into(), "10".into())]).unwrap_err().to_string();
        assert!(e.contains("q.rhai declares no parameter `max_step` (did you mean `max_steps`?); its parameters are: max_steps, eval_n"), "{e}");
    }

    #[test]
    fn values_fall_back_to_the_defaults() {
        let p = decls("param(\"a\", 1, \"\"); param(\"b\", \"x\", \"\");").unwrap();
        let v = values(&p, &[("b".into(), Dynamic::from("y".to_string()))]);
        assert_eq!(v["a"].as_int().unwrap(), 1);
        assert_eq!(v["b"].clone().into_string().unwrap(), "y");
    }

    #[test]
    fn help_lists_name_type_default_and_help() {
        let p = decls("param(\"levels\", [1, 2, 3], \"granularity levels to train\"); param(\"name\", \"quick\", \"run name\");").unwrap();
        let h = help("q.rhai", &p);
        assert!(h.contains("levels  list of int  [1, 2, 3]  granularity levels to train"), "{h}");
        assert!(h.contains("name    string       \"quick\"    run name"), "{h}");
    }
}
