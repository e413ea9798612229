//! The one path policy: how cotlab resolves, opens, creates and walks paths. Readers and writers
//! of the crate go through these functions, so the rules below hold for every one of them:
//!
//! * [`real_path`] resolves a path as the kernel does when it opens it: component by component,
//!   each link followed where it stands (`dir/link/..` is the parent of the link's target, not
//!   `dir`), a dangling link followed to where it points. The sandbox checks this path and
//!   readers open this path, never the string they were given.
//! * Readers ([`open_regular`], [`read_bytes`], [`read_text`]) open regular files only: a FIFO,
//!   a device (`/dev/zero`) or a dir is an error at once, never a hang or an endless read, and a
//!   reader takes at most [`MAX_READ_BYTES`] (and never more than the size the file had when it
//!   was opened).
//! * Writers ([`create`], [`append`], [`write`]) never follow a link as the last component: a
//!   link planted where cotlab writes (dangling or not) is an error naming it; [`ensure_dir`]
//!   refuses a link where cotlab expects its own dir.
//! * Walks ([`subdirs`], [`is_real_file`], [`is_real_dir`]) never follow links, so a link in a
//!   runs dir can neither lead a walk outside nor make it loop.
//! * [`RunName`]: a name for a dir under the runs dir, checked again whenever it is read back
//!   from disk (`sweep.json` points).
//! * [`FileLock`], [`DirLock`]: advisory `flock`s (a journal's appenders; one writer per run or
//!   eval dir), released by the kernel when the process dies, so no stale lock survives a crash.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::usage;

/// The most a reader of a text or JSON file takes (2 GiB): larger inputs are an error that says
/// so, not an allocation that takes the machine down.
pub const MAX_READ_BYTES: u64 = 2 << 30;

/// Links followed while resolving one path before giving up (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// An absolute, lexically normalised path (no `.`/`..`), without touching the disk. Only for
/// paths that do not exist yet or names that are never opened: [`real_path`] for the rest.
pub fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Where `p` leads when opened: absolute, every link resolved where it stands, `..` applied to
/// the resolved dir. A missing tail is kept as named (below a missing dir nothing can be a link);
/// a dangling link resolves to its target, so a check of the result covers what a create would
/// reach.
pub fn real_path(p: &Path) -> Result<PathBuf> {
    let start = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().map_err(|e| Error::io(".", e))?.join(p) };
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&start, &mut pending);
    let mut out = PathBuf::from("/");
    let mut links = 0;
    let mut missing = false;
    while let Some(part) = pending.pop() {
        if part == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&part);
        if missing {
            out = next;
            continue;
        }
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error::data(p, format!("more than {MAX_LINKS} links to follow (a link loop?)")));
                }
                let target = std::fs::read_link(&next).map_err(|e| Error::io(&next, e))?;
                // The target's parts go first, then what followed the link.
                if target.is_absolute() {
                    out = PathBuf::from("/");
                }
                push_components(&target, &mut pending);
            }
            Ok(_) => out = next,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing = true;
                out = next;
            }
            Err(e) => return Err(Error::io(&next, e)),
        }
    }
    Ok(out)
}

/// Push `p`'s normal and `..` parts onto a stack so that the first part pops first.
fn push_components(p: &Path, stack: &mut Vec<OsString>) {
    let parts: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

/// Whether `p` is a regular file itself (not a link to one).
pub fn is_real_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file())
}

/// A name part no other call returns, in this process or another: `<pid>-<nanos>-<n>` (the
/// process id, the clock, and a count of calls in this process, so two calls in the same clock
/// tick differ too). For staging dirs, scratch dirs and lock tokens.
pub fn unique_suffix() -> String {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{nanos}-{n}", std::process::id())
}

/// Whether `p` is a dir itself (not a link to one).
pub fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_dir())
}

/// The dirs directly inside `dir`, in name order, without following links; names starting with
/// `.` (staging and temporary dirs) are left out.
pub fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        // `DirEntry::file_type` does not follow links.
        if !hidden && entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// What kind of thing `m` is, for errors.
