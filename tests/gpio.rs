//! The status LED and the trigger input on the fake GPIO backend: LED
//! waveforms from the node's status, debounced presses, and both trigger
//! modes end to end — a press on the fake pin goes through the debouncer,
//! the pipeline's control channel, the encoder and the REQ sender to an
//! in-process hub. The last tests run the real binary on this machine, which
//! has no GPIO.

mod support;

use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use camnode::capture::SourceSpec;
use camnode::capture::Rate;
use camnode::config::Config;
use camnode::gpio::fake::{FakeGpio, Write};
use camnode::gpio::led::FATAL_SHOW;
use camnode::gpio::{ActiveLevel, Gpio, GpioConfig, Pull, TriggerMode};
use camnode::hub::{Hub, HubConfig, Received};
use camnode::control::Control;
use camnode::pipeline::Pipeline;
use camnode::stats::RunStats;
use camnode::status::{NodeStatus, Phase};
use support::{camnode, free_port, run_to_end};

const LED: u8 = 17;
const BUTTON: u8 = 27;
const LIMIT: Duration = Duration::from_secs(20);

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The lit/dark sequence of an LED's writes, repeats removed.
fn levels(writes: &[Write], active_low: bool) -> Vec<bool> {
    let mut lit: Vec<bool> = writes.iter().map(|w| w.high != active_low).collect();
    lit.dedup();
    lit
}

/// Walks the LED through every state and checks what the pin shows.
fn led_renders_each_state_and_goes_off_on_a_clean_exit(active_low: bool) {
    let fake = FakeGpio::new();
    let status = Arc::new(NodeStatus::default());
    let config = GpioConfig { led_pin: Some(LED), led_active_low: active_low, ..Default::default() };
    let (tx, _rx) = channel::<Control>();
    let gpio = Gpio::with_backend(&mut fake.clone(), &config, status.clone(), tx).unwrap();
    let lit = |w: &Write| w.high != active_low;

    // Starting: even blink, half a second each way. The pin starts dark.
    let writes = fake.wait_for_writes(LED, LIMIT, |w| w.len() >= 4);
    assert_eq!(levels(&writes, active_low)[..4], [false, true, false, true]);
    assert!(writes[2].at - writes[1].at >= ms(450), "a starting blink lasted {:?}", writes[2].at - writes[1].at);

    // Running with an event: steadily lit.
    status.set_phase(Phase::Running);
    status.set_hub_reachable(true);
    status.set_event_active(true);
    let lit_since = steady(&fake, ms(1200)).len();
    assert!(lit(&fake.writes(LED)[lit_since - 1]), "the LED is not on during an event");

    // Running, nothing going on: the flash ends, and the next comes 3 s later.
    status.set_event_active(false);
    let writes = fake.wait_for_writes(LED, LIMIT, |w| w.len() >= lit_since + 2);
    let (dark, flash) = (writes[lit_since], writes[lit_since + 1]);
    assert!(!lit(&dark) && lit(&flash), "{writes:?}");
    assert!(flash.at - dark.at >= ms(2800), "the running LED was dark for only {:?}", flash.at - dark.at);

    // Hub unreachable: the double flash, four changes within a second.
    status.set_hub_reachable(false);
    let start = fake.writes(LED).len();
    let writes = fake.wait_for_writes(LED, LIMIT, |w| w.len() >= start + 5);
    let span = writes[start + 4].at - writes[start].at;
    assert!(span < ms(1500), "a double flash took {span:?}");

    status.set_phase(Phase::Stopped);
    drop(gpio);
    assert!(!lit(fake.writes(LED).last().unwrap()), "the LED is not off after a clean exit");
    assert!(!fake.is_claimed(LED));
}

/// Waits until the LED has not changed for `quiet` (it switches patterns
/// within a tenth of a second); returns its writes.
fn steady(fake: &FakeGpio, quiet: Duration) -> Vec<Write> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let seen = fake.writes(LED).len();
        let writes = fake.wait_for_writes(LED, quiet, |w| w.len() > seen);
        if writes.len() == seen {
            return writes;
        }
        assert!(Instant::now() < deadline, "the LED never settled: {writes:?}");
    }
}

