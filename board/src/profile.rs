//! Board profiles: which devices a board has and how much memory and CPU edgedx may use
//! on it, read from TOML (`board/profiles/*.toml`) and validated once at startup.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::camera::{check_dimensions, PixelFormat};
use crate::error::BoardError;
use crate::serial::baud_rate;

/// Profiles shipped in `board/profiles/`, built into the binary: (name, TOML text).
pub const BUILTIN: &[(&str, &str)] = &[
    ("rpi4-2gb", include_str!("../profiles/rpi4-2gb.toml")),
    ("rpi5-2gb", include_str!("../profiles/rpi5-2gb.toml")),
    ("imx8mp", include_str!("../profiles/imx8mp.toml")),
    ("host-sim", include_str!("../profiles/host-sim.toml")),
];

/// Largest profile file read: profiles are a few hundred bytes; anything bigger is a
/// wrong path.
const MAX_PROFILE_BYTES: u64 = 64 * 1024;

/// Whether a device is the real Linux one or its simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Linux,
    Sim,
}

/// A validated board profile.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub description: String,
    /// Inference threads.
    pub threads: u32,
    pub serial: SerialConfig,
    pub camera: Option<CameraConfig>,
    pub gpio: Option<GpioConfig>,
    pub watchdog: Option<WatchdogConfig>,
    pub memory: MemoryConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    pub device: PathBuf,
    pub baud: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    #[serde(default)]
    pub driver: Driver,
    /// V4L2 device node, or for `driver = "sim"` a directory of images.
    pub device: PathBuf,
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioConfig {
    #[serde(default)]
    pub driver: Driver,
    /// GPIO character device; required for `driver = "linux"`.
    pub chip: Option<PathBuf>,
    /// Line offsets on `chip`.
    pub led: Option<u32>,
    pub buzzer: Option<u32>,
    pub button: Option<u32>,
    /// The button pulls the line low when pressed (button to ground, pull-up).
    #[serde(default = "default_true")]
    pub button_active_low: bool,
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    #[serde(default)]
    pub driver: Driver,
    /// Required for `driver = "linux"`.
    pub device: Option<PathBuf>,
    pub timeout_s: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// RAM on the board.
    pub total_mib: u32,
    /// Most the inference worker may use (the systemd unit's MemoryMax= follows it).
    #[serde(default = "default_budget_mib")]
    pub budget_mib: u32,
    /// MemAvailable that must remain after loading before the fp32 fallback may load.
    pub headroom_mib: u32,
}

fn default_true() -> bool {
    true
}
fn default_debounce_ms() -> u64 {
    30
}
/// Budget for 2 GB boards: leaves the OS, the supervisor and the page cache room.
pub const DEFAULT_BUDGET_MIB: u32 = 384;
fn default_budget_mib() -> u32 {
    DEFAULT_BUDGET_MIB
}

impl Profile {
    /// Reads and validates a profile file.
    pub fn load(path: impl AsRef<Path>) -> Result<Profile, BoardError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let fail = |problem: String| BoardError::Profile {
            file: origin.clone(),
            field: None,
            problem,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| fail(format!("cannot read: {e}")))?
            .len();
        if len > MAX_PROFILE_BYTES {
            return Err(fail(format!(
                "{len} bytes; a profile is at most {MAX_PROFILE_BYTES}"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        Profile::from_toml_str(&text, &origin)
    }

    /// Parses and validates profile text; `origin` names it in errors (a file name).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Profile, BoardError> {
        let profile: Profile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .and_then(|s| text.get(..s.start))
                .map(|before| format!("line {}: ", before.matches('\n').count() + 1))
                .unwrap_or_default();
            BoardError::Profile {
                file: origin.to_string(),
                field: None,
                problem: format!("{line}{}", e.message()),
            }
        })?;
        profile.validate(origin)?;
        Ok(profile)
    }

