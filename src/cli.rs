//! The command line: parse flags, lay them over the config file, validate,
//! and only then start anything. Each subcommand is a thin function here; the
//! work lives in the library.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender as ChannelSender};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::capture::controls::{AfMode, AfRange, Awb, AwbGains, Denoise, ExposureMode, Hdr, LensPosition, Metering, Roi, Shutter};
use crate::capture::{CaptureConfig, Rate, SourceSpec};
use crate::config::Config;
use crate::console::{Console, ConsoleConfig};
use crate::control::Control;
use crate::encode::{Format, SendPolicy};
use crate::settings::ConfigOrigin;
use crate::fleet::Fleet;
use crate::flip::Flip;
use crate::gpio::Gpio;
use crate::hub::{Hub, HubConfig, HubOptions};
use crate::mqtt::{Mqtt, MqttConfig};
use crate::pipeline::{detect_frames, Pipeline};
use crate::services::Services;
use crate::status::{NodeStatus, Phase};
use crate::transport::security;
use crate::transport::Mode;

#[derive(Parser, Debug)]
#[command(name = "camnode", version, about = "A lean imagezmq-compatible camera node: capture, detect motion, send JPEGs over ZeroMQ")]
pub struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Capture, detect motion and send images to a hub.
    Run(RunArgs),
    /// Receive images from nodes (REP bind, or SUB connect), save them as imagehub does.
    Hub(HubArgs),
    /// Run only the motion detector and write one JSON line per frame.
    Detect(DetectArgs),
    /// A hub and a node on the synthetic scene, on this machine: see camnode work.
    Demo(DemoArgs),
    /// Print the effective configuration (defaults, file, flags) as TOML.
    Config(RunArgs),
    /// Make a CURVE key pair for [security]: NAME.key (public) and NAME.key_secret (secret, mode 0600).
    Keygen(KeygenArgs),
    /// Check this node: camera, GPIO, keys, hub, spool, clock, service; each failure with its fix.
    Doctor(DoctorArgs),
    /// List the cameras libcamera can see, with their formats, sizes and controls.
    #[cfg(feature = "libcamera")]
    Cameras(CamerasArgs),
}

/// Node settings that can come from flags; each overrides its config key.
#[derive(Args, Clone, Debug, Default)]
pub struct NodeFlags {
    /// TOML config file (see deploy/camnode.toml).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Frame source: synthetic[:WxH], y4m:PATH, jpeg-dir:DIR, i420:WxH:PATH|-, libcamera[:ID].
    #[arg(long)]
    pub source: Option<SourceSpec>,
    /// Frames per second for file sources and cameras, or "max".
    #[arg(long)]
    pub rate: Option<Rate>,
    /// Stop after N frames.
    #[arg(long)]
    pub frames: Option<u64>,
    /// none, h, v or 180.
    #[arg(long)]
    pub flip: Option<Flip>,
    #[command(flatten)]
    pub controls: ControlFlags,
}

