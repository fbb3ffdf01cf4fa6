//! `edgedx serve` configuration: one TOML file, parsed and validated once at start-up into
//! a typed [`Config`] that is passed down by value. Unknown keys, impossible limits and
//! missing paths are refused here with the key named, before anything is started.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use edgedx_board::profile::Driver;
use serde::Deserialize;

use crate::PrecisionArg;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Board profile: a built-in name (rpi4-2gb, rpi5-2gb, imx8mp, host-sim) or a profile
    /// file. It supplies [serial], [camera], [gpio], [watchdog] and the memory budget
    /// wherever this file does not set them.
    #[serde(default)]
    pub profile: Option<String>,
    /// Device identifier sent in `Hello` (default: the host name).
    #[serde(default)]
    pub device_id: Option<String>,
    /// Model bundle directory (default: the installed bundle).
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    /// Model that serves requests.
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// Public keys (`ed25519:<hex>`) whose signature on the bundle manifest is accepted.
    /// When set, a bundle without a valid signature by one of them is refused. When empty,
    /// signatures are not checked (logged and audited at every start).
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Writable state: the outbox journal and the audit log live here.
    pub state_dir: PathBuf,
    #[serde(default)]
    pub socket: Option<SocketConfig>,
    #[serde(default)]
    pub serial: Option<SerialConfig>,
    #[serde(default)]
    pub spool: Option<SpoolConfig>,
    #[serde(default)]
    pub camera: Option<CameraConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub memory: MemoryConfig,
    #[serde(default)]
    pub fallback: FallbackConfig,
    #[serde(default)]
    pub watchdog: Option<WatchdogConfig>,
    #[serde(default)]
    pub gpio: Option<GpioConfig>,
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
    #[serde(default)]
    pub clock: ClockConfig,
}

/// The daemon's time source. A board runs on its monotonic clock; a simulated one (no
/// profile, or `host-sim`) may take a forward offset from a file that its tests write, to
/// jump over a cool-down or a timeout instead of waiting it out
/// ([`edgedx_board::OffsetFileClock`]). A jump longer than a simulated watchdog's timeout
/// starves it, as that much time without a pet would.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockConfig {
    #[serde(default)]
    pub offset_file: Option<PathBuf>,
}

/// Shadow validation: run fp32 too on a sample of the inputs int8 answered (only while
/// memory allows both models to be resident) and watch how often they disagree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Fraction of int8 results also run on fp32, in (0, 1]: 0.1 runs every 10th.
    pub rate: f64,
    /// Alert above this rolling disagreement rate.
    #[serde(default = "default_shadow_threshold")]
    pub threshold: f64,
    /// Comparisons in the rolling window.
    #[serde(default = "default_shadow_window")]
    pub window: usize,
    /// Comparisons needed before the rate is judged.
    #[serde(default = "default_shadow_min")]
    pub min_samples: usize,
}

fn default_shadow_threshold() -> f64 {
    0.05
}
fn default_shadow_window() -> usize {
    200
}
fn default_shadow_min() -> usize {
    20
}

/// Status LED, alert buzzer and capture button on a GPIO character device, or on the
/// simulated board's panel (`driver = "sim"`: files in `STATE_DIR/sim-board/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioConfig {
    #[serde(default)]
    pub driver: Driver,
    /// The GPIO character device (`driver = "linux"`).
    #[serde(default)]
    pub chip: PathBuf,
    #[serde(default)]
    pub led: Option<u32>,
    #[serde(default)]
    pub buzzer: Option<u32>,
    #[serde(default)]
    pub button: Option<u32>,
    #[serde(default = "default_true")]
    pub button_active_low: bool,
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

