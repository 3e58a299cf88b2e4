//! Encrypted, authenticated links with ZeroMQ CURVE.
//!
//! imagezmq has no security: a PUB node serves whoever subscribes, a REQ node
//! sends to whatever answers at the hub address, and a hub takes images from
//! anyone. With a `[security]` section camnode speaks CURVE instead (CurveZMQ:
//! Curve25519 keys, every message encrypted and authenticated). The side that
//! binds is the CURVE server: it admits only the peers whose public keys are
//! in `allowed_dir`, checked by a ZAP handler (ZeroMQ's authentication
//! protocol, RFC 27) that answers on its own thread inside the socket's
//! context. The side that connects is the client and must know the server's
//! public key (`server_cert`), so it cannot be talked into sending to an
//! impostor. So in REQ mode the hub is the server and admits only listed
//! nodes; in PUB mode the node is the server and serves only listed hubs.
//!
//! Keys live in ZeroMQ certificate files as pyzmq's `zmq.auth` and czmq write
//! them (`NAME.key` public, `NAME.key_secret` secret, Z85 text), so a Python
//! hub uses the very files `camnode keygen` makes. Key material never reaches
//! a log or an error message. Failed handshakes are reported from ZeroMQ's
//! socket monitor and the ZAP handler, each peer and kind of failure once:
//! a refused client retries every 100 ms, which would otherwise flood the log.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use log::{debug, error, info, warn};
use serde::{Deserialize, Serialize};

use super::Mode;
use crate::settings::{check_private, Checker};

/// `[security]`: CURVE keys. Without any of them, links are plaintext as in imagezmq.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// This side's secret certificate, `NAME.key_secret` from `camnode keygen NAME`
    /// (mode 0600); setting it turns CURVE on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_cert: Option<PathBuf>,
    /// The side that connects (REQ node, SUB hub): the public certificate
    /// `PEER.key` of the side it connects to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cert: Option<PathBuf>,
    /// The side that binds (PUB node, REP hub): a directory of public
    /// certificates (`*.key`) of the peers allowed in; all others are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_dir: Option<PathBuf>,
}

/// Which end of the CURVE handshake a socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Binds and admits the clients listed in `allowed_dir`.
    Server,
    /// Connects to the server named by `server_cert`.
    Client,
}

impl Role {
    /// A node binds in PUB mode and connects in REQ mode.
    pub fn of_node(mode: Mode) -> Role {
        match mode {
            Mode::Req => Role::Client,
            Mode::Pub => Role::Server,
        }
    }

