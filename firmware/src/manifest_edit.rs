//! Edits of a bundle's manifest.toml by the tools that write records into it (`gate
//! --write`, `info --memory --write`, `bundle add`): one table family is replaced, every
//! other byte is kept, and the file is replaced atomically.
//!
//! Why textual and not `toml` re-serialisation: manifests carry comments and a key order
//! that people read and review in diffs; re-serialising would drop the comments and
//! reorder everything. Callers re-parse the result and check what changed, so a manifest
//! this simple scan misreads (a `[`-line inside a multi-line string) is refused instead
//! of damaged.

use std::path::Path;

use anyhow::Context;
use edgedx_bundle::MANIFEST_FILE;

/// The name inside a table header line (`[memory.int8]` -> `memory.int8`), whitespace
/// removed; `None` for other lines.
fn header(line: &str) -> Option<String> {
    let t = line.trim_start();
    t.starts_with('[').then(|| {
        t.trim_start_matches('[')
            .chars()
            .take_while(|c| *c != ']')
            .filter(|c| !c.is_whitespace())
            .collect()
    })
}

/// Whether a table name belongs to the family `name` (`name` itself or `name.*`).
fn in_family(table: &str, name: &str) -> bool {
    table == name
        || table
            .strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// `text` with every top-level table whose name is in the family `name` removed (each runs
/// to the next header) and `tables` appended after one blank line.
pub fn replace_tables(text: &str, name: &str, tables: &str) -> String {
    let mut out = String::with_capacity(text.len() + tables.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        if let Some(h) = header(line) {
            inside = in_family(&h, name);
        }
        if !inside {
            out.push_str(line);
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if !out.is_empty() && !tables.is_empty() {
        out.push('\n');
    }
    out.push_str(tables);
    out
}

/// Replaces `<dir>/manifest.toml` with `text`, atomically and durably.
pub fn write(dir: &Path, text: &str) -> anyhow::Result<()> {
    let path = dir.join(MANIFEST_FILE);
    edgedx_bundle::write_file_atomically(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_family_is_replaced_and_the_rest_kept() {
        let text = "# comment\nx = 1\n\n[approval]\nverdict = \"rejected\"\n\n[approval.sub]\na = 1\n[approvals]\ny = 2\n";
        let out = replace_tables(text, "approval", "[approval]\nverdict = \"approved\"\n");
        assert_eq!(
            out,
            "# comment\nx = 1\n\n[approvals]\ny = 2\n\n[approval]\nverdict = \"approved\"\n"
        );
        assert_eq!(
            replace_tables("a = 1", "approval", "[approval]\n"),
            "a = 1\n\n[approval]\n"
        );
        assert_eq!(
            replace_tables("a = 1\n[ memory.int8 ]\nb = 2\n", "memory", ""),
            "a = 1\n"
        );
    }
}
