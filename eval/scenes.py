"""Builds camnode's labelled motion-evaluation scenes from ../shared/footage.

Each scene is a Y4M file (what `camnode detect --source y4m:...` and the peers
in peers.py read) plus a JSON file with one label per frame. Real footage
supplies the motion that matters (people walking in OpenCV's vtest clip, a
hand over the waving tree) and the motion that must be ignored (the leaves);
the synthetic parts are what a camera meets in the field and the footage
lacks: still periods, sensor noise that grows as the light falls, slow light
ramps, passing clouds and sudden light switches, uniform or from one side.

How frames are labelled. A frame is "motion" when something of interest
moved between the previous frame and this one. The footage is played forward
(or, for the tree, back and forth) and frozen for the still periods, so:

- vtest: every played frame is motion and every frozen frame is not. That
  vtest has a person moving in every one of its 400 frames is checked, not
  assumed: `check_vtest` finds the people against the clip's median
  background and requires in each frame a person-sized blob that also changed
  since the previous frame; the numbers go into docs/motion.md.
- tree: frames 53-67 of the clip show a hand; a frame is motion when the hand
  is in it or in the frame before (so the frame where it leaves counts).
  Waving leaves alone are not motion: that is what nobody wants reported.
- crossing: one far-away person of vtest, alone in an empty yard: the top
  left of the clip (384x288), live only where that person walks (from behind
  the building to the left edge, clip frames 64-175) and the clip's median
  background elsewhere, so nothing else moves. The person covers 0.05 to
  0.3 % of this frame: a small object, which the detector must follow for
  longer before it counts. A frame is motion when the person moved since the
  previous frame and, in this frame or that one, covers at least the
  detector's minimum area (0.05 %): while only a head shows behind the
  corner, no detector set to ignore smaller things can be asked to see it.

Light and noise never change a label: they are exactly what a detector must
not report.
"""

import json
import pathlib

import cv2
import numpy as np

VTEST_FPS = 10
TREE_FPS = 15
# First and last frame of the tree clip in which the hand is visible.
TREE_HAND = (53, 67)
# The crossing scene: the part of vtest it shows ((x, y, width, height),
# even numbers for the chroma planes), the window in it where the clip plays
# (x0, y0, x1, y1: the lawn below the building, where one person walks and
# nobody else does), and the clip frames it plays (the person is out of
# sight before and after).
CROSSING_VIEW = (0, 0, 384, 288)
CROSSING_WINDOW = (0, 40, 310, 150)
CROSSING_CLIP = (60, 180)
# The detector's default minimum object size, in percent of the frame.
MIN_AREA_PERCENT = 0.05


def load_clip(folder, count):
    """Decodes N.jpg files into I420 planes: Y (n, h, w) and U/V (n, h/2, w/2)."""
    ys, us, vs = [], [], []
    for i in range(count):
        bgr = cv2.imread(str(folder / f"{i}.jpg"))
        if bgr is None:
            raise SystemExit(f"cannot read {folder}/{i}.jpg: is ../shared/footage complete?")
        h, w = bgr.shape[:2]
        i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
        ys.append(i420[:h])
        chroma = i420[h:].reshape(2, h // 2, w // 2)
        us.append(chroma[0])
        vs.append(chroma[1])
    return np.stack(ys), np.stack(us), np.stack(vs)


def foreground(y, background):
    """Pixels that differ from the background by more than 30, specks removed."""
    fg = (np.abs(y.astype(np.int16) - background) > 30).astype(np.uint8)
    return cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))


def changed(a, b):
    """Pixels that changed by more than 20 between two frames."""
    return np.abs(a.astype(np.int16) - b) > 20


def check_vtest(y, background):
    """Finds moving people in every vtest frame against the clip's median background.

    Returns per-frame counts of moving person blobs and the blobs' areas as a
    share of the frame, so that the "every frame is motion" label is measured.
    """
    counts, areas = [], []
    for t in range(len(y)):
        fg = foreground(y[t], background)
        moved = changed(y[t], y[t - 1] if t > 0 else y[t + 1])
        n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        moving = 0
        for k in range(1, n):
            if stats[k, cv2.CC_STAT_AREA] >= 60 and moved[labels == k].sum() >= 15:
                moving += 1
                areas.append(stats[k, cv2.CC_STAT_AREA] / fg.size)
        counts.append(moving)
    return np.array(counts), np.array(areas)


