"""log Z providers: output shapes, table indexing, the MLP head's input and its detachment."""

import pytest
import torch

from gfnlm.contracts import registry
from gfnlm.contracts.shapes import ShapeError


def logz(name: str, **config):
    return registry.build("logz", name, **config)


def test_scalar_is_shared_and_learnable():
    module = logz("scalar", init=0.5)
    index = torch.tensor([0, 7, 3])
    out = module(index)
    assert out.shape == (3,)
    assert out.tolist() == [0.5, 0.5, 0.5]
    out.sum().backward()
    assert module.value.grad.item() == pytest.approx(3.0)  # one shared parameter
    assert [p.shape for p in module.parameters()] == [torch.Size([])]
    assert "log_z" in module.provides and not module.requires


def test_table_indexes_per_prompt():
    module = logz("table", num_prompts=4, init=-1.0)
    assert module.values.shape == (4,)
    assert module(torch.tensor([2])).tolist() == [-1.0]
    with torch.no_grad():
        module.values.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    index = torch.tensor([3, 0, 3, 1])
    out = module(index)
    assert out.shape == (4,)
    assert out.tolist() == pytest.approx([0.4, 0.1, 0.4, 0.2])
    out.sum().backward()
    assert module.values.grad.tolist() == pytest.approx([1.0, 1.0, 0.0, 2.0])


def test_table_index_out_of_range_message():
    module = logz("table", num_prompts=4)
    with pytest.raises(IndexError) as info:
        module(torch.tensor([0, 4]))
    message = str(info.value)
    assert "prompt_index=4" in message and "num_prompts=4" in message


def test_table_needs_a_prompt():
    with pytest.raises(registry.RegistryError, match="num_prompts=0"):
        logz("table", num_prompts=0)


def test_mlp_output_shape_and_initial_value():
    module = logz("mlp", hidden_size=6, width=8, init=0.25)
    hidden = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    out = module(torch.arange(5), hidden)
    assert out.shape == (5,)
    # The last layer starts at weight 0, bias = init: log Z starts at init for every prompt.
    assert out.tolist() == pytest.approx([0.25] * 5)
    assert "prompt_hidden" in module.requires and "log_z" in module.provides


def test_mlp_architecture():
    module = logz("mlp", hidden_size=6, width=8, dropout=0.1)
    layers = [type(m).__name__ for m in module.net]
    block = ["Linear", "GELU", "LayerNorm", "Dropout"]
    assert layers == block + block + ["Linear"]
    assert module.net[0].in_features == 6 and module.net[-1].out_features == 1


def test_mlp_without_hidden_is_rejected():
    module = logz("mlp", hidden_size=6, width=8)
    with pytest.raises(ValueError, match="needs prompt_hidden"):
        module(torch.arange(2))
    with pytest.raises(ValueError, match="needs prompt_hidden"):
        module(torch.arange(2), None)


def test_mlp_needs_hidden_size():
    with pytest.raises(registry.RegistryError) as info:
        logz("mlp")
    assert "hidden_size=0" in str(info.value) and "logz 'mlp'" in str(info.value)


def test_mlp_detaches_hidden_state():
    module = logz("mlp", hidden_size=6, width=8)
    with torch.no_grad():  # a non-zero last layer, so a gradient would reach the input if allowed
        module.net[-1].weight.normal_(generator=torch.Generator().manual_seed(1))
    hidden = torch.randn(3, 6, requires_grad=True)
    out = module(torch.arange(3), hidden * 2.0)
    assert out.requires_grad
    (grad_hidden,) = torch.autograd.grad(out.sum(), hidden, allow_unused=True)
    assert grad_hidden is None
    out = module(torch.arange(3), hidden * 2.0)
    out.sum().backward()
    assert hidden.grad is None
    assert module.net[0].weight.grad is not None and module.net[0].weight.grad.abs().sum() > 0


def test_mlp_casts_hidden_to_head_dtype():
    module = logz("mlp", hidden_size=4, width=8)
    out = module(torch.arange(2), torch.randn(2, 4, dtype=torch.float64))
    assert out.dtype == module.net[0].weight.dtype


def test_mlp_hidden_of_another_batch_is_rejected():
    module = logz("mlp", hidden_size=4, width=8)
    with pytest.raises(ShapeError) as info:
        module(torch.arange(3), torch.randn(2, 4))
    message = str(info.value)
    assert "logz 'mlp'" in message and "'prompt_hidden'" in message
    assert "'B H'" in message and "(2, 4)" in message and "B=3" in message


@pytest.mark.parametrize(("name", "config"), [("scalar", {}), ("table", {"num_prompts": 8})])
def test_output_batch_matches_index(name, config):
    module = logz(name, **config)
    for batch in (1, 4):
        assert module(torch.arange(batch)).shape == (batch,)


@pytest.mark.parametrize(
    ("name", "options", "count"),
    [
        ("scalar", {}, 1),
        ("table", {"num_prompts": 3}, 3),
        ("mlp", {"hidden_size": 4, "width": 8}, None),
    ],
)
def test_every_log_z_registers_its_parameters(name, options, count):
    """Fields with converters must not give the class attrs' __setattr__ (it would hide the
    parameters from nn.Module: no optimiser step, no dtype change)."""
    logz = registry.build("logz", name, **options)
    params = list(logz.parameters())
    assert params and (count is None or sum(p.numel() for p in params) == count)
    assert all(p.dtype == torch.float64 for p in logz.double().parameters())
