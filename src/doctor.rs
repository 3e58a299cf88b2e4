//! `camnode doctor`: checks a node where it runs and prints a checklist,
//! each failed line with what to do about it.
//!
//! It looks at what a node needs, in the order a node needs it: its
//! configuration; the camera (libcamera's version against the build, the
//! camera there, free, and delivering a frame with the configured size, rate
//! and controls); GPIO access; CURVE key files and their modes; the hub (a
//! heartbeat answered `OK` for REQ, the address binding for PUB); the spool
//! directory; the clock; and the service under systemd. Each check is what
//! `camnode run` itself would do, with a time limit, so that the whole list
//! takes seconds: the longest wait is the hub's `reply_timeout`.
//!
//! While the service runs, it holds the camera and (in PUB mode) the port:
//! those checks then say so and pass, since the running node is using them.
//! Exit status 0 when no check failed.

use std::fmt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::capture::SourceSpec;
use crate::config::Config;
use crate::encode::placeholder_jpeg;
use crate::frame::unix_now;
use crate::settings::check_private;
use crate::transport::security::{Curve, Role};
use crate::transport::wire::{OutHeader, HEADER_ROOM};
use crate::transport::{probe, Message, MessageKind, Mode};

/// The longest the hub check waits for the hub's reply, in seconds.
const HUB_WAIT_S: f64 = 10.0;

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Nothing to check here (no GPIO pins set, not under systemd...).
    Skip,
}

/// One line of the checklist.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    /// What to do, for a failed check.
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Check {
        Check { name, outcome: Outcome::Pass, detail: detail.into(), fix: None }
    }

    fn skip(name: &'static str, detail: impl Into<String>) -> Check {
        Check { name, outcome: Outcome::Skip, detail: detail.into(), fix: None }
    }

    fn fail(name: &'static str, detail: impl fmt::Display, fix: impl Into<String>) -> Check {
        Check { name, outcome: Outcome::Fail, detail: detail.to_string(), fix: Some(fix.into()) }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let mark = match self.outcome {
            Outcome::Pass => "[ ok ]",
            Outcome::Fail => "[FAIL]",
            Outcome::Skip => "[ -- ]",
        };
        // Errors with context chains come as several lines; keep them aligned.
        let detail = self.detail.replace('\n', "\n                   ");
        write!(f, "{mark} {:<10} {detail}", self.name)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n                   fix: {fix}")?;
        }
        Ok(())
    }
}

/// The service's state, as far as the other checks care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    Running,
    NotRunning,
}

/// Runs every check on `config` (loaded from `path`, or `problem` when it
/// could not be: the checks that need it are then left out).
pub fn run(config: &Config, path: Option<&Path>, problem: Option<anyhow::Error>) -> Vec<Check> {
    let mut checks = Vec::new();
    let (service_check, service) = service();
    let shown = path.map_or_else(|| "no --config: the defaults".to_string(), |p| p.display().to_string());
    if let Some(e) = problem {
        checks.push(Check::fail("config", format!("{shown}: {e:#}"), "correct the file; `camnode config --config FILE` prints what it means"));
        checks.extend([clock(), service_check]);
        return checks;
    }
    checks.push(Check::pass("config", format!("{shown}: valid")));
    camera(config, service, &mut checks);
    checks.push(gpio(config));
    let keys = keys(config);
    let keys_usable = keys.outcome != Outcome::Fail;
    checks.push(keys);
    checks.push(if keys_usable { hub(config, service) } else { Check::skip("hub", "not tried: the CURVE keys above are unusable") });
    checks.push(spool(config));
    checks.push(clock());
    checks.push(service_check);
    checks
}

/// Prints the checklist and how long it took; an error says how many
/// checks failed.
pub fn report(checks: &[Check], out: &mut impl std::io::Write, took: Duration) -> Result<()> {
    for check in checks {
        writeln!(out, "{check}")?;
    }
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    let ran = checks.iter().filter(|c| c.outcome != Outcome::Skip).count();
    writeln!(out, "{ran} checks in {:.1} s", took.as_secs_f64())?;
    out.flush()?;
    anyhow::ensure!(failed == 0, "{failed} of {ran} checks failed");
    Ok(())
}

