"""What --help prints, read as a user reads it: the real commands in subprocesses."""

import os
import sys
from pathlib import Path

from processes import run_process

REPO = Path(__file__).resolve().parents[1]


def run(*command: str):
    # PYTHONPATH: a script outside the checkout (the console script below) imports this checkout's shards.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return run_process([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def help_text(*command: str) -> str:
    done = run(*command, "--help")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_build_examples_keep_their_line_continuations():
    lines = help_text("-m", "shards", "build").splitlines()
    for first, second in [
        ("python -m shards build ILSVRC2012_img_val.tar /data/inet --split val \\",
         "--labels ILSVRC2012_devkit_t12.tar.gz --classes /data/inet/train.json"),
        ("python -m shards build ILSVRC2012_img_val.tar /data/inet --split val --labels LOC_val_solution.csv \\",
         "--classes /data/inet/train.json [--boxes ILSVRC2012_bbox_val_v3.tgz]"),
    ]:
        at = [line.strip() for line in lines].index(first)  # the whole line, ending in its backslash
        assert lines[at + 1].strip() == second, lines[at:at + 2]


def test_build_description_names_every_kind_of_source():
    text = help_text("-m", "shards", "build")
    description = text[text.index("Build "):text.index("positional arguments")]
    for source in ("ImageNet", "CUB-200-2011", "CIFAR"):
        assert source in description, description


def test_help_shows_no_restructuredtext_markup():
    for command in (["-m", "shards"], ["-m", "shards.demo"]):
        text = help_text(*command)
        assert "``" not in text, (command, text)


def test_the_console_script_names_itself(tmp_path):
    # The launcher pip writes for `cutmix-shards = "shards.cli:main"` (pyproject.toml), byte for byte
    # but the interpreter line, run as pip's launcher runs.
    script = tmp_path / "cutmix-shards"
    script.write_text("# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom shards.cli import main\n"
                      "if __name__ == '__main__':\n"
                      "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
                      "    sys.exit(main())\n")
    assert help_text(str(script)).startswith("usage: cutmix-shards ")
    refused = run(str(script), "build")
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")
    assert refused.stderr.strip().endswith("(see cutmix-shards build --help)"), refused.stderr
    assert help_text("-m", "shards").startswith("usage: python -m shards ")
