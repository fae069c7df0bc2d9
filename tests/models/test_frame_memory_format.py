"""FrameVAE's eager memory format: channels-last by default, plain NCHW inside eager_channels_last(False)."""

import torch

from vae_deploy.models.frame import FrameVAE, FrameVAEConfig, eager_channels_last


def _first_conv_input_is_channels_last(model: FrameVAE, video: torch.Tensor) -> bool:
    seen = []
    conv = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        with torch.no_grad():
            model.encode(video)
    finally:
        handle.remove()
    return seen[0]


def test_eager_channels_last_switches_the_layout_and_not_the_results():
    torch.manual_seed(0)
    model = FrameVAE(FrameVAEConfig(channels=16, fine_channels=8)).eval()
    video = torch.rand(1, 2, 3, 32, 48)
    assert _first_conv_input_is_channels_last(model, video)
    with eager_channels_last(False):
        assert not _first_conv_input_is_channels_last(model, video)
        with torch.no_grad():
            plain = model.decode(model.encode(video)[0])
    assert _first_conv_input_is_channels_last(model, video)  # restored on leaving the block
    with torch.no_grad():
        fast = model.decode(model.encode(video)[0])
    torch.testing.assert_close(plain, fast, rtol=1e-5, atol=1e-5)
