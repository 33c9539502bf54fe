"""Helpers (not tests) shared by the test modules, so that no test module imports another.

tests/conftest.py puts tests/ on sys.path, so a test module in any folder imports them as
`from helpers.tiny_finetune import run`. The fixtures stay in tests/conftest.py; the tiny
end-to-end workflow (its config, tiny-model maker and judge stub) is tests/helpers/e2e/ (benchmarks/gpu_check.py
runs it on a GPU).
"""
