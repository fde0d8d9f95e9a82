"""The Triton kernel compiles for an H100 (sm_90) on a machine without a GPU.

The interpreter runs the kernel's Python, so it accepts things the compiler rejects (a plain
global read inside the kernel, a type mismatch in a branch). Compiling ahead of time with
Triton's bundled ptxas catches those here. It runs in a subprocess because the kernel tests set
TRITON_INTERPRET=1 for this process, and triton.jit picks the interpreter at import.
"""

import json
import os
import sys
from pathlib import Path

import pytest
from processes import run_process

REPO_ROOT = Path(__file__).resolve().parents[1]

COMPILE_SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pipeline.mix.triton_kernel import DEFAULT_BLOCK, _mix_kernel

out_type, source_type, dense, color = sys.argv[1], sys.argv[2], sys.argv[3] == "dense", sys.argv[4] == "color"
pointers = dict(source_ptr="*" + source_type, out_ptr="*" + out_type, targets_ptr="*fp32", labels_ptr="*i64",
                packed_ptr="*i32", scale_ptr="*fp32", shift_ptr="*fp32", color_ptr="*fp32")
integers = dict.fromkeys(["source_stride_n", "source_stride_c", "source_stride_h", "source_stride_w",
                          "out_stride_n", "out_stride_c", "out_stride_h", "out_stride_w", "num_classes"], "i32")
constants = dict(HEIGHT=224, WIDTH=224, CHANNELS=3, DENSE_NHWC=dense, BLOCK=DEFAULT_BLOCK, TILE_LOADS=True,
                 COLOR=color)
floats = {"off_value": "fp32", "on_minus_off": "fp32"}
signature = {**pointers, **integers, **floats, **dict.fromkeys(constants, "constexpr")}
names = _mix_kernel.arg_names
# What launching with a 128x224x224x3 batch specializes: 16-byte aligned pointers and batch strides.
aligned = list(pointers) + ["source_stride_n", "out_stride_n"]
attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
source = ASTSource(_mix_kernel, signature, {(names.index(k),): v for k, v in constants.items()}, attrs)
kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
ptx = kernel.asm["ptx"]
print(json.dumps({"vector_stores": ptx.count("st.global.v4"), "vector_loads": ptx.count("ld.global.v4"),
                  "byte_loads": ptx.count("ld.global.b8"), "local_memory": ptx.count(".local")}))
"""


@pytest.mark.parametrize(
    "out_type, source_type, layout, color",
    [("bf16", "u8", "dense", "plain"), ("fp32", "u8", "dense", "plain"), ("fp16", "u8", "strided", "plain"),
     ("fp32", "fp32", "strided", "plain"), ("bf16", "u8", "dense", "color"), ("fp32", "fp32", "strided", "color")],
)
def test_kernel_compiles_for_sm90(out_type, source_type, layout, color):
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    environment["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = run_process(
        [sys.executable, "-c", COMPILE_SCRIPT, out_type, source_type, layout, color],
        capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # No register spills: a spill shows as local-memory traffic (.local) in the PTX.
    assert '"local_memory": 0' in result.stdout, result.stdout
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    if layout == "dense" and source_type == "u8":
        # 128-bit stores: each thread stores its 16 values 16 bytes at a time.
        assert counts["vector_stores"] == {"bf16": 2, "fp32": 4}[out_type], counts
    if layout == "dense" and source_type == "u8" and color == "plain":
        # 128-bit loads: each thread reads its 16 uint8 values of the own image and of the
        # partner in one 16-byte load each (no byte loads).
        assert (counts["vector_loads"], counts["byte_loads"]) == (2, 0), counts
