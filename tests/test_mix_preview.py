"""`python -m pipeline.mix preview` on tiny shards built here with the project's builder (`python -m
shards build`), intact and damaged in the ways a copy or a disk damages them."""

import io
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset
from PIL import Image
from processes import run_process

from pipeline.mix.__main__ import main
from pipeline.mix.preview import caption, load_preview_batch
from shards.cli import main as shards_main

REPO = Path(__file__).resolve().parents[1]
# One colour per class; the classes are numbered in sorted name order (timm/torchvision), so
# a_red is 0 ... d_yellow is 3. Noise of +-20 around the colour makes each JPEG a few kB (two
# shards of the builder's smallest size, 64 kB) and averages out in the loaded pixels.
COLOURS = {"a_red": (200, 30, 30), "b_green": (30, 200, 30), "c_blue": (30, 30, 200), "d_yellow": (220, 220, 40)}
SIZES = [(120, 90), (75, 150), (99, 63)]  # (width, height): landscape, portrait, other
NUM_SAMPLES = len(COLOURS) * len(SIZES)


def noisy_image(colour, size, seed):
    pixels = np.asarray(colour) + np.random.default_rng(seed).integers(-20, 21, size=(size[1], size[0], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Shards of the 12 images, built once (in this process: one worker, no pool)."""
    root = tmp_path_factory.mktemp("preview")
    for name, colour in COLOURS.items():
        (root / "src" / name).mkdir(parents=True)
        for seed, size in enumerate(SIZES):
            noisy_image(colour, size, seed).save(root / "src" / name / f"{name}_{seed}.JPEG", quality=95)
    code = shards_main(["build", str(root / "src"), str(root / "shards"), "--split", "train", "--quiet",
                        "--shard-size", "64kB", "--workers", "1"])  # fmt: skip
    assert code == 0
    assert (root / "shards" / "train-000001.tar").exists(), "the damage tests need a second shard"
    return root / "shards"


@pytest.fixture
def shards_dir(pristine, tmp_path):
    """A copy of the shards that a test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "shards"))


def first_shard_samples(shards_dir):
    """The first shard's samples in stored order, read with tarfile: [(key, {extension: member})]."""
    with tarfile.open(shards_dir / "train-000000.tar") as archive:
        members = archive.getmembers()
    samples = {}
    for member in members:
        key, extension = member.name.split(".", 1)
        samples.setdefault(key, {})[extension] = member
    return list(samples.items())


def overwrite(path, offset, data):
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


def run_main(args, capsys):
    """main(argv) in this process: (exit code, stdout, stderr)."""
    code = main(["preview", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code, err, start):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), err


def test_loader_reads_labels_and_pixels(shards_dir):
    images, labels = load_preview_batch(shards_dir, split="train", batch_size=NUM_SAMPLES, size=16)
    assert images.dtype == torch.uint8 and images.shape == (NUM_SAMPLES, 16, 16, 3)
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    colours = list(COLOURS.values())
    for image, label in zip(images, labels):
        assert np.allclose(image.float().mean(dim=(0, 1)).numpy(), colours[label], atol=6)


@pytest.mark.parametrize(
    "options",
    [
        ["--mode", "cutmix"],
        ["--mode", "mixup", "--partner", "roll"],
        ["--mode", "cutout", "--cutout-size", "12"],
        ["--mode", "cutmix_or_mixup", "--per", "elem", "--label-smoothing", "0.1"],
        ["--mode", "cutmix_or_mixup", "--cutmix-alpha", "0.5", "--mixup-alpha", "0.3", "--switch-prob", "0.2"],
    ],
)
def test_preview_writes_a_grid(shards_dir, tmp_path, options):
    out = tmp_path / "grid" / "preview.png"
    assert main(["preview", str(shards_dir), "--out", str(out), "--batch-size", "6", "--size", "32", *options]) == 0
    with Image.open(out) as picture:
        width, height = picture.size
        # 4 columns by 2 rows of images with captions: a picture, not an empty canvas.
        assert width > 400 and height > 200
        assert np.asarray(picture.convert("L")).std() > 10