    /// A profile built into the binary, by name (see [`BUILTIN`]).
    pub fn builtin(name: &str) -> Option<Result<Profile, BoardError>> {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, text)| Profile::from_toml_str(text, &format!("{n}.toml (built in)")))
    }

    /// Checks what TOML types cannot: ranges, cross-field limits, required-when rules.
    pub fn validate(&self, origin: &str) -> Result<(), BoardError> {
        let bad = |field: &str, problem: String| BoardError::Profile {
            file: origin.to_string(),
            field: Some(field.to_string()),
            problem,
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(bad(
                "name",
                format!("{:?}: use lower-case letters, digits and '-'", self.name),
            ));
        }
        if !(1..=64).contains(&self.threads) {
            return Err(bad("threads", format!("{}: must be 1 to 64", self.threads)));
        }
        absolute("serial.device", &self.serial.device).map_err(|p| bad("serial.device", p))?;
        if baud_rate(self.serial.baud).is_none() {
            return Err(bad(
                "serial.baud",
                format!(
                    "{} is not a standard termios speed (e.g. 115200, 921600)",
                    self.serial.baud
                ),
            ));
        }
        if let Some(cam) = &self.camera {
            if cam.driver == Driver::Linux {
                absolute("camera.device", &cam.device).map_err(|p| bad("camera.device", p))?;
            } else if cam.device.as_os_str().is_empty() {
                return Err(bad("camera.device", "must name the image directory".into()));
            }
            check_dimensions(cam.format, cam.width, cam.height)
                .map_err(|p| bad("camera.width / camera.height", p.to_string()))?;
        }
        if let Some(gpio) = &self.gpio {
            match (&gpio.chip, gpio.driver) {
                (Some(chip), _) => absolute("gpio.chip", chip).map_err(|p| bad("gpio.chip", p))?,
                (None, Driver::Linux) => {
                    return Err(bad("gpio.chip", "required with the linux driver".into()))
                }
                (None, Driver::Sim) => {}
            }
            let lines: Vec<(&str, u32)> = [
                ("led", gpio.led),
                ("buzzer", gpio.buzzer),
                ("button", gpio.button),
            ]
            .into_iter()
            .filter_map(|(n, l)| l.map(|l| (n, l)))
            .collect();
            if lines.is_empty() {
                return Err(bad(
                    "gpio",
                    "names no line (led, buzzer, button); remove the section instead".into(),
                ));
            }
            for (i, (a, la)) in lines.iter().enumerate() {
                if let Some((b, _)) = lines[i + 1..].iter().find(|(_, lb)| lb == la) {
                    return Err(bad(
                        &format!("gpio.{b}"),
                        format!("line {la} is already used by gpio.{a}"),
                    ));
                }
            }
            if !(1..=1000).contains(&gpio.debounce_ms) {
                return Err(bad(
                    "gpio.debounce_ms",
                    format!("{}: must be 1 to 1000", gpio.debounce_ms),
                ));
            }
        }
        if let Some(wd) = &self.watchdog {
            match (&wd.device, wd.driver) {
                (Some(dev), _) => {
                    absolute("watchdog.device", dev).map_err(|p| bad("watchdog.device", p))?
                }
                (None, Driver::Linux) => {
                    return Err(bad(
                        "watchdog.device",
                        "required with the linux driver".into(),
                    ))
                }
                (None, Driver::Sim) => {}
            }
            if !(1..=3600).contains(&wd.timeout_s) {
                return Err(bad(
                    "watchdog.timeout_s",
                    format!("{}: must be 1 to 3600", wd.timeout_s),
                ));
            }
        }
        let m = &self.memory;
        if m.total_mib < 256 {
            return Err(bad(
                "memory.total_mib",
                format!(
                    "{} MiB: edgedx needs a board with at least 256 MiB",
                    m.total_mib
                ),
            ));
        }
        if m.budget_mib == 0 || m.budget_mib > m.total_mib {
            return Err(bad(
                "memory.budget_mib",
                format!(
                    "{} MiB: must be more than 0 and at most memory.total_mib ({} MiB)",
                    m.budget_mib, m.total_mib
                ),
            ));
        }
        if u64::from(m.budget_mib) + u64::from(m.headroom_mib) > u64::from(m.total_mib) {
            return Err(bad(
                "memory.headroom_mib",
                format!(
                    "{} MiB plus budget_mib {} MiB exceeds total_mib {} MiB: fp32 could never load",
                    m.headroom_mib, m.budget_mib, m.total_mib
                ),
            ));
        }
        Ok(())
    }
}