class Builder:
    """Writes one scene: frames go straight to the Y4M file, labels to a list."""

    def __init__(self, out, name, width, height, fps, seed):
        self.path = out / f"{name}.y4m"
        self.file = open(self.path, "wb")
        self.file.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        self.name, self.fps = name, fps
        self.labels = []
        self.rng = np.random.default_rng(seed)
        self.x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]

    def add(self, y, u, v, motion, light=1.0, gamma=1.0, noise=2.5):
        """One frame: `light` is a gain (a number, or a function of x in 0..1
        for light from one side); noise is the sensor's standard deviation at
        full light, and grows as the light falls, as a camera's gain does."""
        gain = light(self.x) if callable(light) else np.float32(light)
        lum = y.astype(np.float32) * gain
        if gamma != 1.0:
            lum = 255.0 * (np.clip(lum, 0, 255) / 255.0) ** gamma
        sigma = noise / np.sqrt(min(1.0, float(np.mean(gain))))
        lum += self.rng.normal(0.0, sigma, lum.shape).astype(np.float32)
        self.file.write(b"FRAME\n")
        self.file.write(np.clip(lum + 0.5, 0, 255).astype(np.uint8).tobytes())
        self.file.write(u.tobytes())
        self.file.write(v.tobytes())
        self.labels.append(int(motion))

    def finish(self, description):
        self.file.close()
        meta = {"name": self.name, "fps": self.fps, "description": description, "labels": self.labels}
        (self.path.parent / f"{self.name}.json").write_text(json.dumps(meta) + "\n")
        return self.path


def vtest_timeline():
    """Clip frame and label per scene frame: still periods freeze the clip."""
    plan = [("hold", 60), ("play", 1, 100), ("hold", 80), ("play", 100, 220), ("hold", 80), ("play", 220, 400), ("hold", 60)]
    shown, timeline = 0, []
    for step in plan:
        if step[0] == "hold":
            timeline += [(shown, False)] * step[1]
        else:
            timeline += [(i, True) for i in range(step[1], step[2])]
            shown = step[2] - 1
    return timeline


def smooth_step(t, start, length):
    """0 before `start`, 1 after `start + length`, a smooth ramp between."""
    s = np.clip((t - start) / length, 0.0, 1.0)
    return s * s * (3 - 2 * s)


def build_vtest_scenes(out, clip):
    y, u, v = clip
    timeline = vtest_timeline()
    n = len(timeline)
    holds = [t for t, (_, moving) in enumerate(timeline) if not moving]
    scenes = []

    def scene(name, description, light_at, noise=2.5, seed=0):
        b = Builder(out, name, y.shape[2], y.shape[1], VTEST_FPS, seed)
        for t, (i, moving) in enumerate(timeline):
            light, gamma = light_at(t)
            b.add(y[i], u[i], v[i], moving, light=light, gamma=gamma, noise=noise)
        scenes.append(b.finish(description))

    scene("walk", "vtest played and frozen in turn, sensor noise 2.5", lambda t: (1.0, 1.0), seed=1)
    scene("night", "vtest at 35 % light, noise 2.5 at full light (4.2 here)", lambda t: (0.35, 1.0), seed=2)

    # Dusk and dawn: down to 40 % over half the scene and back, with two
    # clouds (30 % darker for 2-3 s) passing while nothing moves.
    def dusk(t):
        ramp = 1.0 - 0.6 * np.sin(np.pi * t / (n - 1))
        cloud = 0.3 * sum(smooth_step(t, c, 12) - smooth_step(t, c + 20, 12) for c in (holds[5], holds[150]))
        return ramp * (1.0 - cloud), 1.0

    scene("dusk", "slow light ramp 100 % -> 40 % -> 100 %, two passing clouds", dusk, seed=3)

    # Light switches, all but one while nothing moves: off, a lamp on the
    # left, an IR-like tone change, and lights back on while people walk.
    walk_start = timeline.index((100, True))
    switches = [
        (holds[20], lambda x: 0.55 * np.ones_like(x), 1.0),
        (holds[70], lambda x: 0.55 + 0.6 * (1.0 - x), 1.0),
        (holds[130], lambda x: 0.9 * np.ones_like(x), 0.7),
        (walk_start + 40, lambda x: np.ones_like(x), 1.0),
        (holds[200], lambda x: 0.5 + 0.5 * x, 1.0),
    ]

    def lights(t):
        light, gamma = 1.0, 1.0
        for start, l, g in switches:
            if t >= start:
                light, gamma = l, g
        return light, gamma

    scene("lights", "sudden switches: off, lamp from one side, IR-like tone change, on while people walk", lights, seed=4)
    return scenes