    /// A hub binds REP for REQ nodes and connects SUB to PUB nodes.
    pub fn of_hub(mode: Mode) -> Role {
        match Role::of_node(mode) {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

impl SecurityConfig {
    pub fn enabled(&self) -> bool {
        self.secret_cert.is_some() || self.server_cert.is_some() || self.allowed_dir.is_some()
    }

    /// Checks that the keys this side needs are named, and nothing it would
    /// ignore is; the files themselves are read when the socket opens.
    pub fn check(&self, check: &mut Checker, role: Role) {
        if !self.enabled() {
            return;
        }
        let shown = |path: &Option<PathBuf>| format!("{:?}", path.as_deref().unwrap_or(Path::new("")));
        if self.secret_cert.is_none() {
            check.fail(
                "security",
                "secret_cert",
                "(not set)",
                "set it to this side's NAME.key_secret from `camnode keygen NAME`, or remove the [security] section for plaintext",
            );
        }
        match role {
            Role::Client => {
                if self.server_cert.is_none() {
                    check.fail(
                        "security",
                        "server_cert",
                        "(not set)",
                        "this side connects, so it must know the public key of the side it connects to: set it to that side's NAME.key",
                    );
                }
                if self.allowed_dir.is_some() {
                    check.fail("security", "allowed_dir", &shown(&self.allowed_dir), "this side connects; only the side that binds checks who comes in: remove it and put this side's NAME.key into the other side's allowed_dir");
                }
            }
            Role::Server => {
                if self.allowed_dir.is_none() {
                    check.fail(
                        "security",
                        "allowed_dir",
                        "(not set)",
                        "this side binds, so it admits only the peers whose public NAME.key files are in a directory: set it to that directory",
                    );
                }
                if self.server_cert.is_some() {
                    check.fail(
                        "security",
                        "server_cert",
                        &shown(&self.server_cert),
                        "this side binds and is the CURVE server; server_cert is for the side that connects: remove it",
                    );
                }
            }
        }
    }
}

/// A CURVE key as the 40 characters of Z85 text that certificates hold and
/// libzmq's key options accept. Its `Debug` hides the key, so that no
/// accidental `{:?}` can print one.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key(String);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

const Z85_CHARS: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

impl Key {
    fn parse(text: &str) -> Option<Key> {
        (text.len() == 40 && text.chars().all(|c| Z85_CHARS.contains(c))).then(|| Key(text.to_string()))
    }

    fn from_binary(bytes: &[u8]) -> Option<Key> {
        if bytes.len() != 32 {
            return None;
        }
        zmq::z85_encode(bytes).ok().map(Key)
    }
}

/// What a certificate file holds.
struct Certificate {
    public: Key,
    secret: Option<Key>,
}

/// Reads a ZeroMQ certificate the way pyzmq's `zmq.auth.load_certificate`
/// does: `public-key = "..."` and `secret-key = "..."` lines, anywhere, with
/// or without quotes; `#` comments and everything else ignored.
fn read_certificate(path: &Path) -> Result<Certificate> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read certificate {}", path.display()))?;
    let mut public = None;
    let mut secret = None;
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let (slot, name) = if line.starts_with("public-key") {
            (&mut public, "public-key")
        } else if line.starts_with("secret-key") {
            (&mut secret, "secret-key")
        } else {
            continue;
        };
        let value = line.split_once('=').map_or("", |(_, v)| v.trim_matches([' ', '\t', '"', '\'']));
        // The value itself stays out of the message: it may be a secret key.
        let key = Key::parse(value).with_context(|| {
            format!("certificate {} has a malformed {name}: expected 40 Z85 characters, as `camnode keygen` writes", path.display())
        })?;
        *slot = Some(key);
    }
    let public = public.with_context(|| {
        format!("{} is not a ZeroMQ certificate: it has no `public-key = \"...\"` line (make one with `camnode keygen NAME`)", path.display())
    })?;
    Ok(Certificate { public, secret })
}

fn require_curve() -> Result<()> {
    if zmq::has("curve") != Some(true) {
        bail!(
            "the libzmq this camnode is linked with has no CURVE support, which [security] needs: build camnode against the system's \
             libzmq (apt-get install libzmq3-dev; .cargo/config.toml links it on Linux), see docs/security.md"
        );
    }
    Ok(())
}

/// `NAME.key` and `NAME.key_secret` beside each other: `stem` plus a suffix,
/// so that a name with dots (`garage.v2`) keeps them.
fn certificate_paths(stem: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut name = stem.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    (with(".key"), with(".key_secret"))
}

/// `camnode keygen NAME`: writes a new key pair as `NAME.key` (public, for
/// peers) and `NAME.key_secret` (secret, mode 0600 from the moment it
/// exists). Never overwrites: replacing a key locks out every peer that knows
/// the old one. Returns the two paths.
pub fn keygen(stem: &Path) -> Result<(PathBuf, PathBuf)> {
    require_curve()?;
    let (public_path, secret_path) = certificate_paths(stem);
    for path in [&public_path, &secret_path] {
        if path.exists() {
            bail!(
                "{} already exists; keygen never replaces a key (peers trust the old one): remove it first, or choose another NAME",
                path.display()
            );
        }
    }
    let pair = zmq::CurveKeyPair::new().context("libzmq could not generate a CURVE key pair")?;
    let encode = |bytes: &[u8]| zmq::z85_encode(bytes).context("libzmq could not encode a key as Z85");
    let (public, secret) = (encode(&pair.public_key)?, encode(&pair.secret_key)?);
    // The banners and layout are pyzmq's (zmq.auth.create_certificates), so
    // its tools and users recognise the files.
    let secret_text = format!(
        "#   ****  Generated by camnode keygen  ****\n\
         #   ZeroMQ CURVE **Secret** Certificate\n\
         #   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n\
         metadata\ncurve\n    public-key = \"{public}\"\n    secret-key = \"{secret}\"\n"
    );
    let public_text = format!(
        "#   ****  Generated by camnode keygen  ****\n\
         #   ZeroMQ CURVE Public Certificate\n\
         #   Exchange securely, or use a secure mechanism to verify the contents\n\
         #   of this file after exchange. Store public certificates in your home\n\
         #   directory, in the .curve subdirectory.\n\n\
         metadata\ncurve\n    public-key = \"{public}\"\n"
    );
    write_new(&secret_path, secret_text.as_bytes(), 0o600)?;
    write_new(&public_path, public_text.as_bytes(), 0o644)?;
    Ok((public_path, secret_path))
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}: check that its directory exists and is writable", path.display()))?;
    file.write_all(contents).and_then(|()| file.sync_all()).with_context(|| format!("cannot write {}", path.display()))
}

