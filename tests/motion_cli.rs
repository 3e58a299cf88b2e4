//! `camnode detect` end to end on the synthetic scene (a walker crosses every
//! 4 s): the JSON lines, the `--plot` SVG and the `--debug-dir` images.

mod support;

fn detect(args: &[&str]) -> std::process::Output {
    let output = support::camnode()
        .args(["detect", "--source", "synthetic:320x240", "--frames", "150"])
        .args(args)
        .output()
        .expect("camnode runs");
    assert!(output.status.success(), "camnode detect failed: {}", String::from_utf8_lossy(&output.stderr));
    output
}

#[test]
fn motion_detect_writes_reports_plot_and_debug_images() {
    let dir = tempfile::tempdir().unwrap();
    let (plot, debug) = (dir.path().join("score.svg"), dir.path().join("debug"));
    let output = detect(&[
        "--plot",
        plot.to_str().unwrap(),
        "--debug-dir",
        debug.to_str().unwrap(),
        "--debug-frames",
        "30,90",
        "--stats",
    ]);
    let lines: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 150);
    // The walker is in frames 60..120 of each 120-frame cycle.
    let moving: Vec<u64> = lines.iter().filter(|l| l["moving"] == true).map(|l| l["frame"].as_u64().unwrap()).collect();
    assert!(!moving.is_empty() && moving.iter().all(|f| (60..=121).contains(f)), "moving frames {moving:?}");
    let started: Vec<&serde_json::Value> = lines.iter().filter(|l| l["event"] == "started").collect();
    assert_eq!(started.len(), 1, "one event");
    assert!(started[0]["boxes"].as_array().is_some_and(|b| !b.is_empty()));
    let stats = String::from_utf8(output.stderr).unwrap();
    assert!(stats.contains("150 frames of 320x240, 1 events") && stats.contains("CPU time per frame"), "{stats}");

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("150 frames, 1 events"));
    for frame in ["000030", "000090"] {
        for kind in ["luma", "background", "difference", "blobs"] {
            let image = std::fs::read(debug.join(format!("{frame}-{kind}.pgm"))).unwrap();
            assert!(image.starts_with(b"P5\n"), "{frame}-{kind}.pgm is not a PGM");
        }
    }
    // Frame 90 has the walker: the blob image shows accepted (white) cells.
    let blobs = std::fs::read(debug.join("000090-blobs.pgm")).unwrap();
    assert!(blobs.iter().skip(15).any(|&p| p == 255));
    assert_eq!(std::fs::read_dir(&debug).unwrap().count(), 8);
}

#[test]
fn motion_debug_frames_need_a_debug_dir() {
    let output = support::camnode().args(["detect", "--debug-frames", "3"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--debug-dir"));
}