/// Camera controls, as rpicam-apps names its options; each overrides its
/// `[capture]` key (docs/tuning.md).
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Camera controls (libcamera sources; as rpicam-apps names them)")]
pub struct ControlFlags {
    /// Fixed exposure time: microseconds, or with a unit (20ms, 1.5s).
    #[arg(long)]
    pub shutter: Option<Shutter>,
    /// Fixed analogue gain (1.0: none).
    #[arg(long)]
    pub gain: Option<f32>,
    /// Exposure compensation in stops, -10 to 10.
    #[arg(long, allow_negative_numbers = true)]
    pub ev: Option<f32>,
    /// centre, spot, average (matrix) or custom.
    #[arg(long)]
    pub metering: Option<Metering>,
    /// normal, sport (short), long or custom.
    #[arg(long)]
    pub exposure: Option<ExposureMode>,
    /// auto, incandescent, tungsten, fluorescent, indoor, daylight, cloudy or custom.
    #[arg(long)]
    pub awb: Option<Awb>,
    /// Fixed red and blue gains, e.g. 1.5,1.2 (turns automatic white balance off).
    #[arg(long)]
    pub awbgains: Option<AwbGains>,
    /// auto, off, cdn_off, cdn_fast or cdn_hq.
    #[arg(long)]
    pub denoise: Option<Denoise>,
    /// Sharpening (1.0: normal).
    #[arg(long)]
    pub sharpness: Option<f32>,
    /// Contrast (1.0: normal).
    #[arg(long)]
    pub contrast: Option<f32>,
    /// Brightness, -1.0 to 1.0 (0: normal).
    #[arg(long, allow_negative_numbers = true)]
    pub brightness: Option<f32>,
    /// Colour saturation (1.0: normal, 0: greyscale).
    #[arg(long)]
    pub saturation: Option<f32>,
    /// off, auto, sensor (Camera Module 3) or single-exp (Pi 5).
    #[arg(long)]
    pub hdr: Option<Hdr>,
    /// manual, auto (one scan) or continuous.
    #[arg(long)]
    pub autofocus_mode: Option<AfMode>,
    /// normal, macro or full.
    #[arg(long)]
    pub autofocus_range: Option<AfRange>,
    /// Fixed focus in dioptres (0: infinity, 2: 50 cm), or "default".
    #[arg(long)]
    pub lens_position: Option<LensPosition>,
    /// Digital zoom as x,y,w,h in fractions of the sensor, e.g. 0.25,0.25,0.5,0.5.
    #[arg(long)]
    pub roi: Option<Roi>,
    /// false: leave out, with a warning, controls the camera lacks instead of stopping.
    #[arg(long, value_name = "true|false")]
    pub strict_controls: Option<bool>,
}

impl ControlFlags {
    /// Lays the flags given over `capture`, noting each in `origin`.
    fn apply(&self, capture: &mut CaptureConfig, origin: &mut ConfigOrigin) {
        macro_rules! overlay {
            ($($key:ident),*) => {$(
                if let Some(v) = &self.$key {
                    capture.$key = Some(v.clone());
                    origin.set_by_flag("capture", stringify!($key));
                }
            )*};
        }
        overlay!(
            shutter, gain, ev, metering, exposure, awb, awbgains, denoise, sharpness, contrast, brightness, saturation, hdr,
            autofocus_mode, autofocus_range, lens_position, roi
        );
        if let Some(strict) = self.strict_controls {
            capture.strict_controls = strict;
            origin.set_by_flag("capture", "strict_controls");
        }
    }
}

#[derive(Args, Clone, Debug, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub node: NodeFlags,
    /// Hub address: REQ connects to it, PUB binds it; several as A,B (REQ: failover in that order).
    #[arg(long, value_name = "ADDR[,ADDR...]")]
    pub hub: Option<String>,
    /// req (acknowledged, for events that must arrive) or pub (live view).
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Node name used in message texts.
    #[arg(long)]
    pub name: Option<String>,
    /// View name used in image texts.
    #[arg(long)]
    pub view: Option<String>,
    /// JPEG quality 1-100.
    #[arg(long)]
    pub quality: Option<u8>,
    /// Encoder threads (1: inline; 0: one per core, at most 4).
    #[arg(long)]
    pub workers: Option<usize>,
    /// motion, all or none.
    #[arg(long)]
    pub send: Option<SendPolicy>,
    /// jpg or raw (BGR arrays).
    #[arg(long)]
    pub format: Option<Format>,
    /// Seconds between heartbeats (0: none).
    #[arg(long)]
    pub heartbeat: Option<f64>,
    /// Spool directory: event frames wait here while the hub cannot take them (REQ).
    #[arg(long, value_name = "DIR", env = "CAMNODE_SPOOL")]
    pub spool: Option<PathBuf>,
    /// Seconds at the end of a finite run to keep delivering the queue and the spool.
    #[arg(long, value_name = "SECONDS")]
    pub drain_timeout: Option<f64>,
    /// Write run statistics as JSON here at exit.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
    /// Frames at the start left out of the steady numbers in --stats-json.
    #[arg(long, value_name = "FRAMES")]
    pub stats_warmup: Option<u64>,
}

