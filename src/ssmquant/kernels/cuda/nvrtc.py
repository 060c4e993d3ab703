"""Compile CUDA C++ at run time (NVRTC) and launch it on PyTorch's stream (CUDA driver API), through ctypes.

Why not a compiled extension: users would need nvcc and a matching toolkit at install time; NVRTC ships with
PyTorch's CUDA wheels (``nvidia-cuda-nvrtc``) and the driver is there whenever CUDA is. Kernels compile to a
cubin for the current device on first use (about a second) and are cached per process.

Launches go through ``cuLaunchKernelEx`` so that a kernel can be launched with programmatic dependent launch
(PDL: the attribute ``PROGRAMMATIC_STREAM_SERIALIZATION``), and are captured by CUDA graphs like any other
launch on the current stream.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

import torch

_NVRTC = None
_CUDA = None
_MODULES: dict = {}

_PDL_ATTR = 6        # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
_COOP_ATTR = 2       # CU_LAUNCH_ATTRIBUTE_COOPERATIVE: every CTA resident at once, or the launch fails


class _AttrValue(ctypes.Union):
    _fields_ = [("pad", ctypes.c_char * 64), ("u32", ctypes.c_uint)]


class _Attr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", _AttrValue)]


class _LaunchConfig(ctypes.Structure):
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_Attr)), ("numAttrs", ctypes.c_uint)]


def _load_nvrtc() -> ctypes.CDLL:
    global _NVRTC
    if _NVRTC is not None:
        return _NVRTC
    major = (torch.version.cuda or "12").split(".")[0]
    names = [f"libnvrtc.so.{major}", "libnvrtc.so"]
    # pip's nvidia-* wheels: site-packages/nvidia/{cuda_nvrtc,cu13}/lib (not on the loader path).
    for base in sys.path:
        names += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", f"libnvrtc.so.{major}*")))
    for name in names:
        try:
            _NVRTC = ctypes.CDLL(name)
            return _NVRTC
        except OSError:
            continue
    raise RuntimeError(f"NVRTC (libnvrtc.so.{major}) not found: install PyTorch's CUDA wheels or the CUDA toolkit")


def _load_cuda() -> ctypes.CDLL:
    global _CUDA
    if _CUDA is None:
        _CUDA = ctypes.CDLL("libcuda.so.1")
    return _CUDA


def _check_cu(res: int, what: str) -> None:
    if res != 0:
        msg = ctypes.c_char_p()
        _load_cuda().cuGetErrorString(res, ctypes.byref(msg))
        raise RuntimeError(f"{what}: CUDA error {res} ({(msg.value or b'?').decode()})")


def compile_cubin(source: str, name: str, options: list[str]) -> bytes:
    """NVRTC: CUDA C++ ``source`` -> cubin for the current device. Raises with the compiler log on failure."""
    lib = _load_nvrtc()
    major, minor = torch.cuda.get_device_capability()
    opts = [f"--gpu-architecture=sm_{major}{minor}", "--std=c++17", *options]
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None):
        raise RuntimeError("nvrtcCreateProgram failed")
    try:
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        res = lib.nvrtcCompileProgram(prog, len(opts), arr)
        if res:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise RuntimeError(f"NVRTC could not compile {name}: {log.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetCUBIN(prog, buf)
        return buf.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


class Kernel:
    """One ``extern "C"`` kernel of a compiled module; ``launch`` runs it on the current stream."""

    def __init__(self, cubin: bytes, name: str):
        cu = _load_cuda()
        torch.cuda.init()
        self._cubin = ctypes.create_string_buffer(cubin, len(cubin))     # kept alive with the module
        self.module, self.func = ctypes.c_void_p(), ctypes.c_void_p()
        _check_cu(cu.cuModuleLoadData(ctypes.byref(self.module), self._cubin), f"loading {name}")
        _check_cu(cu.cuModuleGetFunction(ctypes.byref(self.func), self.module, name.encode()), f"finding {name}")
        self.name = name
        regs = ctypes.c_int()
        cu.cuFuncGetAttribute(ctypes.byref(regs), 4, self.func)          # CU_FUNC_ATTRIBUTE_NUM_REGS
        self.num_regs = regs.value
        static = ctypes.c_int()
        cu.cuFuncGetAttribute(ctypes.byref(static), 1, self.func)       # CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES
        self.static_smem = static.value
        # Dynamic shared memory a launch may ask for without opting in: static + dynamic <= 48 KB.
        self._dyn_smem = 48 * 1024 - static.value

    def _allow_smem(self, smem: int) -> None:
        """Dynamic shared memory above what a launch may ask for without opting in: the kernel is allowed more
        once (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES), as the driver asks."""
        if smem > self._dyn_smem:
            _check_cu(_load_cuda().cuFuncSetAttribute(self.func, 8, ctypes.c_int(smem)),
                      f"allowing {smem} bytes of shared memory for {self.name}")
            self._dyn_smem = smem

    def blocks_per_sm(self, threads: int, smem: int = 0) -> int:
        """How many CTAs of ``threads`` threads and ``smem`` bytes of dynamic shared memory fit on one SM at once
        (``cuOccupancyMaxActiveBlocksPerMultiprocessor``): a kernel with grid-wide barriers needs its whole grid
        resident."""
        self._allow_smem(smem)
        n = ctypes.c_int()
        _check_cu(_load_cuda().cuOccupancyMaxActiveBlocksPerMultiprocessor(
            ctypes.byref(n), self.func, ctypes.c_int(threads), ctypes.c_size_t(smem)), f"occupancy of {self.name}")
        return n.value

    def max_active_clusters(self, grid: int, threads: int, smem: int = 0) -> int:
        """How many of the kernel's clusters (its compile-time ``__cluster_dims__``) fit on the GPU at once
        (``cuOccupancyMaxActiveClusters``), for a 1-D launch of ``grid`` CTAs."""
        self._allow_smem(smem)
        cfg = _LaunchConfig(grid, 1, 1, threads, 1, 1, smem, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream),
                            None, 0)
        n = ctypes.c_int()
        _check_cu(_load_cuda().cuOccupancyMaxActiveClusters(ctypes.byref(n), self.func, ctypes.byref(cfg)),
                  f"cluster occupancy of {self.name}")
        return n.value

    def launch(self, grid: tuple[int, int, int], block: tuple[int, int, int], args: list, *,
               pdl: bool = False, smem: int = 0, cooperative: bool = False) -> None:
        """``args``: ctypes values in the kernel's parameter order (``ctypes.c_void_p(t.data_ptr())`` for a tensor).
        ``smem``: bytes of dynamic shared memory (``extern __shared__``); where static + dynamic exceed 48 KB the
        kernel is allowed more once (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES), as the driver asks.
        ``cooperative``: the driver guarantees that all CTAs run at once (or refuses the launch), which a kernel
        with grid-wide barriers needs (``persistent_decode.cu``)."""
        self._allow_smem(smem)
        params = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
        ids = [i for i, on in ((_PDL_ATTR, pdl), (_COOP_ATTR, cooperative)) if on]
        attrs = (_Attr * max(1, len(ids)))()
        for a, i in zip(attrs, ids):
            a.id = i
            a.value.u32 = 1
        cfg = _LaunchConfig(*grid, *block, smem, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream),
                            attrs if ids else None, len(ids))
        _check_cu(_load_cuda().cuLaunchKernelEx(ctypes.byref(cfg), self.func, params, None), f"launching {self.name}")


def nvrtc_supported() -> bool:
    """A CUDA device of compute capability >= 8.0, NVRTC loadable, and not the Triton interpreter: what every NVRTC
    kernel here needs (the tensor-core GEMV's ``SSMQUANT_MMA=0`` switch is its own, ``ternary_mma.mma_supported``)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8:
        return False
    try:
        _load_nvrtc()
    except (RuntimeError, OSError):
        return False
    return True


def get_kernel(source: str, name: str, options: list[str]) -> Kernel:
    """Compiled and loaded once per (source, options, device)."""
    key = (hash(source), name, tuple(options), torch.cuda.current_device())
    k = _MODULES.get(key)
    if k is None:
        k = _MODULES[key] = Kernel(compile_cubin(source, name, options), name)
    return k
