//! Blobs: connected groups of changed cells, their statistics, and the
//! frame-to-frame tracking that tells a persistent object from speckle.
//!
//! The detector marks each grid cell with [`flags`] bits; this module groups
//! the changed cells (8-connected, two-pass labelling with union-find) and
//! measures per blob what the acceptance rules need: its size and box, how
//! many of its cells are seeds (far above the threshold) and how many changed
//! since the last frames (the blob is moving, not a ghost or a stopped car),
//! and how often neighbouring cells change in the same direction. Flickering
//! texture such as leaves or rippling water changes neighbouring cells in
//! opposite directions; a solid object changes them alike.
//!
//! Buffers are sized for the grid once, so labelling never allocates.

/// Bits of the per-cell flags the detector fills in.
pub(super) mod flags {
    /// Differs from the background by more than the cell's threshold.
    pub const CHANGED: u8 = 1;
    /// Brighter than the background.
    pub const BRIGHTER: u8 = 2;
    /// Differs by more than 1.5 times the threshold.
    pub const SEED: u8 = 4;
    /// Also differs from one of the last two frames.
    pub const MOVING: u8 = 8;
    /// Changed in the same direction in the last frame too.
    pub const STEADY: u8 = 16;
}

/// What the detector made of a blob.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Verdict {
    /// Changed, but weak, still, or flickering.
    #[default]
    Rejected,
    /// Looks like a moving object, not yet seen long enough or too small.
    Candidate,
    /// A moving object: counts as motion.
    Accepted,
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Blob {
    pub area: u32,
    pub x0: u16,
    pub y0: u16,
    pub x1: u16,
    pub y1: u16,
    pub seeds: u32,
    pub moving: u32,
    pub steady: u32,
    /// Pairs of 4-neighbouring changed cells that changed alike, or oppositely.
    pub alike: u32,
    pub opposite: u32,
    /// Consecutive frames in which a candidate was seen here.
    pub age: u32,
    /// Where this candidate was first seen: the centre of its box, in half cells.
    pub origin: (u16, u16),
    pub verdict: Verdict,
    /// A candidate that passed every test but the minimum area.
    pub credible: bool,
}

impl Blob {
    /// Share of neighbouring cell pairs that changed in the same direction.
    pub fn coherence(&self) -> f32 {
        let pairs = self.alike + self.opposite;
        if pairs == 0 {
            1.0
        } else {
            self.alike as f32 / pairs as f32
        }
    }

    /// The centre of the box, in half cells.
    fn centre(&self) -> (u16, u16) {
        (self.x0 + self.x1, self.y0 + self.y1)
    }

    /// How far the centre moved since the candidate was first seen, in cells.
    pub fn travelled(&self) -> u16 {
        let (x, y) = self.centre();
        x.abs_diff(self.origin.0).max(y.abs_diff(self.origin.1)) / 2
    }

    /// True if the boxes, `margin` cells apart at most, touch.
    fn near(&self, other: &Blob, margin: u16) -> bool {
        self.x0 <= other.x1 + margin && other.x0 <= self.x1 + margin && self.y0 <= other.y1 + margin && other.y0 <= self.y1 + margin
    }
}

pub(super) struct Blobs {
    width: usize,
    height: usize,
    /// Per cell: 0 for unchanged, else 1 + the index of its blob.
    pub labels: Vec<u32>,
    /// Per cell: the verdict on its blob, as of the last `accept`; a byte
    /// per cell that the per-cell loops read without a lookup.
    verdicts: Vec<Option<Verdict>>,
    parent: Vec<u32>,
    /// Blob index of each provisional label's root.
    blob_of_root: Vec<u32>,
    pub list: Vec<Blob>,
    /// Last frame's candidates, for persistence.
    previous: Vec<Blob>,
}

impl Blobs {
    pub fn new(width: usize, height: usize) -> Self {
        let cells = width * height;
        Blobs {
            width,
            height,
            labels: vec![0; cells],
            verdicts: vec![None; cells],
            parent: Vec::with_capacity(cells + 1),
            blob_of_root: vec![0; cells + 1],
            list: Vec::with_capacity(cells),
            previous: Vec::with_capacity(cells),
        }
    }

