//! `camnode doctor` on this machine: what is wrong comes out as a failed
//! line with its fix, what is right as passed, against a real hub and real
//! key files. (The camera's lines are tested on libcamera's virtual camera in
//! tests/libcamera_virtual.rs; the clock and the service depend on the
//! machine and are only looked for.)

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(30);

fn doctor(dir: &std::path::Path, config: &str) -> (Output, String) {
    let path = dir.join("camnode.toml");
    std::fs::write(&path, config).unwrap();
    let output = run_to_end("camnode doctor", camnode().arg("doctor").arg("--config").arg(&path), LIMIT);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    (output, text)
}

/// The line of check `name`, with the fix line under it if there is one.
fn line<'a>(text: &'a str, name: &str) -> (&'a str, Option<&'a str>) {
    let mut lines = text.lines();
    let found = lines.find(|l| l.get(7..).is_some_and(|rest| rest.starts_with(&format!("{name} ")))).unwrap_or_else(|| panic!("no {name} line:\n{text}"));
    let fix = lines.take_while(|l| l.starts_with(' ')).find(|l| l.trim_start().starts_with("fix: "));
    (found, fix)
}

#[test]
fn an_unreachable_hub_and_a_bad_spool_fail_with_their_fixes() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("tcp://127.0.0.1:{}", free_port());
    let (output, text) = doctor(
        dir.path(),
        &format!("[capture]\nsource = \"synthetic\"\n[transport]\nhub = \"{address}\"\nreply_timeout = 0.5\n[spool]\ndir = \"/dev/null/spool\"\n"),
    );
    assert!(!output.status.success(), "doctor passed with nothing listening at the hub address:\n{text}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("checks failed"));
    let (hub, fix) = line(&text, "hub");
    assert!(hub.starts_with("[FAIL]") && hub.contains(&format!("no reply from {address}")), "{text}");
    assert!(fix.is_some_and(|f| f.contains("check that the hub runs")), "{text}");
    let (spool, fix) = line(&text, "spool");
    assert!(spool.starts_with("[FAIL]") && spool.contains("/dev/null/spool"), "{text}");
    assert!(fix.is_some_and(|f| f.contains("install -d -o camnode")), "{text}");
    assert!(line(&text, "config").0.starts_with("[ ok ]"), "{text}");
    assert!(line(&text, "camera").0.starts_with("[ -- ]"), "{text}");
    for name in ["clock", "service"] {
        line(&text, name);
    }
}

#[test]
fn a_secret_key_open_to_others_fails_with_the_chmod() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("node");
    assert!(run_to_end("camnode keygen", camnode().arg("keygen").arg(&stem), LIMIT).status.success());
    let secret = dir.path().join("node.key_secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = format!(
        "[capture]\nsource = \"synthetic\"\n[security]\nsecret_cert = \"{}\"\nserver_cert = \"{}\"\n[spool]\ndir = \"{}\"\n",
        secret.display(),
        dir.path().join("node.key").display(),
        dir.path().join("spool").display()
    );
    let (output, text) = doctor(dir.path(), &config);
    assert!(!output.status.success());
    let (curve, fix) = line(&text, "curve");
    assert!(curve.starts_with("[FAIL]") && curve.contains("mode 644"), "{text}");
    assert!(fix.is_some_and(|f| f.contains(&format!("chmod 600 {}", secret.display()))), "{text}");
    assert!(line(&text, "hub").0.starts_with("[ -- ]"), "the hub was tried with unusable keys:\n{text}");
    assert!(line(&text, "spool").0.starts_with("[ ok ]"), "{text}");
}

#[test]
fn a_running_hub_answers_the_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("tcp://127.0.0.1:{}", free_port());
    let mut hub = Proc::spawn("camnode hub", camnode().args(["hub", "--bind", &address, "--jsonl", "-"]).stdout(Stdio::piped()));
    let received = line_channel(hub.stdout());
    let config = format!("[node]\nname = \"gate\"\n[capture]\nsource = \"synthetic\"\n[transport]\nhub = \"{address}\"\n[spool]\ndir = \"{}\"\n", dir.path().join("spool").display());
    let (_, text) = doctor(dir.path(), &config);
    let (hub_line, fix) = line(&text, "hub");
    assert!(hub_line.starts_with("[ ok ]") && hub_line.contains("answered a heartbeat OK"), "{text}");
    assert!(fix.is_none());
    expect_line(&received, "gate|Heartbeat", LIMIT);
    hub.stop(LIMIT);
}
