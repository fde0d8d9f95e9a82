"""bench/gpu_suite.py, the one command for every GPU check: its CPU smoke run end to end (every
section and row in the table printed last and in the results file), the rows it gives where no GPU
is, and its kernel check, whose float64 reference is held against the naive per-pixel loop of
test_mix_kernel and which must catch kernels broken on purpose."""

from __future__ import annotations

import dataclasses
import math
import random
import re
import sys
from pathlib import Path

import pytest
import torch
from processes import run_process
from test_data_color import official
from test_mix_kernel import naive_mix

from pipeline.data.color import ColorAugment
from pipeline.mix.reference import mix_reference

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import gpu_suite  # noqa: E402

# Every row the smoke run must show, by section (the same names as on a GPU).
SMOKE_ROWS = {
    "kernel": ["max error vs float64, float32 out", "max error vs float64, bfloat16 out",
               "max error vs float64, soft targets", "output elements left NaN", "cases checked",
               "kernel bandwidth, CutMix per batch", "kernel time, CutMix per batch",
               "kernel bandwidth, CutMix per batch (per-value masked loads, block 1024)",
               "kernel time, CutMix per batch (per-value masked loads, block 1024)",
               "kernel bandwidth, CutMix per sample", "kernel time, CutMix per sample",
               "kernel bandwidth, CutMix per sample (per-value masked loads, block 1024)",
               "kernel time, CutMix per sample (per-value masked loads, block 1024)",
               "kernel bandwidth, CutMix per batch, colour maps fused",
               "kernel time, CutMix per batch, colour maps fused",
               "colour maps of a batch (draws' map, mean greys)",
               "colour step (unfused, float32) + kernel, vs maps + fused kernel",
               "copy of the same bytes (baseline)", "bytes moved per launch"],
    "host": ["kernel alone, back to back", "host side of a step, CutMix per batch",
             "whole apply_mix step, CutMix per batch", "host side of a step, CutMix per sample",
             "whole apply_mix step, CutMix per sample"],
    "loader": ["DALI CPU, whole epochs", "DALI CPU, second half of epochs", "torch loader, whole epochs (baseline)",
               "DALI cpu decode + crop with the header check (vs without)"],
    "train": ["bare eager", "ours eager, synthetic", "ours eager, dali", "compile (first compiled step)",
              "bare compiled", "ours compiled, synthetic", "ours compiled, dali", "ours compiled, dali, paper colour",
              "compiled graphs (bare and ours)",
              "ours compiled, dali: absolute", "ours compiled, dali, 1 threads", "ours compiled, dali, 2 threads",
              "peak memory, bare compiled", "peak memory, ours compiled, dali"],
    "tests": ["CUDA-gated tests"],
}


def parse_table(text: str) -> list[dict]:
    """The rows of the table that ends `text`, as dicts keyed by column name (columns found from the header)."""
    lines = text.rstrip("\n").splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("section  name"))
    header = lines[start]
    names = header.split()
    starts = [header.index(name) for name in names] + [None]
    return [{name: line[starts[i]:starts[i + 1]].strip() for i, name in enumerate(names)}
            for line in lines[start + 2:]]