fn kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Open `p` for reading if it is a regular file, without blocking on a FIFO (checked before the
/// open and again on the opened file, which is what is read). Returns the file and its size.
pub fn open_regular(p: &Path) -> Result<(File, u64)> {
    let m = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
    if !m.is_file() {
        return Err(Error::data(p, format!("is {}, not a regular file: cotlab reads files only", kind(&m))));
    }
    let f = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p).map_err(|e| Error::io(p, e))?;
    let m = f.metadata().map_err(|e| Error::io(p, e))?;
    if !m.is_file() {
        return Err(Error::data(p, format!("is {}, not a regular file: cotlab reads files only", kind(&m))));
    }
    Ok((f, m.len()))
}

/// A regular file's bytes, at most `MAX_READ_BYTES` and at most its size when opened.
pub fn read_bytes(p: &Path) -> Result<Vec<u8>> {
    let (f, len) = open_regular(p)?;
    if len > MAX_READ_BYTES {
        return Err(Error::data(p, format!("is {len} bytes, more than cotlab reads into memory ({MAX_READ_BYTES} bytes): split it or give a smaller file")));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf).map_err(|e| Error::io(p, e))?;
    Ok(buf)
}

/// A regular file's text (UTF-8), read as [`read_bytes`] does.
pub fn read_text(p: &Path) -> Result<String> {
    String::from_utf8(read_bytes(p)?).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::data(p, format!("line {line}: invalid UTF-8 at byte {at}: expected UTF-8 text"))
    })
}

/// The error for a link found where cotlab writes.
fn link_refused(p: &Path) -> Error {
    let target = std::fs::read_link(p).map(|t| t.display().to_string()).unwrap_or_else(|_| "?".into());
    Error::data(p, format!("is a symbolic link (to {target}); cotlab does not write through links: remove it"))
}

/// Map an open error: ELOOP from `O_NOFOLLOW` means the last component is a link.
fn open_error(p: &Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ELOOP) || std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
        link_refused(p)
    } else {
        Error::io(p, e)
    }
}

/// Create or truncate `p` for writing; a link at `p` is refused, not followed.
pub fn create(p: &Path) -> Result<File> {
    OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_NOFOLLOW).open(p).map_err(|e| open_error(p, e))
}

/// Write `bytes` to `p` (created or truncated, never through a link).
pub fn write(p: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    create(p)?.write_all(bytes).map_err(|e| Error::io(p, e))
}

/// Make sure `p` is a dir of its own (creating it and missing parents): a link or a file where
/// the dir should be is refused.
pub fn ensure_dir(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(link_refused(p)),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) => Err(Error::data(p, format!("is {}, where cotlab needs a dir: remove it or choose another name", kind(&m)))),
        Err(_) => std::fs::create_dir_all(p).map_err(|e| Error::io(p, e)),
    }
}

/// A run or eval name: a relative path under the runs dir, made of parts of letters, digits,
/// `.`, `_`, `-` (no part starting with `.`), joined by `/`. Validated once, so every dir a
/// script names (or a file names, read back) stays inside the runs dir.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunName(String);

impl RunName {
    pub const MAX_LEN: usize = 200;

