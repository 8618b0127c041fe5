"""``backdrop synth --photos DIR``: a catalog from a folder of photographs, one category per
sub-folder, whose held-out crops come from a part of each photo that training never sees."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from backdrop import cli
from backdrop.demo.photos import PhotoCatalogConfig, photo_crop
from backdrop.errors import InvalidParameterError


def _photo(path, size, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for i, folder in enumerate(("Wood Grain", "stones", "empty")):
        (root / folder).mkdir(parents=True)
    _photo(root / "Wood Grain" / "a.jpg", (300, 200), 1)
    _photo(root / "Wood Grain" / "b.png", (200, 260), 2)
    _photo(root / "stones" / "c.jpeg", (320, 180), 3)
    (root / "stones" / "notes.txt").write_text("not a photo")
    (root / "README.md").write_text("ignored")
    return root


def test_synth_photos_writes_a_catalog_a_category_per_folder(photos, tmp_path, capsys):
    out = tmp_path / "catalog"
    argv = ["synth", "--photos", str(photos), "--output", str(out), "--train-per-category", "5",
            "--heldout-per-category", "3"]
    assert cli.main(argv) == 0
    train = pq.read_table(out / "train.parquet").to_pylist()
    heldout = pq.read_table(out / "heldout.parquet").to_pylist()
    pairs = pq.read_table(out / "pairs.parquet").to_pylist()
    assert sorted({r["category"] for r in train}) == ["stones", "wood-grain"]  # the empty folder is no category
    assert (len(train), len(heldout), len(pairs)) == (10, 6, 16)
    for row in train + heldout + pairs:
        image = np.asarray(Image.open(row["image_uri"]))
        background = np.asarray(Image.open(row["background_uri"]))
        mask = np.asarray(Image.open(row["mask_uri"])) > 127
        assert image.shape == (64, 64, 3) and 0 < mask.mean() < 0.6
        assert np.array_equal(image[~mask], background[~mask])  # the product is opaque, the mask exact
    for row in pairs:  # a pair's reference ad is a crop of the same photograph (its brand)
        assert row["reference_uri"] and row["brand"].split("-")[-1] in {"a", "b", "c"}
    first = {r["product_id"]: np.asarray(Image.open(r["image_uri"])) for r in heldout}
    assert cli.main(argv) == 0  # deterministic: the same pixels again
    assert all(np.array_equal(np.asarray(Image.open(r["image_uri"])), first[r["product_id"]])
               for r in pq.read_table(out / "heldout.parquet").to_pylist())


@pytest.mark.parametrize("size", [(400, 240), (240, 400), (300, 300)])
def test_held_out_crops_never_see_the_training_part(size):
    """A photo whose training part is black and held-out part is white: every training crop
    is black, every held-out crop white, whichever way the photo's long side runs."""
    w, h = size
    photo = np.zeros((h, w, 3), np.uint8)
    cfg = PhotoCatalogConfig()
    if w >= h:
        photo[:, int(round(w * (1 - cfg.heldout_share))):] = 255
    else:
        photo[int(round(h * (1 - cfg.heldout_share))):] = 255
    for i in range(40):
        rng = np.random.default_rng(i)
        assert photo_crop(photo, False, rng, cfg).max() == 0
        assert photo_crop(photo, True, rng, cfg).min() == 255


@pytest.mark.parametrize("size", [(400, 240), (240, 400), (301, 299)])
def test_checker_split_crops_stay_on_their_diagonal_and_reach_every_side(size):
    """Training blocks black, held-out blocks white: no crop crosses, and each split's crops
    come from both halves of the photo in each direction."""
    w, h = size
    photo = np.zeros((h, w, 3), np.uint8)
    photo[: h // 2, w // 2:] = 255
    photo[h // 2:, : w // 2] = 255
    cfg = PhotoCatalogConfig(split="checker")
    halves = {False: set(), True: set()}
    for i in range(40):
        for heldout in (False, True):
            crop = photo_crop(photo, heldout, np.random.default_rng(i), cfg)
            assert (crop.min() == 255) if heldout else (crop.max() == 0)
    ramp = np.repeat(np.linspace(0, 255, h, dtype=np.uint8)[:, None, None], w, 1).repeat(3, 2)
    for i in range(40):  # which half a crop came from (the same draws), read off a vertical ramp
        for heldout in (False, True):
            halves[heldout].add(bool(photo_crop(ramp, heldout, np.random.default_rng(i), cfg).mean() > 127))
    assert halves == {False: {False, True}, True: {False, True}}


def test_an_unknown_split_is_a_clear_error():
    with pytest.raises(InvalidParameterError, match="band, checker"):
        photo_crop(np.zeros((50, 50, 3), np.uint8), False, np.random.default_rng(0), PhotoCatalogConfig(split="x"))


@pytest.mark.parametrize("layout", ["missing", "one-folder", "with-style-seed"])
def test_a_folder_that_is_not_a_photo_catalog_is_a_clear_error(tmp_path, layout, capsys):
    root = tmp_path / "p"
    if layout != "missing":
        for folder in ("only", "second")[: 1 if layout == "one-folder" else 2]:
            (root / folder).mkdir(parents=True)
            _photo(root / folder / "x.jpg", (100, 80), 0)
    extra = ["--style-seed", "3"] if layout == "with-style-seed" else []
    assert cli.main(["synth", "--photos", str(root), "--output", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert "--photos" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
