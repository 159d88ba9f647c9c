"""Image–caption data: every source gives the same pairs, captions repeat and images hold several, batches go
through the processor; bad data (missing or unreadable images, captions that are not text, mismatched counts)
stops the run with one clear line before anything is written."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from accel_train import UserError
from accel_train.tasks.captions import ImageCaptionCollator, ImageCaptions, from_hf_dataset, read_pairs
from accel_train.tasks.vision import DIGIT_NAMES
from support import REPO, run_python
from support.multimodal import CAPTIONS, write_digit_files, write_tokenizer_files


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _pixels(pairs: ImageCaptions) -> list[bytes]:
    return [np.asarray(pairs[i]["image"]).tobytes() for i in range(len(pairs))]


def test_csv_json_jsonl_and_an_image_folder_give_the_same_pairs(tmp_path):
    pairs = read_pairs(write_digit_files(tmp_path, range(30)), "image_path", "caption", "digit", DIGIT_NAMES)
    assert len(pairs) == 30 and pairs[0]["image"].mode == "RGB" and pairs[0]["image"].size == (8, 8)
    assert pairs[0]["caption"] == "a handwritten digit zero" and pairs[0]["label"] == 0
    assert pairs.image_ids == list(range(30))  # 30 distinct images, 10 distinct captions: the same text, the same id
    first_seen = {caption: i for i, caption in enumerate(dict.fromkeys(pairs.captions))}
    assert pairs.caption_ids == [first_seen[c] for c in pairs.captions] and len(first_seen) == 10

    rows = _rows(tmp_path / "pairs.csv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    records = [{"file": str(tmp_path / r["image_path"]), "text": r["caption"], "digit": DIGIT_NAMES.index(r["digit"])}
               for r in rows]  # absolute paths, class indices
    (elsewhere / "records.json").write_text(json.dumps(records))
    (elsewhere / "lines.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (elsewhere / "columns.json").write_text(json.dumps({key: [r[key] for r in records] for key in records[0]}))
    folder = tmp_path / "folder"
    shutil.copytree(tmp_path / "images", folder)
    with open(folder / "metadata.csv", "w", newline="") as handle:  # the image-folder layout: names relative to it
        csv.writer(handle).writerows([["file", "text", "digit"]] + [[r["image_path"][7:], r["caption"], r["digit"]]
                                                                   for r in rows])
    for source in (elsewhere / "records.json", elsewhere / "lines.jsonl", elsewhere / "columns.json", folder):
        other = read_pairs(source, "file", "text", "digit", DIGIT_NAMES)
        assert other.captions == pairs.captions and other.caption_ids == pairs.caption_ids, source
        assert other.labels == pairs.labels and _pixels(other) == _pixels(pairs), source


def test_a_list_of_captions_per_image_gives_one_pair_per_caption(tmp_path):
    write_digit_files(tmp_path, range(3))
    records = [{"image": "images/0000.png", "caption": ["a zero", "the number zero"]},
               {"image": "images/0001.png", "caption": ["a one"]},
               {"image": "images/0002.png", "caption": "a zero"}]
    (tmp_path / "multi.json").write_text(json.dumps(records))
    pairs = read_pairs(tmp_path / "multi.json")
    assert pairs.captions == ["a zero", "the number zero", "a one", "a zero"]
    assert pairs.image_ids == [0, 0, 1, 2] and pairs.caption_ids == [0, 1, 2, 0]


def test_a_hub_style_dataset_and_the_collator(tmp_path):
    import datasets
    from PIL import Image
    from transformers import AutoProcessor

    images = [Image.fromarray(np.full((8, 8), 20 * i, np.uint8)) for i in range(4)]
    data = datasets.Dataset.from_dict({"img": images, "text": CAPTIONS[:4], "label": [0, 1, 2, 3]})
    data = data.cast_column("img", datasets.Image())
    pairs = from_hf_dataset(data, "img", "text", "label", DIGIT_NAMES)
    assert len(pairs) == 4 and pairs[2]["caption"] == CAPTIONS[2] and pairs[2]["label"] == 2
    assert np.asarray(pairs[3]["image"])[0, 0].tolist() == [60, 60, 60]

    write_tokenizer_files(tmp_path / "clip")
    collate = ImageCaptionCollator(AutoProcessor.from_pretrained(tmp_path / "clip"), max_length=5)
    batch = collate([pairs[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 8, 8) and batch["input_ids"].shape == (4, 5)
    assert batch["label"].tolist() == [0, 1, 2, 3] and batch["caption_id"].tolist() == [0, 1, 2, 3]
    assert (batch["input_ids"][:, -1] == 557).all()  # truncated captions keep their end token

    with pytest.raises(UserError, match=r"caption column `label` of the dataset holds Value\('int64'\), not text"):
        from_hf_dataset(data, "img", "label")


def test_missing_images_are_named_and_counted(tmp_path):
    path = write_digit_files(tmp_path, range(10))
    (tmp_path / "images/0002.png").unlink()
    (tmp_path / "images/0005.png").unlink()
    with pytest.raises(UserError, match=r"2 of 10 image files named in .*pairs.csv are missing: "
                                        r"\S*images/0002.png, \S*images/0005.png\. Paths are read relative"):
        read_pairs(path, "image_path")


def test_unreadable_images_are_named(tmp_path):
    path = write_digit_files(tmp_path, range(6))
    (tmp_path / "images/0003.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"cannot read image \S*images/0003.png \(named in \S*pairs.csv\)"):
        read_pairs(path, "image_path")
    good = (tmp_path / "images/0004.png").read_bytes()
    (tmp_path / "images/0003.png").write_bytes(good[: len(good) // 2])  # a truncated file with a valid header
    with pytest.raises(UserError, match=r"cannot read image \S*images/0003.png"):
        read_pairs(path, "image_path")


def test_captions_that_are_not_text(tmp_path):
    path = write_digit_files(tmp_path, range(6))
    rows = _rows(path)
    with open(tmp_path / "numbers.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["image_path", "digit"]] + [[r["image_path"], i] for i, r in enumerate(rows)])
    with pytest.raises(UserError, match="caption column `digit` of .*numbers.csv holds numbers, not caption text"):
        read_pairs(tmp_path / "numbers.csv", "image_path", "digit")
    (tmp_path / "ints.json").write_text(json.dumps([{"image": r["image_path"], "caption": 7} for r in rows]))
    with pytest.raises(UserError, match=r"captions of .*ints.json must be text, but row 1 holds int \(7\)"):
        read_pairs(tmp_path / "ints.json")
    with pytest.raises(UserError, match=r"has no caption column `capton`. Did you mean `caption`\?"):
        read_pairs(path, "image_path", "capton")
    with pytest.raises(UserError, match="row 2 of .*empty caption"):
        ImageCaptions([tmp_path / r["image_path"] for r in rows[:2]], ["a seven", "  "])
    for name in ("latin1.csv", "latin1.json"):  # a spreadsheet's default export on many systems
        head = "image_path,caption\n" if name.endswith("csv") else '[{"image": "x.png", "caption": "'
        (tmp_path / name).write_bytes(head.encode() + "café noir".encode("latin-1"))
        with pytest.raises(UserError) as error:
            read_pairs(tmp_path / name, "image_path")
        assert str(error.value) == (
            f"{tmp_path / name} is not UTF-8 text (byte 0xe9 at position {len(head) + 3}): save it as UTF-8 (a "
            'spreadsheet\'s "CSV UTF-8"), or convert it, for example `iconv -f latin1 -t utf-8`.')


def test_image_and_caption_counts_must_match(tmp_path):
    path = write_digit_files(tmp_path, range(8))
    rows = _rows(path)
    (tmp_path / "columns.json").write_text(json.dumps({"image": [r["image_path"] for r in rows],
                                                       "caption": [r["caption"] for r in rows[:6]]}))
    with pytest.raises(UserError, match=r"columns of .*columns.json have different lengths "
                                        r"\(\{'image': 8, 'caption': 6\}\)"):
        read_pairs(tmp_path / "columns.json")
    with open(tmp_path / "gap.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["image_path", "caption"]] + [["" if i == 2 else r["image_path"], r["caption"]]
                                                                    for i, r in enumerate(rows)])
    with pytest.raises(UserError, match=r"1 row\(s\) of .*gap.csv have no image path \(rows 3\)"):
        read_pairs(tmp_path / "gap.csv", "image_path")
    with pytest.raises(UserError, match="has 8 images but 7 captions"):
        ImageCaptions([tmp_path / r["image_path"] for r in rows], [r["caption"] for r in rows[:7]])
    folder = tmp_path / "images"
    with open(folder / "metadata.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["file", "caption"]] + [[r["image_path"][7:], r["caption"]] for r in rows[:7]])
    with pytest.raises(UserError, match=r"holds 8 images but .*metadata.csv has 7 captions: 1 image\(s\) have none "
                                        r"\(0007.png\)"):
        read_pairs(folder, "file")


def test_bad_data_stops_the_example_before_any_output(tmp_path):
    """The example script exits 2 with one line naming the problem, and writes no run folder."""
    path = write_digit_files(tmp_path, range(10))
    (tmp_path / "images/0004.png").unlink()
    out = tmp_path / "run"
    proc = run_python([str(REPO / "examples/finetune_clip.py"), "--job.model", str(tmp_path / "no_model"),
                       "--job.train-file", str(path), "--job.validation-file", str(path),
                       "--job.image-column", "image_path",
                       "--output-dir", str(out)])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"accel_train: error: 1 of 10 image files named in {path} are missing: {tmp_path}/images/0004.png. "
        "Paths are read relative to the folder of the captions file, or absolute."]
    assert not out.exists()
