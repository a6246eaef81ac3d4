"""Steady labels in videos: faces followed over frames by box overlap, probabilities averaged
with a time constant in seconds, and the smoothed label in the rows and the annotated video."""

import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from ferpipe.data.splits import CLASS_NAMES
from ferpipe.predict.cli import build_parser, main, run_videos
from ferpipe.predict.predictor import Prediction
from ferpipe.predict.smoothing import FORGET_S, FaceSmoother, iou, match_boxes

FPS = 10
#: Frames in which face A (left) opens its mouth: single frames and one pair.
PERTURBED = {4, 9, 10, 17, 23}
HAPPY = dict.fromkeys(CLASS_NAMES, 0.03) | {"happy": 0.6, "surprise": 0.25}
SURPRISED = dict.fromkeys(CLASS_NAMES, 0.03) | {"happy": 0.25, "surprise": 0.6}


def one_hot(name: str) -> np.ndarray:
    return np.array([[1.0 if n == name else 0.0 for n in CLASS_NAMES]])


# --------------------------------------------------------------------------- tracker and smoother


def test_iou_of_boxes():
    assert iou((10, 10, 20, 20), (10, 10, 20, 20)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching edges
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 0, 10), (0, 0, 0, 10)) == 0.0  # no area


def test_match_boxes_pairs_the_best_overlap_first_and_never_a_low_one():
    previous = [(0, 0, 10, 10), (100, 0, 10, 10)]
    # box 0 overlaps previous 0 a little, box 1 overlaps it more: box 1 continues it
    assert match_boxes(previous, [(4, 0, 10, 10), (1, 0, 10, 10)]) == {1: 0}
    assert match_boxes(previous, [(101, 1, 10, 10), (50, 50, 10, 10)]) == {0: 1}
    assert match_boxes(previous, [(8, 0, 10, 10)], min_iou=0.3) == {}  # IoU 2/18
    assert match_boxes([], [(0, 0, 10, 10)]) == {} and match_boxes(previous, []) == {}


def test_two_faces_keep_their_tracks_and_their_own_averages():
    smoother = FaceSmoother(0.5)
    left, right = (10, 10, 40, 40), (200, 10, 40, 40)
    out = smoother.update(0.0, [left, right], np.vstack([one_hot("happy"), one_hot("sad")]))
    assert [track for track, _ in out] == [0, 1]
    for t in range(1, 6):  # both move, and the detector lists them in the other order
        moved_left, moved_right = (10 + 3 * t, 10, 40, 40), (200 - 3 * t, 12, 40, 40)
        out = smoother.update(0.1 * t, [moved_right, moved_left],
                              np.vstack([one_hot("sad"), one_hot("happy")]))
        assert [track for track, _ in out] == [1, 0]
        assert [CLASS_NAMES[int(p.argmax())] for _, p in out] == ["sad", "happy"]
        assert [p.max() for _, p in out] == [1.0, 1.0]  # no mixing between the faces


def test_a_face_leaving_and_a_new_one_entering_start_a_new_track():
    smoother = FaceSmoother(0.5)
    here, there = (50, 50, 40, 40), (300, 60, 40, 40)
    assert smoother.update(0.0, [here], one_hot("happy"))[0][0] == 0
    assert smoother.update(0.1, [], np.zeros((0, 7))) == []  # missed for a frame ...
    (track, probs), = smoother.update(0.2, [(52, 50, 40, 40)], one_hot("sad"))
    assert track == 0 and probs.argmax() == CLASS_NAMES.index("happy")  # ... the same track
    (track, probs), = smoother.update(0.3, [there], one_hot("sad"))  # gone; someone else
    assert track == 1 and probs.argmax() == CLASS_NAMES.index("sad")  # own probabilities
    assert [t.id for t in smoother.tracks] == [0, 1]
    smoother.update(0.3 + FORGET_S + 0.01, [there], one_hot("sad"))
    assert [t.id for t in smoother.tracks] == [1]  # the first face's track has ended
    (track, probs), = smoother.update(0.3 + FORGET_S + 0.1, [here], one_hot("angry"))
    assert track == 2 and probs.argmax() == CLASS_NAMES.index("angry")


