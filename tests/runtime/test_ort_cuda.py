"""ort-cuda on a real GPU: the same parity floors as ort-cpu (fp32 max abs <= 1e-5, fp16 decoder PSNR >= 50
dB) and the streaming contract. Skipped where onnxruntime has no CUDA execution provider."""

import numpy as np
import pytest

from vae_deploy.export import check_parity
from vae_deploy.runtime import available_backends, load_runner

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("ort-cuda" not in available_backends(),
                       reason="onnxruntime-gpu with a CUDA device is not available here"),
]

BATCHES = (1, 7, 128, 1000)


def test_ort_cuda_fp32_parity(mlp_model_dir, mnist_test_images):
    with load_runner(mlp_model_dir, "ort-cuda") as runner, load_runner(mlp_model_dir, "torch") as reference:
        assert runner._sessions["encoder"].get_providers()[0] == "CUDAExecutionProvider"
        report = check_parity(runner, reference, mnist_test_images, BATCHES)
    assert max(c.max_abs for c in report.comparisons) <= 1e-5, report.failures()
    assert report.passed


def test_ort_cuda_fp16_decoder_psnr(mlp_model_fp16_dir, mnist_test_images):
    with load_runner(mlp_model_fp16_dir, "ort-cuda") as runner, \
            load_runner(mlp_model_fp16_dir, "torch") as reference:
        report = check_parity(runner, reference, mnist_test_images, BATCHES)
    assert min(c.psnr_db for c in report.comparisons if c.graph == "decoder") >= 50.0
    assert report.passed


def test_ort_cuda_matches_ort_cpu_on_a_stream(mlp_model_dir, mnist_test_images):
    with load_runner(mlp_model_dir, "ort-cuda") as gpu, load_runner(mlp_model_dir, "ort-cpu") as cpu:
        stream = gpu.open_stream()
        mu = np.concatenate([stream.encode(mnist_test_images[i:i + 100])[0] for i in range(0, 1000, 100)])
        np.testing.assert_allclose(mu, cpu.encode(mnist_test_images)[0], rtol=0, atol=1e-5)
