//! End to end through libcamera: the real `camnode` binary captures from
//! libcamera's virtual pipeline handler (a camera that needs no hardware) and
//! sends to `camnode hub` and to the real Python imagezmq hub.
//!
//! The virtual camera reads its cameras from `virtual.yaml` in the data
//! directory of the libcamera build, found through `LIBCAMERA_PREFIX` (set by
//! `eval "$(scripts/libcamera.sh host)"`). The tests write that file once per
//! run: a test pattern camera, one that runs at 10 fps at most, and two
//! cameras that replay folders of JPEGs made here from the background of
//! camnode's synthetic scene, one with a figure walking across it, one where
//! nothing moves.
//!
//! The virtual pipeline handler offers two controls, FrameDurationLimits (the
//! frame rate) and FaceDetectMode: camera controls are tested here for what
//! a camera lacks (an error naming the key, the camera and what it has), and
//! for reaching the camera's requests with the one control it has.

#![cfg(feature = "libcamera")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use camnode::capture::{FrameSource, Synthetic};
use camnode::encode::JpegEncoder;
use camnode::frame::FrameBuf;
use support::*;

const LIMIT: Duration = Duration::from_secs(60);
const CLIP_WIDTH: usize = 320;
const CLIP_HEIGHT: usize = 240;
/// Images of background before the walker enters, and images of its walk.
const LEAD_IN: usize = 12;
const WALK: usize = 60;
/// The virtual camera shows each image of a folder for this many frames.
const FRAME_REPEAT: usize = 4;
/// Motion settings for replayed clips: with every image shown four times, a
/// walker moves on one frame in four, so one moving frame starts an event
/// and it ends only after two still images.
const REPLAY_MOTION: &str = "[motion]\nmin_motion_frames = 1\nmin_still_frames = 8\n";

/// Writes the clips and `virtual.yaml` once per test process.
fn virtual_cameras() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let prefix = std::env::var_os("LIBCAMERA_PREFIX").map(PathBuf::from).expect(
            "LIBCAMERA_PREFIX is not set: the libcamera tests need the libcamera build from \
             scripts/libcamera.sh; run `eval \"$(scripts/libcamera.sh host)\"` first",
        );
        let clips = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("libcamera-clips");
        let background = background();
        // Each clip image is one fixed picture plus what moves in it, with no
        // fresh sensor noise: the virtual camera repeats every image four
        // times, so noise would change the picture in bursts, which no real
        // camera does.
        let still = write_clip(&clips, "still", (0..LEAD_IN + WALK).map(|_| background.clone()));
        let walk_images = (0..LEAD_IN + WALK).map(|i| {
            if i < LEAD_IN {
                background.clone()
            } else {
                with_walker(&background, i - LEAD_IN)
            }
        });
        let walk = write_clip(&clips, "walk", walk_images);
        let yaml = [
            "%YAML 1.1\n---\n".to_string(),
            camera_entry("pattern", "camnode test pattern", &[(640, 480), (320, 240)], "test_pattern: \"bars\""),
            camera_entry("slow", "camnode slow camera", &[(320, 240)], "test_pattern: \"lines\"")
                .replace("frame_rates: [1, 60]", "frame_rates: [10, 10]"),
            camera_entry("walk", "camnode walking clip", &[(320, 240)], &frames_from(&walk)),
            camera_entry("still", "camnode still clip", &[(320, 240)], &frames_from(&still)),
        ]
        .concat();
        let dir = prefix.join("share/libcamera/pipeline/virtual");
        std::fs::create_dir_all(&dir).unwrap();
        write_atomically(&dir, &dir.join("virtual.yaml"), yaml.as_bytes());
    });
}

/// One camera of the virtual pipeline handler's configuration (its schema is
/// in libcamera's src/libcamera/pipeline/virtual/README.md): an id, a model
/// name, the sizes it offers at 1 to 60 fps, and what it shows.
fn camera_entry(id: &str, model: &str, sizes: &[(u32, u32)], source: &str) -> String {
    let mut entry = format!("\"{id}\":\n  model: \"{model}\"\n  {source}\n  supported_formats:\n");
    for (width, height) in sizes {
        entry += &format!("  - width: {width}\n    height: {height}\n    frame_rates: [1, 60]\n");
    }
    entry
}

/// Replays `dir/0.jpg, 1.jpg, ...` (the trailing slash tells a folder from a
/// single image).
fn frames_from(dir: &Path) -> String {
    format!("frames:\n    path: \"{}/\"", dir.display())
}

