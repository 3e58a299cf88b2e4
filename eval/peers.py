"""Faithful re-implementations of two peers' motion detectors, for the
side-by-side evaluation. Each takes the frames' luma planes in order and
returns a `Peer`: per frame, whether that frame alone shows motion, whether
the peer is in a motion event (its own hysteresis, where it has one), which
frames it would send to its hub, and the frames where its events start.

imagenode (jeffbass/imagenode, imaging.py, the `motion` detector): grey ROI,
GaussianBlur 15x15, running average with accumulateWeighted(0.5), absdiff
against the average rounded to 8 bits, threshold at delta_threshold 5,
dilate twice with a 3x3 kernel, external contours; a frame is moving when a
contour's area reaches min_area (3 % of the ROI). The state turns "moving"
after min_motion_frames (3) moving frames in a row and "still" after
min_still_frames (3) still frames counted since the last moving state, as
imagenode counts them; no state before the first max(min_motion_frames,
min_still_frames) frames ("unknown"). The grey image is the Y plane (the
BT.601 luma OpenCV's BGR2GRAY computes, up to rounding).

What imagenode sends: with `send_frames: detected event`, the setting for
sending motion, each change of state (to moving, and to still, the first
"still" after start included) queues the event message and the frames
cam_q[-send_count:-1], the send_count - 1 = 4 frames before the current one
(send_count defaults to 5). Its default, `send_frames: continuous`, sends
every frame whatever the detector says, which needs no model.

rpicam-apps (post_processing_stages/motion_detect_stage.cpp) with its
default motion_detect.json: a 128x96 low-resolution stream (the ISP's
downscale, here INTER_AREA), hskip = vskip = 2, ROI the whole frame; only
every frame_period (5)-th frame is examined, against the frame examined
before it; a sample differs when |new - old| > difference_m * old +
difference_c (0.1, 10), and the frame shows motion when the differing
samples reach region_threshold (0.005) of the ROI. The result holds until
the next examined frame; there is no hysteresis, so every rise of the flag
starts an event. (The shipped JSON also narrows the ROI to the central 80 %;
the whole frame is used here, as for the other detectors.)

What rpicam-apps sends: the stage only sets the flag in each frame's
metadata; an application that records on motion takes a raised flag as
motion at once (the stage's own advice), so the frames that go out are
those whose flag is up, from the first to the last examined frame that saw
motion and until the next examined frame. The flag is held between examined
frames, as an application that reads it each frame and keeps the last value
sees it.
"""

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Peer:
    """A detector's verdicts on a scene, one entry per frame."""

    active: list
    in_event: list
    sent: list
    event_starts: list


def read_y4m_luma(path):
    """Yields the Y plane of each frame of a 4:2:0 Y4M file."""
    with open(path, "rb") as f:
        header = f.readline().split()
        width = int(next(t[1:] for t in header if t.startswith(b"W")))
        height = int(next(t[1:] for t in header if t.startswith(b"H")))
        frame_bytes = width * height * 3 // 2
        while f.readline():
            data = f.read(frame_bytes)
            if len(data) < frame_bytes:
                return
            yield np.frombuffer(data, np.uint8, width * height).reshape(height, width)


def imagenode(frames, min_area_percent=3.0, delta_threshold=5, blur=15, min_motion_frames=3, min_still_frames=3, send_count=5):
    active, moving_state, sent, starts = [], [], [], []
    average = None
    moving_frames = still_frames = total_frames = 0
    state = last_state = "unknown"
    for t, gray in enumerate(frames):
        gray = cv2.GaussianBlur(gray, (blur, blur), 0)
        min_area_pixels = gray.shape[0] * gray.shape[1] * min_area_percent / 100.0
        if average is None:
            average = gray.copy().astype("float")
        else:
            cv2.accumulateWeighted(gray, average, 0.5)
        delta = cv2.absdiff(gray, cv2.convertScaleAbs(average))
        thresholded = cv2.threshold(delta, delta_threshold, 255, cv2.THRESH_BINARY)[1]
        thresholded = cv2.dilate(thresholded, None, iterations=2)
        contours, _ = cv2.findContours(thresholded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        moving = any(cv2.contourArea(c) >= min_area_pixels for c in contours)
        if moving:
            moving_frames += 1
        else:
            moving_frames = 0
            still_frames += 1
        total_frames += 1
        sent.append(False)
        if total_frames >= max(min_motion_frames, min_still_frames):
            if moving_frames >= min_motion_frames:
                state = "moving"
                still_frames = 0
            elif still_frames >= min_still_frames:
                state = "still"
        if state != last_state:
            last_state = state
            if state == "moving":
                starts.append(t)
            for past in range(max(0, t - send_count + 1), t):
                sent[past] = True
        active.append(moving)
        moving_state.append(state == "moving")
    return Peer(active, moving_state, sent, starts)


def rpicam(frames, lores=(128, 96), skip=2, difference_m=0.1, difference_c=10, region_threshold=0.005, frame_period=5):
    active = []
    previous = None
    result = False
    for sequence, gray in enumerate(frames):
        if sequence % frame_period == 0:
            small = cv2.resize(gray, lores, interpolation=cv2.INTER_AREA)[::skip, ::skip].astype(np.int32)
            if previous is not None:
                regions = np.count_nonzero(np.abs(small - previous) > difference_m * previous + difference_c)
                result = regions >= int(region_threshold * small.size)
            previous = small
        active.append(result)
    # No hysteresis: the application sees the flag itself, and each rise starts an event.
    starts = [t for t, flag in enumerate(active) if flag and (t == 0 or not active[t - 1])]
    return Peer(active, list(active), list(active), starts)
