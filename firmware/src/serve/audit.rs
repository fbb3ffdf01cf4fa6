//! The audit log: one JSON object per line for every event a biomedical engineer may have
//! to reconstruct later (start, stop, model transitions, worker restarts, memory breaches,
//! results, refused inputs). Size-bounded: rotated to `audit.log.1` .. `.N`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

pub struct AuditLog {
    path: PathBuf,
    file: Option<File>,
    bytes: u64,
    max_bytes: u64,
    keep: usize,
}

impl AuditLog {
    pub fn open(dir: &Path, max_bytes: u64, keep: usize) -> std::io::Result<AuditLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("audit.log");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let bytes = file.metadata()?.len();
        Ok(AuditLog {
            path,
            file: Some(file),
            bytes,
            max_bytes,
            keep,
        })
    }

    /// Appends one record. A failing audit log is reported on stderr but never stops
    /// the device from serving.
    pub fn record(&mut self, event: &str, details: Value) {
        let line = json!({
            "ts_ms": super::now_ms(),
            "event": event,
            "details": details,
        })
        .to_string();
        if self.bytes + line.len() as u64 + 1 > self.max_bytes {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            match writeln!(f, "{line}") {
                Ok(()) => self.bytes += line.len() as u64 + 1,
                Err(e) => log::error!("audit log {}: {e}", self.path.display()),
            }
        }
    }

    pub fn sync(&mut self) {
        if let Some(f) = self.file.as_mut() {
            let _ = f.sync_data();
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let _ = std::fs::rename(&self.path, name(1));
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(f) => {
                self.file = Some(f);
                self.bytes = 0;
            }
            Err(e) => log::error!("audit log {}: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), 200, 2).unwrap();
        for i in 0..20 {
            log.record("test", json!({ "i": i }));
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        let last = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let v: Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
        assert_eq!(v["details"]["i"], 19);
    }
}
