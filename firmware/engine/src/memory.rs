//! The process's own memory, as the kernel accounts it (resident set, peak, mappings).

/// Resident and peak memory of this process, in bytes, from /proc/self/status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// VmRSS: resident now (anonymous + file-backed pages).
    pub rss: u64,
    /// VmHWM: the largest resident set so far.
    pub peak_rss: u64,
    /// RssFile: resident pages backed by files (the mapped model counts here).
    pub rss_file: u64,
}

/// Reads /proc/self/status; `None` where procfs is not available.
pub fn current() -> Option<MemoryUse> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(parse_status(&text))
}

fn parse_status(text: &str) -> MemoryUse {
    let mut m = MemoryUse::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let kib = value
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
        match key {
            "VmRSS" => m.rss = kib * 1024,
            "VmHWM" => m.peak_rss = kib * 1024,
            "RssFile" => m.rss_file = kib * 1024,
            _ => {}
        }
    }
    m
}

/// Returns freed heap pages to the kernel. tract's load path allocates and frees several
/// copies of the weights; glibc would otherwise keep them resident for the process's life.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_we_use() {
        let m = parse_status("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nRssFile:\t 12 kB\n");
        assert_eq!(
            m,
            MemoryUse {
                rss: 1024 * 1024,
                peak_rss: 2048 * 1024,
                rss_file: 12 * 1024
            }
        );
    }

    #[test]
    fn reads_this_process() {
        let m = current().expect("procfs");
        assert!(m.rss > 0 && m.peak_rss >= m.rss, "{m:?}");
    }
}