/// `camnode hub`: every `[hub]` key has a flag of the same name (flags win
/// over `--config`), but the NATS credentials and TLS files, which belong in
/// the config file; `--count`, `--idle`, `--jsonl` and `--summary-json` are
/// for this run only.
#[derive(Args, Debug, Default)]
pub struct HubArgs {
    /// TOML file whose [hub] and [security] sections the hub uses (it ignores a node's sections).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address to bind for REQ nodes [default: tcp://*:5555].
    #[arg(long, conflicts_with = "connect")]
    pub bind: Option<String>,
    /// PUB node to subscribe to (repeatable, or A,B); implies --mode pub.
    #[arg(long, value_delimiter = ',')]
    pub connect: Vec<String>,
    /// req (bind for REQ nodes) or pub (connect SUB to PUB nodes).
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Save images and the event log under this directory, fsynced before OK.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// imagezmq worker programs (REP, e.g. an ImageHub) to hand each image to one of: A,B,...
    #[arg(long, value_delimiter = ',', value_name = "ADDR,...")]
    pub workers: Vec<String>,
    /// Seconds a worker may take before its image goes to another [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub worker_timeout: Option<f64>,
    /// Failed hand-overs before an image is given up [default: 5].
    #[arg(long)]
    pub worker_attempts: Option<u32>,
    /// Workers' public CURVE certificate (NAME.key), with [security].
    #[arg(long)]
    pub worker_cert: Option<PathBuf>,
    /// Bind PUB here and republish every message (imagezmq format).
    #[arg(long, value_name = "ADDR")]
    pub publish: Option<String>,
    /// Messages queued per subscriber before a slow one loses frames [default: 4].
    #[arg(long)]
    pub publish_hwm: Option<i32>,
    /// Bind PUSH here and hand every image to one PULL peer.
    #[arg(long, value_name = "ADDR")]
    pub push: Option<String>,
    /// Megabytes of images waiting in memory for workers or JetStream [default: 256].
    #[arg(long)]
    pub queue_mb: Option<u64>,
    /// Largest message accepted, megabytes [default: 64].
    #[arg(long)]
    pub max_message_mb: Option<u64>,
    /// NATS servers: store every image in JetStream, reply OK once it is acknowledged.
    #[arg(long, value_delimiter = ',', value_name = "URL,...")]
    pub nats: Vec<String>,
    /// NATS servers: feed images from JetStream to --workers.
    #[arg(long, value_delimiter = ',', value_name = "URL,...")]
    pub from_nats: Vec<String>,
    /// JetStream stream [default: CAMNODE].
    #[arg(long)]
    pub nats_stream: Option<String>,
    /// Replicas when the hub creates the stream [default: 1].
    #[arg(long)]
    pub nats_replicas: Option<usize>,
    /// Megabytes the stream may hold [default: 1024].
    #[arg(long)]
    pub nats_max_mb: Option<u64>,
    /// Durable consumer the dispatchers share [default: camnode-workers].
    #[arg(long)]
    pub nats_consumer: Option<String>,
    /// Seconds before JetStream redelivers an unacknowledged image [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub nats_ack_wait: Option<f64>,
    /// Stop after N messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds without a message (after handing every image to a worker).
    #[arg(long)]
    pub idle: Option<f64>,
    /// Write one JSON line per received message here ("-" for stdout).
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// CURVE: this hub's secret certificate, NAME.key_secret from `camnode keygen NAME`.
    #[arg(long)]
    pub secret_cert: Option<PathBuf>,
    /// CURVE with --connect: the public certificate (NODE.key) of the PUB node(s).
    #[arg(long)]
    pub server_cert: Option<PathBuf>,
    /// CURVE for what the hub binds: directory of the public certificates (*.key) of the peers allowed in.
    #[arg(long)]
    pub allowed_dir: Option<PathBuf>,
    /// Serve the console, /metrics and the JSON API on HOST:PORT (e.g. 127.0.0.1:8080).
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// File holding the console's token (mode 0600); needed to serve beyond 127.0.0.1.
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
    /// Publish events, availability and Home Assistant discovery to this MQTT broker.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    pub mqtt: Option<String>,
    /// File with USER:PASSWORD for the MQTT broker (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub mqtt_credentials_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CamerasArgs {
    /// Print JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// TOML config file to check with (default: /etc/camnode/camnode.toml if there is one).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// The configuration the service reads, which `camnode doctor` checks unless told otherwise.
const SERVICE_CONFIG: &str = "/etc/camnode/camnode.toml";

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where and under which name to write the pair, e.g. /etc/camnode/garage
    /// for /etc/camnode/garage.key and /etc/camnode/garage.key_secret.
    pub name: PathBuf,
}