def test_module_entry_point(shards_dir, tmp_path):
    out = tmp_path / "grid.png"
    result = run_process(
        [sys.executable, "-m", "pipeline.mix", "preview", str(shards_dir), "--out", str(out), "--batch-size", "4"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.exists()


def test_help_and_argument_mistakes_answer_before_torch_is_loaded():
    """--help, a choice misspelt, sizes out of bounds and a feature-level mode: no torch import (3 s
    on a small machine)."""
    script = ("import sys; from pipeline.mix.__main__ import main\n"
              "for argv in (['preview', '--help'], ['preview', '.', '--mode', 'cutmx'],\n"
              "             ['preview', '.', '--size', '0'], ['preview', '.', '--batch-size', '65'],\n"
              "             ['preview', '.', '--mode', 'feature_cutmix'],\n"
              "             ['preview', '.', '--mode', 'cutout', '--cutout-size', '500']):\n"
              "    try:\n        code = main(argv)\n    except SystemExit as exit:\n        code = exit.code\n"
              "    print(code, file=sys.stderr)\n"
              "print('torch' in sys.modules)")
    done = run_process([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "False", done.stdout[-2000:] + done.stderr[-2000:]
    assert "usage: python -m pipeline.mix preview" in done.stdout and "1 to 64" in done.stdout
    codes = [line for line in done.stderr.splitlines() if not line.startswith(("usage", " "))]
    assert codes[0] == "0" and codes[1].startswith("error: argument --mode: invalid choice: 'cutmx'"), codes
    assert codes[2:] == ["2", "error: --size: must be >= 1, got 0", "2",
                         "error: --batch-size: at most 64 images in one grid, got 65", "2",
                         "error: --mode: feature_cutmix mixes a layer's feature maps, which a picture of images cannot "
                         "show; --mode cutmix shows the same box and lambda draw on the images", "2",
                         "error: --cutout-size: must be 1 to --size=160 pixels, got 500", "2"], codes


def test_caption_shows_label_weights():
    row = torch.tensor([0.0, 0.62, 0.0, 0.38])
    assert caption(row, mode="cutmix") == "cutmix\n1: 0.62 | 3: 0.38"
    smoothed = torch.tensor([0.025, 0.925, 0.025, 0.025])
    assert caption(smoothed, mode="none") == "none\n1: 0.93"
    # The split's class names, as the preview passes them (it showed indices only).
    assert caption(row, mode="cutmix", names=["ant", "bee", "cat", "dog"]) == "cutmix\nbee: 0.62 | dog: 0.38"
    # Two classes: the partner's weight is the row's minimum, not a smoothing floor (it was hidden,
    # the caption's weights summing to 0.84; walkthrough). Smoothed, a third class gives the floor.
    assert caption(torch.tensor([0.16, 0.84]), mode="cutmix", names=["red", "blue"]) == "cutmix\nblue: 0.84 | red: 0.16"
    assert caption(torch.tensor([0.2, 0.75, 0.05]), mode="cutmix") == "cutmix\n1: 0.75 | 0: 0.20"
    assert caption(torch.tensor([0.0, 1.0]), mode="cutmix") == "cutmix\n1: 1.00"  # a partner of its own class


@pytest.mark.parametrize(
    "options, name",
    [
        (["--cutmix-alpha", "0"], "cutmix_alpha"),
        (["--mode", "cutout"], "cutout_size"),
        (["--batch-size", "1"], "batch_size"),
        (["--batch-size", "40"], "batch_size"),
        (["--split", "val"], "shards_dir"),
        (["--partner", "flip", "--batch-size", "5"], "batch_size"),
        # Counts and sizes that make no picture (--columns 0 and -3 drew a grid anyway).
        (["--columns", "0"], "columns"),
        (["--columns", "-3"], "columns"),
        (["--batch-size", "0"], "batch_size"),
        (["--batch-size", "-2"], "batch_size"),
        (["--size", "0"], "size"),
        (["--size", "-5"], "size"),
        # Over the documented bound of 1024 (--size 100000 ran out of memory).
        (["--size", "1025"], "size"),
        (["--batch-size", "65"], "batch_size"),  # over the grid's bound of 64 (256 took 17 s to draw)
        (["--out", "grid.v1"], "out"),
        # Feature-level modes mix a layer's feature maps: they drew input CutMix / Mixup captioned as such.
        (["--mode", "feature_cutmix"], "mode"),
        (["--mode", "manifold_mixup"], "mode"),
        (["--mode", "manifold_mixup", "--cutout-size", "12"], "mode"),
        # A Cutout hole wider than the default --size 160 drew blank tiles (training refuses it).
        (["--mode", "cutout", "--cutout-size", "500"], "cutout_size"),
        (["--mode", "mixup", "--cutout-size", "0"], "cutout_size"),
        # An option the mode never reads drew as if it were not given.
        (["--mixup-alpha", "0.2"], "mixup_alpha"),
        (["--mode", "mixup", "--cutmix-alpha", "0.3"], "cutmix_alpha"),
        (["--mode", "cutout", "--cutout-size", "8", "--switch-prob", "0.9"], "switch_prob"),
        (["--mode", "none", "--prob", "0.5"], "prob"),
        (["--seed", "-1"], "seed"),  # numpy's "expected non-negative integer" named nothing
        (["--mode", "cutout", "--cutout-size", "8", "--partner", "roll"], "partner"),
    ],
)
def test_preview_errors_name_the_argument(shards_dir, tmp_path, capsys, options, name):
    code, out, err = run_main([shards_dir, "--out", tmp_path / "x.png", *options], capsys)
    option = "SHARDS_DIR" if name == "shards_dir" else f"--{name.replace('_', '-')}"  # as the user typed it
    assert_one_error_line(code, err, f"error: {option}:")
    assert not out and not (tmp_path / "x.png").exists()


def test_size_bound_is_inclusive_and_in_the_help(shards_dir, tmp_path, capsys):
    out = tmp_path / "big.png"
    assert run_main([shards_dir, "--out", out, "--size", "1024", "--batch-size", "2"], capsys)[0] == 0
    assert out.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["preview", "--help"])
    assert exit_info.value.code == 0
    assert "1 to 1024 pixels" in " ".join(capsys.readouterr().out.split())


def test_an_option_of_another_mode_is_refused_saying_which_modes_use_it(shards_dir, tmp_path, capsys):
    code, _, err = run_main([shards_dir, "--out", tmp_path / "x.png", "--mixup-alpha", "0.2"], capsys)
    assert_one_error_line(code, err, "error: --mixup-alpha: --mode cutmix does not use it (only mixup, "
                                     "cutmix_or_mixup, manifold_mixup do), so 0.2 would change nothing; give its "
                                     "default 1.0 or a mode that uses it")
    code, _, err = run_main([shards_dir, "--out", tmp_path / "x.png", "--mode", "cutout", "--cutout-size", "4",
                             "--mixup-alpha", "0.2", "--partner", "roll"], capsys)
    assert_one_error_line(code, err, "error: --mixup-alpha, --partner: --mode cutout uses none of them, so 0.2 and "
                                     "roll would change nothing; give their defaults (--mixup-alpha=1.0 "
                                     "--partner=permutation) or a mode that uses them")


def test_feature_modes_are_refused_naming_the_input_level_mode(shards_dir, tmp_path, capsys):
    for mode, shown, draw in [("feature_cutmix", "cutmix", "box and lambda"), ("manifold_mixup", "mixup", "lambda")]:
        code, out, err = run_main([shards_dir, "--out", tmp_path / "x.png", "--mode", mode], capsys)
        assert_one_error_line(code, err, f"error: --mode: {mode} mixes a layer's feature maps, ")
        assert f"--mode {shown} shows the same {draw} draw on the images" in err
        assert not out and not (tmp_path / "x.png").exists()


def test_cutout_size_bound_is_the_image_side(shards_dir, tmp_path, capsys):
    options = ["--mode", "cutout", "--size", "32", "--batch-size", "2"]
    code, _, err = run_main([shards_dir, "--out", tmp_path / "x.png", *options, "--cutout-size", "33"], capsys)
    assert_one_error_line(code, err, "error: --cutout-size: must be 1 to --size=32 pixels, got 33")
    assert not (tmp_path / "x.png").exists()
    # As training (mix.cutout_size at most data.image_size): a hole the image's own side is allowed.
    assert run_main([shards_dir, "--out", tmp_path / "x.png", *options, "--cutout-size", "32"], capsys)[0] == 0
    assert (tmp_path / "x.png").exists()


def test_output_folder_gets_the_default_name(shards_dir, tmp_path, capsys):
    folder = tmp_path / "previews"
    folder.mkdir()
    code, out, _ = run_main([shards_dir, "--out", folder, "--batch-size", "2", "--size", "16"], capsys)
    assert code == 0
    assert out == f"wrote {folder / 'mix_preview.png'}\n"
    assert (folder / "mix_preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["previews", "shards"]  # no previews.png beside it


def test_output_path_with_a_trailing_slash_is_a_folder(shards_dir, tmp_path, capsys):
    folder = tmp_path / "new" / "previews"  # not there yet: the slash says what it is meant to be
    code, out, _ = run_main([shards_dir, "--out", f"{folder}/", "--batch-size", "2", "--size", "16"], capsys)
    assert code == 0 and out == f"wrote {folder / 'mix_preview.png'}\n"
    assert (folder / "mix_preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "new" / "previews.png").exists()


def test_output_name_without_suffix_is_reported_with_it(shards_dir, tmp_path, capsys):
    code, out, _ = run_main([shards_dir, "--out", tmp_path / "grid", "--batch-size", "2", "--size", "16"], capsys)
    assert code == 0
    assert out == f"wrote {tmp_path / 'grid.png'}\n"
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "grid").exists()


def test_pgf_without_latex_is_refused_before_the_shards_are_read(shards_dir, tmp_path, capsys, monkeypatch):
    """matplotlib lists pgf among its formats but runs xelatex to write one: without it, a
    RuntimeError traceback once the grid was drawn (walkthrough)."""
    import pipeline.mix.preview as preview

    monkeypatch.setattr(preview.shutil, "which", lambda name: None)  # no LaTeX here, wherever this runs
    code, _, err = run_main([shards_dir, "--out", tmp_path / "grid.pgf", "--batch-size", "2"], capsys)
    assert_one_error_line(code, err, f"error: --out: {tmp_path / 'grid.pgf'}: .pgf is not a picture format "
                                     "matplotlib writes here (")
    listed = err.strip().rsplit("(", 1)[1].rstrip(")").split(", ")  # matplotlib's list, by its version
    assert "png" in listed and "svg" in listed and "pgf" not in listed
    assert not (tmp_path / "grid.pgf").exists()


def test_output_under_a_file_is_one_error_line(shards_dir, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    code, _, err = run_main([shards_dir, "--out", tmp_path / "taken" / "grid.png", "--batch-size", "2"], capsys)
    assert_one_error_line(code, err, f"error: --out: cannot write {tmp_path / 'taken' / 'grid.png'}")


def test_folder_without_a_manifest_is_refused(tmp_path, capsys):
    # Without <split>.json a shard that ends early cannot be told from a short one.
    with webdataset.TarWriter(str(tmp_path / "train-000000.tar")) as writer:
        for index in range(4):
            buffer = io.BytesIO()
            noisy_image((200, 30, 30), (40, 30), index).save(buffer, format="JPEG")
            writer.write({"__key__": f"{index:04d}", "jpg": buffer.getvalue(), "cls": b"0"})
    code, _, err = run_main([tmp_path, "--out", tmp_path / "x.png", "--batch-size", "2"], capsys)
    assert_one_error_line(code, err, f"error: SHARDS_DIR: {tmp_path / 'train.json'}: no manifest")


def test_truncated_shard_is_named(shards_dir, tmp_path, capsys):
    # Cut at the header of the first shard's third sample: tarfile ends there without a word, and
    # the preview showed the second shard's samples instead.
    tar = shards_dir / "train-000000.tar"
    (_, third), data = first_shard_samples(shards_dir)[2], tar.read_bytes()
    tar.write_bytes(data[: min(member.offset for member in third.values())])
    code, _, err = run_main([shards_dir, "--out", tmp_path / "x.png", "--batch-size", "6"], capsys)
    assert_one_error_line(code, err, f"error: SHARDS_DIR: {tar}: ")
    assert "the manifest says" in err and not (tmp_path / "x.png").exists()


def test_damaged_header_is_named_not_replaced_by_the_next_shard(shards_dir, tmp_path, capsys):
    # The same size (the manifest check passes): garbage over the third sample's first header.
    tar = shards_dir / "train-000000.tar"
    _, third = first_shard_samples(shards_dir)[2]
    overwrite(tar, min(member.offset for member in third.values()), b"\x17" * 512)
    code, _, err = run_main([shards_dir, "--out", tmp_path / "x.png", "--batch-size", "6"], capsys)
    assert_one_error_line(code, err, f"error: {tar}: ended after 2 of the ")
    assert "damaged" in err and not (tmp_path / "x.png").exists()


def test_garbage_jpeg_is_named(shards_dir, tmp_path, capsys):
    tar = shards_dir / "train-000000.tar"
    key, members = first_shard_samples(shards_dir)[1]
    overwrite(tar, members["jpg"].offset_data, b"x" * members["jpg"].size)
    code, _, err = run_main([shards_dir, "--out", tmp_path / "x.png", "--batch-size", "4"], capsys)
    assert_one_error_line(code, err, f"error: {tar}: sample {key} ")
    assert "--decode" in err and not (tmp_path / "x.png").exists()


def test_garbage_label_is_named(shards_dir, tmp_path, capsys):
    tar = shards_dir / "train-000000.tar"
    key, members = first_shard_samples(shards_dir)[1]
    overwrite(tar, members["cls"].offset_data, b"x" * members["cls"].size)
    code, _, err = run_main([shards_dir, "--out", tmp_path / "x.png", "--batch-size", "4"], capsys)
    assert_one_error_line(code, err, f"error: {tar}: sample {key}: label b'x' is not an ASCII decimal number: the "
                                     f"shard is damaged (python -m shards verify {shards_dir} finds every such shard)")


def test_damaged_shard_exits_2_with_one_line_from_the_shell(shards_dir, tmp_path):
    tar = shards_dir / "train-000000.tar"
    key, members = first_shard_samples(shards_dir)[0]
    overwrite(tar, members["jpg"].offset_data, b"x" * members["jpg"].size)
    result = run_process(
        [sys.executable, "-m", "pipeline.mix", "preview", str(shards_dir), "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith(f"error: {tar}: ")
    assert key in result.stderr


def test_label_smoothing_spreads_over_every_class_of_the_data_set(shards_dir, tmp_path, monkeypatch):
    """The share went to the classes of the batch alone (labels.max() + 1): two digits of ten
    showed 0.95 where training gives 0.9 + 0.1 / 10 = 0.91."""
    import pipeline.mix.preview as preview

    drawn = {}

    def recording_grid(mixed, targets, **kwargs):
        drawn["targets"] = targets
        return kwargs["out_path"]

    monkeypatch.setattr(preview, "draw_preview_grid", recording_grid)
    labels = load_preview_batch(shards_dir, split="train", batch_size=NUM_SAMPLES, size=8)[1].tolist()
    # The first samples, in the preview's order, up to just before the first of the last class.
    batch = labels.index(len(COLOURS) - 1)
    assert batch >= 2, "the fixture's order puts the last class first: pick another seed"
    assert main(["preview", str(shards_dir), "--out", str(tmp_path / "p.png"), "--batch-size", str(batch),
                 "--mode", "none", "--label-smoothing", "0.2"]) == 0
    # Hand-computed: 1 - 0.2 + 0.2 / 4 for the true class, 0.2 / 4 for each of the other three.
    expected = torch.full((batch, len(COLOURS)), 0.05)
    expected[torch.arange(batch), torch.tensor(labels[:batch])] = 0.85
    assert torch.allclose(drawn["targets"].float(), expected)