def test_the_time_constant_is_in_seconds_whatever_the_frame_rate():
    tau = 0.5
    one = FaceSmoother(tau)
    one.update(0.0, [(0, 0, 10, 10)], one_hot("happy"))
    (_, probs), = one.update(tau, [(0, 0, 10, 10)], one_hot("sad"))
    assert probs[CLASS_NAMES.index("happy")] == pytest.approx(math.exp(-1))
    assert probs[CLASS_NAMES.index("sad")] == pytest.approx(1 - math.exp(-1))
    assert probs.sum() == pytest.approx(1.0)
    # five frames 0.1 s apart reach the same mixture as one frame 0.5 s later
    many = FaceSmoother(tau)
    many.update(0.0, [(0, 0, 10, 10)], one_hot("happy"))
    for t in (0.1, 0.2, 0.3, 0.4, 0.5):
        (_, steps), = many.update(t, [(0, 0, 10, 10)], one_hot("sad"))
    np.testing.assert_allclose(steps, probs)
    # a longer time constant holds the old label longer
    slow = FaceSmoother(2.0)
    slow.update(0.0, [(0, 0, 10, 10)], one_hot("happy"))
    (_, held), = slow.update(tau, [(0, 0, 10, 10)], one_hot("sad"))
    assert held.argmax() == CLASS_NAMES.index("happy")  # 1 - e^-0.25 = 0.22 of sad
    assert probs.argmax() == CLASS_NAMES.index("sad")  # 1 - e^-1 = 0.63 of sad


def test_zero_is_off_and_tracks_are_still_followed():
    smoother = FaceSmoother(0.0)
    for t, name in enumerate(["happy", "sad", "angry", "happy"]):
        (track, probs), = smoother.update(t / 30, [(5 + t, 5, 40, 40)], one_hot(name))
        assert track == 0
        np.testing.assert_array_equal(probs, one_hot(name)[0])


@pytest.mark.parametrize("tau", [-1, -0.01, math.inf, math.nan])
def test_bad_time_constants_are_refused(tau):
    with pytest.raises(ValueError, match=r"; expected a finite number of seconds >= 0 \(0: off\)"):
        FaceSmoother(tau)


def test_one_row_of_probabilities_per_box():
    with pytest.raises(ValueError, match=r"got shape \(1, 7\); expected one row per box \(2\)"):
        FaceSmoother().update(0.0, [(0, 0, 9, 9), (20, 0, 9, 9)], one_hot("happy"))


# --------------------------------------------------------------------------- a generated video


class SquareFaces:
    """A predictor for the generated video: each bright square is a face; its expression is
    happy, or surprise where a dark mouth is open in it. Duck-types `Predictor`."""

    classifier = SimpleNamespace(class_names=list(CLASS_NAMES))

    def predict_image(self, gray, name, fallback=True):
        import cv2

        count, _, stats, _ = cv2.connectedComponentsWithStats((gray > 150).astype(np.uint8))
        boxes = sorted(tuple(int(v) for v in stats[i, :4]) for i in range(1, count)
                       if stats[i, 4] > 400)
        out = []
        for face, (x, y, w, h) in enumerate(boxes):
            mouth_open = (gray[y:y + h, x:x + w] < 100).mean() > 0.05
            probs = SURPRISED if mouth_open else HAPPY
            best = max(probs, key=probs.get)
            out.append(Prediction(file=name, face=face, box=(x, y, w, h), expression=best,
                                  probability=probs[best], probabilities=dict(probs)))
        return out


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """30 frames (3 s at 10 frames/s), 320 x 240: face A (left, moving right 1 pixel a frame)
    is happy but opens its mouth in the frames `PERTURBED`; face B (right) is surprised
    throughout."""
    import cv2

    path = tmp_path_factory.mktemp("smoothing") / "two_faces.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (320, 240))
    for i in range(30):
        frame = np.full((240, 320), 40, np.uint8)
        frame[60:140, 40 + i:120 + i] = 200
        frame[60:140, 200:280] = 200
        frame[105:130, 220:260] = 20
        if i in PERTURBED:
            frame[105:130, 60 + i:100 + i] = 20
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def run(video, options, capsys):
    """The CLI's video output for `options` with the square-face predictor."""
    args = build_parser().parse_args([str(video), *options])
    assert run_videos(SquareFaces(), [video], args) == 0
    return capsys.readouterr().out


def changes(labels):
    return sum(a != b for a, b in zip(labels, labels[1:]))


def test_smoothed_labels_change_less_often_than_the_frames_own(video, capsys):
    rows = list(csv.DictReader(run(video, [], capsys).splitlines()))
    assert list(rows[0])[-3:] == ["track", "smoothed_expression", "smoothed_probability"]
    assert len(rows) == 60  # two faces a frame
    a = [r for r in rows if int(r["x"]) < 160]
    b = [r for r in rows if int(r["x"]) >= 160]
    assert {r["track"] for r in a} == {"0"} and {r["track"] for r in b} == {"1"}
    assert [r["expression"] == "surprise" for r in a] == [i in PERTURBED for i in range(30)]
    assert changes([r["expression"] for r in a]) == 8  # in and out of 3 single frames and a pair
    assert {r["smoothed_expression"] for r in a} == {"happy"}  # no change at all
    assert {r["expression"] for r in b} == {r["smoothed_expression"] for r in b} == {"surprise"}
    # one frame 0.1 s after steady happy frames: its weight is 1 - exp(-0.1 / 0.5)
    assert float(a[4]["smoothed_probability"]) == pytest.approx(
        0.6 - 0.35 * (1 - math.exp(-0.2)), abs=1e-4)

    # --smooth 0: the smoothed columns are the frame's own; tracks are still followed
    rows = list(csv.DictReader(run(video, ["--smooth", "0"], capsys).splitlines()))
    assert all(r["smoothed_expression"] == r["expression"] for r in rows)
    assert all(r["smoothed_probability"] == r["probability"] for r in rows)
    assert [r["track"] for r in rows[:4]] == ["0", "1", "0", "1"]


