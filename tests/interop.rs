//! End-to-end: the real `camnode` binary sends to `camnode hub` and to the
//! real Python imagezmq `ImageHub`, in REQ and PUB modes, JPEG and raw; and a
//! node keeps delivering after its hub is killed and restarted.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn decode_size(path: &std::path::Path) -> (usize, usize) {
    let jpeg = std::fs::read(path).unwrap();
    let image = turbojpeg::decompress(&jpeg, turbojpeg::PixelFormat::RGB).unwrap();
    (image.width, image.height)
}

#[test]
fn req_node_to_camnode_hub_sends_motion_frames_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let save = dir.path().join("hub");
    let jsonl = dir.path().join("hub.jsonl");
    let mut hub = Proc::spawn(
        "camnode hub",
        camnode()
            .args(["hub", "--bind", &format!("tcp://127.0.0.1:{port}")])
            .arg("--save")
            .arg(&save)
            .arg("--jsonl")
            .arg(&jsonl),
    );
    let stats = dir.path().join("stats.json");
    let node = run_to_end(
        "camnode run",
        camnode()
            .args(["run", "--source", "synthetic:320x240", "--rate", "max", "--frames", "240", "--name", "yard", "--view", "gate"])
            .args(["--hub", &format!("tcp://127.0.0.1:{port}")])
            .arg("--stats-json")
            .arg(&stats),
        LIMIT,
    );
    assert!(node.status.success(), "{}", String::from_utf8_lossy(&node.stderr));
    // The node exits only once the hub acknowledged everything: stop the hub then.
    assert!(hub.stop(LIMIT).success());

    let stats = read_json(&stats);
    let messages = read_jsonl(&jsonl);
    let texts: Vec<&str> = messages.iter().map(|m| m["msg"].as_str().unwrap()).collect();
    // The synthetic scene is still for 60 frames, then an object crosses for 60: two crossings in 240 frames.
    assert_eq!(texts.iter().filter(|t| **t == "yard gate|motion|moving").count(), 2, "{texts:?}");
    assert_eq!(texts.iter().filter(|t| **t == "yard gate|motion|still").count(), 1, "{texts:?}");
    assert!(texts[0].starts_with("yard|Restart|"), "{texts:?}");
    let images: Vec<_> = messages.iter().filter(|m| m["kind"] == "jpg").collect();
    assert_eq!(images.len() as u64, stats["encoded"].as_u64().unwrap());
    assert_eq!(stats["sent"].as_u64().unwrap(), messages.len() as u64);
    assert_eq!(stats["dropped"].as_u64().unwrap(), 0);
    let (cpu, encoding) = (stats["cpu_s"].as_f64().unwrap(), stats["encode_cpu_s"].as_f64().unwrap());
    assert!(encoding > 0.0 && encoding < cpu, "encoding took {encoding} s of the run's {cpu} s CPU");
    // Only moving frames are sent: far fewer than captured, none from the first still period but the pre-event ones.
    assert!(images.len() > 100 && images.len() < 160, "{} images", images.len());
    assert!(images.iter().all(|m| m["seq"].as_u64().unwrap() >= 55), "an image from the still start was sent");
    for image in &images {
        let path = std::path::Path::new(image["path"].as_str().unwrap());
        assert!(path.starts_with(&save));
        assert_eq!(decode_size(path), (320, 240));
    }
    let log = std::fs::read_to_string(save.join("imagehub.log")).unwrap();
    assert!(log.contains("~ yard gate|motion|moving"), "{log}");
}

/// Starts the Python imagezmq hub and returns it with its stdout lines.
fn python_hub(args: &[&str], out: &std::path::Path) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let mut hub = Proc::spawn(
        "imagezmq hub",
        std::process::Command::new(python())
            .arg(repo_root().join("tests/python/imagezmq_hub.py"))
            .args(args)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::piped()),
    );
    let lines = line_channel(hub.stdout());
    (hub, lines)
}