/// The first frame of camnode's synthetic scene: a textured, noisy yard.
fn background() -> FrameBuf {
    let mut scene = Synthetic::new(CLIP_WIDTH, CLIP_HEIGHT, 7);
    let mut background = FrameBuf::default();
    background.copy_from(&scene.next_frame().unwrap().unwrap());
    background
}

/// The background with a dark, person-sized figure at step `step` of its
/// walk from the left edge to the right.
fn with_walker(background: &FrameBuf, step: usize) -> FrameBuf {
    let mut image = background.clone();
    let (w, h) = (CLIP_WIDTH / 10, CLIP_HEIGHT / 3);
    let x = (step * (CLIP_WIDTH - w) / (WALK - 1)) & !1;
    let y = CLIP_HEIGHT / 2;
    let (luma, _, _) = image.planes_mut();
    for row in y..y + h {
        luma[row * CLIP_WIDTH + x..row * CLIP_WIDTH + x + w].fill(24);
    }
    image
}

/// Encodes `images` as `0.jpg, 1.jpg, ...` into `root/name`.
fn write_clip(root: &Path, name: &str, images: impl Iterator<Item = FrameBuf>) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut encoder = JpegEncoder::new(90).unwrap();
    let mut jpeg = Vec::new();
    for (i, image) in images.enumerate() {
        encoder.encode(&image.as_frame(), &mut jpeg).unwrap();
        // Staged beside, not inside, the folder: libcamera loads every file
        // it finds there.
        write_atomically(root, &dir.join(format!("{i}.jpg")), &jpeg);
    }
    dir
}