#[test]
fn led_active_high_renders_each_state() {
    led_renders_each_state_and_goes_off_on_a_clean_exit(false);
}

#[test]
fn led_active_low_renders_each_state() {
    led_renders_each_state_and_goes_off_on_a_clean_exit(true);
}

#[test]
fn led_shows_the_fatal_pattern_before_exit() {
    let fake = FakeGpio::new();
    let status = Arc::new(NodeStatus::default());
    let config = GpioConfig { led_pin: Some(LED), ..Default::default() };
    let (tx, _rx) = channel::<Control>();
    let gpio = Gpio::with_backend(&mut fake.clone(), &config, status.clone(), tx).unwrap();
    status.set_phase(Phase::Failed);
    let failed_at = Instant::now();
    let before = fake.writes(LED).len();
    drop(gpio);
    assert!(failed_at.elapsed() >= FATAL_SHOW, "exit came {:?} after the error", failed_at.elapsed());
    let writes = &fake.writes(LED)[before..];
    // 10 flashes a second for three seconds; a loaded machine may merge a few.
    let flashes = writes.iter().filter(|w| w.high).count();
    assert!(flashes >= 20, "only {flashes} fatal flashes: {writes:?}");
    assert!(!writes.last().unwrap().high, "the LED is not off after the fatal pattern");
}

#[test]
fn debounced_presses_become_trigger_messages() {
    let fake = FakeGpio::new();
    let config = GpioConfig { trigger_pin: Some(BUTTON), trigger_pull: Pull::Up, trigger_active: ActiveLevel::Low, ..Default::default() };
    let (tx, rx) = channel();
    let gpio = Gpio::with_backend(&mut fake.clone(), &config, Arc::new(NodeStatus::default()), tx).unwrap();
    let presses = |rx: &Receiver<Control>| std::iter::from_fn(|| rx.try_recv().ok()).count();

    // A button to ground with the pull-up: press (with bounce), release (with bounce).
    for (high, at) in [(false, 1000), (true, 1001), (false, 1002), (true, 1300), (false, 1301), (true, 1302)] {
        fake.edge(BUTTON, high, ms(at));
    }
    assert_eq!(presses(&rx), 1);
    // A second press well after: counted. One too soon after its release: bounce.
    fake.edge(BUTTON, false, ms(2000));
    fake.edge(BUTTON, true, ms(2100));
    fake.edge(BUTTON, false, ms(2120));
    assert_eq!(presses(&rx), 1);

    drop(gpio);
    assert!(!fake.is_claimed(BUTTON));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected), "the trigger outlived its Gpio");
}

#[test]
fn a_pin_in_use_is_refused_naming_the_setting() {
    let mut fake = FakeGpio::new();
    let config = GpioConfig { led_pin: Some(LED), ..Default::default() };
    let (tx, _rx) = channel::<Control>();
    let _first = Gpio::with_backend(&mut fake, &config, Arc::new(NodeStatus::default()), tx.clone()).unwrap();
    let err = Gpio::with_backend(&mut fake, &config, Arc::new(NodeStatus::default()), tx).err().unwrap();
    let err = format!("{err:#}");
    assert!(err.contains("[gpio] led_pin = 17") && err.contains("already in use"), "{err}");
}

/// A node on the synthetic scene sending to an in-process hub, with its
/// trigger on the fake GPIO.
struct Node {
    hub: Hub,
    /// The node's own spool: with the default one every test's node (all
    /// named "yard") would replay the events another left unacknowledged.
    _spool: tempfile::TempDir,
    fake: FakeGpio,
    status: Arc<NodeStatus>,
    controls: Sender<Control>,
    gpio: Gpio,
    pipeline: JoinHandle<anyhow::Result<RunStats>>,
    received: Vec<Received>,
}

