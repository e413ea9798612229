#![allow(dead_code)]
//! Shared test helpers. Tests run on the real release: set COTLAB_DATA (CI passes
//! ../shared/datasets); without it we look for ../shared/datasets beside the checkout.

use std::path::PathBuf;
use std::process::Command;

use cotlab::data::DataDir;

pub fn data_dir() -> DataDir {
    let p = match std::env::var_os("COTLAB_DATA") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"),
    };
    assert!(
        p.join("paper/dataset_info.json").is_file(),
        "the release is not at {}: set COTLAB_DATA to the shared datasets dir",
        p.display()
    );
    DataDir(p)
}

pub fn cotlab() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cotlab"));
    c.env("COTLAB_DATA", &data_dir().0);
    c
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Out {
    let o = cmd.output().expect("cotlab runs");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}
