#!/usr/bin/env bash
# Memory safety: build the C kernels with AddressSanitizer + UndefinedBehaviorSanitizer (gcc) into a
# temporary copy of the package, never in place, and run the kernel tests against that build.
#
#   bash .ci/sanitize.sh             # exit 0: clean; 1: a finding or a test failure;
#                                    # 2: the sanitized extension could not be built;
#                                    # 77: skipped (no gcc, or gcc without libasan/libubsan)
#   SANITIZE_KEEP=1 bash .ci/sanitize.sh    # keep the temporary directory (its path is printed)
#
# Steps (about a minute on two cores; tests/test_sanitizers.py runs this script):
#  1. copy pyllm/ (without any built extension), csrc/, tests/ and pyproject.toml to a temp dir and
#     build pyllm._ckernels there with pyllm/_build.py, adding through PYLLM_CFLAGS / LDFLAGS
#       -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
#       -fno-wrapv -g -O1
#     (-fno-wrapv undoes Python's -fwrapv, under which signed overflow is defined and UBSan cannot
#     see it; -fno-sanitize-recover makes every UBSan report fatal);
#  2. check the build: the module lies in the temp dir, records the flags, references the ASan and
#     UBSan overflow handlers, and a canary shows that the set-up catches errors -- a real kernel
#     (residual_forward) called past the end of its buffers must stop with a heap-buffer-overflow,
#     and a signed overflow in a canary library built with the same flags must stop the process;
#  3. run under LD_PRELOAD=libasan, ASAN_OPTIONS=detect_leaks=0:abort_on_error=1, PYLLM_REQUIRE_C=1,
#     OMP_NUM_THREADS=2 (a conftest.py in the temp dir verifies, inside pytest, that the sanitized
#     module is the one imported and that ASan is loaded):
#       tests/test_kernels.py + tests/test_boundary.py + tests/test_linear_attention.py
#       + tests/test_quant.py
#                                                           (AVX2 micro-kernels where the CPU has them)
#       the C-vs-NumPy tests of tests/test_kernels.py again with the portable C kernels
#       (pyllm_set_simd_level(0) turns off every AVX2 variant: GEMM, attention, element-wise)
#       tests/test_model.py (C parts, except the long training test) and the resume test, and
#       tests/test_attention_model.py (favor and linear models: forward, backward, decoding),
#       tests/test_lora.py and tests/test_classify.py (adapters and the classifier head)
#       tests/test_hostile.py: its kernel, model, explorer and NaN/Inf cases (run in child processes, which
#       inherit the sanitized environment)
#  4. a LeakSanitizer pass limited to the C kernels: a short training run + sampling with leak
#     detection on; Python itself leaks by design at exit, so only leak reports with a frame in
#     the kernels (csrc/*.c or the _ckernels module) count. A canary leak from a csrc/ file proves
#     the filter sees such frames. Skipped with a note where LeakSanitizer cannot run (ptrace).
# Limits: ASan sees overruns of a whole buffer, not of a view inside one (the model's parameter
# slab), and GEMM's cached packing buffer can hide a small overrun of itself.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -fno-wrapv -g -O1"
SAN_LINK="-fsanitize=address,undefined"

skip() { echo "sanitize: SKIPPED: $*"; exit 77; }
die() { echo "sanitize: FAILED: $*" >&2; exit "${2:-1}"; }
step() { echo "== sanitize: $* ($(( SECONDS ))s)"; }

