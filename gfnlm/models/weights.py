"""Weights as other code needs them: whole tensors behind FSDP2 shards, saved tensors placed like
a parameter, and a PEFT model's weights with the LoRA deltas merged in under their Hugging Face
names (what an inference server loads and what an exported model folder holds)."""

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor behind an FSDP2 shard (a DTensor); other tensors unchanged."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def place_like(value, param: Tensor):
    """A saved full tensor placed like ``param``: this rank's shard under FSDP2 (a DTensor),
    else on ``param``'s device. Non-tensors and scalars (e.g. Adam's ``step``) stay as they are."""
    if not torch.is_tensor(value) or value.dim() == 0:
        return value
    if isinstance(param, DTensor):
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    return value.to(param.device)


def merged_state_dict(
    model: torch.nn.Module, dtype: torch.dtype, changing_only: bool = False
) -> dict[str, torch.Tensor]:
    """The model's weights under their Hugging Face names, LoRA deltas merged in (the model is
    not modified), as ``dtype`` CPU tensors; FSDP2 shards are gathered (every rank must call).

    ``changing_only``: only the weights that training can change (see :func:`changing_weights`)."""
    peft = hasattr(model, "peft_config")
    modules = dict(model.named_modules())
    keep = changing_weights(model) if changing_only else None
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if peft and ".lora_" in name:
                continue
            hf_name = hf_parameter_name(name) if peft else name
            if keep is not None and hf_name not in keep:
                continue
            value = full_tensor(param.detach())
            if peft and ".base_layer." in name:
                layer = modules[name.split(".base_layer.")[0]]
                if name.endswith(".weight") and not getattr(layer, "merged", False):
                    for adapter in layer.active_adapters:
                        value = value + full_tensor(layer.get_delta_weight(adapter))
            out[hf_name] = value.to(dtype=dtype, device="cpu").contiguous().clone()
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    if tied:
        out.pop("lm_head.weight", None)
    return out


def hf_parameter_name(peft_name: str) -> str:
    """A PEFT model's base parameter under its Hugging Face name."""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def changing_weights(model: torch.nn.Module) -> set[str]:
    """The Hugging Face names of the weights a push after a training step must carry: every weight
    of each module that holds a trained parameter or an adapted layer (``self_attn`` for LoRA on
    ``q_proj``), so that an engine which packs sibling layers into one (vLLM's ``qkv_proj``,
    ``gate_up_proj``) receives every part of a packed layer. Without an adapter: every weight.

    An adapter never changes the other weights, so a server that holds the base model needs only
    these after the first full push (for LoRA r = 8 on q/k/v/o of SmolLM2-135M: 26.5M of 135M
    parameters)."""
    names = [name for name, _ in model.named_parameters()]
    if not hasattr(model, "peft_config"):
        return set(names)
    changed = [
        hf_parameter_name(name.split(".lora_")[0] + ".weight")
        if ".lora_" in name
        else hf_parameter_name(name)
        for name, param in model.named_parameters()
        if param.requires_grad
    ]
    # the module two levels up from a weight
    # (model.layers.3.self_attn from ….self_attn.q_proj.weight)
    parents = {name.rsplit(".", 2)[0] + "." if name.count(".") >= 2 else "" for name in changed}
    hf_names = {hf_parameter_name(name) for name in names if ".lora_" not in name}
    return {name for name in hf_names if any(name.startswith(parent) for parent in parents)}