#[derive(Args, Debug)]
pub struct DetectArgs {
    #[command(flatten)]
    pub node: NodeFlags,
    /// Write one JSON object per frame here (default: stdout).
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// Draw the score against the threshold over time, events shaded, as an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Write the detector's luma, background, difference and blob images (PGM) here.
    #[arg(long, value_name = "DIR")]
    pub debug_dir: Option<PathBuf>,
    /// Frames to write into --debug-dir, e.g. 10,20 (default: each frame where an event starts).
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', requires = "debug_dir")]
    pub debug_frames: Vec<u64>,
    /// Print the frame count, events and the detector's time per frame to stderr.
    #[arg(long)]
    pub stats: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Frames to capture (at 30 fps).
    #[arg(long, default_value_t = 300)]
    pub frames: u64,
    /// Where the hub saves what it receives.
    #[arg(long, default_value = "camnode-demo")]
    pub save: PathBuf,
    /// Port for the hub on 127.0.0.1.
    #[arg(long, default_value_t = 5555)]
    pub port: u16,
}

impl NodeFlags {
    /// Loads the config file (or defaults) and lays these flags over it.
    fn resolve(&self) -> Result<(Config, ConfigOrigin)> {
        let (mut config, mut origin) = match &self.config {
            Some(path) => Config::load(path)?,
            None => (Config::default(), ConfigOrigin::default()),
        };
        let mut set = |key: &str| origin.set_by_flag("capture", key);
        if let Some(v) = &self.source {
            config.capture.source = v.clone();
            set("source");
        }
        if let Some(v) = self.rate {
            config.capture.rate = Some(v);
            set("rate");
        }
        if let Some(v) = self.frames {
            config.capture.frames = v;
            set("frames");
        }
        if let Some(v) = self.flip {
            config.capture.flip = v;
            set("flip");
        }
        self.controls.apply(&mut config.capture, &mut origin);
        Ok((config, origin))
    }
}