/// Public keys allowed in, by Z85 text, with the certificate's file stem as
/// the peer's name for logs and ZAP's user id.
struct Allowed {
    dir: PathBuf,
    keys: HashMap<Key, String>,
}

impl Allowed {
    /// Loads every `*.key` file in `dir`, as pyzmq's `zmq.auth.load_certificates` does.
    fn load(dir: &Path) -> Result<Allowed> {
        let entries = fs::read_dir(dir)
            .with_context(|| format!("cannot read [security] allowed_dir = {dir:?}: it must be a directory of peers' NAME.key files"))?;
        let mut keys = HashMap::new();
        for entry in entries {
            let path = entry.with_context(|| format!("cannot list [security] allowed_dir = {dir:?}"))?.path();
            if path.extension().is_some_and(|e| e == "key") {
                let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                keys.insert(read_certificate(&path)?.public, name);
            }
        }
        if keys.is_empty() {
            bail!("[security] allowed_dir = {dir:?} holds no .key files, so no peer could connect: copy the peers' public NAME.key files there");
        }
        Ok(Allowed { dir: dir.to_path_buf(), keys })
    }
}

/// Logs each distinct message once. Bounded, because the keys of refused
/// peers come from the network.
struct LogOnce {
    seen: Mutex<HashSet<String>>,
}

/// Distinct peers and failures remembered; past this, new ones go unlogged
/// (and that is said once).
const LOG_ONCE_LIMIT: usize = 1024;

impl LogOnce {
    fn new() -> Arc<LogOnce> {
        Arc::new(LogOnce { seen: Mutex::new(HashSet::new()) })
    }

    /// True the first time `id` is seen.
    fn first(&self, id: String) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= LOG_ONCE_LIMIT {
            if seen.insert("(full)".into()) {
                warn!("more than {LOG_ONCE_LIMIT} distinct CURVE peers or failures so far; new ones are no longer logged");
            }
            return false;
        }
        seen.insert(id)
    }
}

