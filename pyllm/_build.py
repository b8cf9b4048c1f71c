"""The cffi builder for pyllm's C kernels (named by ``setup.py`` through ``cffi_modules``).

It reads the whole C ABI from ``csrc/pyllm.h`` (the part between the CDEF markers), compiles every
``csrc/*.c`` file into the extension module ``pyllm._ckernels`` (cffi API, out-of-line mode) and
records the compiler and flags it used, which ``python -m pyllm info`` prints.

Flags: ``-O3`` plus ``-fopenmp`` when a probe shows the compiler accepts it (otherwise the kernels
build single-threaded and a warning says so). Never ``-Ofast``; ``-march=native`` only with
``PYLLM_NATIVE=1``. ``PYLLM_NO_OPENMP=1`` skips OpenMP on purpose. Extra flags can be passed with
``PYLLM_CFLAGS``. This file must not import pyllm: it runs before pyllm is installed.
"""
import importlib.util
import os
import shlex
import sys
import tempfile
import warnings

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
HEADER = os.path.join(CSRC, "pyllm.h")


def read_cdef(path=HEADER):
    """Return the declarations between ``/* CDEF-BEGIN */`` and ``/* CDEF-END */`` of the header."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = text.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
    end = text.index("/* CDEF-END */")
    return text[start:end]


def _new_compiler():
    import setuptools  # noqa: F401  (provides distutils on Python >= 3.12)
    from distutils.ccompiler import new_compiler
    from distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    return cc


def _compiler_name(cc):
    exe = getattr(cc, "compiler", None) or getattr(cc, "cc", None) or ["unknown"]
    if isinstance(exe, str):
        exe = [exe]
    return " ".join(exe)


def probe_openmp(cc):
    """Return (compile_args, link_args) that give OpenMP on this compiler, or None."""
    if os.environ.get("PYLLM_NO_OPENMP") == "1":
        return None
    if cc.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"]),
                      (["-Xpreprocessor", "-fopenmp"], ["-lomp"])]  # macOS clang + libomp
    src = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n>0?0:1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        cfile = os.path.join(tmp, "omp_probe.c")
        with open(cfile, "w") as f:
            f.write(src)
        for cargs, largs in candidates:
            try:
                objs = cc.compile([cfile], output_dir=tmp, extra_postargs=cargs)
                cc.link_executable(objs, os.path.join(tmp, "omp_probe"), extra_postargs=largs)
                return cargs, largs
            except Exception:
                continue
    return None


def build_flags():
    """Decide compile and link flags; returns (compile_args, link_args, compiler_name, openmp)."""
    try:
        cc = _new_compiler()
        name, ctype = _compiler_name(cc), cc.compiler_type
    except Exception as exc:  # no usable compiler: setup.py's optional build_ext will warn
        return ["-O3"], [], "unavailable (%s)" % exc, False
    if ctype == "msvc":
        cargs, largs = ["/O2"], []
    else:
        cargs, largs = ["-O3"], []
        if os.environ.get("PYLLM_NATIVE") == "1":
            cargs.append("-march=native")
    try:
        omp = probe_openmp(cc)
    except Exception:
        omp = None
    if omp is None:
        if os.environ.get("PYLLM_NO_OPENMP") != "1":
            warnings.warn("pyllm: the C compiler does not accept OpenMP flags; the C kernels will "
                          "run on one thread")
    else:
        cargs += omp[0]
        largs += omp[1]
    cargs += shlex.split(os.environ.get("PYLLM_CFLAGS", ""))
    return cargs, largs, name, omp is not None


def _source_hash():
    """csrc/'s fingerprint, by pyllm/_srchash.py loaded on its own (pyllm is not importable yet)."""
    spec = importlib.util.spec_from_file_location(
        "_pyllm_srchash", os.path.join(ROOT, "pyllm", "_srchash.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.source_hash(CSRC)


def make_ffibuilder():
    """Configure and return the cffi FFI builder for ``pyllm._ckernels``."""
    cargs, largs, name, omp = build_flags()
    info = "compiler: %s; flags: %s; openmp: %s; python: %s" % (
        name, " ".join(dict.fromkeys(cargs + largs)), "yes" if omp else "no",
        sys.version.split()[0])  # each flag once (-fopenmp is both a compile and a link flag)
    builder = FFI()
    builder.cdef(read_cdef() + "\nconst char *pyllm_build_info(void);\n"
                 "const char *pyllm_source_hash(void);\n")
    cwd = os.getcwd()
    sources = sorted(os.path.relpath(os.path.join(CSRC, f), cwd)
                     for f in os.listdir(CSRC) if f.endswith(".c"))
    literal = info.replace("\\", "\\\\").replace('"', '\\"')
    builder.set_source(
        "pyllm._ckernels",
        '#include "pyllm.h"\n'
        'static const char pyllm_build_info_str[] = "%s";\n'
        "const char *pyllm_build_info(void) { return pyllm_build_info_str; }\n"
        "const char *pyllm_source_hash(void) { return \"%s\"; }\n" % (literal, _source_hash()),
        sources=sources,
        include_dirs=[os.path.relpath(CSRC, cwd)],
        extra_compile_args=cargs,
        extra_link_args=largs,
        depends=[os.path.relpath(os.path.join(CSRC, f), cwd) for f in os.listdir(CSRC)
                 if f.endswith(".h")],
    )
    return builder


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
