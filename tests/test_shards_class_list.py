"""A class list given up front (``--labels`` or ``--classes``) that lacks a class of SRC is one
clear error, for folder and streamed (tar) sources alike."""

from __future__ import annotations

import pytest

from shard_fixtures import jpeg_bytes, make_folder_tar, make_imagefolder, make_tar_of_tars, wnid, write_loc_csv
from shards.cli import main


@pytest.mark.parametrize("layout", ["folder", "tar of folders", "tar of class tars"])
def test_labels_without_a_class_of_src_is_an_error(tmp_path, capsys, layout):
    files = {f"{wnid(c)}/img_{c}_{n}.JPEG": jpeg_bytes(c * 10 + n) for c in range(3) for n in range(2)}
    if layout == "folder":
        make_imagefolder(tmp_path / "src", num_classes=3, per_class=2)
        src = tmp_path / "src"
    elif layout == "tar of folders":
        src = make_folder_tar(tmp_path / "src.tar", files)
    else:
        src = make_tar_of_tars(tmp_path / "src.tar", files)
    # The label file's classes are two others: none of SRC's folders is among them.
    labels = write_loc_csv(tmp_path / "LOC_val_solution.csv", {"x_1": wnid(900), "x_2": wnid(901)})
    capsys.readouterr()
    code = main(["build", str(src), str(tmp_path / "out"), "--split", "val", "--labels", str(labels), "--quiet",
                 "--workers", "1", "--shard-size", "64kB"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert wnid(0) in err and "LOC_val_solution.csv" in err
    assert not (tmp_path / "out" / "val.json").exists()
