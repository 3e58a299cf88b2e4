//! Event hysteresis: a run of moving frames starts an event, a run of still
//! frames ends it, so one noisy frame neither starts nor ends anything.

use super::{MotionEvent, MotionState};

#[derive(Clone, Debug)]
pub struct Hysteresis {
    min_motion_frames: u32,
    min_still_frames: u32,
    state: MotionState,
    /// Consecutive frames that disagree with the current state.
    run: u32,
}

impl Hysteresis {
    pub fn new(min_motion_frames: u32, min_still_frames: u32) -> Self {
        Hysteresis {
            min_motion_frames: min_motion_frames.max(1),
            min_still_frames: min_still_frames.max(1),
            state: MotionState::Still,
            run: 0,
        }
    }

    pub fn state(&self) -> MotionState {
        self.state
    }

    /// Feeds one frame's raw verdict; returns the event this frame causes.
    pub fn update(&mut self, active: bool) -> Option<MotionEvent> {
        let (disagrees, needed) = match self.state {
            MotionState::Still => (active, self.min_motion_frames),
            MotionState::Moving => (!active, self.min_still_frames),
        };
        self.run = if disagrees { self.run + 1 } else { 0 };
        if self.run < needed {
            return None;
        }
        self.run = 0;
        Some(match self.state {
            MotionState::Still => {
                self.state = MotionState::Moving;
                MotionEvent::Started
            }
            MotionState::Moving => {
                self.state = MotionState::Still;
                MotionEvent::Ended
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_a_run_to_start_and_to_end() {
        let mut h = Hysteresis::new(3, 2);
        let verdicts = [true, true, false, true, true, true, false, true, false, false];
        let events: Vec<_> = verdicts.iter().map(|&a| h.update(a)).collect();
        assert_eq!(events[5], Some(MotionEvent::Started));
        assert_eq!(events[9], Some(MotionEvent::Ended));
        assert_eq!(events.iter().flatten().count(), 2);
        assert_eq!(h.state(), MotionState::Still);
    }
}
