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
    assert!(p.join("paper/dataset_info.json").is_file(), "the release is not at {}: set COTLAB_DATA to the shared datasets dir", p.display());
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

/// What a test needs beyond the code.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// The paper's release (`COTLAB_DATA`, default ../shared/datasets).
    Data,
    /// The default student (`scripts/setup.sh`).
    Model,
    /// torch + transformers in the cotlab venv (`scripts/setup.sh --torch`).
    Torch,
    /// Jupyter and the "Rust (cotlab)" evcxr kernel (`scripts/setup.sh`).
    Jupyter,
    /// A Slurm answering `sinfo`: `scripts/slurm_local.sh` starts a one-node one (idempotent).
    Slurm,
}

fn data_path() -> PathBuf {
    match std::env::var_os("COTLAB_DATA") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets"),
    }
}

/// The first missing prerequisite, as what to do about it.
pub fn missing(needs: &[Need]) -> Option<String> {
    let home = cotlab::model::cotlab_home();
    needs.iter().find_map(|n| match n {
        Need::Data if !data_path().join("paper/dataset_info.json").is_file() => {
            Some(format!("no release data at {}: set COTLAB_DATA to the shared datasets dir (see datasets/README.md)", data_path().display()))
        }
        Need::Model if !cotlab::model::default_model_path().is_file() => {
            Some(format!("no default student at {}: run scripts/setup.sh", cotlab::model::default_model_path().display()))
        }
        Need::Torch
            if !Command::new(std::env::var_os("COTLAB_PYTHON").map(PathBuf::from).unwrap_or_else(|| home.join("venv/bin/python")))
                .args(["-c", "import torch, transformers"])
                .output()
                .is_ok_and(|o| o.status.success()) =>
        {
            Some(format!("no torch + transformers in {}: run scripts/setup.sh --torch", home.join("venv").display()))
        }
        Need::Jupyter if !home.join("evcxr/kernel.sh").is_file() || !home.join("venv/bin/jupyter").is_file() => {
            Some("no Jupyter + evcxr kernel: run scripts/setup.sh".to_string())
        }
        Need::Slurm => local_slurm(),
        _ => None,
    })
}

/// Start the local one-node Slurm; None when it answers, else why not (its last stderr line).
fn local_slurm() -> Option<String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm_local.sh");
    match Command::new(&script).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "no local Slurm (scripts/slurm_local.sh exited {}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("no message")
        )),
        Err(e) => Some(format!("no local Slurm: {} did not start: {e}", script.display())),
    }
}

/// Skip the calling test when a prerequisite is missing, with one line saying how to set it up
/// (`cargo test` on a bare checkout then tells what to install instead of panicking). Under CI
/// (`CI` set, as `.ci/run` runs) a missing prerequisite fails the test: CI never passes by skipping.
#[macro_export]
macro_rules! require {
    ($($need:ident),+) => {
        if let Some(why) = common::missing(&[$(common::Need::$need),+]) {
            if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                panic!("{why}");
            }
            eprintln!("skipped: {why}");
            return;
        }
    };
}

/// Read one HTTP request (headers, then a body of Content-Length bytes) from a fake server's
/// connection; returns the header block, or None if the client hung up first.
pub fn read_http_request(stream: &mut std::net::TcpStream) -> Option<String> {
    read_http_exchange(stream).map(|(head, _)| head)
}

/// `read_http_request`, with the body too.
pub fn read_http_exchange(stream: &mut std::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(h) = text.find("\r\n\r\n") {
            let len =
                text.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))).unwrap_or(0);
            if buf.len() >= h + 4 + len {
                return Some((text[..h].to_string(), buf[h + 4..h + 4 + len].to_vec()));
            }
        }
    }
}

/// Write an HTTP response with a JSON body (`extra`: more header lines, each ending in \r\n).
pub fn write_http_response(stream: &mut std::net::TcpStream, status: &str, extra: &str, body: &str) {
    use std::io::Write;
    let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}", body.len());
}

/// A chat-completions response body answering `content`.
pub fn chat_answer(content: &str) -> String {
    serde_json::json!({"choices": [{"message": {"content": content}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).to_string()
}

/// `DIR/tok` holding SmolLM2's tokenizer as transformers reads it (tokenizer.json and
/// tokenizer_config.json), for the tiny models the reference tests write.
pub fn smol_tokenizer_dir(dir: &std::path::Path) -> PathBuf {
    let smol = cotlab::model::Student::load(&cotlab::model::default_model_path(), &candle_core::Device::Cpu).unwrap();
    let tok_dir = dir.join("tok");
    std::fs::create_dir_all(&tok_dir).unwrap();
    smol.tokenizer.save(tok_dir.join("tokenizer.json"), false).unwrap();
    let config = serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>"});
    std::fs::write(tok_dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    tok_dir
}

/// A fake HTTP server on 127.0.0.1 (never another interface) for tests that need to control
/// the bytes and their timing: each connection's request is read, then `respond(k, head,
/// stream)` answers on its own thread (`k` counts connections from 0, `head` is the request's
/// header block). It accepts for 60 s and each connection times out after 10 s, so nothing it
/// starts outlives a test.
pub fn fake_server<F>(respond: F) -> FakeServer
where
    F: Fn(usize, &str, &mut std::net::TcpStream) + Send + Sync + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, h, respond) = (count.clone(), heads.clone(), std::sync::Arc::new(respond));
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            let mut stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            let k = c.fetch_add(1, Ordering::SeqCst);
            let (h, respond) = (h.clone(), respond.clone());
            std::thread::spawn(move || {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
                let Some(head) = read_http_request(&mut stream) else { return };
                h.lock().unwrap().push(head.clone());
                respond(k, &head, &mut stream);
            });
        }
    });
    FakeServer { addr, count, heads }
}

pub struct FakeServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Connections accepted so far.
    pub count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The header block of each request read, in arrival order.
    pub heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeServer {
    /// The Authorization header of each request ("" when none).
    pub fn auth(&self) -> Vec<String> {
        let header = |head: &String| {
            head.lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("authorization")).map(|(_, v)| v.trim().to_string()))
                .unwrap_or_default()
        };
        self.heads.lock().unwrap().iter().map(header).collect()
    }
}

/// `t` as an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let name = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][(month - 1) as usize];
    format!("{weekday}, {day:02} {name} {year} {:02}:{:02}:{:02} GMT", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub mod gguf;
pub mod tiny;