fn default_true() -> bool {
    true
}
fn default_debounce_ms() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// RAM edgedx may use in all (supervisor + worker), MiB. memory-budget.md explains 384.
    #[serde(default = "default_budget_mib")]
    pub budget_mib: u64,
    /// MemAvailable (from /proc/meminfo) that must remain after fp32 is loaded, MiB.
    #[serde(default = "default_headroom_mib")]
    pub headroom_mib: u64,
    /// Hard limit on one worker process (RLIMIT_DATA), MiB. Default: the budget minus
    /// what the supervisor is allowed (`supervisor_mib`).
    #[serde(default)]
    pub worker_limit_mib: Option<u64>,
    /// What the supervisor itself may use, MiB (links, outbox, queued images).
    #[serde(default = "default_supervisor_mib")]
    pub supervisor_mib: u64,
    /// Override for the fp32 worker's measured need, MiB (default: the bundle manifest's
    /// measured figure, else an estimate from the file size).
    #[serde(default)]
    pub fp32_need_mib: Option<u64>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            budget_mib: default_budget_mib(),
            headroom_mib: default_headroom_mib(),
            worker_limit_mib: None,
            supervisor_mib: default_supervisor_mib(),
            fp32_need_mib: None,
        }
    }
}

fn default_budget_mib() -> u64 {
    384
}
fn default_headroom_mib() -> u64 {
    256
}
fn default_supervisor_mib() -> u64 {
    128
}

impl MemoryConfig {
    pub fn worker_limit_bytes(&self) -> Option<u64> {
        let mib = self
            .worker_limit_mib
            .unwrap_or(self.budget_mib.saturating_sub(self.supervisor_mib));
        (mib > 0).then_some(mib * 1024 * 1024)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// int8 failures within `window_s` that switch serving to fp32 (when memory allows).
    #[serde(default = "default_after_failures")]
    pub after_failures: usize,
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    /// Seconds on fp32 before int8 is tried again (doubled after each relapse, up to 8x).
    #[serde(default = "default_cooldown_s")]
    pub cooldown_s: u64,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            after_failures: default_after_failures(),
            window_s: default_window_s(),
            cooldown_s: default_cooldown_s(),
        }
    }
}

fn default_after_failures() -> usize {
    1
}
fn default_window_s() -> u64 {
    600
}
fn default_cooldown_s() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// `sim`: a watchdog on the daemon's clock that ends the process when it fires, as a
    /// board would reset.
    #[serde(default)]
    pub driver: Driver,
    /// Hardware watchdog device, e.g. /dev/watchdog0 (`driver = "linux"`).
    #[serde(default)]
    pub device: PathBuf,
    #[serde(default = "default_watchdog_timeout")]
    pub timeout_s: u64,
}

fn default_watchdog_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Int8,
    Fp32,
}

impl From<Precision> for PrecisionArg {
    fn from(p: Precision) -> PrecisionArg {
        match p {
            Precision::Int8 => PrecisionArg::Int8,
            Precision::Fp32 => PrecisionArg::Fp32,
        }
    }
}

fn default_precision() -> Precision {
    Precision::Int8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    pub path: PathBuf,
    /// Permission bits of the socket file, as an octal string ("0660").
    #[serde(default = "default_socket_mode")]
    pub mode: String,
    /// Group that owns the socket file (clients must be in it).
    #[serde(default)]
    pub group: Option<String>,
    /// Most clients connected at once. At the limit, the connection idle longest is
    /// closed for a newcomer if it has been idle `evict_idle_s`; else the newcomer is.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// A connection that has not sent Hello within this is closed.
    #[serde(default = "default_hello_timeout_ms")]
    pub hello_timeout_ms: u64,
    #[serde(default = "default_evict_idle_s")]
    pub evict_idle_s: u64,
}

fn default_socket_mode() -> String {
    "0660".into()
}
fn default_max_clients() -> usize {
    8
}
fn default_hello_timeout_ms() -> u64 {
    5_000
}
fn default_evict_idle_s() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    pub device: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
}