impl HubArgs {
    /// The hub's `[hub]` and `[security]`: the --config file's sections, the flags over them, checked.
    pub fn resolve(&self) -> Result<HubSetup> {
        let (config, mut origin) = match &self.config {
            Some(path) => Config::load(path)?,
            None => (Config::default(), ConfigOrigin::default()),
        };
        let (mut hub, mut security, mut console, mut mqtt) = (config.hub, config.security, config.console, config.mqtt);
        macro_rules! flag {
            ($field:ident => $section:ident . $key:ident) => {
                if let Some(v) = &self.$field {
                    $section.$key = v.clone().into();
                    origin.set_by_flag(stringify!($section), stringify!($key));
                }
            };
            (list $field:ident) => {
                if !self.$field.is_empty() {
                    hub.$field = self.$field.clone();
                    origin.set_by_flag("hub", stringify!($field));
                }
            };
        }
        flag!(bind => hub.bind);
        flag!(mode => hub.mode);
        flag!(save => hub.save);
        flag!(worker_timeout => hub.worker_timeout);
        flag!(worker_attempts => hub.worker_attempts);
        flag!(worker_cert => hub.worker_cert);
        flag!(publish => hub.publish);
        flag!(publish_hwm => hub.publish_hwm);
        flag!(push => hub.push);
        flag!(queue_mb => hub.queue_mb);
        flag!(max_message_mb => hub.max_message_mb);
        flag!(nats_stream => hub.nats_stream);
        flag!(nats_replicas => hub.nats_replicas);
        flag!(nats_max_mb => hub.nats_max_mb);
        flag!(nats_consumer => hub.nats_consumer);
        flag!(nats_ack_wait => hub.nats_ack_wait);
        flag!(secret_cert => security.secret_cert);
        flag!(server_cert => security.server_cert);
        flag!(allowed_dir => security.allowed_dir);
        flag!(list connect);
        flag!(list workers);
        flag!(list nats);
        flag!(list from_nats);
        // These flags are named apart from their keys: --http-token-file sets [console] token_file.
        lay_flag(&mut origin, "http", &self.http, ("console", "http"), &mut console.http);
        lay_flag(&mut origin, "http-token-file", &self.http_token_file, ("console", "token_file"), &mut console.token_file);
        lay_flag(&mut origin, "mqtt", &self.mqtt, ("mqtt", "url"), &mut mqtt.url);
        lay_flag(&mut origin, "mqtt-credentials-file", &self.mqtt_credentials_file, ("mqtt", "credentials_file"), &mut mqtt.credentials_file);
        let config = Config { hub, security, console, mqtt, ..config };
        config.validate_hub(&origin)?;
        let hub = HubOptions {
            config: config.hub,
            security: config.security,
            count: self.count,
            idle: self.idle.map(Duration::from_secs_f64),
            records: self.jsonl.is_some(),
        };
        Ok(HubSetup { hub, console: config.console, mqtt: config.mqtt })
    }
}

/// Sets `[section] key` from a flag that was given.
fn lay_flag<T: Clone>(origin: &mut ConfigOrigin, flag: &str, value: &Option<T>, (section, key): (&str, &str), slot: &mut Option<T>) {
    if let Some(value) = value {
        *slot = Some(value.clone());
        origin.set_by_named_flag(section, key, flag);
    }
}

/// What `camnode hub` runs: the hub, and what shows the fleet.
pub struct HubSetup {
    pub hub: HubOptions,
    pub console: ConsoleConfig,
    pub mqtt: MqttConfig,
}

impl RunArgs {
    /// The validated configuration these arguments describe.
    pub fn resolve(&self) -> Result<Config> {
        let (mut config, mut origin) = self.node.resolve()?;
        macro_rules! flag {
            ($field:ident => $section:ident . $key:ident) => {
                if let Some(v) = &self.$field {
                    config.$section.$key = v.clone().into();
                    origin.set_by_flag(stringify!($section), stringify!($key));
                }
            };
        }
        flag!(hub => transport.hub);
        flag!(mode => transport.mode);
        flag!(name => node.name);
        flag!(view => node.view);
        flag!(quality => encode.quality);
        flag!(workers => encode.workers);
        flag!(stats_warmup => stats.warmup);
        flag!(send => encode.send);
        flag!(format => encode.format);
        flag!(heartbeat => node.heartbeat);
        flag!(spool => spool.dir);
        flag!(drain_timeout => transport.drain_timeout);
        config.validate(&origin)?;
        Ok(config)
    }
}

/// Sends `Control::Quit` on SIGINT or SIGTERM; a second signal exits at once.
/// With `reload`, SIGHUP reads the configuration those arguments name again
/// (the file, the flags over it) and sends it, checked, as `Control::Reload`;
/// one that does not check out is logged and dropped, and the node keeps the
/// configuration it runs with.
fn handle_signals(controls: ChannelSender<Control>, stop: Arc<AtomicBool>, reload: Option<RunArgs>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let wanted: &[i32] = if reload.is_some() { &[SIGINT, SIGTERM, SIGHUP] } else { &[SIGINT, SIGTERM] };
    let mut signals = signal_hook::iterator::Signals::new(wanted).context("cannot install signal handlers")?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            if let (SIGHUP, Some(args)) = (signal, &reload) {
                match args.resolve() {
                    Ok(config) => {
                        log::info!("SIGHUP: reloading the configuration");
                        let _ = controls.send(Control::Reload(Box::new(config)));
                    }
                    Err(e) => log::error!("SIGHUP: reload refused, the node keeps its configuration: {e:#}"),
                }
                continue;
            }
            if stop.swap(true, Ordering::SeqCst) {
                log::warn!("second signal {signal}: exiting now");
                std::process::exit(130);
            }
            log::info!("signal {signal}: stopping");
            let _ = controls.send(Control::Quit);
        }
    })?;
    Ok(())
}

