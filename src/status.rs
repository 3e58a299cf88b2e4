//! The node's health as one shared value that the pipeline and the sender
//! update and that anything showing it to a person (the status LED, the
//! watchdog) reads on its own schedule. Nobody calls into the LED from the
//! hot path: they set a flag here and move on.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Lifecycle phase of the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Running = 1,
    Stopped = 2,
    Failed = 3,
}

/// A snapshot of [`NodeStatus`], for renderers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusSnapshot {
    pub phase: Phase,
    /// The last exchange with the hub succeeded (REQ), or the PUB socket is bound.
    pub hub_reachable: bool,
    /// A motion or trigger event is in progress.
    pub event_active: bool,
    /// Messages were dropped or spooled within the last few seconds.
    pub dropping: bool,
}

/// Shared, lock-free health of the node.
#[derive(Debug)]
pub struct NodeStatus {
    phase: AtomicU8,
    hub_reachable: AtomicBool,
    event_active: AtomicBool,
    /// Milliseconds after `epoch` of the most recent drop, 0 for never.
    last_drop_ms: AtomicU64,
    epoch: Instant,
}

/// How long a drop keeps the "dropping" signal on.
const DROP_MEMORY: Duration = Duration::from_secs(5);

impl Default for NodeStatus {
    fn default() -> Self {
        NodeStatus {
            phase: AtomicU8::new(Phase::Starting as u8),
            hub_reachable: AtomicBool::new(false),
            event_active: AtomicBool::new(false),
            last_drop_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl NodeStatus {
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    pub fn set_hub_reachable(&self, reachable: bool) {
        self.hub_reachable.store(reachable, Ordering::Relaxed);
    }

    pub fn set_event_active(&self, active: bool) {
        self.event_active.store(active, Ordering::Relaxed);
    }

    /// Records that a message was dropped just now.
    pub fn note_drop(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_drop_ms.store(ms.max(1), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let phase = match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Running,
            2 => Phase::Stopped,
            _ => Phase::Failed,
        };
        let last_drop = self.last_drop_ms.load(Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        StatusSnapshot {
            phase,
            hub_reachable: self.hub_reachable.load(Ordering::Relaxed),
            event_active: self.event_active.load(Ordering::Relaxed),
            dropping: last_drop != 0 && now.saturating_sub(last_drop) < DROP_MEMORY.as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reflects_updates() {
        let status = NodeStatus::default();
        assert_eq!(status.snapshot().phase, Phase::Starting);
        assert!(!status.snapshot().dropping);
        status.set_phase(Phase::Running);
        status.set_hub_reachable(true);
        status.note_drop();
        let snap = status.snapshot();
        assert_eq!((snap.phase, snap.hub_reachable, snap.dropping), (Phase::Running, true, true));
    }
}
