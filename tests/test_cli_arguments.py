"""Every command refuses an argument argparse cannot take (not a number, unknown, missing) in one
``error:`` line naming it and the --help to read, exit 2, no usage block; under several
processes only rank 0 says it."""

import sys
from pathlib import Path

import pytest

from processes import run_process
from pipeline.cli import parse_args as train_parse_args
from pipeline.evaluate.cli import main as evaluate_main
from pipeline.mix.__main__ import main as mix_main
from pipeline.plot import main as plot_main
from shards.cli import main as shards_main
from shards.demo import main as demo_main

REPO = Path(__file__).resolve().parents[1]

CASES = [
    (shards_main, ["build", "src", "out", "--workers", "x"],
     "error: argument --workers: invalid int value: 'x' (see python -m shards build --help)"),
    (shards_main, [], "error: the following arguments are required: command (see python -m shards --help)"),
    (train_parse_args, ["--bogus"], "error: unrecognized arguments: --bogus (see pipeline/train.py --help)"),
    (evaluate_main, [], "error: the following arguments are required: RUN_DIR|MODEL.safetensors "
                        "(see python -m pipeline.evaluate --help)"),
    (evaluate_main, ["compare"], "error: the following arguments are required: EVAL "
                                 "(see python -m pipeline.evaluate compare --help)"),
    (mix_main, ["preview", "shards", "--size", "big"],
     "error: argument --size: invalid int value: 'big' (see python -m pipeline.mix preview --help)"),
    (plot_main, ["a", "b"], "error: unrecognized arguments: b (see python -m pipeline.plot --help)"),
    (demo_main, ["a", "b"], "error: unrecognized arguments: b (see python -m shards.demo --help)"),
]
# An empty path, an unset shell variable's (`--out $OUT`), was Path(""): the current folder, where the
# command then built shards, wrote reports or pictures.
EMPTY = "an empty path (an unset shell variable?)"
CASES += [
    (shards_main, ["build", "src", "", "--split", "train"], f"error: argument OUT: {EMPTY} (see python -m shards build "
                                                              "--help)"),
    (shards_main, ["verify", ""], f"error: argument OUT: {EMPTY} (see python -m shards verify --help)"),
    (shards_main, ["build", "src", "out", "--split", "val", "--labels", ""],
     f"error: argument --labels: {EMPTY} (see python -m shards build --help)"),
    (train_parse_args, ["--config", ""], f"error: argument --config: {EMPTY} (see pipeline/train.py --help)"),
    (evaluate_main, ["run", "--shards", ""], f"error: argument --shards: {EMPTY} (see python -m pipeline.evaluate "
                                             "--help)"),
    (mix_main, ["preview", "shards", "--out", ""], f"error: argument --out: {EMPTY} (see python -m pipeline.mix "
                                                   "preview --help)"),
    (plot_main, ["run", "--out", ""], f"error: argument --out: {EMPTY} (see python -m pipeline.plot --help)"),
    (demo_main, [""], f"error: argument out: {EMPTY} (see python -m shards.demo --help)"),
]


@pytest.mark.parametrize("main, argv, line", CASES, ids=[f"{m.__module__}:{' '.join(a)}" for m, a, _ in CASES])
def test_a_refused_argument_is_one_error_line(main, argv, line, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert captured.err == line + "\n" and captured.out == ""


def test_only_rank_0_says_it(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_info:
        train_parse_args(["--bogus"])
    assert exit_info.value.code == 2 and capsys.readouterr().err == ""


def test_train_help_lists_every_key_the_recipes_set(capsys):
    """The keys were findable only in pipeline/config.py or an unknown-key error (walkthrough review).
    Reference: every section.key that a recipe under configs/ sets."""
    from pathlib import Path

    import yaml

    recipes = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    keys = {(section, key) for recipe in recipes for section, values in yaml.safe_load(recipe.read_text()).items()
            if section != "base" for key in values}
    with pytest.raises(SystemExit) as done:
        train_parse_args(["--help"])
    assert done.value.code == 0
    listed = capsys.readouterr().out.split("config keys (section.key=value;", 1)[1]
    sections, current = {}, None  # section -> its keys: "  section: a, b," lines, "    c, d" continuations
    for line in listed.splitlines()[1:]:
        if line.startswith("    "):
            sections[current] += [key.strip() for key in line.split(",") if key.strip()]
        elif line.startswith("  "):
            current, rest = line.strip().split(": ", 1)
            sections[current] = [key.strip() for key in rest.split(",") if key.strip()]
    assert len(recipes) > 30 and len(keys) > 40
    assert sorted(key for key in keys if key[1] not in sections.get(key[0], [])) == []


@pytest.mark.parametrize("argv", [
    ["run.progress=false", "--config", "r.yaml", "schedule.epochs=5", "--check"],
    ["--config", "r.yaml", "run.progress=false", "--check", "schedule.epochs=5"],
    ["--check", "run.progress=false", "schedule.epochs=5", "--config", "r.yaml"],
])
def test_train_overrides_may_come_before_between_or_after_the_options(argv):
    # `run.progress=false --config X schedule.epochs=5` was refused: "unrecognized arguments".
    args = train_parse_args(argv)
    assert (args.overrides, str(args.config), args.check) == (["run.progress=false", "schedule.epochs=5"], "r.yaml",
                                                              True)


@pytest.mark.parametrize("command, missing", [(["pipeline/train.py"], "torch"), (["-m", "shards", "--help"], "tqdm"),
                                              (["-m", "pipeline.evaluate", "WEIGHTS"], "torch"),
                                              (["-m", "shards.demo", "OUT"], "numpy"),
                                              (["-m", "shards.demo", "OUT"], "PIL"),
                                              (["-m", "pipeline.plot", "RUN"], "matplotlib"),
                                              (["-m", "pipeline.mix", "preview", "OUT"], "torch")])
def test_a_python_without_the_dependencies_says_so_in_one_line(command, missing, tmp_path):
    """A system ``python`` run instead of the environment's (the README's commonest mistake): one
    ``error:`` line naming the missing package and the way out, exit 2, not an import traceback.
    The dependency is hidden from a real interpreter (None in sys.modules: its import fails as a
    missing module does)."""
    weights = tmp_path / "model.safetensors"  # passes the evaluation's checks made before torch
    weights.write_bytes(b"")
    (tmp_path / "run").mkdir()  # a run folder with an epoch to plot
    (tmp_path / "run" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 2.5}\n')
    places = {"WEIGHTS": weights, "RUN": tmp_path / "run", "OUT": tmp_path / "out"}
    command = [str(places[part]) if part in places else part for part in command]
    script = ("import runpy, sys\n"
              f"sys.modules[{missing!r}] = None\n"
              f"sys.argv = {command!r}\n"
              "if sys.argv[0] == '-m':\n"
              "    sys.argv = sys.argv[1:]\n"
              "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
              "else:\n"
              "    runpy.run_path(sys.argv[0], run_name='__main__')\n")
    done = run_process([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines() == [
        f"error: this Python ({sys.executable}) has no {missing}, which the project needs: run the project's "
        "environment's python (source .venv/bin/activate after the README's install command)"]


def test_a_missing_part_of_an_installed_dependency_is_not_blamed_on_the_python():
    """Only a dependency that is really absent gets the one line: a missing submodule of an
    installed one (a broken install, a bug) or a module that is no dependency keeps its traceback."""
    from shards.errors import dependencies_required

    for name in ("torch.no_such_part", "no_such_package"):
        with pytest.raises(ModuleNotFoundError):
            with dependencies_required():
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
