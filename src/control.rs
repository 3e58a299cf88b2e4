//! Messages that reach the node's main loop from outside the camera: the
//! signal handler and the GPIO trigger send them, the pipeline acts on them.
//! Kept apart from both: the trigger knows only its own [`Pressed`], made
//! into a [`Control`] here.

use crate::config::Config;
use crate::gpio::trigger::Pressed;

/// One message on the pipeline's control channel.
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    /// Stop: a signal, or the end of a test.
    Quit,
    /// The trigger input was pressed; `[gpio] trigger_mode` says what that does.
    Trigger,
    /// A new configuration, checked already (SIGHUP): the pipeline takes
    /// what a running node can take between two frames, and names the rest.
    Reload(Box<Config>),
}

impl From<Pressed> for Control {
    fn from(_: Pressed) -> Control {
        Control::Trigger
    }
}
