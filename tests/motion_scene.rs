//! The detector on a labelled scene generated here (no footage needed): a
//! textured yard with sensor noise, a small person who walks, stops and
//! walks again, a waving bush, rain, a slow dusk ramp, and two light
//! switches. Each frame's label says whether something of interest moved.

use camnode::frame::FrameBuf;
use camnode::motion::{MotionConfig, MotionDetector, MotionEvent};

const W: usize = 640;
const H: usize = 480;

/// xorshift64*, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Roughly normal, mean 0, standard deviation 1 (sum of four uniforms).
    fn normal(&mut self) -> f32 {
        let v = self.next();
        let sum: u32 = (0..4).map(|k| ((v >> (16 * k)) & 0xffff) as u32).sum();
        (sum as f32 / 65535.0 - 2.0) * 1.732
    }
}

/// What happens in a frame: the person's position (if any) and whether it moved.
struct Timeline {
    frames: usize,
}

impl Timeline {
    /// Left edge of the person in frame `t`, and whether it moved since `t - 1`.
    fn person(&self, t: usize) -> Option<(usize, bool)> {
        match t {
            // Walks in from the left, stops in the middle for 80 frames, walks on.
            100..=219 => Some((20 + (t - 100) * 2, true)),
            220..=299 => Some((20 + 119 * 2, false)),
            300..=469 => Some((258 + (t - 299) * 2, true)),
            _ => None,
        }
    }

    /// Scene light: a switch off at 40, back on at 330 (the person walks),
    /// a dusk ramp down over 480..640, and a lamp from one side at 700.
    fn light(&self, t: usize, x: usize) -> f32 {
        let base = match t {
            0..=39 => 1.0,
            40..=329 => 0.6,
            330..=479 => 1.0,
            480..=639 => 1.0 - 0.5 * (t - 480) as f32 / 160.0,
            _ => 0.5,
        };
        if t >= 700 {
            base * (1.6 - 0.8 * x as f32 / W as f32)
        } else {
            base
        }
    }

    fn moving(&self, t: usize) -> bool {
        // The frame after the person leaves the picture still shows it leaving.
        self.person(t).is_some_and(|(_, moved)| moved) || (t > 0 && self.person(t).is_none() && self.person(t - 1).is_some())
    }
}

fn render(timeline: &Timeline, t: usize, yard: &[f32], rng: &mut Rng, buf: &mut FrameBuf) {
    let (y_plane, _, _) = buf.planes_mut();
    for (i, p) in y_plane.iter_mut().enumerate() {
        let (x, y) = (i % W, i / W);
        let mut v = yard[i];
        // A bush whose leaves wave: its texture shifts randomly every frame.
        if (440..560).contains(&x) && (60..200).contains(&y) {
            let sway = (rng.next() % 3) as usize;
            v = if ((x + sway) / 3 + (y / 4) * 7) % 5 < 2 { 70.0 } else { 120.0 };
        }
        if let Some((px, _)) = timeline.person(t) {
            // A far-away person: 12x32 pixels (0.13 % of the frame), dark clothes.
            if (px..px + 12).contains(&x) && (300..332).contains(&y) {
                v = if y < 306 { 150.0 } else { 45.0 };
            }
        }
        v *= timeline.light(t, x);
        v += 2.5 * rng.normal();
        *p = v.clamp(0.0, 255.0) as u8;
    }
    // Rain: short bright streaks at random places.
    for _ in 0..30 {
        let (x, y) = ((rng.next() % (W as u64 - 2)) as usize, (rng.next() % (H as u64 - 6)) as usize);
        for dy in 0..5 {
            y_plane[(y + dy) * W + x] = y_plane[(y + dy) * W + x].saturating_add(60);
        }
    }
}

#[test]
fn motion_on_a_labelled_scene_has_high_f1_and_no_false_events() {
    let timeline = Timeline { frames: 800 };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // A yard: gradient, paving, a few bright and dark features.
    let yard: Vec<f32> = (0..W * H)
        .map(|i| {
            let (x, y) = (i % W, i / W);
            let paving = if (x / 32 + y / 16) % 2 == 0 { 12.0 } else { 0.0 };
            let feature = if (x * 7 + y * 13) % 97 < 6 { 40.0 } else { 0.0 };
            70.0 + 90.0 * y as f32 / H as f32 + paving + feature
        })
        .collect();
    let mut buf = FrameBuf::new(W, H);
    let mut detector = MotionDetector::new(&MotionConfig::default(), W, H).unwrap();
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    let mut false_events = Vec::new();
    let mut missed = Vec::new();
    let mut events = 0;
    for t in 0..timeline.frames {
        render(&timeline, t, &yard, &mut rng, &mut buf);
        buf.seq = t as u64;
        let report = detector.process(&buf.as_frame());
        let label = timeline.moving(t);
        match (report.active, label) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => {
                fn_ += 1;
                missed.push(t);
            }
            _ => {}
        }
        if report.event == Some(MotionEvent::Started) {
            events += 1;
            if !label {
                false_events.push(t);
            }
        }
    }
    let precision = tp as f64 / (tp + fp) as f64;
    let recall = tp as f64 / (tp + fn_) as f64;
    let f1 = 2.0 * precision * recall / (precision + recall);
    eprintln!("P {precision:.3} R {recall:.3} F1 {f1:.3}, {events} events, false events at {false_events:?}, missed {missed:?}");
    assert!(f1 >= 0.95, "F1 {f1:.3} (P {precision:.3}, R {recall:.3})");
    assert!(false_events.is_empty(), "events started without motion at frames {false_events:?}");
    assert!(events >= 2, "the two walks must each start an event, got {events}");
}
