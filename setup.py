"""Builds embedplug._C, the fused-kernel extension.

Environment switches (printed at build time):
  EMBEDPLUG_NO_EXT=1   skip the extension entirely; embedplug then runs its pure-torch reference.
  FORCE_CUDA=1         compile csrc/cuda/*.cu even when torch.cuda.is_available() is False
                       (needs a CUDA build of torch and nvcc; CUDA_HOME must point at the toolkit root).
  DEBUG=1              -O0 -g instead of -O3.
  MAX_JOBS=N           ninja parallelism (read by torch.utils.cpp_extension).
  TORCH_CUDA_ARCH_LIST architectures for the CUDA kernels (read by torch.utils.cpp_extension).
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in {"1", "true", "yes", "on"}


def _extensions():
    if _flag("EMBEDPLUG_NO_EXT"):
        print("embedplug build: EMBEDPLUG_NO_EXT=1, skipping the C++ extension (pure-torch fallback)")
        return [], {}

    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    debug = _flag("DEBUG")
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # Headers as dependencies: without them an in-place `build_ext` skips the extension when only a header
    # changed (setuptools compares the sources' times with the .so's); ninja then recompiles what includes it.
    headers = sorted(
        path for pattern in ("*.h", "*.cuh") for path in glob.glob(os.path.join("csrc", "**", pattern), recursive=True)
    )
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    torch_has_cuda = torch.version.cuda is not None
    use_cuda = bool(cuda_sources) and CUDA_HOME is not None and torch_has_cuda and (
        torch.cuda.is_available() or _flag("FORCE_CUDA")
    )

    opt = ["-O0", "-g"] if debug else ["-O3"]
    # As PyTorch builds itself: no IEEE result changes, but conditional float operations may then be
    # if-converted, which the vectoriser needs (the fused epilogues are full of selects).
    cxx_flags = opt + ["-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-std=c++20", "-DEMBEDPLUG_HAS_OPENMP"]
    define_macros = []
    extra = {"cxx": cxx_flags}
    extension_cls = CppExtension
    if use_cuda:
        sources += cuda_sources
        extension_cls = CUDAExtension
        define_macros.append(("EMBEDPLUG_WITH_CUDA", None))
        extra["nvcc"] = (["-O0", "-g", "-G"] if debug else ["-O3"]) + ["--expt-relaxed-constexpr"]

    print(
        "embedplug build configuration:\n"
        f"  torch {torch.__version__} (CUDA {torch.version.cuda}), python {sys.version.split()[0]}\n"
        f"  CUDA kernels: {'yes' if use_cuda else 'no'} "
        f"(cuda sources: {len(cuda_sources)}, CUDA_HOME={CUDA_HOME}, FORCE_CUDA={os.environ.get('FORCE_CUDA', '0')})\n"
        f"  mode: {'debug' if debug else 'release'}, cxx flags: {' '.join(cxx_flags)}\n"
        f"  MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', 'auto')}"
    )
    ext = extension_cls(
        name="embedplug._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        define_macros=define_macros,
        depends=headers,
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