    pub fn new(name: &str) -> Result<RunName> {
        let bad = |why: &str| {
            usage!(
                "run name '{name}' is not allowed: {why}; a run name is a relative path under the runs dir \
                 made of letters, digits, '.', '_' and '-' (e.g. \"svamp-l3\" or \"sweep/level-3\")"
            )
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(bad(&format!("it is longer than {} bytes", Self::MAX_LEN)));
        }
        if name.starts_with('/') || name.starts_with('\\') {
            return Err(bad("it is an absolute path"));
        }
        for part in name.split('/') {
            if part.is_empty() {
                return Err(bad("it has an empty part ('//' or a trailing '/')"));
            }
            if part == ".." || part == "." {
                return Err(bad("it has a '.' or '..' part"));
            }
            if part.starts_with('.') {
                return Err(bad("a part starts with '.'"));
            }
            if let Some(c) = part.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
                return Err(bad(&format!("it contains {c:?}")));
            }
        }
        Ok(RunName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RunName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The lock file inside every locked dir.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive advisory lock (`flock`) on an open file, released on drop (closing the file
/// releases it too). `flock` locks belong to the open file, so two handles in one process exclude
/// each other just as two processes do.
#[derive(Debug)]
pub struct FileLock {
    fd: std::os::unix::io::RawFd,
}

impl FileLock {
    /// Wait for the lock.
    pub fn exclusive(file: &File) -> std::io::Result<FileLock> {
        Self::take(file, libc::LOCK_EX).map(|l| l.expect("a blocking flock returns only once held"))
    }

    /// Take the lock if no other open file holds it (`None` if one does).
    pub fn try_exclusive(file: &File) -> std::io::Result<Option<FileLock>> {
        Self::take(file, libc::LOCK_EX | libc::LOCK_NB)
    }

    fn take(file: &File, op: i32) -> std::io::Result<Option<FileLock>> {
        use std::os::unix::io::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: flock on a descriptor this File owns; the File outlives the guard (callers keep
        // both, the guard dropped first).
        while unsafe { libc::flock(fd, op) } != 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(None),
                _ => return Err(e),
            }
        }
        Ok(Some(FileLock { fd }))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as above; unlocking an open descriptor we locked cannot fail.
        unsafe { libc::flock(self.fd, libc::LOCK_UN) };
    }
}

/// One writer per dir: an exclusive [`FileLock`] on `dir/.lock` (holding the owner's pid, for the
/// message), held until dropped. The kernel drops it when the process ends, however it ends.
#[derive(Debug)]
pub struct DirLock {
    // Declared first: unlocked before the file closes.
    _lock: FileLock,
    _file: File,
}

impl DirLock {
    /// Take `dir`'s lock (creating `dir` if needed), or fail at once naming who holds it and
    /// `doing` ("evaluating into", "training").
    pub fn take(dir: &Path, doing: &str) -> Result<DirLock> {
        ensure_dir(dir)?;
        let p = dir.join(LOCK_FILE);
        let mut f =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).custom_flags(libc::O_NOFOLLOW).open(&p).map_err(|e| open_error(&p, e))?;
        let Some(lock) = FileLock::try_exclusive(&f).map_err(|e| Error::io(&p, e))? else {
            let mut held = String::new();
            let _ = f.read_to_string(&mut held);
            let who = held.trim().parse::<u32>().map(|p| format!("pid {p}")).unwrap_or_else(|_| "another process".into());
            return Err(usage!("another cotlab process ({who}) is {doing} {}: wait for it to finish, or use another name", dir.display()));
        };
        use std::io::{Seek, Write};
        let _ = f.set_len(0).and_then(|_| f.seek(std::io::SeekFrom::Start(0))).and_then(|_| write!(f, "{}", std::process::id()));
        Ok(DirLock { _lock: lock, _file: f })
    }
}

/// Refuse `p` if it is a link (a journal or identity file cotlab reads, then writes).
pub fn refuse_link(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(link_refused(p)),
        _ => Ok(()),
    }
}

