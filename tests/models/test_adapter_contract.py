"""The adapter contract as typed protocols (models/adapters/contract.py, issue 23 item 2): one check naming
what a module lacks in one line, one Traits record, the contract free of the family table, one record per
model kind naming its spec builder (item 5), and `export --help` listing the family table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from cli_support import invoke_main
from torch import nn

from vae_deploy.errors import ConfigError
from vae_deploy.export.specs import SPEC_BUILDERS
from vae_deploy.models.adapters import call_factory, load_entry_point
from vae_deploy.models.adapters.contract import (
    CausalVAEModule,
    FirstChunkRule,
    FrameVAEModule,
    Traits,
    check_contract,
)
from vae_deploy.models.families import ADAPTER_KINDS, FAMILIES
from vae_deploy.models.registry import model_kinds

CONTRACT = Path(__file__).resolve().parents[2] / "vae_deploy" / "models" / "adapters" / "contract.py"


class Frame(nn.Module):
    in_channels, latent_channels, spatial_factor = 3, 4, 2

    def encode(self, images):
        return images[:, :1].repeat(1, 4, 1, 1)[:, :, ::2, ::2], torch.zeros(1)

    def decode(self, z):
        return z[:, :3].repeat_interleave(2, -1).repeat_interleave(2, -2)


class Causal(nn.Module):
    in_channels, latent_channels, spatial_factor, temporal_factor = 3, 4, 2, 2
    first_frames = 0

    def encoder_state_shapes(self, batch, height, width):
        return [(batch, 3, 1, height, width)]

    def decoder_state_shapes(self, batch, latent_h, latent_w):
        return []

    def encode_step(self, video, *past):
        raise NotImplementedError

    def decode_step(self, z, *past):
        raise NotImplementedError


class WithFirst(Causal):
    first_frames = 1

    def encode_first(self, video):
        raise NotImplementedError

    def decode_first(self, z):
        raise NotImplementedError


def _without(cls: type, name: str) -> nn.Module:
    """An instance of `cls` whose `name` is gone (None counts as missing, as for an unset attribute)."""
    return type(f"No_{name}", (cls,), {name: None})()


@pytest.mark.parametrize("cls, name, what", [
    (Frame, "decode", "a frame VAE"),
    (Frame, "latent_channels", "a frame VAE"),
    (Causal, "decoder_state_shapes", "a causal video VAE"),
    (Causal, "temporal_factor", "a causal video VAE"),
    (WithFirst, "decode_first", "a causal video VAE with first_frames 1"),
])
def test_a_module_missing_a_protocol_member_is_refused_in_one_line_naming_it(cls, name, what):
    with pytest.raises(ConfigError) as info:
        check_contract(_without(cls, name), "my_vae:build")
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"my_vae:build is {what} without {name} (see the adapter contract in "
                       f"docs/adapters.md)")


def test_an_entry_point_missing_a_member_is_refused_once_naming_it(monkeypatch, tmp_path):
    (tmp_path / "broken_vae.py").write_text(
        "from torch import nn\n"
        "class NoStep(nn.Module):\n"
        "    in_channels, latent_channels, spatial_factor, temporal_factor = 3, 4, 8, 4\n"
        "    def encoder_state_shapes(self, b, h, w): return []\n"
        "    def decoder_state_shapes(self, b, h, w): return []\n"
        "    def encode_step(self, video, *past): return video\n"
        "def build(): return NoStep()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^--from broken_vae:build is a causal video VAE without "
                                          r"decode_step \(see"):
        load_entry_point("broken_vae:build")


def test_traits_are_read_once_into_one_record():
    assert check_contract(Frame(), "f") == Traits(causal=False, in_channels=3, latent_channels=4,
                                                  spatial_factor=2)
    traits = check_contract(WithFirst(), "c")
    assert (traits.causal, traits.temporal_factor, traits.first_frames) == (True, 2, 1)
    with pytest.raises(AttributeError):  # frozen: what export reads cannot drift from what was checked
        traits.first_frames = 0


def test_the_protocols_are_runtime_checkable():
    assert isinstance(Frame(), FrameVAEModule) and not isinstance(Frame(), CausalVAEModule)
    assert isinstance(WithFirst(), CausalVAEModule) and isinstance(WithFirst(), FirstChunkRule)
    assert not isinstance(Causal(), FirstChunkRule)


def test_the_contract_does_not_import_the_family_table():
    """The wrapper knows nothing of the families: the table (models/families.py) and its registration
    (models/adapters/__init__.py) sit above it, never the other way round."""
    imported = set()
    for node in ast.walk(ast.parse(CONTRACT.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in contract.py"
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    table = {"vae_deploy.models.adapters", "vae_deploy.models.families", "vae_deploy.models.registry",
             "vae_deploy.models"}
    assert not imported & table, sorted(imported & table)
    assert not any(m.startswith("vae_deploy.models.adapters.diffusers") for m in imported)


def test_a_factory_error_keeps_its_cause():
    """Issue 23 item 7: the one error line for the user, the original exception chained for a debugger."""
    with pytest.raises(ConfigError) as info:
        call_factory("no_such_module_anywhere:build")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_every_kind_is_one_record_naming_a_registered_spec_builder():
    kinds = model_kinds()
    assert {"mlp", "frame", "temporal", "causal3d", *ADAPTER_KINDS} <= set(kinds)
    for name, kind in kinds.items():
        assert kind.name == name
        assert kind.specs in SPEC_BUILDERS, f"{name}: no spec builder {kind.specs!r}"
    assert {kinds[k].specs for k in ADAPTER_KINDS} == {"video"}


def test_export_help_lists_every_family_in_the_table(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps help at the terminal width
    result = invoke_main(monkeypatch, capsys, "export", "--help")
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    for class_name in FAMILIES:
        assert class_name in help_text, class_name
