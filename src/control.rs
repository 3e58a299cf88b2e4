//! Messages that reach the node's main loop from outside the camera: the
//! signal handler and the GPIO trigger send them, the pipeline acts on them.
//! Kept apart from both so that neither imports the other.

/// One message on the pipeline's control channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop: a signal, or the end of a test.
    Quit,
    /// The trigger input was pressed; `[gpio] trigger_mode` says what that does.
    Trigger,
}
