"""Label-free validation (issue 20): agreement with a teacher on unlabelled frames, video input
through PyAV, YOLO-format labels, and the OTLabels camera frames in ../shared/data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_failure_behaviour import cli, refused

from cass_deploy.cli import main
from cass_deploy.config import FieldConfig
from cass_deploy.data.classes import CLASSES
from cass_deploy.data.factory import detect_format, load_dataset
from cass_deploy.data.frames import Frames, read_frames
from cass_deploy.data.synthetic import SyntheticRoadside
from cass_deploy.errors import InputError
from cass_deploy.evaluation.gates import Gates
from cass_deploy.evaluation.label_free import agreement_run, shared_vehicles
from cass_deploy.evaluation.validate import Deployed
from cass_deploy.model.interface import INPUT_NAME
from cass_deploy.reporting.report import build_report

OTLABELS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "otlabels-frames"
SIZE, GRID = (96, 160), (6, 10)


def _otlabels() -> Path:
    if not (OTLABELS / "images").is_dir():
        pytest.skip(f"the OTLabels frames are absent ({OTLABELS.resolve()} not found; see shared/data/README.md)")
    return OTLABELS


# --------------------------------------------------------------------------- a model that reads the truth


class TableRunner:
    """SPEC §6b outputs of a stand-in model: for each input image (looked up by its bytes) the boxes
    ``table`` holds for it, score 0.9, and ``keep`` as its keep mask (None: a dense model)."""

    def __init__(self, table: dict[bytes, tuple[np.ndarray, np.ndarray]], keep: np.ndarray | None = None):
        self.table, self.keep = table, keep

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def infer(self, feeds):
        x = feeds[INPUT_NAME]
        B, n = len(x), 100
        out = {
            "num_dets": np.zeros((B, 1), np.int32),
            "det_boxes": np.zeros((B, n, 4), np.float32),
            "det_scores": np.zeros((B, n), np.float32),
            "det_classes": np.zeros((B, n), np.int32),
        }
        for b in range(B):
            boxes, labels = self.table[_key(x[b])]
            k = min(len(boxes), n)
            out["num_dets"][b, 0] = k
            out["det_boxes"][b, :k], out["det_scores"][b, :k], out["det_classes"][b, :k] = boxes[:k], 0.9, labels[:k]
        if self.keep is not None:
            out["keep_mask"] = np.repeat(self.keep[None], B, 0)
        return out


def _key(chw: np.ndarray) -> bytes:
    return np.round(np.asarray(chw) * 255).astype(np.uint8).tobytes()


def _deployed(name, table, keep=None) -> Deployed:
    return Deployed(
        name, TableRunner(table, keep), SIZE, GRID, None, keep is not None, None, None, None, 3, None, CLASSES
    )


def _scenes(n=12):
    ds = SyntheticRoadside(n, split="val", seed=3, image_size=SIZE)
    items = [ds.get_numpy(i) for i in range(n)]
    frames = Frames("synthetic", [it[0] for it in items], [f"s{i}" for i in range(n)], [None] * n)
    return frames, [(it[1], it[2]) for it in items]


def _table(frames, dets):
    return {_key(im.transpose(2, 0, 1).astype(np.float32) / 255): d for im, d in zip(frames.images, dets)}


def _subset(gts, drop):
    """Per scene the truth without the objects ``drop(scene, index, box)`` names."""
    out = []
    for s, (boxes, labels) in enumerate(gts):
        keep = np.array([not drop(s, i, b) for i, b in enumerate(boxes)], bool).reshape(-1)
        out.append((boxes[keep], labels[keep]))
    return out


def _run(frames, teacher, deployed, **kw):
    return agreement_run(
        deployed,
        "T",
        teacher,
        frames,
        teacher_score=0.5,
        mode=None,
        fields=FieldConfig(),
        iou_thr=0.5,
        score_thr=0.3,
        gates=Gates(**kw),
        draw=2,
    )


def test_agreement_is_the_share_of_teacher_boxes_the_model_keeps_and_misses_of_both_are_invisible():
    frames, gts = _scenes()
    teacher_miss = lambda s, i, b: (s + i) % 5 == 0  # noqa: E731 - the teacher's own misses
    model_miss = lambda s, i, b: (s + i) % 3 == 0  # noqa: E731
    teacher = _subset(gts, teacher_miss)
    model = _subset(gts, lambda s, i, b: teacher_miss(s, i, b) or model_miss(s, i, b))
    run = _run(frames, _deployed("T", _table(frames, teacher)), _deployed("D", _table(frames, model)))
    # golden by counting: the model finds every teacher box except its own misses
    n_teacher = sum(len(b) for b, _ in teacher)
    n_kept = sum(len(b) for b, _ in model)
    a = run.result.by_field["all"]
    assert (a.n_gt, a.n_matched) == (n_teacher, n_kept)
    assert run.reference.by_field["all"].recall == 1.0  # the teacher agrees with itself
    d = run.drops["all"]
    assert math.isclose(d.point, 1 - n_kept / n_teacher) and d.lo <= d.point <= d.hi
    # the labelled drop counts objects over the truth; both miss some: the label-free one cannot see them
    n_gt = sum(len(b) for b, _ in gts)
    labelled = (n_teacher - n_kept) / n_gt
    assert labelled < d.point  # the ratio differs by the teacher's recall n_teacher / n_gt < 1
    assert math.isclose(d.point * n_teacher / n_gt, labelled)


def test_with_a_perfect_teacher_the_label_free_drop_is_the_labelled_drop_in_every_field():
    frames, gts = _scenes()
    near = FieldConfig().near_min * SIZE[0]
    model = _subset(gts, lambda s, i, b: b[3] >= near and i % 2 == 0)  # loses half the near field
    run = _run(frames, _deployed("T", _table(frames, gts)), _deployed("D", _table(frames, model)))
    for g in ("far", "mid", "near", "all"):
        ys = [b[:, 3] for b, _ in gts]
        ym = [b[:, 3] for b, _ in model]
        pick = {"far": lambda y: y < FieldConfig().far_max * SIZE[0], "near": lambda y: y >= near}.get(g)
        pick = pick or ((lambda y: (y >= FieldConfig().far_max * SIZE[0]) & (y < near)) if g == "mid" else None)
        n = sum(int(pick(y).sum()) if pick else len(y) for y in ys)
        k = sum(int(pick(y).sum()) if pick else len(y) for y in ym)
        assert run.result.by_field[g].n_gt == n
        assert math.isclose(run.drops[g].point, (n - k) / n)  # labelled drop of a perfect teacher
    assert run.drops["near"].point > 0.2 and run.drops["far"].point == 0.0


def test_a_class_map_renames_the_model_classes_for_the_pseudo_truth_and_the_agreement():
    frames, gts = _scenes(8)
    model = _subset(gts, lambda s, i, b: i % 2 == 1)
    plain = _run(frames, _deployed("T", _table(frames, gts)), _deployed("D", _table(frames, model)))
    names = ("vehicle", "lorry", "coach")  # the same classes under names no dataset uses
    teacher, deployed = _deployed("T", _table(frames, gts)), _deployed("D", _table(frames, model))
    teacher.class_names = deployed.class_names = names
    assert shared_vehicles(teacher, deployed) == set()  # unmapped: nothing to agree on
    teacher.class_map = deployed.class_map = {"vehicle": "car", "lorry": "truck", "coach": "bus"}
    assert shared_vehicles(teacher, deployed) == {0, 1, 2}
    mapped = _run(frames, teacher, deployed)
    for g in ("near", "all"):
        assert mapped.result.by_field[g].n_gt == plain.result.by_field[g].n_gt > 0
        assert mapped.drops[g].point == plain.drops[g].point
    assert 0 < plain.drops["all"].point < 1
    deployed.class_map = {"vehicle": "car", "lorry": None, "coach": None}  # only cars scored
    n_cars = sum(int((labels == CLASSES.index("car")).sum()) for _, labels in gts)
    assert _run(frames, teacher, deployed).result.by_field["all"].n_gt == n_cars


def test_the_json_says_agreement_never_recall_and_the_gate_applies_to_it(tmp_path):
    frames, gts = _scenes(8)
    keep = np.ones(GRID[0] * GRID[1], bool)
    keep[-GRID[1] :] = False  # the bottom row of patches dropped
    model = _subset(gts, lambda s, i, b: i % 2 == 0)
    run = _run(
        frames,
        _deployed("T", _table(frames, gts)),
        _deployed("D", _table(frames, model), keep),
        max_recall_drop=0.05,
        gate_on="point",
    )
    doc = run.to_dict()
    text = json.dumps(doc)
    assert "recall" not in text.lower()
    assert "agreement with teacher T" in text and doc["kind"] == "label-free"
    assert not run and any(c["status"] == "fail" for c in doc["gates"])
    assert doc["gates"][0]["name"] == "max_agreement_drop"
    assert run.result.by_field["near"].retention_mean < run.result.by_field["far"].retention_mean
    drawn = doc["camera_frames"]
    assert len(drawn) == 2 and drawn[0]["dropped_patches"] and drawn[0]["teacher_boxes"]
    assert drawn[0]["missed"] >= drawn[1]["missed"]
    (tmp_path / "validate-camera.json").write_text(text)
    html_path, _ = build_report(tmp_path)
    page = html_path.read_text()
    assert "Camera frames" in page and "agreement with teacher T" in page
    assert page.count("<img") == 2  # the two drawn frames


# --------------------------------------------------------------------------- video


def _video(path: Path, n: int = 12, rate: int = 10) -> Path:
    av = pytest.importorskip("av", reason="PyAV is not installed (pip install 'cass-deploy[video]')")
    with av.open(str(path), "w") as c:
        st = c.add_stream("mpeg4", rate=rate)
        st.width, st.height, st.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((SIZE[0], SIZE[1], 3), 20 * i, np.uint8), format="rgb24")
            for pkt in st.encode(frame):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


def test_video_frames_are_sampled_with_their_timestamps(tmp_path):
    v = _video(tmp_path / "v.mp4")
    every = read_frames(v, 100, every=4)
    assert every.names == ["frame 0", "frame 4", "frame 8"]
    assert every.timestamps == pytest.approx([0.0, 0.4, 0.8])
    fps = read_frames(v, 100, fps=2.5)
    assert fps.timestamps == pytest.approx([0.0, 0.4, 0.8])
    assert every.images[1].shape == (SIZE[0], SIZE[1], 3) and abs(int(every.images[1].mean()) - 80) < 8


def test_a_damaged_packet_is_reported_and_decoding_goes_on(tmp_path):
    data = bytearray(_video(tmp_path / "v.mp4").read_bytes())
    start = len(data) // 3
    data[start : start + 200] = b"\xff" * 200
    (tmp_path / "c.mp4").write_bytes(bytes(data))
    got = read_frames(tmp_path / "c.mp4", 100)
    assert got.failures and all("frame" in f and f["error"] for f in got.failures)
    assert 0 < len(got.images) < 12 + 1


def test_a_truncated_video_is_an_input_error_naming_file_and_frame(tmp_path):
    data = _video(tmp_path / "v.mp4").read_bytes()
    (tmp_path / "t.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.mp4.*frame 0"):
        read_frames(tmp_path / "t.mp4", 100)


# --------------------------------------------------------------------------- YOLO labels


def _yolo_set(root: Path, names: str | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (200, 100)).save(root / "images" / "a.png")
    Image.new("RGB", (200, 100)).save(root / "images" / "b.png")  # no label file: no objects
    (root / "labels" / "a.txt").write_text("2 0.5 0.5 0.2 0.4\n7 0.25 0.75 0.1 0.2\n0 0.9 0.1 0.05 0.1")
    if names:
        (root / "data.yaml").write_text(names)
    return root


def test_yolo_labels_are_read_with_the_coco_id_map(tmp_path):
    root = _yolo_set(tmp_path / "y")
    assert detect_format(root)[0] == "yolo"
    ds = load_dataset(root)
    a = ds[0]
    # cx cy w h normalised to 200x100 -> xyxy pixels: car (id 2), truck (id 7); the person (id 0) dropped
    assert a["boxes"].reshape(-1).tolist() == pytest.approx([80, 30, 120, 70, 40, 65, 60, 85])
    assert a["labels"].tolist() == [CLASSES.index("car"), CLASSES.index("truck")]
    assert len(ds) == 2 and ds[1]["boxes"].shape == (0, 4)


def test_yolo_class_names_from_data_yaml_and_an_explicit_map(tmp_path):
    root = _yolo_set(tmp_path / "y", "names: {0: bus, 2: van, 7: tree}\n")
    # by name: id 2 van -> car, id 7 tree dropped, id 0 bus -> bus
    assert load_dataset(root)[0]["labels"].tolist() == [CLASSES.index("car"), CLASSES.index("bus")]
    ds = load_dataset(root, class_map={"7": "bus", "2": None})
    assert ds[0]["labels"].tolist() == [CLASSES.index("bus")]


def test_a_bad_yolo_line_names_file_and_line(tmp_path):
    root = _yolo_set(tmp_path / "y")
    (root / "labels" / "a.txt").write_text("2 0.5 0.5 0.2 0.4\n2 0.5 0.5 0 0.4\n")
    with pytest.raises(InputError, match=r"a\.txt:2"):
        load_dataset(root)[0]


# --------------------------------------------------------------------------- the OTLabels camera frames


def _otlabels_vehicles(root: Path) -> int:
    """Boxes of COCO ids 2 / 5 / 7 in the label files, counted without the loader."""
    return sum(
        1
        for p in (root / "labels").glob("*.txt")
        for line in p.read_text().splitlines()
        if line.split() and line.split()[0] in ("2", "5", "7")
    )


def test_otlabels_frames_through_the_yolo_loader_and_validate(tiny_checkpoint, tmp_path, capsys):
    root = _otlabels()
    want = _otlabels_vehicles(root)
    ds = load_dataset(root)
    assert len(ds) == 17 and sum(len(ds[i]["labels"]) for i in range(len(ds))) == want
    rc, out, err = cli(
        ["validate", tiny_checkpoint, "--data", root, "--resize", "--images", 17, "--json", tmp_path / "v.json"], capsys
    )
    assert rc == 0, err
    res = json.loads((tmp_path / "v.json").read_text())["result"]
    assert res["by_field"]["all"]["n_gt"] == want and res["n_images"] == 17


def test_otlabels_frames_label_free_against_a_teacher(tmp_path):
    """The real frames, letterboxed into the model input, with a stand-in teacher that detects
    the labelled boxes: the pseudo truth is those boxes, back in the 800x600 frame."""
    root = _otlabels()
    frames = read_frames(root / "images", 17, allow_mixed=True)
    ds = load_dataset(root, image_size=SIZE, resize_mode="letterbox")
    table = {_key(ds[i]["image"].numpy()): (ds[i]["boxes"].numpy(), ds[i]["labels"].numpy()) for i in range(17)}
    teacher = _deployed("T", table)
    run = agreement_run(
        _deployed("D", table),
        "boxed",
        teacher,
        frames,
        teacher_score=0.5,
        mode="letterbox",
        fields=FieldConfig(),
        iou_thr=0.5,
        score_thr=0.3,
        gates=Gates(),
        draw=3,
    )
    assert run.result.by_field["all"].n_gt == _otlabels_vehicles(root)
    assert run.result.by_field["all"].recall == 1.0 and run.drops["all"].point == 0.0
    assert len(run.camera_frames) == 3 and run.camera_frames[0]["jpeg_base64"]


# --------------------------------------------------------------------------- bad input


def test_label_free_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (160, 96)).save(mixed / "a.png")
    Image.new("RGB", (100, 80)).save(mixed / "b.png")
    j = ["--json", tmp_path / "lf.json"]
    refused(["validate", tiny_checkpoint, "--data", tmp_path / "empty", *j], capsys, "no images", root=tmp_path)
    refused(["validate", tiny_checkpoint, "--data", mixed, *j], capsys, "mixed sizes", root=tmp_path)
    for flag, value in (("--teacher-score", "1"), ("--teacher-score", "0"), ("--every", "0")):
        with pytest.raises(SystemExit) as stop:  # argparse: usage error, exit 2
            main([str(a) for a in ["validate", tiny_checkpoint, "--data", mixed, flag, value, *j]])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and flag in err and "Traceback" not in err
    refused(
        ["validate", tiny_checkpoint, "--teacher", "dense", "--teacher-classes", "person,bicycle", *j],
        capsys,
        "share no vehicle class",
        root=tmp_path,
    )
    # --class-map on the label-free path: it reaches the model and the dense teacher (same class names)
    no_vehicles = ["--class-map", "car=none,truck=none,bus=none"]
    after = "after --class-map"
    refused(["validate", tiny_checkpoint, "--labels", "none", *no_vehicles, *j], capsys, after, root=tmp_path)
    refused(["validate", tiny_checkpoint, "--teacher", "dense", "--class-map", "lorry=car", *j], capsys, "'lorry'")
    assert not (tmp_path / "lf.json").exists()