fn camera(config: &Config, service: Service, checks: &mut Vec<Check>) {
    let SourceSpec::Libcamera { camera } = &config.capture.source else {
        checks.push(Check::skip("camera", format!("[capture] source = \"{}\" is not a camera", config.capture.source)));
        return;
    };
    camera_checks(config, camera.as_deref(), service, checks);
}

#[cfg(not(feature = "libcamera"))]
fn camera_checks(_config: &Config, _camera: Option<&str>, _service: Service, checks: &mut Vec<Check>) {
    checks.push(Check::fail(
        "libcamera",
        "this camnode was built without the `libcamera` feature",
        "install camnode's Raspberry Pi package, or rebuild with `cargo build --release --features libcamera`",
    ));
}

#[cfg(feature = "libcamera")]
fn camera_checks(config: &Config, camera: Option<&str>, service: Service, checks: &mut Vec<Check>) {
    use crate::capture::libcamera as lc;
    use crate::capture::FrameSource;
    use std::time::Instant;

    match lc::runtime_version() {
        Ok(version) => checks.push(Check::pass("libcamera", version)),
        Err(e) => {
            return checks.push(Check::fail("libcamera", format!("{e:#}"), "install the libcamera camnode was built against, or a camnode built for this one"));
        }
    }
    let (found, acquired) = lc::find_and_acquire(camera);
    let what = match found {
        Ok(what) => what,
        Err(e) => {
            let fix = "connect and enable the camera (`rpicam-hello --list-cameras`), or set [capture] source to one `camnode cameras` lists";
            return checks.push(Check::fail("camera", format!("{e:#}"), fix));
        }
    };
    checks.push(Check::pass("camera", what));
    match (acquired, service) {
        (Some(Ok(())), _) => checks.push(Check::pass("camera use", "free")),
        (Some(Err(_)), Service::Running) => {
            return checks.push(Check::pass("camera use", "in use by the running camnode service (size, rate and controls not tried)"));
        }
        (Some(Err(e)), Service::NotRunning) => {
            return checks.push(Check::fail("camera use", format!("{e:#}"), "stop the other program (`fuser -v /dev/media* /dev/video*` names it)"));
        }
        (None, _) => return,
    }
    let started = Instant::now();
    let opened = lc::LibcameraSource::open(camera, &config.capture).and_then(|mut source| {
        let (width, height) = source.size();
        source.next_frame()?.ok_or_else(|| anyhow::anyhow!("the camera delivered no frame"))?;
        Ok((width, height, source.left_out().to_vec()))
    });
    checks.push(match opened {
        Ok((w, h, left_out)) => {
            let mut detail = format!("{w}x{h} with the configured rate and controls, first frame in {:.1} s", started.elapsed().as_secs_f64());
            for problem in left_out {
                detail += &format!("\n{problem}");
            }
            Check::pass("capture", detail)
        }
        Err(e) => Check::fail("capture", format!("{e:#}"), "change the [capture] setting named above (`camnode cameras` shows what the camera offers)"),
    });
}

