"""Builds Glassbox's C++ quantized kernels (engine/quant/csrc/) when the package is installed;
everything else about the package lives in pyproject.toml.

torch must already be installed (its headers and libraries are what the kernels build against):
scripts/setup.sh installs it first and then this package with --no-build-isolation. Without torch
(an isolated build), or without a C++ compiler, the package installs without the kernels and the
engine says so once and uses PyTorch's kernels (engine/quant/kernels.py).
"""
import os
import platform
import sys

from setuptools import setup

CSRC = "engine/quant/csrc"
X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
# Each SIMD path is its own translation unit with its own flags, so nothing outside it uses those
# instructions: a build on an AVX-512 machine still runs on an AVX2 (or older) one.
ISA_FLAGS = {
    "kernels_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
    "kernels_avx512.cpp": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"],
}


def _warn(message: str) -> None:
    print(f"glassbox: {message}; the engine will use PyTorch's kernels instead", file=sys.stderr)


def _kernels():
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        _warn("torch is not installed in the build environment, the C++ kernels are not built")
        return [], {}

    class BuildKernels(BuildExtension):
        def build_extension(self, ext):
            if X86 and self.compiler.compiler_type != "msvc":  # MSVC compiles any intrinsic without flags
                self._add_isa_flags()
            try:
                super().build_extension(ext)
            except Exception as error:  # a missing compiler, an old one: install without the kernels
                _warn(f"building {ext.name} failed ({error})")

        def _add_isa_flags(self):
            compile_one = self.compiler._compile
            if getattr(compile_one, "adds_isa_flags", False):
                return

            def with_isa_flags(obj, src, ext, cc_args, extra_postargs, pp_opts):
                extra = ISA_FLAGS.get(os.path.basename(src), [])
                return compile_one(obj, src, ext, cc_args, list(extra_postargs) + extra, pp_opts)

            with_isa_flags.adds_isa_flags = True
            self.compiler._compile = with_isa_flags

    if sys.platform == "win32":
        compile_args, link_args = ["/O2", "/openmp"], []
    elif sys.platform == "darwin":  # Apple's clang has no -fopenmp: the kernels run on one thread there
        compile_args, link_args = ["-O3"], []
    else:  # ATen's parallel_for is inline: without OpenMP here it silently runs on one thread
        compile_args, link_args = ["-O3", "-fopenmp"], ["-fopenmp"]
    sources = [f"{CSRC}/{name}" for name in ("ops.cpp", "decode.cpp", "kernels_scalar.cpp", "kernels_avx2.cpp", "kernels_avx512.cpp")]
    ext = CppExtension("engine.quant._kernels", sources, extra_compile_args=compile_args, extra_link_args=link_args)
    return [ext], {"build_ext": BuildKernels.with_options(use_ninja=False)}


ext_modules, cmdclass = _kernels()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