fn absolute(field: &str, path: &Path) -> Result<(), String> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(format!(
            "{}: {field} must be an absolute path",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn shipped() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_shipped_profile_parses_validates_and_is_built_in() {
        let files = shipped();
        assert_eq!(files.len(), BUILTIN.len(), "{files:?}");
        for file in files {
            let p = Profile::load(&file).unwrap_or_else(|e| panic!("{e}"));
            let stem = file.file_stem().unwrap().to_str().unwrap();
            assert_eq!(p.name, stem, "profile name must match its file name");
            let builtin = Profile::builtin(stem).expect("listed in BUILTIN").unwrap();
            assert_eq!(builtin, p);
        }
    }

    #[test]
    fn shipped_values_are_the_documented_ones() {
        let pi4 = Profile::builtin("rpi4-2gb").unwrap().unwrap();
        assert_eq!(pi4.memory.total_mib, 2048);
        assert_eq!(pi4.memory.budget_mib, DEFAULT_BUDGET_MIB);
        assert_eq!(pi4.serial.baud, 115_200);
        assert!(
            pi4.watchdog.as_ref().unwrap().timeout_s <= 15,
            "bcm2835-wdt max is 15 s"
        );
        let sim = Profile::builtin("host-sim").unwrap().unwrap();
        assert_eq!(sim.camera.unwrap().driver, Driver::Sim);
        assert_eq!(sim.watchdog.unwrap().driver, Driver::Sim);
        assert!(Profile::builtin("nope").is_none());
    }

    const MINIMAL: &str = r#"
name = "t"
description = "test"
threads = 2
[serial]
device = "/dev/ttyGS0"
baud = 115200
[memory]
total_mib = 2048
headroom_mib = 256
"#;

    fn error_for(text: &str) -> (Option<String>, String) {
        match Profile::from_toml_str(text, "t.toml").unwrap_err() {
            BoardError::Profile {
                file,
                field,
                problem,
            } => {
                assert_eq!(file, "t.toml");
                (field, problem)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn minimal_profile_gets_defaults() {
        let p = Profile::from_toml_str(MINIMAL, "t.toml").unwrap();
        assert_eq!(p.memory.budget_mib, 384);
        assert!(p.camera.is_none() && p.gpio.is_none() && p.watchdog.is_none());
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "total_mib = 2048",
                "total_mib = 2048\nbudget_mib = 4096",
                "memory.budget_mib",
                "at most",
            ),
            ("threads = 2", "threads = 0", "threads", "1 to 64"),
            ("baud = 115200", "baud = 115201", "serial.baud", "115201"),
            (
                "headroom_mib = 256",
                "headroom_mib = 1900",
                "memory.headroom_mib",
                "never load",
            ),
            (
                "device = \"/dev/ttyGS0\"",
                "device = \"ttyGS0\"",
                "serial.device",
                "absolute",
            ),
        ];
        for (from, to, field, needle) in cases {
            let (f, problem) = error_for(&MINIMAL.replace(from, to));
            assert_eq!(f.as_deref(), Some(*field), "{problem}");
            assert!(problem.contains(needle), "{field}: {problem}");
        }
        let err = Profile::from_toml_str(&MINIMAL.replace("threads = 2", "threads = 0"), "t.toml")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Profile);
        assert_eq!(
            err.to_string(),
            "board profile t.toml: field `threads`: 0: must be 1 to 64"
        );
    }

    #[test]
    fn sections_are_checked() {
        let gpio = format!("{MINIMAL}[gpio]\nchip = \"/dev/gpiochip0\"\nled = 17\nbutton = 17\n");
        let (f, p) = error_for(&gpio);
        assert_eq!(f.as_deref(), Some("gpio.button"), "{p}");
        let gpio = format!("{MINIMAL}[gpio]\nled = 17\n");
        assert_eq!(error_for(&gpio).0.as_deref(), Some("gpio.chip"));
        let cam = format!(
            "{MINIMAL}[camera]\ndevice = \"/dev/video0\"\nformat = \"yuyv\"\nwidth = 641\nheight = 480\n"
        );
        let (f, p) = error_for(&cam);
        assert_eq!(f.as_deref(), Some("camera.width / camera.height"));
        assert!(p.contains("even"), "{p}");
        let wd = format!("{MINIMAL}[watchdog]\ndevice = \"/dev/watchdog0\"\ntimeout_s = 0\n");
        assert_eq!(error_for(&wd).0.as_deref(), Some("watchdog.timeout_s"));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected_with_a_line() {
        let (f, p) = error_for(&MINIMAL.replace("threads = 2", "threads = 2\nthreadz = 3"));
        assert_eq!(f, None);
        assert!(p.contains("threadz") && p.contains("line 5"), "{p}");
        let (_, p) = error_for(&format!(
            "{MINIMAL}[camera]\ndevice = \"/dev/video0\"\nformat = \"h264\"\nwidth = 640\nheight = 480\n"
        ));
        assert!(p.contains("h264"), "{p}");
    }

    #[test]
    fn load_names_the_file() {
        let err = Profile::load("/nonexistent/board.toml").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/board.toml"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        std::fs::write(&path, vec![b'#'; 100_000]).unwrap();
        let err = Profile::load(&path).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
    }
}