impl Node {
    /// Starts the node; `before_start` presses the button before the first frame.
    fn start(mut config: Config, before_start: u32) -> Node {
        let address = format!("tcp://127.0.0.1:{}", free_port());
        let hub = Hub::open(HubConfig { bind: address.clone(), ..HubConfig::default() }).unwrap();
        config.node.name = "yard".into();
        config.node.view = "Gate".into();
        config.node.heartbeat = 0.0;
        config.capture.source = SourceSpec::Synthetic { width: 320, height: 240 };
        config.transport.hub = Some(address);
        let spool = tempfile::tempdir().unwrap();
        config.spool.dir = spool.path().to_path_buf();
        config.gpio.trigger_pin = Some(BUTTON);
        let fake = FakeGpio::new();
        let status = Arc::new(NodeStatus::default());
        let (controls, rx) = channel();
        let gpio = Gpio::with_backend(&mut fake.clone(), &config.gpio, status.clone(), controls.clone()).unwrap();
        for press in 0..before_start {
            press_button(&fake, press);
        }
        let node_status = status.clone();
        let pipeline = std::thread::spawn(move || Pipeline::run(&config, rx, node_status));
        Node { hub, _spool: spool, fake, status, controls, gpio, pipeline, received: Vec::new() }
    }

    /// Receives until `done` holds for what arrived so far.
    fn receive_until(&mut self, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + LIMIT;
        while !done(&self.received) {
            assert!(Instant::now() < deadline, "waited {LIMIT:?} for {what}; received {:?}", self.texts());
            assert!(!self.pipeline.is_finished(), "the node stopped before {what}; received {:?}", self.texts());
            if let Some(message) = self.hub.receive(ms(100)).unwrap() {
                self.received.push(message);
            }
        }
    }

    /// Runs the hub until the node has stopped (REQ: by then every message it sent was received).
    fn finish(mut self) -> (Vec<Received>, RunStats, Arc<NodeStatus>) {
        while !self.pipeline.is_finished() {
            if let Some(message) = self.hub.receive(ms(50)).unwrap() {
                self.received.push(message);
            }
        }
        let stats = self.pipeline.join().unwrap().unwrap();
        drop(self.gpio);
        (self.received, stats, self.status)
    }

    fn texts(&self) -> Vec<&str> {
        self.received.iter().map(|r| r.msg.as_str()).collect()
    }
}

/// A bouncing press and release of the button, the `n`th since the start.
fn press_button(fake: &FakeGpio, n: u32) {
    let t = 1000 + 1000 * u64::from(n);
    for (high, at) in [(false, t), (true, t + 1), (false, t + 2), (true, t + 300)] {
        fake.edge(BUTTON, high, ms(at));
    }
}

fn count(received: &[Received], msg: &str) -> usize {
    received.iter().filter(|r| r.msg == msg).count()
}

/// A scene in which nothing ever counts as motion, at a gentle frame rate.
fn still_scene() -> Config {
    let mut config = Config::default();
    config.motion.min_area_percent = 100.0;
    config.capture.rate = Some(Rate::Fps(50.0));
    config
}

#[test]
fn capture_mode_press_sends_an_event_and_a_burst_to_the_hub() {
    let mut config = still_scene();
    config.gpio.trigger_mode = TriggerMode::Capture;
    config.gpio.trigger_frames = 5;
    let mut node = Node::start(config, 0);
    node.receive_until("the restart notice", |r| r.iter().any(|m| m.msg.starts_with("yard|Restart|")));

    press_button(&node.fake, 0);
    node.receive_until("the burst", |r| r.iter().filter(|m| m.kind == "jpg").count() == 5);
    let texts = node.texts();
    let pressed = texts.iter().position(|&t| t == "yard Gate|trigger|pressed").expect("no pressed event");
    let first_image = texts.iter().position(|&t| t == "yard Gate|jpg").unwrap();
    assert!(pressed < first_image, "{texts:?}");
    let seqs: Vec<u64> = node.received.iter().filter(|m| m.kind == "jpg").map(|m| m.seq.unwrap()).collect();
    assert!(seqs.windows(2).all(|p| p[1] == p[0] + 1), "the burst is not consecutive frames: {seqs:?}");
    // The fifth frame ended the burst before it was sent.
    assert!(!node.status.snapshot().event_active);

    node.controls.send(Control::Quit).unwrap();
    let (received, stats, _) = node.finish();
    assert_eq!(stats.encoded, 5, "frames beyond the burst were encoded");
    assert_eq!(received.iter().filter(|m| m.kind == "jpg").count(), 5);
    assert_eq!(count(&received, "yard Gate|trigger|pressed"), 1);
    assert_eq!(received.iter().filter(|m| m.msg.contains("|motion|")).count(), 0);
}

