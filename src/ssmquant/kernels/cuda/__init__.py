"""CUDA C++ kernels compiled at run time by NVRTC (``nvrtc``), for what Triton cannot express well: the
tensor-core ternary decode GEMV (``ternary_mma``)."""