/// Another test process may be reading `path` through libcamera right now.
fn write_atomically(stage_dir: &Path, path: &Path, bytes: &[u8]) {
    let staged = stage_dir.join(format!(".{}.{}", path.file_name().unwrap().to_string_lossy(), std::process::id()));
    std::fs::write(&staged, bytes).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// Runs `camnode run ARGS` into a `camnode hub` and returns the hub's
/// records and the node's statistics.
fn run_into_hub(args: &[&str], config: Option<&str>) -> (Vec<serde_json::Value>, serde_json::Value) {
    virtual_cameras();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let jsonl = dir.path().join("hub.jsonl");
    let mut hub = Proc::spawn(
        "camnode hub",
        camnode().args(["hub", "--bind", &format!("tcp://127.0.0.1:{port}")]).arg("--jsonl").arg(&jsonl),
    );
    let stats = dir.path().join("stats.json");
    let mut command = camnode();
    command.args(["run", "--name", "pi"]).args(args).args(["--hub", &format!("tcp://127.0.0.1:{port}")]);
    command.arg("--stats-json").arg(&stats);
    // Start-up and capture say what they do, for a failure to show.
    command.env("RUST_LOG", "camnode=info");
    with_config(&mut command, dir.path(), config);
    let node = run_to_end("camnode run", &mut command, LIMIT);
    assert!(node.status.success(), "camnode run failed: {}", String::from_utf8_lossy(&node.stderr));
    // The node exits once the hub has acknowledged all it sent, and the hub
    // acknowledges only what it stored.
    assert!(hub.stop(LIMIT).success());
    (read_jsonl(&jsonl), read_json(&stats))
}

/// Adds `--config FILE` with `config` written into `dir`, if there is one.
fn with_config(command: &mut std::process::Command, dir: &Path, config: Option<&str>) {
    if let Some(config) = config {
        let path = dir.join("camnode.toml");
        std::fs::write(&path, config).unwrap();
        command.arg("--config").arg(path);
    }
}

fn images(records: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    records.iter().filter(|r| r["kind"] == "jpg").collect()
}

fn has_event(records: &[serde_json::Value], text: &str) -> bool {
    records.iter().any(|r| r["msg"] == text)
}

/// Runs `camnode ARGS` expecting failure; returns its stderr.
fn failure(args: &[&str], config: Option<&str>) -> String {
    virtual_cameras();
    let dir = tempfile::tempdir().unwrap();
    let mut command = camnode();
    command.args(args);
    with_config(&mut command, dir.path(), config);
    let output = run_to_end("camnode", &mut command, LIMIT);
    assert!(!output.status.success(), "camnode {args:?} should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn cameras_lists_ids_models_formats_and_sizes() {
    virtual_cameras();
    let output = run_to_end("camnode cameras", camnode().arg("cameras"), LIMIT);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("4 camera(s)"), "{text}");
    for (id, model) in [
        ("pattern", "camnode test pattern"),
        ("slow", "camnode slow camera"),
        ("walk", "camnode walking clip"),
        ("still", "camnode still clip"),
    ] {
        assert!(text.lines().any(|l| l == id), "camera {id} missing:\n{text}");
        assert!(text.contains(&format!("model: {model}")), "{text}");
    }
    assert!(text.contains("NV12 (camnode uses this)"), "{text}");
    assert!(text.contains("640x480") && text.contains("320x240"), "{text}");
    assert!(text.contains("FrameDurationLimits  (rate) 16666 to 1000000"), "{text}");
    assert!(text.contains("frame rates: 10.00 to 10.00 fps"), "{text}");
}

#[test]
fn cameras_json_lists_controls_with_ranges_for_scripts() {
    virtual_cameras();
    let output = run_to_end("camnode cameras --json", camnode().args(["cameras", "--json"]), LIMIT);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let all: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let slow = all["cameras"].as_array().unwrap().iter().find(|c| c["id"] == "slow").expect("no camera slow");
    assert_eq!(slow["default_size"], "320x240");
    assert_eq!(slow["frame_rates"], serde_json::json!([10.0, 10.0]));
    let rate = slow["controls"].as_array().unwrap().iter().find(|c| c["name"] == "FrameDurationLimits").unwrap();
    assert_eq!((&rate["key"], &rate["min"], &rate["max"]), (&"rate".into(), &100000.into(), &100000.into()));
    assert!(slow["controls"].as_array().unwrap().iter().any(|c| c["name"] == "FaceDetectMode" && c["key"].is_null()));
}

#[test]
fn every_frame_arrives_at_the_configured_size() {
    let (records, stats) = run_into_hub(
        &["--source", "libcamera:pattern", "--frames", "50", "--send", "all"],
        Some("[capture]\nsize = \"320x240\"\n"),
    );
    let images = images(&records);
    assert_eq!(images.len(), 50, "every frame is sent with --send all");
    assert!(images.iter().all(|r| r["width"] == 320 && r["height"] == 240), "an image is not 320x240");
    assert_eq!(stats["frames"], 50);
    // The virtual camera makes a frame only when given a buffer: none is lost.
    assert_eq!(stats["source_dropped"], 0);
}

#[test]
fn walking_clip_is_detected_and_sent() {
    let frames = (LEAD_IN + WALK) * FRAME_REPEAT;
    let (records, stats) =
        run_into_hub(&["--source", "libcamera:walk", "--frames", &frames.to_string()], Some(REPLAY_MOTION));
    assert_eq!(stats["frames"], frames);
    assert!(has_event(&records, "pi Cam|motion|moving"), "no motion event for the walking clip");
    let images = images(&records);
    assert!(images.len() >= WALK * FRAME_REPEAT / 2, "only {} images of the walk were sent", images.len());
    assert!(images.iter().all(|r| r["width"] == 320 && r["height"] == 240));
    // Nothing from the empty yard before the walker enters, but the few
    // pre-event frames.
    let first = images.iter().map(|r| r["seq"].as_u64().unwrap()).min().unwrap();
    assert!(first + 8 >= (LEAD_IN * FRAME_REPEAT) as u64, "image {first} was sent before the walker entered");
}

#[test]
fn still_clip_sends_nothing() {
    let frames = (LEAD_IN + WALK) * FRAME_REPEAT;
    let (records, stats) =
        run_into_hub(&["--source", "libcamera:still", "--frames", &frames.to_string()], Some(REPLAY_MOTION));
    assert_eq!(stats["frames"], frames);
    assert_eq!(images(&records).len(), 0, "a still scene sent images");
    assert!(!has_event(&records, "pi Cam|motion|moving"), "a still scene raised a motion event");
    assert_eq!(stats["encoded"], 0, "a still scene cost JPEG encoding");
}

#[test]
fn flip_reaches_the_hub() {
    // The synthetic background darkens towards the top; upside down, the top
    // is the bright side. The virtual camera has no sensor to flip, so this
    // also proves the fallback to the software flip.
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("hub");
    virtual_cameras();
    let port = free_port();
    let mut hub = Proc::spawn(
        "camnode hub",
        camnode().args(["hub", "--bind", &format!("tcp://127.0.0.1:{port}")]).arg("--save").arg(&save),
    );
    let node = run_to_end(
        "camnode run",
        camnode()
            .args([
                "run",
                "--source",
                "libcamera:still",
                "--frames",
                "5",
                "--send",
                "all",
                "--flip",
                "v",
                "--heartbeat",
                "0",
            ])
            .args(["--hub", &format!("tcp://127.0.0.1:{port}")]),
        LIMIT,
    );
    assert!(node.status.success(), "{}", String::from_utf8_lossy(&node.stderr));
    assert!(hub.stop(LIMIT).success());
    let day = std::fs::read_dir(&save).unwrap().flatten().find(|e| e.path().is_dir()).expect("no images saved").path();
    let image = std::fs::read_dir(day).unwrap().flatten().next().unwrap().path();
    let gray = turbojpeg::decompress(&std::fs::read(image).unwrap(), turbojpeg::PixelFormat::GRAY).unwrap();
    let mean = |rows: std::ops::Range<usize>| {
        let sum: u64 = rows
            .clone()
            .flat_map(|r| &gray.pixels[r * gray.pitch..r * gray.pitch + gray.width])
            .map(|&p| p as u64)
            .sum();
        sum as f64 / (rows.len() * gray.width) as f64
    };
    let (top, bottom) = (mean(0..40), mean(gray.height - 40..gray.height));
    assert!(top > bottom + 30.0, "image is not upside down: top {top:.0}, bottom {bottom:.0}");
}

#[test]
fn imagezmq_hub_receives_libcamera_frames() {
    virtual_cameras();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("summary.json");
    let mut hub = Proc::spawn(
        "imagezmq hub",
        std::process::Command::new(python())
            .arg(repo_root().join("tests/python/imagezmq_hub.py"))
            .args(["--mode", "req", "--port", "0", "--out"])
            .arg(&out)
            .stdout(Stdio::piped()),
    );
    let lines = line_channel(hub.stdout());
    let ready = expect_line(&lines, "READY", LIMIT);
    let endpoint = ready.split_whitespace().nth(1).unwrap().replace("0.0.0.0", "127.0.0.1");
    let node = run_to_end(
        "camnode run",
        camnode()
            .args(["run", "--source", "libcamera:pattern", "--frames", "30", "--send", "all", "--name", "pi"])
            .args(["--hub", &endpoint]),
        LIMIT,
    );
    assert!(node.status.success(), "{}", String::from_utf8_lossy(&node.stderr));
    // The node exits only once the hub acknowledged everything: stop the hub then, not after an idle guess.
    hub.stop(LIMIT);
    let summary = read_json(&out);
    let images: Vec<_> = summary["messages"].as_array().unwrap().iter().filter(|m| m["msg"] == "pi Cam|jpg").collect();
    assert_eq!(images.len(), 30);
    assert!(images.iter().all(|m| m["width"] == 640 && m["height"] == 480), "a JPEG did not decode to 640x480");
    assert_eq!(summary["errors"], 0);
}

#[test]
fn wrong_camera_size_and_rate_say_what_is_supported() {
    let err = failure(&["run", "--source", "libcamera:front", "--frames", "1"], None);
    assert!(err.contains("no camera with that id"), "{err}");
    assert!(["pattern", "walk", "still"].iter().all(|id| err.contains(id)), "the known cameras are not listed: {err}");
    let err = failure(&["run", "--source", "libcamera:walk", "--frames", "1"], Some("[capture]\nsize = \"640x480\"\n"));
    assert!(err.contains("cannot capture 640x480") && err.contains("one of: 320x240"), "{err}");
    let err = failure(&["run", "--source", "libcamera:pattern", "--frames", "1", "--rate", "120"], None);
    assert!(err.contains("cannot run at 120 fps") && err.contains("1.00 to 60.00 fps"), "{err}");
    let err = failure(&["run", "--source", "libcamera:slow", "--frames", "1", "--rate", "30"], None);
    assert!(err.contains("camera slow cannot run at 30 fps: it supports 10.00 to 10.00 fps"), "{err}");
}

/// Runs `camnode ARGS` to the end with camnode's info lines; returns stderr.
fn success(args: &[&str], config: Option<&str>) -> String {
    virtual_cameras();
    let dir = tempfile::tempdir().unwrap();
    let mut command = camnode();
    command.args(args).env("RUST_LOG", "camnode=info");
    with_config(&mut command, dir.path(), config);
    let output = run_to_end("camnode", &mut command, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "camnode {args:?} failed: {stderr}");
    stderr
}

#[test]
fn without_a_rate_a_camera_runs_at_its_highest_up_to_30_fps() {
    let port = free_port().to_string();
    let pub_args = ["--mode", "pub", "--hub"];
    let said = success(&[&["run", "--source", "libcamera:slow", "--frames", "5"][..], &pub_args, &[&format!("tcp://127.0.0.1:{port}")]].concat(), None);
    assert!(said.contains("camera slow runs at 10.00 fps, the most it can do at this size"), "{said}");
    assert!(said.contains("controls at start: FrameDurationLimits = [100000, 100000]"), "{said}");
    let said = success(&[&["run", "--source", "libcamera:pattern", "--frames", "5"][..], &pub_args, &[&format!("tcp://127.0.0.1:{port}")]].concat(), None);
    assert!(said.contains("camera pattern runs at 30.00 fps, its highest up to 30"), "{said}");
}

#[test]
fn a_control_the_camera_lacks_is_an_error_or_with_strict_controls_false_a_warning() {
    let err = failure(&["run", "--source", "libcamera:pattern", "--frames", "1", "--awb", "daylight"], Some("[capture]\nshutter = \"10ms\"\n"));
    assert!(err.contains("[capture] awb = \"daylight\": camera pattern has no AwbMode control"), "{err}");
    assert!(err.contains("[capture] shutter = 10000us: camera pattern has no ExposureTime control"), "{err}");
    assert!(err.contains("it has: FaceDetectMode, FrameDurationLimits"), "{err}");
    assert!(err.contains("strict_controls = false"), "{err}");
    let (records, stats) = run_into_hub(
        &["--source", "libcamera:pattern", "--frames", "10", "--send", "all", "--awb", "daylight", "--strict-controls", "false"],
        None,
    );
    assert_eq!(images(&records).len(), 10, "images stopped for a control left out");
    assert_eq!(stats["frames"], 10);
}

#[test]
fn reloaded_controls_reach_the_next_request_and_a_control_the_camera_lacks_refuses_the_reload() {
    virtual_cameras();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("camnode.toml");
    let port = free_port();
    let config = |extra: &str| {
        format!("[capture]\nsource = \"libcamera:pattern\"\nrate = 20\n{extra}[node]\nheartbeat = 0\n[transport]\nmode = \"pub\"\nhub = \"tcp://127.0.0.1:{port}\"\n")
    };
    std::fs::write(&file, config("")).unwrap();
    let mut node = Proc::spawn(
        "camnode run",
        camnode().arg("run").arg("--config").arg(&file).env("RUST_LOG", "camnode=info").stderr(Stdio::piped()),
    );
    let said = line_channel(std::io::BufReader::new(node.child.as_mut().unwrap().stderr.take().unwrap()));
    expect_line(&said, "controls at start: FrameDurationLimits = [50000, 50000]", LIMIT);
    expect_line(&said, "capturing 640x480", LIMIT);

    // What the request carried is read back from it once it completes:
    // libcamera checked it against the camera, the pipeline handler had it.
    std::fs::write(&file, config("").replace("rate = 20", "rate = 5")).unwrap();
    node.signal(libc::SIGHUP);
    expect_line(&said, "reloaded: [capture] rate", LIMIT);
    expect_line(&said, "came with the new controls: FrameDurationLimits = [200000, 200000]", LIMIT);

    std::fs::write(&file, config("awb = \"cloudy\"\n").replace("rate = 20", "rate = 10")).unwrap();
    node.signal(libc::SIGHUP);
    let refused = expect_line(&said, "reload refused", LIMIT);
    assert!(refused.contains("[capture] awb = \"cloudy\": camera pattern has no AwbMode control"), "{refused}");
    // Refused whole: the rate that came with it did not change either.
    std::fs::write(&file, config("").replace("rate = 20", "rate = 5")).unwrap();
    node.signal(libc::SIGHUP);
    expect_line(&said, "reload: nothing to change", LIMIT);
    node.signal(libc::SIGTERM);
    assert!(node.wait(LIMIT).success());
}

#[test]
fn doctor_names_a_missing_camera_and_passes_a_present_one() {
    virtual_cameras();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let doctor = |source: &str| {
        let path = dir.path().join("camnode.toml");
        // Nothing answers at the hub address: the camera lines are what count here.
        let config = format!("[capture]\nsource = \"{source}\"\n[transport]\nreply_timeout = 0.1\n[spool]\ndir = \"{}\"\n", spool.display());
        std::fs::write(&path, config).unwrap();
        let output = run_to_end("camnode doctor", camnode().arg("doctor").arg("--config").arg(&path), LIMIT);
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let text = doctor("libcamera:front");
    let camera = text.lines().position(|l| l.starts_with("[FAIL] camera ")).unwrap_or_else(|| panic!("{text}"));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[camera].contains("no camera with that id; cameras: pattern, slow, walk, still"), "{text}");
    assert!(lines[camera + 1].trim_start().starts_with("fix: "), "{text}");
    let text = doctor("libcamera:slow");
    for name in ["libcamera", "camera", "camera use", "capture"] {
        assert!(text.lines().any(|l| l.starts_with(&format!("[ ok ] {name} "))), "{name} did not pass:\n{text}");
    }
}
