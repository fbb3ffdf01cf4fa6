//! What the Debian package installs, checked offline. The systemd files with systemd's own
//! tools on an image of the installed tree: the unit verifies clean, its exposure score
//! stays at the figure board/README.md gives, and sysusers then tmpfiles (the order of the
//! package's postinst) create the user, the groups and the directories with the owners the
//! unit needs. The manual pages name every command the binaries have. The boot test
//! (tests/boot) installs the package and starts it under systemd on an emulated board.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util;

/// The highest exposure (systemd-analyze's 0-10 scale, times 10) the unit may reach.
/// board/README.md states the measured figure.
const MAX_EXPOSURE_TENTHS: u32 = 10;

fn systemd_tool(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/bin"] {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            return Some(path);
        }
    }
    eprintln!("SKIPPED: {name} not found (systemd's tools are needed for the offline unit checks)");
    None
}

/// The host's own unit directory: the unit's dependencies (sysinit.target, ...) must resolve.
fn host_units() -> Option<PathBuf> {
    let found = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("sysinit.target").is_file());
    if found.is_none() {
        eprintln!("SKIPPED: no systemd unit directory with sysinit.target on this machine");
    }
    found
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &dest);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), dest).unwrap();
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A root with the packaged unit where the package puts it, the host's units beside it, and
/// the real binary as /usr/bin/edgedx (verify checks that ExecStart= is executable).
fn installed_root(units: &Path) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let unit_dir = root.path().join("usr/lib/systemd/system");
    copy_dir(units, &unit_dir);
    std::fs::copy(
        util::root().join("board/systemd/edgedx.service"),
        unit_dir.join("edgedx.service"),
    )
    .unwrap();
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    std::fs::copy(util::edgedx_exe(), root.path().join("usr/bin/edgedx")).unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    root
}

fn run(tool: &Path, args: &[&str]) -> Output {
    let out = Command::new(tool).args(args).output().unwrap();
    eprintln!(
        "$ {} {}\n{}{}",
        tool.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_unit_verifies_clean_and_keeps_its_exposure_score() {
    let (Some(analyze), Some(units)) = (systemd_tool("systemd-analyze"), host_units()) else {
        return;
    };
    let root = installed_root(&units);
    let root_arg = format!("--root={}", root.path().display());

    let verify = run(&analyze, &["verify", &root_arg, "edgedx.service"]);
    assert!(verify.status.success(), "systemd-analyze verify failed");
    // Unknown keys and bad values are warnings that leave the exit status at 0.
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        !said.contains("edgedx.service"),
        "systemd-analyze verify warns about the unit: {said}"
    );

    let threshold = format!("--threshold={MAX_EXPOSURE_TENTHS}");
    let security = run(
        &analyze,
        &[
            "security",
            "--offline=true",
            &root_arg,
            &threshold,
            "--no-pager",
            "edgedx.service",
        ],
    );
    let report = String::from_utf8_lossy(&security.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("→ Overall exposure level for edgedx.service: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("the report ends with the overall exposure level");
    eprintln!("edgedx.service exposure: {score} (at most {MAX_EXPOSURE_TENTHS} tenths allowed)");
    assert!(
        security.status.success(),
        "exposure {score} is over {MAX_EXPOSURE_TENTHS} tenths"
    );
    // The confinement the unit promises, item by item (a ✓ line each).
    for kept in [
        "PrivateNetwork=",
        "NoNewPrivileges=",
        "ProtectSystem=",
        "ProtectHome=",
        "RestrictAddressFamilies=~AF_(INET|INET6)",
        "MemoryDenyWriteExecute=",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with('✓') && l[3..].trim_start().starts_with(kept)),
            "{kept} is not confined: {report}"
        );
    }
}

#[test]
fn sysusers_then_tmpfiles_create_the_user_and_its_directories() {
    let (Some(sysusers), Some(tmpfiles)) = (
        systemd_tool("systemd-sysusers"),
        systemd_tool("systemd-tmpfiles"),
    ) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: systemd-tmpfiles must run as root to give the directories owners");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let board = util::root().join("board/systemd");

    let out = run(
        &sysusers,
        &[&root_arg, board.join("edgedx.sysusers").to_str().unwrap()],
    );
    assert!(out.status.success(), "systemd-sysusers failed");
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("edgedx:"))
        .expect("the edgedx user");
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], "/var/lib/edgedx", "home");
    assert_eq!(fields[6], "/usr/sbin/nologin", "no login shell");
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system user: {uid}");
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    // name:password:gid:members
    let group_fields = |name: &str| -> Vec<&str> {
        group
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap_or_else(|| panic!("group {name}: {group}"))
            .split(':')
            .collect()
    };
    for name in ["dialout", "video", "gpio"] {
        let fields = group_fields(name);
        assert!(
            fields[3].split(',').any(|m| m == "edgedx"),
            "edgedx is not in {name}: {fields:?}"
        );
    }
    let gid_of = |name: &str| -> u32 { group_fields(name)[2].parse().unwrap() };

    let out = run(
        &tmpfiles,
        &[
            &root_arg,
            "--create",
            board.join("edgedx.tmpfile").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "systemd-tmpfiles failed");
    use std::os::unix::fs::MetadataExt;
    for (dir, owner, group, mode) in [
        ("var/lib/edgedx", uid, gid_of("edgedx"), 0o750),
        ("var/lib/edgedx/outbox", uid, gid_of("edgedx"), 0o750),
        ("etc/edgedx", 0, gid_of("edgedx"), 0o750),
    ] {
        let meta = std::fs::metadata(root.path().join(dir)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (owner, group, mode),
            "{dir}: owner, group, mode"
        );
    }
}

/// The subcommands a clap `--help` lists (the lines under "Commands:", `help` aside).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_manual_pages_describe_every_command() {
    for (mut cmd, page) in [
        (util::edgedx(), "board/deb/man/edgedx.1"),
        (util::ctl(), "board/deb/man/edgedx-ctl.1"),
    ] {
        let out = cmd.arg("--help").output().unwrap();
        assert!(out.status.success(), "{page}: --help failed");
        let commands = subcommands(&String::from_utf8_lossy(&out.stdout));
        assert!(
            commands.len() >= 4,
            "{page}: commands found in --help: {commands:?}"
        );
        let text = std::fs::read_to_string(util::root().join(page)).unwrap();
        for command in commands {
            // Each command has its own tagged paragraph: `.TP` then `.B <command>...`.
            let described = text
                .split(".TP\n")
                .skip(1)
                .any(|para| para.starts_with(&format!(".B {command}")));
            assert!(described, "{page} does not describe `{command}`");
        }
    }
}