#[test]
fn imagezmq_hub_receives_jpegs_over_req() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("summary.json");
    let (mut hub, lines) = python_hub(&["--mode", "req", "--port", "0"], &out);
    let ready = expect_line(&lines, "READY", LIMIT);
    let endpoint = ready.split_whitespace().nth(1).unwrap().replace("0.0.0.0", "127.0.0.1");
    let node = run_to_end(
        "camnode run",
        camnode().args(["run", "--source", "synthetic:640x480", "--rate", "max", "--frames", "130", "--send", "all", "--name", "pi1"]).args(["--hub", &endpoint]),
        LIMIT,
    );
    assert!(node.status.success(), "{}", String::from_utf8_lossy(&node.stderr));
    // A REQ node exits only once the hub acknowledged everything: stop the hub then.
    hub.stop(LIMIT);
    let summary = read_json(&out);
    let messages = summary["messages"].as_array().unwrap();
    let images: Vec<_> = messages.iter().filter(|m| m["msg"] == "pi1 Cam|jpg").collect();
    assert_eq!(images.len(), 130, "every frame is sent with --send all");
    assert!(images.iter().all(|m| m["width"] == 640 && m["height"] == 480), "a JPEG did not decode to 640x480");
    assert!(messages.iter().any(|m| m["msg"] == "pi1 Cam|motion|moving"));
    assert_eq!(summary["errors"], 0);
}

/// At `--rate max` a file, pipe or synthetic source waits for the network
/// instead of dropping: against a hub that works 10 ms per message (the node
/// makes a frame far faster) and the default queue of 16, all 100 frames
/// arrive.
#[test]
fn a_source_without_a_clock_waits_for_a_slow_hub_at_rate_max() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("summary.json");
    let (mut hub, lines) = python_hub(&["--mode", "req", "--port", "0", "--work-ms", "10"], &out);
    let endpoint = expect_line(&lines, "READY", LIMIT).split_whitespace().nth(1).unwrap().replace("0.0.0.0", "127.0.0.1");
    let stats_path = dir.path().join("stats.json");
    let node = run_to_end(
        "camnode run",
        camnode()
            .args(["run", "--source", "synthetic:640x480", "--rate", "max", "--frames", "100", "--send", "all", "--name", "lap"])
            .args(["--hub", &endpoint, "--stats-json"])
            .arg(&stats_path),
        LIMIT,
    );
    assert!(node.status.success(), "{}", String::from_utf8_lossy(&node.stderr));
    hub.stop(LIMIT);
    let summary = read_json(&out);
    let images = summary["messages"].as_array().unwrap().iter().filter(|m| m["msg"] == "lap Cam|jpg").count();
    assert_eq!(images, 100, "every frame arrives");
    assert_eq!(read_json(&stats_path)["dropped"], 0);
}

#[test]
fn imagezmq_hub_receives_raw_arrays_with_dtype_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("summary.json");
    let (mut hub, lines) = python_hub(&["--mode", "req", "--port", "0", "--format", "raw"], &out);
    let endpoint = expect_line(&lines, "READY", LIMIT).split_whitespace().nth(1).unwrap().replace("0.0.0.0", "127.0.0.1");
    // Raw frames cost next to nothing to make, so at --rate max the node
    // outruns the hub many times over: it waits for room instead of dropping.
    let node = run_to_end(
        "camnode run",
        camnode()
            .args(["run", "--source", "synthetic:160x120", "--rate", "max", "--frames", "100", "--send", "all", "--format", "raw"])
            .args(["--hub", &endpoint]),
        LIMIT,
    );
    assert!(node.status.success(), "{}", String::from_utf8_lossy(&node.stderr));
    // A REQ node exits only once the hub acknowledged everything: stop the hub then.
    hub.stop(LIMIT);
    let summary = read_json(&out);
    let images: Vec<_> = summary["messages"].as_array().unwrap().iter().filter(|m| m["msg"].as_str().unwrap().ends_with("|image")).cloned().collect();
    assert_eq!(images.len(), 100);
    for image in &images {
        assert_eq!(image["dtype"], "uint8");
        assert_eq!(image["shape"], serde_json::json!([120, 160, 3]));
    }
    assert_eq!(summary["errors"], 0);
}