#[test]
fn capture_mode_burst_shows_as_an_event_while_it_lasts() {
    let mut config = still_scene();
    config.gpio.trigger_frames = 100_000;
    let mut node = Node::start(config, 0);
    node.receive_until("the restart notice", |r| r.iter().any(|m| m.msg.starts_with("yard|Restart|")));
    assert!(!node.status.snapshot().event_active);
    press_button(&node.fake, 0);
    node.receive_until("burst frames", |r| r.iter().filter(|m| m.kind == "jpg").count() >= 3);
    assert!(node.status.snapshot().event_active, "a trigger burst in progress is not an event");
    node.controls.send(Control::Quit).unwrap();
    node.finish();
}

/// The synthetic scene's walker crosses frames 60-119: a motion event.
fn arm_mode_run(presses: u32) -> Vec<Received> {
    let mut config = Config::default();
    config.capture.rate = Some(Rate::Max);
    config.capture.frames = 150;
    config.gpio.trigger_mode = TriggerMode::Arm;
    let (received, stats, _) = Node::start(config, presses).finish();
    assert_eq!(stats.frames, 150);
    received
}

#[test]
fn arm_mode_presses_switch_motion_sending_off_and_on() {
    // Armed from the start: the crossing is sent as usual.
    let armed = arm_mode_run(0);
    assert_eq!(count(&armed, "yard Gate|motion|moving"), 1);
    assert!(armed.iter().filter(|m| m.kind == "jpg").count() >= 20);

    // One press: disarmed before the first frame; nothing about the scene leaves the node.
    let disarmed = arm_mode_run(1);
    let texts: Vec<&str> = disarmed.iter().map(|m| m.msg.as_str()).collect();
    assert_eq!(count(&disarmed, "yard Gate|trigger|disarmed"), 1, "{texts:?}");
    assert!(texts.iter().all(|t| t.starts_with("yard|Restart|") || *t == "yard Gate|trigger|disarmed"), "{texts:?}");

    // Two presses: disarmed, armed again, and the crossing is sent.
    let rearmed = arm_mode_run(2);
    let events: Vec<&str> = rearmed.iter().filter(|m| m.kind == "event").map(|m| m.msg.as_str()).collect();
    assert_eq!(events, ["yard Gate|trigger|disarmed", "yard Gate|trigger|armed", "yard Gate|motion|moving", "yard Gate|motion|still"]);
    assert!(rearmed.iter().filter(|m| m.kind == "jpg").count() >= 20);
}

fn write_config(dir: &std::path::Path, gpio: &str) -> std::path::PathBuf {
    let path = dir.join("camnode.toml");
    let port = free_port();
    let text = format!(
        "[capture]\nsource = \"synthetic:160x120\"\nrate = \"max\"\nframes = 5\n\
         [transport]\nmode = \"pub\"\nhub = \"tcp://127.0.0.1:{port}\"\nlinger = 0\n[gpio]\n{gpio}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn gpio_configured_without_gpio_fails_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "led_pin = 17\ntrigger_pin = 27\n");
    let out = run_to_end("camnode run", camnode().arg("run").arg("--config").arg(&config), LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot use GPIO for [gpio] led_pin = 17, trigger_pin = 27: "), "{stderr}");
    assert!(stderr.contains("remove the pins from [gpio] or set [gpio] required = false"), "{stderr}");
}

#[test]
fn gpio_not_required_warns_once_and_runs_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "led_pin = 17\nrequired = false\n");
    let out = run_to_end("camnode run", camnode().args(["run", "--stats-json"]).arg(dir.path().join("stats.json")).arg("--config").arg(&config), LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("running without GPIO").count(), 1, "{stderr}");
    assert!(stderr.contains("cannot use GPIO for [gpio] led_pin = 17: "), "{stderr}");
    assert_eq!(support::read_json(&dir.path().join("stats.json"))["frames"], 5);
}
