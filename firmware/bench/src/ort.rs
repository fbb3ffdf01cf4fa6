//! Client for ort_runner.py: onnxruntime in a long-lived Python process, driven one JSON
//! line at a time so its iterations interleave with edgedx's in the same run.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

pub struct Ort {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub version: String,
}

/// One timed onnxruntime inference.
pub struct OrtRun {
    pub ms: f64,
    pub output: Vec<f32>,
}

impl Ort {
    /// Starts `python script` and checks that onnxruntime answers.
    pub fn start(python: &Path, script: &Path) -> Result<Ort> {
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut ort = Ort {
            child,
            stdin,
            stdout,
            version: String::new(),
        };
        let hello = ort.call(json!({"cmd": "hello"}))?;
        ort.version = hello["onnxruntime"].as_str().unwrap_or("?").to_string();
        Ok(ort)
    }

    fn call(&mut self, request: Value) -> Result<Value> {
        writeln!(self.stdin, "{request}").context("writing to the onnxruntime helper")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the onnxruntime helper exited (see its stderr above)");
        }
        let reply: Value = serde_json::from_str(&line)
            .with_context(|| format!("bad reply from the onnxruntime helper: {line:?}"))?;
        if reply["ok"] != Value::Bool(true) {
            bail!(
                "onnxruntime helper: {} (request {request})",
                reply["error"].as_str().unwrap_or("unknown error")
            );
        }
        Ok(reply)
    }

    /// Creates a session; returns onnxruntime's own load time in ms.
    pub fn load(&mut self, key: &str, path: &Path, output: &str, threads: usize) -> Result<f64> {
        let r = self.call(json!({
            "cmd": "load", "key": key, "path": path, "output": output, "threads": threads
        }))?;
        r["load_ms"].as_f64().ok_or_else(|| anyhow!("no load_ms"))
    }

    /// Registers an input tensor stored as raw little-endian f32.
    pub fn input(&mut self, key: &str, path: &Path, shape: &[usize]) -> Result<()> {
        self.call(json!({"cmd": "input", "key": key, "path": path, "shape": shape}))?;
        Ok(())
    }

    pub fn run(&mut self, model: &str, input: &str) -> Result<OrtRun> {
        let r = self.call(json!({"cmd": "run", "model": model, "input": input}))?;
        let output = r["output"]
            .as_array()
            .ok_or_else(|| anyhow!("no output"))?
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::NAN) as f32)
            .collect();
        Ok(OrtRun {
            ms: r["ms"].as_f64().ok_or_else(|| anyhow!("no ms"))?,
            output,
        })
    }
}

impl Drop for Ort {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}
