//! The hub's outward services, the console (with `/metrics`) and MQTT, on
//! one thread of their own running a single-threaded tokio runtime beside
//! the hub's ingest. They read the fleet ([`crate::fleet`]) and the hub's
//! figures; ingest never waits for them. Stopping (on drop) lets MQTT say
//! the hub is offline and disconnect, within about a second.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use crate::console::Console;
use crate::mqtt::Mqtt;

/// The running services; dropping stops them.
pub struct Services {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Where the console is served, if it is.
    pub console: Option<SocketAddr>,
}

impl Services {
    /// Starts what is configured.
    pub fn start(console: Option<Console>, mqtt: Option<Mqtt>) -> Result<Services> {
        let address = console.as_ref().map(Console::address).transpose()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the console and MQTT runtime")?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new().name("services".into()).spawn(move || {
            runtime.block_on(async move {
                if let Some(console) = console {
                    tokio::spawn(console.serve());
                }
                match mqtt {
                    Some(mqtt) => mqtt.run(stopped).await,
                    None => {
                        let _ = stopped.await;
                    }
                }
            });
            // Open pages' streams never end by themselves: they are cut here.
            runtime.shutdown_timeout(std::time::Duration::from_millis(100));
        })?;
        if let Some(address) = address {
            log::info!("console on http://{address}/ (metrics on /metrics)");
        }
        Ok(Services { stop: Some(stop), thread: Some(thread), console: address })
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
