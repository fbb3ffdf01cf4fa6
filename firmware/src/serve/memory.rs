//! Start-up admission of the int8 model (accuracy-gate approval) and the memory gate that
//! decides whether the fp32 model may be loaded.

use anyhow::bail;
use edgedx_bundle::{Bundle, Verdict};
use edgedx_icd::{FallbackReason, PrecisionReason};

use super::config::{Config, Precision};
use super::dispatch::MemoryGate;
use crate::PrecisionArg;

const MIB: u64 = 1024 * 1024;

/// Which model serves at start, and why.
#[derive(Debug)]
pub struct Admission {
    pub serve: PrecisionArg,
    pub reason: PrecisionReason,
    /// Set when the configured int8 model was not admitted.
    pub note: Option<String>,
}

/// Why the bundle's int8 model may not serve, or `None` when its approval is valid for the
/// exact file: verdict approved, made for this sha256, with thresholds no looser than the
/// bundle's and metrics that actually meet them (a hand-edited verdict does not pass).
pub fn int8_unapproved(bundle: &Bundle) -> Option<String> {
    let m = bundle.manifest();
    let int8 = match bundle.variant("int8") {
        Ok(f) => f,
        Err(e) => return Some(format!("the bundle has no int8 model ({e})")),
    };
    let Some(a) = &m.approval else {
        return Some("the bundle has no [approval] record from the accuracy gate".into());
    };
    if a.verdict != Verdict::Approved {
        return Some(format!(
            "the accuracy gate rejected this int8 model: {}",
            a.reasons.join("; ")
        ));
    }
    if a.int8_sha256 != int8.sha256 {
        return Some(format!(
            "the approval is for int8 file {} but the bundle's int8 file is {}",
            a.int8_sha256, int8.sha256
        ));
    }
    let t = m.gate_thresholds();
    if a.max_accuracy_drop > t.max_accuracy_drop || a.max_recall_drop > t.max_recall_drop {
        return Some("the approval used looser thresholds than the bundle's [gate]".into());
    }
    let eps = 1e-9;
    if a.fp32_accuracy - a.int8_accuracy > t.max_accuracy_drop + eps {
        return Some(format!(
            "approval record inconsistent: accuracy drop {:.4} is over {:.4}",
            a.fp32_accuracy - a.int8_accuracy,
            t.max_accuracy_drop
        ));
    }
    if a.fp32_recall.len() != a.int8_recall.len()
        || a.fp32_recall
            .iter()
            .zip(&a.int8_recall)
            .any(|(f, i)| f - i > t.max_recall_drop + eps)
    {
        return Some(
            "approval record inconsistent: a class recall drop is over the threshold".into(),
        );
    }
    if !a.batch_invariant || a.failed_images > 0 {
        return Some("approval record inconsistent: batch invariance or failed images".into());
    }
    None
}

/// Decides the serving model at start-up: int8 only with a valid approval; otherwise fp32
/// when memory allows, otherwise refuse to start with the command that fixes it.
pub fn check_approval(bundle: &Bundle, config: &Config) -> anyhow::Result<Admission> {
    if config.precision == Precision::Fp32 {
        return Ok(Admission {
            serve: PrecisionArg::Fp32,
            reason: PrecisionReason::Normal,
            note: None,
        });
    }
    let Some(why) = int8_unapproved(bundle) else {
        return Ok(Admission {
            serve: PrecisionArg::Int8,
            reason: PrecisionReason::Normal,
            note: None,
        });
    };
    let fix = format!(
        "run `edgedx gate --bundle {} --dataset <labelled test set> --write` and install the approved bundle",
        bundle.dir().display()
    );
    if bundle.variant("fp32").is_err() {
        bail!("int8 model not approved ({why}) and the bundle has no fp32 model; {fix}");
    }
    if let Err(mem) = Gate::new(config, bundle).fp32_allowed() {
        bail!("int8 model not approved ({why}) and fp32 does not fit in memory ({mem}); {fix}");
    }
    Ok(Admission {
        serve: PrecisionArg::Fp32,
        reason: PrecisionReason::Fallback {
            reason: FallbackReason::Unapproved,
        },
        note: Some(format!(
            "int8 model not approved: {why}; serving fp32. To serve int8, {fix}"
        )),
    })
}