fn default_baud() -> u32 {
    115_200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Watched directory (a USB drive mount or a gadget's mass-storage backing).
    pub dir: PathBuf,
    /// Processed files are moved under `dir/done` and `dir/failed` unless set otherwise.
    #[serde(default)]
    pub done_dir: Option<PathBuf>,
    #[serde(default)]
    pub failed_dir: Option<PathBuf>,
    /// A file is read only after it was closed by its writer, or its size and mtime stayed
    /// the same for this long (copies that do not close cleanly, e.g. over some gadgets).
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
}

fn default_settle_ms() -> u64 {
    2000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// "v4l2" (a /dev/video device) or "sim" (plays the image files of `dir`).
    pub kind: CameraKind,
    #[serde(default)]
    pub device: Option<PathBuf>,
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default = "default_camera_format")]
    pub format: String,
    #[serde(default = "default_camera_width")]
    pub width: u32,
    #[serde(default = "default_camera_height")]
    pub height: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraKind {
    V4l2,
    Sim,
}

fn default_camera_format() -> String {
    "yuyv".into()
}
fn default_camera_width() -> u32 {
    640
}
fn default_camera_height() -> u32 {
    480
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Requests waiting for inference; more get `Busy`.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Uploads being received at once, over all links.
    #[serde(default = "default_max_uploads")]
    pub max_uploads: usize,
    /// Image bytes the supervisor holds at once (uploads being received + queued jobs).
    #[serde(default = "default_pending_bytes")]
    pub pending_bytes: u64,
    /// Uploads one link may have open at once.
    #[serde(default = "default_per_link_uploads")]
    pub per_link_uploads: usize,
    /// Longest gap between two chunks of an upload.
    #[serde(default = "default_upload_idle_ms")]
    pub upload_idle_ms: u64,
    /// An upload must complete within `upload_grace_ms` + its size at the link's minimum
    /// rate: `socket_min_rate` bytes/s on the socket, half the line rate on serial.
    #[serde(default = "default_upload_grace_ms")]
    pub upload_grace_ms: u64,
    #[serde(default = "default_socket_min_rate")]
    pub socket_min_rate: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_pixels: default_max_pixels(),
            max_file_bytes: default_max_file_bytes(),
            queue_depth: default_queue_depth(),
            max_uploads: default_max_uploads(),
            pending_bytes: default_pending_bytes(),
            per_link_uploads: default_per_link_uploads(),
            upload_idle_ms: default_upload_idle_ms(),
            upload_grace_ms: default_upload_grace_ms(),
            socket_min_rate: default_socket_min_rate(),
        }
    }
}

// A 2 GB board: a 16 MP single frame decodes to 64 MiB of f32; files over 64 MiB are not
// single diagnostic images the model could use.
fn default_max_pixels() -> u64 {
    16 * 1024 * 1024
}
fn default_max_file_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_queue_depth() -> usize {
    8
}
fn default_max_uploads() -> usize {
    4
}
fn default_per_link_uploads() -> usize {
    2
}
fn default_upload_idle_ms() -> u64 {
    5_000
}
fn default_upload_grace_ms() -> u64 {
    5_000
}
// A local socket moves hundreds of MiB/s; with the grace, 16 MiB/s bounds how long a
// 64 MiB upload holds its slot to 9 s.
fn default_socket_min_rate() -> u64 {
    16 * 1024 * 1024
}
fn default_pending_bytes() -> u64 {
    96 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    #[serde(default = "default_outbox_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_bytes: default_outbox_bytes(),
            segment_bytes: default_segment_bytes(),
        }
    }
}

fn default_outbox_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_segment_bytes() -> u64 {
    1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Program and arguments put in front of the worker command line. Empty on a board;
    /// `["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]` where aarch64 binaries only run
    /// under qemu-user (the CI machine).
    #[serde(default)]
    pub launcher: Vec<String>,
    /// The worker binary (default: this executable).
    #[serde(default)]
    pub exe: Option<PathBuf>,
    /// Time allowed for loading the model and the warm-up inference.
    #[serde(default = "default_load_timeout_ms")]
    pub load_timeout_ms: u64,
    /// Per-request deadline = max(floor, factor × warm-up latency).
    #[serde(default = "default_deadline_factor")]
    pub deadline_factor: f64,
    #[serde(default = "default_deadline_floor_ms")]
    pub deadline_floor_ms: u64,
    /// Time allowed for decoding and preprocessing one input in the worker. A worker that
    /// hangs or dies in that phase fails the input, not the model.
    #[serde(default = "default_decode_timeout_ms")]
    pub decode_timeout_ms: u64,
    /// How often a request is retried on a fresh worker after its worker died or hung.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Threads one inference uses (1..=64). Unset in the file: the board profile's
    /// `threads`, or 1 without a profile.
    #[serde(default = "default_threads")]
    pub threads: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            launcher: Vec::new(),
            exe: None,
            load_timeout_ms: default_load_timeout_ms(),
            deadline_factor: default_deadline_factor(),
            deadline_floor_ms: default_deadline_floor_ms(),
            decode_timeout_ms: default_decode_timeout_ms(),
            retries: default_retries(),
            threads: default_threads(),
        }
    }
}

