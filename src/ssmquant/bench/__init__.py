"""Speed benchmarks (GPU): ``bench_decode``, ``bench_gemv``, ``bench_prefill`` in ``gpu.py``; random-weight models
of the published shapes in ``models.py``. The CLI is ``ssmquant bench``; ``benchmarks/gpu_inference.py`` runs the
whole table."""