/// The fp32 memory gate: the fp32 worker's measured need plus what the supervisor uses now
/// must fit the budget, and MemAvailable must keep the configured headroom after loading.
#[derive(Debug, Clone)]
pub struct Gate {
    budget: u64,
    headroom: u64,
    fp32_need: u64,
    need_source: String,
}

impl Gate {
    pub fn new(config: &Config, bundle: &Bundle) -> Gate {
        let (fp32_need, need_source) = match config.memory.fp32_need_mib {
            Some(mib) => (mib * MIB, "memory.fp32_need_mib".to_string()),
            None => match bundle
                .manifest()
                .memory
                .as_ref()
                .and_then(|m| m.get("fp32"))
            {
                Some(need) => (
                    need.peak_rss_bytes,
                    "bundle [memory.fp32] peak_rss_bytes".to_string(),
                ),
                None => {
                    // No measurement: a conservative estimate (code and runtime ~32 MiB,
                    // plus the weights held up to four times while tract optimises).
                    let file = bundle
                        .variant("fp32")
                        .ok()
                        .and_then(|f| std::fs::metadata(bundle.variant_path(f)).ok())
                        .map_or(0, |m| m.len());
                    (
                        32 * MIB + 4 * file,
                        "estimate (no measurement in the bundle)".to_string(),
                    )
                }
            },
        };
        Gate {
            budget: config.memory.budget_mib * MIB,
            headroom: config.memory.headroom_mib * MIB,
            fp32_need,
            need_source,
        }
    }

    fn check(&self, supervisor_rss: u64, mem_available: Option<u64>) -> Result<(), String> {
        if supervisor_rss + self.fp32_need > self.budget {
            return Err(format!(
                "fp32 needs {} MiB ({}) and the supervisor uses {} MiB: over the {} MiB budget",
                self.fp32_need / MIB,
                self.need_source,
                supervisor_rss / MIB,
                self.budget / MIB
            ));
        }
        if let Some(avail) = mem_available {
            if avail < self.fp32_need + self.headroom {
                return Err(format!(
                    "MemAvailable {} MiB would leave less than the {} MiB headroom after fp32's {} MiB",
                    avail / MIB,
                    self.headroom / MIB,
                    self.fp32_need / MIB
                ));
            }
        }
        Ok(())
    }
}

impl MemoryGate for Gate {
    fn fp32_allowed(&self) -> Result<(), String> {
        let rss = edgedx_engine::memory::current().map_or(0, |m| m.rss);
        self.check(rss, mem_available())
    }

    fn fp32_alongside_allowed(&self, resident: u64) -> Result<(), String> {
        let rss = edgedx_engine::memory::current().map_or(0, |m| m.rss);
        self.check(rss + resident, mem_available())
    }
}

/// MemAvailable from /proc/meminfo, in bytes.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        rest.trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(budget_mib: u64, headroom_mib: u64, need_mib: u64) -> Gate {
        Gate {
            budget: budget_mib * MIB,
            headroom: headroom_mib * MIB,
            fp32_need: need_mib * MIB,
            need_source: "test".into(),
        }
    }

    #[test]
    fn gate_checks_budget_and_headroom() {
        assert!(gate(384, 256, 100)
            .check(50 * MIB, Some(1024 * MIB))
            .is_ok());
        let e = gate(384, 256, 100)
            .check(300 * MIB, Some(1024 * MIB))
            .unwrap_err();
        assert!(e.contains("over the 384 MiB budget"), "{e}");
        let e = gate(384, 256, 100)
            .check(50 * MIB, Some(300 * MIB))
            .unwrap_err();
        assert!(e.contains("headroom"), "{e}");
    }

    #[test]
    fn reads_mem_available() {
        assert!(mem_available().is_some_and(|b| b > 0));
    }
}
