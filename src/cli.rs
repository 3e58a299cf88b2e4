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

use crate::capture::SourceSpec;
use crate::config::{Config, ConfigOrigin, Format, Mode, Rate, SendPolicy};
use crate::flip::Flip;
use crate::hub::{Hub, HubConfig};
use crate::pipeline::{detect_frames, Control, Pipeline};
use crate::status::NodeStatus;

#[derive(Parser, Debug)]
#[command(name = "camnode", version, about = "A lean imagezmq-compatible camera node: capture, detect motion, send JPEGs over ZeroMQ")]
pub struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

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
    /// List the cameras libcamera can see.
    #[cfg(feature = "libcamera")]
    Cameras,
}

/// Node settings that can come from flags; each overrides its config key.
#[derive(Args, Debug, Default)]
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
}

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    #[command(flatten)]
    pub node: NodeFlags,
    /// Hub address: REQ connects to it, PUB binds it.
    #[arg(long)]
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
    /// motion, all or none.
    #[arg(long)]
    pub send: Option<SendPolicy>,
    /// jpg or raw (BGR arrays).
    #[arg(long)]
    pub format: Option<Format>,
    /// Seconds between heartbeats (0: none).
    #[arg(long)]
    pub heartbeat: Option<f64>,
    /// Write run statistics as JSON here at exit.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct HubArgs {
    /// REP address to bind, for REQ nodes.
    #[arg(long, default_value = "tcp://*:5555", conflicts_with = "connect")]
    pub bind: String,
    /// PUB node to subscribe to (repeatable); implies --mode pub.
    #[arg(long)]
    pub connect: Vec<String>,
    /// req (bind REP) or pub (connect SUB).
    #[arg(long)]
    pub mode: Option<Mode>,
    /// Save images and the event log under this directory.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Stop after N messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds without a message.
    #[arg(long)]
    pub idle: Option<f64>,
    /// Write one JSON line per received message here ("-" for stdout).
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DetectArgs {
    #[command(flatten)]
    pub node: NodeFlags,
    /// Write one JSON object per frame here (default: stdout).
    #[arg(long)]
    pub jsonl: Option<PathBuf>,
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
            config.capture.rate = v;
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
        Ok((config, origin))
    }
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
        flag!(send => encode.send);
        flag!(format => encode.format);
        flag!(heartbeat => node.heartbeat);
        config.validate(&origin)?;
        Ok(config)
    }
}

/// Sends `Control::Quit` on SIGINT or SIGTERM; a second signal exits at once.
fn quit_on_signals(controls: ChannelSender<Control>, stop: Arc<AtomicBool>) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
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
        Command::Detect(args) => detect(&args),
        Command::Demo(args) => demo(&args),
        #[cfg(feature = "libcamera")]
        Command::Cameras => {
            print!("{}", crate::capture::libcamera::list_cameras()?);
            Ok(())
        }
    }
}

fn run(args: &RunArgs) -> Result<()> {
    let config = args.resolve()?;
    let (tx, rx) = channel();
    quit_on_signals(tx.clone(), Arc::new(AtomicBool::new(false)))?;
    let stats = Pipeline::run(&config, rx, Arc::new(NodeStatus::default()))?;
    log::info!("{}", stats.summary());
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(&stats)?;
        std::fs::write(path, json + "\n").with_context(|| format!("cannot write --stats-json {}", path.display()))?;
    }
    drop(tx);
    Ok(())
}

fn hub(args: HubArgs) -> Result<()> {
    let mode = args.mode.unwrap_or(if args.connect.is_empty() { Mode::Req } else { Mode::Pub });
    let config = HubConfig {
        mode,
        bind: args.bind,
        connect: args.connect,
        save: args.save,
        count: args.count,
        idle: args.idle.map(Duration::from_secs_f64),
        ..HubConfig::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, _rx) = channel();
    quit_on_signals(tx, stop.clone())?;
    let mut hub = Hub::open(config)?;
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
    if let Some(path) = &args.summary_json {
        std::fs::write(path, serde_json::to_string_pretty(s)? + "\n")?;
    }
    Ok(())
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
    detect_frames(&config, |index, report| {
        let line = serde_json::json!({
            "frame": index,
            "moving": report.active,
            "score": report.score,
            "threshold": report.threshold,
            "state": report.state,
            "boxes": report.boxes,
        });
        writeln!(out, "{line}")?;
        Ok(())
    })?;
    out.flush()?;
    Ok(())
}

fn demo(args: &DemoArgs) -> Result<()> {
    let hub_config = HubConfig {
        bind: format!("tcp://127.0.0.1:{}", args.port),
        save: Some(args.save.clone()),
        idle: Some(Duration::from_secs(3)),
        ..HubConfig::default()
    };
    let mut hub = Hub::open(hub_config).context("the demo hub could not start: pass --port to use another")?;
    let stop = Arc::new(AtomicBool::new(false));
    let hub_stop = stop.clone();
    let hub_thread = std::thread::spawn(move || hub.run(&hub_stop, |_| Ok(())).map(|()| hub.summary));
    let node = RunArgs {
        node: NodeFlags { frames: Some(args.frames), ..Default::default() },
        hub: Some(format!("tcp://127.0.0.1:{}", args.port)),
        name: Some("demo".into()),
        ..Default::default()
    };
    println!("camnode demo: a node sends the synthetic scene (a walker crosses every 4 s) to a hub on 127.0.0.1:{}", args.port);
    let (tx, rx) = channel();
    quit_on_signals(tx.clone(), Arc::new(AtomicBool::new(false)))?;
    let stats = Pipeline::run(&node.resolve()?, rx, Arc::new(NodeStatus::default()))?;
    stop.store(true, Ordering::Relaxed);
    let summary = hub_thread.join().map_err(|_| anyhow::anyhow!("the demo hub panicked"))??;
    println!("node: {}", stats.summary());
    println!(
        "hub:  received {} images and {} motion events; images are in {}/<date>/, events in {}/imagehub.log",
        summary.images,
        summary.events,
        args.save.display(),
        args.save.display()
    );
    Ok(())
}