def build_tree_scene(out, clip):
    y, u, v = clip
    first, last = TREE_HAND
    leaves_fwd = list(range(1, first))
    leaves_back = leaves_fwd[::-1]
    hand_in = list(range(first, last + 1))
    hand_out = hand_in[::-1][1:]
    # Calm, wind, the hand comes and goes three times with wind in between, calm.
    order = [0] * 45 + leaves_fwd + leaves_back + leaves_fwd
    for _ in range(3):
        order += hand_in + hand_out + leaves_back + leaves_fwd
    frames = order + [order[-1]] * 45
    has_hand = lambda i: first <= i <= last
    b = Builder(out, "tree", y.shape[2], y.shape[1], TREE_FPS, seed=5)
    for t, i in enumerate(frames):
        moving = has_hand(i) or (t > 0 and has_hand(frames[t - 1]) and frames[t - 1] != i)
        b.add(y[i], u[i], v[i], moving, noise=2.0)
    return b.finish("waving leaves (not motion) and a hand passing three times, noise 2")


def build_crossing_scene(out, clip):
    """One small far-away person crossing a still yard, three times: forward,
    back (walking backwards into the building's corner) and forward again."""
    y, u, v = clip
    vx, vy, vw, vh = CROSSING_VIEW
    wx0, wy0, wx1, wy1 = CROSSING_WINDOW
    first, last = CROSSING_CLIP
    background = [np.median(p, axis=0).astype(np.uint8) for p in (y, u, v)]

    def view(i):
        """Clip frame i as the scene shows it: the median background with the window live."""
        planes = []
        for plane, still, scale in zip((y, u, v), background, (1, 2, 2)):
            frame = still.copy()
            rows, cols = slice(wy0 // scale, wy1 // scale), slice(wx0 // scale, wx1 // scale)
            frame[rows, cols] = plane[i][rows, cols]
            planes.append(frame[vy // scale:(vy + vh) // scale, vx // scale:(vx + vw) // scale])
        return planes

    min_area = MIN_AREA_PERCENT / 100 * vw * vh
    y_background = background[0][vy:vy + vh, vx:vx + vw]

    def motion(i, previous):
        a, b = view(i)[0], view(previous)[0]
        fa, fb = foreground(a, y_background), foreground(b, y_background)
        return bool(changed(a, b)[(fa | fb) > 0].sum() >= 10)

    forward = list(range(first, last + 1))
    order = [first] * 40 + forward + [last] * 60 + forward[::-1] + [first] * 60 + forward + [last] * 40
    b = Builder(out, "crossing", vw, vh, VTEST_FPS, seed=6)
    for t, i in enumerate(order):
        b.add(*view(i), t > 0 and motion(i, order[t - 1]))
    return b.finish("one far-away person (0.05-0.3 % of the frame) crossing an empty yard three times, noise 2.5")


def build(footage, out):
    """Builds every scene into `out`; returns the Y4M paths and the vtest check."""
    out.mkdir(parents=True, exist_ok=True)
    vtest = load_clip(footage / "vtest", 400)
    counts, areas = check_vtest(vtest[0], np.median(vtest[0], axis=0).astype(np.int16))
    check = {
        "frames": int(len(counts)),
        "frames_without_moving_person": int((counts == 0).sum()),
        "moving_people_min": int(counts.min()),
        "moving_people_median": float(np.median(counts)),
        "person_area_percent_median": float(100 * np.median(areas)),
        "person_area_percent_p90": float(100 * np.percentile(areas, 90)),
    }
    scenes = build_vtest_scenes(out, vtest)
    scenes.append(build_crossing_scene(out, vtest))
    del vtest
    scenes.append(build_tree_scene(out, load_clip(footage / "tree", 68)))
    return scenes, check


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--footage", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parents[2] / "shared" / "footage")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    paths, check = build(args.footage, args.out)
    print(json.dumps({"scenes": [str(p) for p in paths], "vtest_check": check}, indent=1))