pub fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run(&args),
        Command::Config(args) => {
            print!("{}", args.resolve()?.to_toml());
            Ok(())
        }
        Command::Hub(args) => hub(args),
        Command::Keygen(args) => {
            let (public, secret) = security::keygen(&args.name)?;
            println!("wrote {} (public: give it to the peers, for their server_cert or allowed_dir)", public.display());
            println!("wrote {} (secret, mode 0600: keep it here, for this side's secret_cert)", secret.display());
            Ok(())
        }
        Command::Detect(args) => detect(&args),
        Command::Doctor(args) => doctor(&args),
        Command::Demo(args) => demo(&args),
        #[cfg(feature = "libcamera")]
        Command::Cameras(args) => {
            print!("{}", crate::capture::libcamera::list_cameras(args.json)?);
            Ok(())
        }
    }
}

fn run(args: &RunArgs) -> Result<()> {
    let config = args.resolve()?;
    let (tx, rx) = channel();
    handle_signals(tx.clone(), Arc::new(AtomicBool::new(false)), Some(args.clone()))?;
    let status = Arc::new(NodeStatus::default());
    let gpio = Gpio::start(&config.gpio, status.clone(), tx.clone())?;
    let result = Pipeline::run(&config, rx, status.clone());
    if result.is_err() {
        status.set_phase(Phase::Failed);
    }
    // The LED's last word: off after a clean run, the fatal pattern first after an error.
    drop(gpio);
    let stats = result?;
    log::info!("{}", stats.summary());
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(&stats)?;
        std::fs::write(path, json + "\n").with_context(|| format!("cannot write --stats-json {}", path.display()))?;
    }
    drop(tx);
    Ok(())
}

fn hub(args: HubArgs) -> Result<()> {
    let HubSetup { hub: options, console, mqtt } = args.resolve()?;
    let save = options.config.save.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, _rx) = channel();
    handle_signals(tx, stop.clone(), None)?;
    let mut hub = Hub::start(options)?;
    // The fleet is kept only for someone to show it to.
    let _services = if console.http.is_some() || mqtt.url.is_some() {
        let fleet = Arc::new(Fleet::new(save));
        hub.observe(fleet.clone());
        let console = Console::bind(&console, fleet.clone(), hub.status())?;
        Some(Services::start(console, Mqtt::new(&mqtt, fleet)?)?)
    } else {
        None
    };
    let mut out: Option<Box<dyn Write>> = match &args.jsonl {
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
        Some(p) => Some(Box::new(std::fs::File::create(p).with_context(|| format!("cannot create --jsonl {}", p.display()))?)),
        None => None,
    };
    hub.run(&stop, |received| {
        if let Some(out) = &mut out {
            serde_json::to_writer(&mut *out, received)?;
            writeln!(out)?;
            out.flush()?;
        }
        Ok(())
    })?;
    let s = &hub.summary;
    eprintln!(
        "hub: {} messages ({} images, {} events, {} heartbeats), {} duplicates dropped, {} bad, {} KiB in {:.1}s",
        s.messages, s.images, s.events, s.heartbeats, s.duplicates, s.bad, s.bytes / 1024, s.wall_s
    );
    if !hub.status().snapshot().workers.is_empty() {
        eprintln!("hub: workers answered {} images, {} given up, {} never handed on", s.processed, s.abandoned, s.unprocessed);
    }
    if let Some(path) = &args.summary_json {
        std::fs::write(path, serde_json::to_string_pretty(s)? + "\n")?;
    }
    Ok(())
}