fn default_load_timeout_ms() -> u64 {
    120_000
}
fn default_deadline_factor() -> f64 {
    20.0
}
fn default_deadline_floor_ms() -> u64 {
    2_000
}
fn default_decode_timeout_ms() -> u64 {
    20_000
}
fn default_retries() -> u32 {
    1
}
fn default_threads() -> usize {
    1
}

impl WorkerConfig {
    pub fn load_timeout(&self) -> Duration {
        Duration::from_millis(self.load_timeout_ms)
    }

    pub fn decode_timeout(&self) -> Duration {
        Duration::from_millis(self.decode_timeout_ms)
    }

    /// How long the inference loop may go without progress before the watchdogs are
    /// starved: the longest a job may legitimately take (load, decode and deadline, with
    /// retries).
    pub fn stall_limit(&self) -> Duration {
        (self.load_timeout()
            + self.decode_timeout()
            + Duration::from_millis(self.deadline_floor_ms))
            * (self.retries + 2)
    }

    /// How long start-up may feed the watchdog before the supervisor loop takes it over:
    /// a stall limit for each precision the start may try, plus a minute for verifying
    /// the bundle and recovering the outbox.
    pub fn startup_limit(&self) -> Duration {
        self.stall_limit() * 2 + Duration::from_secs(60)
    }
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        let table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("configuration {} is not valid TOML", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("configuration {} is not valid", path.display()))?;
        config
            .apply_profile(table.contains_key("memory"), worker_threads_set(&table))
            .with_context(|| format!("configuration {}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("configuration {}", path.display()))?;
        Ok(config)
    }

    /// The clock every timer of the daemon reads: the fallback window and cool-down,
    /// upload and Hello timeouts, the inference stall limit. (Spool settling and
    /// worker deadlines are about real files and processes and stay on real time.)
    pub fn clock(&self) -> std::sync::Arc<dyn edgedx_board::Clock> {
        match &self.clock.offset_file {
            Some(path) => std::sync::Arc::new(edgedx_board::OffsetFileClock::new(path)),
            None => std::sync::Arc::new(edgedx_board::SystemClock),
        }
    }

    /// Fills what this file leaves out from the board profile. `memory_set`: the file has
    /// its own [memory] table, which then wins over the profile's budget; `threads_set`: the
    /// file sets `[worker] threads`, which then wins over the profile's `threads`.
    pub fn apply_profile(&mut self, memory_set: bool, threads_set: bool) -> anyhow::Result<()> {
        let Some(name) = self.profile.clone() else {
            return Ok(());
        };
        let profile = match edgedx_board::Profile::builtin(&name) {
            Some(p) => p,
            None => edgedx_board::Profile::load(Path::new(&name)),
        }
        .with_context(|| format!("profile {name:?} (a built-in name or a profile file)"))?;
        if self.serial.is_none() {
            self.serial = Some(SerialConfig {
                device: profile.serial.device.clone(),
                baud: profile.serial.baud,
            });
        }
        if self.camera.is_none() {
            if let Some(c) = &profile.camera {
                let (kind, device, dir) = match c.driver {
                    Driver::Linux => (CameraKind::V4l2, Some(c.device.clone()), None),
                    Driver::Sim => (CameraKind::Sim, None, Some(c.device.clone())),
                };
                self.camera = Some(CameraConfig {
                    kind,
                    device,
                    dir,
                    format: format!("{:?}", c.format).to_lowercase(),
                    width: c.width,
                    height: c.height,
                });
            }
        }
        if self.gpio.is_none() {
            if let Some(g) = &profile.gpio {
                if g.chip.is_some() || g.driver == Driver::Sim {
                    self.gpio = Some(GpioConfig {
                        driver: g.driver,
                        chip: g.chip.clone().unwrap_or_default(),
                        led: g.led,
                        buzzer: g.buzzer,
                        button: g.button,
                        button_active_low: g.button_active_low,
                        debounce_ms: g.debounce_ms,
                    });
                }
            }
        }
        if self.watchdog.is_none() {
            if let Some(w) = &profile.watchdog {
                if w.device.is_some() || w.driver == Driver::Sim {
                    self.watchdog = Some(WatchdogConfig {
                        driver: w.driver,
                        device: w.device.clone().unwrap_or_default(),
                        timeout_s: w.timeout_s as u64,
                    });
                }
            }
        }
        if !memory_set {
            self.memory.budget_mib = profile.memory.budget_mib as u64;
            self.memory.headroom_mib = profile.memory.headroom_mib as u64;
        }
        if !threads_set {
            self.worker.threads = profile.threads as usize;
        }
        Ok(())
    }

    /// Checks what TOML types cannot: ranges, combinations, paths that must exist.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (i, key) in self.trusted_keys.iter().enumerate() {
            edgedx_bundle::signature::PublicKey::parse(key)
                .with_context(|| format!("trusted_keys[{i}]"))?;
        }
        let real_board = self.profile.as_deref().filter(|p| *p != "host-sim");
        let simulated = [
            ("clock.offset_file", self.clock.offset_file.is_some()),
            (
                "gpio.driver = \"sim\"",
                self.gpio.as_ref().is_some_and(|g| g.driver == Driver::Sim),
            ),
            (
                "watchdog.driver = \"sim\"",
                self.watchdog
                    .as_ref()
                    .is_some_and(|w| w.driver == Driver::Sim),
            ),
        ];
        if let (Some(board), Some((what, _))) = (real_board, simulated.iter().find(|s| s.1)) {
            bail!(
                "{what} is for the simulated board only (no profile, or host-sim); profile \
                 {board:?} has real devices"
            );
        }
        if self.socket.is_none() && self.serial.is_none() {
            bail!("no link configured: add a [socket] or a [serial] section (or both)");
        }
        if let Some(s) = &self.socket {
            let mode = self.socket_mode()?;
            if mode & 0o600 != 0o600 {
                bail!(
                    "socket.mode {:?} must let the daemon's own user read and write",
                    s.mode
                );
            }
            if mode & 0o007 != 0 {
                bail!("socket.mode {:?} would let every local user talk to the device; use 0660 and socket.group", s.mode);
            }
            if s.max_clients == 0 || s.hello_timeout_ms == 0 {
                bail!("socket.max_clients and socket.hello_timeout_ms must be at least 1");
            }
            match s.path.parent() {
                Some(p) if p.as_os_str().is_empty() || p.is_dir() => {}
                Some(p) => bail!("socket.path: directory {} does not exist", p.display()),
                None => bail!("socket.path {} is not a file path", s.path.display()),
            }
        }
        if let Some(s) = &self.serial {
            if !s.device.exists() {
                bail!("serial.device {} does not exist", s.device.display());
            }
            if !SUPPORTED_BAUD.contains(&s.baud) {
                bail!("serial.baud {} is not one of {SUPPORTED_BAUD:?}", s.baud);
            }
        }
        if let Some(s) = &self.spool {
            if !s.dir.is_dir() {
                bail!("spool.dir {} is not a directory", s.dir.display());
            }
        }
        if let Some(c) = &self.camera {
            match c.kind {
                CameraKind::V4l2 if c.device.is_none() => {
                    bail!("camera.device is required for kind = \"v4l2\"")
                }
                CameraKind::Sim if c.dir.as_ref().is_none_or(|d| !d.is_dir()) => {
                    bail!("camera.dir must name a directory of images for kind = \"sim\"")
                }
                _ => {}
            }
            if !matches!(c.format.as_str(), "yuyv" | "mjpeg" | "grey") {
                bail!(
                    "camera.format {:?} is not one of \"yuyv\", \"mjpeg\", \"grey\"",
                    c.format
                );
            }
            if c.width == 0 || c.height == 0 || c.width > 8192 || c.height > 8192 {
                bail!("camera size {}x{} is outside 1..=8192", c.width, c.height);
            }
        }
        let l = &self.limits;
        if l.queue_depth == 0 || l.queue_depth > 1024 {
            bail!("limits.queue_depth {} is outside 1..=1024", l.queue_depth);
        }
        if l.max_uploads == 0 || l.max_uploads > 64 {
            bail!("limits.max_uploads {} is outside 1..=64", l.max_uploads);
        }
        if l.per_link_uploads == 0 || l.per_link_uploads > l.max_uploads {
            bail!(
                "limits.per_link_uploads {} is outside 1..=max_uploads ({})",
                l.per_link_uploads,
                l.max_uploads
            );
        }
        if l.upload_idle_ms == 0 || l.socket_min_rate == 0 {
            bail!("limits.upload_idle_ms and limits.socket_min_rate must be positive");
        }
        if l.max_pixels == 0 || l.max_file_bytes == 0 {
            bail!("limits.max_pixels and limits.max_file_bytes must be positive");
        }
        if l.max_file_bytes > u32::MAX as u64 {
            bail!("limits.max_file_bytes {} is above 4 GiB", l.max_file_bytes);
        }
        let o = &self.outbox;
        if o.segment_bytes < 4096 || o.max_bytes < 4 * o.segment_bytes.max(1 << 20) {
            bail!(
                "outbox.max_bytes ({}) must be at least 4 segments of at least 1 MiB, and outbox.segment_bytes ({}) at least 4096",
                o.max_bytes,
                o.segment_bytes
            );
        }
        let w = &self.worker;
        if !(w.deadline_factor >= 1.0 && w.deadline_factor.is_finite()) {
            bail!(
                "worker.deadline_factor {} must be a finite number >= 1",
                w.deadline_factor
            );
        }
        if w.deadline_floor_ms == 0 || w.load_timeout_ms == 0 || w.decode_timeout_ms == 0 {
            bail!("worker.deadline_floor_ms, worker.decode_timeout_ms and worker.load_timeout_ms must be positive");
        }
        if let Some(exe) = &w.exe {
            if !exe.is_file() {
                bail!("worker.exe {} is not a file", exe.display());
            }
        }
        if l.pending_bytes < l.max_file_bytes {
            bail!(
                "limits.pending_bytes ({}) must hold at least one file of limits.max_file_bytes ({})",
                l.pending_bytes,
                l.max_file_bytes
            );
        }
        let m = &self.memory;
        if m.budget_mib == 0 || m.supervisor_mib >= m.budget_mib {
            bail!(
                "memory.budget_mib ({}) must be larger than memory.supervisor_mib ({})",
                m.budget_mib,
                m.supervisor_mib
            );
        }
        if let Some(w) = m.worker_limit_mib {
            if w + m.supervisor_mib > m.budget_mib {
                bail!(
                    "memory.worker_limit_mib ({w}) + memory.supervisor_mib ({}) is over memory.budget_mib ({})",
                    m.supervisor_mib,
                    m.budget_mib
                );
            }
        }
        if l.pending_bytes / (1024 * 1024) >= m.supervisor_mib {
            bail!(
                "limits.pending_bytes ({} MiB) does not fit in memory.supervisor_mib ({} MiB)",
                l.pending_bytes / (1024 * 1024),
                m.supervisor_mib
            );
        }
        if self.fallback.after_failures == 0 || self.fallback.window_s == 0 {
            bail!("fallback.after_failures and fallback.window_s must be at least 1");
        }
        if let Some(wd) = &self.watchdog {
            if !(1..=600).contains(&wd.timeout_s) {
                bail!("watchdog.timeout_s {} is outside 1..=600", wd.timeout_s);
            }
        }
        if let Some(s) = &self.shadow {
            if !(s.rate > 0.0 && s.rate <= 1.0) {
                bail!("shadow.rate {} must be in (0, 1]", s.rate);
            }
            if !(s.threshold > 0.0 && s.threshold < 1.0) {
                bail!("shadow.threshold {} must be in (0, 1)", s.threshold);
            }
            if s.window == 0 || s.min_samples == 0 || s.min_samples > s.window {
                bail!(
                    "shadow.window and shadow.min_samples must be positive, min_samples <= window"
                );
            }
        }
        if let Some(g) = self.gpio.as_ref().filter(|g| g.driver == Driver::Linux) {
            if !g.chip.exists() {
                bail!(
                    "gpio.chip {:?} does not exist",
                    g.chip.display().to_string()
                );
            }
        }
        if let Some(w) = self.watchdog.as_ref().filter(|w| w.driver == Driver::Linux) {
            if w.device.as_os_str().is_empty() {
                bail!("watchdog.device is missing (or set watchdog.driver = \"sim\")");
            }
        }
        if w.retries > 5 {
            bail!("worker.retries {} is above 5", w.retries);
        }
        if !(1..=edgedx_engine::MAX_THREADS).contains(&w.threads) {
            bail!(
                "worker.threads {} is outside 1..={}",
                w.threads,
                edgedx_engine::MAX_THREADS
            );
        }
        Ok(())
    }

    pub fn socket_mode(&self) -> anyhow::Result<u32> {
        let Some(s) = &self.socket else { return Ok(0) };
        u32::from_str_radix(s.mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| {
                format!(
                    "socket.mode {:?} is not an octal permission like \"0660\"",
                    s.mode
                )
            })
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.state_dir.join("outbox")
    }
}