@pytest.mark.slow
def test_cpu_smoke_run_shows_every_section_and_row(tmp_path):
    out = tmp_path / "gpu.txt"
    command = [sys.executable, "bench/gpu_suite.py", "--cpu-smoke", "--dali-threads", "1,2", "--out", str(out)]
    done = run_process(command, timeout=600, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    written = out.read_text()
    table = written[written.index("section  name"):]
    assert done.stdout.endswith(table)  # the table is printed last, as written
    rows = parse_table(written)
    assert {section: [row["name"] for row in rows if row["section"] == section] for section in SMOKE_ROWS} == SMOKE_ROWS
    # Correctness is judged on the CPU too (the Triton interpreter); timings are plumbing only.
    assert {row["result"] for row in rows} <= {"pass", "smoke", "-"}, [row for row in rows if row["result"] == "fail"]
    judged = [row["name"] for row in rows if row["result"] == "pass"]
    assert judged[:4] == SMOKE_ROWS["kernel"][:4] and "compiled graphs (bare and ours)" in judged
    # Every node id it selected is CUDA-gated: on this CPU all of them skip, none passes or fails.
    (tests,) = [row for row in rows if row["section"] == "tests"]
    assert re.fullmatch(r"\d+ skipped in [\d.]+ s", tests["value"]), tests
    assert tests["unit"] == f"{len(gpu_suite.cuda_test_ids(REPO / 'tests'))} ids"
    header = written[: written.index("section  name")]
    assert f"# python bench/gpu_suite.py --cpu-smoke --dali-threads 1,2 --out {out}" in header
    assert re.search(r"# \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  device: cpu smoke", header)
    assert re.search(r"torch \S+ .*triton \S+, DALI \d", header) and "CPU SMOKE RUN" in header
    covered = re.search(r"# kernel, cases by kind: (.*)", header).group(1)
    for kind in ("cutmix", "mixup", "cutout", "none", "per batch", "per sample", "uint8 in", "float in",
                 "float32 out", "bfloat16 out", "channels_last", "contiguous", "colour maps", "no colour"):
        assert re.search(rf"(^|, ){kind} [1-9]", covered), (kind, covered)


def test_without_a_gpu_it_refuses_rather_than_skip_every_section(tmp_path):
    """A table of "skipped: no CUDA device" rows with exit 0 (written into bench/results/) would pass
    for a GPU run, e.g. on a machine whose driver is older than torch's CUDA, that measured nothing."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the sections run")
    out = tmp_path / "gpu.txt"
    done = run_process([sys.executable, "bench/gpu_suite.py", "--out", str(out)], timeout=300, cwd=REPO,
                       capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr[-3000:]
    assert re.fullmatch(r"error: torch sees no CUDA device \(.+\): nothing would be measured; --cpu-smoke runs "
                        r"every section's plumbing on the CPU\n", done.stderr), done.stderr
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--dali-threads", "abc"], "--dali-threads: expected whole numbers separated by commas (e.g. 2,4,8), got 'abc'"),
    (["--dali-threads", "2,0"], "--dali-threads: must be at least 1, got 2,0"),
    (["--threads", "0"], "--threads: must be at least 1, got 0"),
    (["--time-budget", "-5"], "--time-budget: must be a positive number of seconds, got -5.0"),
    (["--time-budget", "nan"], "--time-budget: must be a positive number of seconds, got nan"),
    (["--sections", ""], "--sections: none given; choose from kernel,host,loader,train,tests"),
    (["--sections", "kernel,gpu"], "--sections: unknown ['gpu']; choose from kernel,host,loader,train,tests"),
])
def test_bad_options_are_one_error_line_before_any_work(flags, message, capsys):
    with pytest.raises(SystemExit) as exited:
        gpu_suite.parse_args(flags)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.splitlines()[-1].endswith(f": error: {message}"), err


def test_a_run_cut_short_keeps_its_sections_beside_the_results_file(tmp_path, monkeypatch, capsys):
    """Written after each section into OUT's .partial twin (a run killed by its time limit on a
    lent GPU kept nothing, as the table was written last), never over a complete OUT."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # main sets it for --cpu-smoke: undone after the test
    out = tmp_path / "gpu.txt"
    out.write_text("an earlier complete run\n")
    partial = tmp_path / "gpu.partial.txt"

    def cut_after_the_kernel(suite, after):
        after([gpu_suite.measured("kernel", "cases checked", 3)], {"kernel": 1.0})
        raise KeyboardInterrupt  # the time limit's kill

    monkeypatch.setattr(gpu_suite, "run_sections", cut_after_the_kernel)
    with pytest.raises(KeyboardInterrupt):
        gpu_suite.main(["--cpu-smoke", "--out", str(out)])
    assert out.read_text() == "an earlier complete run\n"
    kept = partial.read_text()
    assert "# UNFINISHED: written after each section; still to run: host, loader, train, tests" in kept
    assert [row["name"] for row in parse_table(kept)] == ["cases checked"]

    def whole(suite, after):
        rows, seconds = [gpu_suite.measured("kernel", "cases checked", 3)], {name: 1.0 for name in gpu_suite.SECTIONS}
        after(rows, seconds)
        return rows, seconds

    monkeypatch.setattr(gpu_suite, "run_sections", whole)
    assert gpu_suite.main(["--cpu-smoke", "--out", str(out)]) == 0
    assert not partial.exists() and "UNFINISHED" not in out.read_text()
    assert [row["name"] for row in parse_table(out.read_text())] == ["cases checked"]


