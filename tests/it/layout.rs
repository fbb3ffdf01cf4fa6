//! The link order of the real binary: the functions the model load and inference run
//! (firmware/link/hot-functions.txt) must sit in one block of .text, so that loading a
//! model pages in a few MiB of code rather than most of the binary (memory-budget.md).

use std::collections::{BTreeMap, HashSet};
use std::process::Command;

use crate::util;

/// A symbol name without what changes from build to build: v0 crate disambiguators
/// (`Cs<base62>_` becomes `Cs_`) and LLVM's `.llvm.<N>` suffix (kept as `.llvm.`).
/// An independent copy of firmware/link/names.awk, so this test also checks that one.
fn key(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if name.starts_with("_R") && b[i..].starts_with(b"Cs") {
            let run = b[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric())
                .count();
            if run > 0 && b.get(i + 2 + run) == Some(&b'_') {
                out.push_str("Cs_");
                i += 3 + run;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    if let Some(at) = out.rfind(".llvm.") {
        let tail = &out[at + 6..];
        if !tail.is_empty() && tail.bytes().all(|c| c.is_ascii_digit()) {
            out.truncate(at + 6);
        }
    }
    out
}

/// (address, size, name) of every defined code symbol, from `nm -S`.
fn code_symbols(exe: &std::path::Path) -> Vec<(u64, u64, String)> {
    let out = Command::new("nm")
        .args(["-S", "--defined-only"])
        .arg(exe)
        .output()
        .expect("run nm (binutils)");
    assert!(out.status.success(), "nm failed on {}", exe.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 4 || !matches!(f[2], "t" | "T" | "w" | "W") {
                return None;
            }
            let addr = u64::from_str_radix(f[0], 16).ok()?;
            let size = u64::from_str_radix(f[1], 16).ok()?;
            Some((addr, size, f[3].to_string()))
        })
        .collect()
}

#[test]
fn names_lose_only_their_build_dependent_parts() {
    assert_eq!(
        key("_RNvXs1_NtNtNtCskntPeTDMimF_10tract_core3ops2nn6reduceNtB5_6ReduceNtB9_7TypedOp9input_roi"),
        "_RNvXs1_NtNtNtCs_10tract_core3ops2nn6reduceNtB5_6ReduceNtB9_7TypedOp9input_roi"
    );
    assert_eq!(
        key("_RNvYNtCsa1_3fooNtCsZz9_3bar5stateCs1d_13edgedx_engine.llvm.6887552993157153903"),
        "_RNvYNtCs_3fooNtCs_3bar5stateCs_13edgedx_engine.llvm."
    );
    // Not a v0 name, or no disambiguator: unchanged.
    assert_eq!(key("_ZN6charls5CsXY_4initE"), "_ZN6charls5CsXY_4initE");
    assert_eq!(key("_RNvCs_3foo"), "_RNvCs_3foo");
    assert_eq!(key("memcpy.llvm.x1"), "memcpy.llvm.x1");
}

#[test]
fn the_model_load_code_is_linked_in_one_block() {
    let profile = std::fs::read_to_string(util::root().join("firmware/link/hot-functions.txt"))
        .expect("firmware/link/hot-functions.txt");
    let hot: HashSet<&str> = profile
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // One entry per function body (aliases share an address).
    let mut bodies: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
    for (addr, size, name) in code_symbols(&util::edgedx_exe()) {
        let entry = bodies.entry(addr).or_insert((size, false));
        entry.0 = entry.0.max(size);
        entry.1 |= hot.contains(key(&name).as_str());
    }
    let hot_bodies: Vec<(u64, u64)> = bodies
        .iter()
        .filter(|(_, (_, h))| *h)
        .map(|(a, (s, _))| (*a, *s))
        .collect();
    let hot_bytes: u64 = hot_bodies.iter().map(|(_, s)| s).sum();
    assert!(
        hot_bodies.len() >= 500,
        "only {} functions of this build are in the profile of {} names: regenerate it with \
         firmware/link/profile.sh",
        hot_bodies.len(),
        hot.len()
    );
    // Everything else that lies between the first and the last hot function.
    let (first, last) = (hot_bodies[0].0, hot_bodies[hot_bodies.len() - 1].0);
    let cold_between: u64 = bodies
        .range(first..=last)
        .filter(|(_, (_, h))| !*h)
        .map(|(_, (s, _))| s)
        .sum();
    eprintln!(
        "{} hot functions, {:.2} MiB; {:.2} MiB of other code between them",
        hot_bodies.len(),
        hot_bytes as f64 / (1 << 20) as f64,
        cold_between as f64 / (1 << 20) as f64
    );
    assert!(
        cold_between * 20 <= hot_bytes,
        "{cold_between} bytes of other code lie among {hot_bytes} bytes of hot functions: the \
         link did not go through firmware/link/order-link"
    );
}