/// Whether the raw file sets `[worker] threads` (serde's default cannot tell "unset" from 1).
fn worker_threads_set(table: &toml::Table) -> bool {
    table
        .get("worker")
        .and_then(|w| w.as_table())
        .is_some_and(|w| w.contains_key("threads"))
}

/// Baud rates termios offers on Linux that make sense for this link.
pub const SUPPORTED_BAUD: [u32; 9] = [
    9_600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600, 1_000_000,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        let table: toml::Table = toml::from_str(text)?;
        let mut c: Config = toml::from_str(text)?;
        c.apply_profile(table.contains_key("memory"), worker_threads_set(&table))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn minimal_config_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(&format!(
            "state_dir = {:?}\n[socket]\npath = {:?}\n",
            dir.path(),
            dir.path().join("s.sock")
        ))
        .unwrap();
        assert_eq!(c.precision, Precision::Int8);
        assert_eq!(c.socket_mode().unwrap(), 0o660);
        assert_eq!(c.limits.queue_depth, 8);
        assert_eq!(c.worker.deadline_floor_ms, 2000);
    }

    #[test]
    fn the_example_configuration_parses() {
        // Devices and directories of a board do not exist here: check keys and types,
        // the profile merge, and every rule that does not touch the file system.
        let text = include_str!("../../../board/edgedx.example.toml");
        let mut c: Config = toml::from_str(text).expect("board/edgedx.example.toml");
        c.apply_profile(true, false).unwrap();
        assert_eq!(c.socket_mode().unwrap(), 0o660);
        assert_eq!(c.memory.worker_limit_bytes(), Some(256 * 1024 * 1024));
        assert!(c.serial.is_some() && c.watchdog.is_some());
    }

    #[test]
    fn the_packaged_configuration_parses_with_every_board_profile() {
        // The Debian package's conffile, and the one-line change its comment documents.
        let text = include_str!("../../../board/deb/edgedx.toml");
        for profile in ["rpi4-2gb", "rpi5-2gb", "imx8mp"] {
            assert!(
                text.contains(&format!("#   {profile} ")),
                "{profile} is listed"
            );
            let text = text.replace("profile = \"rpi4-2gb\"", &format!("profile = {profile:?}"));
            let mut c: Config = toml::from_str(&text).expect("board/deb/edgedx.toml");
            c.apply_profile(false, false).unwrap();
            assert_eq!(c.profile.as_deref(), Some(profile));
            assert_eq!(c.memory.budget_mib, 384, "{profile}");
            assert!(c.serial.is_some() && c.watchdog.is_some(), "{profile}");
            assert_eq!(
                c.bundle.as_deref(),
                Some(Path::new("/usr/share/edgedx/bundles/default"))
            );
        }
    }

    #[test]
    fn profile_fills_what_the_file_leaves_out() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "profile = \"rpi4-2gb\"\nstate_dir = {:?}\n[socket]\npath = {:?}\n",
            dir.path(),
            dir.path().join("s.sock")
        );
        let table: toml::Table = toml::from_str(&text).unwrap();
        let mut c: Config = toml::from_str(&text).unwrap();
        c.apply_profile(table.contains_key("memory"), worker_threads_set(&table))
            .unwrap();
        assert_eq!(c.serial.as_ref().unwrap().device, Path::new("/dev/ttyAMA0"));
        assert_eq!(
            c.watchdog.as_ref().unwrap().device,
            Path::new("/dev/watchdog0")
        );
        assert_eq!(c.gpio.as_ref().unwrap().button, Some(27));
        assert_eq!(c.camera.as_ref().unwrap().kind, CameraKind::V4l2);
        assert_eq!(c.memory.budget_mib, 384);
        assert_eq!(c.worker.threads, 3, "the rpi4-2gb profile's threads");
        // The file's own [memory] wins.
        let text = format!("{text}[memory]\nbudget_mib = 300\n");
        let mut c: Config = toml::from_str(&text).unwrap();
        c.apply_profile(true, false).unwrap();
        assert_eq!(c.memory.budget_mib, 300);
        // And so does its own [worker] threads, even when it equals the default.
        let with_threads = format!("{text}[worker]\nthreads = 1\n");
        let table: toml::Table = toml::from_str(&with_threads).unwrap();
        let mut c: Config = toml::from_str(&with_threads).unwrap();
        c.apply_profile(true, worker_threads_set(&table)).unwrap();
        assert_eq!(c.worker.threads, 1);
        let mut c: Config = toml::from_str(&text.replace("rpi4-2gb", "no-such-board")).unwrap();
        assert!(
            format!("{:#}", c.apply_profile(true, false).unwrap_err()).contains("no-such-board")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let base = format!("state_dir = {:?}\n", dir.path());
        let sock = format!("[socket]\npath = {:?}\n", dir.path().join("s.sock"));
        let cases = [
            (
                format!("{base}{sock}colour = 1\n"),
                "unknown field `colour`",
            ),
            (base.clone(), "no link configured"),
            (format!("{base}{sock}mode = \"0666\"\n"), "every local user"),
            (format!("{base}{sock}mode = \"rw\"\n"), "not an octal"),
            (
                format!("{base}{sock}[limits]\nqueue_depth = 0\n"),
                "limits.queue_depth",
            ),
            (
                format!("{base}{sock}[outbox]\nmax_bytes = 1000\n"),
                "outbox.max_bytes",
            ),
            (
                format!("{base}{sock}[worker]\ndeadline_factor = 0.5\n"),
                "worker.deadline_factor",
            ),
            (
                format!("{base}{sock}[worker]\nthreads = 0\n"),
                "worker.threads 0 is outside 1..=64",
            ),
            (
                format!("{base}{sock}[worker]\nthreads = 65\n"),
                "worker.threads 65",
            ),
            (
                format!("{base}[serial]\ndevice = \"/nonexistent/tty\"\n"),
                "serial.device",
            ),
            (
                format!("{base}{sock}[spool]\ndir = \"/nonexistent/spool\"\n"),
                "spool.dir",
            ),
            (
                format!("{base}[socket]\npath = \"/nonexistent/dir/s.sock\"\n"),
                "does not exist",
            ),
            (
                format!("profile = \"rpi4-2gb\"\n{base}{sock}"),
                "serial.device /dev/ttyAMA0",
            ),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