fn gpio(config: &Config) -> Check {
    if !config.gpio.is_configured() {
        return Check::skip("gpio", "no pins in [gpio]");
    }
    let pins = config.gpio.describe_pins();
    if !cfg!(feature = "gpio") {
        return Check::fail("gpio", format!("[gpio] {pins} set, but this camnode was built without the `gpio` feature"), "install camnode's Raspberry Pi package, or rebuild with `--features gpio`");
    }
    let chips: Vec<_> = std::fs::read_dir("/dev")
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().starts_with("/dev/gpiochip")).collect())
        .unwrap_or_default();
    if chips.is_empty() {
        return Check::fail("gpio", format!("[gpio] {pins} set, but there is no /dev/gpiochip*"), "on a Raspberry Pi, update the kernel; elsewhere remove the pins or set [gpio] required = false");
    }
    let blocked: Vec<String> = chips.iter().filter(|c| !may_read_write(c)).map(|c| c.display().to_string()).collect();
    if !blocked.is_empty() {
        return Check::fail(
            "gpio",
            format!("this user may not open {}", blocked.join(", ")),
            "add the user to the group gpio (`sudo usermod -aG gpio USER`, then log in again); the service's user camnode is in it",
        );
    }
    Check::pass("gpio", format!("{pins}; {} readable and writable", chips.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")))
}

fn may_read_write(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: access(2) with a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

fn keys(config: &Config) -> Check {
    if !config.security.enabled() {
        return Check::skip("curve", "no [security]: plaintext, as imagezmq");
    }
    if let Some(secret) = &config.security.secret_cert {
        if let Err(e) = check_private("[security] secret_cert", secret) {
            let fix = format!("`chmod 600 {0}`, owned by the user camnode runs as (`sudo chown camnode {0}` for the service)", secret.display());
            return Check::fail("curve", format!("{e:#}"), fix);
        }
    }
    let context = zmq::Context::new();
    match Curve::open(&config.security, Role::of_node(config.transport.mode), &context) {
        Ok(_) => Check::pass("curve", "key files readable, the secret one private"),
        Err(e) => Check::fail(
            "curve",
            format!("{e:#}"),
            "`camnode keygen NAME` makes a key pair: NAME.key_secret here, NAME.key to the peer (docs/security.md)",
        ),
    }
}

fn hub(config: &Config, service: Service) -> Check {
    let address = config.transport.addresses().join(", ");
    let heartbeat = match heartbeat(config) {
        Ok(message) => message,
        Err(e) => return Check::fail("hub", format!("{e:#}"), "reinstall camnode"),
    };
    // However long the node waits, the checklist does not wait past this.
    let transport = crate::transport::TransportConfig { reply_timeout: config.transport.reply_timeout.min(HUB_WAIT_S), ..config.transport.clone() };
    match (probe(&transport, &config.security, &heartbeat), config.transport.mode, service) {
        (Ok(took), Mode::Req, _) => Check::pass("hub", format!("{address} answered a heartbeat OK in {} ms", took.as_millis())),
        (Ok(_), Mode::Pub, _) => Check::pass("hub", format!("PUB binds {address}")),
        (Err(_), Mode::Pub, Service::Running) => Check::pass("hub", format!("PUB {address} is bound by the running camnode service")),
        (Err(e), Mode::Pub, Service::NotRunning) => {
            Check::fail("hub", format!("{e:#}"), "another program uses the port (`ss -ltnp` names it): stop it, or set another [transport] hub")
        }
        (Err(e), Mode::Req, _) => {
            let curve = if config.security.enabled() { "; with [security], that the hub uses CURVE with this node's NAME.key in its allowed_dir" } else { "" };
            Check::fail(
                "hub",
                format!("{e:#}"),
                format!("check that the hub runs (`camnode hub`, imagehub) at {address}, that this machine reaches it (firewall, port), and [transport] hub{curve}"),
            )
        }
    }
}

/// The heartbeat `camnode run` sends, from this node.
fn heartbeat(config: &Config) -> Result<Message> {
    let text = format!("{}|Heartbeat", config.node.name);
    let header = OutHeader {
        msg: &text,
        dtype: None,
        shape: None,
        node: &config.node.name,
        boot: (unix_now() * 1e6) as u64,
        seq: 0,
        ts: unix_now(),
        score: None,
        boxes: &[],
    };
    Ok(Message::new(MessageKind::Notice, &header, Vec::with_capacity(HEADER_ROOM), placeholder_jpeg()?))
}

fn spool(config: &Config) -> Check {
    let spool = &config.spool;
    if config.transport.mode == Mode::Pub || spool.max_mb == 0 {
        return Check::skip("spool", "off (PUB mode, or [spool] max_mb = 0)");
    }
    let dir = &spool.dir;
    let fix_dir = format!(
        "create it for the service's user (`sudo install -d -o camnode -g camnode {}`), or set [spool] dir; run doctor as that user (`sudo -u camnode camnode doctor`) to check its rights",
        dir.display()
    );
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Check::fail("spool", format!("cannot create {}: {e}", dir.display()), fix_dir);
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    if let Err(e) = std::fs::write(&probe, b"camnode doctor").and_then(|()| std::fs::remove_file(&probe)) {
        return Check::fail("spool", format!("cannot write in {}: {e}", dir.display()), fix_dir);
    }
    let free_mb = free_bytes(dir).map(|b| b / (1024 * 1024));
    match free_mb {
        Some(free) if free < spool.max_mb => Check::fail(
            "spool",
            format!("{}: {free} MiB free, [spool] max_mb = {} wants more", dir.display(), spool.max_mb),
            "free some disk space, or lower [spool] max_mb",
        ),
        Some(free) => Check::pass("spool", format!("{} writable, {free} MiB free for up to {} MiB", dir.display(), spool.max_mb)),
        None => Check::pass("spool", format!("{} writable", dir.display())),
    }
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs(3) fills the zeroed struct it is given.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut stat) } == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Whether the kernel's clock is kept in step (NTP and the like), which a Pi
/// without a battery clock needs for its timestamps to mean anything.
fn clock() -> Check {
    // SAFETY: adjtimex(2) with modes 0 only reads, into the zeroed struct.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut timex) };
    let synced = state != libc::TIME_ERROR && timex.status & libc::STA_UNSYNC == 0;
    if synced {
        Check::pass("clock", "synchronised")
    } else {
        Check::fail(
            "clock",
            "not synchronised: image timestamps may be wrong (a Pi has no battery clock)",
            "enable time synchronisation (`sudo timedatectl set-ntp true`) and let it reach an NTP server",
        )
    }
}

/// The state of camnode.service, and whether it runs (for the camera and
/// PUB port checks).
fn service() -> (Check, Service) {
    if !Path::new("/run/systemd/system").exists() {
        return (Check::skip("service", "not under systemd"), Service::NotRunning);
    }
    let shown = Command::new("systemctl").args(["show", "camnode.service", "--property=LoadState,ActiveState,SubState,UnitFileState"]).output();
    let Ok(output) = shown else {
        return (Check::skip("service", "systemctl could not be run"), Service::NotRunning);
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let property = |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).unwrap_or("").to_string();
    let (active, sub, enabled) = (property("ActiveState"), property("SubState"), property("UnitFileState"));
    if property("LoadState") != "loaded" {
        return (Check::skip("service", "camnode.service is not installed (fine for a camnode started by hand)"), Service::NotRunning);
    }
    let state = format!("camnode.service {active} ({sub}), {enabled}");
    match (active.as_str(), enabled.as_str()) {
        ("active", "enabled") => (Check::pass("service", state), Service::Running),
        ("active", _) => (Check::fail("service", state, "`sudo systemctl enable camnode` so that it starts at boot"), Service::Running),
        ("failed" | "activating", _) => (
            Check::fail("service", state, "`journalctl -u camnode -e` shows why; fix that, then `sudo systemctl restart camnode`"),
            Service::NotRunning,
        ),
        _ => (Check::fail("service", state, "`sudo systemctl enable --now camnode`"), Service::NotRunning),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_outcome_name_detail_and_fix() {
        let line = Check::fail("hub", "no reply\nfrom there", "start the hub").to_string();
        assert_eq!(line, "[FAIL] hub        no reply\n                   from there\n                   fix: start the hub");
        assert_eq!(Check::pass("clock", "synchronised").to_string(), "[ ok ] clock      synchronised");
    }

    #[test]
    fn the_report_passes_only_without_failures() {
        let mut out = Vec::new();
        let passing = [Check::pass("a", "fine"), Check::skip("b", "nothing here")];
        report(&passing, &mut out, Duration::from_millis(1500)).unwrap();
        assert!(String::from_utf8_lossy(&out).ends_with("1 checks in 1.5 s\n"));
        let failing = [Check::pass("a", "fine"), Check::fail("b", "broken", "mend it")];
        let err = report(&failing, &mut Vec::new(), Duration::ZERO).unwrap_err().to_string();
        assert_eq!(err, "1 of 2 checks failed");
    }
}
