//! The approval record: writes `[approval]` into a bundle's manifest.toml atomically, and
//! the UTC timestamp it carries (a civil-from-days conversion, so no date crate is needed).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use edgedx_bundle::{Approval, Manifest, MANIFEST_FILE};

/// (year, month, day) of a count of days since 1970-01-01, proleptic Gregorian calendar.
/// Howard Hinnant's `civil_from_days` (http://howardhinnant.github.io/date_algorithms.html):
/// shift the epoch to 0000-03-01 so the leap day is the last day of a 400-year era.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch.
pub fn iso8601_utc(secs: i64) -> String {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The current time for the record. A clock before 1970 is a broken board clock; it is
/// written as such (negative offsets still convert) rather than refused.
pub fn now_utc() -> String {
    let secs = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    iso8601_utc(secs)
}

/// Writes `approval` into `<dir>/manifest.toml`: temp file in the same directory, fsync,
/// rename over the manifest, fsync the directory, so a power cut leaves either the old or
/// the new manifest, never half of one. `expected` is the manifest the gate ran with: if
/// the file changed meanwhile (another model approved, hashes edited) nothing is written.
pub fn write_approval(dir: &Path, expected: &Manifest, approval: &Approval) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Wrapper<'a> {
        approval: &'a Approval,
    }
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let current = Manifest::from_toml_str(&text, &path)?;
    if strip(&current) != strip(expected) {
        bail!(
            "{} changed while the gate ran; nothing written (run the gate again)",
            path.display()
        );
    }
    let table =
        toml::to_string(&Wrapper { approval }).context("serialising the approval record")?;
    let new_text = crate::manifest_edit::replace_tables(&text, "approval", &table);
    let reparsed = Manifest::from_toml_str(&new_text, &path)
        .context("the manifest with the new [approval] does not parse; nothing written")?;
    // Compared as text, not with `==`: an undefined recall is NaN, which never equals itself.
    let written_back = reparsed
        .approval
        .as_ref()
        .map(|approval| toml::to_string(&Wrapper { approval }))
        .transpose()
        .context("serialising the approval record")?;
    if written_back.as_deref() != Some(table.as_str()) || strip(&reparsed) != strip(&current) {
        bail!(
            "{}: adding [approval] would change other parts of the manifest (is there a `[` line inside a multi-line string?); nothing written",
            path.display()
        );
    }
    crate::manifest_edit::write(dir, &new_text)
}

fn strip(m: &Manifest) -> Manifest {
    Manifest {
        approval: None,
        ..m.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_from_days_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        // 2000-02-29: a leap day in a year divisible by 400.
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        // 2100-03-01 follows 2100-02-28 (not a leap year).
        assert_eq!(civil_from_days(47_540), (2100, 2, 28));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn iso8601_formats_utc_seconds() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00Z");
        // `date -u -d @1700000000` = Tue Nov 14 22:13:20 UTC 2023
        assert_eq!(iso8601_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(iso8601_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(now_utc().len(), 20);
    }
}
