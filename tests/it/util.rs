//! Test helpers: locate the real edgedx binary, start it (through qemu when the tests are
//! the aarch64 build), and find the shared fixtures beside the project.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (tests/..).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The default bundle in the source tree.
pub fn default_bundle() -> PathBuf {
    root().join("models/brain-mri-4class")
}

/// Copies the default bundle's files (not samples/) into a temp dir so a test can damage them.
pub fn copy_bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(default_bundle()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Points the manifest's entry for `variant` at the file's current bytes, as a bundle
/// re-hashed (but broken) by its maker would be.
pub fn rehash(dir: &Path, variant: &str) {
    let bundle = edgedx_bundle::Bundle::open(dir).unwrap();
    let entry = bundle.variant(variant).unwrap();
    let new = edgedx_bundle::sha256_hex(&std::fs::read(dir.join(&entry.file)).unwrap());
    let manifest = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace(&entry.sha256, &new)).unwrap();
}

/// ../shared, or EDGEDX_SHARED_DIR. `None` (with a message on stderr) when absent, so the
/// caller can skip loudly instead of passing silently.
pub fn shared(sub: &str) -> Option<PathBuf> {
    let base = std::env::var_os("EDGEDX_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"));
    let path = base.join(sub);
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: {} not found (set EDGEDX_SHARED_DIR)",
            path.display()
        );
        None
    }
}

/// The edgedx binary cargo built for this test run (same target as the tests).
pub fn edgedx_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edgedx"))
}

/// A command that runs the real binary; under EDGEDX_TEST_RUNNER (e.g. the qemu-aarch64
/// runner) when set, since an aarch64 child cannot be exec'd directly here.
pub fn edgedx() -> Command {
    through_runner(&edgedx_exe())
}

/// The command-line client, built beside edgedx (tests/run.sh builds the workspace first).
pub fn ctl() -> Command {
    let exe = edgedx_exe().with_file_name("edgedx-ctl");
    assert!(
        exe.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        exe.display()
    );
    through_runner(&exe)
}

fn through_runner(exe: &Path) -> Command {
    match std::env::var("EDGEDX_TEST_RUNNER") {
        Ok(runner) if !runner.trim().is_empty() => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().expect("non-empty runner"));
            cmd.args(parts).arg(exe);
            cmd
        }
        _ => Command::new(exe),
    }
}

/// Runs edgedx with `args` and returns its output; panics with stderr when it could not start.
pub fn run(args: &[&str]) -> Output {
    edgedx()
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("start edgedx")
}

/// `out`'s stdout, after asserting that `what` succeeded (its output in the message if not).
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parses stdout as JSON lines.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A python with onnxruntime, onnx and numpy (tests/run.sh makes one), or None with a message.
pub fn reference_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("EDGEDX_TEST_PYTHON").map(PathBuf::from),
        Some(root().join(".cache/venv/bin/python")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return Some(c);
        }
    }
    eprintln!("SKIPPED: no python with onnxruntime (run tests/run.sh, which makes .cache/venv)");
    None
}

/// Runs the reference python on `script` with `args` to make `out`, unless `out/stamp`
/// holds the hash of `inputs` (the script and what it imports), so a derived bundle is
/// built once and rebuilt when its sources change.
pub fn build_with_python(
    python: &Path,
    script: &Path,
    args: &[&std::ffi::OsStr],
    inputs: &[PathBuf],
    out: &Path,
) {
    let sources: Vec<u8> = inputs
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    let stamp = edgedx_bundle::sha256_hex(&sources);
    let stamp_file = out.join("stamp");
    if std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
        return;
    }
    let status = Command::new(python)
        .arg(script)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(status.success(), "{} failed", script.display());
    std::fs::write(&stamp_file, &stamp).unwrap();
}