@pytest.mark.parametrize("kind", ["folder", "under a file"])
def test_an_out_that_cannot_be_written_is_refused_before_any_section(kind, tmp_path, monkeypatch, capsys):
    """Found when the first section's table was written: a traceback after 100 s here, after
    minutes of a lent GPU's time there (walkthrough)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # main sets it for --cpu-smoke: undone after the test
    monkeypatch.setattr(gpu_suite, "run_sections", lambda *args: pytest.fail("a section ran"))
    if kind == "folder":
        out = tmp_path / "gpu"
        out.mkdir()
        problem = f"{out} is a folder; give a file"
    else:
        (tmp_path / "file").write_text("a file\n")
        out, problem = tmp_path / "file" / "gpu.txt", f"{tmp_path / 'file'} is a file, not a folder"
    assert gpu_suite.main(["--cpu-smoke", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: --out {out}: {problem}\n"


def suite_case(seed: str, **overrides) -> gpu_suite.MixCase:
    options = dict(device="cpu", batch=5, height=9, width=13, mode="mixed", per="elem", source="uint8",
                   out_dtype=torch.float32, memory_format=torch.channels_last, num_classes=7, label_smoothing=0.1)
    return gpu_suite.make_case(random.Random(seed), **{**options, **overrides})


@pytest.mark.parametrize("source", ["uint8", "float32", "bfloat16"])
@pytest.mark.parametrize("mode,per", [("mixed", "elem"), ("cutmix", "batch"), ("mixup", "batch"),
                                      ("cutout", "elem"), ("none", "batch")])
def test_float64_reference_equals_the_naive_loop(source, mode, per):
    case = suite_case(f"{source}-{mode}-{per}", source=source, mode=mode, per=per)
    images = case.images.permute(0, 3, 1, 2) if source == "uint8" else case.images
    expected = naive_mix(images, case.labels, modes=case.modes, lam=case.lam, boxes=case.boxes, partner=case.partner,
                         from_uint8=source == "uint8")
    for got, want in zip(gpu_suite.reference_mix(case), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("source", ["uint8", "float32"])
def test_float64_reference_with_colour_equals_their_colour_then_the_naive_loop(source):
    """The reference's colour maps against the official code's classes (tests/test_data_color.py)
    applied to each image, then the naive loop; the maps are the recipe's (ColorAugment.maps)."""
    case = suite_case(f"colour-{source}", source=source)
    uint8_images = case.images if source == "uint8" else \
        (case.images.permute(0, 2, 3, 1).double() * 255).round().to(torch.uint8)
    if source != "uint8":  # float images that are whole uint8 steps, so both views hold the same pixels
        case = dataclasses.replace(case, images=uint8_images.permute(0, 3, 1, 2).float() / 255)
    augment = ColorAugment(jitter=0.4, lighting_std=0.1, seed=3, rank=0, device="cpu")
    draw = augment.draw(len(case.labels))
    case = dataclasses.replace(case, color=augment.maps(uint8_images, draw))
    coloured = torch.stack([torch.from_numpy(official(image.numpy(), draw.weights[i].tolist(), (0, 1, 2),
                                                      draw.lighting[i].tolist()))
                            for i, image in enumerate(uint8_images)])
    expected = naive_mix(coloured, case.labels, modes=case.modes, lam=case.lam, boxes=case.boxes, partner=case.partner,
                         from_uint8=False)
    for got, want in zip(gpu_suite.reference_mix(case), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # the maps are float32


def cases() -> list[gpu_suite.MixCase]:
    return gpu_suite.random_cases(random.Random(11), 12, device="cpu")


def verdicts(rows: list[gpu_suite.Row]) -> dict[str, str]:
    return {row.name: row.status for row in rows if row.status in ("pass", "fail")}


def test_the_reference_backend_passes_the_kernel_check():
    rows = gpu_suite.check_correctness(mix_reference, cases())
    assert set(verdicts(rows).values()) == {"pass"} and len(verdicts(rows)) == 4
    assert [row.value for row in rows if row.name == "cases checked"] == [12]


def forgets_the_last_pixel(source, labels, *, out_images, **kwargs):
    mix_reference(source, labels, out_images=out_images, **kwargs)
    out_images[-1, :, -1, -1] = math.nan


def pastes_one_row_too_low(source, labels, *, resolved, **kwargs):
    rows = resolved.rows.copy()
    rows[:, :2] = (rows[:, :2] + 1).clip(max=resolved.height)
    mix_reference(source, labels, resolved=type(resolved)(codes=resolved.codes, rows=rows, height=resolved.height,
                                                          width=resolved.width), **kwargs)


def ignores_label_smoothing(source, labels, *, label_smoothing, **kwargs):
    mix_reference(source, labels, label_smoothing=0.0, **kwargs)


def truncates_to_bfloat16(source, labels, *, out_images, **kwargs):
    """Rounds toward zero (as Triton's interpreter does), not to nearest."""
    full = torch.empty_like(out_images, dtype=torch.float32)
    mix_reference(source, labels, out_images=full, **kwargs)
    if out_images.dtype == torch.bfloat16:
        full = (full.view(torch.int32) & ~0xFFFF).view(torch.float32)
    out_images.copy_(full)


def ignores_the_colour(source, labels, *, color, **kwargs):
    mix_reference(source, labels, color=None, **kwargs)


@pytest.mark.parametrize("broken,caught", [
    (forgets_the_last_pixel, "output elements left NaN"),
    (ignores_the_colour, "max error vs float64, float32 out"),
    (pastes_one_row_too_low, "max error vs float64, float32 out"),
    (ignores_label_smoothing, "max error vs float64, soft targets"),
    (truncates_to_bfloat16, "max error vs float64, bfloat16 out"),
])
def test_the_kernel_check_catches_a_broken_kernel(broken, caught):
    # The control for the test above: each bug fails its own row (and the row names the dtype's limit).
    assert verdicts(gpu_suite.check_correctness(broken, cases()))[caught] == "fail"


def test_cuda_gated_tests_are_found_by_their_markers():
    ids = gpu_suite.cuda_test_ids(REPO / "tests")
    assert {"tests/test_train_compile.py::test_compiled_run_on_cuda",
            "tests/test_loader_gpu_graph.py::test_mixed_decode_runs_on_the_gpu",
            "tests/test_train_no_sync.py::test_twenty_cuda_steps_under_sync_debug_mode_error",
            "tests/test_mix_host.py::test_cuda_mix_steps_under_sync_debug_mode_error"} <= set(ids)
    assert "tests/test_train_no_sync.py::test_the_counter_sees_the_syncs_it_is_meant_to_see" not in ids


@pytest.mark.parametrize("value,baseline,goal,status", [
    (9.0, 10.0, ("ratio", ">=", 0.85), "pass"),
    (8.0, 10.0, ("ratio", ">=", 0.85), "fail"),
    (60.0, None, ("value", "<=", 50), "fail"),
    (math.nan, None, ("value", "<=", 50), "fail"),
])
def test_goals_are_judged_on_the_value_or_the_ratio(value, baseline, goal, status):
    assert gpu_suite.measured("host", "x", value, baseline=baseline, goal=goal).status == status
    assert gpu_suite.measured("host", "x", value, baseline=baseline, goal=goal, judge=False).status == "smoke"


# The end of `pytest -v` killed by a timeout while in its last test (captured from pytest 9.2).
CUT_SHORT = """collecting ... collected 6 items

test_cut.py::test_passes PASSED                                          [ 16%]
test_cut.py::test_fails FAILED                                           [ 33%]
test_cut.py::test_skipped SKIPPED (x)                                    [ 50%]
test_cut.py::test_param[1] PASSED                                        [ 66%]
test_cut.py::test_param[2] PASSED                                        [ 83%]
test_cut.py::test_waits """


def test_a_test_run_cut_by_the_time_budget_still_says_what_ran():
    summary = gpu_suite.pytest_summary(CUT_SHORT, timed_out=True, timeout=12)
    assert summary == ("timed out after 12 s (time budget): 3 passed, 1 failed, 1 skipped; "
                       "cut in test_cut.py::test_waits")
    assert gpu_suite.pytest_summary(CUT_SHORT.rsplit("\n", 1)[0], timed_out=True, timeout=5).endswith(
        "3 passed, 1 failed, 1 skipped")  # cut between two tests
    finished = CUT_SHORT + "PASSED  [100%]\n\n===== 1 failed, 4 passed, 1 skipped in 3.21s =====\n"
    assert gpu_suite.pytest_summary(finished, timed_out=False, timeout=12) == "1 failed, 4 passed, 1 skipped in 3.21 s"