/// Open `p` to append (and to read, so a journal can see its last byte), creating it; a link at
/// `p` is refused, not followed.
pub fn append(p: &Path) -> Result<File> {
    OpenOptions::new().read(true).append(true).create(true).custom_flags(libc::O_NOFOLLOW).open(p).map_err(|e| open_error(p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_suffixes_differ_within_a_process() {
        let all: std::collections::HashSet<String> = (0..1000).map(|_| unique_suffix()).collect();
        assert_eq!(all.len(), 1000);
        assert!(all.iter().all(|s| s.starts_with(&format!("{}-", std::process::id()))));
    }

    #[test]
    fn run_names() {
        for ok in ["svamp-l3", "sweep/level-3", "a.b_c-1", "x/y/z"] {
            assert_eq!(RunName::new(ok).unwrap().as_str(), ok);
        }
        for (bad, why) in [
            ("", "empty"),
            ("..", "'..'"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("/etc", "absolute"),
            ("a//b", "empty part"),
            ("a/", "empty part"),
            (".incomplete", "starts with '.'"),
            ("a b", "' '"),
            ("a\\b", "'\\\\'"),
            ("a\0b", "'\\0'"),
        ] {
            let e = RunName::new(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(RunName::new(&"x".repeat(201)).is_err());
    }

    #[test]
    fn real_path_follows_each_link_where_it_stands() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("a/deep/er")).unwrap();
        std::os::unix::fs::symlink(root.join("a/deep/er"), root.join("a/share")).unwrap();
        // `share/..` is the parent of the link's target, not `a`.
        assert_eq!(real_path(&root.join("a/share/../x")).unwrap(), root.join("a/deep/x"));
        assert_eq!(real_path(&root.join("a/share/../../../etc")).unwrap(), root.join("etc"));
        // A relative link resolves against its own dir; a missing tail is kept.
        std::os::unix::fs::symlink("deep/er", root.join("a/rel")).unwrap();
        assert_eq!(real_path(&root.join("a/rel/new/file")).unwrap(), root.join("a/deep/er/new/file"));
        // A dangling link resolves to where a create would write.
        std::os::unix::fs::symlink(root.join("elsewhere/f"), root.join("a/dangling")).unwrap();
        assert_eq!(real_path(&root.join("a/dangling")).unwrap(), root.join("elsewhere/f"));
        // Loops end with an error.
        std::os::unix::fs::symlink(root.join("loop2"), root.join("loop1")).unwrap();
        std::os::unix::fs::symlink(root.join("loop1"), root.join("loop2")).unwrap();
        assert!(real_path(&root.join("loop1/x")).unwrap_err().to_string().contains("loop"));
    }

    #[test]
    fn readers_refuse_what_is_not_a_regular_file() {
        for p in ["/dev/zero", "/dev/null", "/"] {
            let e = read_bytes(Path::new(p)).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{p}: {e}");
        }
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_text(&fifo).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        std::fs::write(d.path().join("ok.txt"), "héllo").unwrap();
        assert_eq!(read_text(&d.path().join("ok.txt")).unwrap(), "héllo");
    }

    #[test]
    fn writers_refuse_links_dangling_or_not() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("outside.txt");
        let link = d.path().join("samples.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for e in [create(&link).unwrap_err(), append(&link).unwrap_err()] {
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        assert!(!target.exists(), "nothing was created through the dangling link");
        std::fs::write(&target, "keep").unwrap();
        assert!(write(&link, b"x").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep", "nor through a live one");
        std::os::unix::fs::symlink(d.path(), d.path().join("dirlink")).unwrap();
        assert!(ensure_dir(&d.path().join("dirlink")).unwrap_err().to_string().contains("symbolic link"));
        ensure_dir(&d.path().join("new/sub")).unwrap();
        assert!(is_real_dir(&d.path().join("new/sub")));
    }

    #[test]
    fn walks_do_not_follow_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b")).unwrap();
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        std::fs::create_dir_all(d.path().join(".incomplete-1")).unwrap();
        std::os::unix::fs::symlink(d.path(), d.path().join("self")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("etc")).unwrap();
        assert_eq!(subdirs(d.path()).unwrap(), vec![d.path().join("a"), d.path().join("b")]);
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("f")).unwrap();
        assert!(!is_real_file(&d.path().join("f")) && !is_real_dir(&d.path().join("self")));
    }

    #[test]
    fn a_dir_lock_has_one_holder_and_dies_with_it() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("eval");
        let held = DirLock::take(&dir, "evaluating into").unwrap();
        let e = DirLock::take(&dir, "evaluating into").unwrap_err().to_string();
        assert!(e.contains("another cotlab process") && e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(held);
        DirLock::take(&dir, "evaluating into").unwrap();
    }
}
