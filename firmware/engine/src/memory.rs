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

/// Logs (at debug level) the resident set after `what`, with its file-backed part and the
/// peak so far: how the load stages are measured (`RUST_LOG=edgedx_engine=debug`).
pub(crate) fn log_use(what: std::fmt::Arguments<'_>) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    if let Some(m) = current() {
        const MIB: f64 = (1 << 20) as f64;
        log::debug!(
            "load memory after {what}: resident {:.2} MiB (files {:.2} MiB), peak {:.2} MiB",
            m.rss as f64 / MIB,
            m.rss_file as f64 / MIB,
            m.peak_rss as f64 / MIB
        );
    }
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

/// glibc's allocator policy for the length of a model load (a guard: dropping it ends the
/// load policy).
///
/// tract's load makes and drops several copies of the weights, most of them between a few
/// hundred KiB and a few MiB. glibc's default mmap threshold starts at 128 KiB and rises to
/// the size of each large block freed, so after the first few frees those copies come from
/// the heap, and freed heap in the middle of the heap stays resident: VGG16 int8 peaked at
/// 66 MiB during its load with it, 53 MiB with blocks from 256 KiB up mapped and unmapped.
/// After the load the policy is what glibc's own would have settled on (blocks below
/// 32 MiB from the heap, trimmed only past 64 MiB free), so inference reuses its buffers
/// rather than faulting fresh pages every run: a fixed 256 KiB threshold made the default
/// bundle 25 % slower.
///
/// The setting is process-wide: an inference on another thread during a load maps its
/// large buffers too, which is slower, not wrong.
pub struct LoadAllocation(());

/// Blocks from this size up are mapped and unmapped during a load.
const LOAD_MMAP_THRESHOLD: i32 = 256 * 1024;
/// After a load: glibc's largest dynamic threshold on 64-bit targets.
const SERVE_MMAP_THRESHOLD: i32 = 32 << 20;
const SERVE_TRIM_THRESHOLD: i32 = 64 << 20;

impl LoadAllocation {
    pub fn begin() -> LoadAllocation {
        set_thresholds(LOAD_MMAP_THRESHOLD, None);
        LoadAllocation(())
    }
}

impl Drop for LoadAllocation {
    fn drop(&mut self) {
        set_thresholds(SERVE_MMAP_THRESHOLD, Some(SERVE_TRIM_THRESHOLD));
    }
}

fn set_thresholds(mmap: i32, trim: Option<i32>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's tuning parameters; any value is accepted or
    // refused with a return of 0, and a refusal leaves the previous policy in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
        if let Some(trim) = trim {
            libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (mmap, trim);
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
