//! Reload end to end: the real `camnode run` under a real `camnode hub`,
//! told by SIGHUP to read its configuration file again. The node takes what
//! changed without a restart (same process, same boot id, one start
//! message), names what needs a restart, and refuses a broken file whole,
//! running on as it was.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(30);

fn config(hub: &str, send: &str, extra: &str) -> String {
    format!(
        "[node]\nname = \"yard\"\nheartbeat = 0.2\n[capture]\nsource = \"synthetic:160x120\"\nrate = 20\n\
         [encode]\nsend = \"{send}\"\nworkers = 1\n[transport]\nhub = \"{hub}\"\n{extra}"
    )
}

/// Hub records (JSON lines) up to and including the first that contains `needle`.
fn records_until(hub: &Receiver<String>, needle: &str) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    loop {
        let line = hub.recv_timeout(LIMIT).unwrap_or_else(|_| panic!("the hub received nothing with {needle:?} in {LIMIT:?}"));
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        seen.push(record);
        if line.contains(needle) {
            return seen;
        }
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn sighup_switches_send_none_to_all_without_a_restart_and_refuses_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("tcp://127.0.0.1:{}", free_port());
    let mut hub = Proc::spawn(
        "camnode hub",
        camnode().args(["hub", "--bind", &address, "--jsonl", "-"]).stdout(Stdio::piped()),
    );
    let hub_lines = line_channel(hub.stdout());
    let file = dir.path().join("camnode.toml");
    write(&file, &config(&address, "none", ""));
    let mut node = Proc::spawn(
        "camnode run",
        camnode().arg("run").arg("--config").arg(&file).env("RUST_LOG", "camnode=info").stderr(Stdio::piped()),
    );
    let node_lines = line_channel(std::io::BufReader::new(node.child.as_mut().unwrap().stderr.take().unwrap()));

    // Frames flow (heartbeats come from the frame loop), and none is sent.
    let mut records = records_until(&hub_lines, "|Restart|");
    for _ in 0..3 {
        records.extend(records_until(&hub_lines, "yard|Heartbeat"));
    }
    assert!(records.iter().all(|r| r["kind"] != "jpg"), "send = \"none\" sent an image");

    // send = "all", and a setting that needs a restart.
    write(&file, &config(&address, "all", "queue = 4\n"));
    node.signal(libc::SIGHUP);
    let warned = expect_line(&node_lines, "reload: a restart takes", LIMIT);
    assert!(warned.contains("[transport] queue"), "{warned}");
    let applied = expect_line(&node_lines, "reloaded:", LIMIT);
    assert!(applied.contains("[encode] send") && !applied.contains("queue"), "{applied}");
    records.extend(records_until(&hub_lines, "\"kind\":\"jpg\""));

    // A file that does not parse changes nothing, and the node runs on.
    write(&file, "[encode]\nsend = \n");
    node.signal(libc::SIGHUP);
    let refused = expect_line(&node_lines, "reload refused", LIMIT);
    assert!(refused.contains("keeps its configuration"), "{refused}");
    let first_after = records.len();
    for _ in 0..5 {
        records.extend(records_until(&hub_lines, "\"kind\":\"jpg\""));
    }
    assert!(records[first_after..].iter().filter(|r| r["kind"] == "jpg").count() >= 5);

    node.signal(libc::SIGTERM);
    assert!(node.wait(LIMIT).success());
    hub.stop(LIMIT);
    // One process all along: one start message, one boot id.
    let boots: Vec<_> = records.iter().map(|r| r["boot"].clone()).collect();
    assert!(boots.iter().all(|b| *b == boots[0]), "the boot id changed: {boots:?}");
    assert_eq!(records.iter().filter(|r| r["msg"].as_str().unwrap_or("").contains("|Restart|")).count(), 1);
}
