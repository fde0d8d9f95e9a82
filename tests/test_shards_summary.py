"""The lines a build and `inspect` print, exactly: counts, and reasons only where there are some."""

from shard_fixtures import bad_inputs, jpeg_bytes, run_shards_main, wnid

FLAGS = ["--split", "train", "--quiet", "--workers", "1", "--shard-size", "64kB"]


def summary_lines(capsys, src, out) -> tuple[str, str]:
    """The build's first line and inspect's rejected/re-encoded line."""
    code, printed, err = run_shards_main(capsys, "build", src, out, *FLAGS)
    assert code == 0, err
    code, inspected, err = run_shards_main(capsys, "inspect", out)
    assert code == 0, err
    [counts] = [line for line in inspected.splitlines() if line.startswith("  rejected:")]
    return printed.splitlines()[0], counts


def test_counts_end_the_line_or_are_followed_by_their_reasons(tmp_path, capsys):
    clean = tmp_path / "clean" / wnid(0)
    clean.mkdir(parents=True)
    for n in range(3):
        (clean / f"{n}.JPEG").write_bytes(jpeg_bytes(n))
    built, inspected = summary_lines(capsys, clean.parent, tmp_path / "clean-out")
    assert built == "train: 3 images in = 3 written + 0 rejected; 0 re-encoded"  # no space after
    assert inspected == "  rejected: 0; re-encoded: 0"

    mixed = tmp_path / "mixed" / wnid(0)
    mixed.mkdir(parents=True)
    for n in range(2):
        (mixed / f"{n}.JPEG").write_bytes(jpeg_bytes(n))
    cases = bad_inputs()
    for name in ("cmyk.JPEG", "grey.JPEG", "empty.JPEG"):
        (mixed / name).write_bytes(cases[name][0])
    built, inspected = summary_lines(capsys, mixed.parent, tmp_path / "mixed-out")
    assert built == "train: 5 images in = 4 written + 1 rejected; 2 re-encoded (1 CMYK JPEG, 1 L JPEG)"
    assert inspected == "  rejected: 1 (1 empty file); re-encoded: 2 (1 CMYK JPEG, 1 L JPEG)"


def test_a_split_mostly_rejected_ends_with_a_warning(tmp_path, capsys):
    """Inputs of which as many are rejected as written (a labels file covering a few images did
    this with exit 0 and one count among others): a warning line says so; fewer rejections do not."""
    folder = tmp_path / "src" / wnid(0)
    folder.mkdir(parents=True)
    (folder / "0.JPEG").write_bytes(jpeg_bytes(0))
    for n in range(2):
        (folder / f"empty{n}.JPEG").write_bytes(b"")
    code, printed, err = run_shards_main(capsys, "build", tmp_path / "src", tmp_path / "out", *FLAGS)
    assert code == 0, err
    assert printed.splitlines()[0] == "train: 3 images in = 1 written + 2 rejected; 0 re-encoded"
    assert ("warning: 2 of 3 inputs were rejected, as many as were written or more: check the reasons above "
            "before training on this split (--strict refuses any rejection)") in printed.splitlines()
    (folder / "1.JPEG").write_bytes(jpeg_bytes(1))
    (folder / "2.JPEG").write_bytes(jpeg_bytes(2))
    code, printed, err = run_shards_main(capsys, "build", tmp_path / "src", tmp_path / "out2", *FLAGS)
    assert code == 0 and "warning" not in printed, err


def test_a_class_without_images_is_a_warning(tmp_path, capsys):
    """An empty class folder became a class with 0 images without a word (ImageFolder refuses it)."""
    src = tmp_path / "src"
    for c in (0, 2):
        (src / wnid(c)).mkdir(parents=True)
        (src / wnid(c) / "0.JPEG").write_bytes(jpeg_bytes(c))
    (src / wnid(1)).mkdir()
    (src / wnid(3)).mkdir()
    (src / wnid(3) / "empty.JPEG").write_bytes(b"")  # its only image rejected
    code, printed, err = run_shards_main(capsys, "build", src, tmp_path / "out", *FLAGS)
    assert code == 0, err
    assert (f"warning: 2 of 4 classes have no image in this split: {wnid(1)}, {wnid(3)} (an empty class folder, "
            "or all its images rejected?)") in printed.splitlines()
    (src / wnid(1) / "0.JPEG").write_bytes(jpeg_bytes(1))
    (src / wnid(3) / "1.JPEG").write_bytes(jpeg_bytes(3))
    code, printed, err = run_shards_main(capsys, "build", src, tmp_path / "out2", *FLAGS)
    assert code == 0 and "classes have no image" not in printed, err



def test_a_split_build_says_at_merge_which_classes_have_no_image(tmp_path, capsys):
    # A part holds some shards only, so its summary cannot tell: merge's line said nothing either.
    src = tmp_path / "src"
    for c in range(3):
        (src / wnid(c)).mkdir(parents=True)
        for n in range(2 if c != 1 else 0):
            (src / wnid(c) / f"{n}.JPEG").write_bytes(jpeg_bytes(c * 10 + n))
    for part in ("0", "1"):
        code, printed, err = run_shards_main(capsys, "build", src, tmp_path / "out", *FLAGS, "--num-parts", "2",
                                             "--part-id", part)
        assert code == 0 and "classes have no image" not in printed, err
    code, printed, err = run_shards_main(capsys, "merge", tmp_path / "out")
    assert code == 0, err
    assert printed.splitlines()[-1] == (f"warning: 1 of 3 classes have no image in this split: {wnid(1)} (an empty "
                                        "class folder, or all its images rejected?)")