    /// Forgets this frame's blobs (after the background was relearnt). Last
    /// frame's candidates stay: objects do not jump when the light does.
    pub fn forget(&mut self) {
        self.labels.fill(0);
        self.verdicts.fill(None);
        self.list.clear();
    }

    /// Groups the changed cells of `cell_flags` into [`Self::list`] and
    /// labels each cell with its blob.
    pub fn label(&mut self, cell_flags: &[u8]) {
        let (w, h) = (self.width, self.height);
        self.parent.clear();
        self.parent.push(0);
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if cell_flags[i] & flags::CHANGED == 0 {
                    self.labels[i] = 0;
                    continue;
                }
                let mut label = 0;
                // Already visited neighbours: west, north-west, north, north-east.
                let west = (x > 0).then(|| i - 1);
                let north = (y > 0).then(|| i - w);
                let north_west = (x > 0 && y > 0).then(|| i - w - 1);
                let north_east = (x + 1 < w && y > 0).then(|| i - w + 1);
                for n in [west, north_west, north, north_east].into_iter().flatten() {
                    let other = self.labels[n];
                    if other == 0 {
                        continue;
                    }
                    if label == 0 {
                        label = self.find(other);
                    } else {
                        label = self.union(label, other);
                    }
                }
                if label == 0 {
                    label = self.parent.len() as u32;
                    self.parent.push(label);
                }
                self.labels[i] = label;
            }
        }
        self.list.clear();
        for label in 1..self.parent.len() as u32 {
            if self.find(label) == label {
                self.blob_of_root[label as usize] = self.list.len() as u32;
                self.list.push(Blob { x0: u16::MAX, y0: u16::MAX, ..Blob::default() });
            }
        }
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if self.labels[i] == 0 {
                    continue;
                }
                let root = self.find(self.labels[i]);
                let index = self.blob_of_root[root as usize];
                self.labels[i] = index + 1;
                let f = cell_flags[i];
                let alike = |n: usize| (cell_flags[n] ^ f) & flags::BRIGHTER == 0;
                // West and north neighbours are final by now and in this blob if changed.
                let (mut same, mut opposite) = (0, 0);
                for n in [(x > 0).then(|| i - 1), (y > 0).then(|| i - w)].into_iter().flatten() {
                    if cell_flags[n] & flags::CHANGED != 0 {
                        if alike(n) {
                            same += 1;
                        } else {
                            opposite += 1;
                        }
                    }
                }
                let blob = &mut self.list[index as usize];
                blob.area += 1;
                blob.x0 = blob.x0.min(x as u16);
                blob.y0 = blob.y0.min(y as u16);
                blob.x1 = blob.x1.max(x as u16);
                blob.y1 = blob.y1.max(y as u16);
                blob.seeds += (f & flags::SEED != 0) as u32;
                blob.moving += (f & flags::MOVING != 0) as u32;
                blob.steady += (f & flags::STEADY != 0) as u32;
                blob.alike += same;
                blob.opposite += opposite;
            }
        }
    }

    /// First verdict on every blob: a candidate if `is_candidate` says it
    /// looks like a moving object, rejected otherwise.
    pub fn classify(&mut self, is_candidate: impl Fn(&Blob) -> bool) {
        for blob in &mut self.list {
            blob.verdict = if is_candidate(blob) { Verdict::Candidate } else { Verdict::Rejected };
        }
    }

    /// Accepts the candidates seen in `min_frames` consecutive frames (near
    /// where one was the frame before) that cover at least `min_area` cells
    /// and for which `is_solid` holds; remembers the candidates for the next frame.
    pub fn accept(&mut self, is_solid: impl Fn(&Blob) -> bool, min_frames: u32, min_area: u32) {
        // How far an object may move between frames, in cells.
        const REACH: u16 = 2;
        for blob in &mut self.list {
            if blob.verdict == Verdict::Rejected {
                continue;
            }
            // The oldest candidate nearby last frame is this object's past.
            let past = self.previous.iter().filter(|p| p.near(blob, REACH)).max_by_key(|p| p.age);
            blob.age = 1 + past.map_or(0, |p| p.age);
            blob.origin = past.map_or(blob.centre(), |p| p.origin);
            blob.credible = blob.age >= min_frames && is_solid(blob);
            if blob.credible && blob.area >= min_area {
                blob.verdict = Verdict::Accepted;
            }
        }
        self.previous.clear();
        self.previous.extend(self.list.iter().filter(|b| b.verdict != Verdict::Rejected));
        for (verdict, &label) in self.verdicts.iter_mut().zip(&self.labels) {
            *verdict = match label {
                0 => None,
                label => Some(self.list[label as usize - 1].verdict),
            };
        }
    }

    /// Frames in a row the longest-followed candidate (or accepted object)
    /// has been seen, as of the last `accept`; 0 when there is none. Light
    /// jumps leave it as it was: objects do not jump when the light does.
    pub fn followed_for(&self) -> u32 {
        self.previous.iter().map(|b| b.age).max().unwrap_or(0)
    }

    /// The verdict on the blob that holds cell `i`, if the cell changed.
    #[inline]
    pub fn verdict_at(&self, i: usize) -> Option<Verdict> {
        self.verdicts[i]
    }

    /// [`Self::verdict_at`] of every cell.
    pub fn verdicts(&self) -> &[Option<Verdict>] {
        &self.verdicts
    }

    fn find(&mut self, mut label: u32) -> u32 {
        while self.parent[label as usize] != label {
            // Path halving keeps the trees flat without recursion.
            let grand = self.parent[self.parent[label as usize] as usize];
            self.parent[label as usize] = grand;
            label = grand;
        }
        label
    }

    fn union(&mut self, a: u32, b: u32) -> u32 {
        let (ra, rb) = (self.find(a), self.find(b));
        let (keep, drop) = (ra.min(rb), ra.max(rb));
        self.parent[drop as usize] = keep;
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::flags::*;
    use super::*;

    fn grid(rows: &[&str]) -> Vec<u8> {
        rows.iter()
            .flat_map(|r| {
                r.bytes().map(|c| match c {
                    b'+' => CHANGED | BRIGHTER | MOVING | SEED,
                    b'-' => CHANGED | MOVING,
                    b'o' => CHANGED,
                    _ => 0,
                })
            })
            .collect()
    }

    #[test]
    fn u_shapes_and_diagonals_join_into_one_blob() {
        let cells = grid(&["+..+.....", "+..+...o.", "++++..o..", ".......o."]);
        let mut blobs = Blobs::new(9, 4);
        blobs.label(&cells);
        assert_eq!(blobs.list.len(), 2);
        let u = blobs.list[0];
        assert_eq!((u.area, u.x0, u.y0, u.x1, u.y1), (8, 0, 0, 3, 2));
        assert_eq!((u.seeds, u.moving, u.coherence()), (8, 8, 1.0));
        let diagonal = blobs.list[1];
        assert_eq!((diagonal.area, diagonal.moving), (3, 0));
        assert_eq!(blobs.labels[7 + 9], 2);
    }

    #[test]
    fn checkered_change_is_incoherent() {
        let cells = grid(&["+-+-", "-+-+", "+-+-"]);
        let mut blobs = Blobs::new(4, 3);
        blobs.label(&cells);
        assert_eq!(blobs.list.len(), 1);
        assert_eq!(blobs.list[0].coherence(), 0.0);
    }

    #[test]
    fn candidates_are_accepted_after_enough_frames_nearby() {
        let mut blobs = Blobs::new(10, 3);
        let frames = [["++........"; 3], ["..++......"; 3], ["........++"; 3]];
        let mut verdicts = Vec::new();
        for frame in frames {
            blobs.label(&grid(&frame));
            blobs.classify(|b| b.moving > 0);
            blobs.accept(|_| true, 2, 2);
            verdicts.push((blobs.list[0].age, blobs.list[0].verdict));
        }
        // Moved 2 cells: same object. Jumped 6 cells: a new one.
        assert_eq!(verdicts, [(1, Verdict::Candidate), (2, Verdict::Accepted), (1, Verdict::Candidate)]);
        assert_eq!(blobs.verdict_at(9), Some(Verdict::Candidate));
        assert_eq!(blobs.verdict_at(0), None);
    }
}
