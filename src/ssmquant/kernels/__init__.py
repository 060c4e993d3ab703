"""Inference kernels: the ternary GEMV layout (``layout``), Triton kernels with their PyTorch references
(``triton/``), and the CUDA-graphed fast decoder (``fast_decode``). Nothing here is imported by ``import ssmquant``:
Triton is optional and loaded lazily.
"""