command -v gcc >/dev/null 2>&1 || skip "gcc not found"
[ "$(uname -s)" = Linux ] || skip "needs Linux (LD_PRELOAD of libasan)"
LIBASAN=$(gcc -print-file-name=libasan.so)
LIBUBSAN=$(gcc -print-file-name=libubsan.so)
case "$LIBASAN" in /*) [ -e "$LIBASAN" ] || skip "gcc has no libasan";; *) skip "gcc has no libasan";; esac
case "$LIBUBSAN" in /*) [ -e "$LIBUBSAN" ] || skip "gcc has no libubsan";; *) skip "gcc has no libubsan";; esac
"$PY" -c "import cffi, numpy, pytest" 2>/dev/null || skip "$PY lacks cffi, numpy or pytest"

T=$(mktemp -d "${TMPDIR:-/tmp}/pyllm-sanitize.XXXXXX")
T=$(cd "$T" && pwd -P)
if [ "${SANITIZE_KEEP:-0}" = 1 ]; then echo "sanitize: keeping $T"; else trap 'rm -rf "$T"' EXIT; fi

# ---- 1. the sanitized build, in the temp copy ------------------------------------------------
step "building pyllm._ckernels with ASan + UBSan in $T"
cp -R "$ROOT/pyllm" "$ROOT/csrc" "$ROOT/tests" "$ROOT/pyproject.toml" "$T/" || die "copy failed" 2
find "$T" \( -name '__pycache__' -o -name '.hypothesis' \) -prune -exec rm -rf {} +
find "$T/pyllm" \( -name '_ckernels*.so' -o -name '_ckernels*.pyd' -o -name '_ckernels.c' \
    -o -name '_ckernels*.o' \) -exec rm -f {} +
if ! (cd "$T" && env CC=gcc PYLLM_NATIVE=0 PYLLM_CFLAGS="$SAN" LDFLAGS="$SAN_LINK" \
        "$PY" pyllm/_build.py >"$T/build.log" 2>&1); then
    tail -n 40 "$T/build.log" >&2
    die "the sanitized build failed" 2
fi
SO=$(ls "$T"/pyllm/_ckernels*.so 2>/dev/null | head -n 1)
[ -n "$SO" ] || die "no pyllm/_ckernels*.so after the build (see $T/build.log)" 2

# The environment of every sanitized run. PYTHONMALLOC=malloc: Python's own allocations go through
# ASan too (cffi buffers, small objects), not only NumPy's. OMP_WAIT_POLICY=passive: on a busy
# machine libgomp's spin-waiting makes the many small parallel regions of the model tests 10-50x
# slower; sleeping threads change nothing that the sanitizers check.
RUN=(env LD_PRELOAD="$LIBASAN" PYTHONPATH="$T" PYTHONMALLOC=malloc PYLLM_REQUIRE_C=1
     PYLLM_BACKEND=auto OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive PYTHONDONTWRITEBYTECODE=1
     SANITIZE_ROOT="$T"
     ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:abort_on_error=1)

# ---- 2. is it the sanitized module, and does the set-up catch errors? ------------------------
step "checking the build"
UNDEF=$(nm -D --undefined-only "$SO" 2>/dev/null || true)
if [ -n "$UNDEF" ]; then  # (nm is binutils; without it the in-process checks below remain)
    echo "$UNDEF" | grep -q '__asan_report' || die "$SO has no ASan instrumentation"
    echo "$UNDEF" | grep -q '__ubsan_handle_.*overflow.*abort' ||
        die "$SO has no non-recovering UBSan overflow checks (-fwrapv not undone?)"
fi
(cd "$T" && "${RUN[@]}" "$PY" - <<'EOF') || die "the sanitized module is not the one imported"
import os, pyllm, pyllm._ckernels as k
root = os.environ["SANITIZE_ROOT"]
f = os.path.realpath(k.__file__)
assert f.startswith(root + os.sep), f
info = k.ffi.string(k.lib.pyllm_build_info()).decode()
assert "-fsanitize=address,undefined" in info and "-fno-wrapv" in info, info
assert "libasan" in open("/proc/self/maps").read(), "libasan not loaded"
assert pyllm.get_backend() == "c", pyllm.get_backend()
print("sanitize: imported", f, "\nsanitize:", info)
EOF

# canary 1: a real kernel run past the end of its buffers must be stopped by ASan
{ (cd "$T" && "${RUN[@]}" "$PY" - <<'EOF') >"$T/canary1.log" 2>&1; } 2>/dev/null
import numpy as np, pyllm._ckernels as k
n = 1000
a, b, out = np.ones(n, np.float32), np.ones(n, np.float32), np.empty(n, np.float32)
f = lambda x: k.ffi.from_buffer("float[]", x)
assert k.lib.residual_forward(f(out), f(a), f(b), n) == 0 and (out == 2).all()
print("canary: in-bounds call fine", flush=True)
k.lib.residual_forward(f(out), f(a), f(b), n + 8)  # 8 floats too far: must not return
print("canary: the overrun went unnoticed")
EOF
rc=$?
if ! grep -q 'in-bounds call fine' "$T/canary1.log"; then
    cat "$T/canary1.log" >&2
    die "canary: residual_forward failed on valid arguments (exit $rc)"
fi
if [ $rc -eq 0 ] || ! grep -q 'heap-buffer-overflow' "$T/canary1.log"; then
    cat "$T/canary1.log" >&2
    die "canary: ASan did not stop an out-of-bounds kernel call (exit $rc)"
fi

# canary 2 (UBSan, same flags) and, for the leak pass, a leaking function
# (the source path is csrc/..., relative, as in the kernels' build: the leak filter must see it)
mkdir -p "$T/canary/csrc"
cat >"$T/canary/csrc/canary.c" <<'EOF'
#include <stdlib.h>
int canary_add(int a, int b) { return a + b; }
void *volatile canary_sink;
void canary_leak(void) {
    for (int i = 0; i < 16; i++) canary_sink = malloc(48);
    canary_sink = NULL;
}
EOF
(cd "$T/canary" && gcc $SAN -fPIC -shared csrc/canary.c -o libcanary.so $SAN_LINK) ||
    die "could not build the canary library" 2
{ (cd "$T" && "${RUN[@]}" "$PY" -c "
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.canary_add(2**31 - 1, 1)
print('canary: the signed overflow went unnoticed')" "$T/canary/libcanary.so") >"$T/canary2.log" 2>&1; } 2>/dev/null
rc=$?
if [ $rc -eq 0 ] || ! grep -q 'signed integer overflow' "$T/canary2.log"; then
    cat "$T/canary2.log" >&2
    die "canary: UBSan did not stop a signed integer overflow (exit $rc)"
fi
echo "sanitize: canaries caught (heap-buffer-overflow in residual_forward, signed overflow)"

# ---- 3. the tests, under the sanitizers ------------------------------------------------------
cat >"$T/conftest.py" <<'EOF'
"""Added by .ci/sanitize.sh: verify, in the pytest process, that the sanitized build is in use."""
import os

import pyllm
import pyllm._ckernels as _k

_root = os.environ["SANITIZE_ROOT"]
_file = os.path.realpath(_k.__file__)
assert _file.startswith(_root + os.sep), "not the sanitized module: %s" % _file
assert "-fsanitize=address" in _k.ffi.string(_k.lib.pyllm_build_info()).decode()
with open("/proc/self/maps") as _maps:
    assert "libasan" in _maps.read(), "ASan runtime not loaded"
assert pyllm.get_backend() == "c"
if os.environ.get("SANITIZE_SIMD") == "0":
    assert _k.lib.pyllm_set_simd_level(0) == 0


def pytest_report_header(config):
    return "sanitized build: %s (simd level %d)" % (_file, _k.lib.pyllm_simd_level())
EOF

# --capture=sys: a sanitizer report goes to file descriptor 2 straight away, not into pytest's
# capture (an aborted process would lose it)
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o addopts="" --capture=sys)
run_tests() {  # label, then pytest arguments
    local label=$1; shift
    step "$label"
    (cd "$T" && "${RUN[@]}" "$@") || die "$label: failed (an ASan/UBSan report above aborts the run)"
}
run_tests "kernel + boundary tests (best SIMD level)" \
    "${PYTEST[@]}" tests/test_kernels.py tests/test_boundary.py tests/test_linear_attention.py \
    tests/test_quant.py
run_tests "kernel tests, portable C kernels (no AVX2)" env SANITIZE_SIMD=0 \
    "${PYTEST[@]}" tests/test_kernels.py -k "c_matches_numpy or decode_matches"
run_tests "model tests (C backend) + resume" \
    "${PYTEST[@]}" tests/test_model.py -k "not training_reduces_loss and not numpy" \
    "tests/test_train.py::test_resume_equals_uninterrupted[c]"
run_tests "favor and linear models, LoRA, classifier (C backend)" \
    "${PYTEST[@]}" tests/test_attention_model.py tests/test_lora.py tests/test_classify.py \
    -k "not numpy and not finite_differences"
# hostile inputs through the kernels (its cases run in child processes: they inherit the set-up)
if [ -e "$T/tests/test_hostile.py" ]; then
    run_tests "hostile-input tests that reach the kernels" \
        "${PYTEST[@]}" tests/test_hostile.py -k "kernels- or model- or explore- or nan-agreement-"
fi

# ---- 4. LeakSanitizer, limited to the C kernels ----------------------------------------------
step "leak pass (C kernels only)"
# A frame of the kernels reads "#3 0x... in matmul_forward csrc/matmul.c:602" (the build compiles
# csrc/*.c by relative path) or, unsymbolized, names the module "(.../_ckernels....so+0x...)".
KERNEL_FRAME='[ /]csrc/[A-Za-z0-9_]+[.][ch]:[0-9]|_ckernels'
leaks_in_kernels() {  # log file prefix: print the leak reports with a frame in the kernels
    awk -v pat="$KERNEL_FRAME" '
        /^(Direct|Indirect) leak of/ { block = $0 "\n"; inblock = 1; hit = 0; next }
        inblock && /^ *#[0-9]/ { block = block $0 "\n"; if ($0 ~ pat) hit = 1; next }
        inblock { if (hit) printf "%s\n", block; inblock = 0 }
        END { if (inblock && hit) printf "%s\n", block }' "$1".* 2>/dev/null
}
LEAKRUN=(env ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:log_path="$T/lsan"
         LSAN_OPTIONS=exitcode=0 PYTHONMALLOC=pymalloc)
(cd "$T" && "${RUN[@]}" "${LEAKRUN[@]}" "$PY" -c "
import ctypes, sys
ctypes.CDLL(sys.argv[1]).canary_leak()" "$T/canary/libcanary.so" >/dev/null 2>&1)
if grep -qs 'LeakSanitizer has encountered a fatal error' "$T"/lsan.* ||
   ! grep -qs 'LeakSanitizer: detected memory leaks' "$T"/lsan.*; then
    echo "sanitize: note: LeakSanitizer does not work here (ptrace restricted?); leak pass skipped"
else
    [ -n "$(leaks_in_kernels "$T/lsan")" ] ||
        die "canary: the leak filter did not see the canary's leak"
    rm -f "$T"/lsan.*
    (cd "$T" && "${RUN[@]}" "${LEAKRUN[@]}" "$PY" - <<'EOF') || die "leak pass: the run failed"
import numpy as np, pyllm
from pyllm.backend import c as ck
assert pyllm.get_backend() == "c"
cfg = pyllm.GPTConfig(vocab_size=67, block_size=32, n_layer=2, n_head=2, n_embd=48)
model = pyllm.GPT(cfg, seed=0)
opt = pyllm.AdamW(model, lr=1e-3)
idx = np.random.default_rng(0).integers(0, 67, (3, 33))
for step in range(3):
    loss, grads = model.loss_and_grads(idx[:, :-1], idx[:, 1:])
    pyllm.clip_grad_norm(grads, 1.0)
    opt.step(grads)
model.generate(idx[:1, :5], max_new_tokens=10, temperature=0.8, top_k=5, seed=1)
rng = np.random.default_rng(1)
for m, n, k in ((7, 5, 3), (300, 200, 500), (64, 1030, 70)):  # GEMM packing buffers grow
    c = np.empty((m, n), np.float32)
    ck.gemm(c, rng.standard_normal((m, k)).astype(np.float32),
            rng.standard_normal((k, n)).astype(np.float32))
x = rng.standard_normal((40, 50)).astype(np.float32)
ck.softmax_forward(np.empty_like(x), x)
print("leak pass: loss %.4f" % loss)
EOF
    found=$(leaks_in_kernels "$T/lsan")
    [ -z "$found" ] || { echo "$found" >&2; die "LeakSanitizer: leaks from the C kernels"; }
    echo "sanitize: no leaks from the C kernels"
fi

step "CLEAN: no AddressSanitizer, UndefinedBehaviorSanitizer or kernel-leak reports"
exit 0