fn doctor(args: &DoctorArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let path = args.config.clone().or_else(|| Some(PathBuf::from(SERVICE_CONFIG)).filter(|p| p.exists()));
    let loaded = match &path {
        Some(path) => Config::load(path).and_then(|(config, origin)| config.validate(&origin).map(|()| config)),
        None => Ok(Config::default()),
    };
    let (config, problem) = match loaded {
        Ok(config) => (config, None),
        Err(e) => (Config::default(), Some(e)),
    };
    let checks = crate::doctor::run(&config, path.as_deref(), problem);
    crate::doctor::report(&checks, &mut std::io::stdout().lock(), started.elapsed())
}

fn detect(args: &DetectArgs) -> Result<()> {
    let (config, origin) = args.node.resolve()?;
    config.validate(&origin)?;
    let mut out: Box<dyn Write> = match &args.jsonl {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create --jsonl {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut trace = crate::motion::plot::Trace::default();
    let summary = detect_frames(&config, |index, detector| {
        let report = detector.report();
        let line = serde_json::json!({
            "frame": index,
            "moving": report.active,
            "score": report.score,
            "threshold": report.threshold,
            "state": report.state,
            "event": report.event,
            "light_jump": report.light_jump,
            "boxes": report.boxes,
        });
        writeln!(out, "{line}")?;
        if args.plot.is_some() {
            trace.push(report);
        }
        if let Some(dir) = &args.debug_dir {
            let chosen = if args.debug_frames.is_empty() {
                report.event == Some(crate::motion::MotionEvent::Started)
            } else {
                args.debug_frames.contains(&index)
            };
            if chosen {
                detector.write_debug_images(dir, &format!("{index:06}"))?;
            }
        }
        Ok(())
    })?;
    out.flush()?;
    if let Some(path) = &args.plot {
        let title = format!("camnode detect: {} ({} frames, {} events)", config.capture.source, summary.frames, summary.events);
        std::fs::write(path, trace.to_svg(&title)).with_context(|| format!("cannot write --plot {}", path.display()))?;
    }
    if args.stats {
        eprintln!(
            "detect: {} frames of {}x{}, {} events; detector CPU time per frame: median {:.1} us, mean {:.1} us, p99 {:.1} us",
            summary.frames, summary.width, summary.height, summary.events, summary.median_us, summary.mean_us, summary.p99_us
        );
    }
    Ok(())
}

fn demo(args: &DemoArgs) -> Result<()> {
    let hub_options = HubOptions {
        config: HubConfig { bind: format!("tcp://127.0.0.1:{}", args.port), save: Some(args.save.clone()), ..HubConfig::default() },
        idle: Some(Duration::from_secs(3)),
        ..HubOptions::default()
    };
    let mut hub = Hub::start(hub_options).context("the demo hub could not start: pass --port to use another")?;
    let stop = Arc::new(AtomicBool::new(false));
    let hub_stop = stop.clone();
    let hub_thread = std::thread::spawn(move || hub.run(&hub_stop, |_| Ok(())).map(|()| hub.summary.clone()));
    let node = RunArgs {
        node: NodeFlags { frames: Some(args.frames), ..Default::default() },
        hub: Some(format!("tcp://127.0.0.1:{}", args.port)),
        name: Some("demo".into()),
        ..Default::default()
    };
    println!("camnode demo: a node sends the synthetic scene (a walker crosses every 4 s) to a hub on 127.0.0.1:{}", args.port);
    let (tx, rx) = channel();
    handle_signals(tx.clone(), Arc::new(AtomicBool::new(false)), None)?;
    let stats = Pipeline::run(&node.resolve()?, rx, Arc::new(NodeStatus::default()))?;
    stop.store(true, Ordering::Relaxed);
    let summary = hub_thread.join().map_err(|_| anyhow::anyhow!("the demo hub panicked"))??;
    println!("node: {}", stats.summary());
    println!(
        "hub:  received {} images and {} event messages (motion starts and ends); images are in {}/<date>/, events in {}/imagehub.log",
        summary.images,
        summary.events,
        args.save.display(),
        args.save.display()
    );
    Ok(())
}