#[test]
fn imagezmq_hub_subscribes_to_a_pub_node() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("summary.json");
    let port = free_port();
    let (mut hub, lines) = python_hub(&["--mode", "pub", "--port", &port.to_string()], &out);
    expect_line(&lines, "READY", LIMIT);
    let mut node = Proc::spawn(
        "camnode run",
        camnode()
            .args(["run", "--mode", "pub", "--source", "synthetic:320x240", "--rate", "60", "--frames", "240", "--send", "all"])
            .args(["--hub", &format!("tcp://127.0.0.1:{port}")]),
    );
    // PUB has no acknowledgement: frames published before the subscription completes are lost by design.
    expect_line(&lines, "CONNECTED", LIMIT);
    assert!(node.wait(LIMIT).success());
    // What the node published before exiting has reached the subscriber or never will.
    hub.stop(LIMIT);
    let summary = read_json(&out);
    let images: Vec<_> = summary["messages"].as_array().unwrap().iter().filter(|m| m["msg"].as_str().unwrap().ends_with("|jpg")).cloned().collect();
    assert!(images.len() >= 150, "only {} of 240 frames reached the subscriber", images.len());
    assert!(images.iter().all(|m| m["width"] == 320 && m["height"] == 240));
}

#[test]
fn req_node_recovers_when_its_hub_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[transport]\nreply_timeout = 0.5\n").unwrap();
    let hub_cmd = || {
        let mut cmd = camnode();
        cmd.args(["hub", "--bind", &format!("tcp://127.0.0.1:{port}"), "--jsonl", "-"]).stdout(Stdio::piped());
        cmd
    };
    let mut first = Proc::spawn("first hub", &mut hub_cmd());
    let first_lines = line_channel(first.stdout());
    let mut node = Proc::spawn(
        "camnode run",
        camnode()
            .args(["run", "--source", "synthetic:160x120", "--rate", "30", "--frames", "600", "--send", "all"])
            .arg("--config")
            .arg(&config)
            .args(["--hub", &format!("tcp://127.0.0.1:{port}")]),
    );
    for _ in 0..10 {
        expect_line(&first_lines, "|jpg", LIMIT);
    }
    first.signal(libc::SIGKILL);
    first.wait(LIMIT);
    // The node is never restarted: its REQ socket must notice the silence and reconnect by itself.
    let mut second = Proc::spawn("second hub", &mut hub_cmd());
    let second_lines = line_channel(second.stdout());
    let started = std::time::Instant::now();
    expect_line(&second_lines, "|jpg", Duration::from_secs(5));
    eprintln!("delivery resumed {:?} after the new hub started", started.elapsed());
    assert!(node.stop(Duration::from_secs(5)).success());
}

#[test]
fn sigterm_stops_a_node_within_two_seconds() {
    // No hub at all: the node is stuck waiting for replies, and must still exit promptly.
    let port = free_port();
    let mut node = Proc::spawn(
        "camnode run",
        camnode()
            .args(["-v", "run", "--source", "synthetic:160x120", "--send", "all"])
            .args(["--hub", &format!("tcp://127.0.0.1:{port}")])
            .stderr(Stdio::piped()),
    );
    let stderr = std::io::BufReader::new(node.child.as_mut().unwrap().stderr.take().unwrap());
    let lines = line_channel(stderr);
    // Signal handlers are installed before capture starts, and the first request is then unanswered.
    expect_line(&lines, "capturing", LIMIT);
    let started = std::time::Instant::now();
    let status = node.stop(Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[test]
fn config_errors_name_the_key_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[encode]\nquality = 120\n[transport]\nqueue = 0\n").unwrap();
    let out = run_to_end("camnode run", camnode().args(["run", "--config"]).arg(&config), LIMIT);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[encode] quality = 120") && err.contains("bad.toml line 2") && err.contains("1 to 100"), "{err}");
    assert!(err.contains("[transport] queue = 0"), "both problems are reported at once: {err}");

    let out = run_to_end("camnode run", camnode().args(["run", "--source", "webcam"]), LIMIT);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown source 'webcam'"));
}

#[test]
fn effective_config_shows_flags_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[encode]\nquality = 70\n[node]\nname = \"barn\"\n").unwrap();
    let out = run_to_end("camnode config", camnode().args(["config", "--quality", "80"]).arg("--config").arg(&config), LIMIT);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("quality = 80") && text.contains("name = \"barn\""), "{text}");
}
