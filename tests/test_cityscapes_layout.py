"""Cityscapes as users download it: a generated tree in the official layout, at the native 1024×2048, with the
files beside the label ids that the official packages hold; label ids → train ids through cityscapesscripts'
table; `archsearch run` on it; a missing label file and a corrupt image are one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from cityscapesscripts.helpers.labels import labels as cityscapes_labels
from PIL import Image

from archsearch import cli, data
from archsearch.spec import DataSpec

ROOT = Path(__file__).resolve().parents[1]
H, W = 1024, 2048  # the native size
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}
# every label id 0..33 in a band of columns (license plate, id -1, cannot be stored in a PNG)
ID_OF_COLUMN = (np.arange(W) * 34 // W).astype(np.uint8)


def stem(city: str, frame: int) -> str:
    return f"{city}_{frame:06d}_000019"


def write_tree(root: Path) -> None:
    """leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png and gtFine/{split}/<city>/<stem>_gtFine_*.png/json,
    as leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip unpack (smooth images: small PNGs)."""
    for split, cities in CITIES.items():
        for k, city in enumerate(cities):
            image_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            image_dir.mkdir(parents=True)
            label_dir.mkdir(parents=True)
            s = stem(city, 0)
            ramp = np.linspace(0, 255, W, dtype=np.float32)
            image = np.stack([np.broadcast_to(ramp, (H, W)), np.full((H, W), 40.0 * k), np.zeros((H, W))], -1)
            Image.fromarray(image.astype(np.uint8)).save(image_dir / f"{s}_leftImg8bit.png", compress_level=1)
            ids = np.broadcast_to(ID_OF_COLUMN, (H, W)).copy()
            ids[: H // 2, : W // 2] = 7 if k == 0 else 26  # road, or car, in the top-left quarter
            Image.fromarray(ids).save(label_dir / f"{s}_gtFine_labelIds.png", compress_level=1)
            # the other files of gtFine: the loader must take the label ids only
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(label_dir / f"{s}_gtFine_color.png")
            Image.fromarray(np.full((8, 8), 26000, np.uint16)).save(label_dir / f"{s}_gtFine_instanceIds.png")
            (label_dir / f"{s}_gtFine_polygons.json").write_text(json.dumps({"imgHeight": H, "imgWidth": W}))
    (root / "license.txt").write_text("The Cityscapes Dataset ...\n")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    write_tree(root)
    return root


def test_label_ids_map_to_train_ids_by_the_official_table(tree: Path, tmp_path: Path) -> None:
    spec = DataSpec(name="cityscapes", root=str(tree), cache_dir=str(tmp_path / "cache"))
    val = data.load(spec, "val", 1.0)  # native: nothing resized
    assert len(val) == 2 and val.labels.shape == (2, H, W)
    train_id = {lb.id: (lb.trainId if 0 <= lb.trainId < 255 else 255) for lb in cityscapes_labels if lb.id >= 0}
    bottom = val.labels[0, H - 1]  # below the painted quarter: every id's band
    assert bottom.tolist() == [train_id[int(i)] for i in ID_OF_COLUMN]
    # the examples a reader checks by eye: road 7 → 0, car 26 → 13, unlabeled 0 → 255, bicycle 33 → 18
    assert (val.labels[0, 0, 0], val.labels[1, 0, 0]) == (0, 13)  # frankfurt's road, lindau's car
    assert (bottom[0], bottom[-1]) == (255, 18)
    assert sorted(set(np.unique(val.labels).tolist()) - {255}) == list(range(19))
    # the train split at a proxy scale: its two cities, sorted by file name
    train = data.load(spec, "train", 1 / 32)
    assert len(train) == 2 and train.images.shape == (2, 32, 64, 3)
    assert int(train.images[1, 0, 0, 1]) == 40  # bochum (second city) has green 40


def _run(tree: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        str(ROOT / "spaces" / "ndnet.yaml"),
        "--storage",
        f"sqlite:///{tmp_path / 'c.db'}",
        "--trials",
        "1",
        "-q",
        "--set",
        "data.name=cityscapes",
        "--set",
        f"data.root={tree}",
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
        "--set",
        "proxy.scale=0.03125",
        "--set",
        "proxy.iterations=1",
        "--set",
        "proxy.batch=2",
        "--set",
        "target.input=[1,3,64,128]",
        "--set",
        "target.repeats=1",
        "--set",
        "target.warmup=0",
        "--set",
        "target.max_seconds=1",
        *extra,
    ]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.slow
def test_run_on_the_tree(tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(_run(tree, in_tmp)) == 0, capsys.readouterr().err
    (trial,) = optuna.load_study(study_name="ndnet", storage=f"sqlite:///{in_tmp / 'c.db'}").get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert len(trial.user_attrs["iou_per_class"]) == 19 and 0 <= trial.user_attrs["miou"] <= 1


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str], *parts: str) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("archsearch: error: "), err
    assert all(p in err for p in parts), err
    assert "Traceback" not in captured.out + captured.err


def _copy(tree: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(tree, to)
    return to


def test_missing_label_file_is_one_line(tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _copy(tree, in_tmp / "cs")
    (root / "gtFine/val/lindau" / f"{stem('lindau', 0)}_gtFine_labelIds.png").unlink()
    _one_line_exit_2(_run(root, in_tmp), capsys, "data.root: ", "lindau_000000_000019_gtFine_labelIds.png is missing")
    assert not (in_tmp / "c.db").exists()  # nothing trained, no study made


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_one_line(tree: Path, in_tmp: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    root = _copy(tree, in_tmp / "cs")
    image = root / "leftImg8bit/train/bochum" / f"{stem('bochum', 0)}_leftImg8bit.png"
    whole = image.read_bytes()
    image.write_bytes(b"not a png at all" if damage == "garbage" else whole[: len(whole) // 2])
    _one_line_exit_2(_run(root, in_tmp), capsys, "bochum_000000_000019_leftImg8bit.png: cannot read the image")
    assert not (in_tmp / "c.db").exists()
    assert not list((in_tmp / "cache").rglob("*.npy"))  # no half-filled cache entry