def test_json_rows_smooth_over_the_frame_times_of_every(video, capsys):
    """With --every 2 the classified frames are 0.2 s apart, and each one weighs accordingly."""
    lines = [json.loads(line) for line in run(video, ["--every", "2", "--json"], capsys)
             .splitlines()]
    a = [r for r in lines if r["box"][0] < 160]
    assert [r["frame"] for r in a] == list(range(0, 30, 2))
    assert list(a[0])[-4:] == ["track", "smoothed_expression", "smoothed_probability",
                               "smoothed_probabilities"]
    frame4 = a[2]
    assert frame4["expression"] == "surprise" and frame4["smoothed_expression"] == "happy"
    w = 1 - math.exp(-0.2 / 0.5)
    assert frame4["smoothed_probabilities"]["happy"] == pytest.approx(0.6 - 0.35 * w)
    assert frame4["smoothed_probabilities"]["surprise"] == pytest.approx(0.25 + 0.35 * w)
    assert frame4["smoothed_probability"] == frame4["smoothed_probabilities"]["happy"]
    assert sum(frame4["smoothed_probabilities"].values()) == pytest.approx(1.0)


def test_a_frame_without_a_face_has_empty_smoothed_cells(tmp_path, capsys):
    import cv2

    path = tmp_path / "empty.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (64, 64))
    writer.write(np.full((64, 64, 3), 40, np.uint8))
    writer.release()
    (row,) = csv.DictReader(run(path, [], capsys).splitlines())
    assert row["track"] == row["smoothed_expression"] == row["smoothed_probability"] == ""
    (line,) = run(path, ["--json"], capsys).splitlines()
    assert {k: v for k, v in json.loads(line).items() if k.startswith(("track", "smoothed"))} \
        == dict.fromkeys(["track", "smoothed_expression", "smoothed_probability",
                          "smoothed_probabilities"])


def test_the_annotated_video_shows_the_smoothed_label(video, tmp_path, capsys, monkeypatch):
    import ferpipe.predict.video as video_io

    drawn = []
    real_draw = video_io.draw

    def draw(rgb, predictions):
        drawn.append([(p.box[0] < 160, p.expression) for p in predictions])
        return real_draw(rgb, predictions)

    monkeypatch.setattr(video_io, "draw", draw)
    run(video, ["--annotate", str(tmp_path / "smoothed")], capsys)
    assert len(drawn) == 30
    assert {label for frame in drawn for left, label in frame if left} == {"happy"}
    drawn.clear()
    run(video, ["--annotate", str(tmp_path / "raw"), "--smooth", "0"], capsys)
    assert [dict(frame)[True] == "surprise" for frame in drawn] == [
        i in PERTURBED for i in range(30)]
    assert (tmp_path / "smoothed" / "two_faces.annotated.mp4").is_file()


def test_a_webcam_smooths_over_its_clock(video, capsys, monkeypatch):
    """A webcam's frame times are seconds since its first frame on the clock, and the weights
    follow them: here a quarter second a frame."""
    import cv2

    import ferpipe.predict.video as video_io

    cap = cv2.VideoCapture(str(video))
    reads = [0]

    class Camera:
        def read(self):
            reads[0] += 1
            return cap.read()

        def get(self, prop):
            return cap.get(prop)

        def release(self):
            cap.release()

    monkeypatch.setattr(video_io, "open_video", lambda source: Camera())
    monkeypatch.setattr(video_io, "time", SimpleNamespace(perf_counter=lambda: 0.25 * reads[0]))
    args = build_parser().parse_args(["--webcam", "0", "--max-frames", "6", "--json"])
    assert run_videos(SquareFaces(), [0], args) == 0
    a = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    a = [r for r in a if r["box"][0] < 160]
    assert [r["time_s"] for r in a] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert a[4]["expression"] == "surprise"  # frame 4, a quarter second after frame 3
    assert a[4]["smoothed_probabilities"]["happy"] == pytest.approx(
        0.6 - 0.35 * (1 - math.exp(-0.25 / 0.5)))


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "lots"])
def test_a_bad_smooth_is_one_usage_line(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["clip.mp4", "--smooth", value])
    assert exit_.value.code == 2
    err = capsys.readouterr()
    assert [line for line in err.err.splitlines() if "error" in line] == [
        f"ferpipe-predict: error: argument --smooth: got {value}; expected a finite number of "
        f"seconds >= 0 (0: off)"]
    assert err.out == "" and "Traceback" not in err.err