/// Unique inproc endpoint names within the process.
fn inproc_name(what: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("inproc://camnode-{what}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The ZAP handler: answers libzmq's authentication requests for every
/// CURVE server socket of one context. Stopped and joined on drop.
struct Authenticator {
    control: zmq::Socket,
    thread: Option<JoinHandle<()>>,
}

/// The address libzmq sends ZAP requests to, fixed by RFC 27.
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";

impl Authenticator {
    fn start(context: &zmq::Context, allowed: Allowed, log: Arc<LogOnce>) -> Result<Authenticator> {
        // Bound here, before the server socket exists, so that no handshake
        // can happen without the handler: libzmq admits every CURVE client
        // when no ZAP handler is bound.
        let zap = context.socket(zmq::REP)?;
        zap.bind(ZAP_ENDPOINT).context("cannot start the CURVE authenticator (ZAP handler)")?;
        let endpoint = inproc_name("zap-control");
        let stop = context.socket(zmq::PAIR)?;
        stop.bind(&endpoint)?;
        let control = context.socket(zmq::PAIR)?;
        control.connect(&endpoint)?;
        let thread = std::thread::Builder::new().name("curve-zap".into()).spawn(move || {
            if let Err(e) = serve_zap(&zap, &stop, &allowed, &log) {
                // libzmq admits every client when no handler is bound, so the
                // handler stays bound and silent: handshakes stall, none passes.
                error!("the CURVE authenticator failed: {e}; no new peer can connect until camnode restarts");
                while let Err(zmq::Error::EINTR) = stop.recv_bytes(0) {}
            }
        })?;
        Ok(Authenticator { control, thread: Some(thread) })
    }
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        let _ = self.control.send("", 0);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers ZAP requests until `stop` says so. A signal that lands on this
/// thread interrupts the wait, which then goes on: an authenticator that
/// quit would let every client in.
fn serve_zap(zap: &zmq::Socket, stop: &zmq::Socket, allowed: &Allowed, log: &LogOnce) -> zmq::Result<()> {
    loop {
        let mut items = [zap.as_poll_item(zmq::POLLIN), stop.as_poll_item(zmq::POLLIN)];
        match zmq::poll(&mut items, -1) {
            Err(zmq::Error::EINTR) => continue,
            other => other?,
        };
        if items[1].is_readable() {
            return Ok(());
        }
        if items[0].is_readable() {
            let request = zap.recv_multipart(0)?;
            zap.send_multipart(answer_zap(&request, allowed, log), 0)?;
        }
    }
}

/// One ZAP reply (RFC 27): version, request id, status code and text, user
/// id, metadata. Request frames: version, request id, domain, address,
/// routing id, mechanism, then for CURVE the client's 32-byte public key.
fn answer_zap(request: &[Vec<u8>], allowed: &Allowed, log: &LogOnce) -> Vec<Vec<u8>> {
    let reply = |status: &str, text: &str, user: &str| {
        let id = request.get(1).cloned().unwrap_or_default();
        vec![b"1.0".to_vec(), id, status.as_bytes().to_vec(), text.as_bytes().to_vec(), user.as_bytes().to_vec(), Vec::new()]
    };
    let [version, _id, _domain, address, _routing_id, mechanism, credentials @ ..] = request else {
        return reply("500", "malformed ZAP request", "");
    };
    if version.as_slice() != b"1.0" || mechanism.as_slice() != b"CURVE" {
        return reply("400", "only CURVE is accepted", "");
    }
    let address = String::from_utf8_lossy(address);
    let Some(key) = credentials.first().and_then(|k| Key::from_binary(k)) else {
        return reply("400", "no CURVE key", "");
    };
    // The log id holds the key so each refused peer is told apart; the
    // message itself names only the address.
    match allowed.keys.get(&key) {
        Some(name) => {
            if log.first(format!("admit {address} {}", key.0)) {
                info!("CURVE peer {name} connected from {address}");
            }
            reply("200", "OK", name)
        }
        None => {
            if log.first(format!("refuse {address} {}", key.0)) {
                warn!(
                    "refused a CURVE peer from {address}: its public key is not in [security] allowed_dir = {:?} (put its NAME.key there to let it in); its further attempts are not logged",
                    allowed.dir
                );
            }
            reply("400", "key not allowed", "")
        }
    }
}

/// Handshake outcomes reported by a socket's monitor.
const WATCHED_EVENTS: i32 = (zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32)
    | (zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32)
    | (zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32)
    | (zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32)
    | (zmq::SocketEvent::MONITOR_STOPPED as i32);

/// Protocol error codes of `ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL` (zmq.h).
const PROTOCOL_ERROR_CRYPTOGRAPHIC: u32 = 0x1100_0001;
const PROTOCOL_ERROR_MECHANISM_MISMATCH: u32 = 0x1100_0002;

/// Reads one socket's monitor until the socket closes, logging what went
/// wrong in handshakes in words a user can act on, once each.
fn watch_handshakes(monitor: zmq::Socket, role: Role, peer: String, log: Arc<LogOnce>) {
    loop {
        let parts = match monitor.recv_multipart(0) {
            Ok(parts) => parts,
            Err(zmq::Error::EINTR) => continue,
            Err(_) => return,
        };
        // Frame 1: event number (u16) and value (u32), native byte order.
        let Some(head) = parts.first().filter(|p| p.len() >= 6) else { continue };
        let event = u16::from_ne_bytes([head[0], head[1]]);
        let value = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
        let event = zmq::SocketEvent::from_raw(event);
        if event == zmq::SocketEvent::MONITOR_STOPPED {
            return;
        }
        if event == zmq::SocketEvent::HANDSHAKE_SUCCEEDED {
            debug!("CURVE handshake with {peer} succeeded");
            continue;
        }
        // Whichever side of a mismatch notices it first hangs up, and the
        // other sees only that (NO_DETAIL); `kind` groups what one cause can
        // look like, so that a peer retrying is logged once, not once per look.
        let (kind, problem) = match (role, event, value) {
            // The ZAP handler has already said which peer it refused.
            (Role::Server, zmq::SocketEvent::HANDSHAKE_FAILED_AUTH, _) => continue,
            (Role::Server, zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL, PROTOCOL_ERROR_CRYPTOGRAPHIC) => (
                "server key",
                format!("a peer tried to connect to {peer} with a server key that is not this side's and was refused: its [security] server_cert must be this side's NAME.key"),
            ),
            (Role::Server, zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL, PROTOCOL_ERROR_MECHANISM_MISMATCH)
            | (Role::Server, zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL, _) => (
                "plaintext",
                format!("a peer without CURVE tried to connect to {peer} and was refused: plaintext peers cannot talk to a socket with [security]"),
            ),
            (Role::Client, zmq::SocketEvent::HANDSHAKE_FAILED_AUTH, _) => (
                "refused",
                format!("{peer} refused this side's CURVE key: put this side's NAME.key into the [security] allowed_dir over there"),
            ),
            (Role::Client, zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL, PROTOCOL_ERROR_MECHANISM_MISMATCH) => (
                "handshake",
                format!("{peer} does not use CURVE: give it a [security] section too, or remove this side's"),
            ),
            (Role::Client, zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL, _) => (
                "handshake",
                format!("the CURVE handshake with {peer} broke off: that side does not use CURVE, or [security] server_cert is not its public key"),
            ),
            (_, event, value) => ("other", format!("the CURVE handshake on {peer} failed ({event:?}, code {value:#x})")),
        };
        if log.first(format!("{peer} {kind}")) {
            warn!("{problem}; further failures like this are not logged");
        }
    }
}

/// One side's CURVE setup: its keys, and for a server the ZAP handler that
/// runs as long as this lives.
pub struct Curve {
    secret: Key,
    public: Key,
    end: End,
    log: Arc<LogOnce>,
}

enum End {
    Client { server: Key },
    Server { _authenticator: Authenticator },
}

impl Curve {
    /// Reads the keys named in `config` for a socket of `role` in `context`,
    /// and for a server starts the ZAP handler. `None` without `[security]`.
    /// `config` has passed [`SecurityConfig::check`].
    pub fn open(config: &SecurityConfig, role: Role, context: &zmq::Context) -> Result<Option<Curve>> {
        if !config.enabled() {
            return Ok(None);
        }
        require_curve()?;
        let secret_path = config.secret_cert.as_deref().context("[security] secret_cert is not set: set it to this side's NAME.key_secret")?;
        check_private("[security] secret_cert", secret_path)?;
        let own = read_certificate(secret_path)?;
        let secret = own.secret.with_context(|| {
            format!("[security] secret_cert = {secret_path:?} has no secret-key: it must be the NAME.key_secret file, not NAME.key")
        })?;
        let log = LogOnce::new();
        let end = match role {
            Role::Client => {
                let path = config
                    .server_cert
                    .as_deref()
                    .context("[security] server_cert is not set: set it to the public NAME.key of the side this one connects to")?;
                End::Client { server: read_certificate(path)?.public }
            }
            Role::Server => {
                let dir = config
                    .allowed_dir
                    .as_deref()
                    .context("[security] allowed_dir is not set: set it to a directory of the allowed peers' NAME.key files")?;
                let allowed = Allowed::load(dir)?;
                info!("CURVE: {} peer key(s) allowed from {}", allowed.keys.len(), dir.display());
                End::Server { _authenticator: Authenticator::start(context, allowed, log.clone())? }
            }
        };
        Ok(Some(Curve { secret, public: own.public, end, log }))
    }

    /// Makes `socket` this side's CURVE end, and reports its failed
    /// handshakes; call before it binds or connects to `address`.
    pub fn secure(&self, context: &zmq::Context, socket: &zmq::Socket, address: &str) -> Result<()> {
        let role = match &self.end {
            End::Client { server } => {
                socket.set_curve_serverkey(server.0.as_bytes())?;
                socket.set_curve_publickey(self.public.0.as_bytes())?;
                Role::Client
            }
            End::Server { .. } => {
                socket.set_curve_server(true)?;
                socket.set_zap_domain("camnode")?;
                Role::Server
            }
        };
        socket.set_curve_secretkey(self.secret.0.as_bytes())?;
        let endpoint = inproc_name("monitor");
        socket.monitor(&endpoint, WATCHED_EVENTS)?;
        // Connected before the socket binds or connects, so no event is missed;
        // the thread ends when the socket closes (MONITOR_STOPPED).
        let monitor = context.socket(zmq::PAIR)?;
        monitor.connect(&endpoint)?;
        let (peer, log) = (address.to_string(), self.log.clone());
        std::thread::Builder::new().name("curve-monitor".into()).spawn(move || watch_handshakes(monitor, role, peer, log))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::settings::ConfigOrigin;

    fn problems(config: &SecurityConfig, role: Role) -> String {
        let origin = ConfigOrigin::default();
        let mut check = Checker::new(&origin);
        config.check(&mut check, role);
        check.finish().err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn roles_follow_who_binds() {
        assert_eq!(Role::of_node(Mode::Req), Role::Client);
        assert_eq!(Role::of_node(Mode::Pub), Role::Server);
        assert_eq!(Role::of_hub(Mode::Req), Role::Server);
        assert_eq!(Role::of_hub(Mode::Pub), Role::Client);
    }

    #[test]
    fn each_side_must_name_what_it_needs_and_only_that() {
        assert_eq!(problems(&SecurityConfig::default(), Role::Client), "", "no [security] is plaintext");
        let client = SecurityConfig { secret_cert: Some("n.key_secret".into()), server_cert: Some("h.key".into()), allowed_dir: None };
        assert_eq!(problems(&client, Role::Client), "");
        let err = problems(&client, Role::Server);
        assert!(err.contains("[security] allowed_dir = (not set)") && err.contains("[security] server_cert = \"h.key\""), "{err}");
        let err = problems(&SecurityConfig { server_cert: None, ..client }, Role::Client);
        assert!(err.contains("server_cert = (not set)") && err.contains("NAME.key"), "{err}");
        let err = problems(&SecurityConfig { allowed_dir: Some("keys".into()), ..Default::default() }, Role::Server);
        assert!(err.contains("secret_cert = (not set)") && err.contains("camnode keygen"), "{err}");
    }

    #[test]
    fn keygen_writes_certificates_that_read_back_and_a_private_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (public, secret) = keygen(&dir.path().join("garage.v2")).unwrap();
        assert_eq!(public.file_name().unwrap(), "garage.v2.key");
        assert_eq!(secret.file_name().unwrap(), "garage.v2.key_secret");
        assert_eq!(fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
        let (p, s) = (read_certificate(&public).unwrap(), read_certificate(&secret).unwrap());
        assert!(p.secret.is_none(), "the public certificate must not hold the secret key");
        assert_eq!(p.public, s.public);
        assert_ne!(s.secret.unwrap(), s.public);
        check_private("[security] secret_cert", &secret).unwrap();
        let err = keygen(&dir.path().join("garage.v2")).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
    }

    #[test]
    fn a_secret_open_to_others_is_refused_with_the_chmod() {
        let dir = tempfile::tempdir().unwrap();
        let (_, secret) = keygen(&dir.path().join("n")).unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o640)).unwrap();
        let err = check_private("[security] secret_cert", &secret).unwrap_err().to_string();
        assert!(err.contains("mode 640") && err.contains(&format!("chmod 600 {}", secret.display())), "{err}");
    }

    #[test]
    fn certificates_are_read_as_pyzmq_reads_them_and_errors_hide_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
        let path = dir.path().join("x.key");
        fs::write(&path, format!("# comment public-key = \"nope\"\nmetadata\ncurve\n\tpublic-key = '{key}'\n")).unwrap();
        assert_eq!(read_certificate(&path).unwrap().public, Key(key.into()));
        let bad = format!("curve\n    secret-key = \"{}\"\n    public-key = \"{key}\"\n", &key[..39]);
        fs::write(&path, bad).unwrap();
        let err = format!("{:#}", read_certificate(&path).err().unwrap());
        assert!(err.contains("malformed secret-key") && !err.contains(&key[..39]), "{err}");
        fs::write(&path, "curve\n").unwrap();
        assert!(read_certificate(&path).err().unwrap().to_string().contains("no `public-key"));
        assert_eq!(format!("{:?}", Key(key.into())), "Key(..)");
    }

    #[test]
    fn allowed_dir_takes_public_certificates_only() {
        let dir = tempfile::tempdir().unwrap();
        let err = Allowed::load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("holds no .key files"), "{err}");
        keygen(&dir.path().join("hub")).unwrap();
        let allowed = Allowed::load(dir.path()).unwrap();
        assert_eq!(allowed.keys.values().collect::<Vec<_>>(), ["hub"]);
    }

    #[test]
    fn zap_admits_listed_keys_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let (public, _) = keygen(&dir.path().join("node")).unwrap();
        let allowed = Allowed::load(dir.path()).unwrap();
        let listed = zmq::z85_decode(&read_certificate(&public).unwrap().public.0).unwrap();
        let other = zmq::CurveKeyPair::new().unwrap().public_key.to_vec();
        let log = LogOnce::new();
        let request = |key: Vec<u8>| {
            let frames: Vec<Vec<u8>> =
                vec![b"1.0".to_vec(), b"7".to_vec(), b"camnode".to_vec(), b"10.0.0.9".to_vec(), vec![], b"CURVE".to_vec(), key];
            answer_zap(&frames, &allowed, &log)
        };
        let ok = request(listed);
        assert_eq!((ok[1].as_slice(), ok[2].as_slice(), ok[4].as_slice()), (&b"7"[..], &b"200"[..], &b"node"[..]));
        assert_eq!(request(other.clone())[2], b"400");
        assert_eq!(request(other[..31].to_vec())[2], b"400");
        assert_eq!(answer_zap(&[b"1.0".to_vec()], &allowed, &log)[2], b"500");
    }

    #[test]
    fn log_once_is_once_and_bounded() {
        let log = LogOnce::new();
        assert!(log.first("a".into()));
        assert!(!log.first("a".into()));
        for i in 0..2 * LOG_ONCE_LIMIT {
            log.first(i.to_string());
        }
        assert!(!log.first("new".into()));
        assert!(log.seen.lock().unwrap().len() <= LOG_ONCE_LIMIT + 1);
    }
}
